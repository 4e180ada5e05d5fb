"""The whole gateway (``gateway.app.serve``) on a real mosquitto: issue 6's acceptance.

Unlike test_mqtt.py (the publisher on its own), these run the real call path:
an agent registers and calls through ``serve()`` to the call-path test carrier,
and the assertions are on what a wallboard subscribed to the broker receives
and on the admin port's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import app
from gateway.callpath.element import Gateway
from gateway.telemetry.mqtt import Topics
from simulator.testkit import Mosquitto, wait_for
from tests.callpath.conftest import Agent, Carrier, gateway_settings
from tests.events.helpers import Collector, http_get, parse_exposition, value_of
from tests.integration.conftest import dialgate_command, start_dialgate

ROOT = "dg"
NODE = "gw-e2e"
TOPICS = Topics(ROOT, NODE)


@dataclass
class Running:
    """serve() running in a task, with its carrier and a registered agent."""

    gateway: Gateway
    carrier: Carrier
    alice: Agent
    stop: asyncio.Event


@pytest.fixture
async def running(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Running]:
    carrier = Carrier()
    await carrier.start()
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={
            "mqtt": {"url": mosquitto.url, "root": ROOT, "node": NODE, "stats_interval": 0.2},
        },
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(app.serve(settings, ready=ready, stop=stop, on_ready=started.append))
    await asyncio.wait_for(ready.wait(), 10)
    gateway = started[-1]
    alice = Agent("alice", "s3cret", gateway.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        yield Running(gateway, carrier, alice, stop)
    finally:
        await alice.close()
        stop.set()
        await asyncio.wait_for(task, 15)
        await carrier.close()


async def _metrics(gateway: Gateway) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the admin port's /metrics."""
    url = gateway.admin_url
    assert url is not None
    host, _, port = url.removeprefix("http://").rpartition(":")
    status, _headers, body = await http_get(host, int(port), "/metrics")
    assert 200 == status
    return parse_exposition(body.decode())[1]


async def _call(agent: Agent, number: str) -> int:
    """One call: INVITE, and BYE after a 200; returns the final status."""
    resp, invite = await agent.call(number)
    if resp.status == 200:
        assert 200 == (await agent.send_in_dialog(invite.call_id, "BYE")).status
    return resp.status


async def test_late_subscriber_gets_every_card_and_the_gateway_online(
    running: Running, mosquitto: Mosquitto
) -> None:
    """Connecting after start-up: each card's retained state (with usage) and `online`."""
    topics = {TOPICS.card("c1"), TOPICS.card("c2"), TOPICS.status, TOPICS.stats}
    publisher = running.gateway.telemetry.publisher
    # "After the gateway started": its start-up states are on the broker already.
    # (every topic it checks is held as retained and nothing is left to send)
    assert await wait_for(
        lambda: topics <= set(publisher.retained_topics()) and publisher.queue_depth == 0, 10
    )
    async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
        assert await wait_for(lambda: topics <= {m.topic for m in sub.messages}, 10)
        # What the broker kept arrives first, flagged retained (later live ones are not).
        for topic in topics:
            assert sub.on(topic)[0].retain, topic
        c1 = sub.latest(TOPICS.card("c1"))
        assert "active" == c1["state"]
        assert "carrier-a" == c1["carrier"]
        assert "online" == sub.latest(TOPICS.status)["status"]


async def test_calls_update_usage_and_events_are_masked(
    running: Running, mosquitto: Mosquitto
) -> None:
    """A completed call: masked call events, c1's retained usage goes up, /metrics counts it."""
    async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
        assert await wait_for(lambda: sub.latest(TOPICS.card("c1")) is not None, 10)
        assert 200 == await _call(running.alice, "13912345678")

        def used() -> bool:
            state = sub.latest(TOPICS.card("c1")) or {}
            return any(u.get("used", 0) >= 1 for u in state.get("usage", {}).values())

        assert await wait_for(used, 10), sub.latest(TOPICS.card("c1"))
        ended = sub.on(TOPICS.calls("ended"))
        assert ended, [m.topic for m in sub.messages]
        raw = b"".join(m.payload for m in sub.messages)
        assert b"13912345678" not in raw  # callee numbers are masked by default
    samples = await _metrics(running.gateway)
    assert value_of(samples, "dialgate_calls_total", outcome="answered") >= 1


async def test_carrier_suspension_reaches_the_broker_within_a_second(
    running: Running, mosquitto: Mosquitto
) -> None:
    """403 Card Suspended for c1: alert and retained `suspended` on the broker within 1 s."""

    def plan(req: object) -> tuple[object, ...]:
        if req.from_.uri.user == "+8613800000001":  # type: ignore[attr-defined]
            return (403, "Card Suspended")
        return ("answer",)

    running.carrier.plan = plan  # type: ignore[assignment]
    async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
        assert await wait_for(lambda: sub.latest(TOPICS.card("c1")) is not None, 10)
        started = time.monotonic()
        call = asyncio.create_task(_call(running.alice, "13912345679"))

        def arrived() -> bool:
            state = sub.latest(TOPICS.card("c1")) or {}
            alerts = [m.json for m in sub.on(TOPICS.alerts)]
            return state.get("state") == "suspended" and any(a.get("card") == "c1" for a in alerts)

        assert await wait_for(arrived, 1.0)
        print(f"suspension on the broker after {1000 * (time.monotonic() - started):.0f} ms")
        assert 200 == await call  # failed over to c2
        assert "violation" == sub.latest(TOPICS.card("c1"))["reason"]


async def test_broker_outage_loses_no_call_and_republishes_retained_state(
    running: Running, mosquitto: Mosquitto
) -> None:
    """Broker down during calls: every call completes; back up: retained state again, drops counted."""
    publisher = running.gateway.telemetry.publisher
    assert await publisher.wait_connected(10)
    mosquitto.kill()
    statuses = [await _call(running.alice, f"1391234{n:04d}") for n in range(20)]
    assert [200] * 20 == statuses
    store = running.gateway.store
    assert store is not None
    assert await wait_for(lambda: len(store.cdrs()) == 20, 10)
    mosquitto.start()
    back_at = time.monotonic()
    async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
        wanted = {TOPICS.card("c1"), TOPICS.card("c2"), TOPICS.status, TOPICS.stats}
        assert await wait_for(lambda: wanted <= {m.topic for m in sub.messages}, 10)
        assert "online" == sub.latest(TOPICS.status)["status"]
        # Issue 19: within 2 s of the broker's return (generous bound asserted).
        assert time.monotonic() - back_at < 3.0
    samples = await _metrics(running.gateway)
    assert 1 == value_of(samples, "dialgate_mqtt_connected")
    assert value_of(samples, "dialgate_mqtt_reconnects_total") >= 1
    for kind in ("status", "cards", "stats", "calls", "alerts"):
        assert value_of(samples, "dialgate_mqtt_dropped_total", kind=kind) >= 0


async def test_kill_9_of_dialgate_run_leaves_offline_on_the_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`dialgate run` with [mqtt], killed with SIGKILL: the broker publishes the will."""
    node = "gw-killed"
    topic = Topics(ROOT, node).status
    extra = f'\n[mqtt]\nurl = "{mosquitto.url}"\nroot = "{ROOT}"\nnode = "{node}"\n'
    async with Collector(mosquitto.port, topic) as sub:
        gw = await asyncio.to_thread(start_dialgate, tmp_path, extra)
        try:
            assert await wait_for(lambda: (sub.latest(topic) or {}).get("status") == "online", 15)
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(timeout=10)
            assert await wait_for(lambda: (sub.latest(topic) or {}).get("status") == "offline", 10)
        finally:
            if gw.proc.poll() is None:
                os.kill(gw.proc.pid, signal.SIGKILL)
                gw.proc.wait(timeout=10)
    assert json.loads(sub.on(topic)[-1].payload)["status"] == "offline"


async def test_cli_suspend_while_running_is_adopted_and_published(
    running: Running, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`dialgate cards suspend c2` in another process: the running gateway adopts it
    and the broker shows c2 suspended; a restore (to probation) comes back the same way."""
    config = tmp_path / "cli.toml"
    db = running.gateway.settings.store.path
    config.write_text(
        f'[store]\npath = "{db}"\n'
        '[policy]\nconsent = "dnc-only"\n'
        '[[carriers]]\nname = "carrier-a"\naddress = "udp:127.0.0.1:9"\n'
        'timezone = "Asia/Shanghai"\n'
        '[[cards]]\nid = "c1"\ncarrier = "carrier-a"\nnumber = "+8613800000001"\n'
        '[[cards]]\nid = "c2"\ncarrier = "carrier-a"\nnumber = "+8613800000002"\n'
    )

    def cli(*args: str) -> None:
        done = subprocess.run(
            [*dialgate_command(), *args, "--config", str(config), "--actor", "ops"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr.decode()

    cards = running.gateway.b2bua.services.cards  # type: ignore[union-attr]
    async with Collector(mosquitto.port, f"{ROOT}/#") as sub:
        await asyncio.to_thread(cli, "cards", "suspend", "c2")
        assert await wait_for(lambda: str(cards.get("c2").state) == "suspended", 10)

        def on_broker(state: str) -> bool:
            return (sub.latest(TOPICS.card("c2")) or {}).get("state") == state

        assert await wait_for(lambda: on_broker("suspended"), 10)
        # A restore goes through the carrier's probation (DESIGN "Card states").
        await asyncio.to_thread(cli, "cards", "restore", "c2")
        assert await wait_for(lambda: str(cards.get("c2").state) == "probation", 10)
        assert await wait_for(lambda: on_broker("probation"), 10)


async def test_card_nearing_its_limit_raises_quota_near(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """4 of 5 calls a minute on c1: the running gateway publishes quota-near for c1 (once)."""
    carrier = Carrier()
    await carrier.start()
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={
            "mqtt": {"url": mosquitto.url, "root": ROOT, "node": NODE, "stats_interval": 0.2},
            "quota_profiles": {"open": {"calls_per_minute": 5, "concurrent": None}},
        },
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(app.serve(settings, ready=ready, stop=stop, on_ready=started.append))
    await asyncio.wait_for(ready.wait(), 10)
    alice = Agent("alice", "s3cret", started[-1].address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        async with Collector(mosquitto.port, f"{ROOT}/#") as sub:

            def near() -> list[dict[str, object]]:
                return [
                    m.json
                    for m in sub.on(TOPICS.alerts)
                    if m.json.get("alert") == "quota-near" and m.json.get("card") == "c1"
                ]

            for n in range(3):
                assert 200 == await _call(alice, f"1391234{n:04d}")
            await asyncio.sleep(0.5)  # a few status rounds at 60 %
            assert [] == near()
            assert 200 == await _call(alice, "13912340003")
            assert await wait_for(lambda: bool(near()), 5)
            await asyncio.sleep(0.5)
            assert 1 == len(near())  # once per crossing, not every round
    finally:
        await alice.close()
        stop.set()
        await asyncio.wait_for(task, 15)
        await carrier.close()
