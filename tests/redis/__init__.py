"""Tests of gateway.redis_store against a real redis-server."""
