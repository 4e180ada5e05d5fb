"""The wallboard: state from retained topics, SSE updates, `dialgate wallboard`, headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect as ws_connect

from gateway.cards import CardDef, CardManager
from gateway.config import MqttSettings
from gateway.operator.wallboard.server import WallboardServer, WallboardState
from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CardStatus,
    EventBus,
    LimitUsage,
    Severity,
    Stats,
)
from gateway.telemetry.mqtt import MqttPublisher, Topics
from simulator.testkit import Mosquitto, free_port, wait_for
from tests.events.conftest import Chromium
from tests.events.helpers import http_get

ROOT = "wbtest"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


def _status(
    card: str, state: str = "active", reason: str | None = None, *, in_use: int = 0
) -> CardStatus:
    now = time.time()
    return CardStatus(
        card=card,
        state=state,
        reason=reason,
        since=now - 600,
        pool="main",
        at=now,
        carrier="carrier-a",
        in_use=in_use,
        usage=(
            LimitUsage("calls_per_minute", 4, 5),
            LimitUsage("calls_per_day", 120, 300),
            LimitUsage("concurrent", in_use, 1),
            LimitUsage("answer_rate_floor", 0.42, 0.3, sample=40, min_sample=20),
        ),
        available=in_use == 0,
        unavailable_why=None if in_use == 0 else "concurrent 1/1 in use",
    )


def _stats() -> Stats:
    return Stats(
        at=time.time(),
        active_calls=7,
        cps=2.5,
        asr=0.41,
        attempts=1234,
        answered=500,
        ended=1200,
        failovers=3,
        blocked_by_reason={"dnc": 12, "calling-hours": 4, "no-consent": 9},
        cards_by_state={"active": 3},
    )


async def _publisher(broker: Mosquitto, bus: EventBus) -> MqttPublisher:
    pub = MqttPublisher(
        MqttSettings.model_validate({"url": broker.url, "root": ROOT, "node": "gw1"})
    )
    pub.attach(bus)
    await pub.start()
    assert await pub.wait_connected(10)
    return pub


async def _read_sse(reader: asyncio.StreamReader) -> tuple[str, Any]:
    """Read one SSE event (skipping comments and retry lines)."""
    event, data = "message", ""
    while True:
        line = (await reader.readline()).decode().rstrip("\n")
        if line == "":
            if data:
                return event, json.loads(data)
            continue
        if line.startswith(":") or line.startswith("retry:"):
            continue
        key, _, value = line.partition(": ")
        if key == "event":
            event = value
        elif key == "data":
            data += value


def test_state_ignores_foreign_topics_and_removes_cleared_cards() -> None:
    """Only `{root}/…` topics count; an empty retained payload removes the card; bad JSON is counted."""
    state = WallboardState("dialgate")
    assert state.on_message("other/cards/c1/state", b'{"state":"active"}') is None
    assert {"type": "card", "card": "c1", "data": {"state": "active"}} == state.on_message(
        "dialgate/cards/c1/state", b'{"state":"active"}'
    )
    assert state.on_message("dialgate/cards/c1/state", b"not json") is None
    assert 1 == state.bad_messages
    state.on_message("dialgate/alerts", b'{"alert":"trunk-down"}')
    assert [{"alert": "trunk-down"}] == state.snapshot()["alerts"]
    assert {"type": "card-removed", "card": "c1"} == state.on_message(
        "dialgate/cards/c1/state", b""
    )
    assert {} == state.snapshot()["cards"]


async def test_wallboard_rebuilds_from_retained_topics_and_streams_updates(
    mosquitto: Mosquitto,
) -> None:
    """A wallboard started after the gateway gets the cards from retained topics alone; an SSE
    client gets a snapshot first, then the suspension as an update."""
    bus = EventBus()
    pub = await _publisher(mosquitto, bus)
    try:
        for card in ("c1", "c2"):
            bus.publish(_status(card))
        bus.publish(_stats())
        assert await wait_for(lambda: pub.queue_depth == 0, 5)
        async with WallboardServer(mosquitto.url, root=ROOT, port=0) as wb:
            assert await wb.wait_subscribed(10)
            assert await wait_for(
                lambda: len(wb.state.cards) == 2 and wb.state.stats is not None, 5
            )
            host, port = wb.http.address
            status, headers, body = await http_get(host, port, "/state")
            snap = json.loads(body)
            assert 200 == status
            assert {"c1", "c2"} == set(snap["cards"])
            assert 7 == snap["stats"]["active_calls"]
            assert "online" == snap["gateways"]["gw1"]["status"]
            status, headers, page = await http_get(host, port, "/")
            assert 200 == status and headers["content-type"].startswith("text/html")
            assert b"wallboard.js" in page

            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"text/event-stream" in head
            event, data = await asyncio.wait_for(_read_sse(reader), 5)
            assert "snapshot" == event
            assert {"c1", "c2"} == set(data["cards"])
            bus.publish(_status("c2", "suspended", "violation"))
            bus.publish(
                Alert(
                    AlertKind.CARD_SUSPENDED,
                    time.time(),
                    Severity.CRITICAL,
                    "c2 suspended",
                    card="c2",
                )
            )
            seen: dict[str, Any] = {}
            async with asyncio.timeout(2):
                while "card" not in seen or "alert" not in seen:
                    event, data = await _read_sse(reader)
                    assert "update" == event
                    seen[data["type"]] = data
            assert "suspended" == seen["card"]["data"]["state"]
            assert "card-suspended" == seen["alert"]["data"]["alert"]
            assert 1 == wb.state.listeners
            writer.close()
            # The browser went away: its stream and queue are released at once.
            assert await wait_for(lambda: wb.state.listeners == 0, 2)
    finally:
        await pub.stop()


async def test_wallboard_command_serves_until_sigterm(mosquitto: Mosquitto) -> None:
    """`dialgate wallboard --mqtt URL --listen … --root …` serves /state and exits 0 on SIGTERM."""
    port = free_port()
    code = "import sys; import gateway.cli.wallboard; from gateway.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "wallboard",
            "--mqtt",
            mosquitto.url,
            "--listen",
            f"127.0.0.1:{port}",
            "--root",
            ROOT,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        async def health() -> int:
            try:
                return (await http_get("127.0.0.1", port, "/health"))[0]
            except OSError:
                return 0

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and await health() != 200:
            await asyncio.sleep(0.1)
        assert 200 == await health()
        os.kill(proc.pid, signal.SIGTERM)
        assert 0 == proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


class DevTools:
    """A minimal Chrome DevTools protocol client for one page target."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._next = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self._next += 1
        ident = self._next
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            async with asyncio.timeout(10):
                msg = json.loads(await self.ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


CARD_STATES_JS = (
    "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-card]')]"
    ".map(e => [e.dataset.card, e.dataset.state])))"
)


async def test_wallboard_in_headless_chromium(mosquitto: Mosquitto, chromium: Chromium) -> None:
    """Chromium shows every card, reflects a suspension within 2 s, rebuilds after a reload;
    a screenshot is saved to artifacts/wallboard.png."""
    bus = EventBus()
    pub = await _publisher(mosquitto, bus)
    manager = CardManager()
    manager.load(
        [CardDef(c, "carrier-a", f"+861380000000{i}") for i, c in enumerate(("c1", "c2", "c3"), 1)],
        time.time(),
    )
    try:
        for card in manager.cards():
            bus.publish(_status(card.id, in_use=1 if card.id == "c1" else 0))
        bus.publish(_stats())
        bus.publish(
            Alert(
                AlertKind.QUOTA_NEAR,
                time.time(),
                Severity.WARNING,
                "card c1: calls_per_minute 4/5",
                card="c1",
            )
        )
        assert await wait_for(lambda: pub.queue_depth == 0, 5)
        async with WallboardServer(mosquitto.url, root=ROOT, port=0) as wb:
            assert await wb.wait_subscribed(10)
            assert await wait_for(lambda: len(wb.state.cards) == 3, 5)
            await asyncio.to_thread(chromium.start, wb.http.url + "/")
            status, _, body = await http_get("127.0.0.1", chromium.devtools_port or 0, "/json/list")
            assert 200 == status
            pages = [
                t
                for t in json.loads(body)
                if t.get("type") == "page" and t.get("url", "").startswith(wb.http.url)
            ]
            assert pages, body
            async with ws_connect(
                pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10
            ) as ws:
                dt = DevTools(ws)

                async def card_states() -> dict[str, str]:
                    states: dict[str, str] = json.loads(await dt.evaluate(CARD_STATES_JS) or "{}")
                    return states

                async def wait_states(expected: dict[str, str], timeout: float) -> dict[str, str]:
                    deadline = time.monotonic() + timeout
                    states = await card_states()
                    while states != expected and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                        states = await card_states()
                    return states

                all_active = {"c1": "active", "c2": "active", "c3": "active"}
                assert all_active == await wait_states(all_active, 15)
                assert "7" == await dt.evaluate("document.getElementById('kpi-active').textContent")
                assert "dnc" in await dt.evaluate("document.getElementById('blocked').textContent")
                # Why a card cannot take a call now (the Warning of a 503 no-card-available).
                why = await dt.evaluate(
                    "document.querySelector('[data-card=\"c1\"] .card-why').textContent"
                )
                assert "not available: concurrent 1/1 in use" == why

                # Suspend c2 through the card manager: its state must show within 2 s.
                manager.on_response("c2", 402, "Payment Required", now=time.time())
                bus.publish_card_events(manager.drain_events())
                suspended = {"c1": "active", "c2": "suspended", "c3": "active"}
                assert suspended == await wait_states(suspended, 2.0)
                assert await wait_for_js(
                    dt, "document.querySelector('[data-alert=\"card-suspended\"]') !== null", 2.0
                )

                # Reload: the page rebuilds from the server's retained-state snapshot.
                await dt.call("Page.reload", ignoreCache=True)
                assert await wait_for_js(dt, "document.body.dataset.ready === 'true'", 10)
                assert suspended == await wait_states(suspended, 5)

                shot = await dt.call("Page.captureScreenshot", format="png")
                png = base64.b64decode(shot["data"])
                assert png.startswith(b"\x89PNG\r\n\x1a\n")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / "wallboard.png").write_bytes(png)
    finally:
        await pub.stop()


async def wait_for_js(dt: DevTools, expression: str, timeout: float) -> bool:
    """Poll a boolean JavaScript expression until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if await dt.evaluate(expression) is True:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


def test_topics_are_the_design_topics() -> None:
    """Topic names follow DESIGN.md exactly; unsafe card ids cannot inject levels or wildcards."""
    t = Topics("dialgate", "gw1")
    assert "dialgate/gateway/gw1/status" == t.status
    assert "dialgate/cards/c1/state" == t.card("c1")
    assert "dialgate/cards/a_b_c/state" == t.card("a/b+c")
    assert "dialgate/stats" == t.stats
    assert "dialgate/calls/attempt" == t.calls("attempt")
    assert "dialgate/alerts" == t.alerts


async def test_wallboard_follows_the_broker_through_a_restart(mosquitto: Mosquitto) -> None:
    """Broker killed: the wallboard says so (/health 503, browsers told); after a restart it
    resubscribes and picks up retained state published again by the gateway."""
    async with WallboardServer(mosquitto.url, root=ROOT, port=0, backoff_max=0.5) as wb:
        assert await wb.wait_subscribed(10)
        host, port = wb.http.address
        assert 200 == (await http_get(host, port, "/health"))[0]
        mosquitto.kill()
        assert await wait_for(lambda: not wb.state.broker_connected, 5)
        assert 503 == (await http_get(host, port, "/health"))[0]
        mosquitto.start()
        bus = EventBus()
        pub = await _publisher(mosquitto, bus)
        try:
            bus.publish(_status("c7", "appealing", "violation"))
            assert await wait_for(lambda: wb.state.broker_connected, 10)
            assert await wait_for(lambda: "c7" in wb.state.cards, 10)
            assert "appealing" == wb.state.cards["c7"]["state"]
        finally:
            await pub.stop()


async def test_closing_the_wallboard_ends_open_streams_and_unknown_paths_are_404() -> None:
    """An open /events stream ends (EOF) as soon as the wallboard closes; /nope is 404 and a
    POST on /state 405. No broker needed: the wallboard keeps retrying it meanwhile."""
    port = free_port()
    wb = WallboardServer(f"mqtt://127.0.0.1:{port}", root=ROOT, port=0, backoff_max=0.5)
    await wb.start()
    closed = False
    try:
        host, http_port = wb.http.address
        assert 503 == (await http_get(host, http_port, "/health"))[0]  # no broker
        assert 404 == (await http_get(host, http_port, "/nope"))[0]
        assert 405 == (await http_get(host, http_port, "/state", method="POST"))[0]
        reader, writer = await asyncio.open_connection(host, http_port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        event, data = await asyncio.wait_for(_read_sse(reader), 5)
        assert ("snapshot", False) == (event, data["broker"]["connected"])
        assert 1 == wb.state.listeners
        started = time.monotonic()
        await wb.close()
        closed = True
        async with asyncio.timeout(2):
            while await reader.read(4096):
                pass
        assert time.monotonic() - started < 2
        assert 0 == wb.state.listeners
        writer.close()
    finally:
        if not closed:
            await wb.close()
