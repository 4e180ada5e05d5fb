"""Fixtures of the security tests: ``processes`` (stopped by PID) and ``mosquitto``."""

from simulator.pytest_plugin import mosquitto
from tests.policy_sipp.conftest import processes

__all__ = ["mosquitto", "processes"]
