"""Table-driven tests for ``gateway.sip.headers``: list splitting, folding, quoting,
compact forms and the typed values Via / NameAddr / CSeq / Reason / RetryAfter."""

from __future__ import annotations

import pytest

from gateway.sip import URI, CSeq, Headers, NameAddr, ParseError, Reason, RetryAfter, Via, parse
from gateway.sip.headers import canonical_name, quote_string, split_list


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a, b ,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ("<sip:a@x;p=1,2>, <sip:b@y>", ["<sip:a@x;p=1,2>", "<sip:b@y>"]),
        ('"a \\" , b" <sip:c@d>', ['"a \\" , b" <sip:c@d>']),
        ("", []),
        ("x,,y", ["x", "y"]),
    ],
)
def test_split_list_is_quote_and_angle_aware(value: str, expected: list[str]) -> None:
    """Commas inside quoted strings and <...> do not split values."""
    assert expected == split_list(value)


@pytest.mark.parametrize("value", ['"unterminated <sip:a@b>', "<sip:a@b", "a,,b", " , a"])
def test_split_list_strict_rejects_broken_lists(value: str) -> None:
    """Strict splitting rejects empty elements and unterminated quotes or brackets."""
    with pytest.raises(ParseError):
        split_list(value, strict=True)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("v", "via"),
        ("VIA", "via"),
        ("i", "call-id"),
        ("m", "contact"),
        ("l", "content-length"),
        ("c", "content-type"),
        ("f", "from"),
        ("t", "to"),
        ("k", "supported"),
        ("s", "subject"),
        ("e", "content-encoding"),
        ("o", "event"),
        ("x", "session-expires"),
        ("X-Custom", "x-custom"),
    ],
)
def test_compact_forms(name: str, canonical: str) -> None:
    """Compact header names map to their long forms (RFC 3261 §7.3.3)."""
    assert canonical == canonical_name(name)


def test_folding_unfolds_to_single_space_and_keeps_names() -> None:
    """Folded lines unfold to one SP; unknown headers keep their spelling and value."""
    data = (
        b"OPTIONS sip:a@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example.com\r\n   ;branch=z9hG4bKx\r\n"
        b"X-WeIrD-Name :  keep   this \t spacing  \r\n"
        b"Subject: line one\r\n\tline two\r\n"
        b"Call-ID: c\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse(data)
    assert "SIP/2.0/UDP h.example.com ;branch=z9hG4bKx" == msg.headers.get("via")
    assert "z9hG4bKx" == msg.via[0].branch
    assert [("X-WeIrD-Name", "keep   this \t spacing")] == [
        (n, v) for n, v in msg.headers if n.lower().startswith("x-")
    ]
    assert "line one line two" == msg.headers.get("subject")
    assert data == bytes(msg)


VIAS = [
    (
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        ("UDP", "192.0.2.1", 5060, "z9hG4bK1", None, True),
    ),
    (
        "SIP/2.0/tcp host.example.com;received=198.51.100.1;rport=4444;branch=z9hG4bK2",
        ("TCP", "host.example.com", None, "z9hG4bK2", "198.51.100.1", 4444),
    ),
    (
        "SIP / 2.0 / TLS [2001:db8::9] : 5061 ; branch = z9hG4bK3",
        ("TLS", "[2001:db8::9]", 5061, "z9hG4bK3", None, None),
    ),
    (
        "SIP/2.0/UNKNOWN x.example.com;ttl=1;maddr=224.0.1.75",
        ("UNKNOWN", "x.example.com", None, None, None, None),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VIAS, ids=[v[0] for v in VIAS])
def test_via_parse(
    text: str, expected: tuple[str, str, int | None, str | None, str | None, object]
) -> None:
    """Via values parse with SWS around '/' ':' '=' and expose branch/received/rport."""
    via = Via.parse(text)
    assert expected == (via.transport, via.host, via.port, via.branch, via.received, via.rport)
    assert via == Via.parse(str(via))


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0 host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP host junk",
        "SIP/2.0/UDP host;",
        "SIP/2.0/UDP host;;branch=x",
        "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;branch=a b",
    ],
)
def test_via_malformed(text: str) -> None:
    """Malformed Via values raise ParseError."""
    with pytest.raises(ParseError):
        Via.parse(text)


def test_via_constructor_fills_params_from_fields() -> None:
    """Building a Via from fields puts branch/rport into params and serializes them."""
    via = Via("udp", "192.0.2.1", 5060, branch="z9hG4bKabc", rport=True)
    assert "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport" == str(via)
    assert via == Via.parse(str(via))


NAME_ADDRS = [
    ('"Alice" <sip:alice@atlanta.com>;tag=1928301774', ("Alice", "alice", "1928301774")),
    ("Bob Smith <sip:bob@biloxi.com>", ("Bob Smith", "bob", None)),
    ("caller<sip:caller@example.com>;tag=323", ("caller", "caller", "323")),
    ("<sip:carol@chicago.com>", (None, "carol", None)),
    ("sip:dave@example.com;tag=abc", (None, "dave", "abc")),
    ('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>', ('J Rosenberg \\"', "jdrosen", None)),
    ('"" <sip:anon@example.com>', ("", "anon", None)),
    ('"\\"quoted\\" comma, inside" <sip:q@x>', ('"quoted" comma, inside', "q", None)),
    ("José  Núñez <sip:jn@example.com>", ("José  Núñez", "jn", None)),
]


@pytest.mark.parametrize(("text", "expected"), NAME_ADDRS, ids=[n[0] for n in NAME_ADDRS])
def test_name_addr_parse(text: str, expected: tuple[str | None, str, str | None]) -> None:
    """Display names are unquoted with escapes resolved; tag is read from header params."""
    na = NameAddr.parse(text)
    assert expected == (na.display_name, na.uri.user, na.tag)
    assert na == NameAddr.parse(str(na))


def test_addr_spec_params_are_header_params() -> None:
    """Without <>, ';' params belong to the header, not the URI (RFC 3261 §20.10)."""
    na = NameAddr.parse("sip:alice@example.com;expires=60;q=0.1")
    assert () == na.uri.params
    assert (("expires", "60"), ("q", "0.1")) == na.params
    assert 60 == na.expires
    inside = NameAddr.parse("<sip:alice@example.com;transport=tcp>;expires=60")
    assert "tcp" == inside.uri.param("transport")
    assert (("expires", "60"),) == inside.params


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@b>',
        '"name" sip:a@b',
        "<sip:a@b",
        "<sip:a@b> junk",
        "Bell, Alexander <sip:a.g.bell@bell-tel.com>",
        "sip:a@b?Route=%3Csip:x%3E",
        "<sip:a @b>",
        "<sip:a@b>;",
        "<sip:a@b>;tag=a b",
    ],
)
def test_name_addr_malformed(text: str) -> None:
    """Malformed name-addr / addr-spec values raise ParseError."""
    with pytest.raises(ParseError):
        NameAddr.parse(text)


def test_name_addr_with_tag_and_quote_string() -> None:
    """with_tag replaces the tag; quote_string escapes backslash and quote."""
    na = NameAddr.parse('"A" <sip:a@b>;tag=old;x=1').with_tag("new")
    assert "new" == na.tag
    assert '"A" <sip:a@b>;x=1;tag=new' == str(na)
    assert '"a\\"b\\\\c"' == quote_string('a"b\\c')
    assert URI.parse("sip:a@b") == na.uri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("0009 INVITE", CSeq(9, "INVITE")),
        ("2147483647 BYE", CSeq(2**31 - 1, "BYE")),
        ("4711   NEWMETHOD", CSeq(4711, "NEWMETHOD")),
    ],
)
def test_cseq_parse(text: str, expected: CSeq) -> None:
    """CSeq numbers up to 2**31-1 parse, leading zeros allowed."""
    assert expected == CSeq.parse(text)


@pytest.mark.parametrize(
    "text",
    ["2147483648 INVITE", "36893488147419103232 INVITE", "-1 INVITE", "1", "x INVITE", "1 IN VITE"],
)
def test_cseq_malformed(text: str) -> None:
    """CSeq ≥ 2**31 (RFC 3261 §8.1.1.5) and malformed values raise ParseError 400."""
    with pytest.raises(ParseError) as info:
        CSeq.parse(text)
    assert 400 == info.value.status_code


def test_reason_and_retry_after() -> None:
    """Reason and Retry-After parse their params; overlarge delta-seconds are rejected."""
    reason = Reason.parse('SIP ;cause=200 ;text="Call completed elsewhere"')
    assert Reason("SIP", 200, "Call completed elsewhere") == reason
    assert reason == Reason.parse(str(reason))
    assert Reason("Q.850", 16, None) == Reason.parse("Q.850;cause=16")
    ra = RetryAfter.parse("120 (I'm in a meeting (really)) ;duration=3600")
    assert RetryAfter(120, "I'm in a meeting (really)", 3600) == ra
    assert ra == RetryAfter.parse(str(ra))
    assert RetryAfter(5, None, None) == RetryAfter.parse("5")
    for bad in ("18446744073709551616", "5 (unterminated", "x", "5 junk"):
        with pytest.raises(ParseError):
            RetryAfter.parse(bad)


def test_headers_values_across_lines_and_copy() -> None:
    """values() comma-splits across every line; copy() is independent; equality is list equality."""
    h = Headers([("Supported", "timer, 100rel"), ("k", "path"), ("Allow", "INVITE")])
    assert ["timer", "100rel", "path"] == h.values("supported")
    other = h.copy()
    other.add("Require", "timer")
    assert 3 == len(h)
    assert h != other
    assert Headers(list(h)) == h
    assert 2 == h.count("K")
