"""Tests of gateway.transport: framing, Via rules, UDP/TCP over loopback, memory transport."""
