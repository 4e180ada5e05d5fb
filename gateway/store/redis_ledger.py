"""Write-ahead usage counting in Redis, shared by several gateway instances.

:class:`RedisLedger` implements :class:`gateway.store.UsageLedger` and the
policies' ``CardUsageView`` with the same meaning as the SQLite store: a
reservation is committed before the INVITE leaves, ``release`` undoes it when
the attempt failed before the callee was alerted, ``finish`` records the
outcome, ``recover`` turns this node's reservations left open by a crash into
orphans (still counted as starts, no longer in use).

Atomic check-and-reserve. ``reserve(profile=...)`` reads the card's usage under
``WATCH`` on the card's keys, evaluates ``policies.quotas.would_exceed`` and
writes in ``MULTI``/``EXEC``; if another instance touched the card in between,
Redis aborts the transaction and the whole check is repeated (optimistic
concurrency: correct with any number of instances, bounded retries).

Keys (``{prefix}`` defaults to ``dialgate``)::

    {prefix}:card:{card}:starts    ZSET  call_id → start time (counted starts)
    {prefix}:card:{card}:meta      HASH  call_id → [callee, talk_seconds]
    {prefix}:card:{card}:inuse     HASH  call_id → node (open reservations)
    {prefix}:card:{card}:outcomes  LIST  newest first: [start, answered, talk, failed, end]
    {prefix}:call:{call_id}        HASH  the call's open reservation (card, callee, start, node)
    {prefix}:call:{call_id}:tried  SET   cards this call already used

Durability is Redis's (AOF ``appendfsync everysec`` loses at most a second on
a host crash; a gateway crash loses nothing). Failure mode: fail closed — any
Redis error is raised as :class:`gateway.store.StoreUnavailable`.

This module must never read a clock, never log a callee number, and needs the
optional ``redis`` package (imported only here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError
from redis.retry import Retry

from gateway.store.sqlite import QuotaExceeded, ReservationError, StoreUnavailable
from policies.quotas import CallOutcome, CardUsage, QuotaProfile, would_exceed
from policies.timeutil import day_bounds

__all__ = ["RedisLedger", "connect", "connect_service_url"]


def connect(url: str, *, timeout: float = 0.25) -> redis.Redis:
    """A synchronous client for the ledger: short timeouts and no retries.

    The gateway calls the ledger from its event loop and must answer 503
    ``store-unavailable`` quickly when Redis is gone, so the client neither
    retries nor waits long (redis-py's defaults retry with backoff for seconds).
    ``url`` is ``redis://host:port/db`` or ``unix:///path/to.sock``.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
    )


def connect_service_url(url: Any, *, timeout: float = 0.25) -> redis.Redis:
    """Like :func:`connect`, from the config's ``ServiceUrl`` (password kept secret).

    ``url`` has ``scheme`` (redis/rediss), ``ip``, ``port``, ``username``,
    ``password`` (a ``SecretStr``) and ``path`` (``/db``).
    """
    if url.scheme == "unix":
        return redis.Redis(
            unix_socket_path=url.path,
            password=url.password.get_secret_value() if url.password is not None else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )
    db = url.path.strip("/")
    return redis.Redis(
        host=url.ip,
        port=url.port or 6379,
        db=int(db) if db.isdigit() else 0,
        username=url.username,
        password=url.password.get_secret_value() if url.password is not None else None,
        ssl=url.scheme == "rediss",
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
    )


class RedisLedger:
    """Usage ledger over one Redis server, for gateway instances sharing cards.

    ``card_carriers`` maps card → carrier and ``carrier_timezones`` carrier →
    IANA zone (the carrier's day for daily counters; UTC when unknown).
    ``node`` names this gateway instance: :meth:`recover` only touches its own
    reservations. ``history_seconds`` bounds how long per-call keys live.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        node: str,
        prefix: str = "dialgate",
        card_carriers: Mapping[str, str] | None = None,
        carrier_timezones: Mapping[str, str] | None = None,
        short_call_seconds: float = 10.0,
        outcome_window: int = 50,
        history_seconds: float = 8 * 86400.0,
        max_retries: int = 50,
    ) -> None:
        # redis-py's stubs type every call as "result or awaitable" (one client class for
        # sync and async); this ledger only uses the synchronous client.
        self.client: Any = client
        self.node = node
        self.prefix = prefix
        self.card_carriers = dict(card_carriers or {})
        self.carrier_timezones = dict(carrier_timezones or {})
        self.short_call_seconds = short_call_seconds
        self.outcome_window = outcome_window
        self.history_seconds = history_seconds
        self.max_retries = max_retries

    # --- keys -----------------------------------------------------------------------

    def _k(self, card: str, what: str) -> str:
        return f"{self.prefix}:card:{card}:{what}"

    def _call(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    def _timezone(self, card: str) -> str:
        carrier = self.card_carriers.get(card)
        return self.carrier_timezones.get(carrier, "UTC") if carrier else "UTC"

    # --- reads ----------------------------------------------------------------------

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """``policies.quotas.CardUsage`` of the card at ``now`` (the ``CardUsageView`` API)."""
        with self._guard():
            return self._read_usage(self.client, card_id, now)

    def _read_usage(self, conn: Any, card: str, now: float) -> CardUsage:
        start, _ = day_bounds(now, self._timezone(card))
        lower = min(start, now - 3600.0)
        rows: list[tuple[bytes, float]] = conn.zrangebyscore(
            self._k(card, "starts"), lower, "+inf", withscores=True
        )
        today = [call_id for call_id, t in rows if t >= start]
        metas = conn.hmget(self._k(card, "meta"), today) if today else []
        callees: set[str] = set()
        talk = 0.0
        for raw in metas:
            if raw is None:
                continue
            callee, seconds = json.loads(raw)
            callees.add(callee)
            talk += float(seconds)
        in_use = int(conn.hlen(self._k(card, "inuse")))
        outs = conn.lrange(self._k(card, "outcomes"), 0, self.outcome_window - 1)
        outcomes = []
        for raw in reversed(outs):
            started, answered, seconds, failed, ended = json.loads(raw)
            outcomes.append(
                CallOutcome(
                    started_at=float(started),
                    answered=bool(answered),
                    talk_seconds=float(seconds),
                    failed=bool(failed),
                    ended_at=ended,
                )
            )
        return CardUsage(
            call_starts=tuple(t for _, t in rows),
            callees_today=frozenset(callees),
            talk_seconds_today=talk,
            in_use=in_use,
            recent_outcomes=tuple(outcomes),
        )

    def open_reservations(self) -> list[tuple[str, str]]:
        """``(call_id, card)`` of every open reservation (all nodes), by call id."""
        out: list[tuple[str, str]] = []
        with self._guard():
            for key in self.client.scan_iter(match=self._k("*", "inuse")):
                card = key.decode().removeprefix(f"{self.prefix}:card:").removesuffix(":inuse")
                out.extend((c.decode(), card) for c in self.client.hkeys(key))
        return sorted(out)

    # --- writes ---------------------------------------------------------------------

    def reserve(
        self,
        card: str,
        call_id: str,
        callee: str,
        now: float,
        *,
        profile: QuotaProfile | None = None,
        admit: Callable[[CardUsage], None] | None = None,
        agent: str = "",
    ) -> None:
        """Commit a call start on ``card``; atomic with the quota check (WATCH/MULTI).

        Raises :class:`QuotaExceeded` (nothing written) when ``profile`` would be
        broken, :class:`ReservationError` when the call already holds a
        reservation or already tried this card.
        """
        call_key = self._call(call_id)
        tried_key = f"{call_key}:tried"
        watched = [self._k(card, w) for w in ("starts", "inuse", "outcomes", "meta")]
        with self._guard():
            for _ in range(self.max_retries):
                with self.client.pipeline() as pipe:
                    try:
                        pipe.watch(*watched, call_key, tried_key)
                        held = pipe.hget(call_key, "card")
                        if held is not None:
                            raise ReservationError(
                                f"call {call_id!r} already holds a reservation on {held.decode()!r}"
                            )
                        if pipe.sismember(tried_key, card):
                            raise ReservationError(f"call {call_id!r} already tried card {card!r}")
                        if profile is not None or admit is not None:
                            usage = self._read_usage(pipe, card, now)
                            if profile is not None:
                                tz = self._timezone(card)
                                exhausted = would_exceed(profile, usage, tz, callee, now)
                                if exhausted is not None:
                                    raise QuotaExceeded(card, exhausted)
                            if admit is not None:
                                admit(usage)
                        ttl = int(self.history_seconds)
                        pipe.multi()
                        pipe.zadd(self._k(card, "starts"), {call_id: now})
                        pipe.hset(self._k(card, "meta"), call_id, json.dumps([callee, 0.0]))
                        pipe.hset(self._k(card, "inuse"), call_id, self.node)
                        pipe.hset(
                            call_key,
                            mapping={
                                "card": card,
                                "callee": callee,
                                "started_at": repr(now),
                                "node": self.node,
                                "agent": agent,
                            },
                        )
                        pipe.expire(call_key, ttl)
                        pipe.sadd(tried_key, card)
                        pipe.expire(tried_key, ttl)
                        pipe.execute()
                        return
                    except WatchError:
                        continue
        raise StoreUnavailable(f"reservation on {card} lost {self.max_retries} races in a row")

    def _close(
        self,
        call_id: str,
        outcome: Callable[[str, float], list[Any] | None],
        meta: Callable[[str], str | None],
        *,
        counted: bool,
    ) -> str | None:
        """Close the call's open reservation atomically; return its card."""
        call_key = self._call(call_id)
        with self._guard():
            for _ in range(self.max_retries):
                with self.client.pipeline() as pipe:
                    try:
                        pipe.watch(call_key)
                        fields = pipe.hgetall(call_key)
                        if not fields:
                            return None
                        card = fields[b"card"].decode()
                        callee = fields[b"callee"].decode()
                        started = float(fields[b"started_at"])
                        pipe.multi()
                        pipe.hdel(self._k(card, "inuse"), call_id)
                        if counted:
                            new_meta = meta(callee)
                            if new_meta is not None:
                                pipe.hset(self._k(card, "meta"), call_id, new_meta)
                        else:
                            pipe.zrem(self._k(card, "starts"), call_id)
                            pipe.hdel(self._k(card, "meta"), call_id)
                        record = outcome(card, started)
                        if record is not None:
                            key = self._k(card, "outcomes")
                            pipe.lpush(key, json.dumps(record))
                            pipe.ltrim(key, 0, max(self.outcome_window, 200) - 1)
                        pipe.delete(call_key)
                        pipe.execute()
                        return str(card)
                    except WatchError:
                        continue
        raise StoreUnavailable(f"closing call {call_id} lost {self.max_retries} races in a row")

    def release(self, call_id: str, now: float, *, failed: bool = True) -> str | None:
        """Undo the call's open reservation (failed before the callee was alerted).

        The start stops counting; with ``failed`` it still feeds the card's
        consecutive-failures streak. Returns the card, or None if nothing was open.
        """
        return self._close(
            call_id,
            lambda _card, started: [started, 0, 0.0, 1, now] if failed else None,
            lambda _callee: None,
            counted=False,
        )

    def finish(
        self,
        call_id: str,
        now: float,
        *,
        answered: bool,
        talk_seconds: float = 0.0,
        short: bool | None = None,
        failed: bool = False,
        answered_at: float | None = None,
    ) -> str | None:
        """Record the outcome of the call's open reservation; return its card."""
        talk = float(talk_seconds) if answered else 0.0
        return self._close(
            call_id,
            lambda _card, started: [started, int(answered), talk, int(failed), now],
            lambda callee: json.dumps([callee, talk]),
            counted=True,
        )

    def recover(self, now: float) -> int:
        """This node's reservations left open by a crash become orphaned starts."""
        count = 0
        with self._guard():
            for key in self.client.scan_iter(match=self._k("*", "inuse")):
                for call_id, node in self.client.hgetall(key).items():
                    if node.decode() != self.node:
                        continue
                    closed = self._close(
                        call_id.decode(),
                        lambda _card, started: [started, 0, 0.0, 0, now],
                        lambda _callee: None,
                        counted=True,
                    )
                    count += closed is not None
        return count

    def prune(self, before: float) -> int:
        """Drop closed starts older than ``before`` (open reservations are kept)."""
        removed = 0
        with self._guard():
            for key in self.client.scan_iter(match=self._k("*", "starts")):
                card = key.decode().removeprefix(f"{self.prefix}:card:").removesuffix(":starts")
                old = [
                    c
                    for c in self.client.zrangebyscore(key, "-inf", f"({before}")
                    if not self.client.hexists(self._k(card, "inuse"), c)
                ]
                if old:
                    pipe = self.client.pipeline()
                    pipe.zrem(key, *old)
                    pipe.hdel(self._k(card, "meta"), *old)
                    pipe.execute()
                    removed += len(old)
        return removed
