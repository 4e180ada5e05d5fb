"""Unit tests for ``gateway.sip.validate``: each rule of check_request / check_response,
built from one good request or response by changing a single header."""

from __future__ import annotations

import pytest

from gateway.sip import Request, Response, SIPError, parse
from gateway.sip.validate import check_request, check_response

GOOD = (
    "INVITE sip:+15551234567@carrier.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:agent7@gw.example.org>;tag=1928301774\r\n"
    "To: <sip:+15551234567@carrier.example.com>\r\n"
    "Call-ID: a84b4c76e66710@gw.example.org\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:agent7@192.0.2.10:5070>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _req(text: str = GOOD) -> Request:
    msg = parse(text.encode())
    assert isinstance(msg, Request)
    return msg


def _with(header: str, value: str | None) -> Request:
    req = _req()
    if value is None:
        req.headers.remove(header)
    else:
        req.headers.set(header, value)
    return req


def _status(req: Request, **kwargs: object) -> int | None:
    try:
        check_request(req, **kwargs)  # type: ignore[arg-type]
    except SIPError as exc:
        return exc.status_code
    return None


def test_good_request_passes_every_role() -> None:
    """A well-formed INVITE is acceptable to a proxy, a UAS and a registrar."""
    for role in ("proxy", "uas", "registrar"):
        assert None is _status(_req(), role=role)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Call-ID", None),
        ("From", None),
        ("To", None),
        ("CSeq", None),
        ("Via", None),
        ("CSeq", "314159 BYE"),
        ("CSeq", "2147483648 INVITE"),
        ("Via", "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK"),
        ("Max-Forwards", "256"),
        ("Max-Forwards", "seventy"),
        ("Contact", "<sip:a@b>;expires=4294967296"),
        ("Expires", "4294967296"),
        ("To", "<sip:a@b>, <sip:c@d>"),
    ],
)
def test_400_rules(header: str, value: str | None) -> None:
    """Missing mandatory headers, CSeq mismatch/overflow, bare magic cookie and bad scalars → 400."""
    assert 400 == _status(_with(header, value))


def test_multiple_single_value_headers_400() -> None:
    """Two Call-ID (or Max-Forwards) lines in one request are rejected (RFC 4475 multi01)."""
    for header, value in (("Call-ID", "other"), ("Max-Forwards", "10"), ("From", "<sip:x@y>")):
        req = _req()
        req.headers.add(header, value)
        assert 400 == _status(req)


def test_missing_max_forwards_is_tolerated() -> None:
    """RFC 2543 peers omit Max-Forwards; the request is still acceptable (RFC 4475 §3.4.1)."""
    assert None is _status(_with("Max-Forwards", None))


def test_505_version() -> None:
    """A SIP-Version other than 2.0 gets 505 before any other check."""
    req = _with("Call-ID", None)
    req.version = "SIP/3.0"
    assert 505 == _status(req)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:a@b", None),
        ("sips:a@b", None),
        ("tel:+15551234567", None),
        ("http://example.com", 416),
        ("mailto:a@b", 416),
    ],
)
def test_416_request_uri_scheme(uri: str, expected: int | None) -> None:
    """Only sip, sips and tel Request-URIs are accepted; others get 416."""
    req = _req()
    req.uri = type(req.uri).parse(uri)
    assert expected == _status(req)


def test_483_only_for_proxy_and_not_local() -> None:
    """Max-Forwards 0 is 483 at a proxy unless the request is for us; a UAS accepts it."""
    req = _with("Max-Forwards", "0")
    assert 483 == _status(req, role="proxy")
    assert None is _status(req, role="uas")
    assert None is _status(
        req, role="proxy", local_uri=lambda uri: uri.host.endswith("example.com")
    )
    assert None is _status(_with("Max-Forwards", "1"), role="proxy")


def test_420_require_and_proxy_require() -> None:
    """Unknown option tags → 420 with Unsupported; tags in `supported` are fine (case-insensitive)."""
    req = _with("Require", "100rel, foo")
    req.headers.add("Proxy-Require", "bar")
    with pytest.raises(SIPError) as uas:
        check_request(req, role="uas", supported=["100REL"])
    assert (420, [("Unsupported", "foo")]) == (uas.value.status_code, uas.value.extra_headers)
    with pytest.raises(SIPError) as proxy:
        check_request(req, role="proxy")
    assert [("Unsupported", "bar")] == proxy.value.extra_headers
    assert None is _status(req, role="proxy", supported=["bar"])
    assert 420 == _status(req, role="proxy", supported=["bar"], local_uri=lambda uri: True)


def test_420_not_for_ack_or_cancel() -> None:
    """ACK and CANCEL are never answered with 420."""
    text = GOOD.replace("INVITE sip:", "CANCEL sip:").replace("314159 INVITE", "314159 CANCEL")
    req = _req(text)
    req.headers.add("Require", "foo")
    assert None is _status(req, role="uas")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/sdp", None),
        ("text/plain, application/SDP;level=1", None),
        ("application/*", None),
        ("*/*", None),
        ("text/nobodyKnowsThis", 406),
        ("", 406),
    ],
)
def test_406_accept_without_sdp(accept: str, expected: int | None) -> None:
    """An INVITE whose Accept excludes application/sdp gets 406 (RFC 4475 sdp01)."""
    req = _with("Accept", accept)
    assert expected == _status(req, role="uas")


def test_406_carries_accept_and_warning() -> None:
    """The 406 error lists what we accept and a 399 Warning."""
    with pytest.raises(SIPError) as info:
        check_request(_with("Accept", "text/html"))
    names = [n for n, _ in info.value.extra_headers]
    assert ["Accept", "Warning"] == names


def test_registrar_requires_sip_to() -> None:
    """A registrar rejects a REGISTER whose To is not a sip/sips AOR (RFC 4475 unksm2)."""
    text = (
        GOOD.replace("INVITE sip:+15551234567@carrier.example.com", "REGISTER sip:example.com")
        .replace("314159 INVITE", "314159 REGISTER")
        .replace("To: <sip:+15551234567@carrier.example.com>", "To: isbn:2983792873")
    )
    req = _req(text)
    assert 400 == _status(req, role="registrar")
    assert None is _status(req, role="proxy")


OK = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds\r\n"
    "From: <sip:agent7@gw.example.org>;tag=1928301774\r\n"
    "To: <sip:+15551234567@carrier.example.com>;tag=a6c85cf\r\n"
    "Call-ID: a84b4c76e66710@gw.example.org\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _resp(text: str = OK) -> Response:
    msg = parse(text.encode())
    assert isinstance(msg, Response)
    return msg


def test_good_response_passes() -> None:
    """A well-formed 200 OK is kept by a UAC and a proxy."""
    check_response(_resp())
    check_response(_resp(), role="proxy")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("CSeq: 314159 INVITE", "CSeq: 4294967296 INVITE"),
        ("Call-ID: a84b4c76e66710@gw.example.org\r\n", ""),
        ("SIP/2.0 200 OK", "SIP/3.0 200 OK"),
        ("Content-Length: 0", "Retry-After: 99999999999\r\nContent-Length: 0"),
        (
            "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds\r\n",
            "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 255.255.255.255\r\n",
        ),
    ],
)
def test_responses_to_drop(old: str, new: str) -> None:
    """Overlarge CSeq/Retry-After, missing Call-ID, bad version, broadcast Via → dropped."""
    resp = _resp(OK.replace(old, new))
    with pytest.raises(SIPError):
        check_response(resp, role="proxy")


def test_uac_drops_response_with_two_vias() -> None:
    """A UAC drops a response with more than one Via (RFC 3261 §8.1.3.3); a proxy keeps it."""
    resp = _resp(OK.replace("Via:", "Via: SIP/2.0/UDP p.example.com;branch=z9hG4bKp\r\nVia:", 1))
    with pytest.raises(SIPError):
        check_response(resp)
    check_response(resp, role="proxy")
