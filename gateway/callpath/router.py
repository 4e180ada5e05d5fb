"""Where a request received by the gateway goes: a decision table, no I/O.

:func:`route` takes a request and answers one :class:`Route`: absorb it into
its server transaction, hand it to the B2BUA's dialogs, challenge it, bind it,
or answer it statelessly with a status. :func:`route_authenticated` decides the
rest once the digest check has named the caller. The questions whose answers
live elsewhere (a transaction table, the live calls, the carriers' addresses,
our own host names, the registrar) are put to a :class:`Facts` object, in a
fixed order and only when the answer matters, so the cheap common paths stay
cheap.

The element (:mod:`gateway.callpath.element`) asks, then acts. This module must
never send, log, read a clock or keep state: everything it knows comes from its
arguments, so every route is unit-tested without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from gateway.callpath.auth import Identity, IdentityKind
from gateway.sip import Request, SIPError
from gateway.sip.uri import URI
from gateway.sip.validate import check_request

__all__ = [
    "ACCEPT",
    "ALLOW",
    "SUPPORTED",
    "Facts",
    "Route",
    "RouteKind",
    "route",
    "route_authenticated",
]

ALLOW: tuple[str, ...] = (
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
)
"""Methods the gateway handles (RFC 3261 §20.5); sent in Allow on OPTIONS and 501."""

ACCEPT = "application/sdp"
SUPPORTED: tuple[str, ...] = ()
"""Option tags we support: none yet, so every Require/Proxy-Require tag gets 420."""

_IN_DIALOG_ONLY = frozenset({"BYE", "INFO"})


class RouteKind(StrEnum):
    """What the element does with a request."""

    DROP = "drop"
    """Nothing is sent (an ACK is never answered); ``detail`` names the counter."""
    ABSORB = "absorb"
    """A retransmission, or the ACK of a non-2xx we sent: its server transaction takes it."""
    ACK_2XX = "ack-of-2xx"
    """An ACK with no transaction: the ACK of a 2xx (§17.1.1.3), for the B2BUA's dialogs."""
    CANCEL = "cancel"
    """A CANCEL of one of our INVITE server transactions (§9.2)."""
    FOREIGN_CANCEL = "foreign-cancel"
    """A CANCEL naming a call's INVITE, not from its caller: answered statelessly."""
    IN_DIALOG = "in-dialog"
    """A request of a live call's dialog (To tag matches a leg)."""
    INBOUND_INVITE = "inbound-invite"
    """An out-of-dialog INVITE from a carrier's address: inbound routing, no challenge."""
    OUTBOUND_INVITE = "outbound-invite"
    """An INVITE from an agent or dialer: challenge, then (authenticated) the B2BUA."""
    REGISTER = "register"
    """A REGISTER: challenge, then (authenticated agent) the registrar."""
    OPTIONS = "options"
    """OPTIONS to us: 200 with Allow/Accept/Supported (§11.2)."""
    REPLY = "reply"
    """Answer statelessly with ``status`` (an error of the request, or no route)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One decision: a kind, and for the answered kinds the status line and headers."""

    kind: RouteKind
    status: int = 0
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    detail: str | None = None


class Facts(Protocol):
    """What the router asks about a request; the element answers from its tables."""

    def in_transaction(self, req: Request) -> bool:
        """A server transaction exists for ``req`` (§17.2.3 matching)."""
        ...

    def cancels_transaction(self, req: Request) -> bool:
        """``req`` (a CANCEL) targets a live INVITE server transaction of ours."""
        ...

    def foreign_cancel(self, req: Request) -> bool:
        """``req`` (a CANCEL of our transaction) does not come from the INVITE's sender."""
        ...

    def in_dialog(self, req: Request) -> bool:
        """``req`` (To tag set) names a leg of a live call."""
        ...

    def from_carrier(self) -> bool:
        """The request's source is a carrier's signalling address."""
        ...

    def is_local(self, uri: URI) -> bool:
        """``uri`` names this gateway (a domain of ours or one of our listeners)."""
        ...

    def is_registered(self, agent: str) -> bool:
        """The agent holds a live registration."""
        ...

    def has_call_path(self) -> bool:
        """The B2BUA runs (users, peers or cards are configured)."""
        ...

    def overloaded(self, req: Request) -> bool:
        """Turn this new call away: the element is behind its traffic (``[sip]
        overload_queue_kb``) and the call has not begun (no challenge of it answered)."""
        ...


ABSORB = Route(RouteKind.ABSORB)
ACK_2XX = Route(RouteKind.ACK_2XX)
CANCEL = Route(RouteKind.CANCEL)
IN_DIALOG = Route(RouteKind.IN_DIALOG)
INBOUND_INVITE = Route(RouteKind.INBOUND_INVITE)
OUTBOUND_INVITE = Route(RouteKind.OUTBOUND_INVITE)
REGISTER = Route(RouteKind.REGISTER)
INVALID_ACK = Route(RouteKind.DROP, detail="invalid-ack")
FOREIGN_CANCEL = Route(RouteKind.FOREIGN_CANCEL, 403, detail="CANCEL not from the caller")
NO_CANCEL_TARGET = Route(RouteKind.REPLY, 481, detail="no transaction to cancel")
NO_ROUTE = Route(RouteKind.REPLY, 404, detail="no route for this Request-URI")
NO_DIALOG = Route(RouteKind.REPLY, 481, detail="no such dialog")
OPTIONS = Route(
    RouteKind.OPTIONS,
    200,
    headers=(("Allow", ", ".join(ALLOW)), ("Accept", ACCEPT), ("Supported", ", ".join(SUPPORTED))),
)
UNKNOWN_METHOD = Route(
    RouteKind.REPLY, 501, headers=(("Allow", ", ".join(ALLOW)),), detail="unknown method"
)
AGENTS_ONLY = Route(RouteKind.REPLY, 403, detail="only agents register")
NOT_REGISTERED = Route(RouteKind.REPLY, 403, "Not Registered", detail="agent not registered")
NO_CALL_PATH = Route(RouteKind.REPLY, 503, headers=(("Retry-After", "30"),), detail="no call path")
# RFC 3261 §21.5.4: 503 with Retry-After, so that a caller (or a proxy) tries later
# rather than retransmitting into a queue that is already too long.
OVERLOADED = Route(RouteKind.REPLY, 503, headers=(("Retry-After", "2"),), detail="overloaded")


def route(req: Request, facts: Facts) -> Route:
    """The route of a request the flood guard let through, before any authentication."""
    method = req.method
    role: Literal["registrar", "proxy"] = "registrar" if method == "REGISTER" else "proxy"
    try:
        check_request(req, role=role, supported=SUPPORTED, local_uri=facts.is_local)
    except SIPError as err:
        if method == "ACK":
            # RFC 3261 §17.1.1.3: an ACK is never answered, not even when malformed.
            return INVALID_ACK
        return Route(
            RouteKind.REPLY,
            err.status_code,
            err.reason_phrase,
            tuple(err.extra_headers),
            err.detail,
        )
    try:
        existing = facts.in_transaction(req)
    except SIPError:
        existing = False
    if existing:
        # A retransmission, or the ACK of a non-2xx we sent (§17.2.1): the
        # transaction absorbs it — never verified or routed twice.
        return ABSORB
    if method == "ACK":
        # The ACK of a 2xx has its own branch (§17.1.1.3): the B2BUA's dialogs.
        return ACK_2XX
    if method == "CANCEL":
        if not facts.cancels_transaction(req):
            # RFC 3261 §9.2: no matching transaction → 481.
            return NO_CANCEL_TARGET
        if facts.foreign_cancel(req):
            # Answered statelessly: a server transaction for it would absorb the
            # caller's own CANCEL (same branch) as a retransmission.
            return FOREIGN_CANCEL
        return CANCEL
    if req.to.tag is not None and facts.in_dialog(req):
        return IN_DIALOG
    if method == "INVITE":
        if req.to.tag is None and facts.from_carrier():
            # Carriers never authenticate to us: their address is the credential,
            # and their calls only ever go to agents (never back out: no relay).
            return INBOUND_INVITE
        if req.to.tag is None and facts.overloaded(req):
            # A new call while behind: refused before the digest and the policies cost
            # anything; calls up, their BYEs and inbound calls go on.
            return OVERLOADED
        return OUTBOUND_INVITE
    if method == "REGISTER":
        return REGISTER
    if not facts.is_local(req.uri):
        return NO_ROUTE
    if method == "OPTIONS":
        return OPTIONS
    if method in _IN_DIALOG_ONLY:
        # RFC 3261 §15.1.2: a BYE matching no dialog gets 481.
        return NO_DIALOG
    # RFC 3261 §8.2.1: a method we do not implement gets 501 with Allow.
    return UNKNOWN_METHOD


def route_authenticated(req: Request, identity: Identity, facts: Facts) -> Route:
    """The route of a REGISTER or outbound INVITE once digest named ``identity``."""
    if req.method == "REGISTER":
        return REGISTER if identity.kind is IdentityKind.AGENT else AGENTS_ONLY
    if req.to.tag is not None:
        # RFC 3261 §12.2.2: a request with a To tag matching no dialog → 481.
        return NO_DIALOG
    if identity.kind is IdentityKind.AGENT and not facts.is_registered(identity.name):
        return NOT_REGISTERED
    if not facts.has_call_path():
        return NO_CALL_PATH
    return OUTBOUND_INVITE
