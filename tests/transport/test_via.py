"""RFC 3261 §18.2.1/§18.2.2 and RFC 3581 §4: received/rport stamping and response routing."""

from __future__ import annotations

import pytest

from gateway.sip import Request, make_response, parse
from gateway.transport import response_destination, stamp_via

from .conftest import options


def _req(data: bytes) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def test_same_ip_no_rport_unchanged() -> None:
    """Sent-by equal to the source IP and no rport: the request is left as is."""
    req = _req(options(via_host="127.0.0.1:5099"))
    assert req is stamp_via(req, ("127.0.0.1", 40000))


def test_different_ip_gets_received() -> None:
    """Sent-by differing from the source gets received=<source ip>; no rport added."""
    req = stamp_via(_req(options(via_host="10.1.2.3:5060")), ("127.0.0.1", 40000))
    top = req.via[0]
    assert top.received == "127.0.0.1"
    assert top.rport is None
    assert top.branch == "z9hG4bKtest1"


def test_domain_sent_by_gets_received() -> None:
    """A domain name in sent-by always gets received (§18.2.1)."""
    req = stamp_via(_req(options(via_host="pc33.example.com")), ("127.0.0.1", 40000))
    assert req.via[0].received == "127.0.0.1"


def test_empty_rport_filled_and_received_added_even_if_same() -> None:
    """RFC 3581 §4: empty rport gets the source port, and received is added even if equal."""
    req = stamp_via(_req(options(via_host="127.0.0.1:5099", rport=True)), ("127.0.0.1", 40001))
    top = req.via[0]
    assert top.rport == 40001
    assert top.received == "127.0.0.1"


def test_only_top_via_touched_and_other_headers_kept() -> None:
    """A second Via value on the same line and all other headers survive unchanged."""
    data = options(via_host="10.0.0.1").replace(
        b";branch=z9hG4bKtest1\r\n",
        b";branch=z9hG4bKtest1, SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKold\r\n",
    )
    original = _req(data)
    req = stamp_via(original, ("127.0.0.1", 1))
    assert len(req.via) == 2
    assert req.via[0].received == "127.0.0.1"
    assert original.via[1] == req.via[1]
    assert original.call_id == req.call_id
    assert [n for n, _ in original.headers] == [n for n, _ in req.headers]


def test_spoofed_received_replaced() -> None:
    """A received param written by the sender is replaced by the real source."""
    data = options(via_host="10.0.0.1").replace(b"z9hG4bKtest1", b"z9hG4bKtest1;received=1.2.3.4")
    req = stamp_via(_req(data), ("127.0.0.1", 1))
    assert req.via[0].received == "127.0.0.1"
    assert sum(1 for n, _ in req.via[0].params if n.lower() == "received") == 1


def test_ipv6_source() -> None:
    """An IPv6 source is written without brackets in received; a bracketed equal sent-by is unchanged."""
    same = _req(options(via_host="[::1]:5099"))
    assert same is stamp_via(same, ("::1", 5099))
    req = stamp_via(_req(options(via_host="[2001:db8::1]:5099")), ("::1", 5099))
    assert req.via[0].received == "::1"


def test_unreadable_via_passes_through() -> None:
    """A request whose Via cannot be parsed is returned untouched for validation to reject."""
    req = _req(options().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5099", b"Via: garbage"))
    assert req is stamp_via(req, ("10.0.0.1", 1))


@pytest.mark.parametrize(
    ("via_host", "rport", "source", "reliable", "expected"),
    [
        ("127.0.0.1:5099", False, ("127.0.0.1", 4000), False, ("127.0.0.1", 5099)),
        ("127.0.0.1", False, ("127.0.0.1", 4000), False, ("127.0.0.1", 5060)),
        ("10.0.0.1:5099", False, ("127.0.0.1", 4000), False, ("127.0.0.1", 5099)),
        ("10.0.0.1:5099", True, ("127.0.0.1", 4000), False, ("127.0.0.1", 4000)),
        ("host.example:5099", False, ("127.0.0.1", 4000), True, ("127.0.0.1", 5099)),
        ("10.0.0.1:5099", True, ("127.0.0.1", 4000), True, ("127.0.0.1", 5099)),
    ],
)
def test_response_destination(
    via_host: str,
    rport: bool,
    source: tuple[str, int],
    reliable: bool,
    expected: tuple[str, int],
) -> None:
    """§18.2.2 + RFC 3581: received+rport (UDP only), else received + sent-by port (default 5060)."""
    req = stamp_via(_req(options(via_host=via_host, rport=rport)), source)
    resp = make_response(req, 200)
    assert expected == response_destination(resp, reliable=reliable)


def test_response_destination_maddr_only_unreliable() -> None:
    """maddr (an IP literal) wins over sent-by on UDP, and is ignored on a reliable transport."""
    req = _req(
        options(via_host="127.0.0.1:5099").replace(b"z9hG4bKtest1", b"z9hG4bKtest1;maddr=127.0.0.9")
    )
    resp = make_response(req, 200)
    assert response_destination(resp, reliable=False) == ("127.0.0.9", 5099)
    assert response_destination(resp, reliable=True) == ("127.0.0.1", 5099)


def test_response_destination_domain_without_received_is_none() -> None:
    """A response whose top Via names a domain and has no received cannot be routed here."""
    req = _req(options(via_host="pc.example.com"))
    assert response_destination(make_response(req, 200), reliable=False) is None
