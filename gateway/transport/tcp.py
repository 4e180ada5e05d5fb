"""TCP transport: a listener, its connections, and a cache keyed by peer address.

Each connection frames its byte stream with the sans-IO
:class:`~gateway.transport.framing.StreamFramer` and hands complete messages to
the shared receive path. Responses and requests to a peer reuse the
connection it came in on (RFC 3261 §18.2.2), found by the peer's
``(host, port)``; a send to a peer without one opens an outbound connection.

Bounds, all from the constructor: message size (513/400 and close on a framing
error), number of connections in total and per source address (extra ones are
closed at once, counted, logged once per source), a deadline for a complete
message once its first octet arrived (a slow sender is closed), idle time (one
re-armed timer per connection serves both deadlines), queued outgoing octets per
connection (a peer that does not read is disconnected).

It must never raise OS errors to callers (logged and counted instead), never
buffer without bound, and never parse SIP itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import structlog

from gateway.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Address,
    MessageHandler,
    Transport,
    TransportName,
    normalize_address,
)
from gateway.transport.framing import Frame, FramingError, Ping, StreamFramer

__all__ = ["TCPConnection", "TCPTransport"]

log = structlog.get_logger("gateway.transport.tcp")

DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PER_SOURCE = 256
DEFAULT_HEAD_TIMEOUT = 20.0
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_WRITE_BUFFER = 1024 * 1024
_PONG = b"\r\n"


class TCPConnection(asyncio.Protocol):
    """One TCP connection (accepted or opened by us)."""

    def __init__(self, owner: TCPTransport, *, outbound_key: Address | None = None) -> None:
        self.owner = owner
        self.framer = StreamFramer(owner.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.outbound_key = outbound_key
        self.last_activity = time.monotonic()
        # When the first octet of the message being framed arrived (None: between
        # messages). A message must be complete within owner.head_timeout of it.
        self.message_started: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = normalize_address(peer) if peer else ("", 0)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.owner._register(self):
            transport.abort()
            return
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        now = self.last_activity = time.monotonic()
        framed = False
        for event in self.framer.feed(data):
            if isinstance(event, Frame):
                framed = True
                self.owner._receive(event.data, self.peer, self.write_counted, stream=True)
            elif isinstance(event, Ping):
                self.owner.stats.keepalives += 1
                self.write(_PONG)
            elif isinstance(event, FramingError):
                self._framing_error(event)
                return
        if not self.framer.buffered:
            self.message_started = None
        elif framed or self.message_started is None:
            self.message_started = now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- helpers ------------------------------------------------------------------

    def _framing_error(self, event: FramingError) -> None:
        stats = self.owner.stats
        stats.received += 1
        stats.parse_errors += 1
        self.owner._answer_error(event.head, event.error, self.peer, self.write_counted)
        stats.framing_closes += 1
        log.info(
            "transport.tcp.framing_error",
            peer=f"{self.peer[0]}:{self.peer[1]}",
            status=event.error.status_code,
            detail=event.error.detail[:200],
        )
        # RFC 4475 §3.1.2.3: over a stream an unframeable message leaves no way to
        # find the next one, so the connection is closed (after the answer drains).
        self.close()

    def write(self, data: bytes) -> bool:
        """Queue ``data``; False when the connection is closing or the peer does not read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(data) > MAX_WRITE_BUFFER:
            self.owner.stats.drop("slow-reader-close")
            log.info("transport.tcp.slow_reader", peer=f"{self.peer[0]}:{self.peer[1]}")
            transport.abort()
            return False
        try:
            transport.write(data)
        except (OSError, RuntimeError) as exc:
            log.info("transport.tcp.write.failed", error=repr(exc))
            return False
        self.last_activity = time.monotonic()
        return True

    def write_counted(self, data: bytes) -> None:
        """``write`` with the owner's sent/send_errors counters (for stateless answers)."""
        if self.write(data):
            self.owner.stats.sent += 1
        else:
            self.owner.stats.send_errors += 1

    def close(self) -> None:
        """Close gracefully: queued data is flushed first."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.last_activity + self.owner.idle_timeout
        if self.message_started is not None:
            deadline = min(deadline, self.message_started + self.owner.head_timeout)
        else:
            # A message may start before the idle deadline: wake by its deadline.
            deadline = min(deadline, time.monotonic() + self.owner.head_timeout)
        self._timer = loop.call_at(
            loop.time() + max(0.0, deadline - time.monotonic()), self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        now = time.monotonic()
        started = self.message_started
        if started is not None and now - started >= self.owner.head_timeout:
            # A sender that trickles a message (one octet a minute keeps the idle
            # timer happy) would hold the connection for ever: the whole message
            # must arrive within head_timeout of its first octet.
            self.owner.stats.connections_closed_slow += 1
            self.owner._log_once(
                "transport.tcp.slow_sender_close",
                self.peer,
                buffered=self.framer.buffered,
                head_timeout=self.owner.head_timeout,
            )
            self.close()
            return
        if now - self.last_activity >= self.owner.idle_timeout:
            log.info("transport.tcp.idle_close", peer=f"{self.peer[0]}:{self.peer[1]}")
            self.owner.stats.connections_closed_idle += 1
            self.close()
            return
        self._arm_timer()


class TCPTransport(Transport):
    """A TCP listener plus the connection cache. Create with :meth:`listen`."""

    name = TransportName.TCP
    reliable = True

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    ) -> None:
        super().__init__(on_message, max_message_size=max_message_size)
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.head_timeout = head_timeout
        # Accepted connections per source host (outbound ones are not counted).
        self._per_source: dict[str, int] = {}
        # Sources already named in a log line for each event (bounded; cleared
        # when full so a spoofing flood cannot grow it).
        self._logged: set[tuple[str, str]] = set()
        self.connect_timeout = connect_timeout
        self.connections: dict[Address, TCPConnection] = {}
        self._all: set[TCPConnection] = set()
        self._pending: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._local: Address = ("", 0)
        self._closing = False

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        reuse_port: bool = False,
    ) -> TCPTransport:
        """Listen on ``host:port`` (port 0: any free port).

        ``reuse_port``: ``SO_REUSEPORT``, so the workers of one gateway share the
        port and the kernel spreads new connections over them.
        """
        self = cls(
            on_message,
            max_message_size=max_message_size,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            max_per_source=max_per_source,
            head_timeout=head_timeout,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: TCPConnection(self),
            host.strip("[]"),
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._local = normalize_address(self._server.sockets[0].getsockname())
        return self

    @property
    def local_address(self) -> Address:
        return self._local

    # -- connection bookkeeping ------------------------------------------------------

    def _log_once(self, event: str, peer: Address, **fields: object) -> None:
        """Log ``event`` the first time it happens for ``peer``'s host."""
        key = (event, peer[0])
        if key in self._logged:
            return
        if len(self._logged) >= 4096:
            self._logged.clear()
        self._logged.add(key)
        log.warning(event, peer=f"{peer[0]}:{peer[1]}", **fields)

    def _register(self, conn: TCPConnection) -> bool:
        host = conn.peer[0]
        inbound = conn.outbound_key is None
        reason: str | None = None
        if self._closing:
            reason = "closing"
        elif len(self._all) >= self.max_connections:
            reason = "total-limit"
        elif inbound and self._per_source.get(host, 0) >= self.max_per_source:
            reason = "per-source-limit"
        if reason is not None:
            self.stats.connections_refused += 1
            self.stats.connections_refused_by_reason[reason] += 1
            if reason != "closing":
                limit = self.max_connections if reason == "total-limit" else self.max_per_source
                self._log_once("transport.tcp.refused", conn.peer, reason=reason, limit=limit)
            return False
        self._all.add(conn)
        if inbound:
            self._per_source[host] = self._per_source.get(host, 0) + 1
        self.stats.connections_opened += 1
        self.connections[conn.peer] = conn
        if conn.outbound_key is not None:
            self.connections[conn.outbound_key] = conn
        return True

    def _unregister(self, conn: TCPConnection) -> None:
        if conn not in self._all:
            return
        self._all.discard(conn)
        if conn.outbound_key is None:
            host = conn.peer[0]
            left = self._per_source.get(host, 0) - 1
            if left > 0:
                self._per_source[host] = left
            else:
                self._per_source.pop(host, None)
        self.stats.connections_closed += 1
        for key in (conn.peer, conn.outbound_key):
            if key is not None and self.connections.get(key) is conn:
                del self.connections[key]

    # -- sending -----------------------------------------------------------------------

    def _send_bytes(self, data: bytes, addr: Address) -> bool:
        conn = self.connections.get(addr)
        if conn is not None:
            return conn.write(data)
        if self._closing:
            return False
        queue = self._pending.get(addr)
        if queue is not None:
            if sum(map(len, queue)) + len(data) > MAX_WRITE_BUFFER:
                self.stats.drop("connect-queue-full")
                return False
            queue.append(data)
            return True
        if len(self._all) + len(self._pending) >= self.max_connections:
            self.stats.connections_refused += 1
            self.stats.drop("connection-limit")
            return False
        self._pending[addr] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _connect(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: TCPConnection(self, outbound_key=addr), addr[0], addr[1]
                )
        except (OSError, TimeoutError) as exc:
            queued = self._pending.pop(addr, [])
            self.stats.send_errors += len(queued)
            self.stats.sent -= len(queued)  # they were counted as handed over
            log.info("transport.tcp.connect.failed", host=addr[0], port=addr[1], error=repr(exc))
            return
        for data in self._pending.pop(addr, []):
            conn.write(data)

    def has_connection(self, addr: Address) -> bool:
        conn = self.connections.get(addr)
        return conn is not None and conn.transport is not None and not conn.transport.is_closing()

    def connection_for(self, addr: Address) -> TCPConnection | None:
        """The cached connection to ``addr``, if any."""
        return self.connections.get(normalize_address(addr))

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        conns = list(self._all)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        for conn in conns:
            await conn.closed
        if self._server is not None:
            await self._server.wait_closed()
        self._pending.clear()
