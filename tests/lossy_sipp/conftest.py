"""The lossy-relay wire tests reuse the SIPp harness of tests/policy_sipp and tests/carrier_answers."""

from simulator.pytest_plugin import processes  # noqa: F401
