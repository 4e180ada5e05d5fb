"""Per-attempt call records and gateway card marks shared by the offline and SIP rehearsals.

A :class:`CallRecord` is one call attempt as the caller side saw it (agent or
dialer channel, card used, outcome, failovers); a :class:`CardMark` is the
gateway taking a card out of service after a carrier response; a
:class:`GatewayCardState` is a card's state in the gateway when the run ended.
The report is built from these plus the carrier's events. Callee numbers are stored masked
by whoever creates a record; this module must never hold an unmasked number
on its own initiative and never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["IN_SERVICE_STATES", "CallOutcome", "CallRecord", "CardMark", "GatewayCardState"]

#: Gateway card states in which a card carries calls (DESIGN.md "Card states").
IN_SERVICE_STATES = frozenset({"active", "probation"})


class CallOutcome(StrEnum):
    """How one call attempt ended, from the agent's side."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    DECLINED = "declined"
    #: The destination refused the number (a plain 403 / 404 from its side).
    REFUSED = "refused"
    #: The destination's network failed the call after it reached it (5xx after ringing).
    FAILED = "failed"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call attempt as the report sees it (callee masked)."""

    time: float
    source: str
    callee: str
    card: str | None
    outcome: CallOutcome
    status: int
    reason: str | None = None
    failovers: int = 0
    ring_seconds: float = 0.0
    talk_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "time": self.time,
            "source": self.source,
            "callee": self.callee,
            "card": self.card,
            "outcome": str(self.outcome),
            "status": self.status,
            "reason": self.reason,
            "failovers": self.failovers,
            "ring_seconds": self.ring_seconds,
            "talk_seconds": self.talk_seconds,
        }


@dataclass(frozen=True, slots=True)
class CardMark:
    """The stand-in gateway took a card out of service after a carrier response."""

    time: float
    card: str
    status: int
    reason_phrase: str
    until: float | None  # None: until an operator restores it

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "time": self.time,
            "card": self.card,
            "status": self.status,
            "reason_phrase": self.reason_phrase,
            "until": self.until,
        }


@dataclass(frozen=True, slots=True)
class GatewayCardState:
    """A card's state in the gateway when a run ended: ``active``, ``suspended``, ``suspect``…"""

    card: str
    state: str
    reason: str | None = None

    @property
    def in_service(self) -> bool:
        """True when the gateway would still put calls on the card (active or probation)."""
        return self.state in IN_SERVICE_STATES

    def __str__(self) -> str:
        return self.state if self.reason is None else f"{self.state} ({self.reason})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"card": self.card, "state": self.state, "reason": self.reason}
