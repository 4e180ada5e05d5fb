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
``talk_seconds`` unless the caller hangs up first. CANCEL (487), the caller's
BYE (200), re-INVITE (200, same SDP), OPTIONS health pings (200) and the ACK
are handled by :class:`~simulator.sipkit.UserAgent`. Every call end is
reported to :meth:`CarrierModel.record_call_end`.

Every INVITE received is kept in :attr:`Carrier.invites` (business time, card,
authenticated username, From user, callee, Call-ID, decision, final status),
so a test can assert that the carrier saw nothing, or that no callee was
dialled twice. The log holds callee numbers as dialled (tests compare them);
:meth:`InviteLogEntry.as_dict` and every log line mask them.

:meth:`Carrier.call` places a call from the carrier towards the gateway (a
callee calling a card's number back).

Business time comes from the injected clock and drives the model and the
ring/talk durations; SIP timers stay real. This module must never make a
policy decision of its own beyond the model's, and never log a password or an
unmasked callee.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.endpoint import ServerRequest
from gateway.sip.digest import Algorithm, DigestServer, Outcome, ha1
from gateway.sip.errors import SIPError
from gateway.sip.transaction import TimerConfig
from gateway.transport import Address
from policies.privacy import mask_number
from simulator.answer import CallPlan
from simulator.answer import Outcome as PlanOutcome
from simulator.clock import BusinessClock
from simulator.models import CarrierDecision, CarrierModel, Suspension
from simulator.sipkit import CallResult, InboundCall, UserAgent, new_tag

__all__ = ["Carrier", "InviteLogEntry", "Registration"]

log = structlog.get_logger("simulator.carrier")

DEFAULT_REALM = "carrier.sim"


@dataclass(slots=True)
class InviteLogEntry:
    """One INVITE the carrier received and what became of it.

    ``decided`` is the status the carrier decided on arrival (401/407 for a
    challenge, the model's status otherwise); ``final`` the final status it
    actually sent (differs for a CANCELled call: 487). ``outcome`` names the
    branch: ``challenged``, ``malformed-auth``, ``not-registered``,
    ``unknown-card``, ``rejected`` or the plan's outcome (``answer``,
    ``busy``, ``no_answer``, ``decline``).
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


class Carrier(UserAgent):
    """The carrier trunk UAS. ``await carrier.start()``, then point cards at ``carrier.address``.

    ``auth`` is 401 (WWW-Authenticate, the usual trunk answer), 407
    (Proxy-Authenticate) or None (no digest: the card is named by the From
    user, matched against account usernames and ``numbers``). With
    ``require_register`` an INVITE from a card without a live registration
    gets ``403 Forbidden (not registered)``.
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
    ) -> None:
        if auth not in (None, 401, 407):
            raise ValueError("auth must be 401, 407 or None")
        super().__init__(name, clock=clock, host=host, timers=timers, mask_callees=mask_callees)
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
        entry.decided = decision.status
        entry.reason_phrase = decision.reason_phrase
        entry.outcome = str(plan.outcome)
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
        if plan.outcome is not PlanOutcome.BUSY:
            self.ring(call)
        call.timers.append(self.later(plan.ring_seconds, lambda: self._ring_over(call)))

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
            if call.hangup == "local":
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
        if req.request.method == "OPTIONS":
            self.options_received += 1
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


_PHRASES = {480: "Temporarily Unavailable", 486: "Busy Here", 603: "Decline"}
