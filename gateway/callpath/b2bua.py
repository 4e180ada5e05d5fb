"""The B2BUA: an authenticated INVITE becomes an A-leg and a B-leg, relayed end to end.

Outbound (agent or dialer → carrier): the A-leg is the server transaction of
the agent's INVITE (100 Trying goes out at once, from the transaction layer);
the destination is normalized (emergency check first, 484 when unparseable);
the policy pipeline decides (a rejection is answered with the code, ``Reason:
SIP;cause=…;text="…"`` and Retry-After of DESIGN.md "Policy outcomes on the
wire") and picks a card with a write-ahead reservation; then a B-leg INVITE
leaves for the card's carrier with its own Call-ID, tags and branch, From =
the card's number, To = the E.164 destination at the carrier, Contact = the
gateway, Max-Forwards one less than the A-leg's, the SDP unchanged, and the
card's credentials answering a 401/407 (RFC 3261 §22.2).

Relaying. 1xx with a To tag and 2xx go to the A-leg with the gateway's own
A-side To tag (one per call, kept across failover attempts) and Contact; the
2xx is retransmitted to the agent until its ACK (RFC 3261 §13.3.1.4,
:class:`~gateway.sip.transaction.AckWait`). Each leg ACKs its own 2xx: the
carrier's 2xx is ACKed when the agent's ACK arrives (its body, for a late
offer, is carried over); a 2xx retransmitted by the carrier after that gets
the same ACK again. The ACK of a non-2xx is hop by hop (the transactions).
CANCEL before the answer → CANCEL on the B-leg and 487 to the agent (§9.2);
a 200 crossing that CANCEL is ACKed and ended with a BYE. BYE from either side
is answered 200 at once and sent to the other side. Other in-dialog requests
(re-INVITE, UPDATE, INFO, OPTIONS, …) become a new transaction on the other
leg and the response comes back; a 2xx to a relayed re-INVITE is ACKed on the
far leg at once, and the originator's ACK is absorbed (offers in an ACK of a
re-INVITE are not supported).

Failover. Every carrier final answer is classified once (``gateway.cards.classify``,
applied by ``CardManager.on_response`` / ``on_fault``): ``card-dead`` (a carrier
rule, 402, a dead Q.850 cause, credentials refused) before any 18x releases the
reservation and starts a NEW B-leg on another card (at most
:data:`~gateway.callpath.failover.MAX_CARDS_PER_CALL` cards a call);
``trunk-unreachable`` (no response at all, an originating-side Q.850 cause,
503 + Retry-After) before any 18x allows at most one more attempt, on a card
that shares neither the device nor the trunk (none: the agent gets 408 for a
timeout, else the answer, with ``Reason: …text="trunk-unreachable"``); everything else — every answer after an 18x, and
403/404/5xx no rule explains — is the callee's: relayed (a 503 as 500, RFC 3261
§16.7) and never retried, so no callee is dialled twice. A bound agent stays
on its card: failover moves it only when its card died (it is re-bound once,
stored, logged and published), or when its pool allows ``spill``. When no card
is left: 503 + Retry-After + ``Reason: …text="no-card-available"`` and a
``Warning: 399 dialgate "c1 night_window until 08:00; …"`` with each card's cause.

Inbound (carrier → agent) uses the same relay with the roles swapped: the
carrier's INVITE is the A-leg and the agent's registered contact (reached
through the flow it registered from) is the B-leg; no policy, no cards.

Persistence and recovery are collaborators the relay calls, each in its own
module: :mod:`~gateway.callpath.dialogs` writes every B-leg INVITE ahead of
sending it (fail closed: a B-leg that cannot be stored does not leave; 503
``store-unavailable``, the reservation released) and the dialogs at the answer;
:mod:`~gateway.callpath.recovery` ends what a dead process left and ACKs + hangs
up every 2xx nobody listens to any more; :mod:`~gateway.callpath.failover`
answers whether a failed call may try another card and which one;
:mod:`~gateway.callpath.bindings` keeps which card each agent is bound to. The
call's states and their one table are in :mod:`~gateway.callpath.calls`.

CDRs: one :class:`~gateway.callpath.cdr.CallRecord` per call attempt (blocked and
failed ones included), written by :class:`~gateway.callpath.cdr.CdrRecorder` when the
call ends, and the reservation finished with its outcome (answered, talk seconds,
short call). The services the relay is given are composed in
:mod:`~gateway.callpath.services`.

No stuck calls. Every reserved call ends by a timer even when its B-leg never
completes: Timer B (no answer at all), Timer C (:data:`NO_ANSWER_TIMEOUT`, then a
CANCEL), 64*T1 after any CANCEL the gateway sends with no final answer to the
INVITE (RFC 3261 §9.1: a carrier that answers the CANCEL 200 and never the 487),
and 64*T1 without the agent's ACK of a 2xx (§13.3.1.4: both legs get a BYE).
The B2BUA's own timers (Timer C, the 2xx retransmissions while the ACK is
awaited) run on the endpoint's one timer (:meth:`SipEndpoint.schedule`), never
on a loop timer of their own.

Every move of a call's state goes through the table of
:mod:`~gateway.callpath.calls` (:meth:`Call.advance`): an illegal one raises, and
the handler that made it logs it (no exception of one call reaches the endpoint).

One call id. Log lines, CDRs, MQTT call events and the admin API name a call by
the SIP Call-ID of its A-leg (``call_id``); lines and events about a B-leg add
that leg's Call-ID (``b_call_id``; ``b_call_ids`` on ``call.ended``, one per
card tried — the CDR has no column for them). The internal :attr:`Call.key`
(the quota reservation's and the stored dialogs' key) appears only as ``key=``
where those records are concerned.

This module must never send a request from an unauthenticated party to a
carrier, put the agent's credentials, Contact, Via or address into a B-leg,
log a callee number unmasked (when masking is on), or let an exception from
one call escape into the endpoint.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from gateway.callpath.auth import Identity, IdentityKind
from gateway.callpath.bindings import AgentBindings
from gateway.callpath.calls import Call, CallState, Leg, Side
from gateway.callpath.cdr import CallRecord, CdrRecorder, Outcome, call_record
from gateway.callpath.dialogs import CallDialogStore
from gateway.callpath.failover import Failover
from gateway.callpath.recovery import OrphanRecovery, StrayAnswers
from gateway.cards import BLegClass, CardState, Verdict
from gateway.sip import Request, Response
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.digest import DigestClient
from gateway.sip.errors import SIPError
from gateway.sip.headers import NameAddr
from gateway.sip.message import make_response
from gateway.sip.transaction import AckWait, Send, Timeout
from gateway.sip.uri import URI
from gateway.store import StoreUnavailable
from gateway.store.spool import CdrWriter
from gateway.telemetry.events import CallEvent, CallEventKind, EventBus
from gateway.transport import Address, Transport
from gateway.transport.endpoint import ClientRequest, ServerRequest, SipEndpoint
from policies.context import build_context
from policies.decision import Decision, RejectReason, reason_header
from policies.errors import AddressIncompleteError
from policies.privacy import mask_number

if TYPE_CHECKING:
    from gateway.callpath.registrar import Binding
    from gateway.callpath.services import CallServices
    from gateway.config import CardSettings, CarrierSettings

__all__ = ["B2BUA"]

log = structlog.get_logger("gateway.callpath.b2bua")

#: Headers that describe the body and travel with it to the other leg.
_BODY_HEADERS = ("Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language")
#: Headers of a final failure that are relayed to the A-leg.
_RELAYED_FINAL = ("Reason", "Retry-After", "Warning")
_ringing_statuses = frozenset({180, 183})

NO_ANSWER_TIMEOUT = 180.0
"""Seconds a B-leg may stay unanswered before it is CANCELled (RFC 3261 §16.6 item
11: Timer C, "MUST be set to a value greater than 3 minutes" for a proxy; a
carrier that sends 100/180 and then nothing would otherwise hold the call forever)."""

TRUNK_UNREACHABLE = "trunk-unreachable"
"""Reason text of an answer after the card's trunk did not answer (no failover left)."""


class B2BUA:
    """Calls in progress and the relay between their legs."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        services: CallServices,
        *,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bus = bus
        self.services = services
        self.settings = services.settings
        self.clock = clock
        # A store outage never loses a CDR: refused ones are spooled and written later.
        self.cdrs = services.cdrs if services.cdrs is not None else CdrWriter(services.store, None)
        # Store writes an outage refused (reservation finishes, dialog deletes), in order.
        self._unfinished: list[Callable[[], object]] = []
        self.mask = services.settings.policy.mask_numbers
        self._mask_memo: dict[str, str] = {}
        self.no_answer_timeout = NO_ANSWER_TIMEOUT
        # RFC 3261 §9.1: 64*T1 after a CANCEL, an INVITE with no final answer is over.
        self.cancel_give_up = endpoint.layer.config.timeout
        self.calls: dict[str, Call] = {}
        self._legs: dict[tuple[str, str], tuple[Call, Side]] = {}
        self._carriers: dict[str, CarrierSettings] = {c.name: c for c in services.settings.carriers}
        self._card_conf: dict[str, CardSettings] = {c.id: c for c in services.settings.cards}
        self._seq = itertools.count(1)
        # The card each agent or dialer last went out on: selection stays on it while it
        # has headroom (DESIGN "Quotas": carriers flag frequent switching). One entry per
        # configured identity, so bounded by the configuration.
        self._last_card: dict[str, str] = {}
        self.bindings = AgentBindings(
            services.store, services.cards, services.settings, clock=clock, bus=bus
        )
        self.stats: dict[str, int] = {
            "calls": 0,
            "answered": 0,
            "blocked": 0,
            "failovers": 0,
            "b_legs": 0,
            "cdrs": 0,
            "cdr_errors": 0,
            "dialogs_stored": 0,
            "b_legs_stored": 0,
            "dialog_store_errors": 0,
            "orphans_ended": 0,
            "orphans_cancelled": 0,
            "in_dialog_refused": 0,
        }
        # The collaborators: each owns one job and shares only these counters.
        self.dialogs = CallDialogStore(services.store, self.stats, self._unfinished)
        self.records = CdrRecorder(self.cdrs, self.stats)
        self.strays = StrayAnswers(endpoint)
        self.orphans = OrphanRecovery(
            endpoint, services.store, self.cdrs, self.strays, self.stats, self._masked
        )
        self.failover = Failover(services.cards, services.selection, services.settings)
        # Sources already logged for an in-dialog request not from the leg's peer
        # (bounded: cleared when full so a spoofing flood cannot grow it).
        self._refused_logged: set[str] = set()

    # -- helpers -----------------------------------------------------------------------

    def _token(self) -> str:
        return secrets.token_hex(8)

    def _event(self, call: Call, kind: CallEventKind, **fields: object) -> None:
        """Publish a ``dialgate/calls/{kind}`` event and any card transitions (never raises)."""
        if self.bus is None:
            return
        card = self.services.cards.find(call.card) if call.card else None
        event = CallEvent(
            kind=kind,
            call_id=call.a.call_id,
            at=self.clock(),
            callee=call.destination or None,
            card=call.card,
            pool=card.pool if card is not None else None,
            agent=call.identity.name,
            campaign=call.campaign or None,
            b_call_id=call.b_call_id,
            **fields,  # type: ignore[arg-type]
        )
        self.bus.publish(event)
        self.publish_card_events()

    def publish_card_events(self) -> None:
        """Hand CardManager's transitions (suspensions, pool exhausted) to the bus."""
        if self.bus is None:
            return
        events = self.services.cards.drain_events()
        if events:
            self.bus.publish_card_events(events)

    def _masked(self, number: str) -> str:
        if not self.mask:
            return number
        # Each call's number is masked for its attempt and its summary line: once.
        masked = self._mask_memo.get(number)
        if masked is None:
            if len(self._mask_memo) >= 1024:
                self._mask_memo.clear()
            masked = self._mask_memo[number] = mask_number(number)
        return masked

    def find_leg(self, call_id: str, local_tag: str | None) -> tuple[Call, Side] | None:
        """The call and side whose dialog (Call-ID, our tag) a request names."""
        if local_tag is None:
            return None
        return self._legs.get((call_id, local_tag))

    def has_dialog(self, req: Request) -> bool:
        """True when an in-dialog request (To tag set) names a leg of a live call."""
        try:
            return self.find_leg(req.call_id, req.to.tag) is not None
        except SIPError:
            return False

    def _refuse_foreign(
        self, call: Call, side: Side, method: str, source: Address, leg: Leg
    ) -> None:
        """Count and log (once per source host) an in-dialog request not from the leg's peer."""
        self.stats["in_dialog_refused"] += 1
        host = source[0]
        if host in self._refused_logged:
            return
        if len(self._refused_logged) >= 4096:
            self._refused_logged.clear()
        self._refused_logged.add(host)
        log.warning(
            "call.in_dialog.refused",
            call_id=call.a.call_id,
            b_call_id=call.b_call_id,
            side=side,
            method=method,
            source=f"{source[0]}:{source[1]}",
            peer=f"{leg.address[0]}:{leg.address[1]}",
        )

    def _contact(self, transport: Transport, *, secure: bool = False) -> str:
        # secure: the dialog was set up with a SIPS URI, so our Contact is SIPS too
        # (RFC 3261 §8.1.1.8, §12.1.1).
        return f"<{self.endpoint.contact_uri(transport, 'dialgate', secure=secure)}>"

    # -- new calls ---------------------------------------------------------------------

    def _new_call(
        self,
        sr: ServerRequest,
        identity: Identity,
        now: float,
        *,
        destination: str,
        campaign: str,
        lead_id: str = "",
        inbound: bool = False,
        card: str | None = None,
    ) -> Call | None:
        """A new call for an out-of-dialog INVITE (its A-leg answered from here), or None
        when the INVITE ran out of hops (answered 483: RFC 3261 §16.3 item 2 — a loop or a
        misroute; a B2BUA keeps the rule)."""
        req = sr.request
        self.stats["calls"] += 1
        call = Call(
            key=self._token(),
            a_req=sr,
            a=Leg(
                sr.transport,
                sr.source,
                req.call_id,
                self._token(),
                contact=self._contact(sr.transport, secure=req.uri.scheme == "sips"),
                strict=True,
                home=self.endpoint.home_of(sr.transport),
            ),
            identity=identity,
            destination=destination,
            attempt_at=now,
            campaign=campaign,
            lead_id=lead_id,
            inbound=inbound,
            card=card,
        )
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._reject_plain(call, 483, "Too Many Hops", "max-forwards")
            return None
        call.max_forwards = 70 if mf is None else mf - 1
        return call

    def on_invite(self, sr: ServerRequest, identity: Identity) -> None:
        """An authenticated out-of-dialog INVITE from an agent or dialer: decide and dial."""
        req = sr.request
        now = self.clock()
        call = self._new_call(
            sr,
            identity,
            now,
            destination=req.uri.user or "",
            campaign=self._campaign(req, identity),
            lead_id=(req.headers.get(self.settings.policy.lead_header) or "").strip()[:64],
        )
        if call is None:
            return
        bound = self.bindings.bound_card(identity)
        try:
            ctx = build_context(
                req.uri.user or "",
                agent=identity.name,
                campaign=call.campaign or None,
                default_region=self.settings.policy.default_region,
                now=datetime.fromtimestamp(now, UTC),
                emergency=self.services.emergency,
                bound_card=bound,
                last_card=self._last_card.get(identity.name),
                call_id=call.key,
            )
        except AddressIncompleteError:
            # DESIGN.md call flow step 2: unparseable → 484 Address Incomplete.
            self._reject_decision(
                call, Decision.reject(RejectReason.ADDRESS_INCOMPLETE, "normalize", "unparseable")
            )
            return
        call.destination = ctx.destination
        if bound is not None:
            ctx = replace(ctx, spill=self.bindings.spill(bound))
        call.ctx = ctx
        # The reservation (taken inside decide) and the write-ahead B-leg row are one
        # commit: the write-ahead commits the batch before the INVITE leaves, so a crash
        # leaves both or neither (never a counted start without its row).
        with self.services.store.batch():
            started = time.perf_counter()
            try:
                decision = self.services.pipeline.decide(ctx)
            except StoreUnavailable as exc:
                decision = Decision.reject(
                    RejectReason.STORE_UNAVAILABLE, "store", str(exc), retry_after=exc.retry_after
                )
            call.decision_seconds = time.perf_counter() - started
            card_id = decision.card_id if decision.allowed else None
            if card_id is not None:
                call.reserved = True
                self.calls[call.key] = call
                self._legs[(call.a.call_id, call.a.local_tag)] = (call, "a")
                log.debug(
                    "call.attempt",
                    call_id=call.a.call_id,
                    key=call.key,
                    agent=identity.name,
                    kind=str(identity.kind),
                    destination=self._masked(call.destination),
                    card=card_id,
                    campaign=call.campaign,
                )
                self._event(call, CallEventKind.ATTEMPT, decision_seconds=call.decision_seconds)
                self._dial_card(call, card_id)
        if card_id is None:
            if decision.allowed:
                decision = Decision.reject(
                    RejectReason.NO_CARD_AVAILABLE, "cards", "no card chosen", retry_after=60
                )
            self._reject_decision(call, decision)
            return
        self.bindings.note(call, bound, card_id)

    def on_inbound(self, sr: ServerRequest, binding: Binding, user: str, card: str | None) -> None:
        """An INVITE from a carrier for a card's number: ring the agent's registered contact."""
        req = sr.request
        now = self.clock()
        call = self._new_call(
            sr,
            Identity(IdentityKind.CARRIER, user, "inbound", card),
            now,
            destination=req.from_.uri.user or "",
            inbound=True,
            campaign="inbound",
            card=card,
        )
        if call is None:
            return
        if card is not None:
            call.cards_tried.append(card)
        self.calls[call.key] = call
        self._legs[(call.a.call_id, call.a.local_tag)] = (call, "a")
        try:
            transport = self.endpoint.transport(binding.transport, ipv6=":" in binding.source[0])
        except LookupError:
            self._final_to_a(call, 480, "Temporarily Unavailable")
            self._end(call, 480)
            return
        caller = req.from_
        domain = self.endpoint.sent_by(transport)
        call.b_target = binding.contact
        call.b_from = str(NameAddr(caller.display_name, _with_host(caller.uri, domain)))
        call.b_to = f"<sip:{user}@{domain}>"
        self._new_b_leg(call, transport, binding.source)

    def _campaign(self, req: Request, identity: Identity) -> str:
        header = req.headers.get(self.settings.policy.campaign_header)
        if header:
            return header.strip()[:64]
        return identity.campaign or ""

    # -- B-leg -------------------------------------------------------------------------

    def _dial_card(self, call: Call, card_id: str) -> None:
        """Start a new B-leg for the call on ``card_id`` (its first or a failover attempt)."""
        card = self.services.cards.get(card_id)
        carrier = self._carriers.get(card.carrier)
        call.card = card_id
        call.cards_tried.append(card_id)
        self._last_card[call.identity.name] = card_id
        if carrier is None:
            self._b_final(call, 503, "Service Unavailable", None, local=True)
            return
        addr = carrier.address
        transport = self.endpoint.transport(addr.transport.value, ipv6=":" in addr.ip)
        # A tls: trunk gets a sip: Request-URI with transport=tls: TLS on this hop.
        # A SIPS URI would ask for TLS on every hop to the callee (RFC 5630 §3.1.1),
        # which a trunk into the phone network cannot promise.
        suffix = f";transport={addr.transport.value}" if addr.transport.value != "udp" else ""
        call.b_target = URI.parse(f"sip:{call.destination}@{addr.host_port}{suffix}")
        call.b_from = f"<sip:{card.number}@{addr.host}>"
        call.b_to = f"<sip:{call.destination}@{addr.host_port}>"
        conf = self._card_conf.get(card_id)
        call.b_digest = None
        if conf is not None and conf.password is not None:
            call.b_digest = DigestClient(conf.username or card_id, conf.password.get_secret_value())
        self._new_b_leg(call, transport, (addr.ip, addr.port))

    def _new_b_leg(self, call: Call, transport: Transport, address: Address) -> None:
        old = call.b
        if old is not None:
            self._legs.pop((old.call_id, old.local_tag), None)
        b = Leg(transport, address, f"{self._token()}@dialgate", self._token())
        target = call.b_target
        b.contact = self._contact(transport, secure=target is not None and target.scheme == "sips")
        call.b = b
        call.b_cseq = 1
        call.b_ack = None
        call.advance(CallState.DIALING)
        call.b_call_ids.append(b.call_id)
        self._legs[(b.call_id, b.local_tag)] = (call, "b")
        self.stats["b_legs"] += 1
        log.debug(
            "call.b_leg",
            call_id=call.a.call_id,
            b_call_id=b.call_id,
            card=call.card,
            attempt=len(call.b_call_ids),
        )
        self._send_b_invite(call, None)
        if call.ended:
            return  # the INVITE did not leave (the write-ahead failed)
        if call.no_answer_timer is not None:
            call.no_answer_timer.cancel()
        call.no_answer_timer = self.endpoint.schedule(
            self.no_answer_timeout, functools.partial(self._no_answer, call, b)
        )

    def _no_answer(self, call: Call, leg: Leg) -> None:
        """Timer C fired: CANCEL the unanswered B-leg; the agent gets 408 once it ends."""
        call.no_answer_timer = None
        if (
            call.ended
            or call.answered
            or call.cancelled
            or call.b is not leg
            or call.b_client is None
        ):
            return
        log.debug(
            "call.no_answer_timeout",
            call_id=call.a.call_id,
            b_call_id=leg.call_id,
            card=call.card,
            seconds=self.no_answer_timeout,
        )
        call.timed_out = True
        self._cancel_b(call, "no-answer")

    def _cancel_b(self, call: Call, why: str) -> None:
        """CANCEL the B-leg's pending INVITE (its transaction guards the answer, §9.1).

        RFC 3261 §9.1: "If there is no final response for the original request in
        64*T1 seconds ..., the client SHOULD then consider the original transaction
        cancelled". The INVITE client transaction arms that guard when the CANCEL
        leaves (before any provisional the CANCEL waits for one, and Timer B ends a
        silent attempt first): a carrier that answers the CANCEL 200 and never
        sends the 487 then ends as a local 408 of the cancelled transaction, which
        :meth:`_cancel_expired` turns into the end of the call — instead of keeping
        the call, and its card's reservation, for ever.
        """
        handle = call.b_client
        if handle is None or handle.final.done():
            return
        call.cancel_why = call.cancel_why or why
        handle.cancel()

    def _cancel_expired(self, call: Call, handle: ClientRequest, why: str) -> None:
        """64*T1 after our CANCEL the B-leg INVITE still has no final answer: end the call.

        The agent already has its 487 (its own CANCEL, its BYE in the early dialog)
        or gets the 408 of Timer C now; the reservation is finished and the CDR
        written by :meth:`_end`, which also hands the INVITE to :meth:`_abandon`
        (a 2xx arriving later is ACKed and hung up).
        """
        if call.ended or call.answered or handle is not call.b_client:
            return
        log.warning(
            "call.cancel_unanswered",
            call_id=call.a.call_id,
            b_call_id=call.b.call_id if call.b is not None else None,
            card=call.card,
            why=why,
            seconds=round(self.cancel_give_up, 3),
            responses=",".join(str(s) for s in handle.responses),
        )
        b = call.b
        if b is not None:
            self._legs.pop((b.call_id, b.local_tag), None)
            if b.dialog is not None:
                b.dialog.terminate()
        if call.timed_out:
            self._final_to_a(call, 408, "Request Timeout")
            self._end(call, 408)
        else:
            self._final_to_a(call, 487, "Request Terminated")
            self._end(call, 487)

    def _abandon(self, handle: ClientRequest, call_id: str) -> None:
        """No call listens to this B-leg INVITE any more; its answers go nowhere but here.

        A late 2xx (the callee picked up after we gave up) is ACKed and hung up with
        a BYE (§13.2.2.4 / §15: the far end would otherwise keep the line up); a
        retransmission of that 2xx gets the same ACK again, not a second BYE.
        Non-2xx answers are the transaction's business (it ACKs them itself).
        Replacing the callback also drops the handle's reference to the call.
        """
        late = self.strays.late_2xx(handle.request, handle.peer, call_id)
        handle.on_response = lambda _handle, resp: late(resp)
        # After the INVITE transaction ends (its §9.1 guard: 64*T1 after the CANCEL),
        # a late 2xx arrives as a stray response: found here, bounded FIFO.
        self.strays.remember(handle.request, late)

    def _send_b_invite(self, call: Call, auth: tuple[str, str] | None) -> None:
        b = call.b
        assert b is not None and call.b_target is not None
        a_req = call.a_req.request
        headers: list[tuple[str, str]] = [
            ("Max-Forwards", str(call.max_forwards)),
            ("From", f"{call.b_from};tag={b.local_tag}"),
            ("To", call.b_to),
            ("Call-ID", b.call_id),
            ("CSeq", f"{call.b_cseq} INVITE"),
            ("Contact", b.contact),
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"),
            ("User-Agent", self.settings.sip.user_agent),
        ]
        if auth is not None:
            headers.append(auth)
        for name in _BODY_HEADERS:
            value = a_req.headers.get(name)
            if value is not None:
                headers.append((name, value))
        invite = Request("INVITE", call.b_target, headers, a_req.body)
        # The branch is chosen here (not by the endpoint) so that the INVITE is
        # stored exactly as it leaves: a restart CANCELs that very transaction.
        tp = b.transport
        invite.headers.prepend(
            "Via",
            f"SIP/2.0/{tp.name.upper()} {self.endpoint.sent_by(tp)};"
            f"branch={self.endpoint.layer.new_branch()};rport",
        )
        call.b_invite = invite
        if not self.dialogs.write_ahead(call):
            self._store_refused(call)
            return
        try:
            call.b_client = self.endpoint.send_request(
                invite,
                b.address,
                transport=b.transport,
                on_response=lambda handle, resp: self._on_b_response(call, handle, resp),
                add_via=False,
            )
        except Exception:
            log.exception(
                "call.b_leg.send_failed", call_id=call.a.call_id, b_call_id=call.b_call_id
            )
            self._b_final(call, 503, "Service Unavailable", None, local=True)

    def _on_b_response(self, call: Call, handle: ClientRequest, resp: Response) -> None:
        b = call.b
        # A carrier may answer from another port than the one the INVITE went to:
        # its in-dialog requests are then expected from there too (bounded).
        if (
            handle.source is not None
            and b is not None
            and handle is call.b_client
            and len(b.peers) < 8
        ):
            b.peers.add(handle.source)
        if handle is not call.b_client:
            # A response of an abandoned attempt (failover moved on): only a 2xx
            # matters — it must be ACKed and hung up (§13.2.2.4 forked 2xx).
            if 200 <= resp.status < 300:
                self.strays.ack_and_bye(handle.request, resp, handle.peer, call.a.call_id)
            return
        if call.ended and not 200 <= resp.status < 300:
            # The call is over (e.g. 64*T1 after a CANCEL): a late 1xx or the
            # transaction's own local 408 changes nothing any more.
            return
        try:
            self._b_response(call, handle, resp)
        except Exception:
            log.exception(
                "call.b_response.failed",
                call_id=call.a.call_id,
                b_call_id=call.b_call_id,
                status=resp.status,
            )

    def _b_response(self, call: Call, handle: ClientRequest, resp: Response) -> None:
        status = resp.status
        b = call.b
        assert b is not None
        if status < 200:
            call.provisional = True
        if status == 100:
            return
        if status < 200:
            if call.a_final is None and not call.cancelled:
                # §12.1.2: a 1xx with a To tag creates the B-side early dialog; one
                # without (a non-compliant carrier) is still relayed to the agent.
                if resp.to.tag is not None and b.dialog is None:
                    try:
                        b.dialog = Dialog.from_uac(handle.request, resp)
                    except DialogError:
                        b.dialog = None
                elif b.dialog is not None and b.dialog.remote_tag == resp.to.tag:
                    b.dialog.receive_response(resp)
                if status in _ringing_statuses:
                    b.rang = True
                    if call.state is CallState.DIALING:
                        call.advance(CallState.EARLY)
                    if call.ring_at is None:
                        call.ring_at = self.clock()
                        self._event(call, CallEventKind.RINGING, status=status)
                self._relay_provisional(call, resp)
            return
        if 200 <= status < 300:
            self._b_answered(call, handle, resp)
            return
        if status in (401, 407) and not handle.local and call.b_digest is not None:
            values = resp.headers.get_all(
                "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
            )
            if call.b_digest.handle_challenge(status, values) and not call.cancelled:
                # RFC 3261 §22.2: retry with credentials, same Call-ID/From tag, CSeq + 1.
                call.b_cseq += 1
                auth = call.b_digest.authorization(
                    "INVITE", str(call.b_target), call.a_req.request.body
                )
                self._send_b_invite(call, auth)
                return
        if handle.local and status == 408 and handle.cancel_sent:
            # The cancelled INVITE's §9.1 guard: no final answer 64*T1 after our CANCEL.
            self._cancel_expired(call, handle, call.cancel_why or "cancel")
            return
        self._b_final(call, status, resp.reason, resp, local=handle.local)

    def _to_a(self, call: Call, resp: Response, *, body_headers: bool) -> Response:
        """The A-leg's copy of a B-leg 18x/2xx: our Contact and To tag, the B-leg's body, and
        its body headers when ``body_headers``; the A-leg INVITE's Record-Route copied
        (§12.1.1: a proxy in front, such as a load balancer, stays on the dialog's path)."""
        headers = [("Record-Route", v) for v in call.a_req.request.headers.get_all("Record-Route")]
        headers.append(("Contact", call.a.contact or self._contact(call.a.transport)))
        if body_headers:
            for name in _BODY_HEADERS:
                value = resp.headers.get(name)
                if value is not None:
                    headers.append((name, value))
        return make_response(
            call.a_req.request,
            resp.status,
            resp.reason,
            to_tag=call.a.local_tag,
            headers=headers,
            body=resp.body,
        )

    def _relay_provisional(self, call: Call, resp: Response) -> None:
        a_req = call.a_req.request
        out = self._to_a(call, resp, body_headers=bool(resp.body))
        if call.a.dialog is None:
            try:
                call.a.dialog = Dialog.from_uas(
                    a_req,
                    call.a.local_tag,
                    self.endpoint.contact_uri(call.a.transport, "dialgate"),
                    early=True,
                )
            except DialogError:
                call.a.dialog = None
        call.a_req.send(out)

    def _b_answered(self, call: Call, handle: ClientRequest, resp: Response) -> None:
        b = call.b
        assert b is not None
        if call.answered:
            # A retransmitted 2xx (the carrier missed our ACK): ACK it again.
            if call.b_ack is not None:
                self.endpoint.send_stateless(call.b_ack, b.address, transport=b.transport)
            return
        try:
            if b.dialog is None or b.dialog.remote_tag != resp.to.tag:
                b.dialog = Dialog.from_uac(handle.request, resp)
            else:
                b.dialog.receive_response(resp)
        except (DialogError, SIPError):
            log.warning("call.b_leg.bad_2xx", call_id=call.a.call_id, b_call_id=call.b_call_id)
            b.dialog = None
        if call.a_final is not None or call.cancelled or call.ended or b.dialog is None:
            # A CANCEL crossed the 200 (§9.1: the 2xx wins on the B side):
            # ACK it and hang up at once.
            if b.dialog is not None:
                self._ack_b(call, b"", [])
                self._send_bye(call, "b")
            self._end(call, call.a_final or 487)
            return
        call.advance(CallState.ANSWERED)
        call.answer_at = self.clock()
        self.stats["answered"] += 1
        if call.card is not None and not call.inbound:
            # A 2xx resets the card's consecutive-fault count.
            self.services.cards.on_response(call.card, resp.status, resp.reason, now=self.clock())
        a_req = call.a_req.request
        out = self._to_a(call, resp, body_headers=True)
        try:
            if call.a.dialog is None:
                call.a.dialog = Dialog.from_uas(
                    a_req, call.a.local_tag, self.endpoint.contact_uri(call.a.transport, "dialgate")
                )
            else:
                call.a.dialog.confirm()
        except DialogError:
            log.warning("call.a_leg.no_contact", call_id=call.a.call_id)
        call.a_final = resp.status
        call.final_code = resp.status
        # Stored before the agent hears the 2xx: a crash from here on leaves a row the
        # next start hangs up (the carrier's leg is already up).
        self.dialogs.store_answered(call)
        call.a_req.send(out)
        self._start_ackwait(call, "a", a_req, out)
        log.debug("call.answered", call_id=call.a.call_id, b_call_id=call.b_call_id, card=call.card)
        self._event(call, CallEventKind.ANSWERED, status=resp.status)

    def _b_final(
        self, call: Call, status: int, reason: str, resp: Response | None, *, local: bool
    ) -> None:
        """A final non-2xx on the B-leg (or a local 408/503): fail over or relay."""
        b = call.b
        if b is not None:
            self._legs.pop((b.call_id, b.local_tag), None)
            if b.dialog is not None:
                b.dialog.terminate()
        if call.timed_out and status == 487:
            # Our own Timer C CANCEL ended it: the callee did not answer in time.
            self._final_to_a(call, 408, "Request Timeout")
            self._end(call, 408)
            return
        if call.inbound or call.card is None:
            self._final_to_a(call, status, reason, resp)
            self._end(call, status)
            return
        now = self.clock()
        cards = self.services.cards
        card_id = call.card
        if local:
            cause = "timer-b" if status == 408 else "transport-error"
            verdict = cards.on_fault(
                card_id,
                cause,
                now=now,
                ringing=call.ringing,
                provisional=call.provisional,
                callee=call.destination,
            )
        else:
            assert resp is not None
            verdict = cards.on_response(
                card_id,
                status,
                reason,
                now=now,
                warning=resp.headers.get("Warning"),
                retry_after=_retry_after(resp),
                reason_header=", ".join(resp.headers.get_all("Reason")) or None,
                ringing=call.ringing,
                provisional=call.provisional,
                callee=call.destination,
            )
        self._log_verdict(call, card_id, status, reason, verdict)
        trunk = verdict.kind is BLegClass.TRUNK_UNREACHABLE
        if self.failover.allowed(call, card_id, verdict.failover, trunk):
            self._fail_over(call, card_id, status, reason, resp, trunk, now, local=local)
            return
        if call.cancelled:
            self._end(call, 487)
            return
        if trunk:
            self._trunk_unreachable_to_a(call, status, reason, resp, local=local)
        else:
            self._final_to_a(call, status, reason, resp)
        self._end(call, status, failed=verdict.kind is not BLegClass.CALLEE)

    def _log_verdict(
        self, call: Call, card_id: str, status: int, reason: str, verdict: Verdict
    ) -> None:
        event = verdict.event
        if verdict.marked is not None:
            log.warning(
                "card.marked",
                call_id=call.a.call_id,
                b_call_id=call.b_call_id,
                card=card_id,
                reason=str(verdict.marked),
                row=verdict.row,
                evidence=f"SIP/2.0 {status} {reason}",
            )
        elif event is not None and event.to_state is CardState.SUSPECT:
            log.warning(
                "card.suspect",
                call_id=call.a.call_id,
                b_call_id=call.b_call_id,
                card=card_id,
                cause=event.cause,
                statuses=",".join(str(x) for x in event.evidence.get("statuses", ())),
            )
        if verdict.rest_until is not None:
            log.info(
                "card.resting",
                call_id=call.a.call_id,
                b_call_id=call.b_call_id,
                card=card_id,
                row=verdict.row,
                seconds=round(verdict.rest_until - self.clock(), 1),
            )
        log.debug(
            "call.b_leg.classified",
            call_id=call.a.call_id,
            b_call_id=call.b_call_id,
            card=card_id,
            status=status,
            outcome=str(verdict.kind),
            row=verdict.row,
            suspicion=verdict.suspicion,
        )

    def _fail_over(
        self,
        call: Call,
        card_id: str,
        status: int,
        reason: str,
        resp: Response | None,
        trunk: bool,
        now: float,
        *,
        local: bool = False,
    ) -> None:
        """Release the failed card and dial the callee once more on another card.

        Only reached when the callee was never rung. After ``card-dead`` every card
        but the tried ones may take the call; after ``trunk-unreachable`` none that
        shares the device or trunk, and no further attempt after this one.
        """
        assert call.ctx is not None
        self._release(call)
        # The next card's reservation and its write-ahead B-leg row: one commit.
        with self.services.store.batch():
            self._fail_over_to_next(call, card_id, status, reason, resp, trunk, now, local=local)

    def _fail_over_to_next(
        self,
        call: Call,
        card_id: str,
        status: int,
        reason: str,
        resp: Response | None,
        trunk: bool,
        now: float,
        *,
        local: bool,
    ) -> None:
        assert call.ctx is not None
        decision, store_down = self.failover.next_card(call, card_id, trunk, now)
        if store_down:
            self._policy_final(call, decision)
            return
        if not decision.allowed or decision.card_id is None:
            self.failover.pool_exhausted(call, decision, now)
            if trunk:
                # No card on another trunk: the agent hears the trunk failure itself.
                # ``local``: our own Timer B 408 / transport 503 (a Response object made
                # here, not the carrier's): answered with Reason trunk-unreachable.
                self._trunk_unreachable_to_a(call, status, reason, resp, local=local)
                self._end(call, status, failed=True)
                return
            self._policy_final(call, decision)
            return
        call.reserved = True
        call.failovers += 1
        self.stats["failovers"] += 1
        self.bindings.note(call, call.ctx.bound_card, decision.card_id)
        log.debug(
            "call.failover",
            call_id=call.a.call_id,
            b_call_id=call.b_call_id,
            from_card=card_id,
            to_card=decision.card_id,
            cause="trunk-unreachable" if trunk else "card-dead",
        )
        self._event(
            call,
            CallEventKind.FAILOVER,
            from_card=card_id,
            to_card=decision.card_id,
            status=status,
        )
        self._dial_card(call, decision.card_id)

    def _trunk_unreachable_to_a(
        self, call: Call, status: int, reason: str | None, resp: Response | None, *, local: bool
    ) -> None:
        """The card's trunk failed and no other trunk may take the call: say so."""
        if resp is not None and not local:
            self._final_to_a(call, status, reason, resp)
            return
        code, phrase = (408, "Request Timeout") if status == 408 else (503, "Service Unavailable")
        headers = [("Reason", reason_header(code, TRUNK_UNREACHABLE))]
        if code == 503:
            headers.append(("Retry-After", str(int(self.services.cards.terms_rest(call.card)))))
        call.policy_reason = TRUNK_UNREACHABLE
        self._respond_a(call, code, phrase, headers)

    def _release(self, call: Call) -> None:
        if not call.reserved:
            return
        call.reserved = False
        try:
            self.services.ledger.release(call.key, self.clock(), failed=True)
        except StoreUnavailable:
            log.warning("call.release.store_unavailable", call_id=call.a.call_id, key=call.key)

    # -- answers to the A-leg ----------------------------------------------------------

    def _final_to_a(
        self, call: Call, status: int, reason: str | None, resp: Response | None = None
    ) -> None:
        if call.a_final is not None:
            return
        headers: list[tuple[str, str]] = []
        if resp is not None:
            for name in _RELAYED_FINAL:
                for value in resp.headers.get_all(name):
                    headers.append((name, value))
            if status == 503:
                # RFC 3261 §16.7 step 6: a 503 is not forwarded (it would make the
                # agent's phone treat the gateway itself as unavailable): 500.
                status, reason = 500, "Server Internal Error"
        self._respond_a(call, status, reason, headers)

    def _respond_a(
        self, call: Call, status: int, reason: str | None, headers: list[tuple[str, str]]
    ) -> None:
        if call.a_final is not None:
            return
        call.a_final = status
        call.final_code = status
        if call.a.dialog is not None:
            call.a.dialog.terminate()
        call.a_req.respond(status, reason, headers=headers, to_tag=call.a.local_tag)

    def _reject_plain(self, call: Call, status: int, reason: str, why: str) -> None:
        call.policy_reason = why
        self._final_to_a(call, status, reason)
        self.stats["blocked"] += 1
        end_at = self.clock()
        self.records.write(call, Outcome.BLOCKED, status, end_at=end_at)
        self._summary(call, Outcome.BLOCKED, end_at)

    def _reject_decision(self, call: Call, decision: Decision) -> None:
        """A policy rejection before any B-leg: answer and write the blocked CDR."""
        self.stats["blocked"] += 1
        self._answer_decision(call, decision)
        outcome = (
            Outcome.NO_CARD
            if decision.reason is RejectReason.NO_CARD_AVAILABLE
            else Outcome.BLOCKED
        )
        end_at = self.clock()
        self.records.write(call, outcome, call.final_code, end_at=end_at)
        self._summary(call, outcome, end_at, detail=decision.detail)
        self._event(
            call,
            CallEventKind.BLOCKED,
            reason=str(decision.reason),
            status=call.final_code,
            decision_seconds=call.decision_seconds,
        )

    def _policy_final(self, call: Call, decision: Decision) -> None:
        """A policy answer after B-legs were tried (pool exhausted, store down)."""
        call.policy_detail = decision.detail
        log.debug(
            "call.no_card_left",
            call_id=call.a.call_id,
            b_call_ids=",".join(call.b_call_ids),
            agent=call.identity.name,
            reason=str(decision.reason),
            detail=decision.detail or None,
            cards=",".join(call.cards_tried),
        )
        self._answer_decision(call, decision)
        self._end(call, call.final_code, failed=True)

    def _answer_decision(self, call: Call, decision: Decision) -> None:
        code = decision.sip_code or 503
        text = str(decision.reason) if decision.reason else "rejected"
        headers = [("Reason", reason_header(code, text))]
        if decision.retry_after_header is not None:
            headers.append(("Retry-After", decision.retry_after_header))
        if decision.reason is RejectReason.NO_CARD_AVAILABLE and decision.detail:
            # RFC 3261 §20.43: 399 "miscellaneous warning"; each card's cause, so the
            # agent's phone, the dialer and a SIP trace show why no card could dial.
            headers.append(("Warning", warning_399(decision.detail)))
        call.policy_reason = text
        call.a_final = code
        call.final_code = code
        call.a_req.respond(code, None, headers=headers, to_tag=call.a.local_tag)

    # -- ACK / 2xx reliability ---------------------------------------------------------

    def _start_ackwait(self, call: Call, side: Side, invite: Request, response: Response) -> None:
        leg = call.a if side == "a" else call.b
        if leg is None:
            return
        aw = AckWait(invite, response, self.endpoint.now(), timers=self.endpoint.layer.config)
        leg.ackwait = aw
        self._arm_ackwait(call, leg, aw)

    def _arm_ackwait(self, call: Call, leg: Leg, aw: AckWait) -> None:
        deadline = aw.get_timer()
        if deadline is None:
            return

        def fire() -> None:
            leg.ack_timer = None
            if aw.done:
                return
            for action in aw.handle_timer(self.endpoint.now()):
                if isinstance(action, Send) and isinstance(action.message, Response):
                    leg.transport.send_response(
                        action.message, leg.address, symmetric=self.endpoint.symmetric
                    )
                elif isinstance(action, Timeout):
                    # §13.3.1.4: no ACK in 64*T1 — "the session SHOULD be terminated".
                    log.warning(
                        "call.ack_timeout",
                        call_id=call.a.call_id,
                        b_call_id=call.b_call_id,
                        side="a" if leg is call.a else "b",
                    )
                    self._hangup(call, "ack-timeout")
                    return
            self._arm_ackwait(call, leg, aw)

        leg.ack_timer = self.endpoint.schedule_at(deadline, fire)

    def on_ack(self, req: Request, source: Address, transport: Transport | None = None) -> bool:
        """An ACK for a 2xx (it has no transaction): stop retransmissions, ACK the far leg.

        An ACK not from the leg's peer is dropped (and counted): it has no answer.
        """
        found = self.find_leg(req.call_id, req.to.tag)
        if found is None:
            return False
        call, side = found
        leg = call.a if side == "a" else call.b
        if leg is None:
            return False
        if not leg.from_peer(source, transport):
            self._refuse_foreign(call, side, "ACK", source, leg)
            return True
        aw = leg.ackwait
        if aw is not None and aw.receive_ack(req):
            if leg.ack_timer is not None:
                leg.ack_timer.cancel()
                leg.ack_timer = None
            leg.ackwait = None
            if (
                side == "a"
                and call.b_ack is None
                and call.answered
                and aw.cseq == call.a_req.request.cseq.seq
            ):
                if call.state is CallState.ANSWERED:
                    call.advance(CallState.CONFIRMED)
                headers = [(n, v) for n in _BODY_HEADERS if (v := req.headers.get(n)) is not None]
                self._ack_b(call, req.body, headers)
        return True

    def _ack_b(self, call: Call, body: bytes, headers: list[tuple[str, str]]) -> None:
        b = call.b
        if b is None or b.dialog is None or call.b_invite is None:
            return
        # §13.2.2.4: the ACK for a 2xx is built by the UA core, in the dialog,
        # with the INVITE's CSeq number; it is sent outside any transaction.
        ack = b.dialog.create_request(
            "ACK", cseq=call.b_invite.cseq.seq, headers=headers, body=body
        )
        call.b_ack = ack
        self.endpoint.send_stateless(ack, b.address, transport=b.transport)

    def on_stray_response(self, resp: Response) -> None:
        """A response with no client transaction: a 2xx retransmission wants its ACK again."""
        try:
            if resp.cseq.method != "INVITE" or not 200 <= resp.status < 300:
                return
            found = self.find_leg(resp.call_id, resp.from_.tag)
        except SIPError:
            return
        if found is None:
            self.strays.answer(resp)
            return
        call, side = found
        if side == "b" and call.b is not None and call.b_ack is not None:
            self.endpoint.send_stateless(call.b_ack, call.b.address, transport=call.b.transport)

    # -- CANCEL ------------------------------------------------------------------------

    def foreign_cancel(self, req: Request, source: Address, transport: Transport) -> bool:
        """True (counted, logged) when a CANCEL names a call's INVITE but not from its caller.

        Asked before the CANCEL gets a server transaction: the forger copies the
        INVITE's branch, so a transaction for its CANCEL would swallow the caller's.
        """
        target = self.endpoint.layer.cancel_target(req)
        if target is None:
            return False
        call = next((c for c in self.calls.values() if c.a_req.tx is target), None)
        if call is None or call.a.from_peer(source, transport):
            return False
        self._refuse_foreign(call, "a", "CANCEL", source, call.a)
        return True

    def on_cancel(self, sr: ServerRequest) -> None:
        """CANCEL of a pending A-leg INVITE (RFC 3261 §9.2): 200, 487, CANCEL the B-leg."""
        req = sr.request
        layer = self.endpoint.layer
        target = layer.cancel_target(req)
        call = None
        if target is not None:
            call = next((c for c in self.calls.values() if c.a_req.tx is target), None)
        to_tag = call.a.local_tag if call is not None else None
        if call is not None and not call.a.from_peer(sr.source, sr.transport):
            # Only the caller may cancel its INVITE: a CANCEL naming the
            # right branch from elsewhere is refused and changes nothing.
            self._refuse_foreign(call, "a", "CANCEL", sr.source, call.a)
            sr.respond(403, "Forbidden")
            return
        if call is not None and call.a_final is None:
            call.advance(CallState.CANCELLING)
            call.a_final = 487
            call.final_code = 487
            if call.a.dialog is not None:
                call.a.dialog.terminate()
        response, actions = layer.handle_cancel(req, self.endpoint.now(), to_tag=to_tag)
        sr.send(response)
        self.endpoint._run(actions)
        if call is None:
            return
        if call.b_client is not None and not call.answered:
            self._cancel_b(call, "agent-cancel")
            if call.b_client.provisional is None and call.b_client.final.done():
                self._end(call, 487)
        elif call.b_client is None:
            self._end(call, 487)

    # -- in-dialog requests ------------------------------------------------------------

    def on_in_dialog(self, sr: ServerRequest) -> None:
        """A request inside a call's dialog (BYE, re-INVITE, UPDATE, INFO, OPTIONS…)."""
        req = sr.request
        found = self.find_leg(req.call_id, req.to.tag)
        if found is None:
            sr.respond(481, "Call/Transaction Does Not Exist")
            return
        call, side = found
        here = call.a if side == "a" else call.b
        there = call.b if side == "a" else call.a
        if here is None or here.dialog is None:
            sr.respond(481, "Call/Transaction Does Not Exist")
            return
        if not here.from_peer(sr.source, sr.transport):
            # Call-ID and tags are no credential: a request inside a
            # dialog is the peer's only when it comes from the peer's address.
            # Checked before the dialog sees its CSeq.
            self._refuse_foreign(call, side, req.method, sr.source, here)
            sr.respond(403, "Forbidden")
            return
        try:
            here.dialog.receive_request(req)
        except DialogError as err:
            sr.respond(err.status_code, err.reason_phrase)
            return
        if req.method == "BYE":
            sr.respond(200, "OK")
            if not call.answered and side == "a":
                # BYE in an early dialog from the caller: give up the attempt.
                if not call.cancelled:
                    call.advance(CallState.CANCELLING)
                self._cancel_b(call, "agent-bye")
                self._final_to_a(call, 487, "Request Terminated")
                return
            if not call.answered:
                # The callee side ended its early dialog: the call failed.
                self._cancel_b(call, "callee-bye")
                self._final_to_a(call, 480, "Temporarily Unavailable")
                self._end(call, 480)
                return
            self._send_bye(call, "b" if side == "a" else "a")
            self._end(call, call.final_code or 200)
            return
        if there is None or there.dialog is None or not call.answered:
            sr.respond(491 if req.method == "INVITE" else 481)
            return
        headers = [(n, v) for n in _BODY_HEADERS if (v := req.headers.get(n)) is not None]
        try:
            out = there.dialog.create_request(req.method, headers=headers, body=req.body)
        except DialogError as err:
            sr.respond(err.status_code, err.reason_phrase)
            return
        if req.method in ("INVITE", "UPDATE"):
            out.headers.set("Contact", there.contact or self._contact(there.transport))
        self.endpoint.send_request(
            out,
            there.address,
            transport=there.transport,
            on_response=lambda handle, resp: self._relay_in_dialog(call, side, sr, handle, resp),
        )
        self.dialogs.refresh(call)

    def _relay_in_dialog(
        self, call: Call, side: Side, sr: ServerRequest, handle: ClientRequest, resp: Response
    ) -> None:
        there = call.b if side == "a" else call.a
        here = call.a if side == "a" else call.b
        if resp.status == 100 or here is None:
            return
        if there is not None and there.dialog is not None:
            there.dialog.receive_response(resp)
            self.dialogs.refresh(call)
        method = handle.request.method
        headers = [(n, v) for n in _BODY_HEADERS if (v := resp.headers.get(n)) is not None]
        if method in ("INVITE", "UPDATE") and 200 <= resp.status < 300:
            headers.append(("Contact", here.contact or self._contact(here.transport)))
        out = make_response(sr.request, resp.status, resp.reason, headers=headers, body=resp.body)
        if method == "INVITE" and 200 <= resp.status < 300 and there and there.dialog:
            ack = there.dialog.create_request("ACK", cseq=handle.request.cseq.seq)
            self.endpoint.send_stateless(ack, there.address, transport=there.transport)
        sr.send(out)
        if method == "INVITE" and 200 <= resp.status < 300:
            self._start_ackwait(call, side, sr.request, out)

    # -- ending calls ------------------------------------------------------------------

    def _send_bye(self, call: Call, side: Side) -> None:
        leg = call.a if side == "a" else call.b
        if leg is None or leg.dialog is None:
            return
        try:
            bye = leg.dialog.create_request("BYE")
        except DialogError:
            return
        leg.dialog.terminate()
        self.endpoint.send_request(bye, leg.address, transport=leg.transport)

    def _hangup(self, call: Call, why: str) -> None:
        log.debug("call.hangup", call_id=call.a.call_id, b_call_id=call.b_call_id, why=why)
        call.hangup_why = why
        self._send_bye(call, "a")
        self._send_bye(call, "b")
        self._end(call, call.final_code or 200)

    def _store_end(
        self, call: Call, finish: Callable[[], object] | None, record: CallRecord
    ) -> bool:
        """Finish the reservation, write the CDR and delete the stored call in ONE commit.

        False when the store refused any of it: then nothing of the three is stored
        and the caller writes each on its own (the reservation kept for a retry, the
        CDR spooled, the delete retried), as a refused write always was. Taken only
        when the CDR goes to this store and no spooled CDR waits (they go first).
        """
        store = self.services.store
        if self.cdrs.pending or self.cdrs.store is not store:
            return False
        try:
            with store.batch():
                if finish is not None:
                    finish()
                if call.persisted:
                    store.delete_call_dialogs(call.key)
                store.add_cdrs([record])
        except StoreUnavailable:
            return False
        self.records.stored(record)
        self.dialogs.forgotten(call)
        return True

    def _end(self, call: Call, status: int, *, failed: bool = False) -> None:
        """Forget the call, finish its reservation and write its CDR (once)."""
        if call.ended:
            return
        self._commit_start(call)
        cancelled = call.cancelled
        call.advance(CallState.ENDED)
        if call.no_answer_timer is not None:
            call.no_answer_timer.cancel()
        call.no_answer_timer = None
        handle = call.b_client
        if handle is not None and (
            not handle.final.done() or (handle.local and handle.cancel_sent)
        ):
            # The B-leg INVITE outlives the call (CANCELled, no final answer yet, or
            # given up by its §9.1 guard): a late 2xx is ACKed and hung up, and the
            # handle lets go of the call.
            self._abandon(handle, call.a.call_id)
        elif handle is not None and call.b_ack is not None:
            # Answered and over: for the rest of Timer M (RFC 6026 Accepted, 64*T1)
            # the B-leg INVITE only has to ACK a retransmitted 2xx again. A small
            # handler does that (and ACK+BYE for another fork's 2xx), so the handle
            # does not keep the whole finished call alive for 32 s.
            try:
                acked = {call.b_ack.to.tag: call.b_ack}
            except SIPError:
                acked = {}
            late = self.strays.late_2xx(handle.request, handle.peer, call.a.call_id, acked)
            handle.on_response = lambda _handle, resp: late(resp)
        if not call.final_code:
            call.final_code = status
        self.calls.pop(call.key, None)
        for leg in (call.a, call.b):
            if leg is None:
                continue
            self._legs.pop((leg.call_id, leg.local_tag), None)
            if leg.ack_timer is not None:
                leg.ack_timer.cancel()
                leg.ack_timer = None
        now = self.clock()
        # Talk time on the same clock as the quotas and the CDR (business time in a
        # simulator's fast-forward), so talk minutes and short calls match end - answer.
        talk = 0.0
        if call.answered and call.answer_at is not None:
            talk = max(now - call.answer_at, 0.0)
        finish: Callable[[], object] | None = None
        if call.reserved and not call.inbound:
            call.reserved = False
            finish = functools.partial(
                self.services.ledger.finish,
                call.key,
                now,
                answered=call.answered,
                talk_seconds=talk,
                failed=failed,
                answered_at=call.answer_at,
            )
        outcome = self.records.outcome(call, cancelled=cancelled)
        record = call_record(call, outcome, call.final_code, now)
        if not self._store_end(call, finish, record):
            # Refused: each write again on its own, kept or spooled when refused.
            if finish is not None:
                try:
                    finish()
                except StoreUnavailable:
                    # Kept and retried (retry_pending): until then the reservation still
                    # counts as a call in progress — an over-count, never an under-count.
                    self._unfinished.append(finish)
                    log.warning(
                        "call.finish.store_unavailable", call_id=call.a.call_id, key=call.key
                    )
            self.records.write_record(call, record)
            self.dialogs.forget(call)
        self._event(
            call, CallEventKind.ENDED, outcome=str(outcome), status=call.final_code, duration=talk
        )
        self._summary(call, outcome, now, talk=talk, detail=call.policy_detail)
        # The INVITEs (and the B-leg's ACK) outlive the call in Timers L/M (RFC 6026,
        # 64*T1): keep their lines, drop their parsed views (Message.compact), so the
        # collector walks a few objects per lingering call, not hundreds.
        call.a_req.request.compact()
        if handle is not None:
            handle.request.compact()
            if handle.final.done() and not handle.final.cancelled():
                handle.final.result().compact()
        if call.b_ack is not None:
            call.b_ack.compact()

    def _summary(
        self,
        call: Call,
        outcome: Outcome,
        end_at: float,
        *,
        talk: float = 0.0,
        detail: str | None = None,
    ) -> None:
        """The call's one INFO line, when it is over (its steps are DEBUG lines)."""
        attempt = call.attempt_at
        log.info(
            "call.ended",
            call_id=call.a.call_id,
            agent=call.identity.name,
            campaign=call.campaign or None,
            destination=self._masked(call.destination),
            card=call.card,
            cards=",".join(call.cards_tried),
            b_call_ids=",".join(call.b_call_ids) or None,
            outcome=str(outcome),
            code=call.final_code,
            reason=call.policy_reason or None,
            detail=detail or None,
            hangup=call.hangup_why or None,
            failovers=call.failovers,
            decision_ms=(
                None if call.decision_seconds is None else round(call.decision_seconds * 1e3, 2)
            ),
            ring=None if call.ring_at is None else round(call.ring_at - attempt, 3),
            answer=None if call.answer_at is None else round(call.answer_at - attempt, 3),
            talk=round(talk, 1),
            duration=round(end_at - attempt, 3),
        )

    # -- dialog persistence ------------------------------------------------------------

    def _commit_start(self, call: Call) -> None:
        """A call ending before its B-leg INVITE was written ahead (no carrier, no card
        left): commit what its start batched (its reservation), so its end is stored
        after it, one write at a time as usual."""
        try:
            self.services.store.commit()
        except StoreUnavailable:
            log.warning("call.start.store_unavailable", call_id=call.a.call_id, key=call.key)

    def _store_refused(self, call: Call) -> None:
        """The B-leg INVITE could not be stored: it does not leave (fail closed, 503)."""
        b = call.b
        if b is not None:
            self._legs.pop((b.call_id, b.local_tag), None)
        call.b_client = None
        if call.reserved and not call.inbound:
            call.reserved = False
            try:
                self.services.ledger.release(call.key, self.clock(), failed=False)
            except StoreUnavailable:
                # Left open: recover() turns it into an orphan (an over-count).
                log.warning("call.release.store_unavailable", call_id=call.a.call_id, key=call.key)
        decision = Decision.reject(
            RejectReason.STORE_UNAVAILABLE, "store", "B-leg not stored", retry_after=30
        )
        self._answer_decision(call, decision)
        self._end(call, call.final_code)

    async def end_orphaned_calls(self) -> int:
        """End the calls a dead process left (:mod:`gateway.callpath.recovery`); how many."""
        return await self.orphans.end_all(self.calls)

    def retry_pending(self) -> int:
        """Retry what a store outage held back (reservation finishes, CDRs); return how many went in."""
        done = 0
        while self._unfinished:
            try:
                self._unfinished[0]()
            except StoreUnavailable:
                break
            self._unfinished.pop(0)
            done += 1
        if self.cdrs.pending:
            done += self.cdrs.flush()
        return done

    async def close(self) -> None:
        """Hang up every call in progress (BYE / CANCEL) and write their CDRs."""
        for call in list(self.calls.values()):
            if call.answered:
                self._hangup(call, "shutdown")
            else:
                self._cancel_b(call, "shutdown")
                self._final_to_a(call, 503, "Service Unavailable")
                call.final_code = 503
                self._end(call, 503)
        self.retry_pending()
        if self.cdrs.pending or self._unfinished:
            # The spool file is replayed at the next start; an unfinished reservation
            # becomes an orphan there (counted, never under-counted).
            log.error(
                "store.left_pending",
                cdrs=self.cdrs.pending,
                finishes=len(self._unfinished),
                spool=str(self.cdrs.spool),
            )


def warning_399(text: str) -> str:
    """``399 dialgate "text"`` with the text made a valid quoted-string (no quotes, no CR/LF)."""
    clean = "".join(ch if ch.isprintable() and ch not in '"\\' else " " for ch in text)
    return f'399 dialgate "{clean[:400]}"'


def _retry_after(resp: Response) -> float | None:
    """The response's Retry-After seconds, None when absent or unreadable."""
    try:
        value = resp.retry_after
    except SIPError:
        return None
    return None if value is None else float(value.seconds)


def _with_host(uri: URI, host_port: str) -> URI:
    """``uri`` with its host replaced (the caller's number presented at our domain)."""
    host, _, port = host_port.rpartition(":")
    try:
        return URI.parse(f"sip:{uri.user}@{host}:{port}" if uri.user else f"sip:{host}:{port}")
    except SIPError:
        return URI.parse(f"sip:{host}:{port}")
