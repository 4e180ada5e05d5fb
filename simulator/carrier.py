"""The simulated carrier trunk: a SIP UAS on loopback that plays the pure carrier model.

:class:`Carrier` holds carrier accounts for the cards (the digest username and
password of :class:`~simulator.models.CardAccount`), challenges every INVITE
(401 or 407, or no auth at all; configurable) and optionally insists that a
card REGISTERed first. For each authenticated INVITE it asks
:meth:`CarrierModel.decide_invite` and either answers at once (402 arrears,
503 + Retry-After maintenance, 403 with a "Card Suspended: ..." reason phrase
and a Warning) or plays the drawn :class:`~simulator.answer.CallPlan` out:
180 Ringing, then after ``ring_seconds`` a 486 / 480 / 603 or a 200 OK with an
SDP answer, and for an answered call an in-dialog BYE from the callee after
``talk_seconds`` unless the caller hangs up first. Destination-level plans:
a plain ``403 Forbidden`` at once (no 180, no Warning), 180 then ``408`` or
``503`` after ``ring_seconds``, or — for a silent destination — nothing at
all: the INVITE's server transaction is dropped unanswered (not even 100
Trying), its retransmissions and a CANCEL for it are swallowed, and the
caller's Timer B ends it. On an event clock a silent INVITE holds business time
for :attr:`Carrier.silent_hold` real seconds (:meth:`Carrier.hold_until`), so
the caller's Timer B, which runs on real time, fires before any business event.
CANCEL (487), the caller's BYE (200), re-INVITE (200, same SDP), OPTIONS
health pings (200) and the ACK are handled by
:class:`~simulator.sipkit.UserAgent`. Every call end is reported to
:meth:`CarrierModel.record_call_end`.

Every INVITE received is kept in :attr:`Carrier.invites` (business time, card,
authenticated username, From user, callee, Call-ID, decision, final status),
so a test can assert that the carrier saw nothing, or that no callee was
dialled twice. The log holds callee numbers as dialled (tests compare them);
:meth:`InviteLogEntry.as_dict` and every log line mask them.

:meth:`Carrier.call` places a call from the carrier towards the gateway (a
callee calling a card's number back); :meth:`Carrier.invite` does the same
step by step (the call stays up until :meth:`~simulator.sipkit.UserAgent.in_dialog`
sends BYE).

For integration tests of the gateway the same carrier can be scripted (see
:data:`ScriptedPlan`): ``plan`` overrides the answer model for each INVITE the
carrier model accepts (answer now, ring until cancelled, a given final, or no
answer at all) while authentication, arrears, maintenance and anti-fraud
refusals stay the model's; ``record_requests`` keeps every request received
(:attr:`Carrier.requests`, :meth:`Carrier.methods`,
:meth:`Carrier.received_invites`); ``silent`` makes it a black hole that
records and answers nothing; ``sdp`` fixes the SDP body it answers and offers.
A suspended card's REGISTER is refused 403 with the suspension's reason phrase.

Business time comes from the injected clock and drives the model and the
ring/talk durations; SIP timers stay real. This module must never make a
policy decision of its own beyond the model's, and never log a password or an
unmasked callee.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.sip import Request, Response
from gateway.sip.digest import Algorithm, DigestServer, Outcome, ha1
from gateway.sip.errors import SIPError
from gateway.sip.transaction import TimerConfig, cancel_target_key, server_key
from gateway.transport import Address
from gateway.transport.endpoint import ServerRequest
from policies.privacy import mask_number
from simulator.answer import CallPlan
from simulator.answer import Outcome as PlanOutcome
from simulator.clock import BusinessClock
from simulator.models import CarrierDecision, CarrierModel, Suspension
from simulator.sipkit import CallResult, InboundCall, UserAgent, new_tag

__all__ = ["Carrier", "InviteLogEntry", "Registration", "ScriptedPlan", "answer_all"]

log = structlog.get_logger("simulator.carrier")

DEFAULT_REALM = "carrier.sim"

#: Real seconds a silent INVITE's retransmissions (and a CANCEL for it) are swallowed:
#: longer than a caller's Timer B with the default T1 (64 x 0.5 s).
SILENT_MEMORY = 64.0

#: A test's script for each INVITE the carrier model accepts, instead of the answer model:
#:
#: * ``("answer",)`` — 180 then 200 with SDP at once; the callee never hangs up by itself;
#: * ``("ring",)`` — 180, then nothing until a CANCEL (487) or
#:   :meth:`Carrier.answer_call` / :meth:`Carrier.reject_call`;
#: * ``("answer-on-cancel",)`` — 180, and the 200 goes out when the CANCEL arrives
#:   (the answer crosses the CANCEL, §9.2: the CANCEL gets 200, the INVITE stays answered);
#: * ``("silent",)`` — no response from the carrier at all (only the transaction's 100);
#: * ``(status, reason)`` or ``(status, reason, headers)`` — that final response;
#: * ``None`` — no script for this INVITE: the answer model plays it.
ScriptedPlan = Callable[[Request], tuple[Any, ...] | None]


def answer_all(_request: Request) -> tuple[Any, ...]:
    """The scripted plan that answers every call at once."""
    return ("answer",)


@dataclass(slots=True)
class InviteLogEntry:
    """One INVITE the carrier received and what became of it.

    ``decided`` is the status the carrier decided on arrival (401/407 for a
    challenge, the model's status otherwise); ``final`` the final status it
    actually sent (differs for a CANCELled call: 487). ``outcome`` names the
    branch: ``challenged``, ``malformed-auth``, ``not-registered``,
    ``unknown-card``, ``rejected`` or the plan's outcome (``answer``,
    ``busy``, ``no_answer``, ``decline``, and the destination-level
    ``refuse_403``, ``ring_then_408``, ``ring_then_503``, ``silent``). A
    silent INVITE keeps ``decided`` 0 and ``final`` None: nothing was sent.
    """

    time: float
    call_id: str
    callee: str
    from_user: str | None
    username: str | None
    card: str | None
    decided: int
    reason_phrase: str
    outcome: str
    source: Address
    final: int | None = None
    retry_after: int | None = None
    answered: bool = False
    talk_seconds: float = 0.0
    hangup: str | None = None

    @property
    def authenticated(self) -> bool:
        """True when the INVITE reached the carrier model (it was not challenged/refused)."""
        return self.outcome not in ("challenged", "malformed-auth", "not-registered")

    @property
    def reached_callee(self) -> bool:
        """True when the carrier put the call through to the callee (a plan was played)."""
        return self.outcome in {str(o) for o in PlanOutcome}

    def as_dict(self, *, mask: bool = True) -> dict[str, Any]:
        """JSON-ready form; the callee masked unless ``mask`` is false."""
        return {
            "time": self.time,
            "call_id": self.call_id,
            "callee": mask_number(self.callee, enabled=mask),
            "from_user": self.from_user,
            "username": self.username,
            "card": self.card,
            "decided": self.decided,
            "reason_phrase": self.reason_phrase,
            "outcome": self.outcome,
            "final": self.final,
            "retry_after": self.retry_after,
            "answered": self.answered,
            "talk_seconds": self.talk_seconds,
            "hangup": self.hangup,
        }


@dataclass(frozen=True, slots=True)
class Registration:
    """A card's current registration at the carrier."""

    username: str
    card: str
    contact: str
    expires_at: float  # loop (real) time
    source: Address


@dataclass(slots=True, eq=False)
class _Playing:
    card: str
    callee: str
    plan: CallPlan
    entry: InviteLogEntry
    suspension: Suspension | None = field(default=None)
    scripted: str | None = None


class Carrier(UserAgent):
    """The carrier trunk UAS. ``await carrier.start()``, then point cards at ``carrier.address``.

    ``auth`` is 401 (WWW-Authenticate, the usual trunk answer), 407
    (Proxy-Authenticate) or None (no digest: the card is named by the From
    user, matched against account usernames and ``numbers``). With
    ``require_register`` an INVITE from a card without a live registration
    gets ``403 Forbidden (not registered)``.

    ``plan`` (a :data:`ScriptedPlan`, also settable later as ``carrier.plan``)
    scripts the answer to each INVITE the model accepts; ``record_requests``
    keeps every request received in :attr:`requests`; ``silent`` records every
    request and answers none (a carrier that is down); ``sdp`` fixes the SDP body.

    ``silent_hold`` (real seconds, 0 = none) is how long each silent INVITE
    asks an event clock to stand still (:meth:`hold_until`); the runner sets
    it to the caller's Timer B plus a margin.
    """

    def __init__(
        self,
        model: CarrierModel,
        *,
        clock: BusinessClock | None = None,
        auth: int | None = 401,
        realm: str = DEFAULT_REALM,
        require_register: bool = False,
        numbers: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        timers: TimerConfig | None = None,
        name: str = "carrier",
        mask_callees: bool = True,
        register_expires: int = 3600,
        plan: ScriptedPlan | None = None,
        record_requests: bool = False,
        silent: bool = False,
        sdp: bytes | None = None,
    ) -> None:
        if auth not in (None, 401, 407):
            raise ValueError("auth must be 401, 407 or None")
        super().__init__(
            name, clock=clock, host=host, timers=timers, mask_callees=mask_callees, sdp=sdp
        )
        self.plan = plan
        self.record_requests = record_requests or silent
        self.silent = silent
        #: Every request received, in arrival order (with ``record_requests`` or ``silent``).
        self.requests: list[Request] = []
        self.model = model
        self.auth = auth
        self.realm = realm
        self.require_register = require_register
        self.register_expires = register_expires
        self.numbers: dict[str, str] = dict(numbers or {})
        self.digest = DigestServer(key=os.urandom(32), realm=realm)
        self.invites: list[InviteLogEntry] = []
        self.registrations: dict[str, Registration] = {}
        self.register_log: list[tuple[float, str | None, int]] = []
        self.options_received = 0
        self._playing: dict[InboundCall, _Playing] = {}
        #: Real seconds a silent INVITE holds an event clock (see :meth:`hold_until`).
        self.silent_hold = 0.0
        self._hold_until: float | None = None
        # Server keys of silent INVITEs → loop time until which their retransmissions
        # (and a CANCEL for them) are swallowed.
        self._silenced: dict[Hashable, float] = {}

    # -- read-outs ---------------------------------------------------------------------

    @property
    def address_spec(self) -> str:
        """``udp:host:port`` for a gateway ``[[carriers]] address``."""
        host, port = self.address
        return f"udp:{host}:{port}"

    def dialled(self) -> list[InviteLogEntry]:
        """INVITEs that reached the carrier model (authenticated), in arrival order."""
        return [e for e in self.invites if e.authenticated]

    def callees_reached(self) -> list[str]:
        """Callee numbers the carrier put calls through to, in order (duplicates kept)."""
        return [e.callee for e in self.invites if e.reached_callee]

    def invites_for(self, card: str) -> list[InviteLogEntry]:
        """Authenticated INVITEs on ``card``."""
        return [e for e in self.invites if e.card == card and e.authenticated]

    def active_calls(self) -> int:
        """Calls currently ringing or up."""
        return len(self._playing)

    def methods(self) -> list[str]:
        """Methods of every request received, in order (needs ``record_requests``)."""
        return [r.method for r in self._recorded()]

    def received_invites(self) -> list[Request]:
        """Initial INVITEs (no To tag) received, in order (needs ``record_requests``)."""
        return [r for r in self._recorded() if r.method == "INVITE" and r.to.tag is None]

    def _recorded(self) -> list[Request]:
        if not self.record_requests:
            raise RuntimeError("this carrier does not record requests (record_requests=False)")
        return self.requests

    @property
    def datagrams_received(self) -> int:
        """Every datagram that reached the carrier's socket (parsed or not, keep-alives too)."""
        stats = self.transport.stats
        return stats.received + stats.keepalives

    def ringing_calls(self) -> list[str]:
        """Call-IDs of the INVITEs that ring here without a final response yet."""
        return [p.entry.call_id for c, p in self._playing.items() if c.final_status is None]

    def answer_call(self, call_id: str) -> bool:
        """Answer the ringing call ``call_id`` now (200 with SDP); False when it is not ringing."""
        call = self._ringing(call_id)
        return call is not None and self.answer(call)

    def reject_call(self, call_id: str, status: int, reason: str | None = None) -> bool:
        """End the ringing call ``call_id`` with a final ``status``; False when it is not ringing."""
        call = self._ringing(call_id)
        if call is None:
            return False
        self.finish_inbound(call, status, reason)
        return True

    def _ringing(self, call_id: str) -> InboundCall | None:
        for call, playing in self._playing.items():
            if playing.entry.call_id == call_id and call.final_status is None:
                return call
        return None

    def hold_until(self) -> float | None:
        """Loop time until which a silent INVITE asks business time to stand still, or None.

        The event clock's driver keeps business time still meanwhile, so the
        caller's Timer B (real time) fires and its outcome (the gateway's 408 to
        the agent, or a failover) settles at the INVITE's business instant.
        """
        if self._hold_until is not None and self._hold_until <= self.endpoint.now():
            self._hold_until = None
        return self._hold_until

    def is_registered(self, card: str) -> bool:
        """True when ``card`` holds an unexpired registration."""
        now = self.endpoint.loop.time()
        return any(r.card == card and r.expires_at > now for r in self.registrations.values())

    # -- operator shortcuts -------------------------------------------------------------

    def restore(self, card: str) -> None:
        """The carrier's operator restores a suspended card (model counters reset)."""
        self.model.restore(card, self.clock.now())

    def suspend(self, card: str, reason: str = "manual", cause: str = "by test") -> Suspension:
        """The carrier's operator suspends a card."""
        return self.model.suspend(card, reason, cause, self.clock.now())

    # -- authentication ----------------------------------------------------------------

    def _ha1(self, username: str, algorithm: Algorithm) -> str | None:
        account = self.model.account_for_username(username)
        if account is None:
            return None
        return ha1(username, self.realm, account.password, algorithm)

    def _authenticate(
        self, req: ServerRequest, status: int
    ) -> tuple[str | None, tuple[int, str, Sequence[tuple[str, str]]] | None]:
        """(username, None) when authenticated, else (None, the answer to send)."""
        request = req.request
        header = "Proxy-Authorization" if status == 407 else "Authorization"
        values = request.headers.get_all(header)
        now = self.endpoint.now()
        verdict = self.digest.verify(
            request.method, values or None, self._ha1, now, body=request.body
        )
        if verdict.outcome is Outcome.OK:
            return verdict.username, None
        answer = self.digest.answer(verdict, now, proxy=status == 407)
        if answer is None:  # pragma: no cover - only for OK verdicts
            return verdict.username, None
        if values:
            log.info("carrier.auth.refused", method=request.method, reason=verdict.reason)
        return None, (answer.status, answer.reason, answer.headers)

    def _card_for(self, username: str | None, from_user: str | None) -> str | None:
        if username is not None:
            account = self.model.account_for_username(username)
            return None if account is None else account.card
        for candidate in (from_user,):
            if candidate is None:
                continue
            account = self.model.account_for_username(candidate)
            if account is not None:
                return account.card
            if candidate in self.numbers:
                return self.numbers[candidate]
            if candidate in self.model.cards:
                return candidate
        return None

    # -- REGISTER ----------------------------------------------------------------------

    def on_register(self, req: ServerRequest) -> None:
        """Accept REGISTER from a card (digest 401), track the binding; 0 expiry removes it."""
        request = req.request
        tag = new_tag()
        from_user = request.from_.uri.user
        if self.auth is not None:
            username, refusal = self._authenticate(req, 401)
            if refusal is not None:
                status, reason, headers = refusal
                req.respond(status, reason, to_tag=tag, headers=headers)
                self.register_log.append((self.clock.now(), from_user, status))
                return
        else:
            username = from_user
        card = self._card_for(username, from_user)
        if card is None or username is None:
            req.respond(403, "Forbidden (unknown account)", to_tag=tag)
            self.register_log.append((self.clock.now(), from_user, 403))
            return
        suspension = self.model.suspension(card)
        if suspension is not None:
            req.respond(403, suspension.reason_phrase, to_tag=tag)
            self.register_log.append((self.clock.now(), username, 403))
            log.info("carrier.register.refused", card=card, reason=suspension.reason)
            return
        expires = request.expires
        contacts = request.contact
        if contacts and contacts[0].expires is not None:
            expires = contacts[0].expires
        if expires is None:
            expires = self.register_expires
        expires = min(expires, self.register_expires)
        if expires == 0 or request.contact_star:
            self.registrations.pop(username, None)
            req.respond(200, to_tag=tag)
        else:
            contact = str(contacts[0].uri) if contacts else ""
            self.registrations[username] = Registration(
                username,
                card,
                contact,
                self.endpoint.loop.time() + expires,
                req.source,
            )
            req.respond(200, to_tag=tag, headers=[("Contact", f"<{contact}>;expires={expires}")])
        self.register_log.append((self.clock.now(), username, 200))

    # -- INVITE ------------------------------------------------------------------------

    def on_invite(self, req: ServerRequest) -> None:
        """Challenge, identify the card, ask the model, then answer or play the plan."""
        request = req.request
        now = self.clock.now()
        try:
            callee = request.uri.user or request.to.uri.user or ""
            from_user = request.from_.uri.user
        except SIPError:
            req.respond(400, to_tag=new_tag())
            return
        entry = InviteLogEntry(
            time=now,
            call_id=request.call_id,
            callee=callee,
            from_user=from_user,
            username=None,
            card=None,
            decided=0,
            reason_phrase="",
            outcome="",
            source=req.source,
        )
        self.invites.append(entry)
        username: str | None = None
        if self.auth is not None:
            username, refusal = self._authenticate(req, self.auth)
            if refusal is not None:
                status, reason, headers = refusal
                entry.decided = entry.final = status
                entry.reason_phrase = reason
                entry.outcome = "malformed-auth" if status == 400 else "challenged"
                req.respond(status, reason, to_tag=new_tag(), headers=headers)
                return
        entry.username = username
        card = self._card_for(username, from_user)
        entry.card = card
        if card is not None and self.require_register and not self.is_registered(card):
            self._refuse(req, entry, 403, "Forbidden (not registered)", "not-registered")
            return
        decision = self.model.decide_invite(card or (username or from_user or "?"), callee, now)
        if card is None:
            entry.outcome = "unknown-card"
        self._play(req, entry, card, callee, decision)

    def _refuse(
        self,
        req: ServerRequest,
        entry: InviteLogEntry,
        status: int,
        reason: str,
        outcome: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        headers = list(headers)
        entry.decided = entry.final = status
        entry.reason_phrase = reason
        entry.outcome = entry.outcome or outcome
        for name, value in headers:
            if name.lower() == "retry-after" and value.strip().isdigit():
                entry.retry_after = int(value.strip())
        req.respond(status, reason, to_tag=new_tag(), headers=headers)
        log.info(
            "carrier.invite.refused",
            card=entry.card,
            callee=self.mask(entry.callee),
            status=status,
            reason=reason,
        )

    def _play(
        self,
        req: ServerRequest,
        entry: InviteLogEntry,
        card: str | None,
        callee: str,
        decision: CarrierDecision,
    ) -> None:
        plan = decision.plan
        if plan is None or card is None:
            self._refuse(
                req, entry, decision.status, decision.reason_phrase, "rejected", decision.headers
            )
            return
        scripted = self.plan(req.request) if self.plan is not None else None
        if scripted is not None:
            self._play_scripted(req, entry, card, callee, plan, scripted)
            return
        entry.outcome = str(plan.outcome)
        if plan.outcome is PlanOutcome.SILENT:
            self._go_silent(req, card, callee)
            return
        entry.decided = decision.status
        entry.reason_phrase = decision.reason_phrase
        call = self.accept_inbound(req)
        self._playing[call] = _Playing(card, callee, plan, entry)
        log.info(
            "carrier.invite.accepted",
            card=card,
            callee=self.mask(callee),
            outcome=str(plan.outcome),
            ring=plan.ring_seconds,
            talk=plan.talk_seconds,
        )
        if plan.outcome is PlanOutcome.REFUSE_403:
            # The destination's network refuses the number at once: no 180, no Warning.
            self.finish_inbound(call, plan.sip_status, _PHRASES[plan.sip_status])
            return
        if plan.rings:
            self.ring(call)
        call.timers.append(self.later(plan.ring_seconds, lambda: self._ring_over(call)))

    def _go_silent(self, req: ServerRequest, card: str, callee: str) -> None:
        """A silent destination: this INVITE gets no response at all, not even 100 Trying.

        The call never reaches anyone, so its end (not answered) is reported to
        the model at once; the caller's Timer B ends it on the caller's side.
        """
        now = self.endpoint.now()
        self._silenced[server_key(req.request)] = now + SILENT_MEMORY
        if self.silent_hold > 0:
            self._hold_until = max(self._hold_until or now, now + self.silent_hold)
        self._abandon(req)
        log.info("carrier.invite.silent", card=card, callee=self.mask(callee))
        self.model.record_call_end(card, callee, False, 0.0, self.clock.now())

    def _abandon(self, req: ServerRequest) -> None:
        """Drop a request's server transaction without a word.

        The layer's actions for it (a TransportError for the TU, Terminated) are
        deliberately not carried out: nothing is sent and no 100 Trying timer
        stays armed. The request's retransmissions then arrive as new requests
        and are abandoned the same way (:meth:`_silenced_request`).
        """
        if req.tx is not None:
            self.endpoint.layer.transport_error(req.tx, self.endpoint.now())

    def _silenced_request(self, req: ServerRequest) -> bool:
        """True for a retransmitted silent INVITE or a CANCEL of one (swallowed, unanswered)."""
        now = self.endpoint.now()
        for key in [k for k, until in self._silenced.items() if until <= now]:
            del self._silenced[key]
        request = req.request
        try:
            if request.method == "INVITE" and request.to.tag is None:
                key = server_key(request)
            elif request.method == "CANCEL":
                key = cancel_target_key(request)
            else:
                return False
        except SIPError:
            return False
        return key in self._silenced

    def _play_scripted(
        self,
        req: ServerRequest,
        entry: InviteLogEntry,
        card: str,
        callee: str,
        plan: CallPlan,
        action: tuple[Any, ...],
    ) -> None:
        """Play a test's scripted answer (see :data:`ScriptedPlan`) instead of the drawn plan."""
        kind = str(action[0])
        entry.outcome = "scripted"
        call = self.accept_inbound(req)
        self._playing[call] = _Playing(card, callee, plan, entry, scripted=kind)
        log.info("carrier.invite.scripted", card=card, callee=self.mask(callee), action=kind)
        if kind == "silent":
            return
        if kind in ("answer", "ring", "answer-on-cancel"):
            entry.decided = 200 if kind == "answer" else 180
            entry.reason_phrase = "OK" if kind == "answer" else "Ringing"
            self.ring(call)
            if kind == "answer":
                self.answer(call)
            return
        status, reason = int(action[0]), str(action[1])
        headers = list(action[2]) if len(action) > 2 else []
        entry.decided = status
        entry.reason_phrase = reason
        self.finish_inbound(call, status, reason, headers)

    def _on_cancel(self, req: ServerRequest) -> None:
        """A CANCEL; a call scripted ``answer-on-cancel`` is answered first (the 200 crosses it)."""
        try:
            key = cancel_target_key(req.request)
        except SIPError:
            key = None
        call = self._pending.get(key) if key is not None else None
        playing = self._playing.get(call) if call is not None else None
        if call is not None and playing is not None and playing.scripted == "answer-on-cancel":
            self.answer(call)
        super()._on_cancel(req)

    def _ring_over(self, call: InboundCall) -> None:
        playing = self._playing.get(call)
        if playing is None or call.final_status is not None:
            return
        plan = playing.plan
        if not plan.answered:
            self.finish_inbound(call, plan.sip_status, _PHRASES.get(plan.sip_status))
            return
        if self.answer(call):
            call.timers.append(self.later(plan.talk_seconds, lambda: self.hang_up(call)))

    def on_call_ended(self, call: InboundCall) -> None:
        """Report the finished call to the model and close its log entry."""
        playing = self._playing.pop(call, None)
        if playing is None:
            return
        entry = playing.entry
        entry.final = call.final_status
        entry.hangup = call.hangup
        answered = call.answered_at is not None
        talk = 0.0
        if answered:
            if call.hangup == "local" and playing.scripted is None:
                talk = playing.plan.talk_seconds
            else:
                elapsed = (call.ended_at or self.clock.now()) - (call.answered_at or 0.0)
                talk = min(playing.plan.talk_seconds, max(0.0, elapsed))
        entry.answered = answered
        entry.talk_seconds = talk
        suspension = self.model.record_call_end(
            playing.card, playing.callee, answered, talk, self.clock.now()
        )
        if suspension is not None:
            log.info(
                "carrier.card.suspended",
                card=playing.card,
                reason=suspension.reason,
                cause=suspension.cause,
            )

    # -- OPTIONS (health pings) --------------------------------------------------------

    def _dispatch(self, req: ServerRequest) -> None:
        if self.record_requests:
            self.requests.append(req.request)
        if req.request.method == "OPTIONS":
            self.options_received += 1
        if self.silent:
            return
        if self._silenced and self._silenced_request(req):
            self._abandon(req)
            return
        super()._dispatch(req)

    # -- inbound calls towards the gateway ----------------------------------------------

    async def call(
        self,
        target: Address,
        card_number: str,
        *,
        caller: str = "+8613900000000",
        talk_seconds: float | None = 30.0,
        ring_timeout: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> CallResult:
        """A callee calls a card's number back: INVITE to ``target`` with To = ``card_number``."""
        host, port = target
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        own_host, own_port = self.address
        return await self.place_call(
            target,
            request_uri=f"sip:{card_number}@{hostport}",
            from_uri=f"sip:{caller}@{own_host}:{own_port}",
            to_uri=f"sip:{card_number}@{hostport}",
            callee=card_number,
            headers=headers,
            talk_seconds=talk_seconds,
            ring_timeout=ring_timeout,
        )

    async def invite(
        self,
        target: Address,
        card_number: str,
        *,
        caller: str = "+8613900000000",
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[Response, Request]:
        """A callback INVITE to ``target`` for ``card_number``, left up; (final, INVITE sent).

        A 2xx is ACKed and the dialog kept: send BYE, re-INVITE or INFO with
        :meth:`~simulator.sipkit.UserAgent.in_dialog`.
        """
        host, port = target
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        own_host, own_port = self.address
        return await self.open_call(
            target,
            request_uri=f"sip:{card_number}@{hostport}",
            from_uri=f"sip:{caller}@{own_host}:{own_port}",
            to_uri=f"sip:{card_number}@{hostport}",
            headers=headers,
        )


_PHRASES = {
    403: "Forbidden",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    503: "Service Unavailable",
    603: "Decline",
}
