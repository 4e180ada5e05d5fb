"""Call detail records: the record type, outcome classification, masking, CSV export,
and :class:`CdrRecorder`, which builds a call's record when it ends and writes it.

One :class:`CallRecord` is written per call attempt that reached the gateway,
including calls the policy pipeline blocked and calls that failed on every
card. :class:`CdrRecorder` writes it through the store's
:class:`~gateway.store.spool.CdrWriter` (spooled to disk when the store refuses
it) and counts ``cdrs`` / ``cdr_errors`` in the B2BUA's stats; the admin API
exports records through :func:`write_csv`.

Times in the CSV are ISO 8601 in UTC with milliseconds
(``2026-11-22T03:24:41.250Z``), the form of the admin API and the MQTT
payloads (:func:`gateway.telemetry.events.iso_time`); ``call_id`` is the SIP Call-ID of
the A-leg, the id the log lines and MQTT events carry.

Destinations are stored as full E.164 numbers (the operator needs them for
complaints and appeals) but every *output* of this module masks them
(``+86138****5678``, the rule of ``policies.privacy``) unless the caller
explicitly asks for clear numbers.

This module must never do I/O of its own (``write_csv`` writes to the stream it
is given, :class:`CdrRecorder` to the writer it is given), never read a clock
(the caller says when a call ended), and never log a destination in clear.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TextIO

import structlog

from gateway.callpath.auth import IdentityKind
from policies.decision import RejectReason
from policies.privacy import mask_number
from policies.timeutil import iso_time

if TYPE_CHECKING:
    from gateway.callpath.calls import Call
    from gateway.store.spool import CdrWriter

__all__ = [
    "CSV_COLUMNS",
    "CallRecord",
    "CdrRecorder",
    "Origin",
    "Outcome",
    "call_record",
    "outcome_for_status",
    "write_csv",
]


log = structlog.get_logger("gateway.callpath.cdr")


class Origin(StrEnum):
    """Who originated the call."""

    AGENT = "agent"
    DIALER = "dialer"


class Outcome(StrEnum):
    """How a call attempt ended, as an operator reads it in a report."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    DECLINED = "declined"
    NOT_FOUND = "not-found"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"  # refused by the policy pipeline, never left the gateway
    NO_CARD = "no-card"  # every card failed, was suspended or over quota
    FAILED = "failed"  # any other final failure
    INTERRUPTED = "interrupted"  # the gateway died during the call; ended at its restart


_STATUS_OUTCOMES: dict[int, Outcome] = {
    486: Outcome.BUSY,
    600: Outcome.BUSY,
    408: Outcome.NO_ANSWER,
    480: Outcome.NO_ANSWER,
    603: Outcome.DECLINED,
    404: Outcome.NOT_FOUND,
    410: Outcome.NOT_FOUND,
    484: Outcome.NOT_FOUND,
    604: Outcome.NOT_FOUND,
    487: Outcome.CANCELLED,
}


def outcome_for_status(status: int) -> Outcome:
    """Map the final SIP status relayed to the caller to a report outcome."""
    if 200 <= status < 300:
        return Outcome.ANSWERED
    return _STATUS_OUTCOMES.get(status, Outcome.FAILED)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call attempt, from INVITE to final outcome.

    Times are POSIX seconds (floats) supplied by the caller. ``cards`` lists the
    cards tried in order; the last one carried the final outcome.
    """

    call_id: str
    attempt_at: float
    destination: str  # E.164, stored in clear; masked on output
    outcome: Outcome
    final_code: int
    origin_kind: Origin = Origin.AGENT
    origin: str = ""  # agent user name or dialer peer name
    campaign: str = ""
    cards: tuple[str, ...] = ()
    ring_at: float | None = None
    answer_at: float | None = None
    end_at: float | None = None
    failovers: int = 0
    policy_reason: str = ""  # e.g. "dnc", "no-consent", "no-card-available"
    lead_id: str = ""  # the dialer's lead id ([policy] lead_header, default X-Lead-Id)

    @property
    def card(self) -> str | None:
        """The card that carried the final outcome, if any card was used."""
        return self.cards[-1] if self.cards else None

    @property
    def talk_seconds(self) -> float:
        """Seconds between answer and end (0 for unanswered calls)."""
        if self.answer_at is None or self.end_at is None:
            return 0.0
        return max(self.end_at - self.answer_at, 0.0)

    def as_row(self, *, mask: bool = True) -> dict[str, str]:
        """The CSV row of this record; the destination masked unless ``mask`` is False.

        Times are ISO 8601 UTC (``…T03:24:41.250Z``, as in the admin API); empty
        when the call never got there (no ring, no answer).
        """

        def t(value: float | None) -> str:
            return iso_time(value) or ""

        return {
            "call_id": self.call_id,
            "attempt_at": t(self.attempt_at),
            "ring_at": t(self.ring_at),
            "answer_at": t(self.answer_at),
            "end_at": t(self.end_at),
            "origin_kind": str(self.origin_kind),
            "origin": self.origin,
            "campaign": self.campaign,
            "cards": " ".join(self.cards),
            "destination": mask_number(self.destination, enabled=mask),
            "outcome": str(self.outcome),
            "final_code": str(self.final_code),
            "failovers": str(self.failovers),
            "talk_seconds": f"{self.talk_seconds:.1f}",
            "policy_reason": self.policy_reason,
            "lead_id": self.lead_id,
        }


CSV_COLUMNS: tuple[str, ...] = (
    "call_id",
    "attempt_at",
    "ring_at",
    "answer_at",
    "end_at",
    "origin_kind",
    "origin",
    "campaign",
    "cards",
    "destination",
    "outcome",
    "final_code",
    "failovers",
    "talk_seconds",
    "policy_reason",
    "lead_id",
)


def write_csv(records: Iterable[CallRecord], out: TextIO, *, mask: bool = True) -> int:
    """Write ``records`` as CSV with a header to ``out``; return the number of rows.

    Destinations are masked unless ``mask=False`` (only when the operator's
    configuration allows clear numbers in exports).
    """
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    count = 0
    for record in records:
        writer.writerow(record.as_row(mask=mask))
        count += 1
    return count


def call_record(call: Call, outcome: Outcome, code: int, end_at: float | None) -> CallRecord:
    """The call's detail record as it stands."""
    kind = Origin.DIALER if call.identity.kind is IdentityKind.DIALER else Origin.AGENT
    return CallRecord(
        call_id=call.a.call_id,
        attempt_at=call.attempt_at,
        destination=call.destination,
        outcome=outcome,
        final_code=code,
        origin_kind=kind,
        origin=call.identity.name,
        campaign=call.campaign,
        cards=tuple(call.cards_tried),
        ring_at=call.ring_at,
        answer_at=call.answer_at,
        end_at=end_at,
        failovers=call.failovers,
        policy_reason=call.policy_reason,
        lead_id=call.lead_id,
    )


class CdrRecorder:
    """Writes one record per call attempt; a record the store refuses is spooled, never lost."""

    def __init__(self, writer: CdrWriter, stats: dict[str, int]) -> None:
        self.writer = writer
        self.stats = stats  # the B2BUA's counters: ``cdrs``, ``cdr_errors``

    def write(self, call: Call, outcome: Outcome, code: int, *, end_at: float) -> None:
        """Build the call's record with this outcome and final code, and write it."""
        self.write_record(call, call_record(call, outcome, code, end_at))

    def write_record(self, call: Call, record: CallRecord) -> None:
        """Write the call's record (spooled when the store refuses it)."""
        if self.writer.write(record):
            self.stats["cdrs"] += 1
        else:
            self.stats["cdr_errors"] += 1
            log.error("cdr.spooled", call_id=call.a.call_id, pending=self.writer.pending)

    def stored(self, record: CallRecord) -> None:
        """Count a record the caller stored itself (in one commit with the call's end)."""
        self.writer.note_written(1)
        self.stats["cdrs"] += 1

    @staticmethod
    def outcome(call: Call, *, cancelled: bool) -> Outcome:
        """The outcome of a call that is over."""
        if call.answered:
            return Outcome.ANSWERED
        if call.policy_reason == str(RejectReason.NO_CARD_AVAILABLE):
            return Outcome.NO_CARD
        if cancelled:
            return Outcome.CANCELLED
        return outcome_for_status(call.final_code)

    def ended(self, call: Call, *, cancelled: bool, end_at: float) -> Outcome:
        """Write the record of a call that is over; return its outcome."""
        outcome = self.outcome(call, cancelled=cancelled)
        self.write(call, outcome, call.final_code, end_at=end_at)
        return outcome
