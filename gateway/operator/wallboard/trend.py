"""The wallboard's trend: calls per minute and answer rate per minute over the last hour.

Built from the retained ``stats`` messages alone (cumulative ``attempts``,
``answered``, ``ended`` and their ``at``): each message is put in the
minute of its ``at``; a minute's calls are the attempts counted since the
previous minute seen, its ASR the answered share of the calls that ended in
it (None when none ended). A counter that went down (the gateway restarted)
starts again from 0. Pure: no clock, no I/O; at most ``minutes`` + 1 buckets.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

__all__ = ["Trend"]


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Trend:
    """Per-minute calls and ASR of the last ``minutes`` minutes (see the module docstring)."""

    def __init__(self, minutes: int = 60) -> None:
        self.minutes = minutes
        # minute → the last (attempts, answered, ended) seen in it, oldest first.
        self._last: OrderedDict[int, tuple[int, int, int]] = OrderedDict()

    def add(self, stats: dict[str, Any]) -> bool:
        """Take one stats message; False when it carries no usable time or counters."""
        at = _epoch(stats.get("at"))
        counts = tuple(_count(stats.get(k)) for k in ("attempts", "answered", "ended"))
        if at is None or any(c is None for c in counts):
            return False
        minute = int(at // 60)
        if self._last and minute < next(reversed(self._last)):
            return False  # out of order: an older message (a reconnect's retained copy)
        self._last[minute] = counts  # type: ignore[assignment]
        self._last.move_to_end(minute)
        while len(self._last) > self.minutes + 1 or (
            self._last and next(iter(self._last)) <= minute - self.minutes - 1
        ):
            self._last.popitem(last=False)
        return True

    def points(self) -> list[dict[str, Any]]:
        """``[{"t": ISO minute, "calls": n, "asr": 0..1 | None}]``, oldest first."""
        out: list[dict[str, Any]] = []
        previous: tuple[int, int, int] | None = None
        for minute, counts in self._last.items():
            if previous is not None:
                if any(c < p for c, p in zip(counts, previous, strict=True)):
                    previous = (0, 0, 0)  # the gateway restarted: its counters did too
                calls, answered, ended = (c - p for c, p in zip(counts, previous, strict=True))
                t = datetime.fromtimestamp(minute * 60, UTC).isoformat().replace("+00:00", "Z")
                out.append(
                    {"t": t, "calls": calls, "asr": round(answered / ended, 3) if ended else None}
                )
            previous = counts
        return out
