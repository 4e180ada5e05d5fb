"""Dialer integration tests: the SIPp helpers, process, broker and browser fixtures of the
other suites."""

from simulator.pytest_plugin import mosquitto, processes
from tests.events.conftest import chromium

__all__ = ["chromium", "mosquitto", "processes"]
