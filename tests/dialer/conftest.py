"""Dialer integration tests: the SIPp helpers and process fixture of tests/policy_sipp."""

from tests.policy_sipp.conftest import processes

__all__ = ["processes"]
