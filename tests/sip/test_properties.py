"""Hypothesis properties of the message core.

* ``parse(bytes(m)) == m`` over generated requests and responses (random methods,
  URIs with IPv6 and params, display names with quotes/escapes, Via lists,
  unknown headers, arbitrary body bytes), with typed values surviving the trip;
* mutated bytes of real messages (bit flips, truncation, insertion, duplication)
  never raise anything but SIPError — from parse, typed access, the checks, or
  error_response (which never raises at all).
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip import (
    URI,
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    SIPError,
    Via,
    error_response,
    parse,
)
from gateway.sip.headers import canonical_name, quote_string
from gateway.sip.validate import check_request, check_response
from tests.conformance import RFC4475
from tests.sip.test_message import INVITE, OK, OPTIONS, REGISTER

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
# URI parameter names: token characters minus "%" (in a URI "%" must start an escape).
ptokens = st.text(TOKEN_CHARS.replace("%", ""), min_size=1, max_size=12)
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda g: "[" + ":".join(f"{x:x}" for x in g) + "]"
)
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(1, 65535))
USER_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/"
escapes = st.integers(0, 255).map(lambda b: f"%{b:02X}")
users = st.lists(st.one_of(st.text(USER_CHARS, min_size=1, max_size=6), escapes), min_size=1).map(
    "".join
)
PCHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]/:&+$"
param_values = st.one_of(st.none(), st.text(PCHARS, min_size=1, max_size=8))
uri_params = st.lists(st.tuples(ptokens, param_values), max_size=3).map(tuple)


@st.composite
def sip_uris(draw: st.DrawFn) -> URI:
    """sip/sips URIs with optional user/password, IPv6 hosts, params and headers."""
    user = draw(st.one_of(st.none(), users))
    password = draw(st.one_of(st.none(), ptokens))
    headers = draw(
        st.lists(
            st.tuples(ptokens, st.text(TOKEN_CHARS.replace("%", ""), max_size=6)), max_size=2
        ).map(tuple)
    )
    return URI(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=password if user is not None else None,
        host=draw(hosts),
        port=draw(ports),
        params=draw(uri_params),
        headers=headers,
    )


any_uris = st.one_of(
    sip_uris(),
    st.builds(
        lambda number, params: URI(scheme="tel", opaque=number, params=params),
        st.text("0123456789-+", min_size=1, max_size=12),
        uri_params,
    ),
)

# Display names: anything but CR/LF (quote_string escapes '"' and '\').
display_names = st.one_of(
    st.none(),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
        max_size=20,
    ),
)
header_params = st.lists(
    st.tuples(tokens, st.one_of(st.none(), tokens, st.text(TOKEN_CHARS + " ,;", max_size=8))),
    max_size=3,
).map(
    lambda ps: tuple(
        (n, None if v is None else (v if v and set(v) <= set(TOKEN_CHARS) else quote_string(v)))
        for n, v in ps
    )
)
name_addrs = st.builds(NameAddr, display_names, any_uris, header_params)

vias = st.builds(
    lambda transport, host, port, branch, rport: Via(
        transport, host, port, branch="z9hG4bK" + branch, rport=rport
    ),
    st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    hosts,
    ports,
    tokens,
    st.one_of(st.none(), st.just(True), st.integers(1, 65535)),
)

TYPED = {"via", "from", "to", "call-id", "cseq", "content-length"}
# Unknown headers: token names (never one of the typed mandatory headers, and never
# Content-Length, which bytes() rewrites) and
# values without CR/LF or surrounding whitespace (parse strips those).
unknown_headers = st.lists(
    st.tuples(
        tokens.filter(lambda n: canonical_name(n) not in TYPED),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
            max_size=30,
        ).map(lambda v: v.strip(" \t")),
    ),
    max_size=5,
)


@st.composite
def messages(draw: st.DrawFn) -> Request | Response:
    """A request or response with the mandatory headers, unknown headers and a raw body."""
    body = draw(st.binary(max_size=200))
    items: list[tuple[str, str]] = [
        ("Via", str(v)) for v in draw(st.lists(vias, min_size=1, max_size=4))
    ]
    items.append((draw(st.sampled_from(["From", "f"])), str(draw(name_addrs))))
    items.append((draw(st.sampled_from(["To", "t"])), str(draw(name_addrs))))
    items.append(("Call-ID", draw(tokens) + "@" + draw(hostnames)))
    method = draw(
        st.one_of(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER"]), tokens)
    )
    items.append(("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"))
    items.extend(draw(unknown_headers))
    items = draw(st.permutations(items))
    items.append((draw(st.sampled_from(["Content-Length", "l"])), str(len(body))))
    headers = Headers(items)
    if draw(st.booleans()):
        return Request(method, draw(any_uris), headers, body)
    reason = draw(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
        )
    )
    return Response(draw(st.integers(100, 699)), reason, headers, body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_round_trip(msg: Request | Response) -> None:
    """parse(bytes(m)) == m, and typed values survive the round trip."""
    again = parse(bytes(msg))
    assert msg == again
    assert msg.via == again.via
    assert msg.from_ == again.from_
    assert msg.to == again.to
    assert msg.cseq == again.cseq
    assert bytes(msg) == bytes(again)


@settings(max_examples=300, deadline=None)
@given(name_addrs)
def test_name_addr_round_trip(na: NameAddr) -> None:
    """NameAddr text round-trips, display names with quotes and backslashes included."""
    assert na == NameAddr.parse(str(na))


@settings(max_examples=300, deadline=None)
@given(any_uris)
def test_uri_round_trip(uri: URI) -> None:
    """URI text round-trips for sip/sips/tel URIs with IPv6 hosts and params."""
    assert uri == URI.parse(str(uri))


def _corpus() -> list[bytes]:
    seeds = [INVITE, OK, OPTIONS, REGISTER]
    corpus = RFC4475
    for name in ("wsinv.dat", "esc01.dat", "longreq.dat", "mpart01.dat", "unreason.dat"):
        path = corpus / name
        seeds.append(path.read_bytes())
    return seeds


SEEDS = _corpus()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real message with a few bit flips, truncations, insertions or duplications."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from(
                        [b"\r\n", b" ", b'"', b"<", b">", b";", b",", b"%", b":", b"\r\n "]
                    ),
                )
            )
        elif kind == "duplicate":
            end = draw(st.integers(pos, min(len(data), pos + 64)))
            data[pos:pos] = data[pos:end]
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def _exercise(data: bytes) -> None:
    with contextlib.suppress(SIPError):
        parse(data, stream=True)
    try:
        msg = parse(data)
    except SIPError as exc:
        assert isinstance(exc.status_code, int)
        out = error_response(data, exc)
        assert out is None or isinstance(parse(out), Response)
        return
    for attr in (  # each typed view either works or raises SIPError
        "via",
        "from_",
        "to",
        "call_id",
        "cseq",
        "max_forwards",
        "contact",
        "contact_star",
        "route",
        "record_route",
        "content_length",
        "content_type",
        "expires",
        "reason_header",
        "retry_after",
    ):
        with contextlib.suppress(SIPError):
            getattr(msg, attr)
    with contextlib.suppress(SIPError):
        if isinstance(msg, Request):
            check_request(msg, role="proxy")
        else:
            check_response(msg)
    reparsed = bytes(msg)
    assert isinstance(reparsed, bytes)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_only_raise_sip_errors(data: bytes) -> None:
    """Mutated real messages raise only SIPError anywhere in the pipeline."""
    _exercise(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_sip_errors(data: bytes) -> None:
    """Arbitrary bytes (with a CRLFCRLF appended half the time) raise only SIPError."""
    _exercise(data)
    _exercise(data + b"\r\n\r\n")


def test_bytes_after_mutation_reparse() -> None:
    """A parsed message mutated through Headers re-serializes to something that parses equal."""
    msg = parse(INVITE)
    msg.headers.prepend("Via", "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKnew")
    msg.headers.remove("User-Agent")
    msg.body = b"\x00\xff binary"
    again = parse(bytes(msg))
    assert msg == again
    assert "[2001:db8::1]" == again.via[0].host
    assert "9" == again.headers.get("Content-Length")
    with pytest.raises(ParseError):
        parse(bytes(msg)[:-3], stream=True)
