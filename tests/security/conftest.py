"""Fixtures of the security tests: the policy_sipp ``processes`` fixture (stopped by PID)."""

from tests.policy_sipp.conftest import processes

__all__ = ["processes"]
