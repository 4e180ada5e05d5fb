"""Fixtures of the security tests: ``processes`` (stopped by PID) and ``mosquitto``."""

from simulator.pytest_plugin import mosquitto, processes

__all__ = ["mosquitto", "processes"]
