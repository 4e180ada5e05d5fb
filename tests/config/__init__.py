"""Tests for gateway.config, gateway.telemetry.logging and the dialgate CLI."""
