"""The asyncio driver of carrier health (OPTIONS pings) and card registrations.

:class:`gateway.cards.health.CarrierHealth` is a pure state machine: it says
when a ping is due and is told the outcome. This module is its thin adapter:
it sends the OPTIONS through the :class:`~gateway.transport.endpoint.SipEndpoint` (a
timeout comes back as the endpoint's local 408 and counts as a failure), feeds
every result back, and wakes up when the core's timer says so. A carrier that
goes INACTIVE makes :class:`~gateway.cards.CardManager` skip its cards
(``carrier_available`` is wired to :meth:`CarrierHealth.is_available`).

Cards of a carrier with ``register = true`` are REGISTERed at the carrier with
their credentials (answering one 401/407 per attempt, RFC 3261 §22.2) and
refreshed before the granted expiry runs out; a final failure is given to
:meth:`CardManager.on_register_response`, which marks the card by the same
carrier rules as a call's response.

With ``[store] redis`` the card manager's repository is shared
(:class:`gateway.store.redis.SharedCardRepository`): every
``SHARED_SYNC_INTERVAL`` seconds the runner adopts the card states other
instances shared, publishes this instance's kept ones, and replays the usage
closes a Redis outage left pending. :meth:`HealthRunner.stop` closes that Redis
client (after the B2BUA has ended its calls: ``Gateway._stop_call_path``).

This module must never block the loop, log a card's password, or decide a
card's state itself (CardManager does).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

import structlog

from gateway.cards import CardManager, CardState, CardStateChanged
from gateway.cards.health import CarrierHealth
from gateway.config import CardSettings, CarrierSettings, Settings
from gateway.sip import Request, Response
from gateway.sip.digest import DigestClient
from gateway.sip.errors import SIPError
from gateway.telemetry.events import EventBus
from gateway.transport.endpoint import SipEndpoint

__all__ = ["SHARED_SYNC_INTERVAL", "HealthRunner", "SharedState"]

log = structlog.get_logger("gateway.health")

REGISTER_RETRY = 60.0
"""Seconds before a failed card REGISTER is tried again."""

SHARED_SYNC_INTERVAL = 2.0
"""Seconds (monotonic) between two syncs of the card states shared through Redis."""


@runtime_checkable
class SharedState(Protocol):
    """A card repository shared by gateway instances (``SharedCardRepository``)."""

    def sync(self, manager: CardManager, now: float) -> list[CardStateChanged]:
        """Adopt shared card states, replay pending writes; never raises StoreUnavailable."""
        ...

    def close(self) -> None:
        """Close the connection to the shared store."""
        ...


class HealthRunner:
    """Runs OPTIONS pings and card REGISTERs until :meth:`stop`."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        settings: Settings,
        health: CarrierHealth,
        cards: CardManager,
        *,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bus = bus
        self.settings = settings
        self.health = health
        self.cards = cards
        self.clock = clock
        self.carriers: dict[str, CarrierSettings] = {c.name: c for c in settings.carriers}
        self._register_due: dict[str, float] = {}
        self._card_conf: dict[str, CardSettings] = {c.id: c for c in settings.cards}
        for card in settings.cards:
            carrier = self.carriers.get(card.carrier)
            if carrier is not None and carrier.register_enabled:
                self._register_due[card.id] = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        self.registered: dict[str, int] = {}
        repo = cards.repo
        self.shared: SharedState | None = repo if isinstance(repo, SharedState) else None
        self.sync_interval = SHARED_SYNC_INTERVAL
        self._sync_due = 0.0  # loop time
        self.probes: dict[str, int] = {}  # card → last probe answer (status; 0: none)
        cards.probe = self.request_probe

    def request_probe(self, card_id: str) -> None:
        """A card turned ``suspect``: check it now.

        With ``register = true`` the card REGISTERs at once with its own
        credentials: a refusal proves it dead (``suspect`` → ``suspended``), an
        acceptance is logged as evidence for the operator. Otherwise an OPTIONS
        from the card's number checks that its trunk answers (evidence only: an
        OPTIONS cannot prove a SIM's subscription).
        """
        conf = self._card_conf.get(card_id)
        if conf is None:
            return
        carrier = self.carriers.get(conf.carrier)
        if carrier is None:
            return
        if carrier.register_enabled:
            self._register_due[card_id] = 0.0
            self._wake.set()
        elif self._task is not None:
            self._spawn(self._probe_options(card_id, carrier))

    async def _probe_options(self, card_id: str, carrier: CarrierSettings) -> None:
        addr = carrier.address
        req = self._request("OPTIONS", carrier, "dialgate", 1)
        try:
            resp = await self.endpoint.request(
                req, (addr.ip, addr.port), transport=addr.transport.value
            )
        except Exception as exc:
            log.warning("card.probe.failed", card=card_id, error=repr(exc)[:200])
            return
        self.probes[card_id] = resp.status
        log.warning(
            "card.probe",
            card=card_id,
            method="OPTIONS",
            status=resp.status,
            verdict="trunk answers; operator decides (cards clear / cards suspend)",
        )

    def start(self) -> None:
        """Start the background task (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the task and any request still waiting for its answer."""
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.shared is not None:
            self.sync_shared()  # a last replay of what an outage left pending
            self.shared.close()

    def sync_shared(self) -> None:
        """Adopt the card states other instances shared; publish the changes on the bus."""
        if self.shared is None:
            return
        try:
            changed = self.shared.sync(self.cards, self.clock())
        except Exception:
            log.exception("cards.sync.failed")
            return
        if changed:
            log.info("cards.synced", cards=",".join(c.card for c in changed))
            if self.bus is not None:
                self.bus.publish_card_events(self.cards.drain_events())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.shared is not None and loop.time() >= self._sync_due:
                self.sync_shared()
                self._sync_due = loop.time() + self.sync_interval
            now = self.clock()
            for ping in self.health.handle_timer(now):
                self._spawn(self._ping(ping.carrier, ping.seq))
            events = self.health.drain_events()
            for event in events:
                log.warning(
                    "carrier.state",
                    carrier=event.carrier,
                    state=str(event.to_state),
                    cause=event.cause,
                )
            if self.bus is not None and events:
                self.bus.publish_carrier_events(events)
            for card_id, due in list(self._register_due.items()):
                if due <= now:
                    self._register_due[card_id] = float("inf")  # in flight
                    self._spawn(self._register(card_id))
            deadlines = [d for d in self._register_due.values() if d != float("inf")]
            timer = self.health.get_timer()
            if timer is not None:
                deadlines.append(timer)
            delay = max(min(deadlines) - now, 0.05) if deadlines else 30.0
            if self.shared is not None:
                delay = min(delay, max(self._sync_due - loop.time(), 0.05))
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
            # cancellation that races with the event, and stop() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, 30.0)):
                    await self._wake.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _request(self, method: str, carrier: CarrierSettings, user: str, cseq: int) -> Request:
        addr = carrier.address
        transport = self.endpoint.transport(addr.transport.value, ipv6=":" in addr.ip)
        ours = self.endpoint.sent_by(transport)
        target = f"sip:{addr.host_port}"
        aor = f"sip:{user}@{addr.host}" if method == "REGISTER" else f"sip:dialgate@{ours}"
        headers = [
            ("From", f"<{aor}>;tag={secrets.token_hex(6)}"),
            ("To", f"<{aor if method == 'REGISTER' else target}>"),
            ("Call-ID", f"{secrets.token_hex(10)}@dialgate"),
            ("CSeq", f"{cseq} {method}"),
            ("User-Agent", self.settings.sip.user_agent),
        ]
        if method == "REGISTER":
            headers.append(("Contact", f"<{self.endpoint.contact_uri(transport, user)}>"))
            headers.append(("Expires", str(carrier.register_expires)))
        return Request(method, target, headers)

    async def _ping(self, name: str, seq: int) -> None:
        carrier = self.carriers[name]
        addr = carrier.address
        req = self._request("OPTIONS", carrier, "dialgate", 1)
        try:
            resp = await self.endpoint.request(
                req, (addr.ip, addr.port), transport=addr.transport.value
            )
        except Exception:
            log.exception("carrier.ping.failed", carrier=name)
            return
        self.health.on_reply(name, resp.status, now=self.clock(), seq=seq)
        self._wake.set()

    async def _register(self, card_id: str) -> None:
        conf = self._card_conf[card_id]
        carrier = self.carriers[conf.carrier]
        addr = carrier.address
        user = conf.username or card_id
        digest = (
            DigestClient(user, conf.password.get_secret_value())
            if conf.password is not None
            else None
        )
        # One Call-ID per registration (RFC 3261 §10.2.4 refreshes keep it);
        # a fresh one per attempt keeps this simple and is allowed.
        req = self._request("REGISTER", carrier, user, 1)
        resp: Response | None = None
        try:
            resp = await self.endpoint.request(
                req, (addr.ip, addr.port), transport=addr.transport.value
            )
            if resp.status in (401, 407) and digest is not None:
                name = "Proxy-Authenticate" if resp.status == 407 else "WWW-Authenticate"
                if digest.handle_challenge(resp.status, resp.headers.get_all(name)):
                    retry = self._request("REGISTER", carrier, user, 2)
                    retry.headers.set("Call-ID", req.call_id)
                    retry.headers.set("From", req.headers.get("From") or "")
                    auth = digest.authorization("REGISTER", str(retry.uri))
                    if auth is not None:
                        retry.headers.add(*auth)
                    resp = await self.endpoint.request(
                        retry, (addr.ip, addr.port), transport=addr.transport.value
                    )
        except (SIPError, OSError):
            log.exception("card.register.failed", card=card_id)
            resp = None
        now = self.clock()
        if resp is None:
            self._register_due[card_id] = now + REGISTER_RETRY
            self._wake.set()
            return
        suspect = self.cards.get(card_id).state is CardState.SUSPECT
        verdict = self.cards.on_register_response(
            card_id,
            resp.status,
            resp.reason,
            now=now,
            warning=resp.headers.get("Warning"),
            reason_header=", ".join(resp.headers.get_all("Reason")) or None,
        )
        if suspect:
            self.probes[card_id] = resp.status
            log.warning(
                "card.probe",
                card=card_id,
                method="REGISTER",
                status=resp.status,
                verdict=str(verdict.marked) if verdict.marked else "accepted; operator decides",
            )
        if 200 <= resp.status < 300:
            granted = _granted(resp, carrier.register_expires)
            self.registered[card_id] = granted
            # Refresh before the binding runs out (most UAs use ~80-90 %).
            self._register_due[card_id] = now + max(granted * 0.8, 5.0)
            log.info("card.registered", card=card_id, expires=granted)
        else:
            self.registered.pop(card_id, None)
            self._register_due[card_id] = now + REGISTER_RETRY
            if self.bus is not None:
                self.bus.publish_card_events(self.cards.drain_events())
            log.warning(
                "card.register.refused",
                card=card_id,
                status=resp.status,
                marked=str(verdict.marked) if verdict.marked else None,
            )
        self._wake.set()


def _granted(resp: Response, asked: int) -> int:
    """The expiry the registrar granted: our Contact's expires, else Expires, else ours."""
    try:
        for contact in resp.contact:
            if contact.expires is not None:
                return contact.expires
        if resp.expires is not None:
            return resp.expires
    except SIPError:
        pass
    return asked
