"""REGISTER on the wire: a To tag on every final response, and clients that give up.

A raw UDP UA (one datagram out, the next datagram in) talks to a real
``Gateway`` on loopback, so retransmissions are byte-identical and nothing
of the gateway's own SIP code builds the requests' framing.

RFC 3261 §8.2.6.2: "the UAS MUST add a tag to the To header field in the
response (with the exception of the 100 (Trying) response)" — linphonec saw
a REGISTER 200 OK without one.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.callpath.element import Gateway
from gateway.sip import Response
from gateway.sip.digest import DigestClient
from tests.callpath.conftest import Carrier, RawUA, gateway_settings, started_gateway


@pytest.fixture
async def gateway(carrier: Carrier, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A started gateway (alice/s3cret, bob/bobpass) with its carrier."""
    async with started_gateway(gateway_settings(carrier.address, tmp_path / "gw.db")) as gw:
        yield gw


def register(
    ua: RawUA,
    *,
    to_user: str = "alice",
    contact: str | None = None,
    expires: int = 600,
    cseq: int = 1,
    call_id: str = "reg-1",
    auth: tuple[str, str] | None = None,
    user_agent: str = "RawUA/1.0",
) -> bytes:
    """A REGISTER datagram (a fresh branch each time)."""
    contact = contact or f"<sip:alice@127.0.0.1:{ua.port}>"
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{ua.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{to_user}@127.0.0.1>;tag=f{cseq}",
        f"To: <sip:{to_user}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
        f"Expires: {expires}",
        f"User-Agent: {user_agent}",
    ]
    if auth is not None:
        lines.append(f"{auth[0]}: {auth[1]}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def to_tag(resp: Response) -> str | None:
    """The To tag of a response."""
    return resp.to.tag


async def authorized(
    ua: RawUA, gw: Gateway, *, user: str = "alice", password: str = "s3cret", **kw: object
) -> bytes:
    """A REGISTER datagram carrying good credentials (after fetching a challenge)."""
    call_id = str(kw.pop("call_id", "reg-1"))
    challenge = await ua.exchange(register(ua, call_id=call_id), gw.address("udp"))
    assert 401 == challenge.status
    client = DigestClient(user, password)
    assert client.handle_challenge(401, challenge.headers.get_all("WWW-Authenticate"))
    auth = client.authorization("REGISTER", "sip:127.0.0.1")
    assert auth is not None
    return register(ua, auth=auth, cseq=2, call_id=call_id, **kw)  # type: ignore[arg-type]


async def test_200_carries_a_to_tag_and_a_retransmission_the_same(
    ua: RawUA, gateway: Gateway
) -> None:
    """The 200 OK to REGISTER has a To tag; the retransmitted request gets the same response."""
    request = await authorized(ua, gateway)
    ok = await ua.exchange(request, gateway.address("udp"))
    assert 200 == ok.status
    assert to_tag(ok)
    again = await ua.exchange(request, gateway.address("udp"))
    assert (200, to_tag(ok)) == (again.status, to_tag(again))


@pytest.mark.parametrize(
    ("kw", "status"),
    [
        ({"expires": 10}, 423),  # Interval Too Brief
        ({"contact": "*", "expires": 60}, 400),  # Contact: * without Expires: 0
        ({"contact": "*", "expires": 0}, 200),  # unregister everything
        ({"expires": 0}, 200),  # unregister one contact
    ],
)
async def test_every_final_answer_of_the_registrar_carries_a_to_tag(
    ua: RawUA, gateway: Gateway, kw: dict[str, object], status: int
) -> None:
    """423, 400 and the unregistering 200s all carry a To tag."""
    resp = await ua.exchange(await authorized(ua, gateway, **kw), gateway.address("udp"))
    assert status == resp.status
    assert to_tag(resp)


async def test_challenge_and_refusals_carry_a_to_tag(ua: RawUA, gateway: Gateway) -> None:
    """401 (challenge), 403 (someone else's AOR) carry a To tag too."""
    challenge = await ua.exchange(register(ua), gateway.address("udp"))
    assert (401, True) == (challenge.status, bool(to_tag(challenge)))
    client = DigestClient("bob", "bobpass")
    assert client.handle_challenge(401, challenge.headers.get_all("WWW-Authenticate"))
    auth = client.authorization("REGISTER", "sip:127.0.0.1")
    assert auth is not None
    # bob authenticates, but the To names alice: 403.
    resp = await ua.exchange(register(ua, auth=auth, cseq=2), gateway.address("udp"))
    assert (403, True) == (resp.status, bool(to_tag(resp)))


# --- clients that give up after a challenge ------------------------------------------


async def test_a_client_that_never_retries_is_logged_once(ua: RawUA, gateway: Gateway) -> None:
    """401 and no retry: after GIVE_UP_AFTER one sip.auth.abandoned line, no nonce in it."""
    resp = await ua.exchange(
        register(ua, call_id="gives-up", user_agent="baresip v1.0.0 (x86_64/linux)"),
        gateway.address("udp"),
    )
    nonce = resp.headers.get("WWW-Authenticate") or ""
    # A retransmission counts as the same (source, Call-ID).
    await ua.exchange(register(ua, call_id="gives-up"), gateway.address("udp"))
    now = time.monotonic()
    with capture_logs() as logs:
        gateway.housekeep(now + 1)  # too early
        gateway.housekeep(now + 33)
        gateway.housekeep(now + 70)  # once only
    lines = [e for e in logs if e["event"] == "sip.auth.abandoned"]
    assert 1 == len(lines), logs
    [line] = lines
    assert {
        "log_level": "warning",
        "user": "alice",
        "user_agent": "baresip v1.0.0 (x86_64/linux)",
        "methods": ["REGISTER"],
        "algorithms": ["MD5"],
        "challenges": 2,
        "last": "no-credentials",
        "call_id": "gives-up",
        "source": f"127.0.0.1:{ua.port}",
        "transport": "udp",
    }.items() <= line.items()
    text = repr(line)
    assert "nonce" not in text and nonce.split('nonce="')[1][:20] not in text
    assert 1 == gateway.snapshot()["gateway"]["auth_abandoned"]


async def test_a_client_that_retries_is_not_logged(ua: RawUA, gateway: Gateway) -> None:
    """401 then good credentials on the same Call-ID: nothing to report."""
    ok = await ua.exchange(await authorized(ua, gateway, call_id="fine"), gateway.address("udp"))
    assert 200 == ok.status
    with capture_logs() as logs:
        gateway.housekeep(time.monotonic() + 60)
    assert [] == [e for e in logs if e["event"] == "sip.auth.abandoned"]


async def test_unknown_names_are_logged_at_info(ua: RawUA, gateway: Gateway) -> None:
    """A name that is not configured (scanner, typo) is reported at info, not warning."""
    await ua.exchange(register(ua, to_user="scanner", call_id="svwar"), gateway.address("udp"))
    with capture_logs() as logs:
        gateway.housekeep(time.monotonic() + 60)
    [line] = [e for e in logs if e["event"] == "sip.auth.abandoned"]
    assert ("info", "scanner") == (line["log_level"], line["user"])
