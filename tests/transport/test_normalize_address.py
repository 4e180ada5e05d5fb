"""normalize_address: what the socket module gives → (host, port); one already is, as is."""

from __future__ import annotations

from gateway.callpath.auth import _short
from gateway.transport import normalize_address


def test_socket_addresses_become_host_port() -> None:
    assert normalize_address(("::1", 5060, 0, 0)) == ("::1", 5060)
    assert normalize_address(("[::1]", 5060)) == ("::1", 5060)
    assert normalize_address(("127.0.0.1", "5060")) == ("127.0.0.1", 5060)
    assert normalize_address(["127.0.0.1", 5060]) == ("127.0.0.1", 5060)  # type: ignore[arg-type]


def test_a_host_port_pair_comes_back_itself() -> None:
    addr = ("127.0.0.1", 5060)
    assert normalize_address(addr) is addr


def test_short_for_logs_cuts_and_replaces_control_characters() -> None:
    text = "agent007"
    assert _short(text, 64) is text  # printable and short: no copy
    assert _short("a" * 100, 10) == "a" * 10
    assert _short("ev\x00il\r\nuser", 64) == "ev?il??user"
    assert _short("x\x1b[31m" * 50, 8) == "x?[31mx?"
