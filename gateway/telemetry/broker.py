"""A small embedded MQTT 3.1.1 broker (asyncio), for ``dialgate up`` without mosquitto.

What this module is for: letting a developer run the gateway, the simulator's
carrier and the wallboard on a machine without a broker installed. It speaks
MQTT 3.1.1 (protocol level 4) over TCP:

* CONNECT/CONNACK, with the will message (published, and retained when asked,
  when a client goes away without DISCONNECT: network error, keep-alive
  timeout, protocol violation, or a newer connection taking over its client
  id); an empty client id gets one assigned (clean session only);
* PUBLISH at QoS 0 and 1 (PUBACK); messages go to every matching subscription
  once, at the lower of the published and the granted QoS, with RETAIN cleared;
* retained messages: kept per topic (an empty retained payload clears the
  topic) and sent, with RETAIN set, to each new subscription that matches;
* SUBSCRIBE/SUBACK with ``+`` and ``#`` wildcards (``$``-topics are not matched
  by a leading wildcard), UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP, DISCONNECT.

What it deliberately does not do (small and correct, not complete):

* QoS 2: a SUBSCRIBE asking for QoS 2 is granted QoS 1 (the spec lets a server
  grant less); a PUBLISH at QoS 2 closes the connection (3.1.1 has no way to
  refuse one politely); a will at QoS 2 is kept at QoS 1;
* sessions: every session is clean (CONNACK never says "session present",
  subscriptions end with the connection); nothing is persisted; no
  retransmission of unacknowledged QoS 1 messages (TCP carries them);
* authentication (any username/password is accepted: anonymous access, loopback
  use), TLS, WebSockets, MQTT 3.1 and 5 (CONNACK 0x01 "unacceptable protocol
  version").

What it must never do: let one client block another (each client has a writer
task and a bounded outgoing queue; a client that does not keep up loses the
newest messages, counted in :attr:`Broker.stats`, and at most ``max_inflight``
QoS 1 messages wait for its PUBACK), read an unbounded packet (``max_packet``),
or keep a connection after a malformed packet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import struct
from dataclasses import dataclass

import structlog

__all__ = [
    "Broker",
    "MalformedPacket",
    "Message",
    "topic_matches",
    "valid_filter",
]

log = structlog.get_logger("gateway.telemetry.broker")

# Control packet types (MQTT 3.1.1 §2.2.1).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

# CONNACK return codes (§3.2.2.3).
ACCEPTED = 0
BAD_PROTOCOL_VERSION = 1
IDENTIFIER_REJECTED = 2

# Fixed-header flags each non-PUBLISH packet must carry (§2.2.2).
_REQUIRED_FLAGS = {
    CONNECT: 0,
    PUBACK: 0,
    SUBSCRIBE: 2,
    UNSUBSCRIBE: 2,
    PINGREQ: 0,
    DISCONNECT: 0,
}

_PINGRESP = bytes((PINGRESP << 4, 0))


class MalformedPacket(Exception):
    """A packet that breaks MQTT 3.1.1: the connection is closed (will published)."""


@dataclass(frozen=True, slots=True)
class Message:
    """An application message as the broker routes it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------


def valid_filter(topic_filter: str) -> bool:
    """True when ``topic_filter`` is a valid 3.1.1 topic filter (§4.7.1)."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _valid_topic_name(topic: str) -> bool:
    return bool(topic) and not any(ch in topic for ch in "+#\x00")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` (a name) matches ``topic_filter`` (with ``+`` / ``#``)."""
    # §4.7.2: a filter starting with a wildcard does not match topics starting with "$".
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # also matches the parent level ("a/#" matches "a")
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


# ---------------------------------------------------------------------------
# Wire format
# ---------------------------------------------------------------------------


def _encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes(((kind << 4) | flags,)) + _encode_length(len(body)) + body


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def encode_publish(message: Message, packet_id: int | None, *, retain: bool) -> bytes:
    """A PUBLISH packet (``packet_id`` only for QoS 1)."""
    flags = (message.qos << 1) | (1 if retain else 0)
    body = _string(message.topic)
    if message.qos:
        assert packet_id is not None
        body += struct.pack("!H", packet_id)
    return _packet(PUBLISH, flags, body + message.payload)


class _Reader:
    """Cursor over one packet's variable header and payload; raises MalformedPacket."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise MalformedPacket("packet too short")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise MalformedPacket("packet too short")
        (value,) = struct.unpack_from("!H", self.data, self.pos)
        self.pos += 2
        return int(value)

    def blob(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.data):
            raise MalformedPacket("string runs past the packet")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def string(self) -> str:
        try:
            text = self.blob().decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("string is not UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("string holds U+0000")
        return text

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value


async def _read_packet(
    reader: asyncio.StreamReader, max_packet: int, *, first_type: int | None = None
) -> tuple[int, int, bytes]:
    """(type, flags, body) of the next packet; IncompleteReadError at EOF.

    With ``first_type`` anything else is refused on its first byte (not after
    waiting for a body that a non-MQTT peer will never send).
    """
    first = (await reader.readexactly(1))[0]
    if first_type is not None and first >> 4 != first_type:
        raise MalformedPacket(f"expected packet type {first_type}, got {first >> 4}")
    length = 0
    for shift in range(0, 28, 7):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise MalformedPacket("remaining length longer than 4 bytes")
    if length > max_packet:
        raise MalformedPacket(f"packet of {length} bytes exceeds the limit of {max_packet}")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


class _Client:
    """One connected client: subscriptions, will, and its outgoing queue and writer."""

    def __init__(self, broker: Broker, writer: asyncio.StreamWriter, peer: str) -> None:
        self.broker = broker
        self.writer = writer
        self.peer = peer
        self.client_id = ""
        self.subscriptions: dict[str, int] = {}
        self.will: Message | None = None
        self.keepalive = 0
        self.clean_exit = False  # DISCONNECT received (no will)
        # Outgoing: control packets (bytes) and messages ((message, retain flag)).
        self._out: collections.deque[bytes | tuple[Message, bool]] = collections.deque()
        self._queued_messages = 0
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._slot = asyncio.Event()
        self._ids = itertools.cycle(range(1, 65536))
        self._writer_task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start_writer(self) -> None:
        self._writer_task = asyncio.create_task(self._write_loop(), name=f"mqtt-out-{self.peer}")

    def send_packet(self, packet: bytes) -> None:
        """Queue a control packet (never dropped: at most one per packet received)."""
        self._out.append(packet)
        self._wake.set()

    def deliver(self, message: Message, *, retain: bool = False) -> None:
        """Queue an application message; drop it (counted) when the queue is full."""
        if self._queued_messages >= self.broker.queue_limit:
            self.dropped += 1
            self.broker.stats["dropped"] += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "mqtt client too slow, messages dropped",
                    client=self.client_id,
                    dropped=self.dropped,
                )
            return
        self._queued_messages += 1
        self._out.append((message, retain))
        self._wake.set()

    def acknowledge(self, packet_id: int) -> None:
        """A PUBACK from the client frees its in-flight slot."""
        self._inflight.discard(packet_id)
        self._slot.set()

    def _next_id(self) -> int:
        while True:
            packet_id = next(self._ids)
            if packet_id not in self._inflight:
                return packet_id

    async def _write_loop(self) -> None:
        writer = self.writer
        try:
            while True:
                while not self._out:
                    self._wake.clear()
                    await self._wake.wait()
                item = self._out.popleft()
                if isinstance(item, bytes):
                    writer.write(item)
                else:
                    self._queued_messages -= 1
                    message, retain = item
                    packet_id = None
                    if message.qos:
                        while len(self._inflight) >= self.broker.max_inflight:
                            self._slot.clear()
                            await self._slot.wait()
                        packet_id = self._next_id()
                        self._inflight.add(packet_id)
                    writer.write(encode_publish(message, packet_id, retain=retain))
                    self.broker.stats["sent"] += 1
                await writer.drain()
        except (ConnectionError, OSError):
            writer.close()

    async def flush(self, timeout: float = 1.0) -> None:
        """Give the writer a moment to send what is queued (before closing)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._out and self._writer_task is not None and not self._writer_task.done():
                    await asyncio.sleep(0.01)
                await self.writer.drain()

    async def stop_writer(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer_task
            self._writer_task = None


# ---------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------


class Broker:
    """An MQTT 3.1.1 broker on ``host:port`` (0 = a free port). See the module docstring.

    ``await broker.start()`` (or ``async with Broker() as broker``), then
    ``broker.url``; ``await broker.close()`` stops it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        queue_limit: int = 1000,
        max_inflight: int = 100,
        max_packet: int = 1 << 20,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.queue_limit = queue_limit
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        self.connect_timeout = connect_timeout
        self.retained: dict[str, Message] = {}
        self.clients: dict[str, _Client] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._assigned = itertools.count(1)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and accept connections (OSError when the port is taken)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        log.info("mqtt broker listening", host=self.address[0], port=self.address[1])

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("broker not started")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the bound socket."""
        host, port = self.address
        return f"mqtt://{f'[{host}]' if ':' in host else host}:{port}"

    async def close(self) -> None:
        """Stop accepting, drop every connection (no wills: the broker itself is going)."""
        if self._server is not None:
            self._server.close()
        for client in list(self.clients.values()):
            client.clean_exit = True
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- routing ----------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """Route ``message``: keep/clear it when retained, deliver to matching subscribers."""
        self.stats["received"] += 1
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        for client in list(self.clients.values()):
            granted = -1
            for topic_filter, qos in client.subscriptions.items():
                if qos > granted and topic_matches(topic_filter, message.topic):
                    granted = qos
            if granted >= 0:
                qos = min(granted, message.qos)
                out = (
                    message
                    if qos == message.qos
                    else Message(message.topic, message.payload, qos, message.retain)
                )
                client.deliver(out, retain=False)

    def _send_retained(self, client: _Client, topic_filter: str, granted: int) -> None:
        for message in list(self.retained.values()):
            if topic_matches(topic_filter, message.topic):
                qos = min(granted, message.qos)
                client.deliver(Message(message.topic, message.payload, qos, True), retain=True)

    # -- connections ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            # close() cancels connections; end normally, because asyncio's stream
            # callback (3.11) calls task.exception(), which raises on a cancelled task.
            pass
        finally:
            self._connections.discard(task)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        client = _Client(self, writer, peer)
        client.start_writer()
        registered = False
        try:
            registered = await self._connect(client, reader)
            if registered:
                await self._serve(client, reader)
        except MalformedPacket as exc:
            self.stats["malformed"] += 1
            log.info(
                "mqtt connection closed: malformed packet",
                peer=peer,
                client=client.client_id,
                error=str(exc),
            )
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except TimeoutError:
            log.info(
                "mqtt connection closed: keep-alive or connect timeout",
                peer=peer,
                client=client.client_id,
            )
        finally:
            if registered:
                if self.clients.get(client.client_id) is client:
                    del self.clients[client.client_id]
                if not client.clean_exit and client.will is not None:
                    log.info(
                        "mqtt will published", client=client.client_id, topic=client.will.topic
                    )
                    self.publish(client.will)
            await client.flush()
            await client.stop_writer()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connect(self, client: _Client, reader: asyncio.StreamReader) -> bool:
        """Read and answer CONNECT; True when the client is registered."""
        async with asyncio.timeout(self.connect_timeout):
            _, flags, body = await _read_packet(reader, self.max_packet, first_type=CONNECT)
        if flags != 0:
            raise MalformedPacket("CONNECT with fixed-header flags")
        r = _Reader(body)
        protocol = r.string()
        level = r.byte()
        if protocol != "MQTT" or level != 4:
            # §3.1.2.2: an unsupported level gets return code 1, then the connection closes.
            if protocol in ("MQTT", "MQIsdp"):
                client.send_packet(_packet(CONNACK, 0, bytes((0, BAD_PROTOCOL_VERSION))))
                return False
            raise MalformedPacket(f"unknown protocol name {protocol!r}")
        connect_flags = r.byte()
        if connect_flags & 0x01:
            raise MalformedPacket("CONNECT reserved flag set")
        clean = bool(connect_flags & 0x02)
        has_will = bool(connect_flags & 0x04)
        will_qos = (connect_flags >> 3) & 0x03
        will_retain = bool(connect_flags & 0x20)
        has_password = bool(connect_flags & 0x40)
        has_username = bool(connect_flags & 0x80)
        if not has_will and (will_qos or will_retain):
            raise MalformedPacket("will QoS/retain without a will")
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        if has_password and not has_username:
            raise MalformedPacket("password without username")
        client.keepalive = r.u16()
        client_id = r.string()
        if has_will:
            will_topic = r.string()
            will_payload = r.blob()
            if not _valid_topic_name(will_topic):
                raise MalformedPacket("will topic is not a valid topic name")
            # No QoS 2 here: a QoS 2 will is delivered at QoS 1.
            client.will = Message(will_topic, will_payload, min(will_qos, 1), will_retain)
        if has_username:
            r.string()  # accepted: anonymous broker
        if has_password:
            r.blob()
        if r.remaining():
            raise MalformedPacket("bytes after the CONNECT payload")
        if not client_id:
            if not clean:
                client.send_packet(_packet(CONNACK, 0, bytes((0, IDENTIFIER_REJECTED))))
                return False
            client_id = f"auto-{os.getpid()}-{next(self._assigned)}"
        client.client_id = client_id
        previous = self.clients.get(client_id)
        if previous is not None:
            # §3.1.4: a second connection with the same client id takes over.
            log.info("mqtt client id taken over", client=client_id, peer=client.peer)
            previous.writer.close()
        self.clients[client_id] = client
        self.stats["connections"] += 1
        client.send_packet(_packet(CONNACK, 0, bytes((0, ACCEPTED))))
        return True

    async def _serve(self, client: _Client, reader: asyncio.StreamReader) -> None:
        # §3.1.2.10: 1.5 × keep-alive without a packet closes the connection.
        limit = client.keepalive * 1.5 if client.keepalive else None
        while True:
            async with asyncio.timeout(limit):
                kind, flags, body = await _read_packet(reader, self.max_packet)
            if kind in _REQUIRED_FLAGS and flags != _REQUIRED_FLAGS[kind]:
                raise MalformedPacket(f"packet type {kind} with flags {flags:#x}")
            if kind == PUBLISH:
                self._on_publish(client, flags, body)
            elif kind == PUBACK:
                if len(body) != 2:
                    raise MalformedPacket("PUBACK length")
                client.acknowledge(struct.unpack("!H", body)[0])
            elif kind == SUBSCRIBE:
                self._on_subscribe(client, body)
            elif kind == UNSUBSCRIBE:
                self._on_unsubscribe(client, body)
            elif kind == PINGREQ:
                if body:
                    raise MalformedPacket("PINGREQ with a body")
                client.send_packet(_PINGRESP)
            elif kind == DISCONNECT:
                if body:
                    raise MalformedPacket("DISCONNECT with a body")
                client.clean_exit = True
                return
            elif kind == CONNECT:
                raise MalformedPacket("second CONNECT")
            elif kind in (PUBREC, PUBREL, PUBCOMP):
                raise MalformedPacket("QoS 2 is not supported")
            else:
                raise MalformedPacket(f"packet type {kind} not allowed from a client")

    def _on_publish(self, client: _Client, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        retain = bool(flags & 0x01)
        dup = bool(flags & 0x08)
        if qos == 3:
            raise MalformedPacket("PUBLISH QoS 3")
        if qos == 2:
            raise MalformedPacket("PUBLISH QoS 2 is not supported")
        if dup and qos == 0:
            raise MalformedPacket("DUP on a QoS 0 PUBLISH")
        r = _Reader(body)
        topic = r.string()
        if not _valid_topic_name(topic):
            raise MalformedPacket("PUBLISH topic is not a valid topic name")
        packet_id = None
        if qos:
            packet_id = r.u16()
            if packet_id == 0:
                raise MalformedPacket("packet id 0")
        self.publish(Message(topic, r.rest(), qos, retain))
        if packet_id is not None:
            client.send_packet(_packet(PUBACK, 0, struct.pack("!H", packet_id)))

    def _on_subscribe(self, client: _Client, body: bytes) -> None:
        r = _Reader(body)
        packet_id = r.u16()
        if packet_id == 0:
            raise MalformedPacket("packet id 0")
        requests: list[tuple[str, int]] = []
        while r.remaining():
            topic_filter = r.string()
            requested = r.byte()
            if requested & 0xFC or requested == 3:
                raise MalformedPacket("SUBSCRIBE requested QoS byte")
            requests.append((topic_filter, requested))
        if not requests:
            raise MalformedPacket("SUBSCRIBE without a topic filter")
        codes = bytearray()
        granted_list: list[tuple[str, int]] = []
        for topic_filter, requested in requests:
            if not valid_filter(topic_filter):
                codes.append(0x80)
                continue
            granted = min(requested, 1)
            client.subscriptions[topic_filter] = granted
            codes.append(granted)
            granted_list.append((topic_filter, granted))
        client.send_packet(_packet(SUBACK, 0, struct.pack("!H", packet_id) + bytes(codes)))
        for topic_filter, granted in granted_list:
            self._send_retained(client, topic_filter, granted)

    def _on_unsubscribe(self, client: _Client, body: bytes) -> None:
        r = _Reader(body)
        packet_id = r.u16()
        if packet_id == 0:
            raise MalformedPacket("packet id 0")
        filters: list[str] = []
        while r.remaining():
            filters.append(r.string())
        if not filters:
            raise MalformedPacket("UNSUBSCRIBE without a topic filter")
        for topic_filter in filters:
            client.subscriptions.pop(topic_filter, None)
        client.send_packet(_packet(UNSUBACK, 0, struct.pack("!H", packet_id)))
