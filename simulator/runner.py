"""The SIP scenario runner: a scenario played over real SIP against a dialgate.

:func:`run_scenario` loads nothing itself: give it a validated
:class:`~simulator.scenario.Scenario`. It starts the :class:`~simulator.carrier.Carrier`
(the scenario's accounts and carrier model) on a free loopback port, then a
gateway — either one already running (``gateway=(host, port)``; its
``[[carriers]]`` must point at the carrier's port, printed at start) or one
started in-process through ``gateway.app.serve`` with :class:`Settings` built
from the scenario (cards pointing at the carrier, users = agents, peers =
dialers, policies per ``gateway.guarded``) — or, with ``direct=True``, no
gateway at all: each agent dials the carrier with its card's credentials (the
unprotected baseline). Softphone agents (registered with digest) and dialer
channels then work the lead list with the scenario's pacing until the leads
run out or business time reaches the scenario's end. The business clock is
shared by the carrier model and (when ``serve`` accepts a ``clock``) the
gateway; SIP timers stay real.

Business clocks: with every peer in this process (in-process gateway, or
``direct``) the run is on an :class:`~simulator.clock.EventClock` and an
:class:`EventDriver`: business time stands still while any SIP message is in
flight or any callback or task is ready to run, and jumps to the next
scheduled business event (ring over, talk over, pacing gap, think time, the
scenario's end) only when the whole process is quiescent, one event at a
time. Real SIP work then costs no business time, so the same seed gives the
same report. Against an external gateway (``gateway=``), or with
``realtime_clock=True``, the scenario's :class:`~simulator.clock.ScaledClock`
runs instead (business time flows ``speed`` times faster than real time; the
report then says totals can differ between runs).

Silent destinations (``carrier.answer.silent_share``) answer nothing; the
caller's Timer B (64 x T1, real time) ends such a call. On the event clock the
run then gives the in-process gateway (or, direct, each softphone) a short T1,
:data:`SILENT_T1`, and the carrier holds business time still for that Timer B
plus :data:`SILENT_HOLD_MARGIN` per silent INVITE, so Timer B fires — and the
gateway answers the agent or fails over — at the INVITE's business instant
(a silent call costs real time, no business time).

Each attempt becomes a :class:`~simulator.records.CallRecord` (callee
masked), carrier refusals become :class:`~simulator.records.CardMark` entries,
the in-process gateway's card states at the end (read from its store, as
:func:`seed_store` writes it) become :class:`~simulator.records.GatewayCardState`
entries, and :func:`simulator.report.build_report` turns them, the carrier
events and the INVITEs the carrier saw into the report. :class:`Progress`
draws a one-line live status.

Also here, shared with the pytest fixtures: :func:`build_settings`,
:func:`settings_from_scenario` and :class:`InProcessGateway`.

This module must never write outside the paths it is given (the in-process
gateway's store lives in a temporary directory), never log a secret, and
never leave a task, socket or gateway running after :func:`run_scenario`
returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from gateway.config import Settings
from gateway.sip.transaction import TimerConfig
from gateway.transport import Address, Transport
from policies.privacy import mask_number
from simulator.agents import Dialer, Softphone, work_leads
from simulator.carrier import Carrier
from simulator.clock import BusinessClock, EventClock, ScaledClock
from simulator.models import CarrierModel, EventKind
from simulator.pacing import CapacityGate, CapacityReading
from simulator.records import CallOutcome, CallRecord, CardMark, GatewayCardState
from simulator.report import Report, build_report
from simulator.scenario import Scenario
from simulator.sipkit import CallResult

__all__ = [
    "DEFAULT_CARRIER_RULES",
    "EventDriver",
    "InProcessGateway",
    "Progress",
    "SipRunResult",
    "build_settings",
    "gateway_card_states",
    "run_scenario",
    "seed_store",
    "settings_from_scenario",
]

log = structlog.get_logger("simulator.runner")

#: Business seconds an agent waits before retrying a lead the gateway could not place.
NO_CARD_RETRY_SECONDS = 60.0

#: T1 (real seconds) of the UAC facing the carrier (the in-process gateway, or the
#: softphones of a direct run) on the event clock when some destinations are silent:
#: Timer B = 64 x T1 = 1.6 s of real time instead of 32 s.
SILENT_T1 = 0.025

#: Real seconds a silent INVITE holds business time beyond that Timer B (the gateway's
#: answer to the agent, or its failover INVITE, settles meanwhile).
SILENT_HOLD_MARGIN = 0.4

#: Gateway ``[[carriers.rules]]`` matching the simulated carrier's answers (as in
#: :meth:`Scenario.gateway_config`): its 403 phrases name the suspension reason.
DEFAULT_CARRIER_RULES: tuple[Mapping[str, Any], ...] = (
    *(
        {"status": 403, "match": f"(?i)suspended: {reason}", "reason": reason}
        for reason in ("abnormal-use", "violation", "arrears", "manual")
    ),
    {"status": 403, "match": "(?i)suspend|blocked", "reason": "unknown"},
    {"status": 402, "reason": "arrears"},
    {"status": 503, "match": "(?i)maintenance", "reason": "maintenance"},
)

_STATUS_OUTCOME = {
    200: CallOutcome.ANSWERED,
    486: CallOutcome.BUSY,
    600: CallOutcome.BUSY,
    480: CallOutcome.NO_ANSWER,
    408: CallOutcome.NO_ANSWER,
    487: CallOutcome.NO_ANSWER,
    603: CallOutcome.DECLINED,
}


# ---------------------------------------------------------------------------
# Gateway settings and the in-process gateway
# ---------------------------------------------------------------------------


SIMULATED_SOURCES: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
"""``[security] exempt`` of a simulated gateway: its phones, dialers and carrier are on loopback."""


def build_settings(
    *,
    carrier_address: str,
    cards: Iterable[Mapping[str, Any]],
    users: Iterable[Mapping[str, Any]] = (),
    peers: Iterable[Mapping[str, Any]] = (),
    store_path: str | Path,
    listen: Sequence[str] = ("udp:127.0.0.1:0",),
    carrier_name: str = "carrier-a",
    carrier_timezone: str = "UTC",
    carrier_rules: Sequence[Mapping[str, Any]] = (),
    policy: Mapping[str, Any] | None = None,
    quota_profiles: Mapping[str, Mapping[str, Any]] | None = None,
    inbound: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Settings:
    """Gateway :class:`Settings` for a simulated run, every listener on a free loopback port.

    ``cards`` are ``[[cards]]`` tables without ``carrier`` (it is filled in);
    the admin API listens on a free port and MQTT stays off unless ``extra``
    says otherwise. ``extra`` entries replace top-level tables.
    """
    data: dict[str, Any] = {
        "sip": {"listen": list(listen)},
        "store": {"path": str(store_path)},
        "policy": dict(policy or {}),
        "users": [dict(u) for u in users],
        "peers": [dict(p) for p in peers],
        "carriers": [
            {
                "name": carrier_name,
                "address": carrier_address,
                "timezone": carrier_timezone,
                "rules": [dict(r) for r in carrier_rules],
            }
        ],
        "quota_profiles": {name: dict(p) for name, p in (quota_profiles or {}).items()},
        "cards": [{"carrier": carrier_name, **dict(c)} for c in cards],
        "admin": {"listen": "127.0.0.1:0"},
    }
    if inbound is not None:
        data["inbound"] = dict(inbound)
    # Simulated peers all share loopback: never counted as a flood.
    data["security"] = {"exempt": list(SIMULATED_SOURCES)}
    data.update(extra or {})
    return Settings(**data)


def settings_from_scenario(
    scenario: Scenario,
    carrier_address: str,
    *,
    store_path: str | Path,
    listen: Sequence[str] = ("udp:127.0.0.1:0",),
    sip_t1: float | None = None,
) -> Settings:
    """The in-process gateway's settings for ``scenario`` (policies per ``gateway.guarded``).

    ``sip_t1`` sets the gateway's ``[sip] t1`` (None: the gateway's default).
    """
    config = scenario.gateway_config(carrier_address, listen=listen, store_path=str(store_path))
    config["admin"] = {"listen": "127.0.0.1:0"}
    # Every simulated phone shares loopback and a fast-forwarded day: the
    # gateway's flood control would ban them all as one source.
    config.setdefault("security", {"exempt": list(SIMULATED_SOURCES)})
    if sip_t1 is not None:
        config["sip"]["t1"] = sip_t1
    return Settings(**config)


def gateway_card_states(settings: Settings) -> list[GatewayCardState] | None:
    """Each configured card's state as the gateway stored it (None when the store is unreadable).

    Read through the gateway's own store (``gateway.store.store_from_settings``),
    as :func:`seed_store` writes it: call it once the gateway has stopped.
    """
    from gateway.store import store_from_settings

    configured = {c.id for c in settings.cards}
    try:
        with store_from_settings(settings) as store:
            rows = store.load_cards()
    except Exception:
        log.warning("sim.gateway_cards.unreadable", exc_info=True)
        return None
    return [
        GatewayCardState(row.id, str(row.state), None if row.reason is None else str(row.reason))
        for row in rows
        if row.id in configured
    ]


def seed_store(
    settings: Settings,
    *,
    consent: Iterable[str] = (),
    dnc: Iterable[str] = (),
    now: float,
    campaign: str = "",
) -> tuple[int, int]:
    """Write consent grants and DNC entries into the gateway's store before it starts.

    Uses the gateway's own store (``gateway.store.store_from_settings``), the
    way ``dialgate consent import`` would; returns (consents, dnc entries) written.
    """
    from gateway.store import store_from_settings

    consents = entries = 0
    with store_from_settings(settings) as store:
        for number in consent:
            store.add_consent(number, now, campaign=campaign, source="simulator")
            consents += 1
        for number in dnc:
            entries += int(store.add_dnc(number, now, source="simulator"))
    return consents, entries


class InProcessGateway:
    """``gateway.app.serve`` as a task in this loop: ``await gw.start()`` … ``await gw.stop()``.

    When ``serve`` takes a ``clock`` keyword the business clock's ``now`` is
    handed over (fast-forward shared with the carrier); otherwise the gateway
    keeps its real clock and :attr:`clock_shared` is False.
    """

    def __init__(self, settings: Settings, *, clock: BusinessClock | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.clock_shared = False
        self.gateway: Any = None
        self.addresses: list[tuple[str, Address]] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> InProcessGateway:
        """Start serving; returns once every listener is bound (raises what ``serve`` raised)."""
        from gateway import app

        started: list[Any] = []
        ready = asyncio.Event()
        kwargs: dict[str, Any] = {"ready": ready, "stop": self._stop, "on_ready": started.append}
        if self.clock is not None and "clock" in inspect.signature(app.serve).parameters:
            kwargs["clock"] = self.clock.now
            self.clock_shared = True
        self._task = asyncio.ensure_future(app.serve(self.settings, **kwargs))
        waiter = asyncio.ensure_future(ready.wait())
        try:
            done, _ = await asyncio.wait(
                {self._task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._task in done:
            self._task.result()  # raises the start-up error
            raise RuntimeError("gateway.app.serve returned before it was ready")
        if not ready.is_set():
            await self.stop()
            raise TimeoutError("the in-process gateway did not become ready")
        self.gateway = started[-1] if started else None
        if self.gateway is not None:
            self.addresses = [(b.transport, (b.host, b.port)) for b in self.gateway.addresses]
        return self

    def address(self, transport: str = "udp") -> Address:
        """The bound ``(host, port)`` of the first listener of ``transport`` (kept after stop)."""
        for name, address in self.addresses:
            if name == transport:
                return address
        raise LookupError(f"no {transport} listener (gateway started: {self.gateway is not None})")

    @property
    def running(self) -> bool:
        """True while the serve task is alive."""
        return self._task is not None and not self._task.done()

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask ``serve`` to stop; cancel it if it does not within ``timeout``. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.exception("sim.gateway.stop.failed")

    async def __aenter__(self) -> InProcessGateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ---------------------------------------------------------------------------
# The event clock's driver
# ---------------------------------------------------------------------------


def _ready_callbacks(loop: asyncio.AbstractEventLoop) -> int | None:
    """Callbacks ready to run in ``loop`` (None when the loop does not say: not CPython's)."""
    ready = getattr(loop, "_ready", None)
    return len(ready) if ready is not None else None


class EventDriver:
    """Moves an :class:`~simulator.clock.EventClock` when the process is quiescent.

    Quiescent means: every SIP datagram sent by a peer of this process
    (``transports()``: the carrier's, the agents', the gateway's) has been
    received by one (sent == received + keep-alives, summed), no callback or
    task is ready to run, and none of that changed across a short real pause
    (``pause`` seconds). Then :meth:`EventClock.advance` fires the one
    earliest business event, and the driver waits for quiescence again. A
    request or response on its way keeps the counts apart, so business time
    cannot move while one is in flight.

    A datagram that never arrives (none does on loopback in normal flow) would
    stop the run; after ``lost_after`` real seconds without any counter
    moving, the difference is accepted as lost, logged and counted in
    :attr:`lost`.

    ``holds`` (optional) returns a loop time until which business time must
    stand still whatever else is quiet (the carrier's silent INVITEs waiting
    for the caller's real-time Timer B: :meth:`Carrier.hold_until`), or None.
    """

    def __init__(
        self,
        clock: EventClock,
        transports: Callable[[], Iterable[Transport]],
        *,
        pause: float = 0.001,
        lost_after: float = 5.0,
        holds: Callable[[], float | None] | None = None,
    ) -> None:
        self.clock = clock
        self.transports = transports
        self.holds = holds
        self.pause = pause
        self.lost_after = lost_after
        #: sent - received accepted as lost (0 in normal flow).
        self.lost = 0
        #: Quiescence checks that passed (one per business event, plus idle ones).
        self.settled = 0

    def counts(self) -> tuple[int, int]:
        """(datagrams sent, datagrams received) summed over every transport of the process."""
        sent = received = 0
        for transport in self.transports():
            stats = transport.stats
            sent += stats.sent
            received += stats.received + stats.keepalives
        return sent, received

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Yield until no other callback or task is ready (or a bounded number of turns)."""
        for _ in range(1000):
            await asyncio.sleep(0)
            ready = _ready_callbacks(loop)
            if ready == 0:
                return
            if ready is None:
                for _ in range(20):
                    await asyncio.sleep(0)
                return

    async def quiescent(self) -> None:
        """Return once nothing is in flight, nothing is ready and nothing moved in a pause."""
        loop = asyncio.get_running_loop()
        last: tuple[int, int] | None = None
        stuck_since: float | None = None
        while True:
            await self._drain(loop)
            if _ready_callbacks(loop):
                last = None
                continue
            until = self.holds() if self.holds is not None else None
            if until is not None and until > loop.time():
                last = None
                await asyncio.sleep(min(until - loop.time(), 0.05))
                continue
            current = self.counts()
            sent, received = current
            if sent - received == self.lost:
                stuck_since = None
                if current == last:
                    self.settled += 1
                    return
                last = current
                await asyncio.sleep(self.pause)
                continue
            # A datagram is on its way: let the selector deliver it.
            if current != last:
                last, stuck_since = current, loop.time()
            elif stuck_since is not None and loop.time() - stuck_since > self.lost_after:
                log.warning("sim.event_clock.datagrams_lost", missing=sent - received - self.lost)
                self.lost = sent - received
                continue
            await asyncio.sleep(self.pause / 4)

    async def run(self) -> None:
        """Forever: wait for quiescence, fire the next business event (or wait for one)."""
        while True:
            await self.quiescent()
            try:
                fired = self.clock.advance()
            except Exception:
                log.exception("sim.event_clock.callback_failed")
                continue
            if not fired:
                await self.clock.scheduled()


# ---------------------------------------------------------------------------
# Progress line
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """A one-line status (calls, answered, blocks, suspensions), in place on a TTY.

    Off a TTY a line is printed at each tenth of the run, so logs stay short.
    """

    stream: TextIO
    total: float
    enabled: bool = True
    _tty: bool = field(init=False)
    _last_decile: int = field(default=-1, init=False)
    _width: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, elapsed: float, calls: int, answered: int, blocked: int, suspended: int) -> str:
        """The status text for these counters."""
        share = 0.0 if self.total <= 0 else min(1.0, max(0.0, elapsed / self.total))
        bar = "#" * int(share * 20)
        return (
            f"[{bar:<20}] {share * 100:5.1f}%  calls {calls}  answered {answered}  "
            f"blocked {blocked}  suspensions {suspended}"
        )

    def update(
        self,
        elapsed: float,
        calls: int,
        answered: int,
        blocked: int,
        suspended: int,
        *,
        force: bool = False,
    ) -> None:
        """Redraw (TTY) or print at each new tenth (not a TTY; ``force`` prints anyway)."""
        if not self.enabled:
            return
        text = self.line(elapsed, calls, answered, blocked, suspended)
        if self._tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad)
            self._width = len(text)
            self.stream.flush()
            return
        decile = int(10 * min(1.0, elapsed / self.total)) if self.total > 0 else 10
        if decile > self._last_decile or force:
            self._last_decile = decile
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the in-place line."""
        if self.enabled and self._tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class SipRunResult:
    """What a SIP run produced."""

    scenario: Scenario
    carrier: CarrierModel
    calls: list[CallRecord]
    marks: list[CardMark]
    results: list[tuple[str, CallResult]]
    leads_total: int
    leads_left: int
    mode: str
    gateway_address: Address | None = None
    clock_shared: bool = False
    invites: list[dict[str, Any]] = field(default_factory=list)
    #: ``event`` (discrete-event business clock, seed-determined) or ``scaled``.
    business_clock: str = "scaled"
    #: Business events the event clock fired (0 on a scaled clock).
    events_fired: int = 0
    #: The in-process gateway's card states when it stopped (None: no gateway of ours).
    gateway_cards: list[GatewayCardState] | None = None

    def report(self) -> Report:
        """The rehearsal report (same builder as the offline run)."""
        s = self.scenario
        # The clock of an external gateway is not known here.
        gateway_clock: str | None = None
        if self.mode == "in-process":
            gateway_clock = "business" if self.clock_shared else "real"
        return build_report(
            name=s.name,
            seed=s.seed,
            start=s.start_epoch,
            end=s.end_epoch,
            timezone=s.carrier.timezone,
            thresholds=self.carrier.config.thresholds,
            cards=[c.id for c in s.cards],
            events=self.carrier.events,
            calls=self.calls,
            marks=self.marks,
            leads_total=self.leads_total,
            leads_left=self.leads_left,
            mode=f"sip/{self.mode}",
            speed=None if self.business_clock == "event" else s.clock.speed,
            gateway_clock=gateway_clock,
            business_clock=self.business_clock,
            invites_seen=self.carrier.callee_invites,
            gateway_cards=self.gateway_cards,
        )


def _record(
    source: str,
    result: CallResult,
    carrier: Carrier,
    mask: bool,
) -> CallRecord:
    """A CallRecord for one attempt; the card and failovers come from the carrier's INVITE log."""
    tried = [
        e
        for e in carrier.invites
        if e.callee == result.callee and e.authenticated and e.time >= result.started - 1e-6
    ]
    card = tried[-1].card if tried else None
    failovers = max(0, len(tried) - 1)
    # Talk time as the carrier counted it (the callee's planned talk when it hung
    # up): the caller's own measure carries real-time jitter times the clock speed.
    talk = result.talk_seconds
    if tried and tried[-1].answered:
        talk = tried[-1].talk_seconds
    status = result.status or 0
    outcome = _STATUS_OUTCOME.get(status)
    reason = result.reason_text
    final = tried[-1].final if tried and tried[-1].reached_callee else None
    if outcome is None and final is not None and final // 100 == status // 100 >= 4:
        # The destination's own answer, relayed (a proxy turns 503 into 500): a refusal
        # (plain 403) or a failure after the callee was reached (503 after ringing).
        outcome = CallOutcome.REFUSED if status < 500 else CallOutcome.FAILED
    if outcome is None:
        outcome = CallOutcome.BLOCKED
        if reason is None:
            reason = f"carrier-{status}" if tried else f"gateway-{status}"
    return CallRecord(
        time=result.started,
        source=source,
        callee=mask_number(result.callee, enabled=mask),
        card=card,
        outcome=outcome,
        status=status,
        reason=reason if outcome is CallOutcome.BLOCKED else None,
        failovers=failovers,
        ring_seconds=round(result.ring_seconds, 3),
        talk_seconds=round(talk, 3) if result.answered else 0.0,
    )


def _marks(carrier: Carrier) -> list[CardMark]:
    marks = []
    for e in carrier.invites:
        if e.outcome == "rejected" and e.card is not None:
            until = e.time + e.retry_after if e.retry_after is not None else None
            marks.append(CardMark(e.time, e.card, e.decided, e.reason_phrase, until))
    return marks


def _sources(caller: Softphone | Dialer, dialer_channels: Mapping[str, int]) -> list[str]:
    """The lead workers of one caller: an agent is one, a dialer one per channel."""
    channels = dialer_channels.get(caller.name, 1) if isinstance(caller, Dialer) else 1
    if channels == 1:
        return [caller.name]
    return [f"{caller.name}/{channel + 1}" for channel in range(channels)]


def _capacity_gate(
    scenario: Scenario, in_process: InProcessGateway | None, clock: BusinessClock
) -> CapacityGate | None:
    """The dialers' capacity gate (``[pacing] pace = "capacity"``), over the in-process
    gateway's own cards; None for blind pacing or without an in-process gateway."""
    if scenario.pacing.pace != "capacity" or in_process is None:
        return None
    gateway = in_process.gateway
    if gateway is None or gateway.b2bua is None:
        return None
    from gateway.cards.capacity import operator_pool_capacity

    b2bua = gateway.b2bua
    op = gateway.operator()
    if op is None:
        return None
    pool = gateway.settings.cards[0].pool if gateway.settings.cards else "main"
    scale = 1.0 if in_process.clock_shared else float(getattr(clock, "speed", 1.0))

    def read() -> CapacityReading:
        now = b2bua.clock()
        capacity = operator_pool_capacity(op, pool, now)
        if capacity is None:
            return CapacityReading(0, None, b2bua.stats["calls"])
        frees = [c.frees_at for c in capacity.cards if c.frees_at is not None]
        # frees_at is on the gateway's clock; the gate waits on the business clock.
        at = clock.now() + (min(frees) - now) * scale if frees else None
        return CapacityReading(capacity.now, at, b2bua.stats["calls"])

    return CapacityGate(read, clock)


def _requeuer(retry_scale: float) -> Callable[[str, CallResult], float | None]:
    """Put a lead back when the gateway could not place it (no card, store down).

    The wait is the gateway's Retry-After times ``retry_scale`` business
    seconds per second: 1 when the gateway shares the business clock, the
    clock speed when it counts in real seconds.
    """

    def requeue(_lead: str, result: CallResult) -> float | None:
        if result.status == 503 and result.reason_text in (
            "no-card-available",
            "store-unavailable",
        ):
            if result.retry_after is None:
                return NO_CARD_RETRY_SECONDS
            return max(1.0, result.retry_after * retry_scale)
        return None

    return requeue


async def run_scenario(
    scenario: Scenario,
    *,
    gateway: Address | None = None,
    direct: bool = False,
    speed: float | None = None,
    progress: TextIO | None = None,
    carrier_port: int = 0,
    workdir: str | Path | None = None,
    max_leads: int | None = None,
    progress_interval: float = 0.5,
    on_ready: Callable[[Carrier, Address | None], None] | None = None,
    realtime_clock: bool = False,
) -> SipRunResult:
    """Play ``scenario`` over SIP; see the module docstring for the three modes.

    ``speed`` overrides the scenario clock's speed (scaled clock only);
    ``max_leads`` caps the lead list (quick runs); ``progress`` is where the
    live line goes (None: nowhere); ``on_ready`` is called once the carrier
    (and gateway) are up. ``realtime_clock`` keeps the scaled clock for an
    in-process or direct run (an external gateway always gets it).
    """
    if speed is not None:
        scenario = scenario.model_copy(
            update={"clock": scenario.clock.model_copy(update={"speed": speed})}
        )
    leads = scenario.expand_leads()
    model = scenario.build_carrier(leads)
    numbers = [lead.number for lead in leads]
    if max_leads is not None:
        numbers = numbers[:max_leads]
    event_mode = gateway is None and not realtime_clock
    clock: EventClock | ScaledClock = (
        EventClock(scenario.clock.start) if event_mode else scenario.build_clock()
    )
    driver: EventDriver | None = None
    driver_task: asyncio.Task[None] | None = None
    mask = scenario.gateway.mask_callees
    max_call = scenario.carrier.answer.talk_max + 60.0
    ring_timeout = (
        max(scenario.carrier.answer.no_answer_seconds, scenario.carrier.answer.ring_max) + 15.0
    )
    carrier = Carrier(
        model,
        clock=clock,
        numbers={c.number: c.id for c in scenario.cards},
        mask_callees=mask,
    )
    # Silent destinations on the event clock: a short Timer B for whoever faces the
    # carrier, and business time held still until it fired (see the module docstring).
    silent_t1 = SILENT_T1 if event_mode and scenario.carrier.answer.silent_share > 0 else None
    if silent_t1 is not None:
        carrier.silent_hold = 64 * silent_t1 + SILENT_HOLD_MARGIN
    gateway_settings: Settings | None = None
    gateway_cards: list[GatewayCardState] | None = None
    in_process: InProcessGateway | None = None
    callers: list[Softphone | Dialer] = []
    results: list[tuple[str, CallResult]] = []
    # One list per worker (lead i to worker i mod n, fixed before the run): which
    # agent dials which lead is decided by the seed's lead order, not by who is
    # free first, so timing cannot move a lead to another card.
    queues: list[deque[str]] = []
    stop = asyncio.Event()
    mode = "direct" if direct else ("external" if gateway is not None else "in-process")
    with tempfile.TemporaryDirectory(prefix="dialgate-sim-", dir=workdir) as tmp:
        try:
            await carrier.start(carrier_port)
            target: Address | None = gateway
            if not direct and gateway is None:
                settings = gateway_settings = settings_from_scenario(
                    scenario,
                    carrier.address_spec,
                    store_path=Path(tmp) / "dialgate.db",
                    sip_t1=silent_t1,
                )
                # The leads' consent is on record before the campaign starts (granted
                # a day before business time, and before the real time a gateway
                # without the shared clock reads).
                seed_store(
                    settings,
                    consent=[lead.number for lead in leads if lead.consent],
                    now=min(scenario.start_epoch, time.time()) - 86400.0,
                )
                in_process = InProcessGateway(settings, clock=clock)
                await in_process.start()
                target = in_process.address("udp")
            if on_ready is not None:
                on_ready(carrier, target)
            cards = {c.id: c for c in scenario.cards}
            for index, agent in enumerate(scenario.agents):
                if direct:
                    card = cards[agent.card] if agent.card else scenario.cards[index % len(cards)]
                    phone = Softphone(
                        card.username,
                        card.password.get_secret_value(),
                        carrier.address,
                        clock=clock,
                        mask_callees=mask,
                        max_call_seconds=max_call,
                        timers=None if silent_t1 is None else TimerConfig(t1=silent_t1),
                    )
                else:
                    assert target is not None
                    phone = Softphone(
                        agent.name,
                        agent.password.get_secret_value(),
                        target,
                        clock=clock,
                        mask_callees=mask,
                        max_call_seconds=max_call,
                        # The gateway's registrar keeps real time even when its policies
                        # share the business clock (gateway.app.serve): no business_expiry.
                        register_expires=3600,
                    )
                await phone.start()
                callers.append(phone)
            if not direct:
                assert target is not None
                for dialer in scenario.dialers:
                    d = Dialer(
                        dialer.name,
                        dialer.password.get_secret_value(),
                        target,
                        clock=clock,
                        campaign=dialer.campaign,
                        mask_callees=mask,
                        max_call_seconds=max_call,
                    )
                    await d.start()
                    callers.append(d)
            if not direct:
                for member in callers:
                    if isinstance(member, Softphone):
                        response = await member.register()
                        if 200 <= response.status < 300:
                            member.keep_registered(immediately=False, margin=0.5)
                        else:
                            log.warning(
                                "sim.register.failed", agent=member.name, status=response.status
                            )
            clock.reset()  # business time starts now that every peer is up
            end = scenario.end_epoch
            if isinstance(clock, EventClock):

                def peers() -> list[Transport]:
                    out = list(carrier.endpoint.transports)
                    for member in callers:
                        out.extend(member.endpoint.transports)
                    if in_process is not None and in_process.gateway is not None:
                        out.extend(in_process.gateway.transports)
                    return out

                driver = EventDriver(clock, peers, holds=carrier.hold_until)
                # The scenario's end is the first event registered: at that instant
                # it fires before any call event due at the same time.
                clock.call_later(end - clock.now(), stop.set)
                driver_task = asyncio.ensure_future(driver.run())
            shared = in_process is not None and in_process.clock_shared
            # Retry-After in business seconds: the gateway shares the clock (or there is
            # none); only a gateway on real time next to a scaled clock needs the speed.
            requeue = _requeuer(1.0 if shared or direct or event_mode else clock.speed)
            pacing = scenario.pacing

            def collect(source: str) -> Callable[[str, CallResult], None]:
                return lambda _lead, r: results.append((source, r))

            workers: list[asyncio.Task[None]] = []
            gate = _capacity_gate(scenario, in_process, clock)
            dialer_channels = {d.name: d.channels for d in scenario.dialers}
            channels_of = [
                (caller, source)
                for caller in callers
                for source in _sources(caller, dialer_channels)
            ]
            queues.extend(deque(numbers[i :: len(channels_of)]) for i in range(len(channels_of)))
            for (caller, source), queue in zip(channels_of, queues, strict=True):
                workers.append(
                    asyncio.ensure_future(
                        work_leads(
                            caller,
                            queue,
                            calls_per_minute=pacing.calls_per_minute_per_agent,
                            think_seconds=pacing.think_seconds,
                            talk_seconds=None,
                            ring_timeout=ring_timeout,
                            stop=stop,
                            on_result=collect(source),
                            requeue=requeue,
                            gate=gate if isinstance(caller, Dialer) else None,
                        )
                    )
                )

            def counters() -> tuple[float, int, int, int, int]:
                answered = sum(1 for _, r in results if r.answered)
                blocked = sum(1 for _, r in results if (r.status or 0) not in _STATUS_OUTCOME)
                suspended = sum(1 for e in model.events if e.kind is EventKind.SUSPENDED)
                elapsed = clock.now() - scenario.start_epoch
                return elapsed, len(results), answered, blocked, suspended

            bar = Progress(
                progress or sys.stdout, scenario.clock.duration, enabled=progress is not None
            )
            # After stop, calls in progress play out: in business time on the event
            # clock (no real wait), in real time on the scaled one.
            grace = 10.0 if event_mode else 10 + max_call / max(clock.speed, 1)
            try:
                while not all(w.done() for w in workers):
                    if clock.now() >= end:
                        stop.set()
                    if driver_task is not None and driver_task.done():
                        driver_task.result()  # raises what stopped the driver
                        raise RuntimeError("the event clock's driver stopped")
                    bar.update(*counters())
                    await asyncio.wait(workers, timeout=progress_interval)
            finally:
                stop.set()
                for w in workers:
                    if not w.done():
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(asyncio.shield(w), grace)
                    if not w.done():
                        w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        exc = await asyncio.gather(w, return_exceptions=True)
                        if exc and isinstance(exc[0], Exception):
                            log.error("sim.worker.failed", error=repr(exc[0]))
                bar.update(*counters(), force=True)
                bar.finish()
            # Let the carrier see the last BYEs / call ends.
            for _ in range(50):
                if carrier.active_calls() == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            if driver_task is not None:
                driver_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await driver_task
            for caller in callers:
                await caller.close()
            if in_process is not None:
                await in_process.stop()
                if gateway_settings is not None:
                    gateway_cards = gateway_card_states(gateway_settings)
            await carrier.close()
    calls = [_record(source, r, carrier, mask) for source, r in results]
    calls.sort(key=lambda c: c.time)
    return SipRunResult(
        scenario=scenario,
        carrier=model,
        calls=calls,
        marks=_marks(carrier),
        results=results,
        leads_total=len(numbers),
        leads_left=sum(len(q) for q in queues) if queues else len(numbers),
        mode=mode,
        gateway_address=gateway if gateway is not None else None,
        clock_shared=in_process.clock_shared if in_process is not None else False,
        invites=[e.as_dict(mask=mask) for e in carrier.invites],
        business_clock="event" if event_mode else "scaled",
        events_fired=clock.fired if isinstance(clock, EventClock) else 0,
        gateway_cards=gateway_cards,
    )
