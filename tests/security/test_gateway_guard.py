"""The guessing/flood defence inside the SIP element, through MemoryTransports: no sockets.

An attacker address guesses alice's password: its refusals are held back, then
it is banned (nothing answered, counted, an alert, the ban file); alice's own
phone on another address registers at once. A CLI clear of the ban file is
adopted by the next housekeeping round.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.callpath.element import Gateway
from gateway.callpath.security import BanFile, ban_file_path
from gateway.config import Settings
from gateway.sip import Response, parse
from gateway.sip.digest import DigestClient
from gateway.telemetry.events import Alert, AlertKind
from gateway.transport import MemoryTransport

GW = ("127.0.0.1", 5070)
ATTACKER = ("127.0.0.3", 40000)
AGENT = ("127.0.0.1", 41000)


def register(source: tuple[str, int], n: int, auth: tuple[str, str] | None = None) -> bytes:
    """REGISTER alice from ``source`` (CSeq n), optionally with credentials."""
    host, port = source
    extra = f"{auth[0]}: {auth[1]}\r\n" if auth else ""
    return (
        "REGISTER sip:127.0.0.1:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{host.replace('.', '')}-{n}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=f1\r\n"
        "To: <sip:alice@127.0.0.1>\r\n"
        f"Call-ID: reg-{host}@test\r\n"
        f"CSeq: {n} REGISTER\r\n"
        f"Contact: <sip:alice@{host}:{port}>\r\n"
        "Expires: 300\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def make_gateway(tmp_path: Path, **security: object) -> tuple[Gateway, MemoryTransport]:
    """A gateway with alice, its store (and ban file) in tmp_path, on one memory transport.

    The tarpit delay is 0 unless a test sets it (answers then come at once).
    """
    security.setdefault("delay", 0.0)
    settings = Settings(
        sip={"listen": ["udp:127.0.0.1:5070"], "realm": "dialgate"},
        store={"path": str(tmp_path / "gw.db")},
        users=[{"name": "alice", "password": "s3cret"}],
        security=security,
    )
    gw = Gateway(settings)
    mem = MemoryTransport(gw.handle, GW)
    gw.add_transport(mem)
    return gw, mem


def to(mem: MemoryTransport, dest: tuple[str, int]) -> list[Response]:
    """Responses sent to ``dest`` so far."""
    out = []
    for data, addr in mem.sent:
        if addr == dest:
            msg = parse(data)
            assert isinstance(msg, Response)
            out.append(msg)
    return out


def guess(
    gw: Gateway, mem: MemoryTransport, source: tuple[str, int], password: str, n: int
) -> None:
    """One svcrack-style round: REGISTER, take the 401, answer it with ``password``."""
    before = len(to(mem, source))
    mem.inject(register(source, 2 * n), source)
    got = to(mem, source)[before:]
    if not got or got[-1].status != 401:
        mem.inject(
            register(source, 2 * n + 1, ("Authorization", 'Digest username="alice"')), source
        )
        return
    client = DigestClient("alice", password=password)
    assert client.handle_challenge(401, got[-1].headers.get_all("WWW-Authenticate"))
    auth = client.authorization("REGISTER", "sip:127.0.0.1:5070")
    assert auth is not None
    mem.inject(register(source, 2 * n + 1, auth), source)


async def test_guessing_source_banned_agent_elsewhere_registers(tmp_path: Path) -> None:
    """10 wrong passwords from 127.0.0.3: banned, then answered nothing (counted), an alert
    and the ban file; alice on 127.0.0.1 registers with her password at once."""
    gw, mem = make_gateway(tmp_path)
    alerts: list[Alert] = []
    gw.events.subscribe(lambda e: alerts.append(e) if isinstance(e, Alert) else None)
    for n in range(12):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    statuses = [r.status for r in to(mem, ATTACKER)]
    # 10 rounds of (401 challenge, 401 refusal) minus the 10th refusal: banned there.
    assert 19 == len(statuses)
    assert {401} == set(statuses)
    sent = len(mem.sent)
    guess(gw, mem, ATTACKER, "s3cret", 99)  # even the right password: nothing
    assert sent == len(mem.sent)
    assert gw.security.banned("127.0.0.3", time.time()) is not None
    assert gw.security.stats.blocked >= 2
    [alert] = alerts
    assert (AlertKind.SOURCE_BANNED, "127.0.0.3") == (alert.kind, alert.detail["address"])
    gw.housekeep(time.monotonic())  # the ban file is written once per round
    assert ["127.0.0.3"] == list(BanFile(ban_file_path(gw.settings)).load())

    guess(gw, mem, AGENT, "s3cret", 1)
    assert [401, 200] == [r.status for r in to(mem, AGENT)]


def test_ban_answer_403(tmp_path: Path) -> None:
    """ban_answer = "403": the banned source gets a stateless 403 Forbidden."""
    gw, mem = make_gateway(tmp_path, ban_answer="403")
    for n in range(10):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    mem.inject(register(ATTACKER, 100), ATTACKER)
    assert 403 == to(mem, ATTACKER)[-1].status


def test_cli_clear_is_adopted_by_housekeeping(tmp_path: Path) -> None:
    """The CLI empties the ban file; the next housekeeping round lifts the ban in the gateway."""
    gw, mem = make_gateway(tmp_path)
    for n in range(10):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    assert gw.security.banned("127.0.0.3", time.time()) is not None
    gw.housekeep(time.monotonic())  # written to the ban file
    BanFile(ban_file_path(gw.settings)).update(lambda bans: bans.clear(), time.time())
    gw.housekeep(time.monotonic())
    assert gw.security.banned("127.0.0.3", time.time()) is None
    before = len(to(mem, ATTACKER))
    mem.inject(register(ATTACKER, 500), ATTACKER)
    assert [401] == [r.status for r in to(mem, ATTACKER)[before:]]


def test_bans_survive_a_restart(tmp_path: Path) -> None:
    """A new gateway over the same store adopts the ban file at start."""
    gw, mem = make_gateway(tmp_path)
    for n in range(10):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    gw.housekeep(time.monotonic())
    again, mem2 = make_gateway(tmp_path)
    again._sync_bans(time.time())
    mem2.inject(register(ATTACKER, 1), ATTACKER)
    assert [] == to(mem2, ATTACKER)


def test_flood_from_one_source_is_banned(tmp_path: Path) -> None:
    """OPTIONS beyond flood_requests in flood_window: banned; another source still answered."""
    gw, mem = make_gateway(tmp_path, flood_requests=50)
    options = (
        b"OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:40000;branch=z9hG4bKf%d\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:x@a>;tag=1\r\nTo: <sip:gw@127.0.0.1>\r\n"
        b"Call-ID: flood@test\r\nCSeq: %d OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    for i in range(200):
        mem.inject(options % (i, i + 1), ATTACKER)
    assert 50 == len(to(mem, ATTACKER))
    assert 1 == gw.security.stats.flood_bans
    mem.inject(options % (999, 1), AGENT)
    assert [200] == [r.status for r in to(mem, AGENT)]


async def test_tarpit_holds_answers_without_blocking(tmp_path: Path) -> None:
    """Past delay_after the refusal arrives `delay` seconds later; the loop keeps serving."""
    gw, mem = make_gateway(tmp_path, delay=0.3, delay_after=2, ban_after=50)
    guess(gw, mem, ATTACKER, "wrong0", 0)  # failure 1: answered at once
    before = len(to(mem, ATTACKER))
    started = time.monotonic()
    guess(gw, mem, ATTACKER, "wrong1", 1)  # its challenge at once, the refusal (failure 2) held
    assert before + 1 == len(to(mem, ATTACKER))
    guess(gw, mem, AGENT, "s3cret", 1)  # meanwhile another source is answered at once
    assert [401, 200] == [r.status for r in to(mem, AGENT)]
    while len(to(mem, ATTACKER)) == before + 1 and time.monotonic() - started < 3:
        await asyncio.sleep(0.02)
    waited = time.monotonic() - started
    assert [401, 401] == [r.status for r in to(mem, ATTACKER)[before:]]
    assert 0.25 <= waited < 1.5
    # Now even a plain challenge to that source is held back.
    mem.inject(register(ATTACKER, 77), ATTACKER)
    assert before + 2 == len(to(mem, ATTACKER))
    await asyncio.sleep(0.5)
    assert before + 3 == len(to(mem, ATTACKER))


def test_metrics_expose_the_ban(tmp_path: Path) -> None:
    """/metrics families: bans counter and the banned-sources gauge."""
    from gateway.callpath.security import metric_families
    from gateway.telemetry.metrics import render_families

    gw, mem = make_gateway(tmp_path)
    for n in range(10):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    text = render_families(metric_families(gw.security, time.time()))
    assert "dialgate_security_bans_total 1.0\n" in text


@pytest.mark.parametrize("enabled", [False])
def test_disabled_never_bans(tmp_path: Path, enabled: bool) -> None:
    """[security] enabled = false: twenty wrong passwords, every one answered."""
    gw, mem = make_gateway(tmp_path, enabled=enabled)
    for n in range(20):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    assert 40 == len(to(mem, ATTACKER))


def test_a_clear_before_the_ban_is_written_does_not_lift_it(tmp_path: Path) -> None:
    """A ban made this round is not in the file yet: the round adopting the file keeps it."""
    gw, mem = make_gateway(tmp_path)
    BanFile(ban_file_path(gw.settings)).update(lambda bans: None, time.time())  # a file exists
    for n in range(10):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    gw.housekeep(time.monotonic())
    assert gw.security.banned("127.0.0.3", time.time()) is not None
    assert ["127.0.0.3"] == list(BanFile(ban_file_path(gw.settings)).load())


def test_many_bans_one_write_and_limited_lines(tmp_path: Path) -> None:
    """100 flooding sources in one round: 100 bans, at most BAN_LOG_RATE alerts, one file write."""
    from gateway.callpath.element import BAN_LOG_RATE

    gw, mem = make_gateway(tmp_path, flood_requests=2)
    alerts: list[Alert] = []
    gw.events.subscribe(lambda e: alerts.append(e) if isinstance(e, Alert) else None)
    options = (
        "OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {h}:5060;branch=z9hG4bK{i}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:x@a>;tag=1\r\nTo: <sip:gw@127.0.0.1>\r\n"
        "Call-ID: f{i}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    for k in range(100):
        host = f"198.51.100.{k}"
        for i in range(3):
            mem.inject(options.format(h=host, i=i).encode(), (host, 5060))
    assert 100 == gw.security.stats.bans
    assert BAN_LOG_RATE == len(alerts)
    gw.housekeep(time.monotonic())
    assert 100 == len(BanFile(ban_file_path(gw.settings)).load())
