"""Dialer integration tests: the SIPp helpers, process, broker and browser fixtures of the
other suites."""

from simulator.pytest_plugin import mosquitto
from tests.events.conftest import chromium
from tests.policy_sipp.conftest import processes

__all__ = ["chromium", "mosquitto", "processes"]
