"""UDP transport: one SIP message per datagram (RFC 3261 §18.3).

A thin ``asyncio.DatagramProtocol`` adapter: datagrams go to the shared receive
path of :class:`~gateway.transport.base.Transport`, sends go to ``sendto``.

asyncio reads one datagram per wake-up of the event loop. When it hands one over,
the transport reads what else is already queued on the socket, up to
:data:`READ_BATCH` datagrams, and handles that batch answers first, then INVITEs, then
the rest, each class in arrival order (:func:`urgency`). A wake-up then serves a burst,
not one message of it, and behind a backlog the messages a caller is waiting on to hear
the call set up (the 407, the INVITE, the carrier's answer) go before the ACKs, BYEs
and REGISTERs that arrived with them. UDP promises no order; a CANCEL still follows its
INVITE, and in-dialog requests keep their order among themselves.

It must never raise OS errors to its callers (ICMP errors and failed sends are
logged and counted), never let the asyncio write buffer grow without bound
(sends are refused once it passes a limit), and never parse anything itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import structlog

from gateway.sip.message import Response
from gateway.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Address,
    Message,
    MessageHandler,
    Transport,
    TransportName,
    normalize_address,
)

__all__ = ["DEFAULT_RECEIVE_BUFFER", "READ_BATCH", "UDPTransport", "queued_bytes", "urgency"]

log = structlog.get_logger("gateway.transport.udp")

DEFAULT_RECEIVE_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF asked for: bursts above ~2,000 datagrams/s overflow the 208 KiB default."""

MAX_WRITE_BUFFER = 1024 * 1024
"""Bytes queued in asyncio's datagram transport beyond which sends are refused."""

READ_BATCH = 16
"""Datagrams handled per wake-up at most (the one asyncio read and those read after it).
Bounds how long one callback holds the loop: ~16 × 0.1-1.5 ms of SIP work."""

MAX_DATAGRAM = 65536
"""Bytes asked of ``recvfrom``: more than any UDP datagram carries."""


def urgency(message: Message) -> int:
    """The order a batch is handled in: 0 a response, 1 an INVITE that starts a call (no
    To tag), 2 anything else.

    Responses end transactions already under way (a carrier's 200 is relayed to a
    caller waiting for it); a new INVITE is a caller waiting for the 407 or the
    carrier; ACKs, BYEs, CANCELs, REGISTERs, in-dialog requests (a re-INVITE too) and
    the rest wait for them. A CANCEL thus never overtakes its INVITE, and the requests
    of class 2 keep their order among themselves (``sort`` is stable).
    """
    if isinstance(message, Response):
        return 0
    if message.method != "INVITE":
        return 2
    try:
        tag = message.to.tag
    except Exception:  # a malformed To: the router answers it, in its turn
        return 2
    return 1 if tag is None else 2


def _urgency(item: tuple[Message, Address]) -> int:
    return urgency(item[0])


def _is_keepalive(data: bytes) -> bool:
    # RFC 5626 §4.4.1 keep-alives over UDP are STUN, but many phones send bare
    # CRLF (or a few zero bytes) datagrams: harmless, not worth an error.
    # Checked on every datagram: a SIP message starts with a letter, decided
    # without copying the datagram; only a whitespace/NUL start is stripped.
    if data[:1] not in _KEEPALIVE_BYTES:
        return False
    return not data.strip(_KEEPALIVE_CHARS)


_KEEPALIVE_CHARS = b"\r\n\x00 \t"
_KEEPALIVE_BYTES = frozenset(bytes([c]) for c in _KEEPALIVE_CHARS) | {b""}


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UDPTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.owner._wakeup(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner._error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._closed.set()


class UDPTransport(Transport):
    """A bound UDP socket. Create with :meth:`listen`."""

    name = TransportName.UDP
    reliable = False

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(on_message, max_message_size=max_message_size)
        self._transport: asyncio.DatagramTransport | None = None
        self._local: Address = ("", 0)
        self._closed = asyncio.Event()
        self.receive_buffer = 0
        self._family = socket.AF_INET
        self._inode = 0
        self._sock: socket.socket | None = None

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
        reuse_port: bool = False,
    ) -> UDPTransport:
        """Bind ``host:port`` (port 0: any free port) and start receiving.

        ``reuse_port``: ``SO_REUSEPORT``, so the workers of one gateway share the
        port; the kernel hands each datagram to one of them by a hash of its
        source and destination addresses.
        """
        self = cls(on_message, max_message_size=max_message_size)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            except OSError as exc:  # capped or refused by the OS: keep its default
                log.warning("transport.udp.rcvbuf", error=repr(exc))
            self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host.strip("[]"), port))
        except BaseException:
            sock.close()
            raise
        self._family = family
        self._inode = os.fstat(sock.fileno()).st_ino
        self._sock = sock
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self._local = normalize_address(transport.get_extra_info("sockname"))
        return self

    @property
    def local_address(self) -> Address:
        return self._local

    def queued_bytes(self) -> int | None:
        """Bytes the kernel holds for this socket, not yet read (see :func:`queued_bytes`)."""
        return queued_bytes([self])

    def _wakeup(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """asyncio read ``data``: read what else is queued (up to :data:`READ_BATCH` in all),
        parse it all, and hand the messages over in :func:`urgency` order."""
        self.stats.wakeups += 1
        read = [(data, addr)]
        sock = self._sock
        while sock is not None and len(read) < READ_BATCH:
            try:
                read.append(sock.recvfrom(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # as asyncio does: reported, and the next wake-up reads on
                self._error(exc)
                break
        if len(read) == 1:
            self._datagram(data, normalize_address(addr))
            return
        batch: list[tuple[Message, Address]] = []
        for data, addr in read:
            source = normalize_address(addr)
            message = self._parse_datagram(data, source)
            if message is not None:
                batch.append((message, source))
        batch.sort(key=_urgency)
        for message, source in batch:
            if self._transport is None:  # closed by a handler: what is left goes with it
                return
            self._hand_over(message, source)

    def _error(self, exc: Exception) -> None:
        # ICMP port unreachable from an earlier sendto, etc.: an OS error at the edge.
        self.stats.send_errors += 1
        log.info("transport.udp.error", error=repr(exc))

    def _datagram(self, data: bytes, source: Address) -> None:
        message = self._parse_datagram(data, source)
        if message is not None:
            self._hand_over(message, source)

    def _parse_datagram(self, data: bytes, source: Address) -> Message | None:
        """A keep-alive counted (None), or :meth:`_parse_unit`; an unparseable request is
        answered back to where it came from."""
        if _is_keepalive(data):
            self.stats.keepalives += 1
            return None
        return self._parse_unit(
            data, source, lambda answer: self.send(answer, source), stream=False
        )

    def _send_bytes(self, data: bytes, addr: Address) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            log.info("transport.udp.send.closed")
            return False
        if (":" in addr[0]) != (self._family == socket.AF_INET6):
            # asyncio would report this through error_received only; refuse it here.
            log.info("transport.udp.send.family", host=addr[0], port=addr[1])
            return False
        # Selector datagram transports buffer without bound when the socket would
        # block; typeshed does not declare the method, asyncio has it.
        buffered: int = transport.get_write_buffer_size()  # type: ignore[attr-defined]
        if buffered > MAX_WRITE_BUFFER:
            self.stats.drop("send-buffer-full")
            return False
        try:
            transport.sendto(data, addr)
        except (OSError, ValueError) as exc:
            log.info("transport.udp.send.failed", error=repr(exc), host=addr[0], port=addr[1])
            return False
        return True

    async def close(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._transport = None
        transport.close()
        await self._closed.wait()


SO_MEMINFO = 55
"""Linux ``getsockopt`` (since 4.6): the socket's memory counters as 32-bit integers; the
first (``SK_MEMINFO_RMEM_ALLOC``) is its receive queue, what /proc/net/udp calls rx_queue."""


def queued_bytes(transports: list[UDPTransport]) -> int | None:
    """The most bytes the kernel holds unread for any of ``transports`` (datagrams with
    their buffer overhead: 1,280-2,304 bytes for a SIP message); None when unknown for all.

    Asked of each socket (``SO_MEMINFO``, under a microsecond), or, where the kernel
    lacks that, read from ``rx_queue`` of /proc/net/udp and udp6, whose length grows
    with every UDP socket of the host (a media relay beside the gateway has thousands).
    The event loop's own lag cannot show this backlog: a wake-up reads at most
    :data:`READ_BATCH` datagrams and the timers keep their time while the queue grows.
    """
    most: int | None = None
    unanswered: list[UDPTransport] = []
    for transport in transports:
        sock = transport._sock
        if sock is None or transport._transport is None:
            continue
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4)
        except OSError:
            unanswered.append(transport)
            continue
        size = int.from_bytes(raw[:4], sys.byteorder)
        most = size if most is None else max(most, size)
    if unanswered:
        listed = _listed_queued_bytes(unanswered)
        if listed is not None:
            most = listed if most is None else max(most, listed)
    return most


def _listed_queued_bytes(transports: list[UDPTransport]) -> int | None:
    """:func:`queued_bytes` from /proc/net/udp and udp6 (``rx_queue``), read once each."""
    wanted: dict[str, set[bytes]] = {}
    for transport in transports:
        if transport._inode and transport._transport is not None:
            path = "/proc/net/udp6" if transport._family == socket.AF_INET6 else "/proc/net/udp"
            wanted.setdefault(path, set()).add(str(transport._inode).encode())
    most: int | None = None
    for path, inodes in wanted.items():
        try:
            with open(path, "rb") as table:
                lines = table.read().splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                try:
                    size = int(fields[4].split(b":")[1], 16)
                except (IndexError, ValueError):
                    continue
                most = size if most is None else max(most, size)
    return most
