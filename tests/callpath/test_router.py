"""The router's table: every route from a request and the answers to its questions, no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.callpath.auth import Identity, IdentityKind
from gateway.callpath.router import ALLOW, Route, RouteKind, route, route_authenticated
from gateway.sip import Request, parse
from gateway.sip.uri import URI


@dataclass
class FakeFacts:
    """Answers set per test; every question asked is recorded in ``asked``."""

    transaction: bool = False
    cancel_target: bool = False
    foreign: bool = False
    dialog: bool = False
    carrier: bool = False
    local: bool = True
    registered: bool = True
    call_path: bool = True
    behind: bool = False
    asked: list[str] = field(default_factory=list)

    def in_transaction(self, req: Request) -> bool:
        self.asked.append("in_transaction")
        return self.transaction

    def cancels_transaction(self, req: Request) -> bool:
        self.asked.append("cancels_transaction")
        return self.cancel_target

    def foreign_cancel(self, req: Request) -> bool:
        self.asked.append("foreign_cancel")
        return self.foreign

    def in_dialog(self, req: Request) -> bool:
        self.asked.append("in_dialog")
        return self.dialog

    def from_carrier(self) -> bool:
        self.asked.append("from_carrier")
        return self.carrier

    def is_local(self, uri: URI) -> bool:
        self.asked.append("is_local")
        return self.local

    def is_registered(self, agent: str) -> bool:
        self.asked.append("is_registered")
        return self.registered

    def has_call_path(self) -> bool:
        self.asked.append("has_call_path")
        return self.call_path

    def overloaded(self, req: Request) -> bool:
        self.asked.append("overloaded")
        return self.behind


def request(method: str, *, to_tag: str | None = None, extra: str = "") -> Request:
    """A minimal valid request of ``method`` to sip:100@gw.example."""
    to = "<sip:100@gw.example>" + (f";tag={to_tag}" if to_tag else "")
    cseq_method = method
    raw = (
        f"{method} sip:100@gw.example SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-router-1\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:agent@gw.example>;tag=f1\r\n"
        f"To: {to}\r\n"
        "Call-ID: router-1@192.0.2.10\r\n"
        f"CSeq: 1 {cseq_method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse(raw)
    assert isinstance(message, Request)
    return message


CASES: list[tuple[str, Request, FakeFacts, RouteKind, int]] = [
    ("retransmission", request("INVITE"), FakeFacts(transaction=True), RouteKind.ABSORB, 0),
    (
        "ack of non-2xx",
        request("ACK", to_tag="t"),
        FakeFacts(transaction=True),
        RouteKind.ABSORB,
        0,
    ),
    ("ack of 2xx", request("ACK", to_tag="t"), FakeFacts(), RouteKind.ACK_2XX, 0),
    ("cancel", request("CANCEL"), FakeFacts(cancel_target=True), RouteKind.CANCEL, 0),
    (
        "foreign cancel",
        request("CANCEL"),
        FakeFacts(cancel_target=True, foreign=True),
        RouteKind.FOREIGN_CANCEL,
        403,
    ),
    ("unmatched cancel", request("CANCEL"), FakeFacts(), RouteKind.REPLY, 481),
    ("bye in dialog", request("BYE", to_tag="t"), FakeFacts(dialog=True), RouteKind.IN_DIALOG, 0),
    ("re-invite", request("INVITE", to_tag="t"), FakeFacts(dialog=True), RouteKind.IN_DIALOG, 0),
    ("inbound", request("INVITE"), FakeFacts(carrier=True), RouteKind.INBOUND_INVITE, 0),
    (
        "carrier with a to tag",
        request("INVITE", to_tag="t"),
        FakeFacts(carrier=True),
        RouteKind.OUTBOUND_INVITE,
        0,
    ),
    ("outbound", request("INVITE"), FakeFacts(), RouteKind.OUTBOUND_INVITE, 0),
    # Behind the traffic: a new outbound call is refused 503 before any digest;
    # inbound calls, calls up and registrations go on.
    ("outbound, overloaded", request("INVITE"), FakeFacts(behind=True), RouteKind.REPLY, 503),
    (
        "inbound, overloaded",
        request("INVITE"),
        FakeFacts(carrier=True, behind=True),
        RouteKind.INBOUND_INVITE,
        0,
    ),
    (
        "bye in dialog, overloaded",
        request("BYE", to_tag="t"),
        FakeFacts(dialog=True, behind=True),
        RouteKind.IN_DIALOG,
        0,
    ),
    ("register, overloaded", request("REGISTER"), FakeFacts(behind=True), RouteKind.REGISTER, 0),
    ("register", request("REGISTER"), FakeFacts(), RouteKind.REGISTER, 0),
    ("options", request("OPTIONS"), FakeFacts(), RouteKind.OPTIONS, 200),
    ("options not for us", request("OPTIONS"), FakeFacts(local=False), RouteKind.REPLY, 404),
    ("bye without dialog", request("BYE", to_tag="t"), FakeFacts(), RouteKind.REPLY, 481),
    ("info without dialog", request("INFO"), FakeFacts(), RouteKind.REPLY, 481),
    ("unknown method", request("SUBSCRIBE"), FakeFacts(), RouteKind.REPLY, 501),
    (
        "unsupported extension",
        request("INVITE", extra="Require: foo\r\n"),
        FakeFacts(),
        RouteKind.REPLY,
        420,
    ),
    (
        "invalid ack",
        request("ACK", extra="Max-Forwards: 0\r\n"),
        FakeFacts(),
        RouteKind.DROP,
        0,
    ),
]


@pytest.mark.parametrize(
    ("req", "facts", "kind", "status"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_route_table(req: Request, facts: FakeFacts, kind: RouteKind, status: int) -> None:
    """Each request and set of answers gets its route (and, when answered, its status)."""
    found = route(req, facts)
    assert (kind, status) == (found.kind, found.status)


def test_every_route_kind_is_in_the_table() -> None:
    """The table above reaches every kind the router can return."""
    reached = {case[3] for case in CASES} | {RouteKind.REPLY}
    assert set(RouteKind) == reached


def test_a_retransmission_costs_one_question() -> None:
    """An absorbed retransmission asks nothing after the transaction table."""
    facts = FakeFacts(transaction=True)
    route(request("INVITE"), facts)
    assert ["in_transaction"] == [q for q in facts.asked if q != "is_local"]


def test_a_cancel_of_nothing_never_asks_who_sent_it() -> None:
    """Without a cancel target the B2BUA is not asked (its foreign check counts and logs)."""
    facts = FakeFacts()
    route(request("CANCEL"), facts)
    assert "foreign_cancel" not in facts.asked


def test_options_and_501_list_allow() -> None:
    """§11.2 and §8.2.1: Allow lists every method we handle."""
    options = route(request("OPTIONS"), FakeFacts())
    unknown = route(request("SUBSCRIBE"), FakeFacts())
    allow = ("Allow", ", ".join(ALLOW))
    assert allow in options.headers
    assert allow in unknown.headers


AGENT = Identity(IdentityKind.AGENT, "alice")
DIALER = Identity(IdentityKind.DIALER, "dialer1")

AUTH_CASES: list[tuple[str, Request, Identity, FakeFacts, Route]] = [
    ("agent registers", request("REGISTER"), AGENT, FakeFacts(), Route(RouteKind.REGISTER)),
    (
        "dialer registers",
        request("REGISTER"),
        DIALER,
        FakeFacts(),
        Route(RouteKind.REPLY, 403, detail="only agents register"),
    ),
    ("agent calls", request("INVITE"), AGENT, FakeFacts(), Route(RouteKind.OUTBOUND_INVITE)),
    (
        "dialer calls unregistered",
        request("INVITE"),
        DIALER,
        FakeFacts(registered=False),
        Route(RouteKind.OUTBOUND_INVITE),
    ),
    (
        "to tag of no dialog",
        request("INVITE", to_tag="t"),
        AGENT,
        FakeFacts(),
        Route(RouteKind.REPLY, 481, detail="no such dialog"),
    ),
    (
        "agent not registered",
        request("INVITE"),
        AGENT,
        FakeFacts(registered=False),
        Route(RouteKind.REPLY, 403, "Not Registered", detail="agent not registered"),
    ),
    (
        "no call path",
        request("INVITE"),
        AGENT,
        FakeFacts(call_path=False),
        Route(RouteKind.REPLY, 503, headers=(("Retry-After", "30"),), detail="no call path"),
    ),
]


@pytest.mark.parametrize(
    ("req", "identity", "facts", "expected"),
    [case[1:] for case in AUTH_CASES],
    ids=[case[0] for case in AUTH_CASES],
)
def test_route_authenticated(
    req: Request, identity: Identity, facts: FakeFacts, expected: Route
) -> None:
    """After digest: registrar, B2BUA, or the stateless refusal."""
    assert expected == route_authenticated(req, identity, facts)
