"""How many new calls to turn away while the gateway is behind its traffic (sans-IO).

The signal is the backlog the kernel holds unread for the UDP listeners (bytes, see
:func:`gateway.transport.udp.queued_bytes`), sampled every
``gateway.callpath.element.OVERLOAD_INTERVAL``. The answer is a **share** of the new
outbound INVITEs to refuse (``503`` + ``Retry-After`` before the digest), in the
manner of RFC 7339's loss-based overload control: a fraction of the new work is
shed, the rest is served.

* The backlog judged is the smallest of the last :data:`WINDOW` samples (0.3 s): a
  standing queue, not a burst the gateway drains by itself (a collection, a commit,
  a few calls arriving together), as CoDel judges the minimum delay over an interval.
  At 300 calls/s on the test box, judging the last sample alone turned away 0.2-5 %
  of the calls of runs the gateway carried.
* Below ``limit / 4`` nothing is refused; at ``limit`` and above, everything new is.
  In between the share grows in proportion to the backlog, so a gateway offered a
  little more than it can carry settles in that band refusing a part of the calls,
  instead of swinging between taking every call and refusing every call (the first
  version: at 400 CPS offered, 0.2-0.4 s episodes that refused the whole queue,
  ~190 calls/s where ~70 were too many).
* A rise applies at once (a backlog grows by hundreds of datagrams per sample);
  a fall only by :data:`RELEASE` per sample, so the calls let back in do not
  rebuild the backlog they just caused — unless nothing at all waited over the
  window: then the share halves per sample (below :data:`FLOOR` it is 0), since
  the gateway is idle part of the time while it still turns calls away.

An **episode** runs from the first sample with a share above 0 to the first with 0.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FLOOR", "RELEASE", "WINDOW", "Episode", "OverloadControl"]

#: The share falls by at most this much per sample (0.1 s): from all to none in 2 s.
RELEASE = 0.05

#: Samples whose smallest backlog is judged (0.3 s at one sample per 0.1 s).
WINDOW = 3

#: A share that halves below this is 0 (the episode is over).
FLOOR = 0.02


@dataclass(slots=True)
class Episode:
    """What one episode did (for its log lines)."""

    started_at: float
    peak_share: float = 0.0
    peak_queued: int = 0
    refused: int = 0


class OverloadControl:
    """The share of new calls refused, from the listeners' backlog.

    ``limit``: bytes queued at which every new call is refused (0: off).
    ``draw``: a number in [0, 1) per new call (``random.random``; tests pass their own).
    """

    def __init__(self, limit: int, *, draw: Callable[[], float] = random.random) -> None:
        self.limit = limit
        self.share = 0.0
        self.episode: Episode | None = None
        self.episodes = 0
        self.refused = 0
        self._draw = draw
        self._recent: deque[int] = deque(maxlen=WINDOW)

    def fit(self, room: int) -> bool:
        """Lower the limit to ``room`` bytes when it is above (0: unknown, no change);
        whether it was lowered. The kernel drops datagrams once a socket's receive
        buffer is full, so a backlog never grows past it."""
        if 0 < room < self.limit:
            self.limit = room
            return True
        return False

    def target(self, queued: int) -> float:
        """The share a backlog of ``queued`` bytes asks for, before the release rate."""
        low = self.limit / 4
        if queued <= low:
            return 0.0
        if queued >= self.limit:
            return 1.0
        return (queued - low) / (self.limit - low)

    def sample(self, queued: int | None, now: float) -> tuple[Episode | None, Episode | None]:
        """Take one sample (``None``: the backlog is unknown, nothing changes); returns
        the episode that started and the one that ended with it (each None if none)."""
        if self.limit <= 0 or queued is None:
            return None, None
        self._recent.append(queued)
        standing = min(self._recent) if len(self._recent) == WINDOW else 0
        wanted = self.target(standing)
        if wanted >= self.share:
            self.share = wanted
        elif standing == 0:  # nothing waited over the window: the gateway idles
            self.share = self.share / 2 if self.share / 2 >= FLOOR else 0.0
        else:
            self.share = max(wanted, self.share - RELEASE)
        started = ended = None
        if self.share > 0.0 and self.episode is None:
            started = self.episode = Episode(started_at=now)
            self.episodes += 1
        episode = self.episode
        if episode is not None:
            episode.peak_share = max(episode.peak_share, self.share)
            episode.peak_queued = max(episode.peak_queued, queued)
            if self.share == 0.0:
                ended, self.episode = episode, None
        return started, ended

    def refuse(self) -> bool:
        """Whether to turn this new call away (counted when so)."""
        share = self.share
        if share <= 0.0 or (share < 1.0 and self._draw() >= share):
            return False
        self.refused += 1
        if self.episode is not None:
            self.episode.refused += 1
        return True
