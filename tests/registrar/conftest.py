"""Helpers for the registrar tests: REGISTER requests built in memory.

(The SIPp kill -9 test has its own helpers in ``test_restart_sipp.py``.)
"""

from __future__ import annotations

from gateway.sip import Request

# Processes stopped by PID at teardown (tests/policy_sipp), and the redis-server
# fixtures of tests/redis (a session server, a private one, key prefixes).
from simulator.pytest_plugin import processes  # noqa: F401

# A raw UDP UA and a started carrier (tests/callpath's fixtures).
from tests.callpath.conftest import carrier, ua  # noqa: F401
from tests.redis.conftest import prefix, private_redis, redis_server, rstore  # noqa: F401


def register(
    contacts: list[str],
    *,
    user: str = "alice",
    expires: int | None = None,
    call_id: str = "r1",
    cseq: int = 1,
) -> Request:
    """A REGISTER of ``user``'s AOR with the given Contact values."""
    headers = [
        ("Via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKr"),
        ("From", f"<sip:{user}@gw>;tag=1"),
        ("To", f"<sip:{user}@gw>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
    ]
    headers += [("Contact", c) for c in contacts]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    return Request("REGISTER", "sip:gw", headers)
