"""The SIP element: every message our listeners receive, verified, routed and answered.

:class:`Gateway` owns the listeners built from ``[sip] listen`` and the
:class:`~gateway.transport.endpoint.SipEndpoint` that shares them, and is the
transports' callback. Each request:

* passes the flood/ban guard (:mod:`gateway.callpath.security`; a carrier's
  address is never counted) and ``gateway.sip.validate.check_request``
  (registrar role for REGISTER, proxy role otherwise); a SIPError is answered
  with its status and extra headers — never for an ACK (RFC 3261 §17.1.1.3);
* is absorbed by its server transaction when it is a retransmission or the ACK
  of a non-2xx; an ACK of a 2xx goes to the B2BUA's dialogs; a CANCEL to the
  transaction it cancels (481 without one, §9.2); an in-dialog request of a
  live call to the B2BUA;
* INVITE → 407 and REGISTER → 401 digest challenges (RFC 3261 §22), answered
  statelessly by :mod:`gateway.callpath.auth`; authenticated REGISTERs go to
  the registrar (bindings stored before the 200 leaves), authenticated INVITEs
  of registered agents and allow-listed dialer peers to the B2BUA, INVITEs
  from a carrier's address to inbound routing (:mod:`gateway.callpath.inbound`);
* OPTIONS to us → 200 with Allow/Accept/Supported (§11.2); an unknown method
  to us → 501 with Allow (§8.2.1); any other request not for us → 404; an
  out-of-dialog BYE/INFO → 481 (§15.1.2).

Responses matching no client transaction are dropped and counted (§18.1.2),
except a retransmitted 2xx of a call we ACKed. Responses go back to the source
address (RFC 3581 behaviour for every request); every response we generate
carries a To tag derived from the request (§8.2.6.2). Answered errors are
logged at most REJECT_LOG_RATE lines per second, with the callee masked unless
the configuration says otherwise.

This module must never let an exception from one message stop the gateway,
never answer an ACK or a response, never log a secret or (masking on) an
unmasked callee number, and never build telemetry, HTTP or the admin API:
:mod:`gateway.app` composes those around it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gateway.callpath import router
from gateway.callpath.auth import (
    AbandonedChallenge,
    Authenticator,
    ChallengeWatch,
    Identity,
    IdentityKind,
    server_algorithms,
)
from gateway.callpath.inbound import InboundRouter
from gateway.callpath.overload import OverloadControl
from gateway.callpath.registrar import Registrar, RegistrationStore, RegistrationSync
from gateway.callpath.router import Route, RouteKind
from gateway.callpath.security import (
    Admission,
    Ban,
    BanFile,
    ban_file_path,
    guard_from_settings,
)
from gateway.callpath.steering import Handover, Steering
from gateway.config import Settings
from gateway.sip import Headers, Request, Response, SIPError, make_response
from gateway.sip.digest import DigestServer
from gateway.sip.headers import canonical_name
from gateway.sip.transaction import TimerConfig
from gateway.sip.uri import URI
from gateway.store.records import StoreUnavailable
from gateway.telemetry.events import Alert, AlertKind, EventBus, Severity, iso_time
from gateway.transport import (
    Address,
    Message,
    TCPTransport,
    TLSTransport,
    Transport,
    UDPTransport,
)
from gateway.transport.base import LogLimiter, TransportName
from gateway.transport.endpoint import ServerRequest, SipEndpoint
from gateway.transport.tls import ClientTLS, client_context, server_context
from gateway.transport.udp import queued_bytes
from gateway.transport.via import strip_brackets
from gateway.workers import WorkerRole
from policies.privacy import mask_number

__all__ = [
    "BoundAddress",
    "Gateway",
    "GatewayStats",
    "tls_clients",
]

if TYPE_CHECKING:
    from gateway.callpath.b2bua import B2BUA
    from gateway.cards.runner import HealthRunner
    from gateway.operator.service import Operator
    from gateway.store import SQLiteStore

log = structlog.get_logger("gateway.callpath.element")

REJECT_LOG_RATE = 200
"""Rejection log lines per second before further ones are only counted."""

ABANDONED_LOG_RATE = 20
"""``sip.auth.abandoned`` lines per second before further ones are only counted."""

BAN_LOG_RATE = 20
"""``security.source.banned`` lines (and alerts) per second before further ones are only counted."""

HOUSEKEEPING_INTERVAL = 1.0
"""Seconds between rounds of abandoned-challenge logging and registration write retries."""

OVERLOAD_QUIET = 10.0
"""Seconds without an overload episode before the ``overload-over`` alert (episodes that
follow each other closely are one overload for an operator, not an alert each)."""

OVERLOAD_INTERVAL = 0.1
"""Seconds between looks at the UDP listeners' kernel queues (``[sip] overload_queue_kb``)."""

CHECKPOINT_INTERVAL = 0.2
"""Seconds between WAL checkpoints of the store, run in a worker thread (never on the
event loop: a checkpoint writes the database file and fsyncs it). Even off the loop a
checkpoint slows the commits made while it writes and fsyncs, so smaller ones more often
are better: at 300 calls/s the messages held over 3 ms (``bench/e2e.py e2e --slow-ms 3``)
added up to 19-65 ms per 20 s every 0.2 s, 83-115 every 0.5 s, 358-524 every 5 s."""

# Headers RFC 3261 §8.2.6.2 copies from a request into a response.
_COPIED = ("via", "from", "to", "call-id", "cseq")


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """A listening transport and the address it really bound."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(slots=True)
class GatewayStats:
    """Counters of the request handler (transport counters live on each transport)."""

    requests: int = 0
    responses_received: int = 0
    answered: collections.Counter[int] = field(default_factory=collections.Counter)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    handler_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "requests": self.requests,
            "responses_received": self.responses_received,
            "answered": {str(k): v for k, v in sorted(self.answered.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "handler_errors": self.handler_errors,
        }


class Gateway:
    """The SIP element: listeners, the endpoint, verification, routing, stateless answers.

    Use ``async with Gateway(settings) as gw``; :func:`gateway.app.serve` runs one
    with telemetry and the HTTP server around it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
        worker: WorkerRole | None = None,
    ) -> None:
        self.settings = settings
        #: One worker of ``dialgate run --workers N`` (None: the only process).
        self.worker = worker
        # ``clock`` is business time: policies, quotas, cards, CDRs (a simulator
        # may fast-forward it). Registrations and digest nonces are protocol
        # state towards real phones and stay on real seconds.
        self.clock = clock
        self.sip_clock: Callable[[], float] = time.time
        self.transports: list[Transport] = []
        self.stats = GatewayStats()
        # `[sip] digest_algorithms` (default MD5 alone: SIPp and many phones know
        # only MD5, and baresip 1.0 gives up on a 401 with a second challenge),
        # plus users' own; each challenge offers the user's, strongest first
        # (RFC 8760 §2.3).
        self.digest = DigestServer(
            key=os.urandom(32),
            realm=settings.sip.realm,
            algorithms=server_algorithms(settings),
        )
        self._tag_key = os.urandom(16)
        self._mask = settings.policy.mask_numbers
        self._domains = {d.lower().rstrip(".") for d in settings.sip.domains}
        self._local_hosts: set[str] = set()
        self._local_ports: set[int] = set()
        # One line per rejected request, but a scan or flood must not become a
        # log flood: beyond REJECT_LOG_RATE lines/s they are counted, not logged.
        self._log_limit = LogLimiter(REJECT_LOG_RATE)
        # Symmetric response routing (RFC 3581 behaviour for every request, like
        # Kamailio's force_rport): softphones sit behind NAT, and a forged Via
        # port must not aim our responses at a third party. `[sip] force_rport
        # = false` restores plain RFC 3261 §18.2.2 routing.
        self.symmetric_responses: bool = settings.sip.force_rport
        # The call path: transactions on the SIP endpoint, which
        # shares our transports; stateless answers above stay stateless.
        sip = settings.sip
        self.endpoint = SipEndpoint(
            self._on_transaction_request,
            on_stray_response=self._on_stray,
            timers=TimerConfig(t1=sip.t1, t2=sip.t2, t4=sip.t4),
            advertise=sip.advertise,
            max_message_size=sip.max_message_size,
        )
        self.endpoint.symmetric = self.symmetric_responses
        self.registrar = Registrar()
        # Set with the call path: the stores' copies of the bindings.
        self.registrations: RegistrationSync | None = None
        self.auth = Authenticator(settings, self.digest)
        self.auth.local_uri = self.is_local
        # Password-guessing and flood defence (gateway/callpath/security.py):
        # bans shared with the CLI through <database>.bans.json.
        self.security = guard_from_settings(settings)
        self.ban_file = BanFile(ban_file_path(settings))
        self._held = 0  # answers held back by the tarpit right now
        # New bans reach the ban file once per housekeeping round (a spoofed-
        # source flood can ban many addresses a second); their log lines and
        # alerts are rate-limited like rejections.
        self._unsaved_bans: dict[str, Ban] = {}
        self._ban_log_limit = LogLimiter(BAN_LOG_RATE)
        self.challenges = ChallengeWatch()
        self._abandoned_limit = LogLimiter(ABANDONED_LOG_RATE)
        self._housekeeping: asyncio.Task[None] | None = None
        self._overload_task: asyncio.Task[None] | None = None
        #: Behind the traffic: a share of new outbound INVITEs gets 503 (check_overload).
        self.overload = OverloadControl(settings.sip.overload_queue_kb * 1024)
        #: The overload an ``overload`` alert announced: (when, refused before it), until
        #: OVERLOAD_QUIET seconds pass without an episode; then ``overload-over``.
        self._overload_alerted: tuple[float, int] | None = None
        self._overload_last_end = 0.0
        self._checkpoints: asyncio.Future[None] | None = None
        self._checkpoint: asyncio.Future[tuple[int, int]] | None = None
        #: WAL checkpoints run off the loop: "done" and "failed" (a sibling's at once).
        self.checkpoints: collections.Counter[str] = collections.Counter()
        self.inbound = InboundRouter(settings, self.registrar)
        self.inbound.refresh = self.refresh_registration
        self.store: SQLiteStore | None = None
        #: The store's (counters_rebuilt, counters_caught_up), kept past its close.
        self._counter_stats = (0, 0)
        self.b2bua: B2BUA | None = None
        # Call, card and carrier events (DESIGN "MQTT events"): the MQTT publisher,
        # metrics and wallboard subscribe here.
        self.events = bus if bus is not None else EventBus()
        self.health: HealthRunner | None = None
        # Set by serve(): telemetry (bus, metrics, MQTT) and the admin API's URL.
        self.telemetry: Any = None
        self.admin_url: str | None = None
        self._operator: Operator | None = None
        #: Calls spread over the workers by Call-ID (gateway.callpath.steering); None
        #: alone, or with ``[server] worker_balance = "kernel"``.
        self.steering: Steering | None = None
        #: The shared UDP listeners a steering worker hands calls over from: their index
        #: in ``[sip] listen``, and back.
        self._steered: dict[Transport, int] = {}
        self._listeners: dict[int, Transport] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener; on any failure close what was bound and re-raise.

        A worker of ``dialgate run --workers N`` (``worker``) binds the configured
        listeners with ``SO_REUSEPORT`` on the supervisor's ports, then a private
        listener per transport on its own port (:mod:`gateway.workers`).
        """
        sip = self.settings.sip
        role = self.worker
        try:
            for i, spec in enumerate(sip.listen):
                port = spec.port if role is None else role.ports[i]
                transport = await self._listen(
                    spec.transport.value, spec.ip, port, reuse_port=role is not None
                )
                self.add_transport(transport)
                if role is not None and role.count > 1 and transport.name is TransportName.UDP:
                    self._listeners[i] = transport
                host, port = transport.local_address
                extra = {} if role is None else {"worker": role.index}
                log.info("listening", transport=str(transport.name), host=host, port=port, **extra)
            if role is not None:
                for i, spec in enumerate(sip.listen):
                    home = await self._listen(spec.transport.value, spec.ip, role.home[i])
                    self.add_transport(home)
                    self.endpoint.add_home(home)
                    host, port = home.local_address
                    log.info(
                        "listening.private",
                        transport=str(home.name),
                        host=host,
                        port=port,
                        worker=role.index,
                    )
            self._start_call_path()
            if role is not None and self._listeners and role.steer:
                self._start_steering(role)
            self._sync_bans(self.sip_clock())
            self._housekeeping = asyncio.ensure_future(self._housekeep())
            if sip.overload_queue_kb > 0:
                self._fit_overload_limit()
                self._overload_task = asyncio.ensure_future(self._overload_rounds())
        except BaseException:
            await self.close(log_stats=False)
            raise

    def _start_steering(self, role: WorkerRole) -> None:
        """Take part in the hand-overs of ``dialgate run --workers N``; without them (the
        supervisor's directory unusable) the worker still serves what the kernel hands it."""
        steering = Steering(
            role.index,
            role.count,
            role.steer,
            self._on_handover,
            always=self.settings.server.worker_balance == "call-id",
        )
        try:
            steering.start()
        except OSError as exc:
            steering.close()
            log.warning("steering.unavailable", error=repr(exc), directory=role.steer)
            return
        self.steering = steering
        self._steered = {t: i for i, t in self._listeners.items()}

    async def _listen(
        self, kind: str, host: str, port: int, *, reuse_port: bool = False
    ) -> Transport:
        """One listener of ``kind`` (udp, tcp, tls) with the ``[sip]`` bounds."""
        sip = self.settings.sip
        if kind == "udp":
            return await UDPTransport.listen(
                host,
                port,
                self.handle,
                max_message_size=sip.max_message_size,
                reuse_port=reuse_port,
            )
        if kind == "tls":
            return await TLSTransport.listen(
                host,
                port,
                self.handle,
                server=self._tls_server(),
                client=tls_clients(self.settings),
                handshake_timeout=sip.tls_handshake_timeout,
                reuse_port=reuse_port,
                max_message_size=sip.max_message_size,
                max_connections=sip.tcp_max_connections,
                max_per_source=sip.tcp_max_per_source,
                head_timeout=sip.tcp_head_timeout,
                idle_timeout=sip.tcp_idle_timeout,
            )
        return await TCPTransport.listen(
            host,
            port,
            self.handle,
            reuse_port=reuse_port,
            max_message_size=sip.max_message_size,
            max_connections=sip.tcp_max_connections,
            max_per_source=sip.tcp_max_per_source,
            head_timeout=sip.tcp_head_timeout,
            idle_timeout=sip.tcp_idle_timeout,
        )

    def _tls_server(self) -> ssl.SSLContext:
        """The context of the `tls:` listeners (settings validation checked the files)."""
        sip = self.settings.sip
        assert sip.tls_cert is not None and sip.tls_key is not None
        password = sip.tls_key_password
        return server_context(
            sip.tls_cert, sip.tls_key, None if password is None else password.get_secret_value()
        )

    def add_transport(self, transport: Transport) -> None:
        """Serve ``transport`` (already bound, with ``self.handle`` as its callback).

        ``start`` uses it for the configured listeners; tests attach a
        MemoryTransport. The transport's host and real port become "local"
        for Request-URI matching.
        """
        self.transports.append(transport)
        sip = self.settings.sip
        hosts = {strip_brackets(spec.ip).lower() for spec in sip.listen}
        hosts |= {t.local_address[0].lower() for t in self.transports}
        if sip.advertise:
            hosts.add(strip_brackets(sip.advertise).lower())
        if hosts & {"0.0.0.0", "::"}:
            # A wildcard listener: loopback is certainly ours; other interface
            # addresses are recognised only through `advertise` or `domains`.
            hosts |= {"127.0.0.1", "::1", "localhost"}
        self._local_hosts = hosts
        self._local_ports = {t.local_address[1] for t in self.transports}
        if transport not in self.endpoint.transports:
            self.endpoint.transports.append(transport)
            self.endpoint.watch_connections(transport)

    async def close(self, *, log_stats: bool = True) -> None:
        """Close every transport; log the final counters once."""
        for task in (self._housekeeping, self._overload_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._housekeeping = self._overload_task = None
        if self.steering is not None:
            self.steering.close()
            self._steered = {}
        await self._stop_call_path()
        self._save_bans(self.sip_clock())
        transports, self.transports = self.transports, []
        self.endpoint.transports.clear()
        for transport in transports:
            await transport.close()
        if log_stats and transports:
            log.info("gateway.stats", **self._snapshot(transports))

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def addresses(self) -> list[BoundAddress]:
        """Every bound listener, in ``[sip] listen`` order."""
        return [
            BoundAddress(str(t.name), t.local_address[0], t.local_address[1])
            for t in self.transports
        ]

    def address(self, transport: str) -> Address:
        """The first bound ``(host, port)`` of a transport name (``"udp"``/``"tcp"``)."""
        for t in self.transports:
            if t.name == transport:
                return t.local_address
        raise LookupError(f"no {transport} listener")

    def snapshot(self) -> dict[str, Any]:
        """Gateway and per-transport counters, JSON-ready."""
        return self._snapshot(self.transports)

    def _snapshot(self, transports: Iterable[Transport]) -> dict[str, Any]:
        per = {}
        for t in transports:
            host, port = t.local_address
            per[str(BoundAddress(str(t.name), host, port))] = t.stats.as_dict()
        gateway = self.stats.as_dict()
        gateway["auth_abandoned"] = self.challenges.abandoned
        gateway["overload_episodes"] = self.overload.episodes
        gateway["overload_refused"] = self.overload.refused
        if self.b2bua is not None:
            gateway["in_dialog_refused"] = self.b2bua.stats["in_dialog_refused"]
        if self.registrations is not None:
            gateway["registration_store_failures"] = self.registrations.stats.store_failures
        if self.store is not None:
            self._counter_stats = (self.store.counters_rebuilt, self.store.counters_caught_up)
        # Card counters read from the rows, and other processes' changes applied to them.
        gateway["card_counters_rebuilt"], gateway["card_counters_caught_up"] = self._counter_stats
        snapshot = {
            "gateway": gateway,
            "transports": per,
            "security": self.security.stats.as_dict(),
        }
        if self.steering is not None:
            snapshot["steering"] = dict(self.steering.stats)
        return snapshot

    # -- addressing ------------------------------------------------------------------

    def is_local(self, uri: URI) -> bool:
        """True when the Request-URI names this gateway (a domain, or a listen/advertise host).

        An IP host with a port must match one of our bound ports; a domain in
        ``[sip] domains`` matches on any port.
        """
        if uri.scheme not in ("sip", "sips"):
            return False
        host = strip_brackets(uri.host).lower().rstrip(".")
        if host in self._domains:
            return True
        if host not in self._local_hosts:
            return False
        return uri.port is None or uri.port in self._local_ports

    def is_registered(self, agent: str) -> bool:
        """True when ``agent`` has a live binding here (a worker also asks the store:
        it may have registered through a sibling)."""
        now = self.sip_clock()
        if self.registrar.is_registered(agent, now):
            return True
        self.refresh_registration(agent, now)
        return self.registrar.is_registered(agent, now)

    def refresh_registration(self, user: str, now: float) -> None:
        """A worker of a set or a node of a cluster (``[store] redis``): take ``user``'s
        bindings from the store (the workers share them in SQLite, the nodes in Redis:
        an agent whose node died reaches another); a lone process skips the read."""
        shared = self.settings.store.redis is not None
        workers = self.worker is not None and self.worker.count > 1
        if (shared or workers) and self.registrations is not None:
            self.registrations.refresh(user.lower(), now)

    # -- message handling ------------------------------------------------------------

    def handle(self, message: Message, source: Address, transport: Transport) -> None:
        """The transport callback: answer requests, drop stray responses."""
        if isinstance(message, Response):
            self.stats.responses_received += 1
            if self.endpoint.awaits(message):
                self.endpoint.deliver(message, source, transport)
                return
            # RFC 3261 §18.1.2: a response matching no client transaction is
            # discarded (§16.7 for a proxy; RFC 4475 §3.3.10) — except that a
            # retransmitted 2xx of a call we ACKed wants the same ACK again.
            self._on_stray(message, source, transport)
            return
        self.stats.requests += 1
        guard = self.security
        if guard.settings.enabled and self.auth.carrier_at(source) is None:
            # Banned sources and floods stop here, before any parsing work
            # (a carrier's signalling address is never counted: a busy trunk
            # is not a flood).
            admission = guard.admit(source[0], self.sip_clock())
            if admission is not Admission.ALLOW:
                if guard.pending:
                    self._publish_bans()
                self.stats.dropped["banned"] += 1
                if admission is Admission.REFUSE and message.method != "ACK":
                    with contextlib.suppress(Exception):
                        response = self._response(message, 403, "Forbidden", [])
                        transport.send_response(response, source, symmetric=True)
                return
        self._serve(message, source, transport)

    def _serve(
        self,
        req: Request,
        source: Address,
        transport: Transport,
        *,
        handed: bool = False,
        identity: Identity | None = None,
    ) -> None:
        """:meth:`_on_request`, its failure contained: counted, logged, answered 500."""
        try:
            self._on_request(req, source, transport, handed=handed, identity=identity)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("sip.request.failed", method=req.method, source=_fmt(source))
            if req.method != "ACK":
                self._reply(req, source, transport, 500, "Server Internal Error")

    def _on_request(
        self,
        req: Request,
        source: Address,
        transport: Transport,
        *,
        handed: bool = False,
        identity: Identity | None = None,
    ) -> None:
        """Ask the router where ``req`` goes, then do it.

        A worker steering calls by Call-ID (:mod:`gateway.callpath.steering`) hands a
        request it cannot serve itself to the call's owner: an INVITE once its digest
        check named the caller, anything that continues a call of another worker.
        ``handed``: a sibling handed this request over (it is never steered again),
        with the ``identity`` its digest check named (not checked twice).
        """
        steering = self.steering
        steer = None if handed or steering is None else self._steered.get(transport)
        if steer is not None and steering is not None:
            owner = steering.remembered(req)
            if owner is not None:
                # The retransmission, CANCEL or ACK of an INVITE handed over: its owner's.
                self._pass_on(steering, owner, req, source, steer)
                return
        facts = _RequestFacts(self, source, transport)
        found = router.route(req, facts)
        kind = found.kind
        if kind is RouteKind.ABSORB or kind is RouteKind.CANCEL or kind is RouteKind.IN_DIALOG:
            self.endpoint.deliver(req, source, transport)
        elif kind is RouteKind.ACK_2XX:
            taken = self.b2bua is not None and self.b2bua.on_ack(req, source, transport)
            if not taken and (
                self._acks_our_answer(req) or not self._hand_over_foreign(req, source, steer)
            ):
                self.stats.dropped["ack"] += 1
        elif kind is RouteKind.INBOUND_INVITE:
            carrier = Identity(IdentityKind.CARRIER, facts.carrier or "")
            self.endpoint.deliver(req, source, transport, context=carrier)
        elif kind is RouteKind.OUTBOUND_INVITE or kind is RouteKind.REGISTER:
            if identity is None:
                identity = self._challenge(
                    req, source, transport, proxy=kind is RouteKind.OUTBOUND_INVITE
                )
            if identity is None:
                return
            admitted = router.route_authenticated(req, identity, facts)
            owner = self._foreign(req, steer) if kind is RouteKind.OUTBOUND_INVITE else None
            if owner is not None and steer is not None and steering is not None:
                if admitted.kind is not RouteKind.REPLY:
                    # A new call: its owner's when worth it; served here when the owner
                    # cannot take it.
                    if steering.worth_it(owner) and steering.hand_over(
                        owner, req, source, steer, identity
                    ):
                        return
                elif admitted is router.NO_DIALOG:
                    # A re-INVITE of a call of another worker (sent to the shared port).
                    self._pass_on(steering, owner, req, source, steer, identity)
                    return
            if admitted.kind is RouteKind.REPLY:
                self._answer(req, source, transport, admitted)
            else:
                self.endpoint.deliver(req, source, transport, context=identity)
        elif (
            kind is RouteKind.REPLY
            and steering is not None
            and steer is not None
            and _continues_a_call(req)
            and (elsewhere := self._foreign(req, steer)) is not None
        ):
            # A CANCEL or in-dialog request of a call of another worker (its Request-URI
            # may name the owner's private port, so not even local here): the owner's,
            # never answered here (481 would end a call under way there).
            self._pass_on(steering, elsewhere, req, source, steer)
        elif kind is RouteKind.DROP:
            self.stats.dropped[found.detail or "dropped"] += 1
        elif found is router.OVERLOADED:
            # Answered in a server transaction: the INVITE's retransmissions are then
            # absorbed by it (503 resent) instead of each being refused again.
            self.endpoint.deliver(req, source, transport, context=found)
        else:  # REPLY, FOREIGN_CANCEL, OPTIONS: answered statelessly
            self._answer(req, source, transport, found)

    def _pass_on(
        self,
        steering: Steering,
        owner: int,
        req: Request,
        source: Address,
        listener: int,
        identity: Identity | None = None,
    ) -> None:
        """Hand what continues a call of worker ``owner`` over to it; when it cannot go,
        drop it (counted: the caller retransmits), never answer it here."""
        if not steering.hand_over(owner, req, source, listener, identity):
            self.stats.dropped["handover-failed"] += 1

    def _acks_our_answer(self, req: Request) -> bool:
        """True for the ACK of a final answer this worker sent statelessly (a 407 to an
        INVITE without credentials): its To tag is the one :meth:`_to_tag` gave it. Not
        worth handing over to the call's owner, which never saw that INVITE."""
        if self.steering is None:
            return False
        try:
            tag = req.to.tag
            seq = req.cseq.seq
        except SIPError:
            return False
        return tag is not None and tag == self._to_tag(req, f"{seq} INVITE")

    def _foreign(self, req: Request, listener: int | None) -> int | None:
        """The worker ``req``'s call belongs to when that is not this one and ``req`` came
        in on a steered listener (None otherwise)."""
        steering = self.steering
        if listener is None or steering is None:
            return None
        owner = steering.owner(req)
        return None if owner == steering.index else owner

    def _hand_over_foreign(self, req: Request, source: Address, listener: int | None) -> bool:
        """Hand ``req`` (continuing a call) to the worker its Call-ID belongs to: True when
        it went (False when that is this worker, or the sibling cannot take it now)."""
        owner = self._foreign(req, listener)
        steering = self.steering
        if owner is None or listener is None or steering is None:
            return False
        return steering.hand_over(owner, req, source, listener)

    def _on_handover(self, handover: Handover) -> None:
        """A sibling handed a request over: serve it as received on our socket of the same
        shared port (our answers leave from the address the caller sent to)."""
        transport = self._listeners.get(handover.listener)
        if transport is not None:
            self._serve(
                handover.request,
                handover.source,
                transport,
                handed=True,
                identity=handover.identity,
            )

    def _answer(self, req: Request, source: Address, transport: Transport, found: Route) -> None:
        self._reply(
            req,
            source,
            transport,
            found.status,
            found.reason,
            list(found.headers),
            detail=found.detail,
        )

    def _challenge(
        self, req: Request, source: Address, transport: Transport, *, proxy: bool
    ) -> Identity | None:
        """Verify digest credentials; answer 400/401/407 statelessly and return None if not OK.

        A challenge needs no state (the nonce is signed, :class:`DigestServer`),
        so unauthenticated traffic never creates a transaction (Kamailio does
        the same): floods of credential-less INVITEs cost one response each.
        """
        now = self.sip_clock()
        result = self.auth.verify(req, source, now, proxy=proxy)
        if result.identity is not None:
            self.challenges.authenticated(req, source, str(transport.name))
            return result.identity
        self.challenges.challenged(req, source, str(transport.name), result, time.monotonic())
        hold = 0.0
        guard = self.security
        if result.guess:
            held = guard.auth_failed(source[0], result.user, now)
            if guard.pending:
                self._publish_bans()
            if held is None:
                # This failure banned the source: it gets nothing, now or later.
                self.stats.dropped["banned"] += 1
                return None
            hold = held
        elif guard.settings.enabled:
            hold = guard.hold(source[0], now)
        answer = result.answer
        if answer is None:  # unreachable for a refused verdict; keeps the type honest
            self._reply(req, source, transport, 500, detail="digest answered nothing")
            return None
        self._reply(
            req,
            source,
            transport,
            answer.status,
            answer.reason,
            list(answer.headers),
            detail=result.detail,
            routine=result.routine,
            hold=hold,
        )
        return None

    def _on_transaction_request(self, sr: ServerRequest) -> None:
        """The endpoint's TU callback: a request that now has its server transaction."""
        req = sr.request
        if sr.context is router.OVERLOADED:
            found = router.OVERLOADED
            sr.respond(found.status, headers=list(found.headers), to_tag=self._to_tag(req))
            self.stats.answered[found.status] += 1
            return
        identity = sr.context if isinstance(sr.context, Identity) else None
        method = req.method
        if method == "REGISTER" and identity is not None:
            self._on_register(sr, identity)
            return
        b2bua = self.b2bua
        if b2bua is None:
            if sr.tx is not None:
                sr.respond(503, headers=[("Retry-After", "30")])
            return
        if method == "INVITE" and req.to.tag is None and identity is not None:
            if identity.kind is IdentityKind.CARRIER:
                route = self.inbound.route(req, self.sip_clock())
                if route.binding is None or route.user is None:
                    sr.respond(480, "Temporarily Unavailable", to_tag=self._to_tag(req))
                    return
                sr.respond(100, "Trying")
                b2bua.on_inbound(sr, route.binding, route.user, route.card)
                return
            sr.respond(100, "Trying")
            b2bua.on_invite(sr, identity)
            return
        if method == "CANCEL":
            b2bua.on_cancel(sr)
            return
        if method == "ACK":
            b2bua.on_ack(req, sr.source, sr.transport)
            return
        if sr.tx is not None:
            b2bua.on_in_dialog(sr)

    def _on_register(self, sr: ServerRequest, identity: Identity) -> None:
        """An authenticated REGISTER: bind, store the change, answer.

        The change is written to the stores *before* the 200 leaves, so a
        registration a phone saw accepted survives a crash right after; a
        store failure is logged, counted and retried, never answered.
        Every final response carries a To tag (RFC 3261 §8.2.6.2).
        """
        req = sr.request
        now = self.sip_clock()
        tag = self._to_tag(req)
        # Another worker may hold bindings of this AOR: apply the REGISTER to them.
        self.refresh_registration(identity.name, now)
        try:
            answer = self.registrar.register(
                req, identity.name, sr.source, str(sr.transport.name), now
            )
        except Exception:
            log.exception("registrar.failed", call_id=req.headers.get("Call-ID"))
            sr.respond(500, "Server Internal Error", to_tag=tag)
            self.stats.answered[500] += 1
            return
        if self.registrations is not None:
            self.registrations.flush(now)
        sr.respond(answer.status, answer.reason, headers=answer.headers, to_tag=tag)
        self.stats.answered[answer.status] += 1

    async def _overload_rounds(self) -> None:
        """Every OVERLOAD_INTERVAL: :meth:`check_overload`."""
        while True:
            await asyncio.sleep(OVERLOAD_INTERVAL)
            try:
                self.check_overload()
            except Exception:
                log.exception("sip.overload.check_failed")

    def _udp_listeners(self) -> list[UDPTransport]:
        """The UDP transports, whose kernel queues overload control reads."""
        return [t for t in self.transports if isinstance(t, UDPTransport)]

    def _fit_overload_limit(self) -> None:
        """Keep the overload limit within half the smallest UDP receive buffer: the kernel
        drops datagrams beyond the buffer (``net.core.rmem_max`` caps what the listener
        asks for), so a limit above it would never be reached."""
        smallest = min((b for t in self._udp_listeners() if (b := t.receive_buffer) > 0), default=0)
        configured = self.overload.limit
        if self.overload.fit(smallest // 2):
            log.info(
                "sip.overload.limit_lowered",
                configured_kb=configured // 1024,
                limit_kb=self.overload.limit // 1024,
                receive_buffer_kb=smallest // 1024,
                hint="raise net.core.rmem_max for a larger UDP receive buffer",
            )

    def check_overload(self) -> bool:
        """Sample the backlog; whether new calls are being turned away now.

        The backlog is what the kernel holds unread for the UDP listeners. While it
        stands (over the last three samples) above a quarter of ``[sip]
        overload_queue_kb``, a share of the new outbound INVITEs, growing with it, is
        answered 503 with Retry-After before authentication (the router's
        ``OVERLOADED``); at the limit all of them (:mod:`.overload`).
        """
        control = self.overload
        if control.limit <= 0:
            return False
        queued = queued_bytes(self._udp_listeners())
        now = time.monotonic()
        queued_kb = (queued or 0) // 1024
        started, ended = control.sample(queued, now)
        if started is not None:
            log.warning("sip.overload.start", queued_kb=queued_kb, limit_kb=control.limit // 1024)
            if self._overload_alerted is None:
                self._overload_alerted = (now, control.refused)
                self._alert_overload(AlertKind.OVERLOAD, Severity.WARNING, queued_kb)
        if ended is not None:
            self._overload_last_end = now
            log.warning(
                "sip.overload.end",
                after=round(now - ended.started_at, 3),
                refused=ended.refused,
                peak_share=round(ended.peak_share, 2),
                peak_queued_kb=ended.peak_queued // 1024,
            )
        if (
            self._overload_alerted is not None
            and control.episode is None
            and now - self._overload_last_end >= OVERLOAD_QUIET
        ):
            self._alert_overload(AlertKind.OVERLOAD_OVER, Severity.INFO, queued_kb)
            self._overload_alerted = None
        return control.share > 0.0

    def _alert_overload(self, kind: AlertKind, severity: Severity, queued_kb: int) -> None:
        """The ``overload`` alert (new calls being turned away) or ``overload-over``."""
        assert self._overload_alerted is not None
        since, refused_before = self._overload_alerted
        refused = self.overload.refused - refused_before
        if kind is AlertKind.OVERLOAD:
            message = (
                f"gateway behind its traffic ({queued_kb} KiB unread): new calls turned away "
                "with 503"
            )
        else:
            lasted = self._overload_last_end - since
            message = f"gateway caught up: {refused} new calls turned away in {lasted:.0f} s"
        self.events.publish(
            Alert(
                kind=kind,
                at=self.sip_clock(),
                severity=severity,
                message=message,
                reason="overload",
                detail={
                    "queued_kb": queued_kb,
                    "refused": refused,
                    "share": round(self.overload.share, 2),
                },
            )
        )

    async def _housekeep(self) -> None:
        """Every HOUSEKEEPING_INTERVAL: log abandoned challenges, retry registration writes."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                self.housekeep(time.monotonic())
            except Exception:
                log.exception("gateway.housekeeping.failed")

    def housekeep(self, monotonic_now: float) -> None:
        """One housekeeping round (the task above; tests call it directly)."""
        for item in self.challenges.expired(monotonic_now):
            self._log_abandoned(item, monotonic_now)
        self._sync_bans(self.sip_clock())
        if self.registrations is not None:
            self.registrations.flush(self.sip_clock())

    def _log_abandoned(self, item: AbandonedChallenge, now: float) -> None:
        suppressed = self._abandoned_limit.take(now)
        if suppressed is None:
            return
        # A configured user or peer that never answers is a phone to fix (warning);
        # unknown names are scanners and typos (info).
        known = item.user in self.auth.users or item.user in self.auth.peers
        (log.warning if known else log.info)(
            "sip.auth.abandoned",
            user=item.user,
            user_agent=item.user_agent,
            methods=list(item.methods),
            algorithms=list(item.algorithms),
            challenges=item.challenges,
            last=item.last,
            waited=round(now - item.first_at, 1),
            call_id=item.call_id,
            source=_fmt(item.source),
            transport=item.transport,
            suppressed=suppressed,
            forgotten=self.challenges.forgotten,
        )

    def _start_registrations(self, store: SQLiteStore, ledger: object) -> None:
        """Load the stored bindings and keep the stores' copies up to date.

        SQLite always; with ``[store] redis`` also this node's Redis hash
        (through the ledger's Redis client and key prefix), read first.
        """
        targets: list[tuple[str, RegistrationStore, str]] = []
        node = ""
        shared: Any = getattr(ledger, "shared", None)
        if self.settings.store.redis is not None and shared is not None:
            node = str(shared.node)
            if self.worker is not None:
                from gateway.store.redis import node_name

                node = node_name(self.settings)  # shared by the workers, like SQLite's
            targets.append(("redis", shared, node))
        targets.append(("sqlite", store, node))
        self.registrations = RegistrationSync(self.registrar, targets)
        self.registrations.load(self.sip_clock())

    def _on_stray(self, message: Message, source: Address, transport: Transport) -> None:
        self.stats.dropped["stray-response"] += 1
        if isinstance(message, Response):
            log.debug("sip.response.dropped", status=message.status, source=_fmt(source))
            if self.b2bua is not None:
                self.b2bua.on_stray_response(message)

    def _start_call_path(self) -> None:
        """Open the store and start the B2BUA and health runner (when anything can call)."""
        settings = self.settings
        if not (settings.users or settings.peers or settings.cards):
            return
        from gateway.callpath.b2bua import B2BUA
        from gateway.callpath.services import services_from_settings
        from gateway.cards.health import health_from_settings
        from gateway.cards.runner import HealthRunner
        from gateway.store import store_from_settings

        now = self.clock()
        health = health_from_settings(settings, now=now)
        # Checkpoints run in a thread (below), not in the commit that crosses the mark.
        store = store_from_settings(settings, autocheckpoint=False)
        self.store = store
        self._checkpoints = asyncio.ensure_future(self._checkpoint_rounds(store))
        role = self.worker
        if role is not None:
            # Its rows carry its name; a restart recovers its own only (gateway.workers).
            store.owner, store.siblings, store.sweep = role.owner, role.siblings, role.sweep
        services = services_from_settings(
            settings, store, now=now, carrier_available=health.is_available, worker=role
        )
        self._start_registrations(store, services.ledger)
        self.b2bua = B2BUA(self.endpoint, services, clock=self.clock, bus=self.events)
        # Once the store answers again, write what its outage held back.
        store.guard.on_recover(self._store_recovered)
        shared_guard = getattr(getattr(services.ledger, "shared", None), "guard", None)
        if shared_guard is not None:  # Redis back: replay its held-back closes too
            shared_guard.on_recover(self._store_recovered)
        # After a crash: BYE the calls the dead process left up, without delaying traffic.
        self._orphan_tasks = {asyncio.ensure_future(self.b2bua.end_orphaned_calls())}
        self.health = HealthRunner(
            self.endpoint, settings, health, services.cards, clock=self.clock, bus=self.events
        )
        self.health.start()

    def _store_recovered(self) -> None:
        """The store's guard closed: flush finishes, spooled CDRs and registrations now."""
        written = self.flush_spooled()
        if self.registrations is not None:
            self.registrations.flush(self.sip_clock(), force=True)
        log.info("store.flushed_after_outage", written=written)

    def flush_spooled(self) -> int:
        """Write what a store outage held back: reservation finishes and spooled CDRs."""
        if self.b2bua is None:
            return 0
        return self.b2bua.retry_pending()

    def operator(self) -> Operator | None:
        """The operator's side (card records, lifecycle, lists, CDRs) over the live
        card manager, store and event bus; None without a call path."""
        if self._operator is None and self.store is not None and self.b2bua is not None:
            from gateway.operator.service import Operator

            self._operator = Operator(
                self.settings, self.store, self.b2bua.services.cards, bus=self.events
            )
        return self._operator

    async def _checkpoint_rounds(self, store: SQLiteStore) -> None:
        """Every CHECKPOINT_INTERVAL: copy the WAL into the database file, in a thread.

        A checkpoint writes pages into the database file and fsyncs it: in the commit
        that crossed SQLite's 1,000-page mark it held the event loop for that long
        (10 times a second at 300 calls/s, each call writing ~29 pages). A sibling
        worker's checkpoint running at the same moment makes one fail: counted, the
        next round copies the rest.
        """
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            # Shielded: a cancelled round still waits for its thread (the store closes after).
            self._checkpoint = asyncio.ensure_future(asyncio.to_thread(store.checkpoint))
            try:
                await asyncio.shield(self._checkpoint)
            except StoreUnavailable as exc:
                self.checkpoints["failed"] += 1
                log.debug("store.checkpoint.failed", error=str(exc))
            except Exception:  # never the end of the rounds: the next one may work
                self.checkpoints["failed"] += 1
                log.exception("store.checkpoint.error")
            else:
                self.checkpoints["done"] += 1

    async def _stop_call_path(self) -> None:
        checkpoints = [t for t in (self._checkpoints, self._checkpoint) if t is not None]
        if self._checkpoints is not None:
            self._checkpoints.cancel()
        await asyncio.gather(*checkpoints, return_exceptions=True)
        self._checkpoints = self._checkpoint = None
        if self.registrations is not None:
            # Before the stores close (the Redis client closes with the health runner).
            self.registrations.flush(self.sip_clock(), force=True)
            self.registrations = None
        if self._operator is not None:
            self._operator.close()
            self._operator = None
        orphan_tasks: set[asyncio.Future[int]] = getattr(self, "_orphan_tasks", set())
        for task in orphan_tasks:
            task.cancel()
        await asyncio.gather(*orphan_tasks, return_exceptions=True)
        orphan_tasks.clear()
        if self.b2bua is not None:
            await self.b2bua.close()
            log.info("b2bua.stats", **self.b2bua.stats)
            self.b2bua = None
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.store is not None:
            self._counter_stats = (self.store.counters_rebuilt, self.store.counters_caught_up)
            self.store.close()
            self.store = None

    # -- responses -------------------------------------------------------------------

    def _reply(
        self,
        req: Request,
        source: Address,
        transport: Transport,
        status: int,
        reason: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        *,
        detail: str | None = None,
        routine: bool = False,
        hold: float = 0.0,
    ) -> None:
        """Answer statelessly; log a rejection at info (rate-limited).

        ``routine``: a digest challenge of the normal call flow (no credentials
        yet, stale nonce), one per call — logged at debug only, as
        ``sip.request.challenged``; a refusal stays ``sip.request.rejected``.
        ``hold``: seconds to hold the answer back (the guessing tarpit of
        :mod:`gateway.callpath.security`); scheduled on the loop, never slept.
        """
        response = self._response(req, status, reason, extra or [])
        if hold > 0:
            self._send_later(hold, response, source, transport)
        else:
            transport.send_response(response, source, symmetric=self.symmetric_responses)
        self.stats.answered[status] += 1
        if status < 300:
            return
        if routine and not log.is_enabled_for(logging.DEBUG):
            return
        suppressed = self._log_limit.take(time.monotonic())
        if suppressed is not None:
            (log.debug if routine else log.info)(
                "sip.request.challenged" if routine else "sip.request.rejected",
                method=req.method,
                status=status,
                reason=response.reason,
                detail=(detail or "")[:200],
                request_uri=self._masked_uri(req.uri),
                call_id=req.headers.get("Call-ID"),
                source=_fmt(source),
                transport=str(transport.name),
                suppressed=suppressed,
            )

    def _send_later(
        self, delay: float, response: Response, source: Address, transport: Transport
    ) -> None:
        """Send ``response`` after ``delay`` seconds (bounded: beyond ``max_delayed`` it is dropped)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous test): answer at once
            transport.send_response(response, source, symmetric=self.symmetric_responses)
            return
        if self._held >= self.security.settings.max_delayed:
            self.stats.dropped["tarpit-full"] += 1
            return
        self._held += 1

        def send() -> None:
            self._held -= 1
            if transport in self.transports:
                with contextlib.suppress(Exception):
                    transport.send_response(response, source, symmetric=self.symmetric_responses)

        loop.call_later(delay, send)

    # -- security: bans ----------------------------------------------------------------

    def _publish_bans(self) -> None:
        """New bans: a warning line and a ``source-banned`` alert each (rate-limited); the ban
        file gets them at the next housekeeping round (:meth:`_save_bans`)."""
        bans = self.security.drain_new_bans()
        for ban in bans:
            self._unsaved_bans[ban.address] = ban
            suppressed = self._ban_log_limit.take(time.monotonic())
            if suppressed is None:
                continue
            seconds = round(ban.until - ban.since)
            log.warning(
                "security.source.banned",
                address=ban.address,
                reason=ban.reason,
                count=ban.count,
                offence=ban.offence,
                seconds=seconds,
                until=iso_time(ban.until),
                suppressed=suppressed,
            )
            self.events.publish(
                Alert(
                    kind=AlertKind.SOURCE_BANNED,
                    at=ban.since,
                    severity=Severity.WARNING,
                    message=f"source {ban.address} banned for {seconds} s ({ban.reason}: {ban.count})",
                    reason=ban.reason,
                    detail={
                        "address": ban.address,
                        "until": iso_time(ban.until),
                        "count": ban.count,
                        "offence": ban.offence,
                        "suppressed": suppressed,
                    },
                )
            )

    def _save_bans(self, now: float) -> None:
        """Write the bans made since the last round to the ban file (one write)."""
        if not self._unsaved_bans:
            return
        unsaved, self._unsaved_bans = self._unsaved_bans, {}

        def add(current: dict[str, Ban]) -> None:
            current.update(unsaved)

        try:
            self.ban_file.update(add, now)
        except OSError as exc:
            log.error("security.banfile.failed", path=str(self.ban_file.path), error=str(exc))

    def unban(self, address: str | None) -> list[Ban]:
        """Lift one ban (``address``) or all (None), here and in the ban file; the bans lifted."""
        now = self.sip_clock()
        if address is not None and "/" not in address:
            address = self.security.key(address)  # an IPv6 address: its network's ban
        if address is None:
            lifted = self.security.active(now)
            self.security.unban_all()
        else:
            ban = self.security.unban(address)
            lifted = [ban] if ban is not None and ban.until > now else []
        if address is None:
            self._unsaved_bans.clear()
        else:
            self._unsaved_bans.pop(address, None)

        def remove(current: dict[str, Ban]) -> None:
            if address is None:
                current.clear()
            else:
                current.pop(address, None)

        try:
            self.ban_file.update(remove, now)
        except OSError as exc:
            log.error("security.banfile.failed", path=str(self.ban_file.path), error=str(exc))
        for ban in lifted:
            log.info("security.source.unbanned", address=ban.address, by="admin")
        return lifted

    def _sync_bans(self, now: float) -> None:
        """Expire ended bans; adopt the ban file when another process (the CLI) changed it;
        write the bans made since the last round."""
        guard = self.security
        guard.expire(now)
        if self.ban_file.changed():
            try:
                bans = self.ban_file.load()
            except OSError as exc:
                log.error("security.banfile.failed", path=str(self.ban_file.path), error=str(exc))
                bans = None
            if bans is not None:
                # Bans not written yet are ours, not cleared by anyone.
                self._adopt_bans({**bans, **self._unsaved_bans}, now)
        self._save_bans(now)

    def _adopt_bans(self, bans: dict[str, Ban], now: float) -> None:
        adopted, cleared = self.security.adopt(bans, now)
        for ban in cleared:
            log.info("security.source.unbanned", address=ban.address, by="ban-file")
        if adopted:
            log.info("security.bans.adopted", addresses=[b.address for b in adopted][:20])

    def _response(
        self, req: Request, status: int, reason: str | None, extra: list[tuple[str, str]]
    ) -> Response:
        """A stateless response: make_response when the request allows, else a best effort.

        RFC 4475 §3.3.1 (missing From/To/Call-ID) still deserves its 400: the
        fallback copies whichever of the §8.2.6.2 headers are present, verbatim.
        """
        tag = self._to_tag(req) if status > 100 else None
        try:
            return make_response(req, status, reason, to_tag=tag, headers=extra)
        except SIPError:
            pass
        items = [(n, v) for n, v in req.headers if canonical_name(n) in _COPIED]
        headers = Headers(items)
        for name, value in extra:
            headers.add(name, value)
        return Response(status, reason, headers)

    def _to_tag(self, req: Request, cseq: str | None = None) -> str:
        """A To tag that is the same for every retransmission of one request.

        RFC 3261 §8.2.6.2 needs a tag on every non-100 response; deriving it
        from Call-ID, From tag and the top Via branch keeps stateless answers
        to retransmissions identical, as a transaction would. ``cseq``: the
        CSeq to derive it from instead of the request's own.
        """
        h = req.headers
        material = "\x00".join(
            (
                h.get("Call-ID") or "",
                h.get("From") or "",
                h.get("Via") or "",
                cseq if cseq is not None else h.get("CSeq") or "",
            )
        )
        # Header text holds undecodable octets as surrogates (the parser decodes
        # with surrogateescape); encode them back the same way.
        return hashlib.blake2s(
            material.encode("utf-8", "surrogateescape"), key=self._tag_key, digest_size=8
        ).hexdigest()

    def _masked_uri(self, uri: URI) -> str:
        if not self._mask or uri.user is None:
            return str(uri)
        return str(dataclasses.replace(uri, user=mask_number(uri.user)))


def _continues_a_call(req: Request) -> bool:
    """A CANCEL, or a request with a To tag: it belongs to a call under way somewhere."""
    if req.method == "CANCEL":
        return True
    try:
        return req.to.tag is not None
    except SIPError:
        return False


class _RequestFacts:
    """The router's questions about one request, answered from the element's tables."""

    __slots__ = ("carrier", "gateway", "source", "transport")

    def __init__(self, gateway: Gateway, source: Address, transport: Transport) -> None:
        self.gateway = gateway
        self.source = source
        self.transport = transport
        self.carrier: str | None = None  # the carrier's name, once from_carrier() said yes

    def in_transaction(self, req: Request) -> bool:
        return self.gateway.endpoint.layer.find_server(req) is not None

    def cancels_transaction(self, req: Request) -> bool:
        return self.gateway.endpoint.layer.cancel_target(req) is not None

    def foreign_cancel(self, req: Request) -> bool:
        b2bua = self.gateway.b2bua
        return b2bua is not None and b2bua.foreign_cancel(req, self.source, self.transport)

    def in_dialog(self, req: Request) -> bool:
        b2bua = self.gateway.b2bua
        return b2bua is not None and b2bua.has_dialog(req)

    def from_carrier(self) -> bool:
        self.carrier = self.gateway.auth.carrier_at(self.source)
        return self.carrier is not None

    def overloaded(self, req: Request) -> bool:
        gateway = self.gateway
        if gateway.overload.share <= 0.0:
            return False
        # The retry with credentials of an INVITE challenged before: that call has
        # begun, refusing it now would waste the round already spent on it. (Wrong
        # credentials are challenged again and count towards the source's ban.)
        if req.headers.get("Proxy-Authorization") is not None and gateway.challenges.awaits(
            req, self.source, str(self.transport.name)
        ):
            return False
        return gateway.overload.refuse()

    def is_local(self, uri: URI) -> bool:
        return self.gateway.is_local(uri)

    def is_registered(self, agent: str) -> bool:
        return self.gateway.is_registered(agent)

    def has_call_path(self) -> bool:
        return self.gateway.b2bua is not None


def _fmt(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_clients(settings: Settings) -> Callable[[Address], ClientTLS]:
    """The client context and server name for each TLS connection the gateway opens.

    A `tls:` carrier is verified against its ``tls_ca`` (else the system CAs) and
    must present a certificate for ``tls_server_name`` (else the host of its
    address: RFC 3261 §26.2.2 / RFC 5922 §7.2); our ``[sip] tls_cert`` is offered
    when the carrier asks for a client certificate. Other destinations (an
    agent whose connection went away) get the system CAs and their IP.
    """
    sip = settings.sip
    password = None if sip.tls_key_password is None else sip.tls_key_password.get_secret_value()

    def context(ca: Path | None) -> ssl.SSLContext:
        return client_context(ca, cert=sip.tls_cert, key=sip.tls_key, password=password)

    by_address: dict[Address, ClientTLS] = {}
    for carrier in settings.carriers:
        addr = carrier.address
        if addr.transport.value != "tls":
            continue
        ctx = context(carrier.tls_ca)
        by_address[(addr.ip, addr.port)] = (ctx, carrier.tls_server_name or addr.ip)
    default: list[ClientTLS] = []

    def client(addr: Address) -> ClientTLS:
        found = by_address.get(addr)
        if found is not None:
            return found
        if not default:
            default.append((context(None), None))
        return default[0]

    return client
