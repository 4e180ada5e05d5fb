"""Tests of gateway.store.redis against a real redis-server."""
