"""Tests of gateway.store and gateway.callpath.cdr."""
