"""The asyncio SIP endpoint: transports + the sans-IO transaction layer + one timer.

This is the thin adapter of STYLE.md (aioquic's ``asyncio/protocol.py``): it
feeds received messages into :class:`~gateway.sip.transaction.TransactionLayer`,
carries out the actions that come back (send, deliver, timeout), and re-arms a
single ``loop.call_at`` for the earliest of the layer's timers and the TU's
(:meth:`SipEndpoint.schedule`). Everything that speaks
SIP in dialgate sits on it: the gateway (registrar, B2BUA) and the simulator's
carrier, agents and dialer.

Upward it offers two things:

* server side — messages come in from its transports, or from the element that
  owns them through :meth:`SipEndpoint.deliver` (with a ``context``, e.g. the
  caller it authenticated); every new request reaches ``on_request`` as a
  :class:`ServerRequest` holding its server transaction and that context; the
  TU answers with :meth:`ServerRequest.respond`. ACKs for 2xx and requests that
  no transaction can hold reach the same callback with ``tx=None``.
* client side — :meth:`SipEndpoint.send_request` starts a client transaction
  and returns a :class:`ClientRequest`; every response (provisional and final)
  goes to its ``on_response`` callback, and ``final`` is a future with the
  final response. A Timer B/F timeout is reported as a locally made 408 and a
  transport failure as a locally made 503 (RFC 3261 §8.1.3.1), both marked
  ``local=True`` on the handle, so the TU has one code path.

What it must never do: block, raise into a transport callback, or decide
anything about routing, policy or authentication — that is the TU's job.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import secrets
import ssl
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

import structlog

from gateway.sip.errors import SIPError
from gateway.sip.headers import Via
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transaction import (
    ClientInviteTransaction,
    ClientTransaction,
    Deliver,
    LegacyServerKey,
    Send,
    ServerKey,
    ServerTransaction,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionLayer,
    TransportError,
    build_cancel,
    client_key,
)
from gateway.transport import (
    Address,
    Message,
    TCPTransport,
    TLSTransport,
    Transport,
    UDPTransport,
)
from gateway.transport.tls import ClientTLS

__all__ = ["ClientRequest", "Peer", "ServerRequest", "SipEndpoint", "format_hostport"]

log = structlog.get_logger("gateway.transport.endpoint")


def format_hostport(host: str, port: int | None) -> str:
    """``host:port`` with IPv6 literals in brackets (RFC 3261 §25.1 ``hostport``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a transaction's messages go: a transport and a remote address (hashable)."""

    transport: Transport
    address: Address


@dataclass(slots=True, eq=False)
class ServerRequest:
    """A request handed to the TU, with the server transaction that will carry the answer."""

    endpoint: SipEndpoint
    request: Request
    source: Address
    transport: Transport
    tx: ServerTransaction | None
    context: object = None
    """What the element that handed the request over said about it (e.g. the
    caller it authenticated): :meth:`SipEndpoint.deliver`'s ``context``."""
    answered: bool = False
    final_status: int | None = None

    def respond(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        to_tag: str | None = None,
    ) -> Response:
        """Build and send a response to this request (RFC 3261 §8.2.6); returns it."""
        response = make_response(
            self.request, status, reason, to_tag=to_tag, headers=headers, body=body
        )
        self.send(response)
        return response

    def send(self, response: Response) -> None:
        """Send a ready-made response through the transaction (or statelessly without one)."""
        if response.status >= 200:
            if self.final_status is not None and not (
                200 <= response.status < 300 and 200 <= self.final_status < 300
            ):
                log.warning("endpoint.respond.twice", status=response.status)
                return
            self.final_status = response.status
        self.answered = True
        if self.tx is None:
            self.transport.send_response(response, self.source)
            return
        self.endpoint._run(self.endpoint.layer.send_response(self.tx, response, self._now()))

    def _now(self) -> float:
        return self.endpoint.now()


@dataclass(slots=True, eq=False)
class ClientRequest:
    """An outgoing request's handle: its responses, its final response, CANCEL."""

    endpoint: SipEndpoint
    request: Request
    peer: Peer
    on_response: Callable[[ClientRequest, Response], None] | None
    final: asyncio.Future[Response]
    tx: ClientTransaction | None = None
    provisional: Response | None = None
    local: bool = False
    cancel_requested: bool = False
    cancel_sent: bool = False
    responses: list[int] = field(default_factory=list)
    #: Where the last response came from (None for a locally generated one): a peer
    #: may answer from another address than the one the request went to.
    source: Address | None = None

    def cancel(self) -> None:
        """CANCEL this INVITE (RFC 3261 §9.1): now if a provisional arrived, else on the first one."""
        if self.request.method != "INVITE" or self.final.done() or self.cancel_requested:
            return
        self.cancel_requested = True
        if self.provisional is not None:
            self._send_cancel()

    def _send_cancel(self) -> None:
        if self.cancel_sent:
            return
        self.cancel_sent = True
        cancel = build_cancel(self.request)
        self.endpoint.send_request(
            cancel, self.peer.address, transport=self.peer.transport, add_via=False
        )
        if isinstance(self.tx, ClientInviteTransaction):
            # §9.1: no final response within 64*T1 of the CANCEL ends the INVITE
            # transaction (the TU gets a local 408) instead of leaving it for ever.
            self.endpoint._run(self.endpoint.layer.cancel_sent(self.tx, self.endpoint.now()))

    def _deliver(self, response: Response) -> None:
        self.responses.append(response.status)
        if response.status < 200:
            first = self.provisional is None
            self.provisional = response
            if first and self.cancel_requested and response.status > 100:
                self._send_cancel()
            elif first and self.cancel_requested:
                # §9.1: a 100 is a provisional response too: CANCEL may go now.
                self._send_cancel()
        elif not self.final.done():
            self.final.set_result(response)
        if self.on_response is not None:
            try:
                self.on_response(self, response)
            except Exception:
                log.exception("endpoint.on_response.failed", method=self.request.method)


RequestHandler = Callable[[ServerRequest], None]
StrayHandler = Callable[[Message, Address, Transport], None]


class Scheduled:
    """A callback :meth:`SipEndpoint.schedule` runs on the endpoint's timer, unless cancelled."""

    __slots__ = ("_owner", "callback", "cancelled", "when")

    def __init__(self, owner: SipEndpoint, when: float, callback: Callable[[], object]) -> None:
        self._owner: SipEndpoint | None = owner
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback (and drop it: nothing it holds is kept alive)."""
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = _nothing
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._scheduled_cancelled()


def _nothing() -> None:
    return None


class SipEndpoint:
    """One SIP node on asyncio: its transports, its transaction table and its timer."""

    def __init__(
        self,
        on_request: RequestHandler,
        *,
        on_stray_response: StrayHandler | None = None,
        timers: TimerConfig | None = None,
        token: Callable[[], str] = lambda: secrets.token_hex(8),
        advertise: str | None = None,
        max_message_size: int = 64 * 1024,
    ) -> None:
        self.on_request = on_request
        self.on_stray_response = on_stray_response
        self.layer = TransactionLayer(token, timers=timers, auto_trying=True)
        self.advertise = advertise
        self.max_message_size = max_message_size
        # True: responses over UDP go to the request's source address, as if every
        # Via carried ;rport (RFC 3581; Kamailio's force_rport) — NAT-safe.
        self.symmetric = False
        self.transports: list[Transport] = []
        self._clients: dict[Hashable, ClientRequest] = {}
        self._servers: dict[Hashable, ServerRequest] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The TU's timers (schedule): a heap of (when, order, handle); cancelled handles
        # stay until they reach the top or outnumber the live ones (then it is rebuilt).
        self._scheduled: list[tuple[float, int, Scheduled]] = []
        self._scheduled_order = itertools.count()
        self._cancelled = 0
        # A worker of `dialgate run --workers N`: its private transports, one per
        # (name, IPv6). Requests we originate leave from there and every Via and
        # Contact we write names them, so the answers and in-dialog requests of our
        # dialogs come back to this process, not to a sibling sharing the listeners.
        self._home: dict[tuple[str, bool], Transport] = {}

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """Monotonic seconds of the event loop: the only clock the SIP layer sees."""
        return self.loop.time()

    async def listen(
        self,
        transport: str,
        host: str,
        port: int,
        *,
        tls_server: ssl.SSLContext | None = None,
        tls_client: Callable[[Address], ClientTLS] | None = None,
    ) -> Transport:
        """Open a listener (``udp``, ``tcp`` or ``tls``) on ``host:port``; port 0 picks a free one.

        ``tls`` needs ``tls_server`` (our certificate); ``tls_client(addr)`` gives
        the context and server name of connections opened to ``addr``.
        """
        created: Transport
        if transport == "tls":
            if tls_server is None:
                raise ValueError("a tls listener needs tls_server (a server SSLContext)")
            created = await TLSTransport.listen(
                host,
                port,
                self.deliver,
                server=tls_server,
                client=tls_client,
                max_message_size=self.max_message_size,
            )
        elif transport == "udp":
            created = await UDPTransport.listen(
                host, port, self.deliver, max_message_size=self.max_message_size
            )
        elif transport == "tcp":
            created = await TCPTransport.listen(
                host, port, self.deliver, max_message_size=self.max_message_size
            )
        else:
            raise ValueError(f"unknown transport {transport!r}")
        self.transports.append(created)
        self.watch_connections(created)
        return created

    def add_transport(self, transport: Transport) -> None:
        """Adopt a transport created elsewhere (e.g. an in-memory one in tests)."""
        transport.on_message = self.deliver
        self.transports.append(transport)
        self.watch_connections(transport)

    async def close(self) -> None:
        """Stop the timer and close every transport."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._scheduled.clear()
        self._cancelled = 0
        for transport in self.transports:
            await transport.close()
        for client in list(self._clients.values()):
            if not client.final.done():
                client.final.cancel()
        self._clients.clear()
        self._servers.clear()

    def add_home(self, transport: Transport) -> None:
        """Make ``transport`` (already served) this process's own for its name and family."""
        self._home[(str(transport.name), ":" in transport.local_address[0])] = transport

    def home_of(self, transport: Transport) -> Transport:
        """The private transport standing for ``transport`` (itself when there is none)."""
        if not self._home:
            return transport
        key = (str(transport.name), ":" in transport.local_address[0])
        return self._home.get(key, transport)

    def transport(self, name: str = "udp", *, ipv6: bool = False) -> Transport:
        """The first transport of that name (and address family); a private one first."""
        if self._home:
            home = self._home.get((name, ipv6))
            if home is not None:
                return home
        for candidate in self.transports:
            if candidate.name == name and (":" in candidate.local_address[0]) == ipv6:
                return candidate
        for candidate in self.transports:
            if candidate.name == name:
                return candidate
        raise LookupError(f"no {name} transport")

    def sent_by(self, transport: Transport) -> str:
        """The ``sent-by`` of our Via and the host of our Contact on ``transport``
        (its private stand-in's, see :meth:`home_of`)."""
        host, port = self.home_of(transport).local_address
        return format_hostport(self.advertise or host, port)

    def contact_uri(
        self, transport: Transport, user: str | None = None, *, secure: bool = False
    ) -> str:
        """A SIP URI that reaches this endpoint on ``transport``.

        ``secure`` (a dialog set up with a SIPS URI, RFC 3261 §8.1.1.8 and §12.1.1:
        its Contact must be SIPS too) gives ``sips:host:port``, only on TLS. A
        plain TLS flow gets ``sip:…;transport=tls``: RFC 5630 §3.1.3 deprecates
        that parameter in favour of SIPS, but a SIPS Contact also promises TLS on
        every hop beyond us, and deployed phones cannot follow one (baresip's
        libre refuses any in-dialog target but sip:, ENOSYS).
        """
        user_part = f"{user}@" if user else ""
        if transport.name == "tls" and secure:
            return f"sips:{user_part}{self.sent_by(transport)}"
        suffix = f";transport={transport.name}" if transport.name in ("tcp", "tls") else ""
        return f"sip:{user_part}{self.sent_by(transport)}{suffix}"

    # -- client side -------------------------------------------------------------------

    def send_request(
        self,
        request: Request,
        dest: Address,
        *,
        transport: Transport | str = "udp",
        on_response: Callable[[ClientRequest, Response], None] | None = None,
        add_via: bool = True,
    ) -> ClientRequest:
        """Start a client transaction for ``request`` towards ``dest``.

        Unless ``add_via`` is false (CANCEL reuses the INVITE's Via, §9.1), a
        new top Via with a fresh branch and ``rport`` (RFC 3581) is pushed.
        ACK for a 2xx is not a transaction: use :meth:`send_stateless`.
        """
        tp = (
            self.transport(transport, ipv6=":" in dest[0])
            if isinstance(transport, str)
            else self._sender(transport)
        )
        if add_via:
            branch = self.layer.new_branch()
            via = f"SIP/2.0/{tp.name.upper()} {self.sent_by(tp)};branch={branch};rport"
            request.headers.prepend("Via", via)
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        peer = Peer(tp, dest)
        handle = ClientRequest(
            endpoint=self,
            request=request,
            peer=peer,
            on_response=on_response,
            final=self.loop.create_future(),
        )
        key = client_key(request)
        self._clients[key] = handle
        try:
            tx, actions = self.layer.send_request(
                request, self.now(), peer=peer, reliable=tp.reliable
            )
        except Exception:
            self._clients.pop(key, None)
            raise
        handle.tx = tx
        self._run(actions)
        return handle

    async def request(
        self, request: Request, dest: Address, *, transport: Transport | str = "udp"
    ) -> Response:
        """Send ``request`` and wait for its final response (408/503 made locally on failure)."""
        handle = self.send_request(request, dest, transport=transport)
        return await handle.final

    def send_stateless(
        self, message: Message, dest: Address, *, transport: Transport | str = "udp"
    ) -> bool:
        """Send outside any transaction: the ACK for a 2xx (§13.2.2.4), a 2xx retransmission."""
        tp = (
            self.transport(transport, ipv6=":" in dest[0])
            if isinstance(transport, str)
            else self._sender(transport)
            if isinstance(message, Request)
            else transport
        )
        if (
            isinstance(message, Request)
            and message.method == "ACK"
            and not message.headers.get("Via")
        ):
            branch = self.layer.new_branch()
            message.headers.prepend(
                "Via", f"SIP/2.0/{tp.name.upper()} {self.sent_by(tp)};branch={branch};rport"
            )
        return tp.send(message, dest)

    def _sender(self, transport: Transport) -> Transport:
        """Where a request for ``transport`` leaves: a datagram from the private socket
        (its answers then come back to this process); a stream keeps its connection."""
        if not self._home or transport.reliable:
            return transport
        return self.home_of(transport)

    # -- receive path ------------------------------------------------------------------

    def deliver(
        self,
        message: Message,
        source: Address,
        transport: Transport,
        *,
        context: object = None,
    ) -> None:
        """Feed one received message to the transaction layer.

        Transports call this for every message when the endpoint owns them; an
        element that owns the transports (the gateway) calls it for the
        messages it decided the transactions should see. A new request reaches
        ``on_request`` as a :class:`ServerRequest` whose ``context`` is
        ``context`` (a retransmission absorbed by its transaction reaches no one).
        """
        now = self.now()
        if isinstance(message, Request):
            peer = Peer(transport, source)
            actions = self.layer.receive_request(
                message, now, peer=peer, reliable=transport.reliable
            )
            self._run(actions, source=source, transport=transport, context=context)
        else:
            self._run(self.layer.receive_response(message, now), source=source, transport=transport)

    def _run(
        self,
        actions: list[Send | Deliver | Timeout | TransportError | Terminated],
        *,
        source: Address | None = None,
        transport: Transport | None = None,
        context: object = None,
    ) -> None:
        """Carry out the layer's actions in order, then re-arm the timer."""
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, Deliver):
                self._deliver(action, source, transport, context)
            elif isinstance(action, Timeout):
                self._fail(action.key, 408, "Request Timeout")
            elif isinstance(action, TransportError):
                self._fail(action.key, 503, "Service Unavailable")
            elif isinstance(action, Terminated):
                handle = self._clients.pop(action.key, None)
                if handle is not None:
                    # The transaction is over: no response reaches this handle any more.
                    # Dropping the TU's callback breaks the cycle call → handle →
                    # callback → call, so a finished call is freed by reference
                    # counting when its last timer ends, not by a later full GC.
                    handle.on_response = None
                self._servers.pop(action.key, None)
        self._rearm()

    def _send(self, action: Send) -> None:
        peer = action.peer
        if not isinstance(peer, Peer):
            log.error("endpoint.send.no_peer", key=str(action.key))
            return
        message = action.message
        if isinstance(message, Response):
            ok = peer.transport.send_response(message, peer.address, symmetric=self.symmetric)
            if message.status >= 200 and message.cseq.method != "INVITE":
                # A final non-INVITE answer is now only resent as it is (Timer J,
                # 64*T1): its parsed views can go (Message.compact).
                message.compact()
        else:
            ok = peer.transport.send(message, peer.address)
        if not ok and not action.retransmission:
            tx = self._clients.get(action.key)
            if tx is not None and tx.tx is not None:
                # §17.1.1.2 / §8.1.3.1: a transport failure reaches the TU as a 503.
                self.loop.call_soon(self._transport_failed, tx.tx)

    def _transport_failed(self, tx: ClientTransaction) -> None:
        self._run(self.layer.transport_error(tx, self.now()))

    def watch_connections(self, transport: Transport) -> None:
        """Fail our client transactions towards a destination ``transport`` cannot reach."""
        transport.on_connect_failed = functools.partial(self.connection_failed, transport)

    def connection_failed(self, transport: Transport, address: Address) -> None:
        """A connection ``transport`` opened to ``address`` failed (refused, TLS handshake):
        every client transaction waiting on it gets a transport error (a local 503)."""
        for handle in list(self._clients.values()):
            tx = handle.tx
            if (
                tx is not None
                and handle.peer.transport is transport
                and handle.peer.address == address
                and not handle.final.done()
            ):
                self._transport_failed(tx)

    def _deliver(
        self,
        action: Deliver,
        source: Address | None,
        transport: Transport | None,
        context: object = None,
    ) -> None:
        message = action.message
        if isinstance(message, Response):
            handle = self._clients.get(action.key) if action.key is not None else None
            if handle is None and action.key is None:
                handle = self._clients.get(client_key(message))
            if handle is not None:
                if source is not None:
                    handle.source = source
                handle._deliver(message)
                return
            if self.on_stray_response is not None and source is not None and transport is not None:
                self.on_stray_response(message, source, transport)
            return
        if source is None or transport is None:
            return
        tx = (
            self.layer.server.get(action.key)
            if isinstance(action.key, ServerKey | LegacyServerKey)
            else None
        )
        server = ServerRequest(self, message, source, transport, tx, context)
        if action.key is not None and tx is not None and message.method != "ACK":
            self._servers[action.key] = server
        try:
            self.on_request(server)
        except Exception:
            log.exception("endpoint.on_request.failed", method=message.method)
            if tx is not None and not server.answered:
                server.respond(500, "Server Internal Error")

    def _fail(self, key: Hashable, status: int, reason: str) -> None:
        handle = self._clients.get(key)
        if handle is None:
            return
        handle.local = True
        handle._deliver(make_response(handle.request, status, reason))

    def schedule(self, delay: float, callback: Callable[[], object]) -> Scheduled:
        """Run ``callback`` ``delay`` seconds from now on the endpoint's one timer.

        For the TU's own timers (a call's no-answer timer, a 2xx retransmission
        while the ACK is awaited): the same clock (:meth:`now`) and the same
        ``loop.call_at`` as the transactions. An exception from ``callback`` is
        logged and goes no further.
        """
        return self.schedule_at(self.now() + delay, callback)

    def schedule_at(self, when: float, callback: Callable[[], object]) -> Scheduled:
        """Run ``callback`` at ``when`` on :meth:`now`'s clock (see :meth:`schedule`)."""
        handle = Scheduled(self, when, callback)
        heapq.heappush(self._scheduled, (when, next(self._scheduled_order), handle))
        if self._timer_at is None or when < self._timer_at:
            self._rearm()
        return handle

    def _scheduled_cancelled(self) -> None:
        self._cancelled += 1
        heap = self._scheduled
        if self._cancelled > 64 and 2 * self._cancelled > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
            self._cancelled = 0

    def _next_scheduled(self) -> float | None:
        heap = self._scheduled
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def _run_scheduled(self, now: float) -> None:
        heap = self._scheduled
        due: list[Scheduled] = []
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._cancelled -= 1
            else:
                handle._owner = None  # out of the heap: a cancel() now counts nothing
                due.append(handle)
        for handle in due:
            if handle.cancelled:
                continue
            callback = handle.callback
            handle.cancelled = True  # done: a late cancel() is a no-op
            handle.callback = _nothing
            try:
                callback()
            except Exception:
                log.exception("endpoint.scheduled.failed")

    def _rearm(self) -> None:
        deadline = self.layer.get_timer()
        if self._scheduled:
            first = self._next_scheduled()
            if first is not None and (deadline is None or first < deadline):
                deadline = first
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.now()
        if self._scheduled:
            self._run_scheduled(now)
        self._run(self.layer.handle_timer(now))

    # -- helpers for the TU ------------------------------------------------------------

    def awaits(self, response: Response) -> bool:
        """A client transaction of ours matches ``response`` (RFC 3261 §17.1.3)."""
        try:
            return client_key(response) in self.layer.client
        except SIPError:
            return False

    def is_cancel_pending(self, handle: ClientRequest) -> bool:
        """True when a CANCEL was asked for but no provisional response arrived yet."""
        return handle.cancel_requested and not handle.cancel_sent

    @staticmethod
    def top_via(message: Message) -> Via | None:
        """The top Via of a message, or None when it has none or cannot be read."""
        try:
            vias = message.via
        except Exception:
            return None
        return vias[0] if vias else None

    @staticmethod
    def is_invite_client(handle: ClientRequest) -> bool:
        """True for an INVITE client transaction handle."""
        return isinstance(handle.tx, ClientInviteTransaction)
