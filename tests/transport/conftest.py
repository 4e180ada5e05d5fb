"""Fixtures and wire builders for the transport tests (loopback only, port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.sip import Request, Response, make_response
from gateway.transport import Address, Message, Transport


def options(
    *,
    branch: str = "z9hG4bKtest1",
    via_host: str = "127.0.0.1:5099",
    rport: bool = False,
    call_id: str = "cid-1@test",
    body: bytes = b"",
    content_length: int | None = None,
    transport: str = "UDP",
) -> bytes:
    """One OPTIONS request as wire bytes (CRLF line ends)."""
    via = f"SIP/2.0/{transport} {via_host};branch={branch}" + (";rport" if rport else "")
    cl = len(body) if content_length is None else content_length
    return (
        f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
        f"Via: {via}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=a1\r\n"
        f"To: <sip:gw@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Content-Length: {cl}\r\n\r\n"
    ).encode() + body


@dataclass
class Collector:
    """A message handler that records deliveries and can answer requests with 200."""

    received: list[tuple[Message, Address, Transport]] = field(default_factory=list)
    answer: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, message: Message, source: Address, transport: Transport) -> None:
        self.received.append((message, source, transport))
        self.event.set()
        if self.answer and isinstance(message, Request):
            transport.send_response(make_response(message, 200, to_tag="t1"), source)

    async def wait(self, count: int, timeout: float = 2.0) -> None:
        """Wait until ``count`` messages arrived."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.event.clear()
                await self.event.wait()


@pytest.fixture
def collector() -> Collector:
    """A fresh recording handler."""
    return Collector()


class UDPClient(asyncio.DatagramProtocol):
    """A loopback UDP peer that queues every datagram it gets."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))

    def send(self, data: bytes, addr: Address) -> None:
        """Send one datagram."""
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self, timeout: float = 2.0) -> bytes:
        """The next datagram, or TimeoutError."""
        async with asyncio.timeout(timeout):
            data, _ = await self.queue.get()
        return data

    @property
    def address(self) -> Address:
        """The client's bound address."""
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


@pytest.fixture
async def udp_client_factory() -> AsyncIterator[Callable[..., Any]]:
    """Create loopback UDP clients (``await factory(host)``); all closed at teardown."""
    clients: list[UDPClient] = []

    async def make(host: str = "127.0.0.1") -> UDPClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(UDPClient, local_addr=(host, 0))
        clients.append(proto)
        return proto

    yield make
    for c in clients:
        if c.transport is not None:
            c.transport.close()


def parse_response(data: bytes) -> Response:
    """Parse bytes that must be a response."""
    from gateway.sip import parse

    msg = parse(data)
    assert isinstance(msg, Response)
    return msg
