"""A call and its legs, and the one table of the states a call may move through.

Every change of :attr:`Call.state` goes through :meth:`Call.advance`, which
refuses any move not in :data:`LEGAL_TRANSITIONS` (like the card table of
:mod:`gateway.cards`). What is not a position in the call's life stays a plain
attribute: ``inbound`` (fixed at creation), ``reserved`` (a card reservation
held, released and taken again at failover), ``provisional`` (some trunk answered
at all, kept across failover), :attr:`Leg.rang` (this B-leg sent 180/183: the
fact card classification reads, kept while the call is cancelled), ``trunk_retry_used`` (the one extra attempt after
a trunk failure is spent) and ``timed_out`` (Timer C cancelled the B-leg: the
agent hears 408, not 487).

This module must never send, log, read a clock or touch the store: it is data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gateway.callpath.auth import Identity
    from gateway.sip import Request
    from gateway.sip.dialog import Dialog
    from gateway.sip.digest import DigestClient
    from gateway.sip.transaction import AckWait
    from gateway.sip.uri import URI
    from gateway.transport import Address, Transport
    from gateway.transport.endpoint import ClientRequest, Scheduled, ServerRequest
    from policies.context import CallContext

__all__ = [
    "LEGAL_TRANSITIONS",
    "Call",
    "CallState",
    "IllegalCallTransition",
    "Leg",
    "Side",
]

Side = Literal["a", "b"]


class CallState(StrEnum):
    """Where a call is in its life, as the relay sees it."""

    DECIDING = "deciding"
    """The A-leg INVITE is in; the policy pipeline and card choice run."""
    DIALING = "dialing"
    """A B-leg INVITE is out, no 180/183 on it yet (a failover starts a new one)."""
    EARLY = "early"
    """The far side rang (180/183): from here the callee is never dialled again."""
    ANSWERED = "answered"
    """The B-leg answered 2xx; the 2xx went to the A-leg, whose ACK is awaited."""
    CONFIRMED = "confirmed"
    """The A-leg ACKed the 2xx (and the B-leg got its ACK): the call is up."""
    CANCELLING = "cancelling"
    """The caller gave up before the answer (CANCEL, BYE in the early dialog): its 487
    is sent, the B-leg's end is awaited."""
    ENDED = "ended"
    """Reservation finished, CDR written, legs forgotten. Nothing follows."""


_S = CallState

# Every legal move of a call lives in this one table; anything else raises.
LEGAL_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    _S.DECIDING: frozenset({_S.DIALING, _S.ENDED}),
    # DIALING → DIALING: a failover (or the first card's B-leg) starts a new INVITE.
    _S.DIALING: frozenset({_S.DIALING, _S.EARLY, _S.ANSWERED, _S.CANCELLING, _S.ENDED}),
    _S.EARLY: frozenset({_S.ANSWERED, _S.CANCELLING, _S.ENDED}),
    _S.ANSWERED: frozenset({_S.CONFIRMED, _S.ENDED}),
    _S.CONFIRMED: frozenset({_S.ENDED}),
    _S.CANCELLING: frozenset({_S.ENDED}),
    _S.ENDED: frozenset(),
}


class IllegalCallTransition(ValueError):
    """A call state change that :data:`LEGAL_TRANSITIONS` does not allow."""

    def __init__(self, call_id: str, from_state: CallState, to_state: CallState) -> None:
        super().__init__(f"call {call_id}: illegal transition {from_state} → {to_state}")
        self.call_id = call_id
        self.from_state = from_state
        self.to_state = to_state


@dataclass(slots=True, eq=False)
class Leg:
    """One side of a call: where its requests go and its dialog (None until a tag exists)."""

    transport: Transport
    address: Address
    call_id: str
    local_tag: str
    dialog: Dialog | None = None
    ackwait: AckWait | None = None
    ack_timer: Scheduled | None = None
    contact: str = ""
    #: Addresses this leg's peer sends from: the A-leg's INVITE source; for a
    #: B-leg, where its requests go plus every source its responses came from.
    peers: set[Address] = field(default_factory=set)
    #: True for the A-leg: only the transport its INVITE arrived on (or ``home``).
    strict: bool = False
    #: A worker's private transport standing for ``transport``: the peer's in-dialog
    #: requests come there, to the Contact we gave (gateway.workers).
    home: Transport | None = None
    #: A B-leg whose far side sent 180/183 (a new B-leg starts without).
    rang: bool = False

    def __post_init__(self) -> None:
        self.peers.add(self.address)

    def from_peer(self, source: Address, transport: Transport | None) -> bool:
        """True when a request from ``source`` over ``transport`` may be this leg's peer.

        UDP: exactly a known address (a NATed agent is known by its public
        address and port, RFC 3581). TCP: a known host — the peer may have
        reconnected from a new port after an idle close, and a stream's source
        host cannot be forged without its handshake.
        """
        if transport is not None:
            if self.strict and transport is not self.transport and transport is not self.home:
                return False
            if transport.name != self.transport.name:
                return False
            if transport.reliable:
                return any(source[0] == host for host, _ in self.peers)
        return source in self.peers


@dataclass(slots=True, eq=False)
class Call:
    """One call: the A-leg's INVITE, the current B-leg and the bookkeeping of its CDR."""

    key: str
    a_req: ServerRequest
    a: Leg
    identity: Identity
    destination: str
    attempt_at: float
    state: CallState = CallState.DECIDING
    inbound: bool = False
    campaign: str = ""
    b: Leg | None = None
    b_invite: Request | None = None
    b_client: ClientRequest | None = None
    b_digest: DigestClient | None = None
    b_target: URI | None = None
    b_from: str = ""
    b_to: str = ""
    b_cseq: int = 1
    b_ack: Request | None = None
    card: str | None = None
    ctx: CallContext | None = None
    cards_tried: list[str] = field(default_factory=list)
    #: Cards this call must not use any more (tried, or sharing a failed trunk).
    exclude: set[str] = field(default_factory=set)
    trunk_retry_used: bool = False
    failovers: int = 0
    provisional: bool = False
    timed_out: bool = False
    no_answer_timer: Scheduled | None = None
    #: Why the gateway CANCELled the B-leg (agent-cancel, no-answer, …), "" when it did not.
    cancel_why: str = ""
    #: Call-IDs of every B-leg this call started, in order (failover adds one each).
    b_call_ids: list[str] = field(default_factory=list)
    a_final: int | None = None
    ring_at: float | None = None
    answer_at: float | None = None
    policy_reason: str = ""
    lead_id: str = ""  # [policy] lead_header (X-Lead-Id) of a dialer's INVITE, for the CDR
    final_code: int = 0
    reserved: bool = False
    max_forwards: int = 70
    #: True while the call's dialogs are stored (``call_dialogs``), with what was stored
    #: per side: (CSeq ceiling, remote target) — the row is rewritten when either moves.
    persisted: bool = False
    stored: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: The A-leg INVITE's identity as stored (built once, at the first write-ahead).
    a_stored: dict[str, Any] | None = None
    #: How long the policy pipeline took for this call (seconds, perf counter), for the
    #: ``decision_seconds`` of its ``attempt`` or ``blocked`` event; None: not decided.
    decision_seconds: float | None = None
    #: Why the gateway hung up an answered call (``shutdown``, ``ack-timeout``…), for
    #: the call's summary line; "" when a party hung up.
    hangup_why: str = ""
    #: The policy's detail of a refusal after B-legs were tried (each card's cause).
    policy_detail: str | None = None

    def advance(self, to: CallState) -> None:
        """Move to ``to``; :class:`IllegalCallTransition` when the table forbids it."""
        if to not in LEGAL_TRANSITIONS[self.state]:
            raise IllegalCallTransition(self.a.call_id, self.state, to)
        self.state = to

    @property
    def answered(self) -> bool:
        """The B-leg answered 2xx (still true once the call ended)."""
        return self.answer_at is not None

    @property
    def ringing(self) -> bool:
        """The current B-leg rang (180/183); stays true while the call is cancelled."""
        return self.b is not None and self.b.rang

    @property
    def cancelled(self) -> bool:
        """The caller gave up before the answer (the call is ending on that)."""
        return self.state is CallState.CANCELLING

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    @property
    def b_call_id(self) -> str | None:
        """The Call-ID of the current (or last) B-leg, None before the first one."""
        return self.b.call_id if self.b is not None else None
