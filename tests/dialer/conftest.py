"""Dialer integration tests: the SIPp helpers, process and broker fixtures of the other suites."""

from tests.events.conftest import mosquitto
from tests.policy_sipp.conftest import processes

__all__ = ["mosquitto", "processes"]
