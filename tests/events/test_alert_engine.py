"""The one alert engine: quota-near and card-at-risk with hysteresis, never for concurrency."""

from __future__ import annotations

import pytest

from gateway.telemetry.alerts import AlertEngine, AlertMarks, AlertWatch, card_risk
from gateway.telemetry.events import Alert, AlertKind, CardStatus, Event, LimitUsage


def _status(at: float, *usage: LimitUsage, state: str = "active", card: str = "c1") -> CardStatus:
    return CardStatus(card, state, None, 0.0, "main", at, carrier="carrier-a", usage=usage)


def _kinds(alerts: list[Alert]) -> list[tuple[AlertKind, str | None]]:
    return [(a.kind, a.reason) for a in alerts]


def test_quota_near_is_raised_once_per_crossing_with_hysteresis() -> None:
    """80 % raises once; 70 % and 65 % stay quiet; under 60 % re-arms; 80 % raises again."""
    engine = AlertEngine(AlertMarks(upper=0.8, lower=0.6))
    per_hour = [5, 7, 8, 9, 10, 7, 8, 6.5, 9, 5, 8, 8]
    raised_at: list[int] = []
    for t, used in enumerate(per_hour):  # a fake clock: one reading a minute
        alerts = engine.assess(_status(60.0 * t, LimitUsage("calls_per_hour", used, 10)))
        if alerts:
            assert [(AlertKind.QUOTA_NEAR, "calls_per_hour")] == _kinds(alerts)
            assert alerts[0].at == 60.0 * t
            raised_at.append(t)
    # 8/10 at t=2; the dips to 7/10 and 6.5/10 stay above 60 %: no second alert until
    # 5/10 at t=9 re-arms it, then 8/10 at t=10 raises it again (once).
    assert [2, 10] == raised_at


def test_no_quota_near_for_concurrency_at_its_limit() -> None:
    """A card at concurrent 1/1, call after call, raises nothing (the old bug: one per call)."""
    engine = AlertEngine()
    alerts: list[Alert] = []
    for t in range(20):
        busy = t % 2 == 0
        alerts += engine.assess(
            _status(
                float(t),
                LimitUsage("concurrent", 1 if busy else 0, 1),
                LimitUsage("consecutive_failures", 0, 3),
                LimitUsage("calls_per_hour", t // 2, 60),
            )
        )
    assert [] == alerts


def test_card_at_risk_for_a_low_answer_rate_and_many_short_calls() -> None:
    """Near the answer-rate floor / short-call ceiling, from the minimum sample on."""
    engine = AlertEngine()
    floor, ceiling = 0.18, 0.5

    def status(at: float, rate: float, short: float, sample: int = 30) -> CardStatus:
        return _status(
            at,
            LimitUsage("answer_rate_floor", rate, floor, sample=sample, min_sample=20),
            LimitUsage("short_call_ceiling", short, ceiling, sample=sample, min_sample=20),
        )

    assert [] == engine.assess(status(0, 0.10, 0.9, sample=19))  # too small a sample
    assert [] == engine.assess(status(1, 0.40, 0.2))  # healthy
    alerts = engine.assess(status(2, 0.21, 0.45))  # 0.18/0.21 = 86 %, 0.45/0.5 = 90 %
    assert [
        (AlertKind.CARD_AT_RISK, "answer_rate"),
        (AlertKind.CARD_AT_RISK, "short_calls"),
    ] == _kinds(alerts)
    assert {"risk": "answer_rate", "value": 0.21, "threshold": 0.18, "share": 0.857} == {
        k: alerts[0].detail[k] for k in ("risk", "value", "threshold", "share")
    }
    assert "answer rate 0.21 (floor 0.18)" in alerts[0].message
    assert [] == engine.assess(status(3, 0.16, 0.55))  # past the mark: still the same crossing
    assert [] == engine.assess(status(4, 0.25, 0.35))  # 72 % / 70 %: not re-armed yet
    assert [] == engine.assess(status(5, 0.40, 0.2))  # re-armed
    assert [(AlertKind.CARD_AT_RISK, "answer_rate")] == _kinds(engine.assess(status(6, 0.0, 0.2)))


def test_risk_model_covers_dispersion_and_complaints() -> None:
    """Distinct callees against their ceiling; complaints when a ceiling is known."""
    usage = (LimitUsage("distinct_callees_per_day", 90, 100), LimitUsage("concurrent", 1, 1))
    signals = card_risk(usage, complaints=2, complaints_max=3)
    assert [("dispersion", 0.9), ("complaints", pytest.approx(2 / 3))] == [
        (s.name, s.share) for s in signals
    ]
    assert ["dispersion"] == [s.name for s in card_risk(usage, complaints=2)]


def test_unusable_card_raises_nothing_and_is_re_armed() -> None:
    """A suspended card gets no alerts; when it is active again a crossing raises anew."""
    engine = AlertEngine()
    near = LimitUsage("calls_per_day", 250, 300)
    assert 1 == len(engine.assess(_status(0, near)))
    assert [] == engine.assess(_status(1, near, state="suspended"))
    assert ("c1", "calls_per_day") not in engine.raised
    assert 1 == len(engine.assess(_status(2, near, state="probation")))


def test_alert_watch_publishes_what_the_engine_raises() -> None:
    """The bus subscriber is the engine: same alerts, other cards' states independent."""
    got: list[Event] = []
    watch = AlertWatch(got.append)
    watch(_status(0, LimitUsage("talk_minutes_per_day", 50, 60)))
    watch(_status(0, LimitUsage("talk_minutes_per_day", 50, 60), card="c2"))
    watch(_status(1, LimitUsage("talk_minutes_per_day", 55, 60)))
    assert [("c1", "talk_minutes_per_day"), ("c2", "talk_minutes_per_day")] == [
        (a.card, a.reason) for a in got if isinstance(a, Alert)
    ]


def test_marks_must_be_ordered() -> None:
    """A lower mark above the upper one makes no hysteresis: refused."""
    with pytest.raises(ValueError):
        AlertMarks(upper=0.6, lower=0.8)
