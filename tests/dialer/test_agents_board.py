"""Agents on the wallboard: ``AgentBoard`` states from call events, MQTT, and Chromium.

The board follows the bus (call events with the agent's name, agent pause
alerts) and publishes ``dialgate/agents/{agent}/state`` retained; the
wallboard shows one tile per agent. The browser test publishes through a real
mosquitto with three agents talking, idle and paused, and saves a screenshot
to artifacts/wallboard-agents.png.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

from websockets.asyncio.client import connect as ws_connect

from gateway.operator.wallboard.server import WallboardServer
from gateway.operator.wallboard.trend import Trend
from gateway.telemetry.agent_board import AgentBoard
from gateway.telemetry.events import (
    AgentState,
    Alert,
    AlertKind,
    CallEvent,
    CallEventKind,
    Event,
    EventBus,
    Severity,
    Stats,
    render_payload,
)
from gateway.telemetry.mqtt import Topics, route
from simulator.testkit import Mosquitto, wait_for
from tests.events.conftest import Chromium
from tests.events.helpers import Collector, http_get
from tests.events.test_wallboard import ROOT, DevTools, _publisher, wait_for_js

T0 = 1_793_592_000.0  # 2026-11-02 12:00 in Shanghai
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _call(
    kind: CallEventKind, call_id: str, at: float, agent: str = "alice", **kw: object
) -> CallEvent:
    return CallEvent(kind, call_id, at, agent=agent, **kw)  # type: ignore[arg-type]


def _paused(agent: str, at: float, reason: str = "complaints 3/3 in 1d") -> Alert:
    return Alert(
        AlertKind.AGENT_PAUSED,
        at,
        Severity.WARNING,
        f"agent {agent} paused: {reason}",
        reason=reason,
        detail={"agent": agent, "until": None},
    )


def test_states_follow_the_calls_and_pauses() -> None:
    out: list[Event] = []
    board = AgentBoard(
        out.append,
        timezone="Asia/Shanghai",
        bindings={"alice": "c1", "bob": None},
        seed=lambda agent, day_start, now: (4, 1) if agent == "alice" else (0, 0),
    )
    board.start(T0)
    first = [e for e in out if isinstance(e, AgentState)]
    assert [("alice", "idle", "c1", 4, 1), ("bob", "idle", None, 0, 0)] == [
        (e.agent, e.state, e.card, e.calls_today, e.complaints_today) for e in first
    ]
    steps = [
        (_call(CallEventKind.ATTEMPT, "k1", T0 + 1, card="c1"), "dialling"),
        (_call(CallEventKind.RINGING, "k1", T0 + 2, card="c1"), "ringing"),
        (_call(CallEventKind.ANSWERED, "k1", T0 + 5, card="c1"), "talking"),
        (_call(CallEventKind.ENDED, "k1", T0 + 60, card="c1", outcome="answered"), "idle"),
        (_call(CallEventKind.BLOCKED, "k2", T0 + 70, reason="dnc"), "idle"),
    ]
    for event, expected in steps:
        board(event)
        assert expected == board.state_of("alice"), event
    last = [e for e in out if isinstance(e, AgentState) and e.agent == "alice"][-1]
    assert (6, 1, 0, "c1") == (last.calls_today, last.answered_today, last.active_calls, last.card)
    # A dialer with two channels: the busiest call decides.
    board(_call(CallEventKind.ATTEMPT, "d1", T0 + 80, agent="bob", card="c2"))
    board(_call(CallEventKind.ATTEMPT, "d2", T0 + 80, agent="bob", card="c2"))
    board(_call(CallEventKind.ANSWERED, "d2", T0 + 85, agent="bob", card="c2"))
    assert "talking" == board.state_of("bob")
    board(_call(CallEventKind.ENDED, "d2", T0 + 90, agent="bob"))
    assert "dialling" == board.state_of("bob")
    # Paused overrides, with its reason; resumed goes back.
    board(_paused("alice", T0 + 100))
    assert "paused" == board.state_of("alice")
    latest = [e for e in out if isinstance(e, AgentState) and e.agent == "alice"][-1]
    assert ("paused", "complaints 3/3 in 1d") == (latest.state, latest.reason)
    board(
        Alert(
            AlertKind.AGENT_RESUMED,
            T0 + 200,
            Severity.INFO,
            "agent alice resumed",
            detail={"agent": "alice"},
        )
    )
    assert "idle" == board.state_of("alice")
    # Unchanged state is not published again.
    count = len(out)
    board(_call(CallEventKind.FAILOVER, "k3", T0 + 300, card="c1"))
    assert count == len(out)
    # A new day (Shanghai midnight) starts the counters again.
    board(_call(CallEventKind.ATTEMPT, "k4", T0 + 13 * 3600, card="c1"))
    latest = [e for e in out if isinstance(e, AgentState) and e.agent == "alice"][-1]
    # The seed (the store's 4 calls of the day) plus the new attempt; answered from 0.
    assert (5, 0) == (latest.calls_today, latest.answered_today)


def test_a_dialer_with_many_calls_up_has_the_state_of_its_busiest_call() -> None:
    """Random steps over more calls than MAX_ACTIVE (the oldest are forgotten): the
    state is always the most advanced step among the calls the board keeps, as a scan
    of them says, and the per-step counts never drift."""
    import random

    from gateway.telemetry.agent_board import MAX_ACTIVE, STATES

    rng = random.Random(17)
    board = AgentBoard(lambda _e: None, timezone="Asia/Shanghai", bindings={"dialer": None})
    board.start(T0)
    kinds = (
        CallEventKind.ATTEMPT,
        CallEventKind.RINGING,
        CallEventKind.ANSWERED,
        CallEventKind.ENDED,
    )
    peak = 0
    for i in range(6 * MAX_ACTIVE):
        call_id = f"d{rng.randrange(2 * MAX_ACTIVE)}"
        kind = CallEventKind.ENDED if rng.random() < 0.1 else rng.choice(kinds[:3])
        board(_call(kind, call_id, T0 + i * 0.001, agent="dialer"))
        agent = board.agents["dialer"]
        peak = max(peak, len(agent.active))
        scanned = max(agent.active.values(), key=STATES.index) if agent.active else "idle"
        assert scanned == board.state_of("dialer"), i
    agent = board.agents["dialer"]
    assert MAX_ACTIVE == peak  # the oldest calls were forgotten on the way
    counted = {step: n for step, n in agent.steps.items() if n}
    kept: dict[str, int] = {}
    for step in agent.active.values():
        kept[step] = kept.get(step, 0) + 1
    assert kept == counted


def test_topic_and_payload() -> None:
    state = AgentState("bob", T0, "paused", reason="complaints", card="c2", calls_today=3)
    out = route(state, Topics("dialgate", "gw1"))
    assert ("dialgate/agents/bob/state", 1, True) == (out.topic, out.qos, out.retain)
    payload = render_payload(state)
    assert {
        "v": 1,
        "agent": "bob",
        "state": "paused",
        "reason": "complaints",
        "card": "c2",
        "calls_today": 3,
        "answered_today": 0,
        "complaints_today": 0,
        "active_calls": 0,
    } == {k: v for k, v in payload.items() if k != "at"}


def _stats_at(at: float, attempts: int, answered: int, ended: int) -> Stats:
    return Stats(at, 1, 0.5, None, attempts, answered, ended, 0, {}, {})


def test_trend_counts_calls_and_asr_per_minute() -> None:
    trend = Trend(minutes=60)
    iso = lambda t: render_payload(_stats_at(t, 0, 0, 0))["at"]  # noqa: E731
    base = 1_793_592_000.0  # a whole minute
    for at, counts in [
        (base + 5, (10, 2, 8)),
        (base + 50, (12, 3, 10)),  # same minute: the last one counts
        (base + 65, (20, 6, 16)),  # +8 calls, 3 of 6 ended answered
        (base + 125, (20, 6, 16)),  # an idle minute
        (base + 185, (3, 1, 2)),  # the gateway restarted: counting again from 0
    ]:
        assert trend.add(
            {"at": iso(at), "attempts": counts[0], "answered": counts[1], "ended": counts[2]}
        )
    assert [(8, 0.5), (0, None), (3, 0.5)] == [(p["calls"], p["asr"]) for p in trend.points()]
    assert not trend.add({"at": "nonsense", "attempts": 1, "answered": 1, "ended": 1})
    assert not trend.add({"at": iso(base), "attempts": 1, "answered": 1, "ended": 1})  # older
    # At most an hour: two hours of minutes keep the last 60 points.
    for m in range(4, 124):
        trend.add({"at": iso(base + 60 * m), "attempts": 10 * m, "answered": m, "ended": 2 * m})
    points = trend.points()
    assert 60 == len(points) and all(p["calls"] == 10 for p in points[1:])


AGENTS_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-agent]')]
  .map(e => [e.dataset.agent, e.dataset.state])))"""


async def test_wallboard_shows_agents_in_three_states(
    mosquitto: Mosquitto, chromium: Chromium
) -> None:
    bus = EventBus()
    pub = await _publisher(mosquitto, bus)
    now = time.time()
    board = AgentBoard(bus.publish, bindings={"alice": "c1", "bob": "c2", "carol": None})
    bus.subscribe(board)
    try:
        board.start(now)
        bus.publish(_call(CallEventKind.ATTEMPT, "a1", now, agent="alice", card="c1"))
        bus.publish(_call(CallEventKind.ANSWERED, "a1", now + 1, agent="alice", card="c1"))
        bus.publish(_paused("carol", now + 2, "complaints 3/3 in 1d"))
        assert await wait_for(lambda: pub.queue_depth == 0, 5)
        async with Collector(mosquitto.port, f"{ROOT}/agents/#") as sub:
            topic = Topics(ROOT, "n").agent("carol")
            assert await wait_for(lambda: sub.latest(topic) is not None, 5)
            assert sub.on(topic)[0].retain
            assert "paused" == sub.latest(topic)["state"]
        async with WallboardServer(mosquitto.url, root=ROOT, port=0) as wb:
            assert await wb.wait_subscribed(10)
            assert await wait_for(lambda: len(wb.state.agents) == 3, 5)
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
                expected = {"alice": "talking", "bob": "idle", "carol": "paused"}
                deadline = time.monotonic() + 10
                shown = json.loads(await dt.evaluate(AGENTS_JS) or "{}")
                while shown != expected and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    shown = json.loads(await dt.evaluate(AGENTS_JS) or "{}")
                assert expected == shown
                carol = await dt.evaluate(
                    "document.querySelector('[data-agent=\"carol\"]').textContent"
                )
                assert "paused: complaints 3/3 in 1d" in carol
                alice = await dt.evaluate(
                    "document.querySelector('[data-agent=\"alice\"]').textContent"
                )
                assert "calls 1" in alice and "answered 1" in alice and "card c1" in alice
                # alice hangs up: her tile goes idle live.
                bus.publish(_call(CallEventKind.ENDED, "a1", time.time(), agent="alice", card="c1"))
                assert await wait_for_js(
                    dt,
                    "document.querySelector('[data-agent=\"alice\"]').dataset.state === 'idle'",
                    3,
                )
                bus.publish(
                    _call(CallEventKind.ATTEMPT, "a2", time.time(), agent="alice", card="c1")
                )
                bus.publish(
                    _call(CallEventKind.RINGING, "a2", time.time(), agent="alice", card="c1")
                )
                assert await wait_for_js(
                    dt,
                    "document.querySelector('[data-agent=\"alice\"]').dataset.state === 'ringing'",
                    3,
                )
                # The trend: three stats minutes → two points (calls/min and ASR lines).
                t0 = (time.time() // 60 - 3) * 60
                # (one at a time: a retained topic sends only its latest message)
                for i, (a, n, e) in enumerate(((100, 40, 90), (130, 52, 118), (150, 60, 140))):
                    bus.publish(_stats_at(t0 + 60 * i + 5, a, n, e))
                    assert await wait_for(
                        lambda a=a: (wb.state.stats or {}).get("attempts") == a, 5
                    )
                assert await wait_for_js(
                    dt,
                    "document.querySelector('#trend .trend-calls').getAttribute('points')"
                    ".split(' ').length === 2",
                    5,
                )
                legend = await dt.evaluate("document.getElementById('trend-legend').textContent")
                assert "calls/min 20 (peak 30)" in legend and "ASR 36%" in legend, legend
                shot = await dt.call("Page.captureScreenshot", format="png")
                png = base64.b64decode(shot["data"])
                assert png.startswith(b"\x89PNG\r\n\x1a\n")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / "wallboard-agents.png").write_bytes(png)
    finally:
        await pub.stop()
