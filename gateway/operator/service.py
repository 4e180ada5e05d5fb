"""The operator's side of dialgate: one implementation shared by the CLI and the admin API.

What this module is for:

* :class:`Operator` — card records (holder, employee ID, registration number,
  carrier account, purchase channel, notes), the card lifecycle of DESIGN.md
  "Card states" (suspend, appeal with reference/channel/updates, probation,
  restore, retire) through :class:`gateway.cards.CardManager`'s transition
  table, DNC / consent / complaint operations, CDR queries and exports. Every
  write is audited with its actor and time (``store.operator``, the operator's
  records in the store, ``gateway.store.operator_schema``) and card changes
  are published on the :class:`gateway.telemetry.events.EventBus` when one is
  given;
* :meth:`Operator.check_alerts` and :func:`run_alert_loop` — every card's
  state through the one alert engine (:mod:`gateway.telemetry.alerts`), and
  agents whose complaint rate crossed the ceiling paused (with an event);
* small parsing helpers shared by the CLI and the API (times, numbers).

Errors an operator can cause raise :class:`OperatorError` subclasses carrying
the HTTP status the API answers with (404 unknown card, 409 illegal transition,
400 bad input).

What it must never do: read a clock (``now`` is always passed in; only
:func:`run_alert_loop` is given a clock), print or log a callee number or a
card holder's registration number unmasked (unless ``[policy] mask_numbers`` is
off), or change a card's state except through ``CardManager``.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import io
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from gateway.callpath.cdr import CallRecord, Outcome, write_csv
from gateway.cards import (
    Card,
    CardDef,
    CardManager,
    CardState,
    CardStateChanged,
    IllegalTransition,
    SuspendReason,
    card_defs_from_settings,
    card_snapshot,
    effective_profile,
    probation_profiles_from_settings,
    quota_profiles_from_settings,
    rules_from_settings,
)
from gateway.config import Settings
from gateway.store import (
    CardRepository,
    Complaint,
    SQLiteStore,
    StoredCard,
    store_from_settings,
)
from gateway.store.operator_schema import (
    RECORD_FIELDS,
    AppealRecord,
    CardRecord,
    ComplaintAttribution,
)
from gateway.telemetry.alerts import (
    DEFAULT_THRESHOLDS,
    AlertEngine,
    AlertThresholds,
    Finding,
    assess_agent,
)
from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CardStatus,
    EventBus,
    LimitUsage,
    Severity,
    card_status,
    from_card_event,
    iso_time,
    usage_vs_limits,
)
from policies.consent import parse_consent_csv
from policies.context import normalize
from policies.dnc import DncSource, LoadReport, parse_dnc_lines
from policies.errors import AddressIncompleteError
from policies.privacy import mask_number, mask_numbers_deep
from policies.quotas import CardSnapshot, CardUsageView, Exhausted, QuotaProfile, evaluate_card
from policies.selection import explain

__all__ = [
    "AppealUpdateKind",
    "BadRequest",
    "IllegalAction",
    "ImportResult",
    "NotFound",
    "Operator",
    "OperatorError",
    "OperatorEvent",
    "effective_profile_of",
    "mask_evidence",
    "operator_from_settings",
    "parse_duration",
    "parse_time",
    "run_alert_loop",
]

log = structlog.get_logger("gateway.operator.service")


# --- errors ---------------------------------------------------------------------------


class OperatorError(Exception):
    """Something the operator asked for cannot be done; ``status`` is the HTTP answer."""

    status = 400


class BadRequest(OperatorError):
    """Malformed input (bad number, bad time, unknown field or profile)."""

    status = 400


class NotFound(OperatorError):
    """Unknown card, appeal or record."""

    status = 404


class IllegalAction(OperatorError):
    """The card's state does not allow this action (CardManager's transition table)."""

    status = 409


def availability(snapshot: CardSnapshot, now: float) -> dict[str, Any]:
    """Whether the card could take a call now and, when not, why and until when.

    The same words as the ``Warning`` of a 503 no-card-available
    (``policies.selection.explain``): ``night_window until 08:00``.
    """
    result = evaluate_card(snapshot, now)
    if not isinstance(result, Exhausted):
        return {"now": True, "why": None, "until": None}
    why = explain(snapshot.card_id, result, snapshot.timezone, now)
    return {
        "now": False,
        "why": why.removeprefix(f"{snapshot.card_id} "),
        "until": iso_time(result.frees_at),
    }


# --- parsing helpers ------------------------------------------------------------------


def parse_time(text: str | float | int) -> float:
    """Epoch seconds from a number, an ISO date (UTC midnight) or an ISO datetime.

    A datetime without an offset is taken as UTC. Raises :class:`BadRequest`.
    """
    if isinstance(text, bool):
        raise BadRequest("a time is a date, an ISO 8601 time or epoch seconds")
    if isinstance(text, int | float):
        return _in_range(float(text))
    value = text.strip()
    try:
        return _in_range(float(value))
    except ValueError:
        pass
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return _in_range(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return _in_range(moment.timestamp())
    except (ValueError, OverflowError):
        raise BadRequest(
            f"not a date or time: {value[:40]!r} (use 2026-11-01 or ISO 8601)"
        ) from None


DNC_IMPORT_BATCH = 50_000  # numbers per transaction in dnc_import

_MAX_EPOCH = 4_102_444_800.0  # 2100-01-01: nothing an operator records lies beyond


def _in_range(epoch: float) -> float:
    if not 0.0 <= epoch <= _MAX_EPOCH:  # also rejects NaN
        raise BadRequest("time out of range (1970..2100)")
    return epoch


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``30d``, ``12h``, ``45m``, ``90s`` or a plain number of days."""
    if isinstance(text, bool):
        raise BadRequest("a duration is a number of days or text such as 14d")
    if isinstance(text, int | float):
        text = str(text)
    value = text.strip().lower()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "w": 7 * 86400.0}
    try:
        if value and value[-1] in units:
            seconds = float(value[:-1]) * units[value[-1]]
        else:
            seconds = float(value) * 86400.0
    except ValueError:
        raise BadRequest(f"not a duration: {value[:20]!r} (use 14d, 12h, 30m)") from None
    if not 0 < seconds <= 10 * 365 * 86400.0:  # also rejects NaN and infinity
        raise BadRequest("a duration must be positive and at most ten years")
    return seconds


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorEvent:
    """An operator-side change that has no bus event type of its own.

    ``kind``: ``card-record``, ``appeal-opened``, ``appeal-update``,
    ``agent-paused``, ``agent-resumed``, ``complaint``, ``dnc``, ``consent``.
    ``detail`` never holds an unmasked number.
    """

    kind: str
    at: float
    actor: str
    card: str | None = None
    agent: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class AppealUpdateKind(StrEnum):
    """What happened on an appeal after it was filed."""

    MORE_INFO = "more-info-requested"
    MATERIAL_SENT = "material-sent"
    NOTE = "note"
    DECISION = "decision"


# --- the service ------------------------------------------------------------------------


@dataclass(slots=True)
class ImportResult:
    """Outcome of a DNC or consent import: rows kept and bad lines with their numbers."""

    added: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "bad_lines": len(self.errors),
            "errors": [{"line": line, "error": error} for line, error in self.errors],
        }


_LIFECYCLE_CAUSES = {
    "operator:suspend": "suspend",
    "operator:appeal": "appeal",
    "operator:probation": "probation",
    "operator:restore": "restore",
    "operator:retire": "retire",
}


class Operator:
    """Card records, lifecycle, DNC/consent/complaints and CDR queries over one store.

    ``manager`` is the card manager whose states the action changes: the running
    gateway's own (admin API inside ``dialgate run``) or one loaded from the
    store (CLI, see :func:`operator_from_settings`). With a ``bus``, each card
    transition is published through :func:`gateway.telemetry.events.from_card_event` and
    taken off ``manager.events`` so the gateway's drain loop does not publish it
    twice. ``on_event`` receives :class:`OperatorEvent` values.
    """

    def __init__(
        self,
        settings: Settings,
        store: SQLiteStore,
        manager: CardManager,
        *,
        bus: EventBus | None = None,
        on_event: Callable[[OperatorEvent], None] | None = None,
        thresholds: AlertThresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.manager = manager
        self.bus = bus
        self.on_event = on_event
        self.thresholds = thresholds
        self.db = store.operator  # the operator's records, part of the store
        # Where usage is read: the shared ledger when the cards' states are shared
        # (``[store] redis``: every instance's calls), else this store.
        self.usage: CardUsageView = shared_usage_view(manager) or store
        self.profiles: dict[str, QuotaProfile] = quota_profiles_from_settings(settings)
        self.probation_of = probation_profiles_from_settings(settings)
        self.timezones = {c.name: c.timezone for c in settings.carriers}
        self.mask = settings.policy.mask_numbers
        self.region = settings.policy.default_region
        # The latest operator events (bounded: a long-running API must not grow it forever).
        self.events: collections.deque[OperatorEvent] = collections.deque(maxlen=1000)
        # The one alert engine (gateway.telemetry.alerts), with its hysteresis memory.
        self.alert_engine = AlertEngine(thresholds.marks)
        # Agents whose pause this process has announced (agent → until): the alert loop
        # announces pauses the CLI wrote, and their end, once each.
        self._paused_seen: dict[str, float | None] = {}
        # Clients this operator owns (the CLI's Redis client), closed by close().
        self.closers: list[Callable[[], None]] = []

    def close(self) -> None:
        """Close what this operator opened itself (not the store)."""
        for close in self.closers:
            close()
        self.closers.clear()

    # --- helpers --------------------------------------------------------------------

    def masked(self, number: str | None) -> str | None:
        """``number`` as shown in listings: masked unless configured otherwise."""
        if not number:
            return number
        return mask_number(number) if self.mask else number

    def number(self, text: str) -> str:
        """E.164 of a typed number (default region from config); :class:`BadRequest` if not."""
        try:
            return normalize(str(text), self.region).e164
        except AddressIncompleteError as exc:
            raise BadRequest(str(exc)) from None

    def card(self, card_id: str) -> Card:
        """The card, or :class:`NotFound`."""
        card = self.manager.find(card_id)
        if card is None:
            raise NotFound(f"unknown card {card_id!r}")
        return card

    def _emit(self, event: OperatorEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("operator event subscriber failed", kind=event.kind)

    def snapshot(self, card: Card, now: float) -> CardSnapshot:
        """The card's quota snapshot (usage read from the store)."""
        return card_snapshot(
            card,
            self.usage,
            now,
            profiles=self.profiles,
            timezones=self.timezones,
            probation_of=self.probation_of,
        )

    def status(self, card_id: str, now: float) -> CardStatus | None:
        """The card's :class:`CardStatus` with usage (the lookup for bus events)."""
        card = self.manager.find(card_id)
        if card is None:
            return None
        return card_status(card, now, self.snapshot(card, now))

    def _publish_transition(self, event: CardStateChanged) -> None:
        if self.bus is None:
            return
        # Taken off the manager's queue so the gateway's drain loop does not repeat it.
        if event in self.manager.events:
            self.manager.events.remove(event)
        self.bus.publish_many(
            from_card_event(event, lookup=lambda card_id: self.status(card_id, event.at))
        )

    def _publish_status(self, card_id: str, now: float, cause: str) -> None:
        if self.bus is None:
            return
        card = self.manager.find(card_id)
        if card is not None:
            self.bus.publish(card_status(card, now, self.snapshot(card, now), cause=cause))

    # --- card views -----------------------------------------------------------------

    def record_view(self, record: CardRecord) -> dict[str, Any]:
        """A card record as shown (registration number masked unless configured)."""
        return {
            "holder": record.holder,
            "employee_id": record.employee_id,
            "registered_number": self.masked(record.registered_number) or "",
            "carrier_account": record.carrier_account,
            "purchase_channel": record.purchase_channel,
            "notes": record.notes,
            "updated_at": iso_time(record.updated_at),
            "updated_by": record.updated_by,
        }

    def card_view(self, card: Card, now: float) -> dict[str, Any]:
        """A card's state, limits in force and usage against each of them."""
        snapshot = self.snapshot(card, now)
        profile = snapshot.effective_profile
        return {
            "id": card.id,
            "state": card.state.value,
            "reason": None if card.reason is None else card.reason.value,
            "since": iso_time(card.since),
            "pool": card.pool,
            "carrier": card.carrier,
            "number": card.number,
            "priority": card.priority,
            "quota_profile": card.quota_profile,
            "profile_in_force": profile.name,
            "probation_until": iso_time(card.probation_until),
            "resume_at": iso_time(card.resume_at),
            "in_use": snapshot.usage.in_use,
            "usage": {u.limit_name: u.as_dict() for u in usage_vs_limits(snapshot, now)},
            "available": availability(snapshot, now),
        }

    def list_cards(self, now: float) -> list[dict[str, Any]]:
        """Every card with state, usage against limits and holder."""
        out = []
        for card in self.manager.cards():
            view = self.card_view(card, now)
            view["holder"] = self.db.card_record(card.id).holder
            out.append(view)
        return out

    def show_card(self, card_id: str, now: float) -> dict[str, Any]:
        """One card: state and usage, its record, its appeals and its timeline."""
        card = self.card(card_id)
        view = self.card_view(card, now)
        view["record"] = self.record_view(self.db.card_record(card_id))
        view["appeals"] = [self.appeal_view(a) for a in self.db.appeals(card_id)]
        view["timeline"] = self.timeline(card_id)
        return view

    def appeal_view(self, appeal: AppealRecord) -> dict[str, Any]:
        """An appeal as shown."""
        return {
            "id": appeal.id,
            "reference": appeal.reference,
            "channel": appeal.channel,
            "submitted_at": iso_time(appeal.submitted_at),
            "notes": appeal.notes,
            "status": appeal.status,
            "opened_at": iso_time(appeal.opened_at),
            "opened_by": appeal.opened_by,
            "closed_at": iso_time(appeal.closed_at),
            "updates": [
                {
                    "at": iso_time(u.at),
                    "kind": u.kind,
                    "decision": u.decision,
                    "notes": u.notes,
                    "actor": u.actor,
                }
                for u in appeal.updates
            ],
        }

    def timeline(self, card_id: str) -> list[dict[str, Any]]:
        """Everything that happened to a card, oldest first: transitions and operator writes.

        State changes come from the store's ``card_transitions`` (with cause,
        evidence and actor); record edits, appeal updates and complaints from the
        audit log. Lifecycle audit entries are left out (the transition says it).
        """
        items: list[tuple[float, int, dict[str, Any]]] = []
        for t in self.store.transitions(card_id):
            items.append(
                (
                    t.at,
                    0,
                    {
                        "at": iso_time(t.at),
                        "kind": "transition",
                        "from": t.from_state,
                        "to": t.to_state,
                        "reason": t.reason,
                        "cause": t.cause,
                        "actor": t.actor,
                        "evidence": mask_evidence(t.evidence, self.mask),
                    },
                )
            )
        for entry in self.db.audit_entries(card=card_id):
            if entry.action.startswith("card.") and entry.action[5:] in _LIFECYCLE_CAUSES.values():
                continue
            items.append(
                (
                    entry.at,
                    1,
                    {
                        "at": iso_time(entry.at),
                        "kind": entry.action,
                        "actor": entry.actor,
                        "target": entry.target,
                        "detail": mask_evidence(entry.detail, self.mask),
                    },
                )
            )
        items.sort(key=lambda item: (item[0], item[1]))
        return [item[2] for item in items]

    # --- card records ---------------------------------------------------------------

    def update_record(
        self, card_id: str, changes: Mapping[str, str | None], *, actor: str, now: float
    ) -> dict[str, Any]:
        """Edit a card's record (only the fields given); the registration number is normalized."""
        self.card(card_id)
        clean: dict[str, str] = {}
        for name, value in changes.items():
            if value is None:
                continue
            if name not in RECORD_FIELDS:
                raise BadRequest(
                    f"unknown record field {name!r}; one of {', '.join(RECORD_FIELDS)}"
                )
            text = str(value).strip()
            if name == "registered_number" and text:
                text = self.number(text)
            if len(text) > 2000:
                raise BadRequest(f"{name} is longer than 2000 characters")
            clean[name] = text
        if not clean:
            raise BadRequest("nothing to change")
        record = self.db.update_card_record(card_id, clean, at=now, actor=actor)
        self._emit(
            OperatorEvent("card-record", now, actor, card=card_id, detail={"fields": sorted(clean)})
        )
        self._publish_status(card_id, now, "operator:record")
        return self.record_view(record)

    # --- lifecycle ------------------------------------------------------------------

    def _act(self, action: Callable[[], CardStateChanged]) -> CardStateChanged:
        try:
            event = action()
        except IllegalTransition as exc:
            raise IllegalAction(
                f"card {exc.card} is {exc.from_state}: cannot go to {exc.to_state}"
            ) from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self._publish_transition(event)
        return event

    def _audit_transition(
        self, event: CardStateChanged, action: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        self.db.record_audit(
            at=event.at,
            actor=event.actor,
            action=f"card.{action}",
            target=event.card,
            card=event.card,
            detail={"from": event.from_state.value, "to": event.to_state.value, **(detail or {})},
        )

    def suspend(
        self,
        card_id: str,
        *,
        actor: str,
        now: float,
        reason: str = "manual",
        note: str = "",
    ) -> dict[str, Any]:
        """Take a card out of service (manual, or reporting a carrier's suspension)."""
        self.card(card_id)
        try:
            why = SuspendReason(reason)
        except ValueError:
            raise BadRequest(
                f"unknown reason {reason!r}; one of {', '.join(r.value for r in SuspendReason)}"
            ) from None
        event = self._act(
            lambda: self.manager.suspend(card_id, now=now, reason=why, actor=actor, note=note)
        )
        self._audit_transition(event, "suspend", {"reason": why.value})
        return self.show_card(card_id, now)

    def appeal(
        self,
        card_id: str,
        *,
        actor: str,
        now: float,
        reference: str = "",
        channel: str = "",
        submitted_at: float | None = None,
        notes: str = "",
    ) -> dict[str, Any]:
        """File an appeal for a suspended card: the card goes to ``appealing``."""
        card = self.card(card_id)
        submitted = now if submitted_at is None else submitted_at
        evidence = {
            "reference": reference,
            "channel": channel,
            "submitted_at": iso_time(submitted),
        }
        if notes:
            evidence["note"] = notes
        event = self._act(
            lambda: self.manager.mark(
                card_id,
                CardState.APPEALING,
                now=now,
                reason=card.reason,
                cause="operator:appeal",
                evidence=evidence,
                actor=actor,
            )
        )
        appeal_id = self.db.open_appeal(
            card_id,
            reference=reference,
            channel=channel,
            submitted_at=submitted,
            notes=notes,
            at=now,
            actor=actor,
        )
        self._audit_transition(event, "appeal", {"appeal": appeal_id})
        self._emit(
            OperatorEvent(
                "appeal-opened",
                now,
                actor,
                card=card_id,
                detail={"appeal": appeal_id, "reference": reference, "channel": channel},
            )
        )
        return self.show_card(card_id, now)

    def appeal_update(
        self,
        card_id: str,
        *,
        actor: str,
        now: float,
        kind: str,
        notes: str = "",
        decision: str | None = None,
    ) -> dict[str, Any]:
        """Record a step of the card's open appeal.

        ``kind`` is one of :class:`AppealUpdateKind`. A ``decision`` of
        ``rejected`` closes the appeal and returns the card to ``suspended``;
        ``granted`` closes it (restore the card with ``probation`` or ``restore``).
        """
        self.card(card_id)
        try:
            what = AppealUpdateKind(kind)
        except ValueError:
            raise BadRequest(
                f"unknown update {kind!r}; one of {', '.join(k.value for k in AppealUpdateKind)}"
            ) from None
        appeal = self.db.open_appeal_of(card_id)
        if appeal is None:
            raise IllegalAction(f"card {card_id} has no open appeal")
        if what is AppealUpdateKind.DECISION and decision not in ("granted", "rejected"):
            raise BadRequest("a decision is 'granted' or 'rejected'")
        if what is not AppealUpdateKind.DECISION and decision is not None:
            raise BadRequest("only a 'decision' update carries a decision")
        if decision == "rejected":
            card = self.card(card_id)
            event = self._act(
                lambda: self.manager.mark(
                    card_id,
                    CardState.SUSPENDED,
                    now=now,
                    reason=card.reason or SuspendReason.UNKNOWN,
                    cause="operator:appeal-rejected",
                    evidence={"appeal": appeal.id, "reference": appeal.reference, "note": notes},
                    actor=actor,
                )
            )
            self._audit_transition(event, "appeal-rejected", {"appeal": appeal.id})
        self.db.add_appeal_update(
            appeal.id,
            kind=what.value,
            decision=decision,
            notes=notes,
            at=now,
            actor=actor,
            close=decision is not None,
            status=decision,
        )
        self._emit(
            OperatorEvent(
                "appeal-update",
                now,
                actor,
                card=card_id,
                detail={"appeal": appeal.id, "kind": what.value, "decision": decision},
            )
        )
        self._publish_status(card_id, now, f"appeal:{what.value}")
        return self.show_card(card_id, now)

    def _close_granted_appeal(self, card_id: str, *, actor: str, now: float, how: str) -> None:
        appeal = self.db.open_appeal_of(card_id)
        if appeal is not None:
            self.db.add_appeal_update(
                appeal.id,
                kind=AppealUpdateKind.DECISION.value,
                decision="granted",
                notes=f"card restored ({how})",
                at=now,
                actor=actor,
                close=True,
                status="granted",
            )

    def probation(
        self,
        card_id: str,
        *,
        actor: str,
        now: float,
        until: float | None = None,
        duration: float | None = None,
        profile: str | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """Restore a card on probation until ``until`` (or for ``duration`` s) on ``profile``.

        ``profile`` defaults to the card's profile's configured ``probation``
        profile; with none configured the card keeps its normal limits.
        """
        card = self.card(card_id)
        if (until is None) == (duration is None):
            raise BadRequest("give either an end time (until) or a duration")
        end = until if until is not None else now + (duration or 0.0)
        if profile is not None and profile not in self.profiles:
            raise BadRequest(
                f"unknown quota profile {profile!r}; one of {', '.join(sorted(self.profiles))}"
            )
        chosen = profile or self.probation_of.get(card.quota_profile)
        was = card.state
        event = self._act(
            lambda: self.manager.probation(
                card_id, now=now, until=end, profile=chosen, actor=actor, note=note
            )
        )
        self._audit_transition(
            event, "probation", {"until": iso_time(end), "profile": chosen or card.quota_profile}
        )
        if was is CardState.APPEALING:
            self._close_granted_appeal(card_id, actor=actor, now=now, how="probation")
        return self.show_card(card_id, now)

    def restore(
        self,
        card_id: str,
        *,
        actor: str,
        now: float,
        note: str = "",
        skip_probation: bool = False,
        reason: str = "",
    ) -> dict[str, Any]:
        """Put a card back into service: on its carrier's probation, as carriers impose.

        The probation profile is the carrier's ``probation_profile`` (else the
        card's profile's ``probation``) for the carrier's ``probation_days``.
        ``skip_probation`` puts it straight back on its normal limits and needs a
        ``reason`` (kept in the audit log). A suspect card is cleared instead
        (:meth:`clear`): it was never suspended.
        """
        card = self.card(card_id)
        if card.state is CardState.SUSPECT:
            return self.clear(card_id, actor=actor, now=now, note=note)
        if skip_probation:
            if not reason.strip():
                raise BadRequest("skipping probation needs a reason (--reason TEXT)")
            was = card.state
            event = self._act(
                lambda: self.manager.restore(card_id, now=now, actor=actor, note=note or reason)
            )
            self._audit_transition(event, "restore", {"skip_probation": True, "reason": reason})
            if was is CardState.APPEALING:
                self._close_granted_appeal(card_id, actor=actor, now=now, how="active")
            return self.show_card(card_id, now)
        if card.state in (CardState.ACTIVE, CardState.PROBATION, CardState.RETIRED):
            raise IllegalAction(
                f"card {card_id} is {card.state}: nothing to restore"
                + (
                    " (--skip-probation ends a probation early)"
                    if card.state is CardState.PROBATION
                    else ""
                )
            )
        carrier = self._carrier_settings(card.carrier)
        days = carrier.probation_days if carrier is not None else 7.0
        profile = carrier.probation_profile if carrier is not None else None
        return self.probation(
            card_id,
            actor=actor,
            now=now,
            duration=days * 86400.0,
            profile=profile,
            note=note or "restored on the carrier's probation",
        )

    def clear(self, card_id: str, *, actor: str, now: float, note: str = "") -> dict[str, Any]:
        """A ``suspect`` card is fine after all: back to service (probation if it was on one)."""
        card = self.card(card_id)
        if card.state is not CardState.SUSPECT:
            raise IllegalAction(f"card {card_id} is {card.state}, not suspect: nothing to clear")
        event = self._act(lambda: self.manager.clear(card_id, now=now, actor=actor, note=note))
        self._audit_transition(event, "clear")
        return self.show_card(card_id, now)

    def _carrier_settings(self, name: str) -> Any:
        for carrier in self.settings.carriers:
            if carrier.name == name:
                return carrier
        return None

    def retire(self, card_id: str, *, actor: str, now: float, note: str = "") -> dict[str, Any]:
        """Take a card out of service for good."""
        self.card(card_id)
        event = self._act(lambda: self.manager.retire(card_id, now=now, actor=actor, note=note))
        self._audit_transition(event, "retire")
        return self.show_card(card_id, now)

    def tick(self, now: float) -> list[CardStateChanged]:
        """Run the card timers: probation over → active, maintenance over → active.

        Each change is stored by ``CardManager`` (actor ``gateway``) and published.
        Only needed where no gateway runs the manager's timers (the CLI, tests).
        """
        changed = self.manager.handle_timer(now)
        for event in changed:
            self._publish_transition(event)
        return changed

    # --- DNC ------------------------------------------------------------------------

    def dnc_add(
        self, number: str, *, actor: str, now: float, source: str = "manual", note: str = ""
    ) -> dict[str, Any]:
        """Put a number on the internal DNC list."""
        e164 = self.number(number)
        added = self.store.add_dnc(e164, now, source=source, note=note)
        self.db.record_audit(
            at=now,
            actor=actor,
            action="dnc.add",
            target=mask_number(e164),
            detail={"source": source, "added": added},
        )
        self._emit(OperatorEvent("dnc", now, actor, detail={"action": "add", "added": added}))
        return {"number": self.masked(e164), "added": added}

    def dnc_remove(
        self, number: str, *, actor: str, now: float, force: bool = False, reason: str = ""
    ) -> dict[str, Any]:
        """Take a number off the internal DNC list.

        An entry a complaint put there is removed only with ``force`` and a ``reason``
        (the callee asked for it, the complaint was withdrawn…); both are audited.
        Without them: :class:`IllegalAction` (409) saying so.
        """
        e164 = self.number(number)
        entry = self.store.lookup(e164)
        from_complaint = entry is not None and entry.source == DncSource.COMPLAINT
        reason = reason.strip()
        if from_complaint and not (force and reason):
            missing = "--force and --reason TEXT" if not force else "--reason TEXT"
            raise IllegalAction(
                f"{self.masked(e164)} is on the DNC list because of a complaint: removing it"
                f" needs {missing} (audited)"
            )
        if force and not reason:
            raise BadRequest("--force needs --reason TEXT (why the entry may go)")
        removed = self.store.remove_dnc(e164)
        detail: dict[str, Any] = {"removed": removed}
        if entry is not None:
            detail["source"] = entry.source.value
        if force:
            detail.update(force=True, reason=reason)
        self.db.record_audit(
            at=now,
            actor=actor,
            action="dnc.remove",
            target=mask_number(e164),
            detail=detail,
        )
        self._emit(
            OperatorEvent("dnc", now, actor, detail={"action": "remove", "removed": removed})
        )
        out: dict[str, Any] = {"number": self.masked(e164), "removed": removed}
        if force:
            out["reason"] = reason
        return out

    def dnc_import(
        self,
        lines: Iterable[str],
        *,
        actor: str,
        now: float,
        source: str = "imported",
        name: str = "",
    ) -> ImportResult:
        """Add every good number of a list (one per line, or CSV) to the internal DNC list.

        Bad lines are reported with their line number; good lines are kept.
        """
        report = LoadReport()
        result = ImportResult()
        clean = (line.replace("\x00", "") for line in lines)  # csv raises on NUL
        batch: list[str] = []

        def flush() -> None:
            # One transaction per batch (1M numbers: seconds, not a commit per number).
            added = self.store.add_dncs(batch, now, source=source, note=name)
            result.added += added
            result.unchanged += len(batch) - added
            batch.clear()

        try:
            for key in parse_dnc_lines(clean, self.region, report):
                batch.append(f"+{key}")
                if len(batch) >= DNC_IMPORT_BATCH:
                    flush()
        except csv.Error as exc:
            flush()  # the good numbers before the unreadable line are kept, as before
            raise BadRequest(
                f"unreadable CSV after {result.added + result.unchanged} numbers: {exc}"
            ) from None
        flush()
        result.errors = [(e.line, e.error) for e in report.errors]
        self.db.record_audit(
            at=now,
            actor=actor,
            action="dnc.import",
            target=name,
            detail={"added": result.added, "unchanged": result.unchanged, "bad": report.bad_lines},
        )
        self._emit(
            OperatorEvent("dnc", now, actor, detail={"action": "import", **result.as_dict()})
        )
        return result

    def lookup_number(
        self, number: str, *, now: float, campaign: str | None = None
    ) -> dict[str, Any]:
        """DNC entry, consent status and complaints of one number."""
        e164 = self.number(number)
        entry = self.store.lookup(e164)
        status, record = self.store.consent_status(e164, campaign, datetime.fromtimestamp(now, UTC))
        complaints = [c for c in self.store.complaints() if c.number == e164]
        return {
            "number": self.masked(e164),
            "dnc": None
            if entry is None
            else {
                "list": entry.list_name,
                "source": entry.source.value,
                "added_at": None if entry.added_at is None else entry.added_at.isoformat(),
                "note": entry.note,
            },
            "consent": {
                "campaign": campaign,
                "status": status.value,
                "record": None
                if record is None
                else {
                    "campaign": record.campaign,
                    "granted_at": record.granted_at.isoformat(),
                    "expires_at": None
                    if record.expires_at is None
                    else record.expires_at.isoformat(),
                    "revoked_at": None
                    if record.revoked_at is None
                    else record.revoked_at.isoformat(),
                    "source": record.source,
                    "evidence": record.evidence,
                },
            },
            "complaints": len(complaints),
        }

    # --- per-number history (frequency cap) -----------------------------------------

    def number_show(
        self, number: str, *, now: float, campaign: str | None = None
    ) -> dict[str, Any]:
        """A number's history as the frequency cap sees it, and when it may be called next.

        Attempts and answers inside the ``[policy.frequency]`` windows (those of
        ``campaign`` when it has its own), complaints, DNC and consent state, the last
        reset; ``next_call_at`` is None when a call may go now (as far as this number's
        policies can tell: hours and cards are judged at call time).
        """
        from gateway.policy_config import frequency_cap

        e164 = self.number(number)
        policy = self.settings.policy
        attempts_max, attempts_window, answers_max, answers_window = policy.frequency.for_campaign(
            campaign
        )
        attempts = self.store.attempts(e164, now - attempts_window)
        answers = self.store.answers(e164, now - answers_window)
        frees = frequency_cap(policy, campaign).next_allowed(self.store, e164, now)
        looked = self.lookup_number(e164, now=now, campaign=campaign)
        reset_at = self.store.number_reset_at(e164)
        blocked_by: list[str] = []
        if looked["dnc"] is not None:
            blocked_by.append("dnc")
        consent = looked["consent"]["status"]
        if policy.consent == "require-consent" and consent != "granted":
            blocked_by.append("no-consent")
        if frees is not None:
            blocked_by.append("frequency-cap")
        never = frees is not None and math.isinf(frees)
        return {
            "number": self.masked(e164),
            "campaign": campaign,
            "attempts": {
                "count": len(attempts),
                "max": attempts_max,
                "window_seconds": attempts_window,
                "times": [iso_time(t) for t in attempts],
            },
            "answers": {
                "count": len(answers),
                "max": answers_max,
                "window_seconds": answers_window,
                "times": [iso_time(t) for t in answers],
            },
            "complaints": looked["complaints"],
            "dnc": looked["dnc"],
            "consent": looked["consent"],
            "reset_at": iso_time(reset_at),
            "blocked_by": blocked_by,
            "frequency_free_at": None if frees is None or never else iso_time(frees),
            "retry_after": None if frees is None or never else math.ceil(frees - now),
            "callable_now": not blocked_by,
        }

    def number_reset(self, number: str, *, actor: str, now: float, reason: str) -> dict[str, Any]:
        """Start a number's frequency history afresh (audited; the cards' quotas keep
        counting its calls, DNC and consent are untouched)."""
        reason = reason.strip()
        if not reason:
            raise BadRequest("numbers reset needs --reason TEXT (why the history may go)")
        e164 = self.number(number)
        before = self.number_show(e164, now=now)
        self.store.reset_number(e164, now, actor=actor, reason=reason)
        self.db.record_audit(
            at=now,
            actor=actor,
            action="number.reset",
            target=mask_number(e164),
            detail={
                "reason": reason,
                "attempts": before["attempts"]["count"],
                "answers": before["answers"]["count"],
            },
        )
        self._emit(OperatorEvent("number-reset", now, actor, detail={"reason": reason}))
        return {
            "number": self.masked(e164),
            "reset": True,
            "reason": reason,
            "cleared": {
                "attempts": before["attempts"]["count"],
                "answers": before["answers"]["count"],
            },
        }

    # --- consent --------------------------------------------------------------------

    def consent_add(
        self,
        number: str,
        *,
        actor: str,
        now: float,
        campaign: str = "",
        granted_at: float | None = None,
        expires_at: float | None = None,
        source: str = "",
        evidence: str = "",
    ) -> dict[str, Any]:
        """Record a callee's consent (one campaign, or all with ``""``)."""
        e164 = self.number(number)
        granted = now if granted_at is None else granted_at
        if expires_at is not None and expires_at <= granted:
            raise BadRequest("expires_at must be after granted_at")
        self.store.add_consent(
            e164,
            granted,
            campaign=campaign,
            expires_at=expires_at,
            source=source,
            evidence=evidence,
        )
        self.db.record_audit(
            at=now,
            actor=actor,
            action="consent.add",
            target=mask_number(e164),
            detail={"campaign": campaign, "source": source},
        )
        self._emit(OperatorEvent("consent", now, actor, detail={"action": "add"}))
        return self.lookup_number(e164, now=now, campaign=campaign or None)

    def consent_revoke(
        self, number: str, *, actor: str, now: float, campaign: str | None = None, source: str = ""
    ) -> dict[str, Any]:
        """The callee said no: revoke one campaign's consent, or every campaign's."""
        e164 = self.number(number)
        changed = self.store.revoke_consent(
            e164, now, campaign=campaign, source=source or "operator"
        )
        self.db.record_audit(
            at=now,
            actor=actor,
            action="consent.revoke",
            target=mask_number(e164),
            detail={"campaign": campaign, "changed": changed},
        )
        self._emit(OperatorEvent("consent", now, actor, detail={"action": "revoke"}))
        return self.lookup_number(e164, now=now, campaign=campaign)

    def consent_import(self, text: str, *, actor: str, now: float, name: str = "") -> ImportResult:
        """Import consent CSV (``number,campaign,granted_at,expires_at,source,evidence``)."""
        # A lone CR or a NUL makes the csv module raise instead of reporting a line.
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
        try:
            report = parse_consent_csv(text, self.region)
        except csv.Error as exc:
            raise BadRequest(f"unreadable CSV: {exc}") from None
        result = ImportResult(errors=[(e.line, e.error) for e in report.errors])
        for record in report.records:
            self.store.add_consent(
                record.number,
                record.granted_at.timestamp(),
                campaign=record.campaign or "",
                expires_at=None if record.expires_at is None else record.expires_at.timestamp(),
                source=record.source or name or "import",
                evidence=record.evidence,
            )
            result.added += 1
        self.db.record_audit(
            at=now,
            actor=actor,
            action="consent.import",
            target=name,
            detail={"added": result.added, "bad": len(result.errors)},
        )
        self._emit(
            OperatorEvent("consent", now, actor, detail={"action": "import", **result.as_dict()})
        )
        return result

    # --- complaints -----------------------------------------------------------------

    def complaint_add(
        self,
        number: str,
        *,
        actor: str,
        now: float,
        agent: str = "",
        call_id: str | None = None,
        card: str | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """Record a complaint: the number goes on the internal DNC list, and the complaint
        counts against the agent and the card.

        Card, call and agent not given are found in the call records: the call's CDR
        (``call_id``), else the last answered call to the number within ``[policy]
        complaint_lookup_window``; when several answered calls of that window were on
        different cards or by different agents, the result says so (``ambiguous``, with
        every candidate) and the last one counts. Then the agent's limits are checked:
        over a ``[policy.agents]`` complaint ceiling (or the complaint-rate ceiling)
        it is paused.
        """
        e164 = self.number(number)
        if card is not None:
            self.card(card)
        found: dict[str, Any] = {"how": "given" if card else "none"}
        if call_id:
            for record in self.store.cdrs(call_id=call_id, limit=10):
                if card is None and record.card is not None:
                    found["how"] = "call"
                card = card or record.card
                agent = agent or record.origin
        elif card is None:
            found = self._find_complained_call(e164, now)
            if found["call"] is not None:
                call_id = found["call"]["call_id"]
                card = found["call"]["card"]
                agent = agent or found["call"]["agent"]
        self.store.add_complaint(Complaint(e164, now, card=card, call_id=call_id, note=note))
        self.store.add_dnc(e164, now, source="complaint", note=note[:200])
        self.db.attribute_complaint(
            ComplaintAttribution(e164, now, agent, card, call_id, note, actor)
        )
        self.db.record_audit(
            at=now,
            actor=actor,
            action="complaint.add",
            target=mask_number(e164),
            card=card,
            detail={
                "agent": agent,
                "call_id": call_id or "",
                "found": found["how"],
                "ambiguous": bool(found.get("ambiguous")),
            },
        )
        self._emit(
            OperatorEvent("complaint", now, actor, card=card, agent=agent or None, detail={})
        )
        pause = self._check_agent_ceilings(agent, now) if agent else None
        paused = pause is not None or (self.check_agent(agent, now) if agent else None) is not None
        out: dict[str, Any] = {
            "number": self.masked(e164),
            "card": card,
            "agent": agent or None,
            "call_id": call_id,
            "dnc": True,
            "found": found["how"],
            "agent_paused": paused,
        }
        if pause is not None:
            out["pause"] = pause
        if found.get("ambiguous"):
            out["ambiguous"] = True
            out["candidates"] = found["candidates"]
            out["message"] = found["message"]
        return out

    def _find_complained_call(self, e164: str, now: float) -> dict[str, Any]:
        """The last answered call to ``e164`` within the lookup window, and its rivals."""
        window = self.settings.policy.complaint_lookup_window
        answered = [
            r
            for r in self.store.cdrs(since=now - window, until=now + 1, destination=e164)
            if r.answer_at is not None
        ]
        if not answered:
            return {"how": "none", "call": None}
        answered.sort(key=lambda r: r.answer_at or 0.0)
        candidates = [
            {
                "call_id": r.call_id,
                "card": r.card,
                "agent": r.origin,
                "answered_at": iso_time(r.answer_at),
            }
            for r in answered
        ]
        last = candidates[-1]
        out: dict[str, Any] = {"how": "cdr", "call": last}
        cards = sorted({str(c["card"]) for c in candidates if c["card"]})
        agents = sorted({str(c["agent"]) for c in candidates if c["agent"]})
        if len(cards) > 1 or len(agents) > 1:
            days = round(window / 86400, 1)
            out.update(
                ambiguous=True,
                candidates=candidates,
                message=(
                    f"{len(candidates)} answered calls to this number in {days:g} days"
                    f" (cards {', '.join(cards) or '-'}; agents {', '.join(agents) or '-'}):"
                    f" counted against the last (card {last['card'] or '-'}, call"
                    f" {last['call_id']}); give --card or --call to choose another"
                ),
            )
        return out

    def _check_agent_ceilings(self, agent: str, now: float) -> dict[str, Any] | None:
        """Pause ``agent`` when its complaints pass a ``[policy.agents]`` ceiling.

        The pause ends by itself when enough counted complaints leave their window
        (that instant is the Retry-After its calls get), or at ``agents resume``.
        """
        limits = self.settings.policy.agents
        ceilings = [
            (limit, window, label)
            for limit, window, label in (
                (limits.complaints_per_day, 86400.0, "complaints per day"),
                (limits.complaints_per_week, 7 * 86400.0, "complaints per week"),
            )
            if limit is not None
        ]
        if not ceilings:
            return None
        longest = max(w for _, w, _ in ceilings)
        times = sorted(
            c.at for c in self.db.attributed_complaints(agent=agent, since=now - longest)
        )
        until: float | None = None
        broken: list[str] = []
        for limit, window, label in ceilings:
            counted = [t for t in times if t > now - window]
            if len(counted) > limit:
                # Below the ceiling again once len(counted) - limit of them have left.
                frees = counted[len(counted) - limit - 1] + window
                until = frees if until is None else max(until, frees)
                broken.append(f"{len(counted)} {label} > {limit}")
        if until is None:
            return None
        reason = "over complaint ceiling: " + ", ".join(broken)
        self.store.set_agent_paused(agent, True, now, reason=reason, until=until)
        detail = {"reason": reason, "until": iso_time(until), "complaints": len(times)}
        self.db.record_audit(
            at=now, actor="gateway", action="agent.pause", target=agent, detail=detail
        )
        self._emit(OperatorEvent("agent-paused", now, "gateway", agent=agent, detail=detail))
        self._publish_agent_alert(AlertKind.AGENT_PAUSED, agent, now, reason, until)
        log.warning("agent paused", agent=agent, reason=reason, until=iso_time(until))
        return {"reason": reason, "until": iso_time(until), "retry_after": math.ceil(until - now)}

    def _publish_agent_alert(
        self, kind: AlertKind, agent: str, now: float, reason: str, until: float | None
    ) -> None:
        """``dialgate/alerts`` for an agent pause or resume (once per change)."""
        self._paused_seen[agent] = until if kind == AlertKind.AGENT_PAUSED else None
        if kind != AlertKind.AGENT_PAUSED:
            self._paused_seen.pop(agent, None)
        if self.bus is None:
            return
        message = (
            f"agent {agent} paused: {reason}"
            if kind == AlertKind.AGENT_PAUSED
            else f"agent {agent} resumed{': ' + reason if reason else ''}"
        )
        self.bus.publish(
            Alert(
                kind=kind,
                at=now,
                severity=Severity.WARNING if kind == AlertKind.AGENT_PAUSED else Severity.INFO,
                message=message,
                reason=reason or None,
                detail={"agent": agent, "until": iso_time(until)},
            )
        )

    def _agent_complaints(self, agent: str, since: float) -> int:
        """The agent's complaints since ``since``: the larger of those attributed here and
        those the store links to the agent's calls (the same complaint is usually both)."""
        attributed = self.db.attributed_complaints(agent=agent, since=since)
        return max(len(attributed), len(self.store.agent_complaints(agent, since)))

    def check_agent(self, agent: str, now: float) -> Finding | None:
        """Pause the agent when its complaint rate crossed the ceiling (see
        :meth:`check_alerts`); the finding, or None."""
        since = now - self.thresholds.complaint_window
        complaints = self._agent_complaints(agent, since)
        if complaints == 0:
            return None  # no rate to cross: its calls are not counted
        calls = self.store.agent_calls(agent, since)
        finding = assess_agent(agent, calls, complaints, self.thresholds)
        if finding is None:
            return None
        if self.store.agent_usage(agent, now, window=1.0).paused:
            return finding
        self.store.set_agent_paused(agent, True, now, reason=finding.message)
        self.db.record_audit(
            at=now, actor="gateway", action="agent.pause", target=agent, detail=dict(finding.detail)
        )
        self._emit(
            OperatorEvent("agent-paused", now, "gateway", agent=agent, detail=finding.detail)
        )
        self._publish_agent_alert(AlertKind.AGENT_PAUSED, agent, now, finding.message, None)
        log.warning("agent paused", agent=agent, calls=calls, complaints=complaints)
        return finding

    def agent_resume(self, agent: str, *, actor: str, now: float, note: str = "") -> dict[str, Any]:
        """Lift an agent's pause (audited with the actor; ``resumed``: whether it was paused)."""
        before = self.store.agent_usage(agent, now, window=0.0)
        lifted = self.store.set_agent_paused(agent, False, now)
        detail: dict[str, Any] = {"was_paused": lifted, "pause_reason": before.pause_reason}
        if note:
            detail["note"] = note
        self.db.record_audit(
            at=now, actor=actor, action="agent.resume", target=agent, detail=detail
        )
        self._emit(OperatorEvent("agent-resumed", now, actor, agent=agent))
        if lifted:
            self._publish_agent_alert(AlertKind.AGENT_RESUMED, agent, now, f"by {actor}", None)
        return {"agent": agent, "paused": False, "resumed": lifted}

    def agent_status(self, agent: str, now: float) -> dict[str, Any]:
        """An agent's pause, complaints of the last day/week and calls of the last day."""
        usage = self.store.agent_usage(agent, now, window=7 * 86400.0)
        attributed = [
            c.at for c in self.db.attributed_complaints(agent=agent, since=now - 7 * 86400.0)
        ]
        paused = usage.paused and (usage.paused_until is None or usage.paused_until > now)
        return {
            "agent": agent,
            "paused": paused,
            "pause_reason": usage.pause_reason if paused else None,
            "paused_until": iso_time(usage.paused_until) if paused else None,
            "complaints_day": sum(1 for t in attributed if t > now - 86400.0),
            "complaints_week": len(attributed),
            "calls_day": len(usage.call_starts) - usage.call_starts.bisect_right(now - 86400.0),
            "limits": self.settings.policy.agents.model_dump(),
        }

    def watch_pauses(self, now: float) -> None:
        """Alerts for pauses written by another process (the CLI) or that ran out."""
        pauses = self.store.agent_pauses()
        current = {
            agent: until
            for agent, (_at, _reason, until) in pauses.items()
            if until is None or until > now
        }
        reasons = {a: r for a, (_t, r, _u) in pauses.items()}
        for agent, until in current.items():
            if agent not in self._paused_seen:
                self._publish_agent_alert(
                    AlertKind.AGENT_PAUSED, agent, now, reasons.get(agent, ""), until
                )
        for agent in [a for a in self._paused_seen if a not in current]:
            self._publish_agent_alert(AlertKind.AGENT_RESUMED, agent, now, "", None)

    # --- alerts ---------------------------------------------------------------------

    def agents(self) -> list[str]:
        """Agents worth checking: configured users and peers."""
        names = [u.name for u in self.settings.users] + [p.name for p in self.settings.peers]
        return sorted(set(names))

    def check_alerts(self, now: float) -> list[Alert]:
        """Assess every card and agent; publish alerts new since the last run.

        Cards go through :class:`gateway.telemetry.alerts.AlertEngine` (the same engine as
        the gateway's :class:`gateway.telemetry.alerts.AlertWatch`): an alert is raised once
        per crossing of ``near`` and re-armed below ``clear_below``. Agents over
        the complaint ceiling are paused (an ``agent-paused`` operator event).
        The gateway's status round runs the same three steps with the event loop let
        through between agents (:func:`gateway.cards.status.status_rounds`).
        """
        alerts = self.check_card_alerts(now)
        for agent in self.agents():
            self.check_agent(agent, now)
        self.watch_pauses(now)
        return alerts

    def check_card_alerts(
        self, now: float, *, usage: Mapping[str, tuple[LimitUsage, ...]] | None = None
    ) -> list[Alert]:
        """Assess every usable card; publish (and return) the alerts new since the last run.

        ``usage``: each card's usage against its limits at ``now`` where the caller
        has worked it out already (the status round, for the cards' statuses).
        """
        engine = self.alert_engine
        engine.marks = self.thresholds.marks
        given = usage or {}
        alerts: list[Alert] = []
        for card in self.manager.cards():
            if not card.usable:
                engine.forget(card.id)
                continue
            known = given.get(card.id)
            status = CardStatus(
                card=card.id,
                state=str(card.state),
                reason=None if card.reason is None else str(card.reason),
                since=card.since,
                pool=card.pool,
                at=now,
                carrier=card.carrier,
                usage=known
                if known is not None
                else usage_vs_limits(self.snapshot(card, now), now),
            )
            alerts.extend(engine.assess(status))
        for alert in alerts:
            if self.bus is not None:
                self.bus.publish(alert)
        return alerts

    # --- CDRs -----------------------------------------------------------------------

    def cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        card: str | None = None,
        agent: str | None = None,
        campaign: str | None = None,
        outcome: str | None = None,
        call_id: str | None = None,
        limit: int = 1000,
    ) -> list[CallRecord]:
        """Stored CDRs by attempt time, filtered by card (any card tried), agent, campaign.

        ``call_id`` is the SIP Call-ID of the A-leg: the ``call_id`` of the log lines
        and MQTT call events, so a line or an event leads to its record.
        """
        if outcome is not None:
            try:
                Outcome(outcome)
            except ValueError:
                raise BadRequest(
                    f"unknown outcome {outcome!r}; one of {', '.join(o.value for o in Outcome)}"
                ) from None
        limit = max(1, min(limit, 100_000))
        out: list[CallRecord] = []
        for record in self.store.cdrs(
            since=since, until=until, call_id=call_id or None, limit=1_000_000
        ):
            if card is not None and card not in record.cards:
                continue
            if agent is not None and record.origin != agent:
                continue
            if campaign is not None and record.campaign != campaign:
                continue
            if outcome is not None and record.outcome.value != outcome:
                continue
            out.append(record)
            if len(out) >= limit:
                break
        return out

    def cdr_view(self, record: CallRecord) -> dict[str, Any]:
        """A CDR as shown (destination masked unless configured)."""
        return {
            "call_id": record.call_id,
            "attempt_at": iso_time(record.attempt_at),
            "ring_at": iso_time(record.ring_at),
            "answer_at": iso_time(record.answer_at),
            "end_at": iso_time(record.end_at),
            "origin_kind": record.origin_kind.value,
            "origin": record.origin,
            "campaign": record.campaign,
            "cards": list(record.cards),
            "destination": self.masked(record.destination),
            "outcome": record.outcome.value,
            "final_code": record.final_code,
            "failovers": record.failovers,
            "talk_seconds": round(record.talk_seconds, 1),
            "policy_reason": record.policy_reason,
            "lead_id": record.lead_id,
        }

    def cdrs_csv(self, records: Iterable[CallRecord]) -> str:
        """CDRs as CSV text (destinations masked unless configured)."""
        buf = io.StringIO()
        write_csv(records, buf, mask=self.mask)
        return buf.getvalue()


def mask_evidence(value: Any, mask: bool) -> Any:
    """Evidence and audit details with every phone number inside masked (when ``mask``)."""
    return mask_numbers_deep(value) if mask else value


# --- construction -----------------------------------------------------------------------


def shared_usage_view(manager: CardManager) -> CardUsageView | None:
    """The Redis usage view behind ``manager``'s shared card states, or None.

    The one seam between the operator's reads and Redis mode: a manager whose
    repository is a :class:`gateway.store.redis.SharedCardRepository` (the
    running gateway's, or the one :func:`operator_from_settings` builds when
    ``[store] redis`` is set) reads card states from Redis, and so must usage:
    the instance's SQLite only holds its own calls.
    """
    redis_store = sys.modules.get("gateway.store.redis")  # not loaded: not Redis mode
    if redis_store is None:
        return None
    repo = getattr(manager, "repo", None)
    if isinstance(repo, redis_store.SharedCardRepository):
        shared: CardUsageView = repo.shared
        return shared
    return None


def _stored_defs(store: SQLiteStore, known: set[str]) -> list[CardDef]:
    """Cards the store remembers that the configuration no longer lists."""
    rows: list[StoredCard] = store.load_cards()
    return [
        CardDef(
            id=r.id,
            carrier=r.carrier,
            number=r.number,
            pool=r.pool,
            priority=r.priority,
            quota_profile=r.quota_profile,
        )
        for r in rows
        if r.id not in known
    ]


def operator_from_settings(
    settings: Settings,
    *,
    now: float,
    store: SQLiteStore | None = None,
    bus: EventBus | None = None,
    base_dir: Path | None = None,
) -> Operator:
    """An :class:`Operator` with its own card manager loaded from the store (the CLI's).

    Cards keep the state the store remembers. Cards removed from the
    configuration but still in the store are shown too (their history matters
    for appeals).
    """
    if store is None:
        store = store_from_settings(settings, base_dir=base_dir)
    repo: CardRepository = store
    closers: list[Callable[[], None]] = []
    if settings.store.redis is not None:
        from gateway.store.redis import SharedCardRepository, from_settings, node_name

        # Redis mode: card states and usage are the shared ones, not this file's.
        # Named apart from the gateway on this host: the operator owns no reservation.
        shared = from_settings(settings, node=f"{node_name(settings)}/operator")
        repo = SharedCardRepository(store, shared)
        closers.append(repo.close)
    manager = CardManager(repo, rules=rules_from_settings(settings))
    defs = card_defs_from_settings(settings)
    manager.load([*defs, *_stored_defs(store, {d.id for d in defs})], now)
    operator = Operator(settings, store, manager, bus=bus)
    operator.closers.extend(closers)
    return operator


async def run_alert_loop(
    operator: Operator,
    *,
    interval: float = 60.0,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    run_timers: bool = False,
) -> None:
    """Run :meth:`Operator.check_alerts` every ``interval`` seconds until ``stop`` is set.

    The entry point ``app.py`` schedules (``asyncio.create_task``). A failing run
    is logged and the loop goes on; the store being down only skips a round.
    ``run_timers`` also runs :meth:`Operator.tick` (probation lapse, maintenance
    end) first — only where no gateway runs the card manager's timers itself
    (a stand-alone admin server).
    """
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            now = clock()
            if run_timers:
                operator.tick(now)
            operator.check_alerts(now)
        except Exception:
            log.exception("alert check failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue


def effective_profile_of(operator: Operator, card_id: str) -> QuotaProfile:
    """The limits in force for a card right now (its probation profile while on probation)."""
    return effective_profile(operator.card(card_id), operator.profiles, operator.probation_of)
