"""TCP limits (issue 15): connections per source and in total, the message deadline.

Loopback only; 127.0.0.2 plays the attacker (Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from gateway import app
from gateway.callpath.element import Gateway
from gateway.config import Settings
from gateway.sip import Response, parse
from gateway.transport import TCPTransport

from .conftest import Collector, options

ATTACKER = "127.0.0.2"


async def _closed(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            return await reader.read()
        return b""


async def _read_message(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + await reader.readexactly(length)


async def test_per_source_limit_leaves_room_for_others(collector: Collector) -> None:
    """A source over max_per_source is closed at once; another source still connects."""
    collector.answer = True
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector, max_per_source=3)
    writers = []
    try:
        with capture_logs() as logs:
            for _ in range(3):
                _, w = await asyncio.open_connection(*tcp.local_address, local_addr=(ATTACKER, 0))
                writers.append(w)
            for _ in range(2):
                reader, w = await asyncio.open_connection(
                    *tcp.local_address, local_addr=(ATTACKER, 0)
                )
                writers.append(w)
                assert b"" == await _closed(reader)
            reader, w = await asyncio.open_connection(*tcp.local_address)
            writers.append(w)
            w.write(options(transport="TCP"))
            resp = parse(await _read_message(reader))
        assert isinstance(resp, Response)
        assert 200 == resp.status
        assert 2 == tcp.stats.connections_refused
        assert {"per-source-limit": 2} == dict(tcp.stats.connections_refused_by_reason)
        refused = [e for e in logs if e["event"] == "transport.tcp.refused"]
        assert 1 == len(refused)  # logged once per source
        assert "per-source-limit" == refused[0]["reason"]
        # A closed connection frees its place.
        writers[0].close()
        async with asyncio.timeout(2):
            while tcp._per_source.get(ATTACKER) != 2:
                await asyncio.sleep(0.01)
        _, w = await asyncio.open_connection(*tcp.local_address, local_addr=(ATTACKER, 0))
        writers.append(w)
        await asyncio.sleep(0.05)
        assert 3 == tcp._per_source[ATTACKER]
    finally:
        for w in writers:
            w.close()
        await tcp.close()


async def test_slow_sender_closed_by_head_deadline(collector: Collector) -> None:
    """One octet at a time keeps a connection active, but the message deadline closes it."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector, head_timeout=0.4, idle_timeout=30.0)
    try:
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection(*tcp.local_address)
            data = options(transport="TCP")
            started = time.monotonic()
            closed = False
            for i in range(len(data)):
                if writer.is_closing() or reader.at_eof():
                    break
                writer.write(data[i : i + 1])
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                try:
                    async with asyncio.timeout(0.1):
                        if await reader.read() == b"":
                            closed = True
                            break
                except TimeoutError:
                    pass
            elapsed = time.monotonic() - started
        assert closed
        assert elapsed < 2.0
        assert [] == collector.received
        assert 1 == tcp.stats.connections_closed_slow
        assert 0 == tcp.stats.connections_closed_idle
        assert 1 == sum(e["event"] == "transport.tcp.slow_sender_close" for e in logs)
        writer.close()
    finally:
        await tcp.close()


async def test_messages_within_deadline_keep_the_connection(collector: Collector) -> None:
    """The deadline runs per message: a steady stream of complete messages is never closed."""
    collector.answer = True
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector, head_timeout=0.3, idle_timeout=30.0)
    try:
        reader, writer = await asyncio.open_connection(*tcp.local_address)
        for n in range(6):
            data = options(transport="TCP", branch=f"z9hG4bKkeep{n}")
            half = len(data) // 2
            writer.write(data[:half])
            await asyncio.sleep(0.1)
            writer.write(data[half:])
            resp = parse(await _read_message(reader))
            assert isinstance(resp, Response)
            assert 200 == resp.status
        assert 0 == tcp.stats.connections_closed_slow
        writer.close()
    finally:
        await tcp.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """serve() with the default TCP limits on tcp:127.0.0.1:0; stopped at teardown."""
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(
        app.serve(
            Settings(sip={"listen": ["tcp:127.0.0.1:0"]}, admin={"listen": "127.0.0.1:0"}),
            ready=ready,
            stop=stop,
            on_ready=started.append,
        )
    )
    async with asyncio.timeout(5):
        await ready.wait()
    try:
        yield started[-1]
    finally:
        stop.set()
        await task


async def test_1100_connections_from_one_address(gateway: Gateway) -> None:
    """1,100 connections from 127.0.0.2: 127.0.0.1 still gets 200 to OPTIONS (defaults)."""
    [tcp] = gateway.transports
    assert isinstance(tcp, TCPTransport)
    host, port = tcp.local_address
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
            writers.append(w)

    try:
        async with asyncio.timeout(60):
            for _ in range(11):
                await asyncio.gather(*(one() for _ in range(100)))
            await asyncio.sleep(0.2)
        assert tcp.max_per_source == tcp._per_source[ATTACKER]
        assert 1100 - tcp.max_per_source <= tcp.stats.connections_refused
        reader, w = await asyncio.open_connection(host, port)
        writers.append(w)
        w.write(
            (
                f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {host}:9;branch=z9hG4bKsecond\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:t@test>;tag=1\r\n"
                f"To: <sip:{host}:{port}>\r\nCall-ID: second@test\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        resp = parse(await _read_message(reader))
        assert isinstance(resp, Response)
        assert 200 == resp.status
    finally:
        for w in writers:
            w.close()
