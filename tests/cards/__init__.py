"""Tests of gateway.cards and gateway.cards.health."""
