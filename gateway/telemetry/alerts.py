"""The one alert engine: ``quota-near`` and ``card-at-risk`` with hysteresis, agent pauses.

What this module is for:

* :func:`alert_readings` — every candidate of a card with its share of the way
  to a limit: ``quota-near`` on the rate and volume limits of
  :data:`QUOTA_LIMITS` (never concurrency) and ``card-at-risk`` from
  :func:`card_risk` (the carrier's risk model: answer rate, short calls,
  dispersion, complaints);
* :class:`AlertEngine` — raises a reading once at :class:`AlertMarks` ``upper``
  (80 %) and re-arms it below ``lower`` (60 %); the running gateway
  (:class:`AlertWatch` on the bus, the operator's status loop) and
  ``dialgate alerts check`` both go through it, so both raise the same
  :class:`~gateway.telemetry.events.Alert` payloads on the same topics;
* :class:`AlertThresholds` — the operator's settings (the engine's marks and
  the agent complaint ceiling), :func:`assess_card` / :func:`assess_agent` —
  the same judgement without memory, for one-off reports.

What it must never do: read a clock (``now``/``at`` are passed in), touch the
network or the store, or raise an alert for a card that cannot carry calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CardStatus,
    Event,
    LimitUsage,
    Severity,
    usage_vs_limits,
)
from gateway.telemetry.events import _num as num

if TYPE_CHECKING:
    from policies.quotas import CardSnapshot

__all__ = [
    "DEFAULT_THRESHOLDS",
    "QUOTA_LIMITS",
    "USABLE_STATES",
    "AlertEngine",
    "AlertMarks",
    "AlertReading",
    "AlertThresholds",
    "AlertWatch",
    "Finding",
    "RiskSignal",
    "alert_readings",
    "assess_agent",
    "assess_card",
    "card_risk",
]

#: Card states in which a card carries calls: the only ones judged.
USABLE_STATES = frozenset({"active", "probation"})

#: Rate and volume limits a ``quota-near`` is raised for. Not ``concurrent`` (a card at
#: ``1/1`` is merely busy, and frees when its call ends), not ``consecutive_failures``
#: (a cool-down, not a quota), not the answer-rate / short-call limits (those are risk:
#: :func:`card_risk`).
QUOTA_LIMITS = frozenset(
    {
        "calls_per_minute",
        "calls_per_hour",
        "calls_per_day",
        "talk_minutes_per_day",
        "distinct_callees_per_day",
    }
)

#: A risk share is capped here (an answer rate of 0 is infinitely far below any floor).
_MAX_SHARE = 10.0


@dataclass(frozen=True, slots=True)
class AlertMarks:
    """Hysteresis of ``quota-near`` and ``card-at-risk``: raise at ``upper``, re-arm below ``lower``.

    Both are shares of the way to a limit (1.0 = at it): an alert is raised once
    when a card's share reaches ``upper`` (0.8) and not again until the share has
    fallen below ``lower`` (0.6) and then reaches ``upper`` again.
    """

    upper: float = 0.8
    lower: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 < self.lower <= self.upper:
            raise ValueError(f"alert marks need 0 < lower <= upper, got {self.lower}/{self.upper}")


@dataclass(frozen=True, slots=True)
class RiskSignal:
    """How close one of a card's traffic signals is to the carrier's likely threshold.

    ``share`` is 1.0 at the threshold and grows toward it: ``value / threshold``
    for ceilings (short-call share, distinct callees, complaints),
    ``threshold / value`` for the answer-rate floor.
    """

    name: str
    value: float
    threshold: float
    share: float
    sample: int | None = None

    @property
    def text(self) -> str:
        """``answer rate 0.21 (carrier floor 0.18)`` and the like."""
        if self.name == "answer_rate":
            return f"answer rate {self.value:.2f} (floor {self.threshold:.2f})"
        if self.name == "short_calls":
            return f"short-call share {self.value:.2f} (ceiling {self.threshold:.2f})"
        if self.name == "dispersion":
            return f"distinct callees today {num(self.value)} (ceiling {num(self.threshold)})"
        return f"{self.name.replace('_', ' ')} {num(self.value)} (ceiling {num(self.threshold)})"


def card_risk(
    usage: Iterable[LimitUsage],
    *,
    complaints: int | None = None,
    complaints_max: int | None = None,
) -> list[RiskSignal]:
    """The carrier's risk model (``simulator/antifraud.py``) read from a card's usage.

    A carrier suspends a card whose answer rate falls under its floor or whose
    share of short answered calls rises over its ceiling (each over a rolling
    sample, judged from a minimum sample on), that reaches too many distinct
    callees a day (dispersion), or that draws too many complaints. The card's
    quota profile holds the operator's estimate of those thresholds
    (``answer_rate_floor``, ``short_call_ceiling``, ``distinct_callees_per_day``;
    complaints when a ceiling is known), so each signal is how close the card is
    to them. Pure: no clock, no I/O.
    """
    out: list[RiskSignal] = []
    for u in usage:
        if u.limit_name in ("answer_rate_floor", "short_call_ceiling"):
            if u.sample is None or u.sample < max(u.min_sample or 0, 1) or u.limit <= 0:
                continue  # not judged yet, as the carrier does not judge a small sample
            if u.limit_name == "answer_rate_floor":
                share = u.limit / u.used if u.used > 0 else _MAX_SHARE
                out.append(
                    RiskSignal("answer_rate", u.used, u.limit, min(share, _MAX_SHARE), u.sample)
                )
            else:
                out.append(RiskSignal("short_calls", u.used, u.limit, u.used / u.limit, u.sample))
        elif u.limit_name == "distinct_callees_per_day" and u.limit > 0:
            out.append(RiskSignal("dispersion", u.used, u.limit, u.used / u.limit))
    if complaints is not None and complaints_max is not None and complaints_max > 0:
        out.append(
            RiskSignal("complaints", complaints, complaints_max, complaints / complaints_max)
        )
    return out


@dataclass(frozen=True, slots=True)
class AlertReading:
    """One thing the engine judges on a card: its key, alert kind and share of the way."""

    kind: AlertKind
    key: str
    share: float
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def alert_readings(
    card: str,
    usage: Iterable[LimitUsage],
    *,
    complaints: int | None = None,
    complaints_max: int | None = None,
) -> list[AlertReading]:
    """Every ``quota-near`` / ``card-at-risk`` candidate of a card with its share (pure).

    ``quota-near`` readings for the rate and volume limits of :data:`QUOTA_LIMITS`
    (never concurrency); ``card-at-risk`` readings from :func:`card_risk`.
    """
    usage = tuple(usage)
    out: list[AlertReading] = []
    for u in usage:
        if u.limit_name not in QUOTA_LIMITS or u.limit <= 0:
            continue
        out.append(
            AlertReading(
                AlertKind.QUOTA_NEAR,
                u.limit_name,
                u.fraction,
                f"card {card}: {u.limit_name} {num(u.used)}/{num(u.limit)}",
                {"limit": u.limit_name, **u.as_dict(), "share": round(u.fraction, 3)},
            )
        )
    for signal in card_risk(usage, complaints=complaints, complaints_max=complaints_max):
        detail: dict[str, Any] = {
            "risk": signal.name,
            "value": num(signal.value),
            "threshold": num(signal.threshold),
            "share": round(signal.share, 3),
        }
        if signal.sample is not None:
            detail["sample"] = signal.sample
        out.append(
            AlertReading(
                AlertKind.CARD_AT_RISK,
                signal.name,
                signal.share,
                f"card {card}: {signal.text}, {signal.share:.0%} of the way to a carrier "
                "suspension",
                detail,
            )
        )
    return out


class AlertEngine:
    """``quota-near`` and ``card-at-risk`` with hysteresis, for every card it is shown.

    The one engine behind both the running gateway (:class:`AlertWatch` on the
    bus, ``Operator.check_alerts`` in the status loop) and ``dialgate alerts
    check`` (``Operator.check_alerts`` once). A reading is raised once when its share reaches
    ``marks.upper``; it is re-armed only when the share falls below
    ``marks.lower`` (or the reading disappears: the card cannot carry calls, the
    sample got too small). Remembers only which (card, key) are raised.
    """

    def __init__(self, marks: AlertMarks = AlertMarks()) -> None:
        self.marks = marks
        self._raised: set[tuple[str, str]] = set()

    @property
    def raised(self) -> frozenset[tuple[str, str]]:
        """The (card, key) pairs currently raised (not re-armed yet)."""
        return frozenset(self._raised)

    def forget(self, card: str) -> None:
        """Re-arm every alert of ``card`` (it cannot carry calls)."""
        self._raised = {k for k in self._raised if k[0] != card}

    def assess(
        self,
        status: CardStatus,
        *,
        complaints: int | None = None,
        complaints_max: int | None = None,
    ) -> list[Alert]:
        """Alerts newly raised by this state of the card."""
        if status.state not in USABLE_STATES:
            self.forget(status.card)
            return []
        readings = alert_readings(
            status.card, status.usage, complaints=complaints, complaints_max=complaints_max
        )
        seen = {r.key for r in readings}
        self._raised = {k for k in self._raised if k[0] != status.card or k[1] in seen}
        alerts: list[Alert] = []
        for reading in readings:
            key = (status.card, reading.key)
            if key in self._raised:
                if reading.share < self.marks.lower:
                    self._raised.discard(key)
                continue
            if reading.share < self.marks.upper:
                continue
            self._raised.add(key)
            alerts.append(
                Alert(
                    kind=reading.kind,
                    at=status.at,
                    severity=Severity.WARNING,
                    message=reading.message,
                    card=status.card,
                    pool=status.pool,
                    carrier=status.carrier,
                    reason=reading.key,
                    detail=dict(reading.detail),
                )
            )
        return alerts


class AlertWatch:
    """:class:`AlertEngine` as a bus subscriber: every :class:`CardStatus` is judged.

    Subscribe it to the bus with the bus's ``publish`` as ``emit`` (the telemetry
    of a gateway without a call path; with one, the operator's status loop runs
    the same engine).
    """

    def __init__(
        self,
        emit: Callable[[Event], None],
        *,
        marks: AlertMarks = AlertMarks(),
        engine: AlertEngine | None = None,
    ) -> None:
        self.emit = emit
        self.engine = engine if engine is not None else AlertEngine(marks)

    def __call__(self, event: Event) -> None:
        """Observe one bus event (only card states matter)."""
        if isinstance(event, CardStatus):
            for alert in self.check(event):
                self.emit(alert)

    def check(self, status: CardStatus) -> list[Alert]:
        """Alerts newly raised by this state of the card."""
        return self.engine.assess(status)


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    """When usage warrants an alert.

    ``near``: share of the way to a rate/volume limit or to the carrier's likely
    threshold that raises ``quota-near`` / ``card-at-risk`` (0.8); ``clear_below``:
    the share under which it is re-armed (0.6) — see
    :class:`AlertEngine`. Agents: complaints / calls over
    ``complaint_window`` above ``complaint_rate_ceiling``, from
    ``complaint_min_sample`` calls on, pause the agent.
    """

    near: float = 0.8
    clear_below: float = 0.6
    complaint_rate_ceiling: float = 0.02
    complaint_min_sample: int = 50
    complaint_window: float = 7 * 86400.0

    @property
    def marks(self) -> AlertMarks:
        """The hysteresis marks of the alert engine."""
        return AlertMarks(upper=self.near, lower=self.clear_below)


#: The default thresholds (80 % / 60 %, 2 % complaints over 50 calls in 7 days).
DEFAULT_THRESHOLDS = AlertThresholds()


@dataclass(frozen=True, slots=True)
class Finding:
    """One risk found on a card or agent (``key`` identifies the crossing)."""

    kind: AlertKind | str
    subject: str
    key: str
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def assess_card(
    snapshot: CardSnapshot, now: float, thresholds: AlertThresholds = AlertThresholds()
) -> list[Finding]:
    """What may get this card stopped or suspended next, without memory (pure).

    The readings of :func:`alert_readings` — the alert engine's — at or above ``near``: rate and volume limits nearly used (``quota-near``,
    never concurrency) and the carrier's risk model (``card-at-risk``). Cards
    that cannot carry calls get no findings.
    """
    if str(snapshot.state) not in USABLE_STATES:
        return []
    return [
        Finding(r.kind, snapshot.card_id, r.key, r.message, r.detail)
        for r in alert_readings(snapshot.card_id, usage_vs_limits(snapshot, now))
        if r.share >= thresholds.near
    ]


def assess_agent(
    agent: str, calls: int, complaints: int, thresholds: AlertThresholds = AlertThresholds()
) -> Finding | None:
    """An ``agent-paused`` finding when the agent's complaint rate crossed the ceiling."""
    if calls < thresholds.complaint_min_sample or calls <= 0:
        return None
    rate = complaints / calls
    if rate <= thresholds.complaint_rate_ceiling:
        return None
    return Finding(
        "agent-paused",
        agent,
        "complaint_rate",
        f"agent {agent}: complaint rate {rate:.3f} > {thresholds.complaint_rate_ceiling}",
        {"calls": calls, "complaints": complaints, "rate": round(rate, 4)},
    )
