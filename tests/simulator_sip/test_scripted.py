"""The carrier's scripted mode (what the gateway's integration tests drive) over loopback UDP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.sip import Request, Response
from gateway.sip.digest import DigestClient
from gateway.sip.transaction import TimerConfig
from simulator.agents import Softphone
from simulator.carrier import Carrier, answer_all
from simulator.models import EventKind
from simulator.pytest_plugin import SimCard, SimKit

CALLEE = "+8613912345678"
WAIT = 10.0
SDP = b"v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


async def _until(check: Callable[[], bool]) -> None:
    """Poll until ``check()`` holds (bounded by the test timeout, not asserted on time)."""
    while not check():
        await asyncio.sleep(0.01)


async def _open(phone: Softphone, carrier: Carrier, card: SimCard) -> tuple[Response, Request]:
    """INVITE the carrier directly with ``card``'s digest credentials; the call stays up."""
    host, port = carrier.address
    uri = f"sip:{CALLEE}@{host}:{port}"
    return await asyncio.wait_for(
        phone.open_call(
            carrier.address,
            request_uri=uri,
            from_uri=f"sip:{card.username}@{host}",
            to_uri=uri,
            digest=DigestClient(card.username, password=card.password),
        ),
        WAIT,
    )


async def test_scripted_answer_records_and_sends_in_dialog_requests(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """("answer",): 200 with the fixed SDP at once; INFO and BYE from the carrier; model told."""
    carrier = await sim_kit.carrier(sim_cards, plan=answer_all, record_requests=True, sdp=SDP)
    phone = await sim_kit.softphone("c1", "x", carrier.address)
    final, invite = await _open(phone, carrier, sim_cards[0])
    assert (200, SDP) == (final.status, final.body)
    await _until(lambda: "ACK" in carrier.methods())
    assert ["INVITE", "INVITE", "ACK"] == carrier.methods()  # challenged, then authenticated
    assert [invite.call_id] == [r.call_id for r in carrier.received_invites()][1:]
    assert [invite.call_id] == carrier.answered_calls()
    assert 200 == (await carrier.in_dialog("INFO", call_id=invite.call_id)).status
    assert 200 == (await carrier.in_dialog("BYE", call_id=invite.call_id)).status
    assert (0, []) == (carrier.active_calls(), carrier.answered_calls())
    entry = carrier.invites[-1]
    assert ("scripted", "c1", 200, "local", True) == (
        entry.outcome,
        entry.card,
        entry.final,
        entry.hangup,
        entry.answered,
    )
    assert [EventKind.ACCEPTED, EventKind.CALL_ENDED] == [e.kind for e in carrier.model.events]
    assert [] == phone.outbound_calls()  # the carrier's BYE ended the phone's dialog too


async def test_ringing_call_is_answered_or_rejected_on_demand(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """("ring",) holds the call at 180 until the test answers or rejects it."""
    carrier = await sim_kit.carrier(sim_cards, plan=lambda _r: ("ring",), record_requests=True)
    phone = await sim_kit.softphone("c1", "x", carrier.address)
    first = asyncio.ensure_future(_open(phone, carrier, sim_cards[0]))
    await _until(lambda: len(carrier.ringing_calls()) == 1)
    [call_id] = carrier.ringing_calls()
    assert carrier.reject_call(call_id, 486, "Busy Here")
    assert not carrier.reject_call(call_id, 486)  # no longer ringing
    assert 486 == (await first)[0].status
    second = asyncio.ensure_future(_open(phone, carrier, sim_cards[0]))
    await _until(lambda: len(carrier.ringing_calls()) == 1)
    assert carrier.answer_call(carrier.ringing_calls()[0])
    final, invite = await second
    assert 200 == final.status
    assert 200 == (await phone.in_dialog("BYE", call_id=invite.call_id)).status
    await _until(lambda: carrier.active_calls() == 0)
    assert [486, 200] == [e.final for e in carrier.invites if e.outcome == "scripted"]


async def test_cancel_of_a_ringing_call_and_an_answer_crossing_it(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """CANCEL of ("ring",) gets 487; with ("answer-on-cancel",) the 200 crosses the CANCEL."""
    carrier = await sim_kit.carrier(sim_cards, plan=lambda _r: ("ring",), record_requests=True)
    phone = await sim_kit.softphone("c1", sim_cards[0].password, carrier.address)
    result = await asyncio.wait_for(phone.call(CALLEE, ring_timeout=1.0), WAIT)
    assert (487, True) == (result.status, result.cancelled)
    carrier.plan = lambda _r: ("answer-on-cancel",)
    result = await asyncio.wait_for(phone.call(CALLEE, ring_timeout=1.0, talk_seconds=1.0), WAIT)
    assert (200, True, "local") == (result.status, result.cancelled, result.hangup)
    await _until(lambda: carrier.active_calls() == 0)
    assert [487, 200] == [e.final for e in carrier.invites if e.outcome == "scripted"]
    assert 2 == carrier.methods().count("CANCEL")


async def test_scripted_final_with_headers(sim_kit: SimKit, sim_cards: list[SimCard]) -> None:
    """(status, reason, headers) is sent as is; the model still sees an ended, unanswered call."""
    carrier = await sim_kit.carrier(
        sim_cards, plan=lambda _r: (503, "Service Unavailable", [("Retry-After", "30")])
    )
    phone = await sim_kit.softphone("c1", sim_cards[0].password, carrier.address)
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert (503, 30) == (result.status, result.retry_after)
    assert EventKind.CALL_ENDED == carrier.model.events[-1].kind
    with pytest.raises(RuntimeError):
        carrier.methods()  # not recording: the simulator's default


async def test_scripted_plan_never_overrides_a_suspension(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """A suspended card is refused 403 whatever the script; its REGISTER is refused too."""
    carrier = await sim_kit.carrier(sim_cards, plan=answer_all)
    carrier.suspend("c1", cause="by test")
    phone = await sim_kit.softphone("c1", sim_cards[0].password, carrier.address)
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert 403 == result.status
    assert result.reason_phrase.startswith("Card Suspended")
    response = await asyncio.wait_for(phone.register(), WAIT)
    assert (403, "Card Suspended: manual (by test)") == (response.status, response.reason)
    other = await sim_kit.softphone("c2", sim_cards[1].password, carrier.address)
    assert 200 == (await asyncio.wait_for(other.register(), WAIT)).status
    assert 200 == (await asyncio.wait_for(other.call(CALLEE, talk_seconds=1.0), WAIT)).status


async def test_silent_carrier_records_and_answers_nothing(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """silent=True: an OPTIONS is recorded once (retransmissions absorbed) and times out."""
    carrier = await sim_kit.carrier(sim_cards, silent=True)
    fast = TimerConfig(t1=0.01, t2=0.04, t4=0.05, timer_d=0.05)
    phone = await sim_kit.softphone("c1", "x", carrier.address, timers=fast)
    host, port = carrier.address
    options = Request(
        "OPTIONS",
        f"sip:{host}:{port}",
        [
            ("From", f"<sip:c1@{host}>;tag=s1"),
            ("To", f"<sip:{host}>"),
            ("Call-ID", "silent-1@test"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    response = await asyncio.wait_for(phone.endpoint.request(options, carrier.address), WAIT)
    assert 408 == response.status  # Timer F: made locally, nothing came back
    assert ["OPTIONS"] == carrier.methods()
    assert carrier.datagrams_received > 1  # the retransmissions reached the socket
    assert 1 == carrier.options_received


async def test_carrier_invite_is_left_up_until_a_bye(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """Carrier.invite: a callback answered by a softphone stays up until the carrier's BYE."""
    carrier = await sim_kit.carrier(sim_cards, sdp=SDP)
    phone = await sim_kit.softphone("alice", "x", carrier.address, inbound_ring_seconds=0.0)
    final, invite = await asyncio.wait_for(
        carrier.invite(phone.address, "+8613800000001", caller=CALLEE), WAIT
    )
    assert 200 == final.status
    assert [invite.call_id] == list(carrier.dialogs())
    await _until(lambda: phone.answered_calls() == [invite.call_id])
    assert 200 == (await carrier.in_dialog("BYE", call_id=invite.call_id)).status
    await _until(lambda: len(phone.inbound_calls) == 1)
    [seen] = phone.inbound_calls
    assert (200, True, "remote") == (seen.status, seen.answered, seen.hangup)
    assert {} == carrier.dialogs()
