"""TCPTransport over loopback: framing on real sockets, bounds, connection reuse."""

from __future__ import annotations

import asyncio

import pytest

from gateway.sip import Request, make_response
from gateway.transport import TCPTransport
from simulator.testkit import free_port

from .conftest import Collector, options, parse_response


async def _read_message(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + await reader.readexactly(length)


async def _closed(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    """Read until EOF (the server closed); returns what came before it."""
    async with asyncio.timeout(timeout):
        return await reader.read()


@pytest.fixture
async def tcp(collector: Collector):  # type: ignore[no-untyped-def]
    """A TCP transport on 127.0.0.1:0 answering every request with 200; closed at teardown."""
    collector.answer = True
    transport = await TCPTransport.listen("127.0.0.1", 0, collector, max_message_size=4096)
    yield transport
    await transport.close()


async def test_round_trip_and_connection_reuse(tcp: TCPTransport, collector: Collector) -> None:
    """Two requests on one connection are both answered on that same connection."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        writer.write(options(transport="TCP") + options(transport="TCP", call_id="second"))
        first = parse_response(await _read_message(reader))
        second = parse_response(await _read_message(reader))
        assert [first.call_id, second.call_id] == ["cid-1@test", "second"]
        local = writer.get_extra_info("sockname")[:2]
        assert tcp.connection_for(local) is not None
        assert tcp.stats.connections_opened == 1
        assert tcp.stats.delivered == 2
    finally:
        writer.close()


async def test_byte_by_byte(tcp: TCPTransport) -> None:
    """A request written one octet at a time is framed and answered once."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        for octet in options(transport="TCP", body=b"ab"):
            writer.write(bytes([octet]))
            await writer.drain()
        assert parse_response(await _read_message(reader)).status == 200
        assert tcp.stats.received == 1
    finally:
        writer.close()


async def test_ping_gets_pong(tcp: TCPTransport) -> None:
    """RFC 5626 §3.5.1: CRLFCRLF ping is answered with a single CRLF pong."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        writer.write(b"\r\n\r\n")
        async with asyncio.timeout(2):
            assert await reader.readexactly(2) == b"\r\n"
        assert tcp.stats.keepalives == 1
    finally:
        writer.close()


async def test_oversize_header_block_closes(tcp: TCPTransport) -> None:
    """A header block that does not end within the bound: 513 if answerable, then close."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        head = options(transport="TCP").split(b"\r\n\r\n")[0] + b"\r\nX-Pad: "
        writer.write(head + b"p" * 5000)
        rest = await _closed(reader)
        assert parse_response(rest).status == 513
        assert tcp.stats.parse_errors == 1
        assert tcp.stats.framing_closes == 1
        assert tcp.stats.answered_errors == 1
        assert tcp.stats.dropped == 0
    finally:
        writer.close()


async def test_content_length_over_bound_closes(tcp: TCPTransport) -> None:
    """A Content-Length beyond max_message_size gets 513 and the connection is closed."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        writer.write(options(transport="TCP", content_length=10_000_000))
        assert parse_response(await _closed(reader)).status == 513
    finally:
        writer.close()


async def test_garbage_closes_without_answer(tcp: TCPTransport) -> None:
    """Garbage with no request in it is dropped: no answer, connection closed."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        writer.write(b"\x16\x03\x01 not sip at all\r\n\r\n")
        assert await _closed(reader) == b""
        assert {"unparseable": 1} == dict(tcp.stats.dropped_by_reason)
        assert tcp.stats.framing_closes == 1
    finally:
        writer.close()


async def test_malformed_request_answered_400_connection_kept(tcp: TCPTransport) -> None:
    """A framed but malformed request is answered 400 and the connection stays usable."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        bad = options(transport="TCP").replace(b"Max-Forwards: 70", b"Broken header line")
        writer.write(bad)
        assert parse_response(await _read_message(reader)).status == 400
        writer.write(options(transport="TCP"))
        assert parse_response(await _read_message(reader)).status == 200
    finally:
        writer.close()


async def test_missing_content_length_answered_and_closed(tcp: TCPTransport) -> None:
    """RFC 3261 §18.3: a stream message needs Content-Length; 400 then close."""
    reader, writer = await asyncio.open_connection(*tcp.local_address)
    try:
        writer.write(options(transport="TCP").replace(b"Content-Length: 0\r\n", b""))
        assert parse_response(await _closed(reader)).status == 400
    finally:
        writer.close()


async def test_max_connections(collector: Collector) -> None:
    """Connections beyond max_connections are closed at once and counted."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector, max_connections=2)
    writers = []
    try:
        for _ in range(2):
            _, w = await asyncio.open_connection(*tcp.local_address)
            writers.append(w)
        reader, w = await asyncio.open_connection(*tcp.local_address)
        writers.append(w)
        assert await _closed(reader) == b""
        assert tcp.stats.connections_refused == 1
        assert len(tcp.connections) == 2
    finally:
        for w in writers:
            w.close()
        await tcp.close()


async def test_idle_timeout(collector: Collector) -> None:
    """A connection with no traffic for idle_timeout is closed by us."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector, idle_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection(*tcp.local_address)
        assert await _closed(reader, timeout=2.0) == b""
        assert tcp.stats.connections_closed_idle == 1
        writer.close()
    finally:
        await tcp.close()


async def test_outbound_connection_and_reuse(collector: Collector) -> None:
    """send() to a peer without a connection opens one; the peer's answer comes back on it."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await _read_message(reader)
        await got.put(data)
        msg = parse_response(data) if data.startswith(b"SIP/") else None
        assert msg is None
        from gateway.sip import parse

        req = parse(data, stream=True)
        assert isinstance(req, Request)
        writer.write(bytes(make_response(req, 200, to_tag="p")))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()[:2]
    try:
        assert tcp.send(options(transport="TCP"), addr)
        async with asyncio.timeout(2):
            await got.get()
        await collector.wait(1)
        assert collector.received[0][0].status == 200  # type: ignore[union-attr]
        assert tcp.connection_for(addr) is not None
        assert tcp.send(options(transport="TCP", call_id="again"), addr)
        assert tcp.stats.connections_opened == 1
    finally:
        await tcp.close()
        server.close()
        await server.wait_closed()


async def test_connect_failure_counted(collector: Collector) -> None:
    """A send to a closed port fails later, quietly, and is counted as a send error."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector)
    port = free_port()
    try:
        tcp.send(options(transport="TCP"), ("127.0.0.1", port))
        async with asyncio.timeout(2):
            while tcp.stats.send_errors == 0:
                await asyncio.sleep(0.01)
        assert tcp.stats.sent == 0
    finally:
        await tcp.close()


async def test_ipv6_round_trip(collector: Collector) -> None:
    """TCP over ::1."""
    collector.answer = True
    try:
        tcp = await TCPTransport.listen("::1", 0, collector)
    except OSError:
        pytest.skip("::1 not configured")
    try:
        reader, writer = await asyncio.open_connection(*tcp.local_address)
        writer.write(options(transport="TCP", via_host="[::1]:5099"))
        assert parse_response(await _read_message(reader)).status == 200
        writer.close()
    finally:
        await tcp.close()


async def test_response_after_connection_closed_goes_to_via(collector: Collector) -> None:
    """§18.2.2: with the request's connection gone, a new one is opened to received + sent-by port."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def client_listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await got.put(await _read_message(reader))
        writer.close()

    listener = await asyncio.start_server(client_listener, "127.0.0.1", 0)
    via_port = listener.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection(*tcp.local_address)
        writer.write(options(transport="TCP", via_host=f"127.0.0.1:{via_port}", rport=True))
        await collector.wait(1)
        request, source, _ = collector.received[0]
        writer.close()
        async with asyncio.timeout(2):
            while tcp.has_connection(source):
                await asyncio.sleep(0.01)
        assert isinstance(request, Request)
        assert tcp.send_response(make_response(request, 200, to_tag="x"), source, symmetric=True)
        async with asyncio.timeout(2):
            answer = parse_response(await got.get())
        assert 200 == answer.status
    finally:
        await tcp.close()
        listener.close()
        await listener.wait_closed()


async def test_outbound_connections_bounded(collector: Collector) -> None:
    """Sends that would open more than max_connections connections are refused and counted."""
    tcp = await TCPTransport.listen("127.0.0.1", 0, collector, max_connections=2)
    try:
        # send() decides synchronously; the connect tasks have not run yet, so
        # the first two destinations are pending when the third is asked for.
        assert tcp.send(b"x", ("127.0.0.1", 9))
        assert tcp.send(b"x", ("127.0.0.1", 11))
        assert tcp.send(b"x", ("127.0.0.1", 13)) is False
        assert 1 == tcp.stats.dropped_by_reason["connection-limit"]
    finally:
        await tcp.close()
