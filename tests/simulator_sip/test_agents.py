"""Softphones and the dialer against small SIP peers stood up in the test (registrar, stub gateway)."""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.sip.digest import Algorithm, DigestServer, Outcome, ha1
from gateway.transport.endpoint import ServerRequest
from simulator.agents import work_leads
from simulator.pytest_plugin import SimKit
from simulator.sipkit import InboundCall, UserAgent, new_tag

WAIT = 10.0
REALM = "test.sim"
PASSWORDS = {"alice": "alice-pw", "dialer-1": "dialer-pw"}


def _lookup(username: str, algorithm: Algorithm) -> str | None:
    password = PASSWORDS.get(username)
    return None if password is None else ha1(username, REALM, password, algorithm)


class Registrar(UserAgent):
    """A registrar that grants ``grant`` seconds to digest-authenticated REGISTERs."""

    def __init__(self, grant: int, min_expires: int = 0) -> None:
        super().__init__("registrar")
        self.min_expires = min_expires
        self.digest = DigestServer(key=b"registrar-test-key-0123456789", realm=REALM)
        self.grant = grant
        self.accepted: list[tuple[str, str, int, int]] = []  # user, Call-ID, CSeq, expires

    def on_register(self, req: ServerRequest) -> None:
        """Challenge with 401, then record the binding and answer 200 with the granted expiry."""
        request = req.request
        now = self.endpoint.now()
        verdict = self.digest.verify(
            "REGISTER", request.headers.get_all("Authorization") or None, _lookup, now
        )
        if verdict.outcome is not Outcome.OK:
            answer = self.digest.answer(verdict, now)
            assert answer is not None
            req.respond(answer.status, answer.reason, to_tag=new_tag(), headers=answer.headers)
            return
        asked = request.expires if request.expires is not None else 3600
        if 0 < asked < self.min_expires:
            req.respond(423, to_tag=new_tag(), headers=[("Min-Expires", str(self.min_expires))])
            return
        granted = min(asked, self.grant)
        self.accepted.append((verdict.username or "", request.call_id, request.cseq.seq, granted))
        contact = request.contact[0].uri
        req.respond(200, to_tag=new_tag(), headers=[("Contact", f"<{contact}>;expires={granted}")])


class StubGateway(UserAgent):
    """A gateway stand-in: 407 challenge, then answers by callee number, as dialgate's wire contract.

    ``+8610…`` → 403 Reason ``dnc``; ``+8620…`` → 503 + Retry-After 120, Reason
    ``no-card-available``; ``+8648…`` → 486; anything else rings and answers.
    """

    def __init__(self) -> None:
        super().__init__("stub-gateway")
        self.digest = DigestServer(key=b"stub-gateway-test-key-0123456", realm=REALM)
        self.invites: list[tuple[str, str | None, str | None]] = []  # callee, user, campaign
        self.calls: list[InboundCall] = []

    def on_invite(self, req: ServerRequest) -> None:
        """Challenge, then answer per the callee number."""
        request = req.request
        now = self.endpoint.now()
        verdict = self.digest.verify(
            "INVITE",
            request.headers.get_all("Proxy-Authorization") or None,
            _lookup,
            now,
            body=request.body,
        )
        if verdict.outcome is not Outcome.OK:
            answer = self.digest.answer(verdict, now, proxy=True)
            assert answer is not None
            req.respond(answer.status, answer.reason, to_tag=new_tag(), headers=answer.headers)
            return
        callee = request.uri.user or ""
        self.invites.append((callee, verdict.username, request.headers.get("X-Campaign")))
        call = self.accept_inbound(req)
        if callee.startswith("+8610"):
            self.finish_inbound(call, 403, None, [("Reason", 'SIP;cause=403;text="dnc"')])
        elif callee.startswith("+8620"):
            self.finish_inbound(
                call,
                503,
                None,
                [("Retry-After", "120"), ("Reason", 'SIP;cause=503;text="no-card-available"')],
            )
        elif callee.startswith("+8648"):
            self.finish_inbound(call, 486)
        else:
            self.calls.append(call)
            self.ring(call)
            call.timers.append(self.later(1.0, lambda: self._pick_up(call)))

    def _pick_up(self, call: InboundCall) -> None:
        self.answer(call)


async def test_softphone_registers_with_digest_and_refreshes(sim_kit: SimKit) -> None:
    """REGISTER answers the 401; the binding is refreshed before it expires (same Call-ID, CSeq up)."""
    registrar = Registrar(grant=1)
    await registrar.start()
    try:
        phone = await sim_kit.softphone("alice", "alice-pw", registrar.address)
        response = await asyncio.wait_for(phone.register(expires=300), WAIT)
        assert 200 == response.status
        assert phone.registered
        phone.keep_registered()
        for _ in range(300):
            if len(registrar.accepted) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(registrar.accepted) >= 3
        users, call_ids, cseqs, grants = zip(*registrar.accepted, strict=True)
        assert {"alice"} == set(users)
        assert 1 == len(set(call_ids))
        assert list(cseqs) == sorted(set(cseqs))
        assert {1} == set(grants)
    finally:
        await registrar.close()


async def test_refresh_can_start_from_the_current_binding(sim_kit: SimKit) -> None:
    """``keep_registered(immediately=False)`` waits for the binding to age before refreshing."""
    registrar = Registrar(grant=1)
    await registrar.start()
    try:
        phone = await sim_kit.softphone("alice", "alice-pw", registrar.address)
        assert 200 == (await asyncio.wait_for(phone.register(), WAIT)).status
        phone.keep_registered(immediately=False)
        await asyncio.sleep(0.3)
        assert 1 == len(registrar.accepted)  # no refresh yet: 80 % of 1 s has not passed
        for _ in range(200):
            if len(registrar.accepted) >= 2:
                break
            await asyncio.sleep(0.01)
        assert 2 <= len(registrar.accepted)
    finally:
        await registrar.close()


async def test_business_expiry_follows_the_scaled_clock(sim_kit: SimKit) -> None:
    """Against a registrar on the business clock, 120 s granted last 120 / speed real seconds."""
    registrar = Registrar(grant=120)
    await registrar.start()
    try:
        real = await sim_kit.softphone("alice", "alice-pw", registrar.address)
        scaled = await sim_kit.softphone(
            "alice", "alice-pw", registrar.address, business_expiry=True
        )
        for phone in (real, scaled):
            assert 200 == (await asyncio.wait_for(phone.register(), WAIT)).status
        now = scaled.endpoint.loop.time()
        assert real.registered_until is not None and scaled.registered_until is not None
        assert 119 < real.registered_until - now <= 120
        assert 0.5 < scaled.registered_until - now <= 0.6  # the kit's clock runs 200x
    finally:
        await registrar.close()


async def test_softphone_retries_with_min_expires_after_423(sim_kit: SimKit) -> None:
    """A 423 Interval Too Brief is retried with the registrar's Min-Expires (RFC 3261 §10.2.8)."""
    registrar = Registrar(grant=3600, min_expires=120)
    await registrar.start()
    try:
        phone = await sim_kit.softphone("alice", "alice-pw", registrar.address)
        response = await asyncio.wait_for(phone.register(expires=30), WAIT)
        assert 200 == response.status
        assert [401, 423, 200] == phone.register_responses
        assert [120] == [granted for *_, granted in registrar.accepted]
        assert phone.registered
    finally:
        await registrar.close()


async def test_softphone_with_wrong_password_is_not_registered(sim_kit: SimKit) -> None:
    """A rejected REGISTER ends on the second 401 without looping; the phone stays unregistered."""
    registrar = Registrar(grant=60)
    await registrar.start()
    try:
        phone = await sim_kit.softphone("alice", "nope", registrar.address)
        response = await asyncio.wait_for(phone.register(), WAIT)
        assert 401 == response.status
        assert [401, 401] == phone.register_responses
        assert not phone.registered
        assert [] == registrar.accepted
    finally:
        await registrar.close()


async def test_softphone_records_reason_and_retry_after(sim_kit: SimKit) -> None:
    """Policy refusals are recorded with their Reason text and Retry-After, after the 407 answer."""
    stub = StubGateway()
    await stub.start()
    try:
        phone = await sim_kit.softphone("alice", "alice-pw", stub.address, campaign="spring")
        dnc = await asyncio.wait_for(phone.call("+8610555000111"), WAIT)
        full = await asyncio.wait_for(phone.call("+8620555000111"), WAIT)
        assert (403, "dnc", None, 1) == (
            dnc.status,
            dnc.reason_text,
            dnc.retry_after,
            dnc.challenges,
        )
        assert (503, "no-card-available", 120) == (
            full.status,
            full.reason_text,
            full.retry_after,
        )
        assert [dnc, full] == phone.calls
        assert [("+8610555000111", "alice", "spring"), ("+8620555000111", "alice", "spring")] == (
            stub.invites
        )
    finally:
        await stub.close()


async def test_softphone_call_acks_the_2xx_and_hangs_up_with_bye(sim_kit: SimKit) -> None:
    """An answered call is ACKed (the UAS stops retransmitting) and ended by the caller's BYE."""
    stub = StubGateway()
    await stub.start()
    try:
        phone = await sim_kit.softphone("alice", "alice-pw", stub.address)
        result = await asyncio.wait_for(phone.call("+8630555000111", talk_seconds=30.0), WAIT)
        assert (200, True, "local", 200) == (
            result.status,
            result.answered,
            result.hangup,
            result.bye_status,
        )
        [call] = stub.calls
        assert call.acks is not None and call.acks.acked
        assert "remote" == call.hangup  # the far end saw our BYE
        assert 20.0 < result.talk_seconds < 90.0
    finally:
        await stub.close()


async def test_dialer_works_leads_over_channels_with_campaign_header(sim_kit: SimKit) -> None:
    """The dialer dials every lead exactly once over two channels, each INVITE with X-Campaign."""
    stub = StubGateway()
    await stub.start()
    try:
        dialer = await sim_kit.dialer("dialer-1", "dialer-pw", stub.address, campaign="promo")
        leads = [f"+864855500{n:04d}" for n in range(6)]
        results = await asyncio.wait_for(
            dialer.run(leads, channels=2, calls_per_minute=600.0), WAIT
        )
        assert sorted(leads) == sorted(r.callee for r in results)
        assert {486} == {r.status for r in results}
        assert sorted(leads) == sorted(c for c, _, _ in stub.invites)
        assert {("dialer-1", "promo")} == {(u, c) for _, u, c in stub.invites}
    finally:
        await stub.close()


async def test_work_leads_requeues_when_no_card_is_free(sim_kit: SimKit) -> None:
    """A 503 no-card-available puts the lead back (until ``stop``); other refusals consume it."""
    stub = StubGateway()
    await stub.start()
    try:
        phone = await sim_kit.softphone("alice", "alice-pw", stub.address)
        leads: deque[str] = deque(["+8620555000111", "+8610555000222"])
        seen: list[str] = []
        stop = asyncio.Event()

        def requeue(lead: str, result: object) -> float | None:
            seen.append(lead)
            if len(seen) >= 3:
                stop.set()
            return 1.0 if lead.startswith("+8620") else None

        await asyncio.wait_for(
            work_leads(phone, leads, requeue=requeue, stop=stop, ring_timeout=None), WAIT
        )
        assert ["+8620555000111"] * 3 == seen
        assert ["+8620555000111", "+8610555000222"] == list(leads)
    finally:
        await stub.close()
