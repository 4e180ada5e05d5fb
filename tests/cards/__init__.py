"""Tests of gateway.cards and gateway.carrier_health."""
