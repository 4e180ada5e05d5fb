"""The SIP element (gateway.callpath.element) driven through a MemoryTransport: no sockets."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from gateway.callpath.element import Gateway
from gateway.callpath.router import ALLOW
from gateway.config import Settings
from gateway.sip import Response, parse
from gateway.sip.digest import DigestClient
from gateway.transport import MemoryTransport

SRC = ("127.0.0.1", 40000)
GW = ("127.0.0.1", 5070)


def request(
    method: str = "OPTIONS",
    ruri: str = "sip:127.0.0.1:5070",
    *,
    cseq_method: str | None = None,
    max_forwards: int = 70,
    to: str = "<sip:gw@127.0.0.1>",
    extra: str = "",
    branch: str = "z9hG4bKapp1",
) -> bytes:
    """A request from SRC as wire bytes."""
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch={branch}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:alice@example.com>;tag=f1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: app-1@test\r\n"
        f"CSeq: 7 {cseq_method or method}\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def setup() -> tuple[Gateway, MemoryTransport]:
    """A gateway (domain gw.example) attached to one memory transport at GW."""
    settings = Settings(
        sip={"listen": ["udp:127.0.0.1:5070"], "domains": ["gw.example"], "realm": "dialgate"},
        users=[{"name": "alice", "password": "s3cret"}],
    )
    gw = Gateway(settings, clock=lambda: 1_000_000.0)
    mem = MemoryTransport(gw.handle, GW)
    gw.add_transport(mem)
    return gw, mem


def answers(mem: MemoryTransport) -> list[Response]:
    """Every response the gateway sent, parsed; all must go back to SRC."""
    out = []
    for data, dest in mem.sent:
        assert SRC == dest
        msg = parse(data)
        assert isinstance(msg, Response)
        out.append(msg)
    return out


def test_options_to_us_gets_200_with_capabilities(setup: tuple[Gateway, MemoryTransport]) -> None:
    """RFC 3261 §11.2: 200 with Allow, Accept, Supported and a To tag."""
    _, mem = setup
    mem.inject(request(), SRC)
    [resp] = answers(mem)
    assert 200 == resp.status
    assert ", ".join(ALLOW) == resp.headers.get("Allow")
    assert "application/sdp" == resp.headers.get("Accept")
    assert "Supported" in resp.headers
    assert resp.to.tag


def test_retransmission_gets_same_to_tag(setup: tuple[Gateway, MemoryTransport]) -> None:
    """Stateless answers to a retransmitted request carry the same To tag."""
    _, mem = setup
    mem.inject(request(), SRC)
    mem.inject(request(), SRC)
    first, second = answers(mem)
    assert first.to.tag == second.to.tag
    mem.inject(request(branch="z9hG4bKother"), SRC)
    assert first.to.tag != answers(mem)[2].to.tag


@pytest.mark.parametrize(
    ("ruri", "max_forwards", "expected"),
    [
        ("sip:127.0.0.1:5070", 0, 200),  # RFC 3261 §11: Max-Forwards 0 to us is fine
        ("sip:anything@gw.example", 70, 200),  # a configured domain, any port
        ("sip:127.0.0.1", 70, 200),  # no port: our host
        ("sip:127.0.0.1:5999", 70, 404),  # our host, not our port
        ("sip:user@example.com", 70, 404),  # not for us, nothing routed yet
        ("sip:user@example.com", 0, 483),  # §16.3 step 3
        ("tel:+8613812345678", 70, 404),
        ("http://example.com/", 70, 416),
    ],
)
def test_options_routing(
    setup: tuple[Gateway, MemoryTransport], ruri: str, max_forwards: int, expected: int
) -> None:
    """OPTIONS answers by Request-URI: ours → 200, others → 404/483/416."""
    _, mem = setup
    mem.inject(request(ruri=ruri, max_forwards=max_forwards), SRC)
    assert [expected] == [r.status for r in answers(mem)]


def test_unknown_method_for_us_501_with_allow(setup: tuple[Gateway, MemoryTransport]) -> None:
    """RFC 3261 §8.2.1: 501 with Allow for an unknown method addressed to us; 404 elsewhere."""
    _, mem = setup
    mem.inject(request("FROBNICATE"), SRC)
    mem.inject(request("FROBNICATE", "sip:u@example.com"), SRC)
    first, second = answers(mem)
    assert 501 == first.status
    assert ", ".join(ALLOW) == first.headers.get("Allow")
    assert 404 == second.status


def test_ack_never_answered(setup: tuple[Gateway, MemoryTransport]) -> None:
    """ACKs (valid, or failing validation) are absorbed without any response."""
    gw, mem = setup
    mem.inject(request("ACK"), SRC)
    mem.inject(request("ACK", cseq_method="INVITE"), SRC)  # CSeq mismatch: invalid
    mem.inject(request("ACK", "nobody:opaque"), SRC)  # 416 material
    assert [] == mem.sent
    assert 1 == gw.stats.dropped["ack"]
    assert 2 == gw.stats.dropped["invalid-ack"]


def test_invite_gets_407_register_gets_401(setup: tuple[Gateway, MemoryTransport]) -> None:
    """INVITE → 407 Proxy-Authenticate; REGISTER → 401 WWW-Authenticate (RFC 3261 §22)."""
    _, mem = setup
    mem.inject(request("INVITE", "sip:+8613812345678@gw.example"), SRC)
    mem.inject(request("REGISTER", "sip:gw.example", to="<sip:alice@gw.example>"), SRC)
    invite, register = answers(mem)
    assert 407 == invite.status
    assert all('realm="dialgate"' in v for v in invite.headers.get_all("Proxy-Authenticate"))
    assert 401 == register.status
    assert register.headers.get_all("WWW-Authenticate")


def test_register_with_non_sip_to_is_400(setup: tuple[Gateway, MemoryTransport]) -> None:
    """RFC 3261 §10.3 step 5 via check_request(role="registrar")."""
    _, mem = setup
    mem.inject(request("REGISTER", "sip:gw.example", to="<http://example.com/alice>"), SRC)
    assert [400] == [r.status for r in answers(mem)]


async def test_valid_credentials_register_gets_200(
    setup: tuple[Gateway, MemoryTransport],
) -> None:
    """A correctly answered challenge reaches the registrar (issue 3): 200 listing the binding."""
    _, mem = setup
    mem.inject(request("REGISTER", "sip:gw.example", to="<sip:alice@gw.example>"), SRC)
    [challenge] = answers(mem)
    client = DigestClient("alice", "s3cret")
    assert client.handle_challenge(401, challenge.headers.get_all("WWW-Authenticate"))
    auth = client.authorization("REGISTER", "sip:gw.example")
    assert auth is not None
    name, value = auth
    mem.inject(
        request(
            "REGISTER",
            "sip:gw.example",
            to="<sip:alice@gw.example>",
            extra=f"{name}: {value}\r\nContact: <sip:alice@127.0.0.1:40000>\r\n",
        ),
        SRC,
    )
    ok = answers(mem)[1]
    assert 200 == ok.status
    assert ["sip:alice@127.0.0.1:40000"] == [str(c.uri) for c in ok.contact]


def test_malformed_credentials_get_400(setup: tuple[Gateway, MemoryTransport]) -> None:
    """sipvicious-style qop without nc/cnonce is malformed: 400, not a crash."""
    _, mem = setup
    bad = (
        'Proxy-Authorization: Digest username="alice", realm="dialgate", nonce="x", '
        'uri="sip:gw.example", response="00000000000000000000000000000000", qop=auth\r\n'
    )
    mem.inject(request("INVITE", "sip:1000@gw.example", extra=bad), SRC)
    assert [400] == [r.status for r in answers(mem)]


def test_cancel_and_bye_without_state_get_481(setup: tuple[Gateway, MemoryTransport]) -> None:
    """No transactions or dialogs exist yet: CANCEL and BYE get 481 (RFC 3261 §9.2, §15.1.2)."""
    _, mem = setup
    mem.inject(request("CANCEL"), SRC)
    mem.inject(request("BYE"), SRC)
    assert [481, 481] == [r.status for r in answers(mem)]


def test_stray_response_dropped(setup: tuple[Gateway, MemoryTransport]) -> None:
    """A response with no client transaction is dropped and counted, never answered."""
    gw, mem = setup
    mem.inject(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n",
        SRC,
    )
    assert [] == mem.sent
    assert 1 == gw.stats.dropped["stray-response"]


def test_missing_headers_still_answered_400(setup: tuple[Gateway, MemoryTransport]) -> None:
    """RFC 4475 §3.3.1: no Call-ID/From/To still gets a 400 with what could be copied."""
    _, mem = setup
    data = b"INVITE sip:u@gw.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKi\r\nMax-Forwards: 70\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    mem.inject(data, SRC)
    [resp] = answers(mem)
    assert 400 == resp.status
    assert "z9hG4bKi" == resp.via[0].branch


def test_rejection_log_masks_callee(setup: tuple[Gateway, MemoryTransport]) -> None:
    """The structured log line of an answered error hides the middle of the callee number."""
    _, mem = setup
    with capture_logs() as logs:
        mem.inject(request("MESSAGE", "sip:+8613812345678@example.com"), SRC)
    [entry] = [e for e in logs if e["event"] == "sip.request.rejected"]
    assert 404 == entry["status"]
    assert "13812345678" not in entry["request_uri"]
    assert entry["request_uri"].startswith("sip:+86138")


def test_snapshot_counts(setup: tuple[Gateway, MemoryTransport]) -> None:
    """snapshot() reports gateway and per-transport counters."""
    gw, mem = setup
    mem.inject(request(), SRC)
    mem.inject(b"garbage", SRC)
    snap = gw.snapshot()
    assert {"200": 1} == snap["gateway"]["answered"]
    assert 1 == snap["transports"]["udp:127.0.0.1:5070"]["parse_errors"]


def test_non_utf8_octets_answered_not_crashed(setup: tuple[Gateway, MemoryTransport]) -> None:
    """Raw non-UTF-8 octets in a header (found by the SIPp flood) still get an answer."""
    gw, mem = setup
    data = request().replace(b"Call-ID: app-1@test", b"Call-ID: app-\xe9\xff@test")
    mem.inject(data, SRC)  # Call-ID is not a word: 400, its octets echoed verbatim
    mem.inject(data.replace(b"branch=z9hG4bKapp1", b"branch=z9hG4bK\xfe"), SRC)  # not a token
    assert [400, 400] == [r.status for r in answers(mem)]
    assert b"Call-ID: app-\xe9\xff@test\r\n" in mem.sent[0][0]
    assert 0 == gw.stats.handler_errors
    assert 0 == mem.stats.handler_errors


def test_rejection_logs_are_rate_limited(setup: tuple[Gateway, MemoryTransport]) -> None:
    """Every rejection is answered and counted; log lines stop at REJECT_LOG_RATE per second."""
    from gateway.callpath.element import REJECT_LOG_RATE

    gw, mem = setup
    with capture_logs() as logs:
        for i in range(REJECT_LOG_RATE + 50):
            mem.inject(request("MESSAGE", "sip:u@example.com", branch=f"z9hG4bK{i}"), SRC)
    assert REJECT_LOG_RATE + 50 == gw.stats.answered[404]
    assert REJECT_LOG_RATE == len([e for e in logs if e["event"] == "sip.request.rejected"])


def test_force_rport_off_routes_by_via() -> None:
    """With ``[sip] force_rport = false`` a response follows the Via (received + sent-by port)."""
    settings = Settings(sip={"listen": ["udp:127.0.0.1:5070"], "force_rport": False})
    gw = Gateway(settings)
    mem = MemoryTransport(gw.handle, GW)
    gw.add_transport(mem)
    mem.inject(request(), ("127.0.0.1", 40999))  # Via says port 40000
    [(_, dest)] = mem.sent
    assert ("127.0.0.1", 40000) == dest
