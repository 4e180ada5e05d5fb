"""The rehearsal report: totals, terminal text, JSON and a PNG chart of card usage.

Built from what a run recorded — the carrier's :class:`CarrierEvent` list, the
per-attempt :class:`CallRecord` list, the gateway's card marks, the INVITEs the
carrier saw (:class:`InviteSeen`, callees as pseudonyms) and the gateway's card
states at the end — so the offline replay and the SIP run share it. Totals:
attempts, calls placed, answered, ASR, blocks by reason, suspensions with
cause and time, arrears (cards the carrier blocks by balance — 402 on every
INVITE, which is not a suspension — with the 402 count), failovers, 503s
(carrier maintenance and gateway no-card-available), complaints, cards the gateway took out of service
that the carrier never refused (``cards_wrongly_out``), callees put through
from two cards within :data:`REDIAL_WINDOW` seconds (``callees_redialled``)
and callees INVITEd more than once, and a line per card. The chart plots, per
card, calls in the last hour against the carrier's threshold and the answer
rate against its floor, with each suspension marked and labelled.

Deterministic: the same events give byte-identical text and JSON. Callee
numbers only appear as the events recorded them (masked). This module must
never run a scenario, read a clock or touch pyplot's global state (it draws on
an Agg canvas it owns).
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from simulator.antifraud import AntiFraudThresholds
from simulator.models import CarrierEvent, EventKind, InviteSeen
from simulator.records import CallOutcome, CallRecord, CardMark, GatewayCardState

if TYPE_CHECKING:
    from simulator.offline import OfflineResult

__all__ = [
    "OFFLINE",
    "REDIAL_WINDOW",
    "CardSummary",
    "Report",
    "SuspensionEntry",
    "build_report",
    "offline_gateway_cards",
    "report_from_offline",
]

#: Chart sampling step for "calls in the last hour", business seconds.
SAMPLE_STEP = 300.0

#: Two INVITEs put through to one callee from different cards less than this many
#: business seconds apart count as one call attempt dialled twice (a redial).
REDIAL_WINDOW = 60.0

#: Carrier events that are card-level evidence: the carrier itself refused the card.
CARRIER_REFUSALS = frozenset(
    {
        EventKind.SUSPENDED,
        EventKind.REJECTED_SUSPENDED,
        EventKind.REJECTED_ARREARS,
        EventKind.REJECTED_MAINTENANCE,
        EventKind.REJECTED_UNKNOWN,
    }
)


@dataclass(frozen=True, slots=True)
class SuspensionEntry:
    """A card suspension as reported."""

    card: str
    time: float
    offset: float
    local_time: str
    reason: str
    cause: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "card": self.card,
            "time": round(self.time, 3),
            "offset_seconds": round(self.offset, 3),
            "local_time": self.local_time,
            "reason": self.reason,
            "cause": self.cause,
        }


@dataclass(frozen=True, slots=True)
class CardSummary:
    """One card's traffic over the run."""

    card: str
    placed: int
    answered: int
    talk_minutes: float
    complaints: int
    state: str
    balance: float | None
    gateway_state: str | None = None
    refused_402: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``state`` is the carrier's view, ``gateway_state`` the gateway's)."""
        return {
            "card": self.card,
            "placed": self.placed,
            "answered": self.answered,
            "asr": _ratio(self.answered, self.placed),
            "talk_minutes": round(self.talk_minutes, 2),
            "complaints": self.complaints,
            "state": self.state,
            "gateway_state": self.gateway_state,
            "balance": self.balance,
            "refused_402": self.refused_402,
        }


#: The mode of a deterministic run (no SIP).
OFFLINE = "offline"


@dataclass(slots=True)
class Report:
    """Aggregates of one run plus the raw series the chart needs."""

    name: str
    seed: int
    start: float
    end: float
    timezone: str
    thresholds: AntiFraudThresholds
    attempts: int
    placed: int
    answered: int
    blocks: dict[str, int]
    outcomes: dict[str, int]
    suspensions: list[SuspensionEntry]
    failovers: int
    carrier_503: int
    carrier_402: int
    gateway_503: int
    complaints: int
    card_marks: dict[str, int]
    cards: list[CardSummary]
    #: Cards the carrier blocks by balance at the end (balance <= 0: 402 on every INVITE).
    cards_in_arrears: list[str] = field(default_factory=list)
    callees_redialled: int = 0
    callees_invited_more_than_once: int = 0
    redial_window: float = REDIAL_WINDOW
    #: Cards the gateway holds out of service that the carrier never refused (None: unknown).
    cards_wrongly_out: list[str] | None = None
    #: The gateway's card states at the end (None: not known, e.g. an external gateway).
    gateway_cards: list[GatewayCardState] | None = None
    leads_total: int | None = None
    leads_left: int | None = None
    mode: str = OFFLINE
    speed: float | None = None
    gateway_clock: str | None = None
    business_clock: str | None = None
    _accepted_times: dict[str, list[float]] = field(default_factory=dict)
    _answer_rates: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def asr(self) -> float | None:
        """Answer-seizure ratio: answered / calls the carrier let through."""
        return _ratio(self.answered, self.placed)

    @property
    def seed_determined(self) -> bool:
        """True when the same scenario and seed always give this same report.

        Offline, and a SIP run on the discrete-event business clock whose
        gateway (if any) read that clock too.
        """
        if self.mode == OFFLINE:
            return True
        return self.business_clock == "event" and self.gateway_clock != "real"

    def run_description(self) -> str:
        """Which mode ran and what that means for repeating it."""
        if self.mode == OFFLINE:
            return "offline replay (no SIP): the same seed gives the same report"
        where = {
            "sip/in-process": "in-process gateway",
            "sip/external": "external gateway",
            "sip/direct": "no gateway (agents dial the carrier)",
        }.get(self.mode, self.mode)
        clock = {"business": ", gateway on the business clock", "real": ", gateway on real time"}
        if self.business_clock == "event":
            repeat = (
                "the same seed gives the same report"
                if self.seed_determined
                else "call timing is real at the gateway, so totals can differ between runs"
            )
            return (
                f"SIP, {where}{clock.get(self.gateway_clock or '', '')}, discrete-event business "
                f"clock (time jumps between events, SIP work takes none): {repeat}"
            )
        speed = "" if self.speed is None else f" at {self.speed:g}x"
        return (
            f"SIP, {where}{clock.get(self.gateway_clock or '', '')}{speed}: each lead's answer is "
            "seeded, call timing is real, so totals can differ between runs "
            "(--offline replays deterministically)"
        )

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        t = self.thresholds
        return {
            "scenario": self.name,
            "seed": self.seed,
            "run": {
                "mode": self.mode,
                "seed_determined": self.seed_determined,
                "clock_speed": self.speed,
                "gateway_clock": self.gateway_clock,
                "business_clock": self.business_clock,
            },
            "start": _iso(self.start, self.timezone),
            "end": _iso(self.end, self.timezone),
            "totals": {
                "attempts": self.attempts,
                "placed": self.placed,
                "answered": self.answered,
                "asr": self.asr,
                "blocked": sum(self.blocks.values()),
                "failovers": self.failovers,
                "carrier_503": self.carrier_503,
                "carrier_402": self.carrier_402,
                "cards_in_arrears": len(self.cards_in_arrears),
                "gateway_503": self.gateway_503,
                "complaints": self.complaints,
                "suspensions": len(self.suspensions),
                "cards_wrongly_out": (
                    None if self.cards_wrongly_out is None else len(self.cards_wrongly_out)
                ),
                "callees_redialled": self.callees_redialled,
                "callees_invited_more_than_once": self.callees_invited_more_than_once,
            },
            "redial_window_seconds": self.redial_window,
            "cards_wrongly_out": self.cards_wrongly_out,
            "cards_in_arrears": self.cards_in_arrears,
            "gateway_cards": (
                None if self.gateway_cards is None else [g.as_dict() for g in self.gateway_cards]
            ),
            "gateway_card_marks_by_status": dict(sorted(self.card_marks.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "blocks_by_reason": dict(sorted(self.blocks.items())),
            "suspensions": [s.as_dict() for s in self.suspensions],
            "cards": [c.as_dict() for c in self.cards],
            "carrier_thresholds": {
                "calls_per_hour": t.calls_per_hour,
                "calls_per_day": t.calls_per_day,
                "distinct_callees_per_day": t.distinct_callees_per_day,
                "answer_rate_floor": t.answer_rate_floor,
                "short_call_share_max": t.short_call_share_max,
                "night_calls_max": t.night_calls_max,
                "complaints_max": t.complaints_max,
                "max_calls_per_callee": t.max_calls_per_callee,
                "max_cards_per_callee": t.max_cards_per_callee,
                "callee_window": t.callee_window,
            },
            "leads": {"total": self.leads_total, "left": self.leads_left},
        }

    def to_json(self) -> str:
        """Stable JSON text (sorted keys, two-space indent)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    # -- terminal ---------------------------------------------------------------
    def to_text(self) -> str:
        """A terminal summary."""
        asr = "n/a" if self.asr is None else f"{self.asr:.1%}"
        lines = [
            f"Scenario {self.name!r} (seed {self.seed})",
            f"  {_iso(self.start, self.timezone)} → {_iso(self.end, self.timezone)}",
            f"  run: {self.run_description()}",
            "",
            f"  attempts      {self.attempts}",
            f"  placed        {self.placed}",
            f"  answered      {self.answered}   ASR {asr}",
            f"  blocked       {sum(self.blocks.values())}",
        ]
        lines += [f"    {reason:<20} {count}" for reason, count in sorted(self.blocks.items())]
        lines += [
            f"  failovers     {self.failovers}",
            f"  503 carrier   {self.carrier_503}   503 no-card-available {self.gateway_503}",
            f"  complaints    {self.complaints}",
            f"  suspensions   {len(self.suspensions)}",
        ]
        lines += [
            f"    {s.local_time}  {s.card:<6} {s.reason}: {s.cause}" for s in self.suspensions
        ]
        owing = f" ({', '.join(self.cards_in_arrears)})" if self.cards_in_arrears else ""
        lines.append(
            f"  arrears       {len(self.cards_in_arrears)}   cards blocked by balance{owing},"
            f" 402 refusals {self.carrier_402}"
        )
        if self.cards_wrongly_out is None:
            wrongly = "n/a   the gateway's card states are not known"
        else:
            named = f" ({', '.join(self.cards_wrongly_out)})" if self.cards_wrongly_out else ""
            wrongly = (
                f"{len(self.cards_wrongly_out)}   cards out of service at the gateway that the"
                f" carrier never refused{named}"
            )
        lines += [
            f"  wrongly out   {wrongly}",
            f"  redialled     {self.callees_redialled}   callees put through from 2+ cards"
            f" within {self.redial_window:g} s",
            f"  re-INVITEd    {self.callees_invited_more_than_once}   callees INVITEd more"
            " than once",
        ]
        lines += ["", "  card    placed  answered  ASR     talk min  complaints  state"]
        for c in self.cards:
            card_asr = _ratio(c.answered, c.placed)
            shown = "n/a" if card_asr is None else f"{card_asr:.1%}"
            gateway = "" if c.gateway_state is None else f"  gateway: {c.gateway_state}"
            lines.append(
                f"  {c.card:<7} {c.placed:>6}  {c.answered:>8}  {shown:<7} {c.talk_minutes:>8.1f}"
                f"  {c.complaints:>10}  {c.state}{gateway}"
            )
        if self.leads_total is not None:
            lines += [
                "",
                f"  leads         {self.leads_total} total, {self.leads_left} not dialled",
            ]
        return "\n".join(lines) + "\n"

    # -- chart ------------------------------------------------------------------
    def write_png(self, path: str | Path, *, dpi: int = 100) -> Path:
        """Draw each card's usage against the carrier's thresholds into a PNG."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        cards = [c.card for c in self.cards]
        rows = max(1, len(cards))
        fig = Figure(figsize=(12, 2.8 * rows + 0.8), dpi=dpi)
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, 2, squeeze=False, sharex=True)
        hours_total = (self.end - self.start) / 3600
        t = self.thresholds
        for row, card in enumerate(cards):
            ax_calls, ax_rate = axes[row][0], axes[row][1]
            xs, ys = self._calls_per_hour_series(card)
            ax_calls.plot(xs, ys, color="tab:blue", label="calls in last hour")
            if t.calls_per_hour is not None:
                ax_calls.axhline(
                    t.calls_per_hour, color="tab:red", linestyle="--", label="carrier limit"
                )
            ax_calls.set_ylabel(f"{card}\ncalls / hour")
            ax_calls.set_ylim(bottom=0)

            points = self._answer_rates.get(card, [])
            if points:
                ax_rate.step(
                    [(x - self.start) / 3600 for x, _ in points],
                    [y for _, y in points],
                    where="post",
                    color="tab:green",
                    label=f"answer rate (last {t.answer_rate_window})",
                )
            if t.answer_rate_floor is not None:
                ax_rate.axhline(
                    t.answer_rate_floor, color="tab:red", linestyle="--", label="carrier floor"
                )
            ax_rate.set_ylim(0, 1)
            ax_rate.set_ylabel("answer rate")

            for s in self.suspensions:
                if s.card != card:
                    continue
                x = s.offset / 3600
                for ax in (ax_calls, ax_rate):
                    ax.axvline(x, color="black", linewidth=1.2, label="suspended")
                ax_calls.annotate(
                    f"suspended: {s.cause}",
                    xy=(x, 0.03),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    rotation=90,
                    va="bottom",
                    ha="left",
                    fontsize=7,
                )
            for ax in (ax_calls, ax_rate):
                ax.set_xlim(0, hours_total)
                ax.grid(True, alpha=0.3)
                handles, labels = ax.get_legend_handles_labels()
                unique = dict(zip(labels, handles, strict=True))
                if unique:
                    ax.legend(unique.values(), unique.keys(), loc="best", fontsize=7)
        for ax in axes[-1]:
            ax.set_xlabel("business hours since start")
        axes[0][0].set_title("calls per hour vs carrier limit")
        axes[0][1].set_title("answer rate vs carrier floor")
        fig.suptitle(
            f"dialgate rehearsal {self.name!r} (seed {self.seed}): "
            f"{len(self.suspensions)} suspension(s), ASR "
            + ("n/a" if self.asr is None else f"{self.asr:.1%}")
        )
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png", metadata={"Software": None})
        return out

    def _calls_per_hour_series(self, card: str) -> tuple[list[float], list[int]]:
        times = sorted(self._accepted_times.get(card, []))
        # A regular grid plus every call start: the curve shows each peak exactly
        # (the call that crossed the carrier's limit is on it, not between samples).
        samples: set[float] = {t for t in times if self.start <= t <= self.end}
        t = self.start
        while t <= self.end + 1e-9:
            samples.add(t)
            t += SAMPLE_STEP
        xs: list[float] = []
        ys: list[int] = []
        for t in sorted(samples):
            count = bisect.bisect_right(times, t) - bisect.bisect_right(times, t - 3600)
            xs.append((t - self.start) / 3600)
            ys.append(count)
        return xs, ys


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else round(a / b, 4)


def _iso(epoch: float, tz: str) -> str:
    return datetime.fromtimestamp(round(epoch, 3), tz=ZoneInfo(tz)).isoformat(timespec="seconds")


def build_report(
    *,
    name: str,
    seed: int,
    start: float,
    end: float,
    timezone: str,
    thresholds: AntiFraudThresholds,
    cards: Sequence[str],
    events: Iterable[CarrierEvent],
    calls: Iterable[CallRecord],
    marks: Iterable[CardMark] = (),
    leads_total: int | None = None,
    leads_left: int | None = None,
    mode: str = OFFLINE,
    speed: float | None = None,
    gateway_clock: str | None = None,
    business_clock: str | None = None,
    invites_seen: Iterable[InviteSeen] = (),
    gateway_cards: Iterable[GatewayCardState] | None = None,
    redial_window: float = REDIAL_WINDOW,
) -> Report:
    """Aggregate one run's records into a :class:`Report`.

    ``mode`` says which run produced them: ``offline`` (deterministic for the
    seed) or ``sip/in-process``, ``sip/external``, ``sip/direct``;
    ``gateway_clock`` is ``business`` when the gateway shared the scaled clock;
    ``business_clock`` is ``event`` (discrete-event, SIP runs in one process),
    ``scaled`` (business time flows with real time) or None (offline).

    ``invites_seen`` (the carrier model's :attr:`~CarrierModel.callee_invites`)
    gives the redial counts; ``gateway_cards`` the gateway's card states at the
    end (None when unknown): a card out of service there whose carrier never
    refused it (no suspension, no 403 suspended / 402 / 503 maintenance /
    unknown-account answer during the run) counts as wrongly out.
    """
    events = sorted(events, key=lambda e: e.time)
    calls = list(calls)
    marked = Counter(str(m.status) for m in marks)
    accepted: dict[str, list[float]] = {c: [] for c in cards}
    rates: dict[str, list[tuple[float, float]]] = {c: [] for c in cards}
    suspensions: list[SuspensionEntry] = []
    state: dict[str, str] = dict.fromkeys(cards, "active")
    balance: dict[str, float | None] = dict.fromkeys(cards)
    complaints: Counter[str] = Counter()
    talk: dict[str, float] = dict.fromkeys(cards, 0.0)
    answered_by: Counter[str] = Counter()
    refused_402: Counter[str] = Counter()
    owing: set[str] = set()  # refused 402 since the last top-up
    kinds: Counter[EventKind] = Counter()
    for e in events:
        kinds[e.kind] += 1
        if e.kind is EventKind.ACCEPTED:
            accepted.setdefault(e.card, []).append(e.time)
        elif e.kind is EventKind.CALL_ENDED:
            rate = e.counters.get("answer_rate")
            if rate is not None:
                rates.setdefault(e.card, []).append((e.time, float(rate)))
        elif e.kind is EventKind.SUSPENDED:
            state[e.card] = f"suspended ({e.reason})"
            suspensions.append(
                SuspensionEntry(
                    e.card,
                    e.time,
                    e.time - start,
                    _iso(e.time, timezone),
                    e.reason or "unknown",
                    e.cause or "",
                )
            )
        elif e.kind is EventKind.RESTORED:
            state[e.card] = "active"
        elif e.kind is EventKind.COMPLAINT:
            complaints[e.card] += 1
        elif e.kind is EventKind.REJECTED_ARREARS:
            refused_402[e.card] += 1
            owing.add(e.card)
        elif e.kind is EventKind.TOPPED_UP:
            owing.discard(e.card)
        if "balance" in e.counters and e.counters["balance"] is not None:
            balance[e.card] = float(e.counters["balance"])
    for call in calls:
        if call.card is not None and call.outcome is CallOutcome.ANSWERED:
            answered_by[call.card] += 1
            talk[call.card] = talk.get(call.card, 0.0) + call.talk_seconds
    placed_by = {c: len(accepted.get(c, [])) for c in cards}
    # Arrears is no suspension: the carrier answers 402 to each INVITE while the
    # balance is <= 0 and emits no SUSPENDED event, so the card's state is told here.
    # A card is in arrears with a balance <= 0 at the end or, when no balance is
    # known, a 402 since its last top-up.
    in_arrears = [
        c
        for c in cards
        if ((b := balance.get(c)) is not None and b <= 0) or (b is None and c in owing)
    ]
    for c in in_arrears:
        if state[c] == "active":
            left = balance.get(c)
            # (+ 0.0: a balance spent to the cent prints 0.00, not -0.00)
            state[c] = (
                "arrears" if left is None else f"arrears (balance {round(left, 2) + 0.0:.2f})"
            )
    refused_by_carrier = {e.card for e in events if e.kind in CARRIER_REFUSALS}
    gateway = None if gateway_cards is None else {g.card: g for g in gateway_cards}
    wrongly_out = (
        None
        if gateway is None
        else [
            card
            for card, g in gateway.items()
            if not g.in_service and card not in refused_by_carrier
        ]
    )
    redialled, more_than_once = _callee_counts(invites_seen, redial_window)
    blocks = Counter(c.reason or "unknown" for c in calls if c.outcome is CallOutcome.BLOCKED)
    outcomes = Counter(str(c.outcome) for c in calls)
    return Report(
        name=name,
        seed=seed,
        start=start,
        end=end,
        timezone=timezone,
        thresholds=thresholds,
        attempts=len(calls),
        placed=sum(placed_by.values()),
        answered=sum(answered_by.values()),
        blocks=dict(blocks),
        outcomes=dict(outcomes),
        suspensions=suspensions,
        failovers=sum(c.failovers for c in calls),
        carrier_503=kinds[EventKind.REJECTED_MAINTENANCE],
        carrier_402=kinds[EventKind.REJECTED_ARREARS],
        gateway_503=blocks.get("no-card-available", 0),
        complaints=sum(complaints.values()),
        card_marks=dict(marked),
        cards=[
            CardSummary(
                c,
                placed_by[c],
                answered_by[c],
                talk[c] / 60,
                complaints[c],
                state[c],
                balance[c],
                None if gateway is None or c not in gateway else str(gateway[c]),
                refused_402[c],
            )
            for c in cards
        ],
        cards_in_arrears=in_arrears,
        callees_redialled=redialled,
        callees_invited_more_than_once=more_than_once,
        redial_window=redial_window,
        cards_wrongly_out=wrongly_out,
        gateway_cards=None if gateway is None else list(gateway.values()),
        leads_total=leads_total,
        leads_left=leads_left,
        mode=mode,
        speed=speed,
        gateway_clock=gateway_clock,
        business_clock=business_clock,
        _accepted_times=accepted,
        _answer_rates=rates,
    )


def _callee_counts(invites: Iterable[InviteSeen], window: float) -> tuple[int, int]:
    """(callees put through from two cards within ``window`` s, callees INVITEd more than once)."""
    by_callee: dict[int, list[InviteSeen]] = {}
    for invite in invites:
        by_callee.setdefault(invite.callee, []).append(invite)
    more_than_once = sum(1 for seen in by_callee.values() if len(seen) > 1)
    redialled = 0
    for seen in by_callee.values():
        through = sorted((i.time, i.card) for i in seen if i.put_through)
        if any(
            b_time - a_time < window and a_card != b_card
            for (a_time, a_card), (b_time, b_card) in combinations(through, 2)
        ):
            redialled += 1
    return redialled, more_than_once


def offline_gateway_cards(
    cards: Sequence[str], marks: Iterable[CardMark], end: float
) -> list[GatewayCardState]:
    """The offline stand-in gateway's card states at ``end``, from its marks.

    A card marked without an end (``until`` None) or marked until after the run
    is out of service (``suspended``, with the reason of its last such mark:
    402 → ``arrears``, 503 → ``maintenance``, a 403 → the suspension reason the
    carrier named); every other card is ``active``.
    """
    out: dict[str, str | None] = {}
    for m in marks:
        if m.until is None or m.until > end:
            out[m.card] = _mark_reason(m)
    return [
        GatewayCardState(c, "suspended", out[c]) if c in out else GatewayCardState(c, "active")
        for c in cards
    ]


def _mark_reason(mark: CardMark) -> str | None:
    """The card state reason the gateway's carrier rules give a refusal."""
    if mark.status == 402:
        return "arrears"
    if mark.status == 503:
        return "maintenance"
    named = re.search(r"(?i)suspended: ([a-z-]+)", mark.reason_phrase)
    return named.group(1).lower() if named else None


def report_from_offline(result: OfflineResult) -> Report:
    """The report of an offline run (the stand-in gateway's card states from its marks)."""
    s = result.scenario
    return build_report(
        name=s.name,
        seed=s.seed,
        start=s.start_epoch,
        end=s.end_epoch,
        timezone=s.carrier.timezone,
        thresholds=result.carrier.config.thresholds,
        cards=[c.id for c in s.cards],
        events=result.carrier.events,
        calls=result.calls,
        marks=result.marks,
        leads_total=result.leads_total,
        leads_left=result.leads_left,
        invites_seen=result.carrier.callee_invites,
        gateway_cards=offline_gateway_cards([c.id for c in s.cards], result.marks, s.end_epoch),
    )
