"""Table-driven tests for ``gateway.sip.uri``: sip/sips/tel/opaque URIs, escapes, IPv6."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.sip import URI, ParseError
from gateway.sip.uri import unescape

CASES: list[tuple[str, dict[str, object]]] = [
    ("sip:example.com", {"scheme": "sip", "user": None, "host": "example.com", "port": None}),
    (
        "sip:alice@atlanta.com:5070",
        {"scheme": "sip", "user": "alice", "host": "atlanta.com", "port": 5070},
    ),
    ("SIPS:Bob@Biloxi.com", {"scheme": "sips", "user": "Bob", "host": "Biloxi.com"}),
    ("sip:alice:secretword@atlanta.com", {"user": "alice", "password": "secretword"}),
    (
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        {"user": "+1-212-555-1212", "password": "1234", "params": (("user", "phone"),)},
    ),
    ("sip:[2001:db8::10]:5060", {"host": "[2001:db8::10]", "port": 5060}),
    ("sip:alice@[::ffff:192.0.2.1]", {"host": "[::ffff:192.0.2.1]", "port": None}),
    ("sip:192.0.2.4", {"host": "192.0.2.4"}),
    (
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        {"params": (("method", "REGISTER"),), "headers": (("to", "alice%40atlanta.com"),)},
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        {"headers": (("subject", "project%20x"), ("priority", "urgent"))},
    ),
    (
        "sip:p1.example.com;lr;transport=tcp;maddr=239.255.255.1;ttl=15",
        {
            "params": (
                ("lr", None),
                ("transport", "tcp"),
                ("maddr", "239.255.255.1"),
                ("ttl", "15"),
            )
        },
    ),
    ("sip:user;par=u%40example.net@example.com", {"user": "user;par=u%40example.net"}),
    ("sip:null-%00-null@example.com", {"user": "null-%00-null"}),
    (
        "tel:+358-555-1234567;postd=pp22",
        {"scheme": "tel", "opaque": "+358-555-1234567", "params": (("postd", "pp22"),)},
    ),
    (
        "tel:7042;phone-context=example.com",
        {"opaque": "7042", "params": (("phone-context", "example.com"),)},
    ),
    ("isbn:2983792873", {"scheme": "isbn", "opaque": "2983792873", "host": ""}),
    ("http://www.example.com", {"scheme": "http", "opaque": "//www.example.com"}),
    ("soap.beep://192.0.2.103:3002", {"scheme": "soap.beep"}),
    ("urn:service:sos", {"scheme": "urn", "opaque": "service:sos"}),
]


@pytest.mark.parametrize(("text", "fields"), CASES, ids=[c[0] for c in CASES])
def test_parse_fields_and_round_trip(text: str, fields: dict[str, object]) -> None:
    """Each URI parses into the expected fields and str() re-parses to an equal value."""
    uri = URI.parse(text)
    actual = {name: getattr(uri, name) for name in fields}
    assert fields == actual
    assert uri == URI.parse(str(uri))


BAD = [
    "",
    "example.com",
    "sip:",
    "sip:@example.com",
    "sip:alice@",
    "sip:alice@example.com:99999",
    "sip:alice@example.com:50x0",
    "sip:alice@[2001:db8::1",
    "sip:alice@[zz::1]",
    "sip:alice@exa mple.com",
    "sip:<alice@example.com>",
    "sip:al%zzice@example.com",
    "sip:alice%4@example.com",
    "sip:alice@example.com;",
    "sip:alice@example.com;=x",
    "sip:alice@example.com?",
    "sip:alice@example.com?novalue",
    "tel:",
    "1sip:alice@example.com",
    'sip:"alice"@example.com',
    "sip:alice@example.com\x00",
    "sip:alice@evil.example@example.com",
]


@pytest.mark.parametrize("text", BAD, ids=[repr(b) for b in BAD])
def test_malformed_uris_raise_parse_error(text: str) -> None:
    """Malformed URIs raise ParseError (status 400), nothing else."""
    with pytest.raises(ParseError) as info:
        URI.parse(text)
    assert 400 == info.value.status_code


def test_param_lookup_is_case_insensitive_and_escape_aware() -> None:
    """param() ignores case and one level of %-escaping in names; values stay as written."""
    uri = URI.parse("sip:host.example.com;Transport=TCP;%6C%72;n%61me=v%61lue%25%34%31")
    assert "TCP" == uri.param("transport")
    assert "" == uri.param("lr")
    assert "v%61lue%25%34%31" == uri.param("NAME")
    assert None is uri.param("maddr")


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("abc", "abc"),
        ("%61%62c", "abc"),
        ("value%2541", "value%41"),
        ("null-%00-null", "null-\x00-null"),
        ("%C3%A9t%C3%A9", "été"),
        ("100%", "100%"),
    ],
)
def test_unescape_once(escaped: str, plain: str) -> None:
    """unescape decodes exactly one level of %-escapes and keeps odd bytes distinct."""
    assert plain == unescape(escaped)


def test_unescape_keeps_invalid_utf8_distinct() -> None:
    """Invalid UTF-8 octets unescape to distinct surrogates rather than being lost."""
    assert unescape("%FF") != unescape("%FE")


def test_with_params_host_port_and_replace() -> None:
    """with_params replaces same-named params; host_port formats the port; replace() works."""
    uri = URI.parse("sip:alice@example.com;transport=udp")
    changed = uri.with_params(transport="tcp", lr=None)
    assert "sip:alice@example.com;transport=tcp;lr" == str(changed)
    assert "example.com" == uri.host_port
    moved = dataclasses.replace(uri, port=5080, host="[::1]")
    assert "[::1]:5080" == moved.host_port
    assert moved == URI.parse(str(moved))
    assert uri.is_sip
    assert not URI.parse("tel:+15551234567").is_sip


def test_parse_memo_is_bounded_and_returns_equal_values() -> None:
    """Unique URIs from a hostile peer never grow the parse memo past MEMO_MAX."""
    from gateway.sip import uri as uri_module

    for n in range(uri_module.MEMO_MAX + 100):
        URI.parse(f"sip:u{n}@h{n}.example")
        assert len(uri_module._URI_MEMO) <= uri_module.MEMO_MAX
    text = "sip:+8613912345678@gw.example:5060;transport=udp"
    assert URI.parse(text) == URI.parse(text)
    assert str(URI.parse(text)) == text
