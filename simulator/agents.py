"""Simulated call-center callers: softphone agents and a predictive dialer, as asyncio UACs.

* :class:`Softphone` — an agent's phone: REGISTERs with digest (answers the
  401 through :class:`~gateway.sip.digest.DigestClient`), re-registers before
  the binding expires, places calls through the gateway (INVITE with an SDP
  offer, answers a 407 with credentials, CANCEL after a ring timeout, ACK of
  the 2xx via the dialog, BYE after a talk time or waits for the callee's
  BYE), answers inbound calls (180, then 200 after a ring time, then waits for
  BYE or hangs up after a talk time) and records every call as a
  :class:`~simulator.sipkit.CallResult` (final status, Reason text such as
  ``dnc`` or ``no-card-available``, Retry-After, timings).
* :class:`Dialer` — a trusted peer: the same UAC without REGISTER,
  authenticating with digest when challenged, that sets the campaign header
  (default ``X-Campaign``) and works a lead list over several channels with
  :meth:`Dialer.run`.

:func:`work_leads` is the pacing loop both use: take the next lead, call,
wait, repeat, until the leads run out or ``stop`` is set.

Durations given to these classes (ring timeout, talk, pacing gaps) are
business seconds: real waits of ``clock.real_delay`` on a scaled clock, events
of an :class:`~simulator.clock.EventClock` otherwise; SIP timers and
re-registration stay real. This module must never decide policy (the gateway does), never
log a password and never log an unmasked callee number.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog

from gateway.sip import Request, Response
from gateway.sip.digest import DigestClient
from gateway.sip.transaction import TimerConfig
from gateway.transport import Address
from gateway.transport.endpoint import ServerRequest
from simulator.clock import BusinessClock, business_sleep, business_wait, is_event_clock
from simulator.sipkit import CallResult, InboundCall, UserAgent, new_call_id, new_tag

__all__ = ["Dialer", "Softphone", "TalkTime", "work_leads"]

log = structlog.get_logger("simulator.agents")

#: Talk time: fixed business seconds, None (wait for the callee's BYE), or a callable.
TalkTime = float | None | Callable[[], float | None]


def _hostport(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _talk(value: TalkTime) -> float | None:
    return value() if callable(value) else value


class _Caller(UserAgent):
    """What softphones and dialers share: the gateway address, the password, call records."""

    def __init__(
        self,
        name: str,
        password: str,
        gateway: Address,
        *,
        clock: BusinessClock | None = None,
        domain: str | None = None,
        campaign: str | None = None,
        campaign_header: str = "X-Campaign",
        host: str = "127.0.0.1",
        timers: TimerConfig | None = None,
        mask_callees: bool = True,
        max_call_seconds: float = 4 * 3600.0,
    ) -> None:
        super().__init__(name, clock=clock, host=host, timers=timers, mask_callees=mask_callees)
        self.password = password
        self.gateway = gateway
        self.domain = domain or _hostport(gateway)
        self.campaign = campaign
        self.campaign_header = campaign_header
        self.max_call_seconds = max_call_seconds
        self.calls: list[CallResult] = []
        self.active = 0

    def _digest(self) -> DigestClient:
        # One client per call: concurrent channels never share nonce counts.
        return DigestClient(self.name, password=self.password)

    def _from_uri(self) -> str:
        return f"sip:{self.name}@{self.domain}"

    async def call(
        self,
        number: str,
        *,
        talk_seconds: TalkTime = 30.0,
        ring_timeout: float | None = None,
        campaign: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> CallResult:
        """Call ``number`` through the gateway and play the call out; the result is kept."""
        target = f"sip:{number}@{_hostport(self.gateway)}"
        extra = list(headers)
        chosen = campaign if campaign is not None else self.campaign
        if chosen is not None:
            extra.append((self.campaign_header, chosen))
        self.active += 1
        try:
            result = await self.place_call(
                self.gateway,
                request_uri=target,
                from_uri=self._from_uri(),
                to_uri=target,
                callee=number,
                digest=self._digest(),
                headers=extra,
                talk_seconds=_talk(talk_seconds),
                ring_timeout=ring_timeout,
                max_call_seconds=self.max_call_seconds,
            )
        finally:
            self.active -= 1
        self.calls.append(result)
        log.info(
            "sim.call.done",
            ua=self.name,
            callee=self.mask(number),
            status=result.status,
            reason=result.reason_text,
            answered=result.answered,
        )
        return result


class Softphone(_Caller):
    """An agent's softphone (digest REGISTER, outbound and inbound calls).

    ``business_expiry``: the registrar counts expiry in business time (a gateway
    sharing the scaled clock), so refreshes follow the business clock.
    ``answer_inbound``: answer callbacks after ``inbound_ring_seconds``; with
    ``inbound_talk_seconds`` the agent hangs up after that long, else it waits
    for the caller's BYE. ``await phone.register()`` once, or
    ``phone.keep_registered()`` to refresh before expiry.
    """

    def __init__(
        self,
        name: str,
        password: str,
        gateway: Address,
        *,
        clock: BusinessClock | None = None,
        domain: str | None = None,
        campaign: str | None = None,
        campaign_header: str = "X-Campaign",
        register_expires: int = 300,
        answer_inbound: bool = True,
        inbound_ring_seconds: float = 1.0,
        inbound_talk_seconds: float | None = None,
        host: str = "127.0.0.1",
        timers: TimerConfig | None = None,
        mask_callees: bool = True,
        max_call_seconds: float = 4 * 3600.0,
        business_expiry: bool = False,
    ) -> None:
        super().__init__(
            name,
            password,
            gateway,
            clock=clock,
            domain=domain,
            campaign=campaign,
            campaign_header=campaign_header,
            host=host,
            timers=timers,
            mask_callees=mask_callees,
            max_call_seconds=max_call_seconds,
        )
        self.register_expires = register_expires
        self.business_expiry = business_expiry
        self.answer_inbound = answer_inbound
        self.inbound_ring_seconds = inbound_ring_seconds
        self.inbound_talk_seconds = inbound_talk_seconds
        self.inbound_calls: list[CallResult] = []
        self.registered_until: float | None = None  # loop (real) time
        self.register_responses: list[int] = []
        self._reg_call_id = new_call_id(host)
        self._reg_tag = new_tag()
        self._reg_cseq = 0
        self._refresher: asyncio.Task[object] | None = None
        self._inbound_results: dict[InboundCall, CallResult] = {}

    # -- registration ------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """True while the last REGISTER's binding has not expired."""
        return (
            self.registered_until is not None and self.registered_until > self.endpoint.loop.time()
        )

    def _register_request(self, expires: int, auth: tuple[str, str] | None) -> Request:
        self._reg_cseq += 1
        aor = f"sip:{self.name}@{self.domain}"
        headers = [
            ("From", f"<{aor}>;tag={self._reg_tag}"),
            ("To", f"<{aor}>"),
            ("Call-ID", self._reg_call_id),
            ("CSeq", f"{self._reg_cseq} REGISTER"),
            ("Contact", f"<{self.contact(self.name)}>"),
            ("Expires", str(expires)),
        ]
        if auth is not None:
            headers.append(auth)
        return Request("REGISTER", f"sip:{self.domain}", headers)

    async def register(self, expires: int | None = None) -> Response:
        """REGISTER (answering one 401/407 challenge); returns the final response.

        §10.2.1.1: the same Call-ID for every refresh, CSeq increasing. A 2xx
        sets :attr:`registered_until` from the granted expiry (the Contact's
        ``expires`` parameter, else Expires, else what we asked).
        """
        asked = self.register_expires if expires is None else expires
        digest = self._digest()
        auth: tuple[str, str] | None = None
        uri = f"sip:{self.domain}"
        for _ in range(4):
            response = await self.endpoint.request(
                self._register_request(asked, auth), self.gateway
            )
            self.register_responses.append(response.status)
            if response.status in (401, 407):
                name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
                # DigestClient refuses to answer again unless the nonce went stale.
                if digest.handle_challenge(response.status, response.headers.get_all(name)):
                    auth = digest.authorization("REGISTER", uri)
                    continue
            elif response.status == 423 and asked > 0:
                # §10.2.8: retry with at least the registrar's Min-Expires.
                minimum = (response.headers.get("Min-Expires") or "").strip()
                if minimum.isdigit() and int(minimum) > asked:
                    asked = int(minimum)
                    if auth is not None:
                        auth = digest.authorization("REGISTER", uri)  # next nonce count
                    continue
            break
        if 200 <= response.status < 300:
            self.registered_until = self._granted(response, asked)
        log.info("sim.register", ua=self.name, status=response.status, expires=asked)
        return response

    def _granted(self, response: Response, asked: int) -> float | None:
        """Loop time our binding expires, from the 2xx (our Contact's expires, else Expires)."""
        granted = asked
        ours = self.contact(self.name)
        contacts = response.contact
        mine = [c for c in contacts if str(c.uri) == ours] or contacts[:1]
        if mine and mine[0].expires is not None:
            granted = mine[0].expires
        elif response.expires is not None:
            granted = response.expires
        if granted <= 0:
            return None
        # A registrar on the shared business clock counts the expiry in business time.
        real = self.clock.real_delay(granted) if self.business_expiry else float(granted)
        return self.endpoint.loop.time() + real

    async def unregister(self) -> Response:
        """Remove the binding (Expires: 0)."""
        response = await self.register(expires=0)
        self.registered_until = None
        return response

    def keep_registered(
        self, *, margin: float = 0.2, immediately: bool = True
    ) -> asyncio.Task[object]:
        """Refresh the registration before each expiry (at ``1 - margin`` of the granted time).

        ``immediately=False`` starts from the current binding (after a
        successful :meth:`register`) instead of registering at once.
        """
        if self._refresher is None or self._refresher.done():
            self._refresher = self.spawn(self._refresh_loop(margin, immediately))
        return self._refresher

    async def _refresh_loop(self, margin: float, immediately: bool) -> None:
        if not immediately and self.registered_until is not None:
            left = self.registered_until - self.endpoint.loop.time()
            await asyncio.sleep(max(0.05, left * (1 - margin)))
        while True:
            response = await self.register()
            if 200 <= response.status < 300 and self.registered_until is not None:
                left = self.registered_until - self.endpoint.loop.time()
                await asyncio.sleep(max(0.05, left * (1 - margin)))
            else:
                await asyncio.sleep(1.0)

    # -- inbound calls -----------------------------------------------------------------

    def on_invite(self, req: ServerRequest) -> None:
        """A callback to this agent: ring, answer after the ring time, wait for BYE."""
        if not self.answer_inbound:
            req.respond(480, to_tag=new_tag())
            return
        call = self.accept_inbound(req)
        request = req.request
        self._inbound_results[call] = CallResult(
            call_id=request.call_id,
            direction="in",
            peer=f"{req.source[0]}:{req.source[1]}",
            callee=request.uri.user or "",
            started=call.started,
        )
        self.ring(call)
        call.timers.append(self.later(self.inbound_ring_seconds, lambda: self._pick_up(call)))

    def _pick_up(self, call: InboundCall) -> None:
        if self.answer(call) and self.inbound_talk_seconds is not None:
            call.timers.append(self.later(self.inbound_talk_seconds, lambda: self.hang_up(call)))

    def on_call_ended(self, call: InboundCall) -> None:
        """File the inbound call's result."""
        result = self._inbound_results.pop(call, None)
        if result is None:
            return
        result.status = call.final_status
        result.cancelled = call.cancelled
        result.answered = call.answered_at is not None
        result.hangup = call.hangup
        if call.answered_at is not None and call.ended_at is not None:
            result.talk_seconds = max(0.0, call.ended_at - call.answered_at)
        self.inbound_calls.append(result)

    async def close(self) -> None:
        """Stop refreshing and close (the binding is left to expire)."""
        if self._refresher is not None:
            self._refresher.cancel()
        await super().close()


class Dialer(_Caller):
    """A trusted dialer peer: no REGISTER, digest when challenged, a campaign header."""

    def _from_uri(self) -> str:
        host, port = self.address
        return f"sip:{self.name}@{host}:{port}"

    async def run(
        self,
        leads: Sequence[str] | deque[str],
        *,
        channels: int = 1,
        calls_per_minute: float | None = None,
        think_seconds: float = 0.0,
        talk_seconds: TalkTime = None,
        ring_timeout: float | None = 45.0,
        stop: asyncio.Event | None = None,
    ) -> list[CallResult]:
        """Work ``leads`` over ``channels`` concurrent channels; returns this run's results."""
        queue: deque[str] = leads if isinstance(leads, deque) else deque(leads)
        results: list[CallResult] = []
        async with asyncio.TaskGroup() as group:
            for _ in range(channels):
                group.create_task(
                    work_leads(
                        self,
                        queue,
                        calls_per_minute=calls_per_minute,
                        think_seconds=think_seconds,
                        talk_seconds=talk_seconds,
                        ring_timeout=ring_timeout,
                        stop=stop,
                        on_result=lambda _lead, r: results.append(r),
                    )
                )
        return results


async def work_leads(
    caller: _Caller,
    leads: deque[str],
    *,
    calls_per_minute: float | None = None,
    think_seconds: float = 0.0,
    talk_seconds: TalkTime = None,
    ring_timeout: float | None = 45.0,
    stop: asyncio.Event | None = None,
    on_result: Callable[[str, CallResult], None] | None = None,
    requeue: Callable[[str, CallResult], float | None] | None = None,
    gate: Callable[[asyncio.Event | None], Awaitable[bool]] | None = None,
) -> None:
    """One channel's loop: next lead → call → pause, until no lead is left or ``stop`` is set.

    ``gate`` (capacity pacing, ``simulator.pacing.CapacityGate``) is awaited
    before each call; it returns False when ``stop`` was set while it waited.

    Calls start at most every ``60 / calls_per_minute`` business seconds and
    at least ``think_seconds`` after the previous call ended. ``requeue``
    may put a lead back (e.g. on 503 ``no-card-available``): it returns the
    business seconds to wait before the next attempt, or None.
    """
    gap = 60.0 / calls_per_minute if calls_per_minute else 0.0
    clock = caller.clock
    if is_event_clock(clock):
        # Take a turn on the event clock before the first call: channels started
        # together then begin one after another in the order they were started
        # (each call's SIP exchange settles before the next channel's begins).
        await business_sleep(clock, 0.0)
    while leads and (stop is None or not stop.is_set()):
        if gate is not None and not await gate(stop):
            break
        lead = leads.popleft()
        started = clock.now()
        result = await caller.call(lead, talk_seconds=talk_seconds, ring_timeout=ring_timeout)
        if on_result is not None:
            on_result(lead, result)
        pause = think_seconds
        if requeue is not None:
            extra = requeue(lead, result)
            if extra is not None:
                leads.appendleft(lead)
                pause = max(pause, extra)
        elapsed = max(0.0, clock.now() - started)
        pause = max(pause, gap - elapsed)
        if pause > 0:
            if stop is None:
                await business_sleep(clock, pause)
            else:
                await business_wait(clock, stop.wait(), pause)
