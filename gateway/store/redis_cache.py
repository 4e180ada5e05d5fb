"""This node's copy of the card usage it read from Redis, dropped when another node writes.

Every write script of :mod:`gateway.store.redis` (reserve, release/finish,
orphan, rehydrate) bumps the card's version (``meta ver``), PUBLISHes the new
version, the card and what changed on ``{prefix}:usage``, and returns the
card's snapshot as of after the write; a read returns it too.
:class:`UsageCache` keeps the newest snapshot per card and serves it to card
selection and the operator's views instead of a round trip. Another node's
write that directly follows the copy's version is applied to it (``apply``:
the change is in the message — a start, a callee, an outcome, the day's talk),
so a card every node uses at once still costs no read; any other change drops
the copy. A copy is served while all of this holds:

- the subscription is live: confirmed before any entry was kept, and the PING
  sent at the last :meth:`UsageCache.keepalive` (every 2 s) was answered by
  the next one;
- no message announced a newer version of the card than the entry's that
  could not be applied (messages are read, without blocking, before every
  lookup; a message older than the entry is this node's own write or was
  already in the snapshot);
- the card's carrier day is the one the entry was read for;
- the entry holds no rehydration slots (their count falls with time);
- it is at most ``max_age`` seconds old (a safety net, not the mechanism).

Anything unexpected — the subscription's connection fails, a PING goes
unanswered, a message does not parse — drops every entry, and lookups go to
Redis until a new subscription is confirmed (retried at most once a second).
So the cache is never staler than the time a PUBLISH takes to arrive, which is
the same window a read followed by a reservation always had. Limits are never
decided here: the reservation script re-checks them atomically.

This module reads the monotonic clock for the subscription's liveness and the
entries' age only (connection health, not call time). It must never decide a
quota, hold anything but snapshots, or block: a lookup does one non-blocking
read of the subscription socket.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError

__all__ = ["UsageCache"]

log = structlog.get_logger("gateway.store.redis")


@dataclass(slots=True)
class _Entry:
    snapshot: Any
    version: int
    day_start: float
    read_at: float  # monotonic


class UsageCache:
    """Card usage snapshots kept while no other node changed the card (see the module).

    ``client`` is the store's redis-py client (its pool gives the subscription
    its own connection); ``channel`` the ``{prefix}:usage`` channel the write
    scripts publish on.
    """

    def __init__(
        self,
        client: Any,
        channel: str,
        *,
        max_age: float = 30.0,
        retry_seconds: float = 1.0,
        apply: Callable[[Any, float, int, list[bytes]], Any] | None = None,
    ) -> None:
        self.client = client
        self.apply = apply
        self.channel = channel
        self.max_age = max_age
        self.retry_seconds = retry_seconds
        self.enabled = True
        self._entries: dict[str, _Entry] = {}
        self._seen: dict[str, int] = {}  # card → newest version a message announced
        self._pubsub: Any = None
        self._retry_at = 0.0
        self._ping_at: float | None = None  # a PING waiting for its PONG
        self._reconnected = False
        self._epoch = 0
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.applied = 0
        self.own = 0  # this node's own writes applied to its copy (no read)
        self.resets = 0

    # --- the subscription ---------------------------------------------------------

    @property
    def live(self) -> bool:
        """Whether the subscription is confirmed (entries may be served)."""
        return self._pubsub is not None

    def _subscribe(self) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self.retry_seconds
        pubsub = None
        try:
            pubsub = self.client.pubsub()
            pubsub.subscribe(self.channel)
            # why: an entry read before Redis registered the subscription could miss
            # the message that makes it stale; wait for the confirmation first.
            reply = pubsub.get_message(timeout=0.25)
            if not reply or reply.get("type") != "subscribe":
                raise RedisError("subscription not confirmed")
        except (RedisError, OSError) as exc:
            if pubsub is not None:
                self._close(pubsub)
            log.info("redis.usage_cache.unsubscribed", error=str(exc))
            return False
        # why: redis-py reconnects a dropped subscription by itself on the next read,
        # and what was published meanwhile is lost: a reconnection must drop the copies.
        self._reconnected = False
        pubsub.connection.register_connect_callback(self._on_connect)
        self._pubsub = pubsub
        self._ping_at = None
        self._epoch += 1
        return True

    def _on_connect(self, connection: Any) -> None:
        self._reconnected = True

    @staticmethod
    def _close(pubsub: Any) -> None:
        with contextlib.suppress(RedisError, OSError):
            pubsub.close()

    def reset(self, why: str = "") -> None:
        """Drop every entry and the subscription (resubscribed by a later lookup)."""
        self._entries.clear()
        self._seen.clear()
        if self._pubsub is not None:
            self._close(self._pubsub)
            self._pubsub = None
            self.resets += 1
            if why:
                log.info("redis.usage_cache.reset", why=why)
        self._ping_at = None

    def _drain(self) -> bool:
        """Apply every message already received; False (and reset) when the subscription failed."""
        pubsub = self._pubsub
        try:
            while True:
                msg = pubsub.get_message(timeout=0)
                if self._reconnected:
                    raise RedisError("subscription reconnected")
                if msg is None:
                    return True
                kind = msg.get("type")
                if kind == "message":
                    fields = msg["data"].split(b"\x1f")
                    if len(fields) < 3:
                        raise ValueError(f"bad usage message {msg['data'][:40]!r}")
                    self._announce(fields[-1].decode(), int(fields[0]), fields[1:-1])
                elif kind == "pong":
                    self._ping_at = None
        except (RedisError, OSError, ValueError) as exc:
            self.reset(f"{type(exc).__name__}: {exc}")
            return False

    def _announce(self, card: str, version: int, delta: list[bytes]) -> None:
        if version > self._seen.get(card, -1):
            self._seen[card] = version
        entry = self._entries.get(card)
        if entry is None or entry.version >= version:
            return  # nothing kept, or this node's own write (already in the copy)
        # why: the next write of the card is one the copy can follow: applying it
        # spares the next lookup a read (a card used by every node at once).
        if self._follow(entry, version, delta):
            self.applied += 1
            return
        del self._entries[card]
        self.invalidations += 1

    def keepalive(self) -> None:
        """Check the last PING was answered and send the next (the 2 s sync calls this).

        A PING still unanswered after a second means the connection is gone
        without an error (a frozen server, a dropped path): reset.
        """
        if not self.enabled:
            return
        if self._pubsub is None:
            self._subscribe()
            return
        if not self._drain():
            return
        now = time.monotonic()
        if self._ping_at is not None:
            if now - self._ping_at > 1.0:
                self.reset("no PONG")
            return
        try:
            self._pubsub.ping()
            if self._reconnected:
                raise RedisError("subscription reconnected")
        except (RedisError, OSError) as exc:
            self.reset(f"{type(exc).__name__}: {exc}")
            return
        self._ping_at = now

    # --- entries --------------------------------------------------------------------

    def get(self, card: str, day_start: float) -> Any:
        """The card's snapshot if it is still current (see the module), else None."""
        if not self.enabled:
            return None
        if self._pubsub is None and not self._subscribe():
            self.misses += 1
            return None
        if not self._drain():
            self.misses += 1
            return None
        entry = self._entries.get(card)
        if entry is None:
            self.misses += 1
            return None
        if entry.day_start != day_start or time.monotonic() - entry.read_at > self.max_age:
            del self._entries[card]
            self.misses += 1
            return None
        self.hits += 1
        return entry.snapshot

    def put(self, card: str, snapshot: Any, version: int, day_start: float) -> None:
        """Keep what a script returned (read or written) at ``version``, unless already stale.

        Called right after the reply arrived; only kept when the subscription
        was live before the script ran (``epoch`` unchanged is not enough: the
        caller drains first via :meth:`ready`).
        """
        if self._pubsub is None:
            return
        if version < self._seen.get(card, -1):
            return  # a newer write was announced already
        current = self._entries.get(card)
        if current is not None and current.version > version:
            return
        self._entries[card] = _Entry(snapshot, version, day_start, time.monotonic())

    def current(self, card: str, day_start: float) -> int | None:
        """The version of the card's copy for that carrier day, or None (nothing counted)."""
        entry = self._entries.get(card)
        if entry is None or entry.day_start != day_start:
            return None
        return entry.version

    def advance(self, card: str, version: int, delta: list[bytes], day_start: float) -> bool:
        """This node's own write, which Redis says came right after the copy: applied to
        the copy as another node's announcement would be (``apply``). False when it cannot
        be; the caller then forgets the card."""
        entry = self._entries.get(card)
        if (
            self._pubsub is None
            or entry is None
            or entry.day_start != day_start
            or version < self._seen.get(card, -1)
            or not self._follow(entry, version, delta)
        ):
            return False
        entry.read_at = time.monotonic()  # Redis confirmed the copy was current
        self.own += 1
        return True

    def _follow(self, entry: _Entry, version: int, delta: list[bytes]) -> bool:
        """Apply the write that made ``version`` to the copy, if it is the next one and
        ``apply`` can follow it; whether it did."""
        if entry.version != version - 1 or self.apply is None:
            return False
        updated = self.apply(entry.snapshot, entry.day_start, version, delta)
        if updated is None:
            return False
        entry.snapshot = updated
        entry.version = version
        return True

    def forget(self, card: str) -> None:
        """Drop the card's entry (its keys were changed in a way no snapshot shows)."""
        self._entries.pop(card, None)

    def ready(self) -> int | None:
        """Before a script whose reply may be kept: the subscription epoch, or None."""
        if not self.enabled:
            return None
        if self._pubsub is None and not self._subscribe():
            return None
        return self._epoch if self._drain() else None

    def still(self, epoch: int | None) -> bool:
        """Whether the subscription ``ready`` returned is the one still live."""
        return epoch is not None and self._pubsub is not None and self._epoch == epoch

    def close(self) -> None:
        """Unsubscribe and drop everything."""
        self.enabled = False
        self.reset()

    def stats(self) -> dict[str, int]:
        """Hits, misses, invalidations, resets, entries (for the bench and tests)."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "invalidations": self.invalidations,
            "applied": self.applied,
            "own": self.own,
            "resets": self.resets,
            "entries": len(self._entries),
            "live": int(self.live),
        }
