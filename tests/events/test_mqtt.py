"""The MQTT publisher against a real mosquitto: retained state, alerts, outages, last will."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.cards import CardDef, CardManager, CarrierRule, SuspendReason
from gateway.config import MqttSettings
from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CallEvent,
    CallEventKind,
    CardStatus,
    EventBus,
    Severity,
)
from gateway.telemetry.mqtt import MqttPublisher, Topics
from simulator.testkit import Mosquitto, wait_for
from tests.events.conftest import TlsBroker
from tests.events.helpers import Collector

ROOT = "dgtest"
NODE = "gw1"
TOPICS = Topics(ROOT, NODE)


def _settings(broker: Mosquitto, **kw: object) -> MqttSettings:
    return MqttSettings(url=broker.url, root=ROOT, node=NODE, **kw)  # type: ignore[arg-type]


def _card(
    card: str, state: str = "active", reason: str | None = None, at: float = 1.0e9
) -> CardStatus:
    return CardStatus(card=card, state=state, reason=reason, since=at, pool="main", at=at)


async def test_late_subscriber_receives_every_retained_card_state(mosquitto: Mosquitto) -> None:
    """A subscriber connecting after the publisher started gets each card's retained state."""
    bus = EventBus()
    pub = MqttPublisher(_settings(mosquitto))
    pub.attach(bus)
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        for card in ("c1", "c2", "c3"):
            bus.publish(_card(card))
        bus.publish(_card("c2", "suspended", "violation", at=1.0e9 + 5))
        assert await wait_for(lambda: pub.queue_depth == 0 and pub.published >= 4, 10)
        async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
            wanted = {TOPICS.card(c) for c in ("c1", "c2", "c3")} | {TOPICS.status}
            assert await wait_for(lambda: wanted <= {m.topic for m in sub.messages}, 5)
            assert all(m.retain for m in sub.messages)
            assert "suspended" == sub.latest(TOPICS.card("c2"))["state"]
            assert "violation" == sub.latest(TOPICS.card("c2"))["reason"]
            assert "active" == sub.latest(TOPICS.card("c1"))["state"]
            assert 1 == sub.latest(TOPICS.card("c1"))["v"]
            assert "online" == sub.latest(TOPICS.status)["status"]
    finally:
        await pub.stop()


async def test_card_suspension_publishes_alert_and_new_retained_state(mosquitto: Mosquitto) -> None:
    """A 403 from the carrier, classified by CardManager, reaches MQTT as alert + state within 1 s."""
    bus = EventBus()
    pub = MqttPublisher(_settings(mosquitto))
    pub.attach(bus)
    # The carrier's rule: a 403 whose text says "suspended" proves the card dead.
    rule = CarrierRule(403, SuspendReason.VIOLATION, re.compile("(?i)suspend"))
    manager = CardManager(rules={"carrier-a": [rule]})
    now = time.time()
    manager.load(
        [
            CardDef("c1", "carrier-a", "+8613800000001"),
            CardDef("c2", "carrier-a", "+8613800000002"),
        ],
        now,
    )
    for card in manager.cards():
        bus.publish(_card(card.id, str(card.state), at=now))
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
            assert await wait_for(lambda: sub.latest(TOPICS.card("c1")) is not None, 5)
            verdict = manager.on_response("c1", 403, "Forbidden - suspended", now=time.time())
            assert verdict.failover
            bus.publish_card_events(manager.drain_events())

            def arrived() -> bool:
                state = sub.latest(TOPICS.card("c1"))
                return state["state"] == "suspended" and bool(sub.on(TOPICS.alerts))

            assert await wait_for(arrived, 1.0)
            alert = sub.latest(TOPICS.alerts)
            assert "card-suspended" == alert["alert"]
            assert "c1" == alert["card"]
            assert "violation" == alert["reason"]
            assert not sub.on(TOPICS.alerts)[-1].retain
        # And the new state is what a later subscriber gets.
        async with Collector(mosquitto.port, TOPICS.card("c1")) as late:
            assert await wait_for(lambda: late.latest(TOPICS.card("c1")) is not None, 5)
            assert "suspended" == late.latest(TOPICS.card("c1"))["state"]
    finally:
        await pub.stop()


async def test_broker_outage_never_blocks_and_retained_state_comes_back(
    mosquitto: Mosquitto,
) -> None:
    """Kill the broker mid-stream: publish stays instant, drops are counted; after a restart
    on the same port the retained card states (including changes made during the outage)
    and the queued alerts are published again."""
    bus = EventBus()
    pub = MqttPublisher(_settings(mosquitto), queue_limit=50, backoff_initial=2.0, backoff_max=2.0)
    pub.attach(bus)
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        for card in ("c1", "c2"):
            bus.publish(_card(card))
        assert await wait_for(lambda: pub.queue_depth == 0, 5)

        mosquitto.kill()
        assert await wait_for(lambda: not pub.connected, 5)

        # The producer: 300 iterations of call events at ~2 ms pacing. Each publish must
        # return at once and the loop must finish on time although the broker is gone.
        slowest = 0.0
        loop_start = time.monotonic()
        for i in range(300):
            t0 = time.perf_counter()
            bus.publish(
                CallEvent(CallEventKind.ATTEMPT, f"call-{i}", time.time(), callee="+8613812345678")
            )
            slowest = max(slowest, time.perf_counter() - t0)
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - loop_start
        assert elapsed < 300 * 0.002 + 5.0  # generous: the loop is never held up by MQTT
        assert slowest < 0.5
        assert pub.dropped >= 250  # 300 offered into a queue of 50
        assert 50 >= len([1 for _ in range(pub.queue_depth)])
        assert pub.counters()["dropped"] == pub.dropped

        # State changes while the broker is away, and one alert that must not be lost.
        bus.publish(_card("c1", "suspended", "violation", at=2.0e9))
        bus.publish(
            Alert(
                AlertKind.TRUNK_DOWN,
                time.time(),
                Severity.CRITICAL,
                "trunk carrier-a down",
                carrier="carrier-a",
            )
        )

        mosquitto.start()
        async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
            assert await wait_for(lambda: pub.connected, 10)

            def back() -> bool:
                c1 = sub.latest(TOPICS.card("c1"))
                c2 = sub.latest(TOPICS.card("c2"))
                return (
                    c1 is not None
                    and c2 is not None
                    and c1["state"] == "suspended"
                    and bool(sub.on(TOPICS.alerts))
                )

            assert await wait_for(back, 10)
            assert "active" == sub.latest(TOPICS.card("c2"))["state"]
            assert "trunk-down" == sub.latest(TOPICS.alerts)["alert"]
            assert "online" == sub.latest(TOPICS.status)["status"]
            assert pub.reconnects >= 1
        # A fresh subscriber (retained only) sees the latest card states.
        async with Collector(mosquitto.port, f"{ROOT}/cards/#") as fresh:
            assert await wait_for(lambda: len({m.topic for m in fresh.messages}) >= 2, 5)
            assert "suspended" == fresh.latest(TOPICS.card("c1"))["state"]
    finally:
        await pub.stop()


async def test_clean_stop_publishes_offline(mosquitto: Mosquitto) -> None:
    """stop() flushes the queue and leaves status `offline` retained."""
    pub = MqttPublisher(_settings(mosquitto), started_at=123.0)
    await pub.start()
    assert await pub.wait_connected(10)
    pub.offer(CallEvent(CallEventKind.ENDED, "x", time.time(), outcome="answered"))
    await pub.stop()
    async with Collector(mosquitto.port, TOPICS.status) as sub:
        assert await wait_for(lambda: sub.latest(TOPICS.status) is not None, 5)
        status = sub.latest(TOPICS.status)
        assert "offline" == status["status"]
        assert NODE == status["node"]
        assert status["started_at"].startswith("1970-01-01T00:02:03")


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.config import MqttSettings
    from gateway.telemetry.mqtt import MqttPublisher

    async def main() -> None:
        pub = MqttPublisher(MqttSettings(url=sys.argv[1], root=sys.argv[2], node=sys.argv[3], keepalive=5))
        await pub.start()
        if not await pub.wait_connected(10):
            sys.exit(3)
        while pub.queue_depth:
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_killed_publisher_leaves_last_will_offline(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """kill -9 of a process running the publisher: the broker publishes the will `offline`."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, str(script), mosquitto.url, ROOT, "node-k"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=root,
    )
    topic = Topics(ROOT, "node-k").status
    try:
        async with Collector(mosquitto.port, topic) as sub:
            assert await wait_for(lambda: (sub.latest(topic) or {}).get("status") == "online", 15)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            assert await wait_for(lambda: (sub.latest(topic) or {}).get("status") == "offline", 10)
            assert sub.on(topic)[-1].qos == 1
        async with Collector(mosquitto.port, topic) as late:
            assert await wait_for(lambda: late.latest(topic) is not None, 5)
            assert "offline" == late.latest(topic)["status"]
            assert late.on(topic)[-1].retain
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


async def test_stats_are_published_retained_every_interval(mosquitto: Mosquitto) -> None:
    """The stats source is sampled every stats_interval; `{root}/stats` is retained QoS 0
    and carries the publisher's own queue/drop counters."""
    from gateway.telemetry.events import CallStats

    bus = EventBus()
    stats = CallStats(time.time)
    bus.subscribe(stats)
    pub = MqttPublisher(_settings(mosquitto, stats_interval=0.1), stats_source=stats.snapshot)
    pub.attach(bus)
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        bus.publish(CallEvent(CallEventKind.ATTEMPT, "a", time.time()))
        bus.publish(CallEvent(CallEventKind.BLOCKED, "b", time.time(), reason="calling-hours"))
        async with Collector(mosquitto.port, TOPICS.stats) as sub:

            def fresh() -> bool:
                latest = sub.latest(TOPICS.stats)
                return latest is not None and latest["attempts"] == 1

            assert await wait_for(fresh, 5)
            latest = sub.latest(TOPICS.stats)
            assert {"calling-hours": 1} == latest["blocked"]
            assert 1 == latest["active_calls"]
            assert {"connected", "queued", "dropped", "published"} <= set(latest["mqtt"])
            assert 0 == latest["mqtt"]["dropped"]
            count = len(sub.on(TOPICS.stats))
            assert await wait_for(lambda: len(sub.on(TOPICS.stats)) >= count + 2, 5)
    finally:
        await pub.stop()


async def test_message_in_flight_when_the_connection_breaks_is_put_back(
    mosquitto: Mosquitto,
) -> None:
    """An alert taken from the queue and waiting for its PUBACK when the broker dies is not lost:
    it goes back into the queue and is delivered after the broker returns."""
    pub = MqttPublisher(_settings(mosquitto), backoff_initial=2.0, backoff_max=2.0)
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        # The online status is acknowledged (not merely taken from the queue).
        assert await wait_for(lambda: pub.queue_depth == 0 and pub.published == 1, 5)
        published = pub.published
        mosquitto.pause()  # the broker stops answering: the QoS 1 PUBACK never comes
        pub.offer(
            Alert(
                AlertKind.POOL_EXHAUSTED,
                time.time(),
                Severity.CRITICAL,
                "pool main exhausted",
                pool="main",
            )
        )
        assert await wait_for(lambda: pub.queue_depth == 0, 5)  # taken from the queue, in flight
        assert published == pub.published
        mosquitto.kill()
        assert await wait_for(lambda: not pub.connected and pub.queue_depth == 1, 5)
        mosquitto.start()
        async with Collector(mosquitto.port, TOPICS.alerts) as sub:
            assert await wait_for(lambda: bool(sub.on(TOPICS.alerts)), 10)
            assert "pool-exhausted" == sub.latest(TOPICS.alerts)["alert"]
        assert 0 == pub.dropped
    finally:
        await pub.stop()


async def test_tls_broker_with_password(
    mosquitto_tls: TlsBroker, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """mqtts://user:pass@… with a CA file: the publisher and the wallboard connect over TLS; a
    wrong password only counts failed connects; the password never appears in any log."""
    from gateway.operator.wallboard.server import WallboardServer

    tls = mosquitto_tls
    port = tls.broker.port
    good = f"mqtts://{tls.username}:{tls.password}@127.0.0.1:{port}"
    settings = MqttSettings.model_validate(
        {"url": good, "root": ROOT, "node": NODE, "ca_file": str(tls.ca_file)}
    )
    pub = MqttPublisher(settings)
    pub.offer(_card("c1", "probation"))
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        async with WallboardServer(good, root=ROOT, port=0, ca_file=str(tls.ca_file)) as wb:
            assert await wb.wait_subscribed(10)
            assert await wait_for(lambda: "c1" in wb.state.cards, 5)
            assert "probation" == wb.state.cards["c1"]["state"]
    finally:
        await pub.stop()

    wrong = MqttSettings.model_validate(
        {
            "url": f"mqtts://{tls.username}:not-the-password@127.0.0.1:{port}",
            "root": ROOT,
            "ca_file": str(tls.ca_file),
        }
    )
    bad = MqttPublisher(wrong, backoff_initial=0.05, backoff_max=0.1)
    await bad.start()
    try:
        assert await wait_for(lambda: bad.connect_failures >= 2, 10)
        assert not bad.connected
        assert 0 == bad.published
    finally:
        await bad.stop()
    out = capsys.readouterr()
    logged = out.out + out.err + caplog.text
    assert "mqtt connected" in logged
    assert tls.password not in logged
    assert "not-the-password" not in logged
