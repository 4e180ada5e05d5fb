"""The simulated carrier over real loopback UDP: digest, the model's decisions, call play-out."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gateway.sip import Request
from gateway.sip.transaction import TimerConfig
from simulator.agents import Softphone
from simulator.answer import AnswerProfile
from simulator.antifraud import AntiFraudThresholds
from simulator.carrier import Carrier
from simulator.models import CarrierConfig, EventKind, MaintenanceWindow
from simulator.pytest_plugin import SimCard, SimKit, always_answer

CALLEE = "+8613912345678"
WAIT = 10.0


def _only(outcome: str) -> AnswerProfile:
    probs = {"answer": 0.0, "busy": 0.0, "no_answer": 0.0, "decline": 0.0}
    probs[outcome] = 1.0
    return AnswerProfile(
        **probs,
        ring_min=2.0,
        ring_max=2.0,
        busy_ring=0.5,
        no_answer_seconds=5.0,
        talk_mean=10.0,
        talk_sigma=0.0,
        talk_min=10.0,
        talk_max=10.0,
    )


async def _phone(
    kit: SimKit, carrier: Carrier, card: SimCard, password: str | None = None
) -> Softphone:
    """A softphone that dials the carrier directly with a card's credentials."""
    return await kit.softphone(card.username, password or card.password, carrier.address)


async def _settle(carrier: Carrier) -> None:
    for _ in range(100):
        if carrier.active_calls() == 0:
            return
        await asyncio.sleep(0.02)


async def test_unauthenticated_invite_is_challenged_and_model_sees_nothing(
    sim_kit: SimKit, carrier: Carrier
) -> None:
    """An INVITE without credentials gets 401 with a digest challenge; the model is not asked."""
    phone = await sim_kit.softphone("nobody", "x", carrier.address)
    response = await asyncio.wait_for(
        phone.endpoint.request(
            Request(
                "INVITE",
                f"sip:{CALLEE}@127.0.0.1",
                [
                    ("From", "<sip:c1@127.0.0.1>;tag=t1"),
                    ("To", f"<sip:{CALLEE}@127.0.0.1>"),
                    ("Call-ID", "unauth-1@test"),
                    ("CSeq", "1 INVITE"),
                    ("Contact", f"<{phone.contact()}>"),
                ],
            ),
            carrier.address,
        ),
        WAIT,
    )
    assert 401 == response.status
    assert (response.headers.get("WWW-Authenticate") or "").startswith("Digest ")
    assert ["challenged"] == [e.outcome for e in carrier.invites]
    assert [] == carrier.dialled()
    assert [] == carrier.model.events


async def test_proxy_challenge_when_configured(sim_kit: SimKit, sim_cards: list[SimCard]) -> None:
    """With ``auth=407`` the carrier challenges with Proxy-Authenticate and the UA answers it."""
    carrier = await sim_kit.carrier(sim_cards, auth=407)
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE, talk_seconds=None), WAIT)
    assert 200 == result.status
    assert 1 == result.challenges
    assert [407, 200] == [e.decided for e in carrier.invites]


async def test_wrong_password_gets_the_challenge_again(
    sim_kit: SimKit, carrier: Carrier, sim_cards: list[SimCard]
) -> None:
    """Bad credentials are challenged again and the UA stops: final 401, no call reaches the model."""
    phone = await _phone(sim_kit, carrier, sim_cards[0], password="wrong")
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert 401 == result.status
    assert [] == carrier.dialled()
    assert [] == carrier.callees_reached()


async def test_answered_call_callee_hangs_up_after_talk_time(
    sim_kit: SimKit, carrier: Carrier, sim_cards: list[SimCard]
) -> None:
    """180, 200 with SDP, ACK; the callee sends BYE after the plan's talk time; the model records it."""
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE, talk_seconds=None), WAIT)
    await _settle(carrier)
    assert 200 == result.status
    assert 180 in result.provisional
    assert result.answered
    assert "remote" == result.hangup
    assert 5.0 < result.talk_seconds < 30.0  # plan: 10 business seconds
    entry = carrier.invites[-1]
    assert ("c1", "answer", 200, True, "local") == (
        entry.card,
        entry.outcome,
        entry.final,
        entry.answered,
        entry.hangup,
    )
    assert 10.0 == entry.talk_seconds
    kinds = [e.kind for e in carrier.model.events]
    assert [EventKind.ACCEPTED, EventKind.CALL_ENDED] == kinds
    call = carrier.invites[-1]
    assert call.as_dict()["callee"] == "+86139****5678"


async def test_caller_hangs_up_first(
    sim_kit: SimKit, sim_cards: list[SimCard], sim_clock: object
) -> None:
    """The caller's BYE gets 200; the carrier records the shorter talk time and never sends BYE."""
    carrier = await sim_kit.carrier(sim_cards, answer=always_answer(ring=1.0, talk=600.0))
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE, talk_seconds=20.0), WAIT)
    await _settle(carrier)
    assert (200, "local", 200) == (result.status, result.hangup, result.bye_status)
    entry = carrier.invites[-1]
    assert "remote" == entry.hangup
    assert 10.0 < entry.talk_seconds < 120.0


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("busy", 486), ("decline", 603), ("no_answer", 480)],
)
async def test_callee_outcomes_per_plan(
    sim_kit: SimKit, sim_cards: list[SimCard], outcome: str, status: int
) -> None:
    """Busy, decline and no-answer plans end the INVITE with 486, 603 and 480."""
    carrier = await sim_kit.carrier(sim_cards, answer=_only(outcome))
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    await _settle(carrier)
    assert status == result.status
    assert not result.answered
    assert (outcome, status) == (carrier.invites[-1].outcome, carrier.invites[-1].final)
    ended = [e for e in carrier.model.events if e.kind is EventKind.CALL_ENDED]
    assert 1 == len(ended)
    assert ended[0].status is None  # not answered


async def test_cancel_during_ringing_gets_487(sim_kit: SimKit, sim_cards: list[SimCard]) -> None:
    """A ring timeout CANCELs the INVITE: 200 to the CANCEL, 487 to the INVITE, call ended unanswered."""
    carrier = await sim_kit.carrier(sim_cards, answer=always_answer(ring=120.0))
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE, ring_timeout=10.0), WAIT)
    await _settle(carrier)
    assert (487, True, False) == (result.status, result.cancelled, result.answered)
    entry = carrier.invites[-1]
    assert (200, 487, False) == (entry.decided, entry.final, entry.answered)
    assert EventKind.CALL_ENDED == carrier.model.events[-1].kind


async def test_suspension_once_threshold_crossed_and_it_sticks(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """Calls beyond the carrier's hourly threshold get 403 "Card Suspended" + Warning, then stay 403."""
    carrier = await sim_kit.carrier(
        sim_cards,
        answer=_only("busy"),
        thresholds=AntiFraudThresholds(calls_per_hour=2),
    )
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    statuses = []
    for n in range(4):
        result = await asyncio.wait_for(phone.call(f"+861391234567{n}"), WAIT)
        statuses.append(result.status)
    assert [486, 486, 403, 403] == statuses
    last = phone.calls[-1]
    assert last.reason_phrase.startswith("Card Suspended: abnormal-use")
    assert last.warning is not None and "suspended" in last.warning
    assert carrier.model.suspension("c1") is not None
    assert ["+8613912345670", "+8613912345671"] == carrier.callees_reached()
    # The other card is untouched.
    other = await _phone(sim_kit, carrier, sim_cards[1])
    assert 486 == (await asyncio.wait_for(other.call("+8613912345679"), WAIT)).status


async def test_arrears_answer_402(sim_kit: SimKit) -> None:
    """A card with no balance gets 402 Payment Required and no callee is reached."""
    card = SimCard("c9", "+8613800000009", "c9", "pw9", balance=0.0)
    carrier = await sim_kit.carrier([card])
    phone = await _phone(sim_kit, carrier, card)
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert 402 == result.status
    assert [] == carrier.callees_reached()
    assert "rejected" == carrier.invites[-1].outcome


async def test_maintenance_answers_503_with_retry_after(
    sim_kit: SimKit, sim_cards: list[SimCard], sim_clock: object
) -> None:
    """Inside a maintenance window the carrier answers 503 + Retry-After (seconds to its end)."""
    now = sim_kit.clock.now()
    config = CarrierConfig(
        timezone="Asia/Shanghai",
        answer=always_answer(),
        maintenance=(MaintenanceWindow(now - 60, now + 3600),),
    )
    carrier = await sim_kit.carrier(sim_cards, config=config)
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert 503 == result.status
    assert result.retry_after is not None and 3000 < result.retry_after <= 3600
    assert carrier.invites[-1].retry_after == result.retry_after


async def test_reinvite_and_options(sim_kit: SimKit, sim_cards: list[SimCard]) -> None:
    """A re-INVITE in the call gets 200 with the same SDP; OPTIONS pings get 200 and are counted."""
    carrier = await sim_kit.carrier(sim_cards, answer=always_answer(ring=1.0, talk=400.0))
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    task = asyncio.ensure_future(phone.call(CALLEE, talk_seconds=200.0))
    for _ in range(200):
        if phone.outbound_calls():
            break
        await asyncio.sleep(0.01)
    first_sdp = next(iter(carrier.inbound.values())).sdp
    response = await asyncio.wait_for(phone.in_dialog("INVITE", body=b"v=0\r\n"), WAIT)
    assert 200 == response.status
    assert first_sdp == response.body
    options = Request(
        "OPTIONS",
        "sip:carrier@127.0.0.1",
        [
            ("From", "<sip:probe@127.0.0.1>;tag=p1"),
            ("To", "<sip:carrier@127.0.0.1>"),
            ("Call-ID", "ping-1@test"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    pong = await asyncio.wait_for(phone.endpoint.request(options, carrier.address), WAIT)
    assert 200 == pong.status
    assert 1 == carrier.options_received
    result = await asyncio.wait_for(task, WAIT)
    assert (200, "local") == (result.status, result.hangup)


async def test_register_requirement(sim_kit: SimKit, sim_cards: list[SimCard]) -> None:
    """With ``require_register`` an INVITE before REGISTER gets 403; after a digest REGISTER it passes."""
    carrier = await sim_kit.carrier(sim_cards, require_register=True, answer=_only("busy"))
    phone = await sim_kit.softphone("c1", "card-secret-1", carrier.address, domain="carrier.sim")
    before = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert 403 == before.status
    assert "not-registered" == carrier.invites[-1].outcome
    registered = await asyncio.wait_for(phone.register(expires=120), WAIT)
    assert 200 == registered.status
    assert [401, 200] == phone.register_responses
    assert carrier.is_registered("c1")
    assert not carrier.is_registered("c2")
    after = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    assert 486 == after.status
    await asyncio.wait_for(phone.unregister(), WAIT)
    assert not carrier.is_registered("c1")


async def test_invite_log_shows_each_callee_once(sim_kit: SimKit, sim_cards: list[SimCard]) -> None:
    """The INVITE log lets a test check that no callee was dialled twice (and spot a re-dial)."""
    carrier = await sim_kit.carrier(sim_cards, answer=_only("busy"))
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    for number in ("+8613911110001", "+8613911110002", "+8613911110001"):
        await asyncio.wait_for(phone.call(number), WAIT)
    reached = carrier.callees_reached()
    assert 3 == len(reached)
    assert {"+8613911110001"} == {n for n in reached if reached.count(n) > 1}
    assert all(e.card == "c1" for e in carrier.dialled())
    assert 3 == len(carrier.invites_for("c1"))


async def test_inbound_call_from_carrier_to_softphone(sim_kit: SimKit, carrier: Carrier) -> None:
    """The carrier calls a card's number back; the softphone rings, answers and gets the BYE."""
    agent = await sim_kit.softphone("alice", "pw", carrier.address, inbound_ring_seconds=2.0)
    result = await asyncio.wait_for(
        carrier.call(agent.address, "+8613800000001", talk_seconds=20.0), WAIT
    )
    assert (200, "local") == (result.status, result.hangup)
    for _ in range(100):
        if agent.inbound_calls:
            break
        await asyncio.sleep(0.01)
    [inbound] = agent.inbound_calls
    assert (200, True, "remote") == (inbound.status, inbound.answered, inbound.hangup)
    assert "+8613800000001" == inbound.callee


def _destination(share: str) -> AnswerProfile:
    """Every destination answers one way (``share`` = 1); ring 2 s, give up after 5 s."""
    return replace(_only("answer"), **{share: 1.0})


@pytest.mark.parametrize(
    ("share", "status", "phrase", "rings", "outcome"),
    [
        ("refuse_403_share", 403, "Forbidden", False, "refuse_403"),
        ("ring_then_408_share", 408, "Request Timeout", True, "ring_then_408"),
        ("ring_then_503_share", 503, "Service Unavailable", True, "ring_then_503"),
    ],
)
async def test_destination_level_answers(
    sim_kit: SimKit,
    sim_cards: list[SimCard],
    share: str,
    status: int,
    phrase: str,
    rings: bool,
    outcome: str,
) -> None:
    """Plain 403 at once (no 180, no Warning, nothing about the card); 180 then 408 / 503."""
    carrier = await sim_kit.carrier(sim_cards, answer=_destination(share))
    phone = await _phone(sim_kit, carrier, sim_cards[0])
    result = await asyncio.wait_for(phone.call(CALLEE), WAIT)
    await _settle(carrier)
    assert (status, phrase, None) == (result.status, result.reason_phrase, result.warning)
    assert (180 in result.provisional) is rings
    entry = carrier.invites[-1]
    assert (outcome, status, False) == (entry.outcome, entry.final, entry.answered)
    assert entry.reached_callee
    assert carrier.model.suspension("c1") is None
    kinds = [e.kind for e in carrier.model.events]
    assert [EventKind.ACCEPTED, EventKind.CALL_ENDED] == kinds


async def test_silent_destination_sends_nothing_not_even_100(
    sim_kit: SimKit, sim_cards: list[SimCard]
) -> None:
    """A silent destination: no response at all, retransmissions swallowed; the caller's own
    Timer B (64 x T1) ends the call with 408. The model counts one unanswered call."""
    carrier = await sim_kit.carrier(
        sim_cards, answer=_destination("silent_share"), record_requests=True
    )
    phone = await sim_kit.softphone(
        sim_cards[0].username,
        sim_cards[0].password,
        carrier.address,
        timers=TimerConfig(t1=0.02),
    )
    sent_before = carrier.transport.stats.sent
    result = await asyncio.wait_for(phone.call(CALLEE, ring_timeout=None), WAIT)
    assert 408 == result.status
    assert [] == result.provisional
    entry = carrier.invites[-1]
    assert ("silent", 0, None) == (entry.outcome, entry.decided, entry.final)
    # The challenge (401) is the only thing the carrier ever sent; the INVITE with
    # credentials came several times (Timer A) and got nothing.
    assert 1 == carrier.transport.stats.sent - sent_before
    assert len([r for r in carrier.received_invites() if r.headers.get("Authorization")]) > 2
    assert [EventKind.ACCEPTED, EventKind.CALL_ENDED] == [e.kind for e in carrier.model.events]
    assert 0 == carrier.active_calls()
    # The next call from the same card is decided afresh (and is silent again).
    again = await asyncio.wait_for(phone.call(CALLEE, ring_timeout=None), WAIT)
    assert 408 == again.status and [] == again.provisional
    assert ["silent", "silent"] == [e.outcome for e in carrier.dialled()]
