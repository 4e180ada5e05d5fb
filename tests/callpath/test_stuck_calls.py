"""No stuck calls: every reserved call ends by a timer when its B-leg never completes.

Issue 14 item 5. A carrier (or GSM gateway) that answers the gateway's CANCEL
with 200 and never sends the 487 for the INVITE used to leave the call
``reserved`` and the card ``in use`` for good. RFC 3261 §9.1: "If there is no
final response for the original request in 64*T1 seconds ..., the client SHOULD
then consider the original transaction cancelled". These tests drive that
carrier — :class:`NoFinalTrunk`, a raw asyncio UDP peer (the simulator carrier
always sends its 487) — with T1 = 0.05 s (64*T1 = 3.2 s), and check the card's
in-use count (the usage ledger, not the B2BUA's own view), what the agent
heard, the CDR, the log line, and that a late 2xx is ACKed and hung up.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.callpath.element import Gateway
from gateway.sip import Request, Response
from gateway.sip.message import make_response
from gateway.sip.message import parse as parse_message
from simulator.testkit import eventually
from tests.callpath.conftest import SDP_C, Agent, gateway_settings

T1 = 0.05
GIVE_UP = 64 * T1  # RFC 3261 §9.1 / Timer B: 3.2 s here
#: How late the end may come after 64*T1 (event-loop and polling slack).
SLACK = 0.6

#: What the trunk does with each new INVITE: "ring" (180, then nothing; CANCEL gets
#: 200 only), "answer" (180 + 200 with SDP), or a status code as text ("402").
TrunkPlan = Callable[[Request], str]


class NoFinalTrunk(asyncio.DatagramProtocol):
    """A trunk that rings and answers a CANCEL 200 but never sends the INVITE's 487.

    Every request is recorded with its loop arrival time. ``answer(call_id)``
    sends a (late) 200 for a rung INVITE, as a callee picking up after all.
    """

    def __init__(self, plan: TrunkPlan = lambda _r: "ring") -> None:
        self.plan = plan
        self.received: list[tuple[float, Request]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._invites: dict[str, tuple[Request, tuple[str, int], str]] = {}
        self._last: dict[str, bytes] = {}  # Call-ID → last response sent to the INVITE

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        self.address = transport.get_extra_info("sockname")[:2]
        return self.address

    def _send(self, response: Response, addr: tuple[str, int]) -> bytes:
        data = bytes(response)
        assert self.transport is not None
        self.transport.sendto(data, addr)
        return data

    def _contact(self, req: Request) -> str:
        return f"<sip:{req.to.uri.user}@{self.address[0]}:{self.address[1]}>"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if not isinstance(message, Request):
            return  # responses: this trunk sends no requests of its own
        self.received.append((asyncio.get_running_loop().time(), message))
        method, call_id = message.method, message.call_id
        if method == "INVITE" and message.to.tag is None:
            if call_id in self._invites:
                assert self.transport is not None
                if call_id in self._last:
                    self.transport.sendto(self._last[call_id], addr)  # retransmission
                return
            tag = secrets.token_hex(4)
            self._invites[call_id] = (message, addr, tag)
            action = self.plan(message)
            contact = [("Contact", self._contact(message))]
            if action in ("ring", "answer"):
                self._last[call_id] = self._send(
                    make_response(message, 180, "Ringing", to_tag=tag, headers=contact), addr
                )
                if action == "answer":
                    self.answer(call_id)
                return
            status = int(action)
            self._last[call_id] = self._send(make_response(message, status, to_tag=tag), addr)
        elif method == "CANCEL":
            # 200 for the CANCEL (§9.2) — and then, the fault: no 487 for the INVITE.
            known = self._invites.get(call_id)
            self._send(make_response(message, 200, to_tag=known[2] if known else None), addr)
        elif method == "BYE":
            self._send(make_response(message, 200), addr)

    def answer(self, call_id: str) -> None:
        """Send a 200 with SDP for the INVITE of ``call_id`` (again: a retransmission)."""
        invite, addr, tag = self._invites[call_id]
        ok = make_response(
            invite,
            200,
            "OK",
            to_tag=tag,
            headers=[("Contact", self._contact(invite)), ("Content-Type", "application/sdp")],
            body=SDP_C,
        )
        self._last[call_id] = self._send(ok, addr)

    def requests(self, method: str, call_id: str | None = None) -> list[Request]:
        """Requests of ``method`` received (for ``call_id`` when given), in order."""
        return [
            r
            for _, r in self.received
            if r.method == method and (call_id is None or r.call_id == call_id)
        ]

    def first_at(self, method: str) -> float:
        """Loop time the first request of ``method`` arrived."""
        return next(t for t, r in self.received if r.method == method)

    def invites(self) -> list[Request]:
        """Initial INVITEs, one per Call-ID."""
        return [invite for invite, _, _ in self._invites.values()]

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class StuckRig:
    """A gateway (T1 = 0.05 s; c1 and c2 allow one call at a time) on a NoFinalTrunk."""

    gateway: Gateway
    trunk: NoFinalTrunk
    alice: Agent
    bob: Agent

    def in_use(self, card: str) -> int:
        """The card's reserved calls, as the usage ledger counts them."""
        b2bua = self.gateway.b2bua
        assert b2bua is not None
        return b2bua.services.ledger.card_usage(card, time.time()).in_use

    def cdrs(self) -> list[Any]:
        store = self.gateway.store
        assert store is not None
        return store.cdrs()


@pytest.fixture
async def stuck(tmp_path: Path) -> AsyncIterator[StuckRig]:
    trunk = NoFinalTrunk()
    await trunk.start()
    settings = gateway_settings(
        trunk.address,
        tmp_path / "gw.db",
        extra={
            "sip": {"listen": ["udp:127.0.0.1:0"], "realm": "dialgate", "t1": T1, "t2": 0.2},
            "quota_profiles": {"open": {"calls_per_minute": 100000, "concurrent": 1}},
        },
    )
    gw = Gateway(settings)
    await gw.start()
    alice = Agent("alice", "s3cret", gw.address("udp"))
    bob = Agent("bob", "bobpass", gw.address("udp"))
    await alice.start()
    await bob.start()
    try:
        assert 200 == (await alice.register()).status
        assert 200 == (await bob.register()).status
        yield StuckRig(gw, trunk, alice, bob)
    finally:
        await alice.close()
        await bob.close()
        await gw.close()
        await trunk.close()


async def _freed_after(rig: StuckRig, card: str, since: float) -> float:
    """Seconds from ``since`` (loop time) until the card's in-use count is 0."""
    loop = asyncio.get_running_loop()
    await eventually(lambda: rig.in_use(card) == 0, GIVE_UP + 5)
    return loop.time() - since


async def test_cancel_answered_200_without_487_frees_the_card_within_64_t1(
    stuck: StuckRig,
) -> None:
    """The agent's CANCEL: 487 at once; the card stays reserved until 64*T1, then is free."""
    with structlog.testing.capture_logs() as logs:
        resp, invite = await stuck.alice.call("13912345678", cancel_after=0.05)
        assert 487 == resp.status  # the agent is not kept waiting for the carrier
        await eventually(lambda: bool(stuck.trunk.requests("CANCEL")))
        cancel_at = stuck.trunk.first_at("CANCEL")
        await asyncio.sleep(GIVE_UP / 3)
        # Still waiting for the carrier's 487, as §9.1 says: the slot is honestly busy.
        assert 1 == stuck.in_use("c1")
        freed = await _freed_after(stuck, "c1", cancel_at)
    assert GIVE_UP * 0.9 <= freed <= GIVE_UP + SLACK, freed
    await eventually(lambda: len(stuck.cdrs()) == 1)
    [cdr] = stuck.cdrs()
    assert ("cancelled", 487, ("c1",)) == (str(cdr.outcome), cdr.final_code, cdr.cards)
    assert invite.call_id == cdr.call_id
    assert {} == stuck.gateway.b2bua.calls  # type: ignore[union-attr]
    [b_invite] = stuck.trunk.invites()
    # The SIP layer gave the INVITE transaction up too (§9.1): nothing is left of it.
    endpoint = stuck.gateway.endpoint
    await eventually(
        lambda: (
            not any(
                h.request.method == "INVITE" and h.request.call_id == b_invite.call_id
                for h in endpoint._clients.values()  # type: ignore[union-attr]
            )
        ),
        SLACK + 1,
    )
    [line] = [e for e in logs if e["event"] == "call.cancel_unanswered"]
    assert (invite.call_id, b_invite.call_id, "agent-cancel", "c1") == (
        line["call_id"],
        line["b_call_id"],
        line["why"],
        line["card"],
    )
    # With concurrent = 1 the card takes the next call.
    stuck.trunk.plan = lambda _r: "answer"
    resp, second = await stuck.alice.call("13912345679")
    assert 200 == resp.status
    assert 200 == (await stuck.alice.send_in_dialog(second.call_id, "BYE")).status
    assert ["+8613800000001"] * 2 == [r.from_.uri.user for r in stuck.trunk.invites()]


async def test_late_2xx_after_giving_up_is_acked_and_hung_up_once(stuck: StuckRig) -> None:
    """The callee picks up after the gateway gave up: ACK + one BYE to the carrier, nothing to the agent."""
    resp, _ = await stuck.alice.call("13912345678", cancel_after=0.05)
    assert 487 == resp.status
    await eventually(lambda: bool(stuck.trunk.requests("CANCEL")))
    await _freed_after(stuck, "c1", stuck.trunk.first_at("CANCEL"))
    [b_invite] = stuck.trunk.invites()
    agent_saw = len(stuck.alice.requests)
    stuck.trunk.answer(b_invite.call_id)
    await eventually(lambda: bool(stuck.trunk.requests("BYE", b_invite.call_id)))
    stuck.trunk.answer(b_invite.call_id)  # a retransmitted 2xx: ACKed again, no second BYE
    await eventually(lambda: len(stuck.trunk.requests("ACK", b_invite.call_id)) >= 2)
    await asyncio.sleep(0.3)
    assert 1 == len(stuck.trunk.requests("BYE", b_invite.call_id))
    assert agent_saw == len(stuck.alice.requests)
    assert 0 == stuck.in_use("c1")
    assert ["cancelled"] == [str(c.outcome) for c in stuck.cdrs()]


async def test_timer_c_cancel_without_487_ends_with_408(stuck: StuckRig) -> None:
    """Ringing forever: Timer C CANCELs; no 487 comes; 64*T1 later the agent gets 408."""
    b2bua = stuck.gateway.b2bua
    assert b2bua is not None
    b2bua.no_answer_timeout = 0.3
    resp, invite = await stuck.alice.call("13912345678")
    assert 408 == resp.status
    cancel_at = stuck.trunk.first_at("CANCEL")
    assert 0 == stuck.in_use("c1")
    loop = asyncio.get_running_loop()
    assert GIVE_UP * 0.9 <= loop.time() - cancel_at <= GIVE_UP + SLACK
    await eventually(lambda: len(stuck.cdrs()) == 1)
    [cdr] = stuck.cdrs()
    assert (invite.call_id, "no-answer", 408) == (cdr.call_id, str(cdr.outcome), cdr.final_code)


async def test_failover_leg_that_rings_and_never_ends(stuck: StuckRig) -> None:
    """c1 dead (402) → c2 rings forever → Timer C → CANCEL without 487: both cards freed."""
    b2bua = stuck.gateway.b2bua
    assert b2bua is not None
    b2bua.no_answer_timeout = 0.3
    plans = iter(["402", "ring"])
    stuck.trunk.plan = lambda _r: next(plans)
    resp, _ = await stuck.bob.call("13912345678")
    assert 408 == resp.status
    assert ["+8613800000001", "+8613800000002"] == [r.from_.uri.user for r in stuck.trunk.invites()]
    assert (0, 0) == (stuck.in_use("c1"), stuck.in_use("c2"))
    await eventually(lambda: len(stuck.cdrs()) == 1)
    [cdr] = stuck.cdrs()
    assert (("c1", "c2"), 1, "no-answer") == (cdr.cards, cdr.failovers, str(cdr.outcome))


async def test_answered_call_without_ack_is_hung_up_and_frees_the_card(stuck: StuckRig) -> None:
    """The agent never ACKs the 2xx: after 64*T1 both legs get a BYE and the slot is free."""
    stuck.trunk.plan = lambda _r: "answer"
    agent = stuck.alice
    assert agent.endpoint is not None
    agent.endpoint.send_stateless = lambda *a, **k: True  # type: ignore[method-assign]
    resp, invite = await agent.call("13912345678")
    assert 200 == resp.status
    await eventually(lambda: bool(stuck.trunk.requests("BYE")), GIVE_UP + 5)
    await eventually(lambda: stuck.in_use("c1") == 0)
    await eventually(lambda: len(stuck.cdrs()) == 1)
    [cdr] = stuck.cdrs()
    assert (invite.call_id, "answered") == (cdr.call_id, str(cdr.outcome))
