"""Fixtures of the security tests: ``processes`` (stopped by PID) and ``mosquitto``."""

from tests.events.conftest import mosquitto
from tests.policy_sipp.conftest import processes

__all__ = ["mosquitto", "processes"]
