"""The embedded MQTT 3.1.1 broker (gateway.telemetry.broker) against real clients.

Clients: aiomqtt 2.x (what the gateway and the wallboard use), paho-mqtt (sync
API, its own network thread), the ``mosquitto_sub`` / ``mosquitto_pub`` CLI
clients of Debian's mosquitto-clients, and raw sockets for what a well-behaved
client never sends (malformed packets, QoS 2, MQTT 5, an abrupt close).

"Nothing arrived" is never checked by waiting a while: the test publishes a
marker after the message that must not arrive and checks that the marker is the
first thing received (the broker keeps per-client order).
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import threading
from collections.abc import AsyncIterator

import aiomqtt
import paho.mqtt.client as paho
import pytest

from gateway.telemetry.broker import Broker, topic_matches, valid_filter

pytestmark = pytest.mark.integration

WAIT = 10.0  # bound on every wait for something that must happen


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with Broker("127.0.0.1", 0) as b:
        yield b


def client(broker: Broker, identifier: str, **kwargs: object) -> aiomqtt.Client:
    host, port = broker.address
    return aiomqtt.Client(host, port, identifier=identifier, **kwargs)  # type: ignore[arg-type]


async def next_message(c: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(c.messages))


# ---------------------------------------------------------------------------
# Raw MQTT packets (written here, independent of the broker's own encoder)
# ---------------------------------------------------------------------------


def _len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def pkt(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _len(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    keepalive: int = 60,
    clean: bool = True,
    will: tuple[str, bytes, int, bool] | None = None,
    level: int = 4,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _s(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _s(topic) + _s(message)
    body = _s("MQTT") + bytes((level, flags)) + struct.pack("!H", keepalive) + payload
    return pkt(0x10, body)


class Raw:
    """A raw TCP connection to the broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, broker: Broker) -> Raw:
        reader, writer = await asyncio.open_connection(*broker.address)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self) -> tuple[int, bytes]:
        async with asyncio.timeout(WAIT):
            first = (await self.reader.readexactly(1))[0]
            n, shift = 0, 0
            while True:
                b = (await self.reader.readexactly(1))[0]
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            return first, await self.reader.readexactly(n)

    async def connected(self, client_id: str, **kwargs: object) -> None:
        await self.send(connect_packet(client_id, **kwargs))  # type: ignore[arg-type]
        first, body = await self.read_packet()
        assert (first, body) == (0x20, b"\x00\x00")

    async def closed_by_peer(self) -> bool:
        """True when the broker closes the connection (EOF) — bounded by WAIT."""
        async with asyncio.timeout(WAIT):
            rest = await self.reader.read()
        return rest == b""

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------
# Pure topic matching
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "/a", False),
        ("+/a", "/a", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/c", False),
        ("dialgate/cards/+/state", "dialgate/cards/c1/state", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "ok"),
    [
        ("a/#", True),
        ("#", True),
        ("+/b/+", True),
        ("a/#/b", False),
        ("a#", False),
        ("a/b+", False),
        ("", False),
    ],
)
def test_valid_filter(topic_filter: str, ok: bool) -> None:
    assert valid_filter(topic_filter) is ok


# ---------------------------------------------------------------------------
# aiomqtt
# ---------------------------------------------------------------------------


async def test_wildcards_qos_and_single_delivery(broker: Broker) -> None:
    async with client(broker, "sub") as sub, client(broker, "pub") as pub:
        await sub.subscribe("a/+/c", qos=1)
        await sub.subscribe("a/#", qos=0)
        await sub.subscribe("x/y", qos=0)
        await pub.publish("a/b/c", b"one", qos=1)
        m = await next_message(sub)
        # Two overlapping subscriptions: delivered once, at the higher granted QoS.
        assert (str(m.topic), m.payload, m.qos, m.retain) == ("a/b/c", b"one", 1, False)
        await pub.publish("a/zzz", b"two", qos=1)
        m = await next_message(sub)
        assert (str(m.topic), m.payload, m.qos) == ("a/zzz", b"two", 0)  # granted 0 on a/#
        await pub.publish("b/b/c", b"nobody", qos=0)
        await pub.publish("x/y", b"marker", qos=0)
        m = await next_message(sub)
        assert (str(m.topic), m.payload) == ("x/y", b"marker")


async def test_unsubscribe(broker: Broker) -> None:
    async with client(broker, "sub") as sub, client(broker, "pub") as pub:
        await sub.subscribe("t/#")
        await sub.subscribe("marker")
        await sub.unsubscribe("t/#")
        await pub.publish("t/1", b"gone", qos=1)
        await pub.publish("marker", b"m", qos=1)
        m = await next_message(sub)
        assert str(m.topic) == "marker"


async def test_retained_then_cleared(broker: Broker) -> None:
    async with client(broker, "pub") as pub:
        await pub.publish("dialgate/cards/c1/state", b'{"state":"active"}', qos=1, retain=True)
        await pub.publish("dialgate/cards/c2/state", b'{"state":"suspended"}', qos=1, retain=True)
        await pub.publish("dialgate/stats", b"{}", qos=0, retain=True)
    async with client(broker, "late") as late:
        await late.subscribe("dialgate/cards/+/state", qos=1)
        got = {}
        for _ in range(2):
            m = await next_message(late)
            assert m.retain is True and m.qos == 1
            got[str(m.topic)] = m.payload
        assert got == {
            "dialgate/cards/c1/state": b'{"state":"active"}',
            "dialgate/cards/c2/state": b'{"state":"suspended"}',
        }
        # A live message on a retained topic reaches a subscriber with RETAIN cleared.
        async with client(broker, "pub2") as pub:
            await pub.publish("dialgate/cards/c1/state", b'{"state":"x"}', qos=1, retain=True)
            m = await next_message(late)
            assert (m.payload, m.retain) == (b'{"state":"x"}', False)
            # An empty retained payload clears the topic (and is forwarded as such).
            await pub.publish("dialgate/cards/c2/state", b"", qos=1, retain=True)
            m = await next_message(late)
            assert (str(m.topic), m.payload) == ("dialgate/cards/c2/state", b"")
    assert set(broker.retained) == {"dialgate/cards/c1/state", "dialgate/stats"}
    async with client(broker, "later") as later:
        await later.subscribe("dialgate/cards/#", qos=1)
        m = await next_message(later)
        assert (str(m.topic), m.retain) == ("dialgate/cards/c1/state", True)
        async with client(broker, "pub3") as pub:
            await pub.publish("dialgate/cards/marker", b"m", qos=1)
        m = await next_message(later)
        assert str(m.topic) == "dialgate/cards/marker"  # c2 did not come back


async def test_will_on_abrupt_close_not_on_disconnect(broker: Broker) -> None:
    async with client(broker, "watch") as watch:
        await watch.subscribe("gw/+/status", qos=1)
        await watch.subscribe("marker")
        # Clean DISCONNECT (aiomqtt leaving its context): no will.
        will = aiomqtt.Will("gw/clean/status", b"offline", qos=1, retain=True)
        async with client(broker, "clean", will=will) as c:
            await c.publish("gw/clean/status", b"online", qos=1, retain=True)
        m = await next_message(watch)
        assert (str(m.topic), m.payload) == ("gw/clean/status", b"online")
        # The connection drops without DISCONNECT: the will goes out, retained.
        raw = await Raw.open(broker)
        await raw.connected("dirty", will=("gw/dirty/status", b"offline", 1, True))
        raw.writer.transport.abort()
        m = await next_message(watch)
        assert (str(m.topic), m.payload, m.qos) == ("gw/dirty/status", b"offline", 1)
        async with client(broker, "p") as p:
            await p.publish("marker", b"m")
        m = await next_message(watch)
        assert str(m.topic) == "marker"  # and no will of "clean"
    assert broker.retained["gw/dirty/status"].payload == b"offline"
    assert broker.retained["gw/clean/status"].payload == b"online"


async def test_will_on_keepalive_timeout(broker: Broker) -> None:
    async with client(broker, "watch") as watch:
        await watch.subscribe("gone")
        raw = await Raw.open(broker)
        await raw.connected("silent", keepalive=1, will=("gone", b"bye", 0, False))
        # No PINGREQ: after 1.5 × keep-alive the broker closes and publishes the will.
        m = await next_message(watch)
        assert (str(m.topic), m.payload) == ("gone", b"bye")
        assert await raw.closed_by_peer()


async def test_client_id_takeover_publishes_old_will(broker: Broker) -> None:
    async with client(broker, "watch") as watch:
        await watch.subscribe("w")
        first = await Raw.open(broker)
        await first.connected("same", will=("w", b"first-will", 0, False))
        second = await Raw.open(broker)
        await second.connected("same")
        assert await first.closed_by_peer()
        m = await next_message(watch)
        assert m.payload == b"first-will"
        await second.send(pkt(0xC0, b""))  # PINGREQ on the surviving connection
        assert await second.read_packet() == (0xD0, b"")
        second.close()


async def test_slow_subscriber_is_bounded_and_does_not_block_others() -> None:
    async with Broker("127.0.0.1", 0, queue_limit=10) as broker:
        slow = await Raw.open(broker)
        await slow.connected("slow")
        # SUBSCRIBE t/# QoS 0, then never read again.
        await slow.send(pkt(0x82, struct.pack("!H", 1) + _s("t/#") + b"\x00"))
        assert (await slow.read_packet())[0] == 0x90
        payload = bytes(64 * 1024)
        count = 400  # 25 MB: more than the loopback socket buffers hold
        async with client(broker, "fast") as fast, client(broker, "pub") as pub:
            await fast.subscribe("t/#")
            received = 0

            async def consume() -> None:
                nonlocal received
                async for m in fast.messages:
                    assert len(m.payload) == len(payload)  # type: ignore[arg-type]
                    received += 1
                    if received == count:
                        return

            consumer = asyncio.create_task(consume())
            for i in range(count):
                await pub.publish(f"t/{i}", payload, qos=0)
            async with asyncio.timeout(60):
                await consumer
        assert received == count
        assert broker.stats["dropped"] > 0
        assert broker.clients["slow"].dropped == broker.stats["dropped"]
        slow.close()


# ---------------------------------------------------------------------------
# Protocol errors and refusals (raw sockets)
# ---------------------------------------------------------------------------


async def test_subscribe_qos2_granted_1_and_bad_filter_refused(broker: Broker) -> None:
    raw = await Raw.open(broker)
    await raw.connected("r")
    body = struct.pack("!H", 7) + _s("a/+") + b"\x02" + _s("a/#/b") + b"\x00"
    await raw.send(pkt(0x82, body))
    assert await raw.read_packet() == (0x90, struct.pack("!H", 7) + b"\x01\x80")
    await raw.send(pkt(0xA2, struct.pack("!H", 8) + _s("a/+")))
    assert await raw.read_packet() == (0xB0, struct.pack("!H", 8))
    raw.close()


async def test_qos1_publish_gets_puback(broker: Broker) -> None:
    raw = await Raw.open(broker)
    await raw.connected("r")
    await raw.send(pkt(0x32, _s("q/1") + struct.pack("!H", 42) + b"data"))
    assert await raw.read_packet() == (0x40, struct.pack("!H", 42))
    raw.close()


@pytest.mark.parametrize(
    ("name", "packets"),
    [
        ("publish before connect", [pkt(0x30, _s("t") + b"x")]),
        ("garbage", [b"GET / HTTP/1.1\r\n\r\n"]),
        ("remaining length of 5 bytes", [b"\x10\xff\xff\xff\xff\x01"]),
        ("qos 2 publish", ["CONNECT", pkt(0x34, _s("t") + b"\x00\x01x")]),
        ("qos 3 publish", ["CONNECT", pkt(0x36, _s("t") + b"\x00\x01x")]),
        ("wildcard in topic name", ["CONNECT", pkt(0x30, _s("a/+") + b"x")]),
        ("subscribe with wrong flags", ["CONNECT", pkt(0x80, b"\x00\x01" + _s("a") + b"\x00")]),
        ("subscribe without filters", ["CONNECT", pkt(0x82, b"\x00\x01")]),
        ("second connect", ["CONNECT", connect_packet("again")]),
        ("pubrel", ["CONNECT", pkt(0x62, b"\x00\x01")]),
        ("string past the end", ["CONNECT", pkt(0x30, b"\x00\x09ab")]),
        ("invalid utf-8 topic", ["CONNECT", pkt(0x30, _s(b"\xff\xfe") + b"x")]),
        ("reserved connect flag", [pkt(0x10, _s("MQTT") + b"\x04\x03\x00\x3c" + _s("c"))]),
    ],
)
async def test_malformed_packets_close_and_publish_will(
    broker: Broker, name: str, packets: list[bytes | str]
) -> None:
    async with client(broker, "watch") as watch:
        await watch.subscribe("will/#")
        raw = await Raw.open(broker)
        connected = False
        for p in packets:
            if p == "CONNECT":
                await raw.connected("victim", will=("will/victim", b"gone", 0, False))
                connected = True
            else:
                assert isinstance(p, bytes)
                await raw.send(p)
        assert await raw.closed_by_peer(), name
        if connected:
            m = await next_message(watch)
            assert (str(m.topic), m.payload) == ("will/victim", b"gone")
    assert broker.stats["malformed"] >= 1


async def test_mqtt5_and_3_1_get_unacceptable_version(broker: Broker) -> None:
    for level in (5, 3):
        raw = await Raw.open(broker)
        await raw.send(connect_packet("v", level=level))
        assert await raw.read_packet() == (0x20, b"\x00\x01")
        assert await raw.closed_by_peer()


async def test_empty_client_id(broker: Broker) -> None:
    raw = await Raw.open(broker)
    await raw.send(connect_packet("", clean=False))
    assert await raw.read_packet() == (0x20, b"\x00\x02")
    assert await raw.closed_by_peer()
    raw = await Raw.open(broker)
    await raw.connected("", clean=True)  # assigned an id
    await raw.send(pkt(0xE0, b""))  # DISCONNECT
    assert await raw.closed_by_peer()


# ---------------------------------------------------------------------------
# paho-mqtt (sync API, own network thread)
# ---------------------------------------------------------------------------


async def test_paho_client(broker: Broker) -> None:
    host, port = broker.address
    got: list[tuple[str, bytes, int, bool]] = []
    subscribed = threading.Event()
    arrived = threading.Event()

    def on_subscribe(
        c: paho.Client, userdata: object, mid: int, codes: object, props: object
    ) -> None:
        subscribed.set()

    def on_message(c: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        got.append((msg.topic, msg.payload, msg.qos, bool(msg.retain)))
        if len(got) == 2:
            arrived.set()

    async with client(broker, "pub") as pub:
        await pub.publish("p/retained", b"kept", qos=1, retain=True)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="paho")
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        c.subscribe("p/#", qos=1)
        assert await asyncio.to_thread(subscribed.wait, WAIT)
        info = c.publish("p/live", b"hello", qos=1)
        await asyncio.to_thread(info.wait_for_publish, WAIT)
        assert info.is_published()
        assert await asyncio.to_thread(arrived.wait, WAIT)
    finally:
        c.disconnect()
        c.loop_stop()
    assert got == [("p/retained", b"kept", 1, True), ("p/live", b"hello", 1, False)]


# ---------------------------------------------------------------------------
# mosquitto_sub / mosquitto_pub (Debian mosquitto-clients)
# ---------------------------------------------------------------------------

needs_clients = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None or shutil.which("mosquitto_pub") is None,
    reason="mosquitto-clients not installed",
)


async def run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@needs_clients
async def test_mosquitto_cli_retained_wildcard_and_will(broker: Broker) -> None:
    host, port = (str(x) for x in broker.address)
    base = ("-h", host, "-p", port)
    rc, _, err = await run(
        "mosquitto_pub", *base, "-q", "1", "-r", "-t", "dg/cards/c1/state", "-m", "active"
    )
    assert rc == 0, err
    rc, _, err = await run("mosquitto_pub", *base, "-q", "0", "-r", "-t", "dg/stats", "-m", "s")
    assert rc == 0, err
    # -C 1: exit after one message; -R: skip retained (so -R must see nothing but the live one).
    rc, out, err = await run(
        "mosquitto_sub", *base, "-q", "1", "-t", "dg/cards/+/state", "-C", "1", "-v", "-W", "10"
    )
    assert (rc, out) == (0, "dg/cards/c1/state active\n"), err
    rc, out, err = await run(
        "mosquitto_sub", *base, "-t", "dg/#", "-C", "2", "-v", "-W", "10", "-F", "%t %p %r"
    )
    assert rc == 0, err
    assert sorted(out.splitlines()) == ["dg/cards/c1/state active 1", "dg/stats s 1"]
    # Clear the retained card state with an empty retained message (-n).
    rc, _, err = await run("mosquitto_pub", *base, "-q", "1", "-r", "-n", "-t", "dg/cards/c1/state")
    assert rc == 0, err
    assert "dg/cards/c1/state" not in broker.retained
    # mosquitto_sub with a will, killed (no DISCONNECT) → the will is published.
    async with client(broker, "watch") as watch:
        await watch.subscribe("dg/will")
        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            *base,
            "-t",
            "nothing",
            "-i",
            "willer",
            "--will-topic",
            "dg/will",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(WAIT):
                while "willer" not in broker.clients:
                    await asyncio.sleep(0.02)
            sub.kill()
            m = await next_message(watch)
            assert (str(m.topic), m.payload) == ("dg/will", b"offline")
        finally:
            if sub.returncode is None:
                sub.kill()
            await sub.wait()


@needs_clients
async def test_mosquitto_pub_qos2_is_refused(broker: Broker) -> None:
    host, port = (str(x) for x in broker.address)
    rc, _, _ = await run("mosquitto_pub", "-h", host, "-p", port, "-q", "2", "-t", "q2", "-m", "x")
    assert rc != 0
    assert "q2" not in broker.retained
    assert broker.stats["malformed"] >= 1
