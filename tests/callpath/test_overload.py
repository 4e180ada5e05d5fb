"""Overload control: a backlog in a UDP listener's kernel queue turns new calls away.

When more than ``[sip] overload_queue_kb`` wait unread in a UDP listener's receive
queue, the gateway is behind its traffic: its callers retransmit at T1 and every
retransmission is more work (a run at 350 CPS sustained collapsed that way, see
BENCHMARKS.md). New outbound INVITEs then get ``503`` with ``Retry-After`` before
the digest or any policy runs; between a quarter of the limit and the limit a share
of them (``gateway/callpath/overload.py``, its own unit tests in test_overload_control).
Real sockets: the backlog is datagrams the event loop has not read yet.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.callpath.element import Gateway
from gateway.callpath.overload import FLOOR, WINDOW
from gateway.sip import Response
from gateway.sip.digest import DigestClient
from gateway.telemetry.events import Alert, AlertKind, Severity
from tests.callpath.conftest import Carrier, RawUA, gateway_settings, started_gateway

LIMIT_KB = 64


@pytest.fixture
async def gateway(carrier: Carrier, tmp_path: Path) -> AsyncIterator[Gateway]:
    sip = {
        "listen": ["udp:127.0.0.1:0"],
        "realm": "dialgate",
        "t1": 0.1,
        "t2": 0.4,
        "overload_queue_kb": LIMIT_KB,
    }
    settings = gateway_settings(carrier.address, tmp_path / "gw.db", extra={"sip": sip})
    async with started_gateway(settings) as gw:
        yield gw


def invite(ua: RawUA, n: int) -> bytes:
    return (
        "INVITE sip:13912345678@gw.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{ua.port};branch=z9hG4bK-overload-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@gw.test>;tag=ol{n}\r\n"
        "To: <sip:13912345678@gw.test>\r\n"
        f"Call-ID: overload-{n}@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@127.0.0.1:{ua.port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def flood(target: tuple[str, int], datagrams: int) -> None:
    """Datagrams the event loop will not have read before the next check."""
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(datagrams):
            junk.sendto(b"x" * 1000, target)
    finally:
        junk.close()


async def test_a_backlog_turns_new_calls_away_until_it_drains(gateway: Gateway, ua: RawUA) -> None:
    task = gateway._overload_task
    assert task is not None  # [sip] overload_queue_kb > 0: the gateway looks by itself
    task.cancel()  # here the test looks, at the moments it chooses
    await asyncio.gather(task, return_exceptions=True)
    target = gateway.address("udp")
    assert not gateway.check_overload()

    flood(target, 150)  # not read yet: the event loop has not run since
    # A standing backlog: it is judged over the last WINDOW samples.
    assert [False] * (WINDOW - 1) + [True] == [gateway.check_overload() for _ in range(WINDOW)]
    assert 1 == gateway.overload.episodes

    refused = await ua.exchange(invite(ua, 1), target)
    assert isinstance(refused, Response)
    assert 503 == refused.status
    assert "2" == refused.headers.get("Retry-After")
    assert 1 == gateway.overload.refused
    # Its retransmission is absorbed by the INVITE's server transaction (the same 503
    # again), not refused a second time.
    again = await ua.exchange(invite(ua, 1), target)
    assert (503, refused.to.tag) == (again.status, again.to.tag)
    assert 1 == gateway.overload.refused

    # The junk and the INVITE have been read meanwhile: with nothing waiting the share
    # of calls turned away halves each sample down to none, then calls again (this one
    # is challenged, the normal path).
    samples = 1
    while gateway.check_overload():
        samples += 1
        assert samples <= 64
    assert next(k for k in range(1, 64) if 0.5**k < FLOOR) == samples
    assert 1 == gateway.overload.episodes
    # Counted where /metrics reads (dialgate_sip_overload_refused_total and _episodes_).
    counters = gateway.snapshot()["gateway"]
    assert (1, 1) == (counters["overload_episodes"], counters["overload_refused"])
    challenged = await ua.exchange(invite(ua, 2), target)
    assert 407 == challenged.status
    assert 1 == gateway.overload.refused


async def test_queued_bytes_is_the_kernels_unread_backlog(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.transport.udp import _listed_queued_bytes

    (udp,) = gateway._udp_listeners()
    assert 0 == udp.queued_bytes()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(20):
            sender.sendto(b"y" * 1000, udp.local_address)
    finally:
        sender.close()
    waiting = udp.queued_bytes()
    assert waiting is not None and waiting >= 20 * 1000
    # Asked of the socket (SO_MEMINFO) it is what /proc/net/udp lists (rx_queue), which
    # is also read where the kernel does not know the option.
    assert waiting == _listed_queued_bytes([udp])
    monkeypatch.setattr("gateway.transport.udp.SO_MEMINFO", 0x7FFF)
    assert waiting == udp.queued_bytes()
    monkeypatch.undo()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if udp.queued_bytes() == 0:
            break
    assert 0 == udp.queued_bytes()


async def test_a_call_already_challenged_is_not_turned_away(gateway: Gateway, ua: RawUA) -> None:
    """Overloaded, the authenticated retry of an INVITE challenged before goes on (its
    round is already spent); a new call from the same phone is refused."""
    task = gateway._overload_task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    target = gateway.address("udp")
    challenge = await ua.exchange(invite(ua, 7), target)
    assert 407 == challenge.status

    flood(target, 150)
    assert [False] * (WINDOW - 1) + [True] == [gateway.check_overload() for _ in range(WINDOW)]
    assert 1.0 == gateway.overload.share  # every new call refused
    client = DigestClient("alice", "s3cret")
    assert client.handle_challenge(407, challenge.headers.get_all("Proxy-Authenticate"))
    auth = client.authorization("INVITE", "sip:13912345678@gw.test", b"")
    assert auth is not None
    retry = invite(ua, 7).decode().replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
    # The same Call-ID again without credentials is a new call like any other: refused.
    bare = await ua.exchange(
        retry.replace("overload-7;rport", "overload-7a;rport").encode(), target
    )
    assert (503, 1) == (bare.status, gateway.overload.refused)
    retry = retry.replace("overload-7;rport", "overload-7b;rport")
    retry = retry.replace("Content-Length", f"{auth[0]}: {auth[1]}\r\nContent-Length")
    answered = await ua.exchange(retry.encode(), target)
    # Past the overload check and the digest: alice has not registered here.
    assert (403, "Not Registered") == (answered.status, answered.reason)
    assert 1 == gateway.overload.refused
    refused = await ua.exchange(invite(ua, 8), target)
    assert (503, 2) == (refused.status, gateway.overload.refused)


async def drained(gateway: Gateway) -> None:
    """Let the event loop read what the flood left queued."""

    (udp,) = gateway._udp_listeners()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if udp.queued_bytes() == 0:
            return
    raise AssertionError("the flood was not read")


async def test_an_overload_is_one_alert_and_its_end_another(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Episodes close together are one overload for an operator: one ``overload`` alert
    when the first starts, ``overload-over`` once OVERLOAD_QUIET passed without one."""
    task = gateway._overload_task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    alerts: list[Alert] = []
    gateway.events.subscribe(lambda e: alerts.append(e) if isinstance(e, Alert) else None)
    target = gateway.address("udp")
    for _episode in range(2):
        flood(target, 150)
        assert [gateway.check_overload() for _ in range(WINDOW)][-1]
        await drained(gateway)
        assert not [gateway.check_overload() for _ in range(64)][-1]
    assert 2 == gateway.overload.episodes
    assert [(AlertKind.OVERLOAD, Severity.WARNING)] == [(a.kind, a.severity) for a in alerts]
    assert "new calls turned away" in alerts[0].message
    assert alerts[0].detail["queued_kb"] >= LIMIT_KB

    gateway.check_overload()  # quiet, but not for OVERLOAD_QUIET yet
    assert 1 == len(alerts)
    monkeypatch.setattr("gateway.callpath.element.OVERLOAD_QUIET", 0.0)
    gateway.check_overload()
    over = alerts[-1]
    assert (AlertKind.OVERLOAD_OVER, Severity.INFO, 0) == (
        over.kind,
        over.severity,
        over.detail["refused"],
    )
    gateway.check_overload()
    assert 2 == len(alerts)  # once


async def test_the_limit_stays_within_the_receive_buffer(gateway: Gateway) -> None:
    """The kernel drops datagrams once a listener's receive buffer is full: a limit
    above half of it is lowered to that (a host whose net.core.rmem_max keeps the
    buffer small would otherwise never reach the limit)."""

    (udp,) = gateway._udp_listeners()
    assert udp.receive_buffer >= 2 * LIMIT_KB * 1024  # this box: the limit fits
    gateway._fit_overload_limit()
    assert LIMIT_KB * 1024 == gateway.overload.limit
    udp.receive_buffer = 96 * 1024  # what a small rmem_max leaves
    gateway._fit_overload_limit()
    assert 48 * 1024 == gateway.overload.limit
