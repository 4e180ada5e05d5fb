"""Tests for gateway.config, gateway.logging and the dialgate CLI."""
