"""gateway.app.serve() on real loopback sockets: port 0, IPv4 and IPv6, UDP and TCP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from gateway import app
from gateway.callpath.element import Gateway
from gateway.config import Settings
from gateway.sip import Response, parse


def _options(host: str, port: int, transport: str) -> bytes:
    uri_host = f"[{host}]" if ":" in host else host
    return (
        f"OPTIONS sip:{uri_host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {uri_host}:9;branch=z9hG4bKserve;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:t@test>;tag=1\r\n"
        f"To: <sip:{uri_host}:{port}>\r\nCall-ID: serve@test\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def running() -> AsyncIterator[Gateway]:
    """serve() with UDP+TCP on 127.0.0.1:0 (and ::1:0 when available); stopped at teardown."""
    listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
    if _ipv6():
        listen += ["udp:[::1]:0", "tcp:[::1]:0"]
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    with capture_logs() as logs:
        task = asyncio.create_task(
            app.serve(
                Settings(sip={"listen": listen}, admin={"listen": "127.0.0.1:0"}),
                ready=ready,
                stop=stop,
                on_ready=started.append,
            )
        )
        async with asyncio.timeout(5):
            await ready.wait()
    gw = started[-1]
    gw.test_logs = logs  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        stop.set()
        await task
    assert [] == gw.transports  # closed, listeners released


async def test_bound_ports_are_reported(running: Gateway) -> None:
    """Every listener has a real port, also announced as a ``listening`` log event."""
    logs = running.test_logs  # type: ignore[attr-defined]
    announced = {(e["transport"], e["host"], e["port"]) for e in logs if e["event"] == "listening"}
    assert {(a.transport, a.host, a.port) for a in running.addresses} == announced
    assert all(a.port != 0 for a in running.addresses)


async def test_options_over_every_listener(running: Gateway) -> None:
    """OPTIONS to each bound address, over its own transport, gets 200."""
    loop = asyncio.get_running_loop()
    for addr in running.addresses:
        data = _options(addr.host, addr.port, addr.transport.upper())
        if addr.transport == "udp":
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.bind((addr.host, 0))
                await loop.sock_sendto(s, data, (addr.host, addr.port))
                async with asyncio.timeout(2):
                    answer = await loop.sock_recv(s, 65535)
        else:
            reader, writer = await asyncio.open_connection(addr.host, addr.port)
            writer.write(data)
            async with asyncio.timeout(2):
                head = await reader.readuntil(b"\r\n\r\n")
            answer = head
            writer.close()
        resp = parse(answer)
        assert isinstance(resp, Response)
        assert 200 == resp.status, str(addr)


async def test_stats_logged_at_shutdown() -> None:
    """Stopping serve() logs one gateway.stats line with per-transport counters."""
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    with capture_logs() as logs:
        task = asyncio.create_task(
            app.serve(
                Settings(sip={"listen": ["udp:127.0.0.1:0"]}, admin={"listen": "127.0.0.1:0"}),
                ready=ready,
                stop=stop,
                on_ready=started.append,
            )
        )
        await ready.wait()
        addr = started[-1].address("udp")
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            await loop.sock_sendto(s, b"garbage", addr)
            await loop.sock_sendto(s, _options(*addr, "UDP"), addr)
            async with asyncio.timeout(2):
                await loop.sock_recv(s, 65535)
        stop.set()
        await task
    [stats] = [e for e in logs if e["event"] == "gateway.stats"]
    [udp] = stats["transports"].values()
    assert 1 == udp["parse_errors"]
    assert {"200": 1} == stats["gateway"]["answered"]


async def test_bind_failure_closes_everything() -> None:
    """If one listener cannot bind, serve() raises and leaves nothing bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(
            sip={"listen": ["udp:127.0.0.1:0", f"tcp:127.0.0.1:{port}"]},
            admin={"listen": "127.0.0.1:0"},
        )
        started: list[Gateway] = []
        with pytest.raises(OSError):
            await app.serve(settings, on_ready=started.append)
    assert [] == started
