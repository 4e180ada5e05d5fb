"""The lossy-relay wire tests reuse the SIPp harness of tests/policy_sipp and tests/carrier_answers."""

from tests.carrier_answers.conftest import processes  # noqa: F401
