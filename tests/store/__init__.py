"""Tests of gateway.store and gateway.cdr."""
