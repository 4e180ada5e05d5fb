"""Every per-callee / per-peer / per-call memo of the gateway stays bounded.

Each test feeds one memo 10,000 (or more) distinct synthetic keys — callees,
addresses, users, Call-IDs, header texts — and checks its size stays at or
under its cap (lowered here where the cap is a setting, so the test fills it).
Remove a bound and its test fails. The soak that measured these sizes is
``bench/memory_soak.py`` (BENCHMARKS.md, "Memory per call").
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any, cast

import pytest

import gateway.callpath.security as security
import gateway.sip.uri as uri_module
from gateway.callpath.recovery import ABANDONED_MEMORY, StrayAnswers
from gateway.config import SecuritySettings
from gateway.sip import Request
from gateway.sip.digest import DigestServer
from gateway.sip.headers import _NAME_ADDR_MEMO, _VIA_MEMO, NameAddr, Via
from gateway.sip.uri import _URI_MEMO, URI
from gateway.telemetry.events import CallEvent, CallEventKind, CallStats
from gateway.telemetry.metrics import GatewayMetrics
from policies.hours import ZONES_MEMO_MAX, CallingHours, zones_for_number
from policies.timeutil import parse_windows

N = 10_000


def callee(i: int) -> str:
    return f"+86138{i:08d}"


@pytest.fixture
def small_parse_memos(monkeypatch: pytest.MonkeyPatch) -> int:
    """The SIP parse memos capped at 500 for the test (the cap is read at each insert)."""
    monkeypatch.setattr(uri_module, "MEMO_MAX", 500)
    for memo in (_URI_MEMO, _VIA_MEMO, _NAME_ADDR_MEMO):
        memo.clear()
    return 500


def test_uri_memo_is_bounded(small_parse_memos: int) -> None:
    for i in range(N):
        URI.parse(f"sip:{callee(i)}@127.0.0.1:5060")
    assert 0 < len(_URI_MEMO) <= small_parse_memos


def test_via_and_name_addr_memos_are_bounded(small_parse_memos: int) -> None:
    for i in range(N):
        Via.parse(f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{i}")
        NameAddr.parse(f"<sip:{callee(i)}@127.0.0.1>;tag={i}")
    assert 0 < len(_VIA_MEMO) <= small_parse_memos
    assert 0 < len(_NAME_ADDR_MEMO) <= small_parse_memos


def test_digest_nonce_uses_are_bounded() -> None:
    server = DigestServer(b"k" * 32, "dialgate", max_tracked_nonces=1000)
    for i in range(N):
        assert server._accept_nc(f"nonce-{i}", 1, 1_000 + i)
    assert len(server._used) == 1000
    assert not server._accept_nc("nonce-0", 2, 1_000)  # evicted: refused, not re-admitted


def test_zones_memo_is_bounded() -> None:
    zones_for_number.cache_clear()
    for i in range(ZONES_MEMO_MAX + N):
        zones_for_number(callee(i))
    info = zones_for_number.cache_info()
    assert info.maxsize == ZONES_MEMO_MAX and info.currsize <= ZONES_MEMO_MAX


def test_next_open_memo_is_bounded() -> None:
    hours = CallingHours()
    windows = parse_windows("08:00-09:00")
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp()
    for minute in range(N):  # a closed instant per minute: one memo key each
        moment = datetime.fromtimestamp(start + 60 * minute, UTC)
        hours.next_open(moment, ("UTC",), windows, "GB")
    assert 0 < len(hours._next_open_cache) <= 4096


def test_security_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "MAX_USERS", 500)
    monkeypatch.setattr(security, "MAX_OFFENCES", 500)
    guard = security.Guard(
        SecuritySettings(max_sources=100, ban_after=1, ban_memory=10**6, exempt=[]),
        flood_exempt=[ipaddress.ip_network("10.9.0.0/16")],
    )
    for i in range(N):
        host = str(ipaddress.ip_address(0x0A000000 + i))
        guard.admit(host, 1.0)
        guard.flood_exempt(host)
        guard.auth_failed(host, f"user{i}", 1.0)  # ban_after=1: every address banned once
    assert len(guard._sources) <= 100
    assert len(guard._users) <= 500
    assert len(guard._offences) <= 500
    assert len(guard._keys) <= 4097
    assert len(guard._exempt_cache) <= 4097
    assert len(guard._flood_cache) <= 4097


def test_abandoned_invites_are_bounded() -> None:
    strays = StrayAnswers(cast(Any, None))
    for i in range(N):
        invite = Request(
            "INVITE",
            f"sip:{callee(i)}@127.0.0.1",
            [
                ("Via", f"SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK{i}"),
                ("From", f"<sip:c1@127.0.0.1>;tag=f{i}"),
                ("To", f"<sip:{callee(i)}@127.0.0.1>"),
                ("Call-ID", f"b-{i}"),
                ("CSeq", "1 INVITE"),
            ],
        )
        strays.remember(invite, lambda _resp: None)
    assert len(strays._abandoned) == ABANDONED_MEMORY


def test_call_stats_windows_are_bounded_without_a_reader() -> None:
    """No snapshot() reader (no MQTT): the CPS/ASR windows still forget old calls."""
    stats = CallStats(lambda: 0.0, cps_window=10.0, asr_window=100.0, max_active=1000)
    metrics = GatewayMetrics(max_active=1000)
    for i in range(N):
        at = float(i)  # one call a second
        for kind in (CallEventKind.ATTEMPT, CallEventKind.ENDED):
            event = CallEvent(kind, f"a-{i}", at, callee=callee(i), outcome="answered")
            stats(event)
            metrics(event)
    assert len(stats._attempt_times) <= 11
    assert len(stats._ends) <= 101  # one bucket per second of the ASR window
    assert sum(b[1] for b in stats._ends) <= 101
    assert 0 == stats.active_calls == len(metrics._active)
    for i in range(N):  # attempts that never end: the active set stops at its cap
        event = CallEvent(CallEventKind.ATTEMPT, f"open-{i}", float(N + i))
        stats(event)
        metrics(event)
    assert stats.active_calls == 1000 == len(metrics._active)


def test_asr_window_holds_seconds_not_calls() -> None:
    """200 calls a second for 50 s: the 900 s ASR window holds 50 buckets, not 10,000 calls."""
    stats = CallStats(lambda: 1050.0, asr_window=900.0)
    for i in range(N):
        outcome = "answered" if i % 4 == 0 else "busy"
        stats(CallEvent(CallEventKind.ENDED, f"e-{i}", 1000.0 + i / 200, outcome=outcome))
    assert len(stats._ends) <= 51
    assert 0.25 == stats.snapshot().asr


def test_via_front_and_unroutable_memos_are_bounded(small_parse_memos: int) -> None:
    """The memo of Via sent-protocol/sent-by texts and the broadcast-address memo of
    check_response stay bounded when every Via comes from another host."""
    from gateway.sip.headers import _VIA_FRONT_MEMO
    from gateway.sip.validate import _UNROUTABLE, _unroutable

    _VIA_FRONT_MEMO.clear()
    _UNROUTABLE.clear()
    for i in range(N):
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        Via.parse(f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{i}")
        _unroutable(host)
    assert 0 < len(_VIA_FRONT_MEMO) <= small_parse_memos
    assert 0 < len(_UNROUTABLE) <= small_parse_memos
