"""The MQTT edge: bus events → DESIGN.md topics on a broker, surviving broker outages.

What this module is for:

* :class:`Topics` / :func:`route`: which topic, QoS and retain flag each event
  gets (``{root}/gateway/{node}/status`` retained QoS 1, ``{root}/cards/{card}/state``
  retained QoS 1, ``{root}/stats`` retained QoS 0, ``{root}/calls/{event}`` QoS 0,
  ``{root}/alerts`` QoS 1);
* :class:`MqttPublisher`: a bus subscriber whose ``offer(event)`` only files the
  message (never awaits), and a task that publishes with aiomqtt 2.x. aiomqtt does
  not reconnect by itself, so the task reconnects with capped, jittered
  exponential backoff; it keeps the latest message of every retained topic and
  republishes all of them after each (re)connect; non-retained messages wait in a
  bounded queue that drops the oldest first (drops are counted per topic kind —
  ``status``, ``cards``, ``stats``, ``calls``, ``alerts`` — logged once per outage
  with the per-kind totals, and shown in stats and metrics); a retained update
  replaced by a newer one before it was sent is counted as *coalesced*, not
  dropped (the broker only ever needs the latest); a message taken from the
  queue when the connection breaks is put back.
* :class:`Backoff`: the reconnect delays — exponential from ``initial`` up to a
  cap of 1 s by default, each jittered to 50–100 % so a fleet does not reconnect
  in step: a returning broker is used within about a second, and a broker that
  stays away costs one connection attempt every 0.5–1 s, never a tight loop.

The broker holds the last will (``offline``, retained) on the status topic; a
clean :meth:`MqttPublisher.stop` publishes ``offline`` itself before
disconnecting. Every ``stats_interval`` seconds the stats source is sampled and
published (retained).

What it must never do: block or fail a call because the broker is slow or gone
(``offer`` is synchronous and O(1)), log the broker password (URLs are logged
through ``ServiceUrl.__str__``, which masks it), or grow without bound while the
broker is away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiomqtt
import structlog

from gateway import __version__
from gateway.telemetry.events import (
    AgentState,
    Alert,
    CallEvent,
    CardStatus,
    Event,
    EventBus,
    GatewayStatus,
    PoolCapacityStatus,
    Stats,
    render_json,
)

if TYPE_CHECKING:
    from gateway.config import MqttSettings, Settings

__all__ = [
    "KINDS",
    "Backoff",
    "MqttPublisher",
    "Outgoing",
    "Topics",
    "event_kind",
    "route",
    "topic_segment",
]

log = structlog.get_logger("gateway.telemetry.mqtt")


def topic_segment(name: str) -> str:
    """``name`` made safe as one topic level (``/``, ``+``, ``#``, NUL become ``_``)."""
    cleaned = "".join("_" if ch in "/+#\x00" else ch for ch in name)
    return cleaned or "_"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of DESIGN.md "MQTT events" under one root, for one node."""

    root: str
    node: str

    @property
    def status(self) -> str:
        """``{root}/gateway/{node}/status``."""
        return f"{self.root}/gateway/{topic_segment(self.node)}/status"

    def card(self, card: str) -> str:
        """``{root}/cards/{card}/state``."""
        return f"{self.root}/cards/{topic_segment(card)}/state"

    @property
    def stats(self) -> str:
        """``{root}/stats``."""
        return f"{self.root}/stats"

    def calls(self, event: str) -> str:
        """``{root}/calls/{event}``."""
        return f"{self.root}/calls/{topic_segment(event)}"

    @property
    def alerts(self) -> str:
        """``{root}/alerts``."""
        return f"{self.root}/alerts"

    def agent(self, agent: str) -> str:
        """``{root}/agents/{agent}/state``."""
        return f"{self.root}/agents/{topic_segment(agent)}/state"

    def pool_capacity(self, pool: str) -> str:
        """``{root}/pools/{pool}/capacity``."""
        return f"{self.root}/pools/{topic_segment(pool)}/capacity"


#: The topic kinds drops and coalescing are counted by (a ``kind`` metric label).
KINDS = ("status", "cards", "stats", "calls", "alerts", "pools", "agents")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for the broker; ``kind`` is one of :data:`KINDS`."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str = ""


def event_kind(event: Event) -> str:
    """The topic kind (one of :data:`KINDS`) ``event`` is published under."""
    if isinstance(event, GatewayStatus):
        return "status"
    if isinstance(event, CardStatus):
        return "cards"
    if isinstance(event, Stats):
        return "stats"
    if isinstance(event, CallEvent):
        return "calls"
    if isinstance(event, Alert):
        return "alerts"
    if isinstance(event, PoolCapacityStatus):
        return "pools"
    if isinstance(event, AgentState):
        return "agents"
    raise TypeError(f"not an event: {type(event).__name__}")


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``cap``, each jittered to 50–100 %.

    ``next()`` returns the wait before the next attempt, ``reset()`` after a
    successful connection. The jitter keeps a fleet of gateways from reconnecting
    in step; the cap bounds how long a returning broker goes unused (the issue-19
    drill saw 17 s with a 30 s cap); ``initial`` > 0 keeps it from ever spinning.
    """

    def __init__(
        self, initial: float = 0.2, cap: float = 1.0, *, rng: Callable[[], float] = random.random
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self._rng = rng
        self._delay = initial

    def next(self) -> float:
        """The wait before the next attempt (then the base delay doubles, up to the cap)."""
        wait = self._delay * (0.5 + self._rng() / 2)
        self._delay = min(self._delay * 2, self.cap)
        return wait

    def reset(self) -> None:
        """Back to ``initial`` (after a connection succeeded)."""
        self._delay = self.initial


def route(event: Event, topics: Topics, *, mask_numbers: bool = True) -> Outgoing:
    """Topic, QoS, retain flag and JSON payload of ``event``."""
    payload = render_json(event, mask_numbers=mask_numbers)
    if isinstance(event, GatewayStatus):
        return Outgoing(topics.status, payload, 1, True, "status")
    if isinstance(event, CardStatus):
        return Outgoing(topics.card(event.card), payload, 1, True, "cards")
    if isinstance(event, Stats):
        return Outgoing(topics.stats, payload, 0, True, "stats")
    if isinstance(event, CallEvent):
        return Outgoing(topics.calls(event.kind.value), payload, 0, False, "calls")
    if isinstance(event, Alert):
        return Outgoing(topics.alerts, payload, 1, False, "alerts")
    if isinstance(event, PoolCapacityStatus):
        return Outgoing(topics.pool_capacity(event.pool), payload, 1, True, "pools")
    if isinstance(event, AgentState):
        return Outgoing(topics.agent(event.agent), payload, 1, True, "agents")
    raise TypeError(f"not an event: {type(event).__name__}")


class _Disconnected(Exception):
    """The connection broke while we were waiting on it."""


class MqttPublisher:
    """Publishes bus events to the broker of ``[mqtt]``; see the module docstring.

    Use: ``pub = MqttPublisher.from_settings(settings, stats_source=...)``,
    ``bus.subscribe(pub)``, ``await pub.start()``, … ``await pub.stop()``.
    ``stats_source`` returns the current :class:`Stats` (e.g.
    ``CallStats.snapshot``); the publisher adds its own counters under ``"mqtt"``.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        mask_numbers: bool = True,
        version: str = __version__,
        started_at: float | None = None,
        clock: Callable[[], float] = time.time,
        stats_source: Callable[..., Stats] | None = None,
        queue_limit: int = 1000,
        backoff_initial: float = 0.2,
        backoff_max: float = 1.0,
        publish_timeout: float = 10.0,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")
        self.settings = settings
        self.topics = Topics(settings.root, settings.node)
        self.mask_numbers = mask_numbers
        self.version = version
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.stats_source = stats_source
        self.queue_limit = queue_limit
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._backoff = Backoff(backoff_initial, backoff_max)
        self.publish_timeout = publish_timeout
        # Latest message of every retained topic, and the ones still to send.
        self._retained: dict[str, Outgoing] = {}
        self._dirty: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_card: dict[str, CardStatus] = {}
        # Non-retained events wait unrendered: JSON is built when the message is
        # sent, off the call path (and never for events dropped in an outage).
        self._queue: collections.deque[CallEvent | Alert | Outgoing] = collections.deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected_once = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.connected = False
        self.published = 0
        self.dropped = 0
        self.dropped_by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.coalesced_by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.reconnects = 0
        self.connect_failures = 0
        self._dropped_this_outage = 0
        self._outage_drops: dict[str, int] = {}
        self._lost_at: float | None = None
        #: Seconds from the loss (or the first failed attempt) to the next connection.
        self.last_outage_seconds: float | None = None
        self.offer(self._status(online=True))

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> MqttPublisher:
        """A publisher for ``settings.mqtt`` honouring ``policy.mask_numbers``.

        Raises ValueError when the configuration has no ``[mqtt]`` table.
        """
        if settings.mqtt is None:
            raise ValueError("no [mqtt] section configured")
        kwargs.setdefault("mask_numbers", settings.policy.mask_numbers)
        return cls(settings.mqtt, **kwargs)

    # --- the synchronous side (called by the bus) -------------------------------------

    def __call__(self, event: Event) -> None:
        """Bus subscriber: same as :meth:`offer`."""
        self.offer(event)

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Subscribe to ``bus``; return the unsubscribe function."""
        return bus.subscribe(self.offer)

    def offer(self, event: Event) -> None:
        """File ``event`` for publishing; O(1), never awaits, never raises on a full queue."""
        if isinstance(event, CallEvent | Alert):
            self._queue.append(event)
            while len(self._queue) > self.queue_limit:
                self._count_drop(self._queue.popleft())
        else:
            if isinstance(event, CardStatus):
                # A periodic refresh of an unchanged card is not republished.
                unchanged = dataclasses.replace(event, at=0.0)
                if self._last_card.get(event.card) == unchanged:
                    return
                self._last_card[event.card] = unchanged
            message = route(event, self.topics, mask_numbers=self.mask_numbers)
            if message.topic in self._dirty:
                # The unsent update is replaced: the broker only needs the latest.
                self.coalesced_by_kind[message.kind] = (
                    self.coalesced_by_kind.get(message.kind, 0) + 1
                )
            self._retained[message.topic] = message
            self._dirty[message.topic] = None
        self._wake.set()

    def _count_drop(self, item: CallEvent | Alert | Outgoing) -> None:
        kind = item.kind if isinstance(item, Outgoing) else event_kind(item)
        self.dropped += 1
        self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + 1
        self._outage_drops[kind] = self._outage_drops.get(kind, 0) + 1
        self._dropped_this_outage += 1
        if self._dropped_this_outage == 1:
            log.warning(
                "mqtt queue full, dropping oldest events",
                queue_limit=self.queue_limit,
                connected=self.connected,
            )

    @property
    def queue_depth(self) -> int:
        """Messages waiting: queued events plus retained topics not yet sent."""
        return len(self._queue) + len(self._dirty)

    def counters(self) -> dict[str, Any]:
        """The publisher's counters (stats payload and metrics)."""
        return {
            "connected": self.connected,
            "queued": self.queue_depth,
            "dropped": self.dropped,
            "dropped_by_kind": dict(self.dropped_by_kind),
            "coalesced_by_kind": dict(self.coalesced_by_kind),
            "published": self.published,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
        }

    def retained_topics(self) -> dict[str, bytes]:
        """The latest payload of every retained topic (what a reconnect republishes)."""
        return {t: m.payload for t, m in self._retained.items()}

    def _status(self, *, online: bool) -> GatewayStatus:
        return GatewayStatus(
            node=self.settings.node,
            online=online,
            version=self.version,
            started_at=self.started_at,
            at=self.clock(),
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start publishing in the background (returns at once, connected or not)."""
        if self._task is not None:
            return
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="mqtt-publisher")
        if self.stats_source is not None:
            self._stats_task = asyncio.create_task(self._stats_loop(), name="mqtt-stats")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the first connection is up; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected_once.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued (up to ``timeout``), publish ``offline`` and disconnect."""
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("mqtt publisher did not stop in time", timeout=timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the connection loop -----------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        username, password = s.credentials()
        offline = route(self._status(online=False), self.topics, mask_numbers=self.mask_numbers)
        tls_params = None
        if s.use_tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
            )
        websockets = s.url.scheme in ("ws", "wss")
        return aiomqtt.Client(
            s.url.ip,
            s.port,
            username=username,
            password=password.get_secret_value() if password is not None else None,
            identifier=s.client_id or f"dialgate-{topic_segment(s.node)}-{os.getpid()}",
            will=aiomqtt.Will(offline.topic, offline.payload, qos=1, retain=True),
            keepalive=s.keepalive,
            timeout=self.publish_timeout,
            tls_params=tls_params,
            tls_insecure=s.tls_insecure if s.use_tls else None,
            transport="websockets" if websockets else "tcp",
            websocket_path=(s.url.path or "/mqtt") if websockets else None,
            logger=logging.getLogger("gateway.telemetry.mqtt.client"),
        )

    async def _run(self) -> None:
        url = str(self.settings.url)  # password masked by ServiceUrl
        while not self._stop.is_set():
            client = self._client()
            try:
                async with client:
                    self.connected = True
                    self._connected_once.set()
                    self._backoff.reset()
                    outage = None
                    if self._lost_at is not None:
                        outage = round(time.monotonic() - self._lost_at, 3)
                        self.last_outage_seconds = outage
                        self._lost_at = None
                    if self._dropped_this_outage:
                        log.warning(
                            "mqtt events dropped while the broker was away",
                            dropped=self._dropped_this_outage,
                            by_kind=dict(sorted(self._outage_drops.items())),
                        )
                        self._dropped_this_outage = 0
                        self._outage_drops = {}
                    # Republish every retained topic at once after each (re)connect,
                    # before any queued event: the broker may have restarted without
                    # persistence, and a wallboard needs the state more than the history.
                    for topic in self._retained:
                        self._dirty[topic] = None
                    self._retained_status_online()
                    log.info(
                        "mqtt connected",
                        url=url,
                        retained=len(self._retained),
                        outage_seconds=outage,
                    )
                    await self._pump(client)
                    await self._goodbye(client)
                    return
            except (aiomqtt.MqttError, _Disconnected, OSError) as exc:
                was = self.connected
                self.connected = False
                if self._lost_at is None:
                    self._lost_at = time.monotonic()
                if was:
                    self.reconnects += 1
                    log.warning("mqtt connection lost", url=url, error=str(exc))
                else:
                    self.connect_failures += 1
                    if self.connect_failures == 1 or self.connect_failures % 50 == 0:
                        log.warning(
                            "mqtt connect failed",
                            url=url,
                            error=str(exc),
                            failures=self.connect_failures,
                        )
            finally:
                self.connected = False
            if self._stop.is_set():
                break
            # Capped exponential backoff with jitter (see Backoff): a returning
            # broker is tried again within backoff_max seconds.
            wait = self._backoff.next()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stop.wait()

    def _retained_status_online(self) -> None:
        status = route(self._status(online=True), self.topics, mask_numbers=self.mask_numbers)
        self._retained[status.topic] = status
        self._dirty[status.topic] = None
        self._dirty.move_to_end(status.topic, last=False)

    def _take(self) -> Outgoing | None:
        if self._dirty:
            topic, _ = self._dirty.popitem(last=False)
            return self._retained.get(topic)
        if self._queue:
            item = self._queue.popleft()
            if isinstance(item, Outgoing):
                return item
            return route(item, self.topics, mask_numbers=self.mask_numbers)
        return None

    def _put_back(self, message: Outgoing) -> None:
        if message.retain:
            if message.topic not in self._dirty:
                self._dirty[message.topic] = None
                self._dirty.move_to_end(message.topic, last=False)
        else:
            self._queue.appendleft(message)
            while len(self._queue) > self.queue_limit:
                self._count_drop(self._queue.popleft())

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish until stopped and drained; raise when the connection breaks."""
        lost: asyncio.Future[None] | None = getattr(client, "_disconnected", None)
        while True:
            if lost is not None and lost.done():
                raise _Disconnected(_describe(lost))
            message = self._take()
            if message is None:
                if self._stop.is_set():
                    return
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                waits: set[asyncio.Future[Any]] = {waiter}
                if lost is not None:
                    waits.add(lost)
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                continue
            try:
                await self._send(client, message, lost)
            except BaseException:
                self._put_back(message)
                raise
            self.published += 1

    async def _send(
        self, client: aiomqtt.Client, message: Outgoing, lost: asyncio.Future[None] | None
    ) -> None:
        publish = asyncio.ensure_future(
            client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        )
        if lost is None:
            await publish
            return
        try:
            await asyncio.wait({publish, lost}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            publish.cancel()
            raise
        if publish.done():
            publish.result()
            return
        # The connection broke before the broker acknowledged (QoS 1): the
        # message counts as not sent and goes back into the queue.
        publish.cancel()
        with contextlib.suppress(BaseException):
            await publish
        raise _Disconnected(_describe(lost))

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Clean shutdown: ``offline`` on the status topic (retained) before disconnecting."""
        offline = route(self._status(online=False), self.topics, mask_numbers=self.mask_numbers)
        self._retained[offline.topic] = offline
        self._dirty.pop(offline.topic, None)
        await client.publish(offline.topic, offline.payload, qos=1, retain=True)
        self.published += 1
        log.info("mqtt offline published", topic=offline.topic)

    async def _stats_loop(self) -> None:
        assert self.stats_source is not None
        interval = self.settings.stats_interval
        while True:
            await asyncio.sleep(interval)
            try:
                stats = self.stats_source()
                extra = {**dict(stats.extra), "node": self.settings.node, "mqtt": self.counters()}
                self.offer(
                    Stats(
                        at=stats.at,
                        active_calls=stats.active_calls,
                        cps=stats.cps,
                        asr=stats.asr,
                        attempts=stats.attempts,
                        answered=stats.answered,
                        ended=stats.ended,
                        failovers=stats.failovers,
                        blocked_by_reason=stats.blocked_by_reason,
                        cards_by_state=stats.cards_by_state,
                        extra=extra,
                    )
                )
            except Exception:
                log.exception("stats source failed")


def _describe(lost: asyncio.Future[None]) -> str:
    if not lost.done() or lost.cancelled():
        return "disconnected"
    exc = lost.exception()
    return str(exc) if exc is not None else "disconnected"
