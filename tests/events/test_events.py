"""The event core: payloads and masking, the card-event adapter, the bus, stats and derived alerts."""

from __future__ import annotations

import json

from gateway.cards import CardDef, CardManager, PoolExhausted
from gateway.config import Settings
from gateway.telemetry.alerts import AlertWatch
from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CallEvent,
    CallEventKind,
    CallStats,
    CardStatus,
    Event,
    EventBus,
    GatewayStatus,
    LimitUsage,
    Severity,
    card_status,
    from_card_event,
    render_json,
    render_payload,
    usage_vs_limits,
)
from gateway.telemetry.mqtt import MqttPublisher, Topics, route
from policies.quotas import (
    CallOutcome,
    CardSnapshot,
    CardState,
    CardUsage,
    QuotaProfile,
    StartTimes,
)

CALLEE = "+8613812345678"


def test_call_event_payload_masks_the_callee_unless_configured() -> None:
    """`"v": 1` first, callee masked as +86138****5678 by default, clear when masking is off."""
    event = CallEvent(
        CallEventKind.ATTEMPT, "call-1", 0.0, callee=CALLEE, card="c1", campaign="spring"
    )
    masked = render_payload(event)
    assert ["v", "event", "call_id", "at", "callee", "card", "campaign"] == list(masked)
    assert 1 == masked["v"]
    assert "+86138****5678" == masked["callee"]
    assert "1970-01-01T00:00:00.000Z" == masked["at"]
    assert CALLEE not in render_json(event).decode()
    assert CALLEE == render_payload(event, mask_numbers=False)["callee"]


def test_alert_message_and_evidence_are_masked() -> None:
    """Numbers inside an alert's message and detail (carrier Warning text) are masked too."""
    alert = Alert(
        AlertKind.CARD_SUSPENDED,
        0.0,
        Severity.CRITICAL,
        f"complaint from {CALLEE}",
        detail={"evidence": {"warning": f'399 carrier "complaint {CALLEE}"'}},
    )
    text = render_json(alert).decode()
    assert CALLEE not in text
    assert "+86138****5678" in text
    assert CALLEE in render_json(alert, mask_numbers=False).decode()


def test_publisher_follows_policy_mask_numbers() -> None:
    """MqttPublisher.from_settings masks callees unless `policy.mask_numbers = false`."""
    event = CallEvent(CallEventKind.BLOCKED, "c", 0.0, callee=CALLEE, reason="dnc")
    for mask, expected in ((True, "+86138****5678"), (False, CALLEE)):
        settings = Settings.model_validate(
            {"mqtt": {"url": "mqtt://127.0.0.1:1883"}, "policy": {"mask_numbers": mask}}
        )
        pub = MqttPublisher.from_settings(settings)
        out = route(event, pub.topics, mask_numbers=pub.mask_numbers)
        assert (expected, "dialgate/calls/blocked", 0, False) == (
            json.loads(out.payload)["callee"],
            out.topic,
            out.qos,
            out.retain,
        )


def test_routes_follow_the_design_table() -> None:
    """Status and card state retained QoS 1, stats retained QoS 0, calls QoS 0, alerts QoS 1."""
    topics = Topics("dg", "n1")
    cases: list[tuple[Event, str, int, bool]] = [
        (GatewayStatus("n1", True, "0.1.0", 0.0, 0.0), "dg/gateway/n1/status", 1, True),
        (CardStatus("c9", "active", None, 0.0, "main", 0.0), "dg/cards/c9/state", 1, True),
        (CallEvent(CallEventKind.FAILOVER, "x", 0.0), "dg/calls/failover", 0, False),
        (Alert(AlertKind.TRUNK_DOWN, 0.0, Severity.CRITICAL, "down"), "dg/alerts", 1, False),
    ]
    for event, topic, qos, retain in cases:
        out = route(event, topics)
        assert (topic, qos, retain) == (out.topic, out.qos, out.retain)
        assert 1 == json.loads(out.payload)["v"]


def test_card_suspension_becomes_state_and_alert_restore_only_state() -> None:
    """CardStateChanged → CardStatus (+ card-suspended alert for a suspension); PoolExhausted → alert."""
    manager = CardManager()
    manager.load([CardDef("c1", "carrier-a", "+8613800000001", pool="p")], 100.0)
    manager.on_response("c1", 402, "Payment Required", now=200.0)
    [changed] = manager.drain_events()
    known = CardStatus("c1", "active", None, 100.0, "p", 150.0, carrier="carrier-a", in_use=1)
    out = from_card_event(changed, lookup=lambda card: known if card == "c1" else None)
    assert 2 == len(out)
    status, alert = out
    assert isinstance(status, CardStatus) and isinstance(alert, Alert)
    assert ("suspended", "arrears", 200.0, "carrier-a", 1) == (
        status.state,
        status.reason,
        status.since,
        status.carrier,
        status.in_use,
    )
    assert (AlertKind.CARD_SUSPENDED, "arrears", "c1", "p") == (
        alert.kind,
        alert.reason,
        alert.card,
        alert.pool,
    )
    assert "SIP/2.0 402 Payment Required" == render_payload(alert)["detail"]["evidence"]["response"]
    manager.restore("c1", now=300.0)
    [restored] = manager.drain_events()
    [only] = from_card_event(restored)
    assert isinstance(only, CardStatus) and "active" == only.state and only.reason is None
    exhausted = PoolExhausted(
        pool="p", at=1.0, call_id="x", retry_after=30.0, skipped={"c1": "state:suspended"}
    )
    [pool_alert] = from_card_event(exhausted)
    assert isinstance(pool_alert, Alert)
    assert AlertKind.POOL_EXHAUSTED == pool_alert.kind
    assert {"c1": "state:suspended"} == render_payload(pool_alert)["detail"]["skipped"]


def test_bus_isolates_failing_subscribers_and_orders_derived_events() -> None:
    """A raising subscriber does not stop others; events published from a subscriber follow in order."""
    bus = EventBus()
    seen: list[str] = []

    def broken(_event: Event) -> None:
        raise RuntimeError("boom")

    def deriving(event: Event) -> None:
        if isinstance(event, CallEvent) and event.kind is CallEventKind.ATTEMPT:
            bus.publish(CallEvent(CallEventKind.RINGING, event.call_id, event.at))

    bus.subscribe(broken)
    bus.subscribe(deriving)
    unsubscribe = bus.subscribe(
        lambda e: seen.append(e.kind.value if isinstance(e, CallEvent) else "?")
    )
    bus.publish(CallEvent(CallEventKind.ATTEMPT, "a", 0.0))
    bus.publish(CallEvent(CallEventKind.ENDED, "a", 1.0))
    assert ["attempt", "ringing", "ended"] == seen
    assert 3 == bus.subscriber_errors
    unsubscribe()
    bus.publish(CallEvent(CallEventKind.ATTEMPT, "b", 0.0))
    assert 3 == len(seen)


def test_bus_keeps_usage_when_a_card_changes_state() -> None:
    """publish_card_events without lookup reuses the card's last published usage and carrier."""
    bus = EventBus()
    got: list[Event] = []
    bus.subscribe(got.append)
    usage = (LimitUsage("calls_per_day", 10, 300),)
    bus.publish(
        CardStatus("c1", "active", None, 0.0, "main", 0.0, carrier="carrier-a", usage=usage)
    )
    manager = CardManager()
    manager.load([CardDef("c1", "carrier-a", "+8613800000001")], 0.0)
    manager.suspend("c1", now=5.0)
    bus.publish_card_events(manager.drain_events())
    status = [e for e in got if isinstance(e, CardStatus)][-1]
    assert ("suspended", "manual", usage, "carrier-a") == (
        status.state,
        status.reason,
        status.usage,
        status.carrier,
    )


def test_usage_vs_limits_covers_every_configured_limit() -> None:
    """Counts over minute/hour/day windows, in-use, talk minutes, callees, rates and failure streak."""
    now = 1_700_000_000.0
    profile = QuotaProfile(
        calls_per_minute=5,
        calls_per_hour=60,
        calls_per_day=300,
        concurrent=1,
        talk_minutes_per_day=100,
        distinct_callees_per_day=50,
        answer_rate_floor=0.3,
        short_call_ceiling=0.5,
        consecutive_failures=3,
        rate_min_sample=2,
    )
    outcomes = (
        CallOutcome(now - 500, answered=True, talk_seconds=5),
        CallOutcome(now - 400, answered=True, talk_seconds=60),
        CallOutcome(now - 300, answered=False, failed=True),
        CallOutcome(now - 200, answered=False, failed=True),
    )
    snap = CardSnapshot(
        card_id="c1",
        state=CardState.ACTIVE,
        profile=profile,
        timezone="UTC",
        usage=CardUsage(
            call_starts=StartTimes((now - 7200, now - 1800, now - 30, now - 10)),
            callees_today=frozenset({"+8613812345678", "+8613812345679"}),
            talk_seconds_today=150.0,
            in_use=1,
            recent_outcomes=outcomes,
        ),
    )
    got = {u.limit_name: u for u in usage_vs_limits(snap, now)}
    assert 2 == got["calls_per_minute"].used
    assert 3 == got["calls_per_hour"].used
    assert 1 == got["concurrent"].used
    assert 2.5 == got["talk_minutes_per_day"].used
    assert 2 == got["distinct_callees_per_day"].used
    assert (0.5, 4) == (got["answer_rate_floor"].used, got["answer_rate_floor"].sample)
    assert 0.25 == got["short_call_ceiling"].used
    assert 2 == got["consecutive_failures"].used
    manager = CardManager()
    manager.load([CardDef("c1", "carrier-a", "+8613800000001")], now)
    status = card_status(manager.get("c1"), now, snap)
    assert (1, "carrier-a", len(got)) == (status.in_use, status.carrier, len(status.usage))


def test_call_stats_counts_cps_asr_active_blocked_and_cards() -> None:
    """CallStats: CPS over its window, ASR over ended calls, active until ended/blocked."""
    now = [1000.0]
    stats = CallStats(lambda: now[0], cps_window=10.0)
    for i in range(5):
        stats(CallEvent(CallEventKind.ATTEMPT, f"c{i}", 995.0 + i))
    stats(CallEvent(CallEventKind.BLOCKED, "c0", 996.0, reason="dnc"))
    stats(CallEvent(CallEventKind.ENDED, "c1", 998.0, outcome="answered"))
    stats(CallEvent(CallEventKind.ENDED, "c2", 998.0, outcome="busy"))
    stats(CardStatus("k1", "active", None, 0.0, "main", 0.0))
    stats(CardStatus("k2", "suspended", "violation", 0.0, "main", 0.0))
    snap = stats.snapshot()
    assert (2, 0.5, 0.5, {"dnc": 1}, {"active": 1, "suspended": 1}) == (
        snap.active_calls,
        snap.cps,
        snap.asr,
        dict(snap.blocked_by_reason),
        dict(snap.cards_by_state),
    )
    now[0] = 2000.0
    assert (0.0, None) == (stats.snapshot().cps, stats.snapshot().asr)


def test_alert_watch_raises_once_per_crossing() -> None:
    """quota-near at 80 % once until usage falls back; card-at-risk near the answer-rate floor."""
    raised: list[Event] = []
    watch = AlertWatch(raised.append)

    def status(used: int, rate: float, state: str = "active") -> CardStatus:
        return CardStatus(
            "c1",
            state,
            None,
            0.0,
            "main",
            0.0,
            usage=(
                LimitUsage("calls_per_hour", used, 10),
                LimitUsage("answer_rate_floor", rate, 0.3, sample=30, min_sample=20),
            ),
        )

    watch(status(7, 0.6))
    assert [] == raised
    watch(status(8, 0.6))
    watch(status(9, 0.6))
    assert [(AlertKind.QUOTA_NEAR, "calls_per_hour")] == [
        (a.kind, a.reason) for a in raised if isinstance(a, Alert)
    ]
    watch(status(2, 0.6))
    watch(status(8, 0.32))
    kinds = [a.kind for a in raised if isinstance(a, Alert)]
    assert [AlertKind.QUOTA_NEAR, AlertKind.QUOTA_NEAR, AlertKind.CARD_AT_RISK] == kinds
    raised.clear()
    watch(status(2, 0.6, state="suspended"))
    watch(status(9, 0.1, state="suspended"))
    assert [] == raised


def test_carrier_health_transitions_become_trunk_alerts() -> None:
    """CarrierHealth: down after the failure threshold → trunk-down once; back up → trunk-up."""
    from gateway.cards.health import CarrierHealth

    health = CarrierHealth(failure_threshold=2, success_threshold=1)
    health.add("carrier-a", now=0.0)
    bus = EventBus()
    got: list[Event] = []
    bus.subscribe(got.append)
    for t in (1.0, 2.0, 3.0):  # trying, inactive, still inactive
        health.on_result("carrier-a", False, now=t, cause="timeout")
    health.on_result("carrier-a", True, now=4.0)
    bus.publish_carrier_events(health.drain_events())
    alerts = [(a.kind, a.carrier, a.severity) for a in got if isinstance(a, Alert)]
    assert [
        (AlertKind.TRUNK_DOWN, "carrier-a", Severity.CRITICAL),
        (AlertKind.TRUNK_UP, "carrier-a", Severity.INFO),
    ] == alerts


def test_card_state_says_whether_the_card_can_take_a_call_and_why_not() -> None:
    """The retained card state carries ``available``: now or not, why, until when."""
    now = 1_793_577_600.0  # 2026-11-02 00:00 UTC = 08:00 in Shanghai
    manager = CardManager()
    manager.load([CardDef("c1", "carrier-a", "+8613800000001")], now)
    free = CardSnapshot("c1", CardState.ACTIVE, QuotaProfile(calls_per_minute=1))
    body = render_payload(card_status(manager.get("c1"), now, free))
    assert {"now": True, "why": None, "until": None} == body["available"]
    busy = CardSnapshot(
        "c1",
        CardState.ACTIVE,
        QuotaProfile(calls_per_minute=1),
        timezone="Asia/Shanghai",
        usage=CardUsage(call_starts=StartTimes((now - 30,))),
    )
    body = render_payload(card_status(manager.get("c1"), now, busy))
    assert False is body["available"]["now"]
    assert "calls_per_minute 1/1 in 60s until 08:00" == body["available"]["why"]
    assert body["available"]["until"].startswith("2026-11-02T00:00:30")
