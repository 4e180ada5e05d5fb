"""Parsing, typed access, serialization and response building for ordinary SIP messages.

Table-driven over typical INVITE / 200 OK / REGISTER / OPTIONS wire bytes.
"""

from __future__ import annotations

import pytest

from gateway.sip import (
    URI,
    CSeq,
    Headers,
    MessageTooLarge,
    ParseError,
    Request,
    Response,
    SIPError,
    error_response,
    make_response,
    parse,
)

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

INVITE = (
    b"INVITE sip:+15551234567@carrier.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Call Center" <sip:agent7@gw.example.org>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@carrier.example.com;user=phone>\r\n"
    b"Call-ID: a84b4c76e66710@gw.example.org\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:agent7@192.0.2.10:5070>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: timer, 100rel\r\n"
    b"User-Agent: dialgate/0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds;rport=5070;received=198.51.100.7\r\n"
    b'From: "Call Center" <sip:agent7@gw.example.org>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@carrier.example.com;user=phone>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@gw.example.org\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:carrier@203.0.113.5>\r\n"
    b"Record-Route: <sip:p1.carrier.example.com;lr>, <sip:p2.carrier.example.com;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)

REGISTER = (
    b"REGISTER sip:registrar.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/TCP [2001:db8::10]:5061;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: Bob <sip:bob@example.com>\r\n"
    b"f: Bob <sip:bob@example.com>;tag=456248\r\n"
    b"i: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"m: <sip:bob@[2001:db8::10]:5061;transport=tcp>;expires=7200, <sip:bob@192.0.2.4>;q=0.5\r\n"
    b"Expires: 3600\r\n"
    b"l: 0\r\n\r\n"
)

OPTIONS = (
    b"OPTIONS sip:carrier.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKhjhs8ass877\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:carrier.example.com>\r\n"
    b"From: <sip:ping@gw.example.org>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Accept: application/sdp\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("data", "kind", "first_line", "call_id", "cseq"),
    [
        (INVITE, Request, "INVITE", "a84b4c76e66710@gw.example.org", CSeq(314159, "INVITE")),
        (OK, Response, 200, "a84b4c76e66710@gw.example.org", CSeq(314159, "INVITE")),
        (REGISTER, Request, "REGISTER", "843817637684230@998sdasdh09", CSeq(1826, "REGISTER")),
        (OPTIONS, Request, "OPTIONS", "a84b4c76e66710", CSeq(63104, "OPTIONS")),
    ],
)
def test_typical_messages_parse_and_round_trip(
    data: bytes, kind: type, first_line: str | int, call_id: str, cseq: CSeq
) -> None:
    """Typical messages parse into the right class, expose Call-ID/CSeq and serialize back."""
    msg = parse(data)
    assert kind is type(msg)
    actual_first = msg.method if isinstance(msg, Request) else msg.status
    assert first_line == actual_first
    assert call_id == msg.call_id
    assert cseq == msg.cseq
    assert data == bytes(msg)
    assert msg == parse(bytes(msg))


def test_invite_typed_access() -> None:
    """Via, From, To, Contact, Max-Forwards and the SDP body of an INVITE are exposed typed."""
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    assert URI.parse("sip:+15551234567@carrier.example.com;user=phone") == msg.uri
    assert "phone" == msg.uri.param("USER")
    (via,) = msg.via
    assert ("UDP", "192.0.2.10", 5070) == (via.transport, via.host, via.port)
    assert "z9hG4bK776asdhds" == via.branch
    assert True is via.rport
    assert "Call Center" == msg.from_.display_name
    assert "1928301774" == msg.from_.tag
    assert None is msg.to.tag
    assert "agent7" == msg.from_.uri.user
    assert 70 == msg.max_forwards
    assert ["192.0.2.10"] == [c.uri.host for c in msg.contact]
    assert "application/sdp" == msg.content_type
    assert len(SDP) == msg.content_length
    assert SDP == msg.body
    assert ["timer", "100rel"] == msg.headers.values("Supported")


def test_response_typed_access() -> None:
    """A 200 OK exposes received/rport on Via and both Record-Route values."""
    msg = parse(OK)
    assert isinstance(msg, Response)
    assert "OK" == msg.reason
    assert 5070 == msg.via[0].rport
    assert "198.51.100.7" == msg.via[0].received
    assert "a6c85cf" == msg.to.tag
    expected = ["p1.carrier.example.com", "p2.carrier.example.com"]
    assert expected == [r.uri.host for r in msg.record_route]
    assert "" == msg.record_route[0].uri.param("lr")


def test_compact_forms_and_ipv6() -> None:
    """Compact header names resolve to their long forms; IPv6 references keep brackets."""
    msg = parse(REGISTER)
    assert "[2001:db8::10]" == msg.via[0].host
    assert 5061 == msg.via[0].port
    assert "TCP" == msg.via[0].transport
    assert "843817637684230@998sdasdh09" == msg.headers.get("Call-ID")
    assert 2 == len(msg.contact)
    assert 7200 == msg.contact[0].expires
    assert "0.5" == msg.contact[1].param("q")
    assert "[2001:db8::10]" == msg.contact[0].uri.host
    assert 3600 == msg.expires
    assert 0 == msg.content_length


def test_mutation_invalidates_cache_and_reserializes() -> None:
    """Changing headers drops cached typed values and bytes() writes the new header."""
    msg = parse(INVITE)
    assert 70 == msg.max_forwards
    msg.headers.set("Max-Forwards", "69")
    assert 69 == msg.max_forwards
    out = bytes(msg)
    assert b"\r\nMax-Forwards: 69\r\n" in out
    assert msg == parse(out)


def test_bytes_writes_content_length_for_new_body() -> None:
    """bytes() sets Content-Length to match the body, adding it when absent."""
    req = Request("MESSAGE", "sip:a@example.com", [("Call-ID", "x")], body=b"hello")
    assert (
        b"Content-Length: 5\r\n\r\nhello" == bytes(req)[-len(b"Content-Length: 5\r\n\r\nhello") :]
    )
    req.body = b"hi"
    assert bytes(req).endswith(b"Content-Length: 2\r\n\r\nhi")


def test_make_response_copies_dialog_headers_and_adds_tag() -> None:
    """make_response copies Via/From/To/Call-ID/CSeq (RFC 3261 §8.2.6.2) and adds the To tag."""
    req = parse(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="abc123", headers=[("Retry-After", "30")])
    assert 486 == resp.status
    assert "Busy Here" == resp.reason
    assert req.via == resp.via
    assert req.from_ == resp.from_
    assert "abc123" == resp.to.tag
    assert req.call_id == resp.call_id
    assert req.cseq == resp.cseq
    assert 30 == (resp.retry_after.seconds if resp.retry_after else None)
    reparsed = parse(bytes(resp))
    assert [*resp.headers.items(), ("Content-Length", "0")] == reparsed.headers.items()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"INVITE sip:a@b SIP/2.0\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: ten\r\n\r\n",
        b"INVITE  sip:a@b SIP/2.0\r\n\r\n",
        b"INVITE sip:a@b\r\n\r\n",
        b"SIP/2.0 99 Too Low\r\n\r\n",
        b"SIP/2.0 700 Too High\r\n\r\n",
        b"SIP/2.0 4294967301 Big\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nNo colon here\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ],
)
def test_malformed_input_raises_parse_error(data: bytes) -> None:
    """Broken framing or start lines raise ParseError carrying status 400."""
    with pytest.raises(ParseError) as info:
        parse(data)
    assert 400 == info.value.status_code


def test_stream_requires_content_length_and_size_guard() -> None:
    """stream=True needs Content-Length; oversized input raises MessageTooLarge (513)."""
    data = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n"
    assert b"" == parse(data).body
    with pytest.raises(ParseError):
        parse(data, stream=True)
    with pytest.raises(MessageTooLarge) as info:
        parse(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n")
    assert 513 == info.value.status_code


def test_datagram_trailing_octets_ignored() -> None:
    """Octets after Content-Length in a datagram are ignored and not re-serialized (§18.3)."""
    msg = parse(OPTIONS + b"garbage trailing octets")
    assert b"" == msg.body
    assert OPTIONS == bytes(msg)


def test_error_response_for_unparseable_request() -> None:
    """A request with a broken start line still gets a 400 built from its Via/From/To/Call-ID/CSeq."""
    broken = OPTIONS.replace(b"OPTIONS sip:carrier.example.com SIP/2.0", b"OPTIONS  sip:x SIP/2.0")
    with pytest.raises(SIPError) as info:
        parse(broken)
    out = error_response(broken, info.value)
    assert out is not None
    resp = parse(out)
    assert isinstance(resp, Response)
    assert 400 == resp.status
    assert "a84b4c76e66710" == resp.call_id
    assert "z9hG4bKhjhs8ass877" == resp.via[0].branch
    assert resp.to.tag is not None
    assert None is error_response(OK, ParseError("x"))
    assert None is error_response(b"garbage", ParseError("x"))


def test_headers_container_operations() -> None:
    """Headers keeps order and spelling; add/prepend/set/remove behave as documented."""
    h = Headers([("v", "SIP/2.0/UDP a"), ("X-Custom", "1"), ("Via", "SIP/2.0/UDP b")])
    assert ["SIP/2.0/UDP a", "SIP/2.0/UDP b"] == h.get_all("VIA")
    h.prepend("Via", "SIP/2.0/UDP top")
    assert ("Via", "SIP/2.0/UDP top") == next(iter(h))
    h.set("via", "SIP/2.0/UDP only")
    assert [("via", "SIP/2.0/UDP only"), ("X-Custom", "1")] == list(h)
    h.remove("x-custom")
    assert "X-Custom" not in h
    assert 1 == len(h)
    with pytest.raises(ParseError):
        h.add("X-Evil", "a\r\nInjected: yes")


def test_error_response_carries_extra_headers() -> None:
    """error_response adds the error's extra headers (e.g. Unsupported for 420) and a To tag."""
    from gateway.sip import BadExtension

    broken = OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nBad Header: x")
    err = BadExtension("unsupported", extra_headers=[("Unsupported", "foo")])
    out = error_response(broken, err)
    assert out is not None
    resp = parse(out)
    assert isinstance(resp, Response)
    assert (420, "Bad Extension") == (resp.status, resp.reason)
    assert "foo" == resp.headers.get("Unsupported")
    assert error_response(broken, err) == out  # deterministic tag for retransmissions


def test_error_response_never_emits_unparseable_bytes() -> None:
    """A folded line with a bare LF is not copied into a response; None means drop."""
    broken = OPTIONS.replace(b"Call-ID: a84b4c76e66710\r\n", b"Call-ID: a84b\r\n x\ny\r\n")
    assert None is error_response(broken, ParseError("bare LF"))


def test_make_response_100_copies_timestamp_only_for_100() -> None:
    """A 100 Trying copies Timestamp (RFC 3261 §8.2.6.1); other responses do not."""
    req = parse(OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nTimestamp: 54.2"))
    assert isinstance(req, Request)
    assert "54.2" == make_response(req, 100).headers.get("Timestamp")
    assert None is make_response(req, 200).headers.get("Timestamp")


def test_body_setter_keeps_content_length_in_step() -> None:
    """Assigning a body rewrites an existing Content-Length (spelling kept) so bytes() re-parses equal."""
    msg = parse(REGISTER)  # uses the compact form "l: 0"
    msg.body = b"hello"
    assert [("l", "5")] == [(n, v) for n, v in msg.headers if n == "l"]
    assert msg == parse(bytes(msg))


def test_parse_accepts_bytearray_and_memoryview() -> None:
    """Transports may hand over bytearray or memoryview; the body is still bytes."""
    for data in (bytearray(INVITE), memoryview(INVITE)):
        msg = parse(data)  # type: ignore[arg-type]
        assert bytes is type(msg.body)
        assert INVITE == bytes(msg)


def test_unmodified_parse_reuses_original_octets() -> None:
    """bytes() of an unmodified parsed message is the original object slice, not a rebuild."""
    data = b"\r\n\r\n" + OPTIONS  # leading CRLFs are ignored (RFC 3261 §7.5)
    msg = parse(data)
    assert OPTIONS == bytes(msg)
    msg.body = msg.body  # same object: still unchanged
    assert OPTIONS == bytes(msg)
    msg.headers.add("X-New", "1")
    assert bytes(msg).endswith(b"Content-Length: 0\r\nX-New: 1\r\n\r\n")


def test_constructors_refuse_line_breaks() -> None:
    """A reason phrase or method with CR/LF (header injection) is refused at construction."""
    with pytest.raises(ParseError):
        Response(200, "OK\r\nX-Injected: 1")
    with pytest.raises(ParseError):
        Request("INVITE\r\nX: 1", "sip:a@b")
