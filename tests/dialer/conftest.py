"""Dialer integration tests: the SIPp helpers, process, broker and browser fixtures of the
other suites."""

from tests.events.conftest import chromium, mosquitto
from tests.policy_sipp.conftest import processes

__all__ = ["chromium", "mosquitto", "processes"]
