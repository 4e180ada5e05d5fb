"""Tests of the four RFC 3261 §17 transaction machines, their timers, keys and CANCEL rules.

Everything runs on a fake clock: ``now`` is a float the test advances, and a
machine's timers are driven only through ``get_timer()`` / ``handle_timer(now)``.
Messages are written as wire bytes and parsed, as the transport would.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip import Request, Response, TransactionError, make_response, parse
from gateway.sip.transaction import (
    AckWait,
    Action,
    ClientInviteTransaction,
    ClientKey,
    ClientNonInviteTransaction,
    Deliver,
    LegacyServerKey,
    Send,
    ServerInviteTransaction,
    ServerKey,
    ServerNonInviteTransaction,
    State,
    Terminated,
    Timeout,
    Timer,
    TimerConfig,
    TransportError,
    build_ack,
    build_cancel,
    cancel_target_key,
    client_key,
    handle_cancel,
    is_reliable,
    server_key,
)

BRANCH = "z9hG4bK776asdhds"


def request_bytes(
    method: str = "INVITE",
    *,
    transport: str = "UDP",
    branch: str | None = BRANCH,
    cseq: int = 314159,
    to_tag: str | None = None,
    uri: str = "sip:bob@biloxi.example.com",
    extra: str = "",
) -> bytes:
    """A request as on the wire (RFC 3261 §24.2 style)."""
    branch_param = f";branch={branch}" if branch is not None else ""
    to = "Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} pc33.atlanta.example.com:5060{branch_param}\r\n"
        "Route: <sip:p1.example.com;lr>\r\n"
        "Route: <sip:p2.example.com;lr>\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def req(method: str = "INVITE", **kw: object) -> Request:
    """Parse :func:`request_bytes` into a Request."""
    msg = parse(request_bytes(method, **kw))  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def resp(request: Request, status: int, to_tag: str | None = "a6c85cf") -> Response:
    """A response to ``request`` built the way a UAS would (§8.2.6)."""
    response = make_response(request, status, to_tag=to_tag if status > 100 else None)
    # Round-trip through bytes so the machine sees what the transport hands it.
    parsed = parse(bytes(response))
    assert isinstance(parsed, Response)
    return parsed


def summary(actions: list[Action]) -> list[tuple[object, ...]]:
    """Actions reduced to comparable tuples: kind, start line / timer, retransmission flag."""
    out: list[tuple[object, ...]] = []
    for a in actions:
        if isinstance(a, Send):
            m = a.message
            line = f"{m.method}" if isinstance(m, Request) else m.status
            out.append(("send", line, a.retransmission))
        elif isinstance(a, Deliver):
            m = a.message
            out.append(("deliver", m.method if isinstance(m, Request) else m.status))
        elif isinstance(a, Timeout):
            out.append(("timeout", a.timer))
        elif isinstance(a, TransportError):
            out.append(("transport-error",))
        else:
            assert isinstance(a, Terminated)
            out.append(("terminated",))
    return out


def state_of(machine: ServerNonInviteTransaction) -> State:
    """The machine's state, read through a call so type checkers do not pin it."""
    return machine.state


def run_timers(
    machine: ClientInviteTransaction
    | ClientNonInviteTransaction
    | ServerInviteTransaction
    | ServerNonInviteTransaction,
    until: float = 1e9,
) -> list[tuple[float, list[tuple[object, ...]]]]:
    """Advance the fake clock from deadline to deadline, collecting what fired when."""
    fired: list[tuple[float, list[tuple[object, ...]]]] = []
    while (deadline := machine.get_timer()) is not None and deadline <= until:
        fired.append((deadline, summary(machine.handle_timer(deadline))))
    return fired


# --------------------------------------------------------------------------- INVITE client


def test_invite_client_start_sends_and_arms_a_and_b() -> None:
    """start() sends the INVITE once and arms Timer A = T1 and Timer B = 64*T1 over UDP."""
    tx = ClientInviteTransaction(req())
    assert [("send", "INVITE", False)] == summary(tx.start(10.0))
    assert State.CALLING == tx.state
    assert {Timer.A: 10.5, Timer.B: 42.0} == tx.timers
    assert 10.5 == tx.get_timer()


def test_invite_client_timer_a_doubles_until_timer_b_times_out() -> None:
    """Over UDP Timer A fires at T1, 3T1, 7T1 ... (doubling, no T2 cap) and B ends at 64*T1."""
    tx = ClientInviteTransaction(req())
    tx.start(0.0)
    fired = run_timers(tx)
    resend = [("send", "INVITE", True)]
    assert [
        (0.5, resend),
        (1.5, resend),
        (3.5, resend),
        (7.5, resend),
        (15.5, resend),
        (31.5, resend),
        (32.0, [("timeout", Timer.B), ("terminated",)]),
    ] == fired
    assert State.TERMINATED == tx.state
    assert tx.get_timer() is None


def test_invite_client_reliable_never_retransmits() -> None:
    """Over TCP Timer A is not armed (§17.1.1.2: "for unreliable transports" only)."""
    tx = ClientInviteTransaction(req(transport="TCP"))
    tx.start(0.0)
    assert {Timer.B: 32.0} == tx.timers
    assert [(32.0, [("timeout", Timer.B), ("terminated",)])] == run_timers(tx)


def test_invite_client_reliable_flag_overrides_via() -> None:
    """An explicit reliable=True wins over a UDP Via (e.g. a stream the transport chose)."""
    tx = ClientInviteTransaction(req(), reliable=True)
    tx.start(0.0)
    assert {Timer.B: 32.0} == tx.timers


def test_invite_client_custom_t1_scales_timers() -> None:
    """T1 is configurable: Timer A starts at T1 and Timer B is 64*T1."""
    tx = ClientInviteTransaction(req(), timers=TimerConfig(t1=0.1))
    tx.start(0.0)
    assert pytest.approx({Timer.A: 0.1, Timer.B: 6.4}) == tx.timers


def test_invite_client_provisional_stops_a_and_b() -> None:
    """A 1xx in Calling moves to Proceeding, goes to the TU and stops Timers A and B."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    tx.handle_timer(0.5)
    assert [("deliver", 180)] == summary(tx.receive_response(resp(invite, 180), 0.7))
    assert State.PROCEEDING == tx.state
    assert tx.get_timer() is None
    assert tx.can_cancel
    assert [("deliver", 183)] == summary(tx.receive_response(resp(invite, 183), 60.0))


def test_invite_client_cancel_without_final_ends_after_64_t1() -> None:
    """§9.1: a CANCELled INVITE whose 487 never comes is over 64*T1 after the CANCEL."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    tx.receive_response(resp(invite, 180), 0.7)
    assert tx.get_timer() is None  # Proceeding waits for ever without a CANCEL
    assert [] == tx.cancel_sent(10.0)
    assert 10.0 + 32.0 == tx.get_timer()
    tx.cancel_sent(20.0)  # asked again: the first deadline stands
    assert 42.0 == tx.get_timer()
    assert [("timeout", "cancel"), ("terminated",)] == summary(tx.handle_timer(42.0))
    assert State.TERMINATED == tx.state


def test_invite_client_final_after_cancel_disarms_the_guard() -> None:
    """The 487 (or any final) before 64*T1: the machine goes on as usual, no timeout."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    tx.receive_response(resp(invite, 180), 0.7)
    tx.cancel_sent(1.0)
    assert [("send", "ACK", False), ("deliver", 487)] == summary(
        tx.receive_response(resp(invite, 487), 2.0)
    )
    fired = run_timers(tx)
    assert [(34.0, [("terminated",)])] == fired


def test_invite_client_non_2xx_acks_and_waits_timer_d() -> None:
    """A 486 sends the ACK, goes to the TU once, and Timer D (32 s) absorbs retransmissions."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    tx.receive_response(resp(invite, 180), 0.2)
    busy = resp(invite, 486)
    actions = tx.receive_response(busy, 5.0)
    assert [("send", "ACK", False), ("deliver", 486)] == summary(actions)
    assert State.COMPLETED == tx.state
    assert {Timer.D: 37.0} == tx.timers
    # §17.1.1.2: a retransmitted final re-sends the ACK and is not passed up.
    assert [("send", "ACK", True)] == summary(tx.receive_response(busy, 6.0))
    assert [] == summary(tx.receive_response(resp(invite, 180), 6.5))
    assert [(37.0, [("terminated",)])] == run_timers(tx)


def test_invite_client_ack_for_non_2xx_follows_17_1_1_3() -> None:
    """The ACK copies Request-URI, top Via (branch), From, Call-ID, Route; To from the response."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    actions = tx.receive_response(resp(invite, 603, to_tag="xyz"), 1.0)
    ack = actions[0]
    assert isinstance(ack, Send)
    assert ack.message == tx.ack
    wire = ack.data
    parsed = parse(wire)
    assert isinstance(parsed, Request)
    assert "ACK" == parsed.method
    assert invite.uri == parsed.uri
    assert [str(invite.via[0])] == [str(v) for v in parsed.via]
    assert invite.headers.get_all("Route") == parsed.headers.get_all("Route")
    assert invite.headers.get("From") == parsed.headers.get("From")
    assert "xyz" == parsed.to.tag
    assert invite.call_id == parsed.call_id
    assert (invite.cseq.seq, "ACK") == (parsed.cseq.seq, parsed.cseq.method)
    assert b"" == parsed.body


def test_invite_client_non_2xx_in_calling_over_tcp_terminates_at_once() -> None:
    """Over a reliable transport Timer D is zero: Completed is left in the same call."""
    invite = req(transport="TCP")
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    actions = tx.receive_response(resp(invite, 404), 0.1)
    assert [("send", "ACK", False), ("deliver", 404), ("terminated",)] == summary(actions)
    assert State.TERMINATED == tx.state


def test_invite_client_2xx_goes_to_tu_and_accepted_passes_retransmissions() -> None:
    """RFC 6026: 2xx → Accepted (Timer M = 64*T1); further 2xx go to the TU, others are absorbed."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    ok = resp(invite, 200)
    assert [("deliver", 200)] == summary(tx.receive_response(ok, 2.0))
    assert State.ACCEPTED == tx.state
    assert {Timer.M: 34.0} == tx.timers
    assert [("deliver", 200)] == summary(tx.receive_response(ok, 3.0))
    assert [] == summary(tx.receive_response(resp(invite, 486), 3.5))
    assert tx.ack is None  # the ACK for a 2xx belongs to the TU (§13.2.2.4)
    assert [(34.0, [("terminated",)])] == run_timers(tx)


def test_invite_client_transport_error_informs_tu() -> None:
    """A transport failure terminates the transaction and tells the TU (§17.1.1.2)."""
    tx = ClientInviteTransaction(req())
    tx.start(0.0)
    assert [("transport-error",), ("terminated",)] == summary(tx.transport_error(0.1))
    assert [] == tx.transport_error(0.2)
    assert tx.get_timer() is None


def test_invite_client_misuse_raises_transaction_error() -> None:
    """Input before start, a second start, input after termination: TransactionError (500)."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    with pytest.raises(TransactionError):
        tx.receive_response(resp(invite, 180), 0.0)
    tx.start(0.0)
    with pytest.raises(TransactionError):
        tx.start(0.0)
    tx.transport_error(0.0)
    with pytest.raises(TransactionError) as info:
        tx.receive_response(resp(invite, 180), 0.0)
    assert 500 == info.value.status_code
    with pytest.raises(TransactionError):
        ClientInviteTransaction(req("OPTIONS"))


# Table: (path of statuses before, event status, expected state, expected actions).
CLIENT_INVITE_TABLE: list[tuple[list[int], int, State, list[tuple[object, ...]]]] = [
    ([], 100, State.PROCEEDING, [("deliver", 100)]),
    ([], 180, State.PROCEEDING, [("deliver", 180)]),
    ([], 200, State.ACCEPTED, [("deliver", 200)]),
    ([], 302, State.COMPLETED, [("send", "ACK", False), ("deliver", 302)]),
    ([180], 180, State.PROCEEDING, [("deliver", 180)]),
    ([180], 200, State.ACCEPTED, [("deliver", 200)]),
    ([180], 487, State.COMPLETED, [("send", "ACK", False), ("deliver", 487)]),
    ([180], 699, State.COMPLETED, [("send", "ACK", False), ("deliver", 699)]),
    ([486], 486, State.COMPLETED, [("send", "ACK", True)]),
    ([486], 180, State.COMPLETED, []),
    ([486], 200, State.COMPLETED, []),
    ([200], 200, State.ACCEPTED, [("deliver", 200)]),
    ([200], 180, State.ACCEPTED, []),
    ([200], 500, State.ACCEPTED, []),
]


@pytest.mark.parametrize(("path", "status", "state", "expected"), CLIENT_INVITE_TABLE)
def test_invite_client_table(
    path: list[int], status: int, state: State, expected: list[tuple[object, ...]]
) -> None:
    """Every (state, response) pair of the INVITE client machine over UDP."""
    invite = req()
    tx = ClientInviteTransaction(invite)
    tx.start(0.0)
    for i, earlier in enumerate(path):
        tx.receive_response(resp(invite, earlier), 0.1 * (i + 1))
    assert expected == summary(tx.receive_response(resp(invite, status), 1.0))
    assert state == tx.state


# --------------------------------------------------------------------------- non-INVITE client


def test_non_invite_client_timer_e_doubles_caps_at_t2_then_f() -> None:
    """Timer E: T1, 2T1, 4T1, then T2 each time; Timer F times out at 64*T1 (§17.1.2.2)."""
    tx = ClientNonInviteTransaction(req("OPTIONS"))
    assert [("send", "OPTIONS", False)] == summary(tx.start(0.0))
    assert {Timer.E: 0.5, Timer.F: 32.0} == tx.timers
    fired = run_timers(tx)
    resend = [("send", "OPTIONS", True)]
    times = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, resend) for t in times] + [(32.0, [("timeout", Timer.F), ("terminated",)])] == fired


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    """In Proceeding Timer E is reset to T2 whatever its previous value."""
    request = req("BYE")
    tx = ClientNonInviteTransaction(request)
    tx.start(0.0)
    tx.handle_timer(0.5)  # next E at 1.5
    assert [("deliver", 100)] == summary(tx.receive_response(resp(request, 100), 0.6))
    assert State.PROCEEDING == tx.state
    fired = run_timers(tx, until=15.0)
    resend = [("send", "BYE", True)]
    assert [(1.5, resend), (5.5, resend), (9.5, resend), (13.5, resend)] == fired
    # Timer F still runs in Proceeding.
    fired = run_timers(tx)
    assert (32.0, [("timeout", Timer.F), ("terminated",)]) == fired[-1]


def test_non_invite_client_final_then_timer_k() -> None:
    """A final response goes to the TU; Completed absorbs retransmissions for T4, then ends."""
    request = req("REGISTER", uri="sip:registrar.biloxi.example.com")
    tx = ClientNonInviteTransaction(request)
    tx.start(0.0)
    tx.receive_response(resp(request, 100), 0.1)
    ok = resp(request, 200)
    assert [("deliver", 200)] == summary(tx.receive_response(ok, 1.0))
    assert State.COMPLETED == tx.state
    assert {Timer.K: 6.0} == tx.timers
    assert [] == summary(tx.receive_response(ok, 2.0))
    assert [(6.0, [("terminated",)])] == run_timers(tx)


def test_non_invite_client_reliable_no_e_and_k_zero() -> None:
    """Over TCP: no Timer E, and Timer K is zero (terminates with the final response)."""
    request = req("OPTIONS", transport="TCP")
    tx = ClientNonInviteTransaction(request)
    tx.start(0.0)
    assert {Timer.F: 32.0} == tx.timers
    actions = tx.receive_response(resp(request, 404), 0.3)
    assert [("deliver", 404), ("terminated",)] == summary(actions)


def test_non_invite_client_custom_t2_cap() -> None:
    """T2 is configurable: with T1=1, T2=2 Timer E goes 1, 2, 2, 2..."""
    tx = ClientNonInviteTransaction(req("INFO"), timers=TimerConfig(t1=1.0, t2=2.0))
    tx.start(0.0)
    fired = run_timers(tx, until=9.0)
    assert [1.0, 3.0, 5.0, 7.0, 9.0] == [t for t, _ in fired]


def test_non_invite_client_refuses_invite_and_ack() -> None:
    """INVITE has its own machine and ACK has no client transaction at all."""
    with pytest.raises(TransactionError):
        ClientNonInviteTransaction(req())
    with pytest.raises(TransactionError):
        ClientNonInviteTransaction(req("ACK"))


NON_INVITE_CLIENT_TABLE: list[tuple[list[int], int, State, list[tuple[object, ...]]]] = [
    ([], 100, State.PROCEEDING, [("deliver", 100)]),
    ([], 200, State.COMPLETED, [("deliver", 200)]),
    ([], 481, State.COMPLETED, [("deliver", 481)]),
    ([180], 183, State.PROCEEDING, [("deliver", 183)]),
    ([180], 202, State.COMPLETED, [("deliver", 202)]),
    ([200], 200, State.COMPLETED, []),
    ([200], 100, State.COMPLETED, []),
]


@pytest.mark.parametrize(("path", "status", "state", "expected"), NON_INVITE_CLIENT_TABLE)
def test_non_invite_client_table(
    path: list[int], status: int, state: State, expected: list[tuple[object, ...]]
) -> None:
    """Every (state, response) pair of the non-INVITE client machine over UDP."""
    request = req("OPTIONS")
    tx = ClientNonInviteTransaction(request)
    tx.start(0.0)
    for earlier in path:
        tx.receive_response(resp(request, earlier), 0.1)
    assert expected == summary(tx.receive_response(resp(request, status), 0.2))
    assert state == tx.state


@given(
    t1=st.floats(min_value=0.01, max_value=2.0),
    factor=st.integers(min_value=1, max_value=16),
)
def test_non_invite_client_intervals_never_exceed_t2(t1: float, factor: int) -> None:
    """Property: E intervals start at T1, double, never exceed T2, and F ends it at 64*T1."""
    t2 = t1 * factor
    tx = ClientNonInviteTransaction(req("OPTIONS"), timers=TimerConfig(t1=t1, t2=t2))
    tx.start(0.0)
    times = [0.0] + [t for t, _ in run_timers(tx)]
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the last is Timer F
    assert pytest.approx(t1) == gaps[0]
    assert all(g <= t2 + 1e-9 for g in gaps)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps))
    assert pytest.approx(64 * t1) == times[-1]
    assert State.TERMINATED == tx.state


# --------------------------------------------------------------------------- INVITE server


def test_invite_server_start_delivers_and_sends_100_after_200ms() -> None:
    """The INVITE goes to the TU; if the TU is silent for 200 ms a 100 Trying is sent."""
    invite = req()
    tx = ServerInviteTransaction(invite, peer=("udp", "192.0.2.4", 5060))
    assert [("deliver", "INVITE")] == summary(tx.start(0.0))
    assert State.PROCEEDING == tx.state
    assert {Timer.TRYING: 0.2} == tx.timers
    actions = tx.handle_timer(0.2)
    assert [("send", 100, False)] == summary(actions)
    sent = actions[0]
    assert isinstance(sent, Send)
    assert ("udp", "192.0.2.4", 5060) == sent.peer
    assert isinstance(sent.message, Response)
    assert sent.message.to.tag is None
    assert invite.headers.get_all("Via") == sent.message.headers.get_all("Via")
    assert tx.get_timer() is None


def test_invite_server_tu_answer_within_200ms_suppresses_100() -> None:
    """A provisional from the TU before 200 ms cancels the automatic 100 Trying."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    assert [("send", 180, False)] == summary(tx.send_response(resp(invite, 180), 0.05))
    assert tx.get_timer() is None
    assert [] == tx.send_trying(0.1)


def test_invite_server_send_trying_on_request_and_without_auto() -> None:
    """send_trying() sends 100 at once; auto_trying=False arms no timer."""
    invite = req()
    tx = ServerInviteTransaction(invite, auto_trying=False)
    tx.start(0.0)
    assert tx.get_timer() is None
    assert [("send", 100, False)] == summary(tx.send_trying(0.01))
    assert [] == tx.send_trying(0.02)


def test_invite_server_retransmission_in_proceeding_resends_last_provisional() -> None:
    """§17.2.1: a retransmitted INVITE in Proceeding gets the most recent provisional again."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    assert [("send", 100, False)] == summary(tx.receive_request(invite, 0.1))
    tx.send_response(resp(invite, 180), 0.3)
    tx.send_response(resp(invite, 183), 0.4)
    actions = tx.receive_request(invite, 0.5)
    assert [("send", 183, True)] == summary(actions)


def test_invite_server_non_2xx_timer_g_doubles_caps_at_t2_until_h() -> None:
    """Timer G resends the final at T1, 2T1, 4T1, then T2; Timer H times out at 64*T1."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    assert [("send", 486, False)] == summary(tx.send_response(resp(invite, 486), 0.1))
    assert State.COMPLETED == tx.state
    assert pytest.approx({Timer.G: 0.6, Timer.H: 32.1}) == tx.timers
    fired = run_timers(tx)
    resend = [("send", 486, True)]
    times = [0.6, 1.6, 3.6, 7.6, 11.6, 15.6, 19.6, 23.6, 27.6, 31.6]
    assert times == pytest.approx([t for t, _ in fired[:-1]])
    assert all(resend == a for _, a in fired[:-1])
    assert [("timeout", Timer.H), ("terminated",)] == fired[-1][1]
    assert pytest.approx(32.1) == fired[-1][0]


def test_invite_server_completed_resends_final_on_retransmission() -> None:
    """A retransmitted INVITE in Completed gets the final response again."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 404), 0.1)
    assert [("send", 404, True)] == summary(tx.receive_request(invite, 0.2))


def test_invite_server_ack_confirms_then_timer_i() -> None:
    """ACK in Completed → Confirmed, G and H stop, Timer I = T4 absorbs ACKs, then ends."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    final = resp(invite, 486)
    tx.send_response(final, 0.1)
    ack = build_ack(invite, final)
    assert [] == tx.receive_request(ack, 1.0)
    assert State.CONFIRMED == tx.state
    assert {Timer.I: 6.0} == tx.timers
    assert [] == tx.receive_request(ack, 2.0)
    assert [] == tx.receive_request(invite, 2.5)
    assert [(6.0, [("terminated",)])] == run_timers(tx)


def test_invite_server_reliable_no_g_and_i_zero() -> None:
    """Over TCP: no Timer G, Timer H still runs, and the ACK terminates at once (I = 0)."""
    invite = req(transport="TCP")
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    final = resp(invite, 503)
    tx.send_response(final, 0.1)
    assert pytest.approx({Timer.H: 32.1}) == tx.timers
    assert [("terminated",)] == summary(tx.receive_request(build_ack(invite, final), 0.2))


def test_invite_server_reliable_timer_h_without_ack() -> None:
    """Over TCP a missing ACK still ends in Timer H and a Timeout to the TU."""
    invite = req(transport="TLS")
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 486), 0.0)
    assert [(32.0, [("timeout", Timer.H), ("terminated",)])] == run_timers(tx)


def test_invite_server_2xx_accepted_absorbs_invite_passes_ack_and_2xx() -> None:
    """RFC 6026: after a 2xx, INVITE retransmissions are absorbed, the TU's 2xx
    retransmissions are sent, a matching ACK goes to the TU, and Timer L ends it."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    ok = resp(invite, 200)
    assert [("send", 200, False)] == summary(tx.send_response(ok, 0.1))
    assert State.ACCEPTED == tx.state
    assert pytest.approx({Timer.L: 32.1}) == tx.timers
    assert [] == tx.receive_request(invite, 0.5)
    assert [("send", 200, True)] == summary(tx.send_response(ok, 0.6))
    ack = req("ACK", cseq=314159, to_tag="a6c85cf")
    assert [("deliver", "ACK")] == summary(tx.receive_request(ack, 0.7))
    fired = run_timers(tx)
    assert [[("terminated",)]] == [a for _, a in fired]


def test_invite_server_misuse() -> None:
    """A second final, a response to another method, or a BYE fed in: TransactionError."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    with pytest.raises(TransactionError):
        tx.send_response(resp(req("BYE"), 200), 0.0)
    with pytest.raises(TransactionError):
        tx.receive_request(req("BYE"), 0.0)
    tx.send_response(resp(invite, 486), 0.1)
    with pytest.raises(TransactionError):
        tx.send_response(resp(invite, 200), 0.2)
    with pytest.raises(TransactionError):
        ServerInviteTransaction(req("OPTIONS"))


def test_invite_server_transport_error() -> None:
    """A failure to send the response terminates the transaction and tells the TU."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 486), 0.1)
    assert [("transport-error",), ("terminated",)] == summary(tx.transport_error(0.2))
    assert tx.get_timer() is None


# Table: (responses sent by the TU first, incoming request bytes, state, actions).
SERVER_INVITE_TABLE: list[tuple[list[int], bytes, State, list[tuple[object, ...]]]] = [
    ([], request_bytes("INVITE"), State.PROCEEDING, [("send", 100, False)]),
    ([180], request_bytes("INVITE"), State.PROCEEDING, [("send", 180, True)]),
    ([486], request_bytes("INVITE"), State.COMPLETED, [("send", 486, True)]),
    ([486], request_bytes("ACK", to_tag="a6c85cf"), State.CONFIRMED, []),
    ([180, 600], request_bytes("ACK", to_tag="a6c85cf"), State.CONFIRMED, []),
    ([200], request_bytes("INVITE"), State.ACCEPTED, []),
    ([200], request_bytes("ACK", to_tag="a6c85cf"), State.ACCEPTED, [("deliver", "ACK")]),
    ([], request_bytes("ACK"), State.PROCEEDING, []),
]


@pytest.mark.parametrize(("sent", "wire", "state", "expected"), SERVER_INVITE_TABLE)
def test_invite_server_table(
    sent: list[int], wire: bytes, state: State, expected: list[tuple[object, ...]]
) -> None:
    """Every (state, incoming request) pair of the INVITE server machine over UDP."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    for status in sent:
        tx.send_response(resp(invite, status), 0.05)
    incoming = parse(wire)
    assert isinstance(incoming, Request)
    assert expected == summary(tx.receive_request(incoming, 0.1))
    assert state == tx.state


# --------------------------------------------------------------------------- non-INVITE server


def test_non_invite_server_full_life_over_udp() -> None:
    """Trying absorbs, Proceeding resends the 1xx, Completed resends the final, J ends it."""
    request = req("BYE", to_tag="a6c85cf")
    tx = ServerNonInviteTransaction(request)
    assert [("deliver", "BYE")] == summary(tx.start(0.0))
    assert State.TRYING == state_of(tx)
    assert [] == tx.receive_request(request, 0.1)
    assert [("send", 100, False)] == summary(tx.send_response(resp(request, 100), 0.2))
    assert State.PROCEEDING == state_of(tx)
    assert [("send", 100, True)] == summary(tx.receive_request(request, 0.3))
    assert [("send", 200, False)] == summary(tx.send_response(resp(request, 200), 0.4))
    assert State.COMPLETED == state_of(tx)
    assert pytest.approx({Timer.J: 32.4}) == tx.timers
    assert [("send", 200, True)] == summary(tx.receive_request(request, 1.0))
    fired = run_timers(tx)
    assert [[("terminated",)]] == [a for _, a in fired]


def test_non_invite_server_reliable_j_zero() -> None:
    """Over TCP Timer J is zero: the final response ends the transaction."""
    request = req("OPTIONS", transport="TCP")
    tx = ServerNonInviteTransaction(request)
    tx.start(0.0)
    actions = tx.send_response(resp(request, 200), 0.1)
    assert [("send", 200, False), ("terminated",)] == summary(actions)


def test_non_invite_server_misuse() -> None:
    """A second final, a foreign method, or an INVITE machine's job: TransactionError."""
    request = req("OPTIONS")
    tx = ServerNonInviteTransaction(request)
    tx.start(0.0)
    tx.send_response(resp(request, 200), 0.0)
    with pytest.raises(TransactionError):
        tx.send_response(resp(request, 200), 0.1)
    with pytest.raises(TransactionError):
        tx.receive_request(req("INFO"), 0.1)
    with pytest.raises(TransactionError):
        tx.send_response(resp(req("INFO"), 200), 0.1)
    with pytest.raises(TransactionError):
        ServerNonInviteTransaction(req())


# --------------------------------------------------------------------------- keys


def test_client_key_matches_request_and_its_responses() -> None:
    """§17.1.3: a response matches by top Via branch and CSeq method."""
    invite = req()
    assert ClientKey(BRANCH, "INVITE") == client_key(invite)
    assert client_key(invite) == client_key(resp(invite, 180))
    cancel = build_cancel(invite)
    assert ClientKey(BRANCH, "CANCEL") == client_key(resp(cancel, 200))
    assert client_key(invite) != client_key(cancel)


def test_server_key_magic_cookie_ack_maps_to_invite_cancel_does_not() -> None:
    """§17.2.3: branch + sent-by + method, ACK maps to INVITE; CANCEL is its own transaction."""
    invite = req()
    expected = ServerKey(BRANCH, "pc33.atlanta.example.com:5060", "INVITE")
    assert expected == server_key(invite)
    assert expected == server_key(req("ACK", to_tag="a6c85cf"))
    cancel = build_cancel(invite)
    assert "CANCEL" == server_key(cancel).method
    assert expected == cancel_target_key(cancel)


def test_server_key_differs_by_sent_by_and_branch() -> None:
    """The same branch from another sent-by is another transaction."""
    a = req()
    b = parse(request_bytes().replace(b"pc33.atlanta.example.com:5060", b"pc34.example.com"))
    c = req(branch="z9hG4bKother")
    assert isinstance(b, Request)
    assert server_key(a) != server_key(b)
    assert server_key(a) != server_key(c)


def test_server_key_rfc2543_fallback() -> None:
    """Without the magic cookie, Request-URI, From tag, Call-ID, CSeq and top Via decide."""
    invite = req(branch=None)
    key = server_key(invite)
    assert isinstance(key, LegacyServerKey)
    assert key == server_key(req(branch=None))  # a retransmission
    assert key == server_key(req("ACK", branch=None, to_tag="a6c85cf"))  # its ACK
    assert key == cancel_target_key(build_cancel(invite))
    assert key != server_key(req(branch=None, cseq=314160))
    assert key != server_key(req(branch=None, uri="sip:carol@chicago.example.com"))
    assert isinstance(server_key(req(branch="1")), LegacyServerKey)


def test_is_reliable() -> None:
    """Only UDP is unreliable among the SIP transports."""
    assert [False, True, True, True, True] == [
        is_reliable(t) for t in ("udp", "TCP", "TLS", "SCTP", "WS")
    ]


# --------------------------------------------------------------------------- CANCEL


def test_build_cancel_follows_9_1() -> None:
    """CANCEL: same Request-URI, Call-ID, To, From, CSeq number, Route, and one Via (top)."""
    wire = request_bytes().replace(
        b"Max-Forwards", b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp\r\nMax-Forwards"
    )
    invite = parse(wire)
    assert isinstance(invite, Request)
    cancel = parse(bytes(build_cancel(invite)))
    assert isinstance(cancel, Request)
    assert ("CANCEL", invite.uri) == (cancel.method, cancel.uri)
    assert [str(invite.via[0])] == [str(v) for v in cancel.via]
    assert invite.headers.get("To") == cancel.headers.get("To")
    assert invite.headers.get("From") == cancel.headers.get("From")
    assert invite.call_id == cancel.call_id
    assert (invite.cseq.seq, "CANCEL") == (cancel.cseq.seq, cancel.cseq.method)
    assert invite.headers.get_all("Route") == cancel.headers.get_all("Route")
    with pytest.raises(TransactionError):
        build_cancel(req("ACK"))


def test_build_ack_refuses_2xx_and_non_invite() -> None:
    """The transaction ACKs only non-2xx finals of INVITEs; the 2xx ACK is the TU's."""
    invite = req()
    with pytest.raises(TransactionError):
        build_ack(invite, resp(invite, 200))
    with pytest.raises(TransactionError):
        build_ack(req("BYE"), resp(req("BYE"), 486))


def test_handle_cancel_in_proceeding_gives_200_and_487() -> None:
    """§9.2: CANCEL of a pending INVITE → 200 to the CANCEL, 487 to the INVITE, same To tag."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 180, to_tag="t1"), 0.1)
    cancel = build_cancel(invite)
    answer, actions = handle_cancel(tx, cancel, 0.5, to_tag="t1")
    assert (200, "CANCEL", "t1") == (answer.status, answer.cseq.method, answer.to.tag)
    assert [("send", 487, False)] == summary(actions)
    sent = actions[0]
    assert isinstance(sent, Send)
    assert isinstance(sent.message, Response)
    assert "t1" == sent.message.to.tag
    assert State.COMPLETED == tx.state


def test_handle_cancel_reuses_provisional_tag_when_none_given() -> None:
    """Without an explicit tag the 487 and the 200 reuse the tag of the last provisional."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 183, to_tag="early"), 0.1)
    answer, actions = handle_cancel(tx, build_cancel(invite), 0.5)
    assert "early" == answer.to.tag
    sent = actions[0]
    assert isinstance(sent, Send) and isinstance(sent.message, Response)
    assert "early" == sent.message.to.tag


def test_handle_cancel_after_final_and_without_transaction() -> None:
    """After a final the CANCEL is answered 200 with no effect; with no INVITE, 481."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 200, to_tag="done"), 0.1)
    answer, actions = handle_cancel(tx, build_cancel(invite), 0.5)
    assert (200, "done", []) == (answer.status, answer.to.tag, actions)
    assert State.ACCEPTED == tx.state
    answer, actions = handle_cancel(None, build_cancel(invite), 0.5)
    assert (481, []) == (answer.status, actions)


def test_accepted_and_confirmed_keep_no_response() -> None:
    """RFC 6026 Accepted resends nothing for Timer L's 64*T1 and Confirmed nothing for
    Timer I: neither keeps a response (only the final To tag, for a late CANCEL)."""
    invite = req()
    tx = ServerInviteTransaction(invite)
    tx.start(0.0)
    tx.send_response(resp(invite, 180, to_tag="t1"), 0.1)
    tx.send_response(resp(invite, 200, to_tag="t1"), 0.2)
    assert (State.ACCEPTED, None, None) == (tx.state, tx.final_response, tx.last_provisional)
    assert [] == summary(tx.receive_request(req(), 0.3))  # retransmission absorbed
    answer, _ = handle_cancel(tx, build_cancel(invite), 0.5)
    assert "t1" == answer.to.tag
    failed = ServerInviteTransaction(invite)
    failed.start(0.0)
    failed.send_response(resp(invite, 486, to_tag="busy"), 0.1)
    assert failed.final_response is not None  # Completed resends it (Timer G)
    failed.receive_request(req("ACK", to_tag="busy"), 0.2)
    assert (State.CONFIRMED, None) == (failed.state, failed.final_response)
    assert "busy" == handle_cancel(failed, build_cancel(invite), 0.3)[0].to.tag


# --------------------------------------------------------------------------- 2xx retransmission (UAS core)


def test_ack_wait_retransmits_2xx_until_ack() -> None:
    """§13.3.1.4: the 2xx is resent at T1, doubling to T2, until the ACK with its CSeq arrives."""
    invite = req()
    ok = resp(invite, 200)
    wait = AckWait(invite, ok, 0.0, peer="p")
    fired = run_timers_until(wait, 12.0)
    assert [0.5, 1.5, 3.5, 7.5, 11.5] == [t for t, _ in fired]
    assert all([("send", 200, True)] == a for _, a in fired)
    assert not wait.receive_ack(req("ACK", cseq=1, to_tag="a6c85cf"))  # another CSeq
    assert not wait.receive_ack(req("ACK", to_tag="other"))  # another fork's 2xx
    assert wait.receive_ack(req("ACK", to_tag="a6c85cf"))
    assert (True, None) == (wait.acked, wait.get_timer())
    assert [] == wait.handle_timer(100.0)


def test_ack_wait_gives_up_after_64_t1_even_over_tcp() -> None:
    """Without ACK the TU is told at 64*T1; 2xx are resent even over a reliable transport."""
    invite = req(transport="TCP")
    wait = AckWait(invite, resp(invite, 200), 0.0)
    fired = run_timers_until(wait, 100.0)
    assert 10 == sum(1 for _, a in fired if a == [("send", 200, True)])  # 0.5 … 31.5
    assert (32.0, [("timeout", Timer.ACK_TIMEOUT)]) == fired[-1]
    assert wait.get_timer() is None
    with pytest.raises(TransactionError):
        AckWait(invite, resp(invite, 486), 0.0)


def run_timers_until(wait: AckWait, until: float) -> list[tuple[float, list[tuple[object, ...]]]]:
    """Drive an AckWait on the fake clock from deadline to deadline."""
    fired: list[tuple[float, list[tuple[object, ...]]]] = []
    while (deadline := wait.get_timer()) is not None and deadline <= until:
        fired.append((deadline, summary(wait.handle_timer(deadline))))
    return fired


@pytest.mark.parametrize(
    "kwargs",
    [{"t1": 0.0}, {"t1": 1.0, "t2": 0.5}, {"t4": -1.0}, {"timer_d": -1.0}, {"trying_delay": -0.1}],
)
def test_timer_config_rejects_values_that_would_spin(kwargs: dict[str, float]) -> None:
    """T1 must be positive and T2 >= T1, or retransmission timers would never advance."""
    with pytest.raises(ValueError):
        TimerConfig(**kwargs)
