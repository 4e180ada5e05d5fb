"""Carrier (trunk) health from OPTIONS pings, in the style of Kamailio's dispatcher.

Each carrier is in one of four states:

- ``ACTIVE``: answering; its cards carry calls.
- ``TRYING``: a ping failed, but fewer than ``failure_threshold`` in a row; still
  used (one lost datagram must not take a trunk down).
- ``INACTIVE``: ``failure_threshold`` consecutive failures; its cards are skipped.
- ``PROBING``: inactive, but a ping succeeded; still skipped until
  ``success_threshold`` consecutive successes bring it back to ``ACTIVE``.

Transitions (the whole table)::

    ACTIVE   --fail-->  TRYING   (INACTIVE when failure_threshold == 1)
    TRYING   --fail-->  TRYING / INACTIVE at failure_threshold
    TRYING   --ok---->  ACTIVE
    INACTIVE --ok---->  PROBING  (ACTIVE when success_threshold == 1)
    PROBING  --ok---->  PROBING / ACTIVE at success_threshold
    PROBING  --fail-->  INACTIVE

The core is pure, like aioquic: it never reads a clock and owns no socket. The
caller asks :meth:`CarrierHealth.get_timer`, calls :meth:`CarrierHealth.handle_timer`
when it is due, sends the OPTIONS requests it returns, and reports each outcome
with :meth:`CarrierHealth.on_result` (a ping that got no answer within
``timeout`` counts as a failure by itself). State changes are appended to
:attr:`CarrierHealth.events` (→ the ``trunk-down`` alert).

Failure mode: fails open for unknown carriers (no health information means the
carrier is assumed up, so a missing ping config never blocks calls). This module
must never do I/O or read a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "CarrierHealth",
    "CarrierStateChanged",
    "LineState",
    "SendOptions",
    "health_from_settings",
    "is_ok_reply",
]


class LineState(StrEnum):
    """Health state of one carrier (Kamailio dispatcher names)."""

    ACTIVE = "active"
    TRYING = "trying"
    INACTIVE = "inactive"
    PROBING = "probing"


#: States in which the carrier's cards are used.
USABLE_STATES = frozenset({LineState.ACTIVE, LineState.TRYING})


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Action: send an OPTIONS ping to ``carrier``; report back with ``seq``."""

    carrier: str
    seq: int
    at: float


@dataclass(frozen=True, slots=True)
class CarrierStateChanged:
    """A carrier changed health state (INACTIVE → ``trunk-down`` alert)."""

    carrier: str
    at: float
    from_state: LineState
    to_state: LineState
    cause: str


def is_ok_reply(status: int, extra_ok: Iterable[int] = ()) -> bool:
    """Whether an OPTIONS reply shows a live carrier: any 2xx, or a status in ``extra_ok``.

    Some carriers answer OPTIONS with 403/404/405; list those in ``extra_ok``
    (Kamailio ``ds_ping_reply_codes``) when they still mean "alive".
    """
    return 200 <= status < 300 or status in set(extra_ok)


@dataclass(slots=True)
class _Line:
    state: LineState
    interval: float
    first_due: float
    last_sent: float | None = None
    failures: int = 0
    successes: int = 0
    pending_seq: int | None = None
    pending_deadline: float | None = None
    last_change: float = 0.0


@dataclass(slots=True)
class CarrierHealth:
    """Health of every probed carrier; timers as values.

    ``interval`` seconds between pings of an up carrier, ``probe_interval``
    (default: ``interval``) while it is inactive or probing; ``timeout`` seconds
    without a reply count as a failure.
    """

    interval: float = 30.0
    failure_threshold: int = 3
    success_threshold: int = 2
    timeout: float = 5.0
    probe_interval: float | None = None
    events: list[CarrierStateChanged] = field(default_factory=list)
    _lines: dict[str, _Line] = field(default_factory=dict)
    _seq: int = 0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")

    def add(
        self,
        carrier: str,
        *,
        now: float,
        interval: float | None = None,
        state: LineState = LineState.ACTIVE,
    ) -> None:
        """Start probing ``carrier``; its first ping is due at ``now``."""
        self._lines[carrier] = _Line(
            state=state,
            interval=interval if interval is not None else self.interval,
            first_due=now,
            last_change=now,
        )

    def remove(self, carrier: str) -> None:
        """Stop probing ``carrier`` (it is then assumed up)."""
        self._lines.pop(carrier, None)

    def state(self, carrier: str) -> LineState:
        """The carrier's health state (ACTIVE when it is not probed)."""
        line = self._lines.get(carrier)
        return LineState.ACTIVE if line is None else line.state

    def is_available(self, carrier: str) -> bool:
        """Whether the carrier's cards may carry calls (ACTIVE or TRYING)."""
        return self.state(carrier) in USABLE_STATES

    def carriers(self) -> dict[str, LineState]:
        """Every probed carrier and its state."""
        return {name: line.state for name, line in self._lines.items()}

    def drain_events(self) -> list[CarrierStateChanged]:
        """Take the state changes accumulated since the last drain."""
        events, self.events = self.events, []
        return events

    # --- timers ---------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next instant :meth:`handle_timer` has work (a ping due or a reply overdue)."""
        times: list[float] = []
        for line in self._lines.values():
            if line.pending_deadline is not None:
                times.append(line.pending_deadline)
            else:
                times.append(self._due(line))
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[SendOptions]:
        """Count overdue pings as failures and return the pings to send now."""
        actions: list[SendOptions] = []
        for name, line in self._lines.items():
            if line.pending_deadline is not None:
                if now < line.pending_deadline:
                    continue
                line.pending_seq = None
                line.pending_deadline = None
                self._record(name, line, ok=False, now=now, cause="timeout")
            if now >= self._due(line):
                self._seq += 1
                line.pending_seq = self._seq
                line.pending_deadline = now + self.timeout
                line.last_sent = now
                actions.append(SendOptions(carrier=name, seq=self._seq, at=now))
        return actions

    def _due(self, line: _Line) -> float:
        # Computed from the *current* state, so a carrier that just went down is
        # probed on probe_interval and one that came back returns to interval.
        if line.last_sent is None:
            return line.first_due
        if line.state in USABLE_STATES or self.probe_interval is None:
            return line.last_sent + line.interval
        return line.last_sent + self.probe_interval

    # --- results --------------------------------------------------------------------

    def on_result(
        self, carrier: str, ok: bool, *, now: float, seq: int | None = None, cause: str = ""
    ) -> CarrierStateChanged | None:
        """Report a ping outcome (or any other liveness evidence when ``seq`` is None).

        A result for a ping that already timed out (stale ``seq``) is ignored: the
        timeout was already counted. Returns the state change, if any.
        """
        line = self._lines.get(carrier)
        if line is None:
            return None
        if seq is not None:
            if seq != line.pending_seq:
                return None
            line.pending_seq = None
            line.pending_deadline = None
        return self._record(carrier, line, ok=ok, now=now, cause=cause or ("ok" if ok else "fail"))

    def on_reply(
        self,
        carrier: str,
        status: int,
        *,
        now: float,
        seq: int | None = None,
        extra_ok: Iterable[int] = (),
    ) -> CarrierStateChanged | None:
        """Report the status of an OPTIONS reply (see :func:`is_ok_reply`)."""
        ok = is_ok_reply(status, extra_ok)
        return self.on_result(carrier, ok, now=now, seq=seq, cause=f"reply:{status}")

    def _record(
        self, carrier: str, line: _Line, *, ok: bool, now: float, cause: str
    ) -> CarrierStateChanged | None:
        old = line.state
        if ok:
            line.failures = 0
            if old in (LineState.INACTIVE, LineState.PROBING):
                line.successes += 1
                new = (
                    LineState.ACTIVE
                    if line.successes >= self.success_threshold
                    else LineState.PROBING
                )
            else:
                line.successes = 0
                new = LineState.ACTIVE
        else:
            line.successes = 0
            if old in (LineState.INACTIVE, LineState.PROBING):
                new = LineState.INACTIVE
            else:
                line.failures += 1
                new = (
                    LineState.INACTIVE
                    if line.failures >= self.failure_threshold
                    else LineState.TRYING
                )
        if new is LineState.ACTIVE:
            line.successes = 0
        if new is old:
            return None
        line.state = new
        line.last_change = now
        event = CarrierStateChanged(carrier, now, old, new, cause)
        self.events.append(event)
        return event


def health_from_settings(
    settings: Settings,
    *,
    now: float,
    failure_threshold: int = 3,
    success_threshold: int = 2,
    timeout: float = 5.0,
) -> CarrierHealth:
    """A :class:`CarrierHealth` probing every carrier with an ``options_interval``.

    Carriers with ``options_interval`` unset are not probed (assumed up).
    """
    health = CarrierHealth(
        failure_threshold=failure_threshold, success_threshold=success_threshold, timeout=timeout
    )
    for carrier in settings.carriers:
        if carrier.options_interval is not None:
            health.add(carrier.name, now=now, interval=carrier.options_interval)
    return health
