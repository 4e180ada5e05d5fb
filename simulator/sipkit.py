"""Shared SIP user-agent machinery for the simulator's carrier, softphones and dialer.

Everything here sits on :class:`gateway.transport.endpoint.SipEndpoint` and the sans-IO
``gateway.sip`` package. :class:`UserAgent` is the common base of every
simulated SIP peer: it owns one endpoint on loopback, keeps the dialogs of its
calls, and answers the requests that are the same for every peer — OPTIONS,
in-dialog BYE and re-INVITE, CANCEL of a ringing inbound call, the ACK that
stops a 2xx retransmission (:class:`AckRetransmitter`, RFC 3261 §13.3.1.4).
Subclasses decide what to do with a new INVITE (:meth:`UserAgent.on_invite`)
and REGISTER (:meth:`UserAgent.on_register`).

:meth:`UserAgent.place_call` is the one UAC call routine (INVITE with an SDP
offer, digest answer to 401/407, CANCEL after a ring timeout, ACK of the 2xx
through the :class:`~gateway.sip.dialog.Dialog`, BYE after a talk time) that
the softphones, the dialer and the carrier's inbound calls share; it returns a
:class:`CallResult`.

Business time (ring and talk durations) comes from an injected
:class:`~simulator.clock.BusinessClock`: on a scaled clock it is turned into
real waits with ``clock.real_delay``, on an
:class:`~simulator.clock.EventClock` every such wait is an event of that clock
(:meth:`UserAgent.later`, :func:`~simulator.clock.business_wait`). SIP timers
stay real (the endpoint's loop clock).

This module must never decide policy, read the wall clock for business time,
or log an unmasked callee number (log lines go through
:func:`policies.privacy.mask_number`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.sip import Request, Response
from gateway.sip.dialog import Dialog, DialogError, DialogId, DialogState
from gateway.sip.digest import DigestClient
from gateway.sip.errors import SIPError
from gateway.sip.headers import Reason, RetryAfter
from gateway.sip.transaction import (
    AckWait,
    Send,
    Timeout,
    TimerConfig,
    cancel_target_key,
    server_key,
)
from gateway.transport import Address, Message, Transport
from gateway.transport.endpoint import ClientRequest, ServerRequest, SipEndpoint
from gateway.transport.memory import MemoryNetwork, MemoryTransport
from policies.privacy import mask_number
from simulator.clock import (
    BusinessClock,
    EventClock,
    EventTimer,
    ScaledClock,
    business_wait,
    is_event_clock,
)

__all__ = [
    "ALLOW",
    "AckRetransmitter",
    "CallResult",
    "InboundCall",
    "LoopNetwork",
    "UserAgent",
    "new_call_id",
    "new_tag",
    "reason_text",
    "retry_after",
    "sdp_answer",
    "sdp_offer",
    "uri_address",
]

log = structlog.get_logger("simulator.sipkit")

#: Methods every simulated peer answers.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO"

_session_ids = itertools.count(int(datetime.now(tz=UTC).timestamp()))


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


def new_call_id(host: str = "127.0.0.1") -> str:
    """A fresh, globally unique Call-ID (§8.1.1.4)."""
    return f"{secrets.token_hex(10)}@{host}"


def sdp_offer(host: str, port: int, *, user: str = "-") -> bytes:
    """A minimal audio SDP offer (RFC 4566, PCMU/PCMA) for ``host:port``."""
    sid = next(_session_ids)
    lines = [
        "v=0",
        f"o={user} {sid} {sid} IN IP4 {host}",
        "s=dialgate-sim",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def sdp_answer(offer: bytes, host: str, port: int, *, user: str = "-") -> bytes:
    """An SDP answer accepting the first codec of ``offer`` (PCMU when unreadable)."""
    codec = "0"
    for line in offer.decode("utf-8", "replace").splitlines():
        if line.startswith("m=audio"):
            parts = line.split()
            if len(parts) > 3:
                codec = parts[3]
            break
    sid = next(_session_ids)
    names = {"0": "PCMU/8000", "8": "PCMA/8000"}
    lines = [
        "v=0",
        f"o={user} {sid} {sid} IN IP4 {host}",
        "s=dialgate-sim",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {codec}",
        f"a=rtpmap:{codec} {names.get(codec, 'PCMU/8000')}",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def reason_text(response: Response) -> str | None:
    """The ``text`` of the Reason header (RFC 3326), e.g. ``dnc``; None without one."""
    try:
        reason: Reason | None = response.reason_header
    except SIPError:
        return None
    return None if reason is None else reason.text


def retry_after(response: Response) -> int | None:
    """Retry-After seconds of a response, None when absent or unreadable."""
    try:
        value: RetryAfter | None = response.retry_after
    except SIPError:
        return None
    return None if value is None else value.seconds


def uri_address(uri_host: str, port: int | None) -> Address:
    """A ``(host, port)`` from a URI's host and port (5060 when absent)."""
    host = uri_host[1:-1] if uri_host.startswith("[") else uri_host
    return host, 5060 if port is None else port


class _NotifyingQueue(deque[tuple[bytes, Address, Address]]):
    """The network queue that asks its owner whether a datagram goes out, and says it waits."""

    def __init__(self, on_append: Callable[[tuple[bytes, Address, Address]], bool]) -> None:
        super().__init__()
        self._on_append = on_append

    def append(self, item: tuple[bytes, Address, Address]) -> None:
        if self._on_append(item):
            super().append(item)


class LoopNetwork(MemoryNetwork):
    """An in-memory network delivered by the running loop: no sockets, no ports.

    :class:`~gateway.transport.memory.MemoryNetwork` delivers only when
    ``flush()`` is called; here every send schedules a flush with
    ``loop.call_soon``, so UAs on it behave as on loopback UDP, in order and
    without loss. ``drop`` can be set to lose datagrams matching a predicate;
    it sees every datagram once, when it is sent (also one sent while a flush
    is delivering others).
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue = _NotifyingQueue(self._accept)
        self.drop: Callable[[bytes, Address, Address], bool] | None = None
        self._scheduled = False

    def _accept(self, item: tuple[bytes, Address, Address]) -> bool:
        if self.drop is not None and self.drop(*item):
            return False
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)
        return True

    def _deliver(self) -> None:
        self._scheduled = False
        self.flush()


def _default_clock() -> BusinessClock:
    return ScaledClock(datetime.now(tz=UTC))


@dataclass(slots=True)
class CallResult:
    """One call as a simulated UA saw it (outbound or inbound).

    ``status`` is the final status of the INVITE (after any digest retry);
    ``reason_text`` the Reason header text (``dnc``, ``no-card-available``...);
    ``retry_after`` its Retry-After. Times: ``started`` is business epoch
    seconds; ``ring_seconds`` and ``talk_seconds`` are business seconds.
    ``hangup`` is ``"local"`` or ``"remote"`` for an answered call.
    """

    call_id: str
    direction: str
    peer: str
    callee: str
    started: float
    status: int | None = None
    reason_phrase: str = ""
    reason_text: str | None = None
    retry_after: int | None = None
    warning: str | None = None
    provisional: list[int] = field(default_factory=list)
    challenges: int = 0
    cancelled: bool = False
    answered: bool = False
    ring_seconds: float = 0.0
    talk_seconds: float = 0.0
    hangup: str | None = None
    bye_status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def masked_callee(self) -> str:
        """The callee number masked for logs and reports."""
        return mask_number(self.callee)


class AckRetransmitter:
    """Drives :class:`~gateway.sip.transaction.AckWait` on the loop: resend the 2xx until ACK.

    §13.3.1.4: the UAS core retransmits its 2xx (T1 doubling up to T2) until
    the ACK arrives; after 64*T1 without one ``on_timeout`` runs (the session
    "SHOULD be terminated" with a BYE).
    """

    def __init__(
        self,
        endpoint: SipEndpoint,
        invite: Request,
        response: Response,
        transport: Transport,
        peer: Address,
        on_timeout: Callable[[], None],
    ) -> None:
        self.endpoint = endpoint
        self.transport = transport
        self.peer = peer
        self.on_timeout = on_timeout
        self.wait = AckWait(invite, response, endpoint.now(), timers=endpoint.layer.config)
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    @property
    def acked(self) -> bool:
        """True once the ACK for the 2xx arrived."""
        return self.wait.acked

    def _arm(self) -> None:
        deadline = self.wait.get_timer()
        if deadline is not None:
            self._handle = self.endpoint.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        for action in self.wait.handle_timer(self.endpoint.now()):
            if isinstance(action, Send) and isinstance(action.message, Response):
                self.transport.send(action.message, self.peer)
            elif isinstance(action, Timeout):
                try:
                    self.on_timeout()
                except Exception:
                    log.exception("sim.ack_timeout.failed")
        self._arm()

    def receive_ack(self, ack: Request) -> bool:
        """Stop retransmitting on the matching ACK; True when it matched."""
        matched = self.wait.receive_ack(ack)
        if matched:
            self.stop()
        return matched

    def stop(self) -> None:
        """Stop retransmitting (the call ended)."""
        self.wait.done = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass(slots=True, eq=False)
class InboundCall:
    """State of an INVITE this UA received (carrier: a call to a callee; agent: a callback)."""

    server: ServerRequest
    to_tag: str
    started: float
    contact: str
    dialog: Dialog | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    acks: AckRetransmitter | None = None
    sdp: bytes = b""
    cancelled: bool = False
    hangup: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    timers: list[asyncio.TimerHandle | EventTimer] = field(default_factory=list)
    final_status: int | None = None

    @property
    def request(self) -> Request:
        """The INVITE."""
        return self.server.request

    @property
    def peer(self) -> Address:
        """Where in-dialog requests go: the INVITE's source (symmetric, loopback peers)."""
        return self.server.source

    def cancel_timers(self) -> None:
        """Cancel every pending ring/answer/hang-up timer."""
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()


@dataclass(slots=True, eq=False)
class _OutboundDialog:
    """An established outbound call: its dialog, its ACK, the remote-BYE signal."""

    dialog: Dialog
    ack: Request
    dest: Address
    remote_bye: asyncio.Event = field(default_factory=asyncio.Event)
    bye_sent: bool = False


class UserAgent:
    """Base of every simulated SIP peer: one endpoint, its calls and dialogs.

    Use ``await ua.start()`` (binds ``udp:host:0``) and ``await ua.close()``.
    Subclasses override :meth:`on_invite` (new INVITE), :meth:`on_register`,
    :meth:`on_call_ended` (inbound call over) and may override
    :meth:`on_other_request`.
    """

    def __init__(
        self,
        name: str,
        *,
        clock: BusinessClock | None = None,
        host: str = "127.0.0.1",
        timers: TimerConfig | None = None,
        mask_callees: bool = True,
        sdp: bytes | None = None,
    ) -> None:
        self.name = name
        #: A fixed SDP body for every offer and answer of this UA (None: one made per call).
        self.sdp = sdp
        self.clock: BusinessClock = clock if clock is not None else _default_clock()
        self.host = host
        self.mask_callees = mask_callees
        self.endpoint = SipEndpoint(
            self._dispatch, on_stray_response=self._on_stray_response, timers=timers
        )
        self.inbound: dict[DialogId, InboundCall] = {}
        self._pending: dict[Hashable, InboundCall] = {}
        self._outbound: dict[DialogId, _OutboundDialog] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._calls: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, port: int = 0, *, network: LoopNetwork | None = None) -> Address:
        """Bind UDP on ``host:port`` (0 = a free port); returns the bound address.

        With ``network`` the UA sits on an in-memory transport at
        ``(host, port)`` instead (port 0 becomes 5060): no socket at all.
        """
        if network is None:
            await self.endpoint.listen("udp", self.host, port)
        else:
            # add_transport points the transport's callback at the endpoint.
            transport = MemoryTransport(
                lambda _m, _s, _t: None, (self.host, port or 5060), network=network
            )
            self.endpoint.add_transport(transport)
        self._started = True
        return self.address

    async def close(self) -> None:
        """Stop every pending timer and task and close the endpoint. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for call in list(self._pending.values()) + list(self.inbound.values()):
            call.cancel_timers()
            if call.acks is not None:
                call.acks.stop()
        tasks = list(self._tasks) + [t for t in self._calls if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.endpoint.close()

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        """The bound UDP ``(host, port)``."""
        return self.endpoint.transport("udp").local_address

    @property
    def transport(self) -> Transport:
        """The UDP transport."""
        return self.endpoint.transport("udp")

    def contact(self, user: str | None = None) -> str:
        """Our Contact URI (``sip:user@host:port``)."""
        return self.endpoint.contact_uri(self.transport, user)

    def spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        """Run ``coro`` as a task owned by this UA (cancelled on close)."""
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sim.task.failed", ua=self.name, error=repr(task.exception()))

    def later(
        self, business_seconds: float, fn: Callable[[], None]
    ) -> asyncio.TimerHandle | EventTimer:
        """Call ``fn`` after ``business_seconds`` of business time.

        An event of an :class:`~simulator.clock.EventClock`, else a real-time
        loop timer of ``clock.real_delay(business_seconds)``.
        """
        if isinstance(self.clock, EventClock):
            return self.clock.call_later(business_seconds, fn)
        return self.endpoint.loop.call_later(self.clock.real_delay(business_seconds), fn)

    def mask(self, number: str) -> str:
        """A callee number as it may appear in logs."""
        return mask_number(number, enabled=self.mask_callees)

    # -- request dispatch --------------------------------------------------------------

    def _dispatch(self, req: ServerRequest) -> None:
        request = req.request
        method = request.method
        if method == "ACK":
            self._on_ack(request)
            return
        if method == "CANCEL":
            self._on_cancel(req)
            return
        if method == "OPTIONS":
            req.respond(200, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
            return
        to_tag = request.to.tag
        if to_tag is not None and method != "REGISTER":
            self._in_dialog(req)
            return
        if method == "INVITE":
            self.on_invite(req)
        elif method == "REGISTER":
            self.on_register(req)
        elif method in ("BYE", "INFO"):
            req.respond(481, to_tag=new_tag())
        else:
            self.on_other_request(req)

    def on_invite(self, req: ServerRequest) -> None:
        """A new INVITE. Default: 480 (nobody here)."""
        req.respond(480, to_tag=new_tag())

    def on_register(self, req: ServerRequest) -> None:
        """A REGISTER. Default: 405 (we are no registrar)."""
        req.respond(405, to_tag=new_tag(), headers=[("Allow", ALLOW)])

    def on_other_request(self, req: ServerRequest) -> None:
        """Any other out-of-dialog request. Default: 405 with Allow."""
        req.respond(405, to_tag=new_tag(), headers=[("Allow", ALLOW)])

    def on_call_ended(self, call: InboundCall) -> None:
        """An inbound call is over (BYE either way, CANCEL, or a final non-2xx)."""

    def _on_ack(self, ack: Request) -> None:
        call = self.inbound.get(DialogId.for_incoming_request(ack))
        if call is not None and call.acks is not None:
            call.acks.receive_ack(ack)

    def _on_cancel(self, req: ServerRequest) -> None:
        try:
            key = cancel_target_key(req.request)
        except SIPError:
            req.respond(400)
            return
        call = self._pending.get(key)
        if call is None:
            req.respond(481, to_tag=new_tag())
            return
        req.respond(200, to_tag=call.to_tag)
        if call.final_status is not None:
            return  # §9.2: a final response went out already; CANCEL has no effect
        call.cancelled = True
        self.finish_inbound(call, 487, "Request Terminated")

    def _in_dialog(self, req: ServerRequest) -> None:
        request = req.request
        key = DialogId.for_incoming_request(request)
        inbound = self.inbound.get(key)
        outbound = self._outbound.get(key)
        dialog = inbound.dialog if inbound is not None else None
        if dialog is None and outbound is not None:
            dialog = outbound.dialog
        if dialog is None:
            req.respond(481)
            return
        try:
            dialog.receive_request(request)
        except DialogError as err:
            if (
                request.method == "BYE"
                and outbound is not None
                and dialog.state is DialogState.TERMINATED
            ):
                # BYEs crossed: we are hanging this call up ourselves and our BYE
                # is in flight. The far end wants the same thing; say yes.
                req.respond(200)
                outbound.remote_bye.set()
                return
            req.respond(err.status_code, err.reason_phrase)
            return
        method = request.method
        if method == "BYE":
            req.respond(200)
            if inbound is not None:
                self._end_inbound(inbound, "remote")
            if outbound is not None:
                outbound.remote_bye.set()
                self._outbound.pop(key, None)  # over (place_call keeps its own reference)
        elif method == "INVITE":
            # re-INVITE (session refresh, hold): accept with our current SDP.
            if inbound is not None:
                sdp = inbound.sdp
            else:
                sdp = self.sdp or sdp_answer(request.body, self.host, 0)
            headers = [("Contact", f"<{self.contact()}>")]
            if sdp:
                headers.append(("Content-Type", "application/sdp"))
            req.respond(200, headers=headers, body=sdp)
        elif method in ("INFO", "UPDATE", "NOTIFY", "OPTIONS"):
            req.respond(200)
        else:
            req.respond(405, headers=[("Allow", ALLOW)])

    def _on_stray_response(self, message: Message, source: Address, transport: Transport) -> None:
        if isinstance(message, Response):
            self._reack(message)

    def _reack(self, message: Response) -> None:
        """§13.2.2.4: a retransmitted 2xx for an INVITE we ACKed is ACKed again."""
        if not 200 <= message.status < 300:
            return
        try:
            if message.cseq.method != "INVITE":
                return
            key = DialogId.for_response(message)
        except SIPError:
            return
        call = self._outbound.get(key)
        if call is not None and call.ack.cseq.seq == message.cseq.seq:
            self.endpoint.send_stateless(call.ack.copy(), call.dest)

    # -- inbound call helpers ----------------------------------------------------------

    def accept_inbound(self, req: ServerRequest) -> InboundCall:
        """Track a new INVITE as an inbound call (so CANCEL finds it); returns its state."""
        call = InboundCall(
            server=req,
            to_tag=new_tag(),
            started=self.clock.now(),
            contact=self.contact(),
        )
        self._pending[server_key(req.request)] = call
        return call

    def ring(self, call: InboundCall, status: int = 180) -> None:
        """Send 180 Ringing (with our tag and Contact: an early dialog)."""
        if call.final_status is None:
            call.server.respond(
                status, to_tag=call.to_tag, headers=[("Contact", f"<{call.contact}>")]
            )

    def answer(self, call: InboundCall) -> bool:
        """Send 200 OK with an SDP answer, create the dialog and wait for the ACK."""
        if call.final_status is not None or self._closed:
            return False
        request = call.request
        try:
            dialog = Dialog.from_uas(request, call.to_tag, call.contact)
        except DialogError as err:
            self.finish_inbound(call, err.status_code, err.reason_phrase)
            return False
        call.sdp = self.sdp or sdp_answer(
            request.body, self.host, 40000 + (hash(call.to_tag) % 10000) * 2
        )
        response = call.server.respond(
            200,
            to_tag=call.to_tag,
            headers=[("Contact", f"<{call.contact}>"), ("Content-Type", "application/sdp")],
            body=call.sdp,
        )
        call.final_status = 200
        call.dialog = dialog
        call.answered_at = self.clock.now()
        self._pending.pop(server_key(request), None)
        self.inbound[dialog.id] = call
        call.acks = AckRetransmitter(
            self.endpoint,
            request,
            response,
            call.server.transport,
            call.peer,
            on_timeout=lambda: self.hang_up(call),
        )
        return True

    def finish_inbound(
        self,
        call: InboundCall,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer the INVITE with a final non-2xx and end the call."""
        if call.final_status is not None:
            return
        call.final_status = status
        call.server.respond(status, reason, to_tag=call.to_tag, headers=headers)
        self._pending.pop(server_key(call.request), None)
        self._end_inbound(call, None)

    def hang_up(self, call: InboundCall) -> None:
        """Send BYE in the call's dialog (the callee / agent hangs up)."""
        dialog = call.dialog
        if dialog is None or call.ended.is_set() or self._closed:
            return
        bye = dialog.create_request("BYE")
        dialog.terminate()
        self.endpoint.send_request(bye, call.peer, transport=call.server.transport)
        self._end_inbound(call, "local")

    def _end_inbound(self, call: InboundCall, hangup: str | None) -> None:
        if call.ended.is_set():
            return
        call.cancel_timers()
        if call.acks is not None:
            call.acks.stop()
        call.hangup = hangup
        call.ended_at = self.clock.now()
        call.ended.set()
        if call.dialog is not None:
            self.inbound.pop(call.dialog.id, None)
        try:
            self.on_call_ended(call)
        except Exception:
            log.exception("sim.call_end.failed", ua=self.name)

    # -- outbound calls ----------------------------------------------------------------

    def outbound_calls(self) -> list[str]:
        """Call-IDs of our established outbound calls."""
        return [d.dialog.call_id for d in self._outbound.values()]

    def answered_calls(self) -> list[str]:
        """Call-IDs of the inbound calls we answered that are still up."""
        return [c.request.call_id for c in self.inbound.values()]

    def dialogs(self) -> dict[str, Dialog]:
        """Every confirmed dialog (answered inbound and established outbound calls) by Call-ID."""
        out = {d.dialog.call_id: d.dialog for d in self._outbound.values()}
        for call in self.inbound.values():
            if call.dialog is not None:
                out[call.request.call_id] = call.dialog
        return out

    async def in_dialog(
        self,
        method: str,
        *,
        call_id: str | None = None,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """Send ``method`` (BYE, re-INVITE, INFO, ...) in an established call; the final.

        The call is one we placed (:meth:`place_call`, :meth:`open_call`) or an
        inbound call we answered; ``call_id`` picks it (default: the only
        one). A 2xx to a re-INVITE is ACKed (§14.1). A BYE ends the call
        here at once (§15.1.1: the dialog is over as soon as the BYE is
        sent). Raises LookupError without such a call.
        """
        states = [s for s in self._outbound.values() if call_id in (None, s.dialog.call_id)]
        calls = [
            c
            for c in self.inbound.values()
            if c.dialog is not None and call_id in (None, c.request.call_id)
        ]
        if len(states) + len(calls) != 1:
            raise LookupError(f"{len(states) + len(calls)} established calls match {call_id!r}")
        extra = list(headers)
        if body:
            extra.append(
                ("Content-Type", "application/sdp" if method == "INVITE" else "text/plain")
            )
        if states:
            state = states[0]
            dialog, dest, transport = state.dialog, state.dest, None
        else:
            inbound = calls[0]
            assert inbound.dialog is not None
            dialog, dest, transport = inbound.dialog, inbound.peer, inbound.server.transport
        request = dialog.create_request(method, headers=extra, body=body)
        if method == "BYE":
            dialog.terminate()
            if states:
                states[0].bye_sent = True
                states[0].remote_bye.set()  # wakes place_call: the call is over
            else:
                self._end_inbound(calls[0], "local")
        handle = self.endpoint.send_request(request, dest, transport=transport or "udp")
        response = await handle.final
        if method == "BYE":
            if states:
                self._outbound.pop(states[0].dialog.id, None)
            return response
        dialog.receive_response(response)
        if method == "INVITE" and 200 <= response.status < 300:
            ack = dialog.create_request("ACK", cseq=request.cseq.seq)
            self.endpoint.send_stateless(ack, dest, transport=transport or "udp")
        return response

    async def open_call(
        self,
        dest: Address,
        *,
        request_uri: str,
        from_uri: str,
        to_uri: str,
        digest: DigestClient | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[Response, Request]:
        """INVITE ``dest`` and return (final response, the INVITE sent), leaving the call up.

        The step-by-step counterpart of :meth:`place_call` for tests that drive
        a call themselves: a 401/407 is answered once with ``digest``, a 2xx
        is ACKed (§13.2.2.4) and its dialog kept, so :meth:`in_dialog` sends
        BYE, re-INVITE or INFO in it and a BYE from the far end is answered;
        nothing is hung up on its own.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        call_id = new_call_id(self.host)
        from_tag = new_tag()
        offer = self.sdp or sdp_offer(self.host, 30000 + (hash(call_id) % 10000) * 2)
        auth: tuple[str, str] | None = None
        established: list[_OutboundDialog | None] = []

        def on_response(handle: ClientRequest, response: Response) -> None:
            if 200 <= response.status < 300:
                if not established:
                    established.append(self._confirm(handle.request, response, dest))
                else:
                    self._reack(response)

        for cseq in (1, 2):
            invite = Request(
                "INVITE",
                request_uri,
                [
                    ("From", f"<{from_uri}>;tag={from_tag}"),
                    ("To", f"<{to_uri}>"),
                    ("Call-ID", call_id),
                    ("CSeq", f"{cseq} INVITE"),
                    ("Contact", f"<{self.contact(self.name)}>"),
                    ("Allow", ALLOW),
                    ("Content-Type", "application/sdp"),
                    *headers,
                    *([auth] if auth is not None else []),
                ],
                offer,
            )
            final = await self.endpoint.send_request(invite, dest, on_response=on_response).final
            if final.status not in (401, 407) or digest is None or auth is not None:
                break
            name = "Proxy-Authenticate" if final.status == 407 else "WWW-Authenticate"
            if not digest.handle_challenge(final.status, final.headers.get_all(name)):
                break
            auth = digest.authorization("INVITE", request_uri, offer)
        return final, invite

    async def place_call(
        self,
        dest: Address,
        *,
        request_uri: str,
        from_uri: str,
        to_uri: str,
        callee: str,
        digest: DigestClient | None = None,
        headers: Sequence[tuple[str, str]] = (),
        talk_seconds: float | None = 30.0,
        ring_timeout: float | None = None,
        max_call_seconds: float = 4 * 3600.0,
        on_result: Callable[[CallResult], None] | None = None,
    ) -> CallResult:
        """Place one call through ``dest`` and play it out; returns what happened.

        INVITE with an SDP offer; a 401/407 is answered once with ``digest``
        (same Call-ID and From tag, CSeq + 1, §22.2); after ``ring_timeout``
        business seconds without a final response the INVITE is CANCELled
        (§9.1); a 2xx is ACKed through the dialog (§13.2.2.4) and the call is
        hung up with BYE after ``talk_seconds`` (None: wait for the remote
        BYE, at most ``max_call_seconds``) unless the far end sends BYE first.
        A call still in progress when the UA closes is cancelled.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            return await self._place_call(
                dest,
                request_uri=request_uri,
                from_uri=from_uri,
                to_uri=to_uri,
                callee=callee,
                digest=digest,
                headers=headers,
                talk_seconds=talk_seconds,
                ring_timeout=ring_timeout,
                max_call_seconds=max_call_seconds,
                on_result=on_result,
            )
        finally:
            if task is not None:
                self._calls.discard(task)

    async def _await_final(
        self,
        handle: ClientRequest,
        ringing: asyncio.Event,
        ring_timeout: float | None,
        result: CallResult,
    ) -> Response:
        """The INVITE's final response; CANCEL once it rang ``ring_timeout`` business seconds.

        The ring timeout runs from the first 18x, as on a phone: before the far
        end rings, only the transaction's Timer B (real time) bounds the wait —
        at a high clock speed a business-time timeout would otherwise fire
        within a network round trip.
        """
        if ring_timeout is None:
            return await handle.final
        ring_wait: asyncio.Future[Any] = asyncio.ensure_future(ringing.wait())
        waiters: set[asyncio.Future[Any]] = {handle.final, ring_wait}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ring_wait.cancel()
        if handle.final.done():
            return handle.final.result()
        if await business_wait(self.clock, handle.final, ring_timeout):
            return handle.final.result()
        result.cancelled = True
        handle.cancel()
        return await handle.final

    async def _place_call(
        self,
        dest: Address,
        *,
        request_uri: str,
        from_uri: str,
        to_uri: str,
        callee: str,
        digest: DigestClient | None,
        headers: Sequence[tuple[str, str]],
        talk_seconds: float | None,
        ring_timeout: float | None,
        max_call_seconds: float,
        on_result: Callable[[CallResult], None] | None,
    ) -> CallResult:
        call_id = new_call_id(self.host)
        from_tag = new_tag()
        result = CallResult(
            call_id=call_id,
            direction="out",
            peer=f"{dest[0]}:{dest[1]}",
            callee=callee,
            started=self.clock.now(),
        )
        offer = self.sdp or sdp_offer(self.host, 30000 + (hash(call_id) % 10000) * 2)
        cseq = 1
        auth: tuple[str, str] | None = None
        loop = self.endpoint.loop
        # Ring and talk measures: business readings on an event clock (exact and
        # repeatable); real readings times the speed on a scaled clock.
        virtual = is_event_clock(self.clock)
        clock_now = self.clock.now if virtual else loop.time
        scale = 1.0 if virtual else _speed(self.clock)
        real_start = clock_now()
        first_ring: list[float] = []
        ringing = asyncio.Event()

        established: list[_OutboundDialog | None] = []

        def on_response(handle: ClientRequest, response: Response) -> None:
            if 200 <= response.status < 300:
                if not established:
                    # The first 2xx: ACK it and know the dialog right away, before this
                    # coroutine resumes: the far end's BYE may follow in the same loop turn.
                    established.append(self._confirm(handle.request, response, dest))
                else:
                    # RFC 6026 §8.4: a retransmitted 2xx reaches the TU, which ACKs it again.
                    self._reack(response)
            elif 100 < response.status < 200:
                result.provisional.append(response.status)
                ringing.set()
                if not first_ring:
                    first_ring.append(clock_now())

        try:
            while True:
                invite = Request(
                    "INVITE",
                    request_uri,
                    [
                        ("From", f"<{from_uri}>;tag={from_tag}"),
                        ("To", f"<{to_uri}>"),
                        ("Call-ID", call_id),
                        ("CSeq", f"{cseq} INVITE"),
                        ("Contact", f"<{self.contact(self.name)}>"),
                        ("Allow", ALLOW),
                        ("Content-Type", "application/sdp"),
                        *headers,
                        *([auth] if auth is not None else []),
                    ],
                    offer,
                )
                handle = self.endpoint.send_request(invite, dest, on_response=on_response)
                final = await self._await_final(handle, ringing, ring_timeout, result)
                if final.status in (401, 407) and digest is not None and not result.cancelled:
                    name = "Proxy-Authenticate" if final.status == 407 else "WWW-Authenticate"
                    if digest.handle_challenge(final.status, final.headers.get_all(name)):
                        auth = digest.authorization("INVITE", request_uri, offer)
                        result.challenges += 1
                        cseq += 1
                        continue
                break

            if digest is not None and auth is not None and final.status not in (401, 407):
                digest.accepted()
            result.status = final.status
            result.reason_phrase = final.reason
            result.reason_text = reason_text(final)
            result.retry_after = retry_after(final)
            result.warning = final.headers.get("Warning")
            for name in ("Reason", "Retry-After", "Warning", "X-Card"):
                value = final.headers.get(name)
                if value is not None:
                    result.headers[name] = value
            real_final = clock_now()
            ring_from = first_ring[0] if first_ring else real_start
            result.ring_seconds = max(0.0, real_final - ring_from) * scale
            if not 200 <= final.status < 300:
                if on_result is not None:
                    on_result(result)
                return result

            result.answered = True
            state = established[0] if established else None
            if state is None:
                result.hangup = "error"
                if on_result is not None:
                    on_result(result)
                return result
            dialog = state.dialog
            answered_at = self.clock.now()
            real_answer = loop.time()
            wait = max_call_seconds if talk_seconds is None else talk_seconds
            await self._talk(state, wait)
            # Decide only now, with no await between the decision and the BYE: the
            # callee's BYE may have landed in the same loop turn as our talk timer
            # (its dialog is then terminated and a BYE of ours would be a 481).
            if state.bye_sent:
                result.hangup = "local"  # hung up through in_dialog("BYE")
            elif state.remote_bye.is_set() or dialog.state is DialogState.TERMINATED:
                result.hangup = "remote"
            else:
                result.hangup = "local"
                bye = dialog.create_request("BYE")
                dialog.terminate()
                bye_handle = self.endpoint.send_request(bye, dest)
                # A BYE of the callee crossing ours is answered 200 by _in_dialog
                # (the dialog stays known until this one is over).
                result.bye_status = (await bye_handle.final).status
            result.talk_seconds = max(0.0, self.clock.now() - answered_at)
            if result.talk_seconds == 0.0 and not virtual:
                result.talk_seconds = (loop.time() - real_answer) * _speed(self.clock)
            if on_result is not None:
                on_result(result)
            return result
        finally:
            # Forget the dialog however the call ends (also when the UA closes mid-call).
            for confirmed in established:
                if confirmed is not None:
                    self._outbound.pop(confirmed.dialog.id, None)

    def _confirm(
        self, invite: Request, response: Response, dest: Address
    ) -> _OutboundDialog | None:
        """§13.2.2.4: the UAC core ACKs a 2xx itself, outside the transaction; the dialog is kept."""
        try:
            dialog = Dialog.from_uac(invite, response)
        except DialogError:
            return None
        ack = dialog.create_request("ACK", cseq=invite.cseq.seq)
        state = _OutboundDialog(dialog, ack, dest)
        self._outbound[dialog.id] = state
        self.endpoint.send_stateless(ack.copy(), dest)
        return state

    async def _talk(self, state: _OutboundDialog, business_seconds: float) -> None:
        """Wait until the far end hangs up or ``business_seconds`` pass, whichever is first."""
        if state.remote_bye.is_set():
            return
        await business_wait(self.clock, state.remote_bye.wait(), business_seconds)


def _speed(clock: BusinessClock) -> float:
    """Business seconds per real second of ``clock`` (1 when it does not say)."""
    delay = clock.real_delay(1.0)
    return 1.0 / delay if delay > 0 else 1.0
