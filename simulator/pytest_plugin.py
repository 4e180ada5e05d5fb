"""pytest fixtures for SIP tests: a simulated carrier, softphones, a dialer and a dialgate.

Load it from the root ``tests/conftest.py`` (``pytest_plugins =
["simulator.pytest_plugin"]``), with ``-p simulator.pytest_plugin``, or — in a
conftest below the root, where pytest refuses ``pytest_plugins`` — import the
fixtures by name::

    from simulator.pytest_plugin import carrier, gateway, sim_kit, ...  # noqa: F401

(every fixture a test uses, and the fixtures they depend on, must be imported:
see ``tests/simulator_sip/conftest.py``).

Every peer listens on ``127.0.0.1`` on a free UDP port and is closed at
teardown (in reverse order of creation: agents, gateway, carrier), so a test
never leaks a socket, a task or a gateway. All fixtures are function-scoped.

Data fixtures (override them in your conftest to change the defaults):

``sim_start``    aware datetime where business time starts (Mon 2026-03-02 10:00 Asia/Shanghai)
``sim_speed``    business seconds per real second (default 200: a 5 s ring takes 25 ms)
``sim_clock``    :class:`~simulator.clock.ScaledClock` from the two above, shared by every peer
``fake_clock``   :class:`~simulator.clock.FakeClock` for pure-model unit tests
``sim_cards``    two :class:`SimCard` (``c1`` +8613800000001, ``c2`` +8613800000002)
``sim_users``    :class:`SimUser` agents ``alice`` (bound to ``c1``) and ``bob``
``sim_peers``    one :class:`SimPeer` dialer ``dialer-1`` (campaign ``spring-promo``)
``sim_answer``   the carrier's :class:`~simulator.answer.AnswerProfile` (default: always answer,
                 ring 2 s, talk 10 s — deterministic)

Peer fixtures:

``sim_kit``        the :class:`SimKit` that owns everything below (its factories take options)
``carrier``        a started :class:`~simulator.carrier.Carrier` with accounts for ``sim_cards``
                   (digest 401); ``carrier.invites`` is its INVITE log
``gateway``        an in-process dialgate (:class:`~simulator.runner.InProcessGateway`) with
                   cards pointing at ``carrier``, users = ``sim_users``, peers = ``sim_peers``,
                   a store in ``tmp_path``; ``gateway.address()`` is its UDP address
``gateway_address`` ``(host, port)`` of ``gateway``
``softphone``      a started (not yet registered) :class:`~simulator.agents.Softphone` for
                   the first user, pointing at ``gateway``; ``await softphone.register()``
``dialer``         a started :class:`~simulator.agents.Dialer` for the first peer

Process fixtures and helpers (from :mod:`simulator.testkit`, the one test kit:
free ports, the SIPp harness, the config builder, ``eventually``,
``capture_events``):

``mosquitto``      a real mosquitto on a free loopback port (a
                   :class:`~simulator.testkit.Mosquitto`: ``url``, ``kill()``,
                   ``start()`` again on the same port), stopped by PID at teardown;
                   fails the test when mosquitto is not installed
``processes``      a list a test appends the processes it starts to (``Popen`` or
                   anything with ``stop()``); each is stopped by PID at teardown,
                   last started first
``sipp_binary()``  the path of SIPp; fails the test without it (Debian ``sip-tester``, make install)

Factories for anything else, on ``sim_kit``: ``await sim_kit.carrier(...)`` (which
also takes the carrier's scripted-mode options: ``plan=``, ``record_requests=``,
``silent=``, ``sdp=`` — see ``simulator/README.md``),
``await sim_kit.gateway(carrier, cards=..., users=..., policy=..., consent=[...],
dnc=[...])`` (consent and DNC numbers are written into the gateway's store before
it starts), ``await sim_kit.softphone(name, password,
address, ...)``, ``await sim_kit.dialer(...)``. :class:`SimKit` also works without
pytest: ``async with SimKit(tmp_dir) as kit: ...``. ``SimKit(network=LoopNetwork())``
puts the carrier, softphones and dialers on an in-memory network (no sockets;
each peer at ``10.0.0.N:5060``) for fast unit tests of the peers themselves.

The gateway fixture only needs ``gateway.app.serve`` to start and stop: it
works whatever stage the call path is at. Its calling hours default to the
whole day (override with ``policy=``); when ``serve`` accepts a ``clock`` the
kit's business clock is handed over. This module must never bind a fixed
port (5060 included), never leave a peer running after teardown and never
write outside the given directory.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from gateway.transport import Address
from simulator.agents import Dialer, Softphone
from simulator.answer import AnswerProfile
from simulator.antifraud import AntiFraudThresholds
from simulator.carrier import Carrier
from simulator.clock import BusinessClock, FakeClock, ScaledClock
from simulator.models import CardAccount, CarrierConfig, CarrierModel
from simulator.runner import DEFAULT_CARRIER_RULES, InProcessGateway, build_settings, seed_store
from simulator.sipkit import LoopNetwork, UserAgent
from simulator.testkit import Mosquitto, find_sipp, free_port, mosquitto_binary, stop_pid

__all__ = [
    "DEFAULT_START",
    "SimCard",
    "SimKit",
    "SimPeer",
    "SimUser",
    "always_answer",
    "mosquitto",
    "processes",
    "sipp_binary",
]

#: A Monday, 10:00 in Shanghai: inside the default calling hours.
DEFAULT_START = datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


@dataclass(frozen=True, slots=True)
class SimCard:
    """A card: caller number, carrier credentials, pool and priority."""

    id: str
    number: str
    username: str
    password: str
    pool: str = "main"
    priority: int = 1
    quota: str = "default"
    balance: float = float("inf")

    def account(self) -> CardAccount:
        """The carrier-side account."""
        return CardAccount(self.id, self.username, self.password, self.balance)

    def settings(self) -> dict[str, Any]:
        """The gateway ``[[cards]]`` table (without ``carrier``)."""
        return {
            "id": self.id,
            "number": self.number,
            "username": self.username,
            "password": self.password,
            "pool": self.pool,
            "priority": self.priority,
            "quota": self.quota,
        }


@dataclass(frozen=True, slots=True)
class SimUser:
    """A softphone agent (gateway ``[[users]]``)."""

    name: str
    password: str
    card: str | None = None
    campaign: str | None = None

    def settings(self) -> dict[str, Any]:
        """The gateway ``[[users]]`` table."""
        out: dict[str, Any] = {"name": self.name, "password": self.password}
        if self.card is not None:
            out["card"] = self.card
        if self.campaign is not None:
            out["campaign"] = self.campaign
        return out


@dataclass(frozen=True, slots=True)
class SimPeer:
    """A trusted dialer (gateway ``[[peers]]``)."""

    name: str
    password: str
    campaign: str | None = None
    addresses: tuple[str, ...] = ("127.0.0.1/32",)

    def settings(self) -> dict[str, Any]:
        """The gateway ``[[peers]]`` table."""
        out: dict[str, Any] = {
            "name": self.name,
            "password": self.password,
            "addresses": list(self.addresses),
        }
        if self.campaign is not None:
            out["campaign"] = self.campaign
        return out


def always_answer(ring: float = 2.0, talk: float = 10.0) -> AnswerProfile:
    """A deterministic answer profile: every callee answers after ``ring`` and talks ``talk``."""
    return AnswerProfile(
        answer=1.0,
        busy=0.0,
        no_answer=0.0,
        decline=0.0,
        ring_min=ring,
        ring_max=ring,
        talk_mean=talk,
        talk_sigma=0.0,
        talk_min=talk,
        talk_max=talk,
    )


class SimKit:
    """Creates simulated peers on loopback and closes them all (reverse order) on exit."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        clock: BusinessClock | None = None,
        network: LoopNetwork | None = None,
    ):
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dialgate-simkit-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.clock: BusinessClock = clock or ScaledClock(DEFAULT_START, speed=200.0)
        self.network = network
        self._owned: list[UserAgent | InProcessGateway] = []
        self._gateways = 0
        self._hosts = 0

    def _host(self, options: dict[str, Any]) -> None:
        # On an in-memory network every peer gets its own address (10.0.0.N:5060).
        if self.network is not None and "host" not in options:
            self._hosts += 1
            options["host"] = f"10.0.0.{self._hosts}"

    async def _start(self, ua: UserAgent) -> None:
        self._owned.append(ua)
        await ua.start(network=self.network)

    async def __aenter__(self) -> SimKit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every peer and gateway, newest first. Idempotent."""
        while self._owned:
            item = self._owned.pop()
            if isinstance(item, InProcessGateway):
                await item.stop()
            else:
                await item.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def peers(self) -> tuple[UserAgent | InProcessGateway, ...]:
        """Everything this kit started and has not closed yet."""
        return tuple(self._owned)

    # -- factories ---------------------------------------------------------------------

    async def carrier(
        self,
        cards: Sequence[SimCard] = (),
        *,
        model: CarrierModel | None = None,
        config: CarrierConfig | None = None,
        answer: AnswerProfile | None = None,
        thresholds: AntiFraudThresholds | None = None,
        rate_per_minute: float = 0.0,
        timezone: str = "Asia/Shanghai",
        seed: int | str = 0,
        consented: Iterable[str] = (),
        auth: int | None = 401,
        require_register: bool = False,
        clock: BusinessClock | None = None,
        **options: Any,
    ) -> Carrier:
        """A started carrier. Give a ``model``, or ``cards`` (+ config / answer / thresholds)."""
        if model is None:
            if config is None:
                config = CarrierConfig(
                    timezone=timezone,
                    answer=answer or always_answer(),
                    thresholds=thresholds or AntiFraudThresholds(),
                    rate_per_minute=rate_per_minute,
                )
            model = CarrierModel(
                config, [c.account() for c in cards], seed=seed, consented=consented
            )
        numbers = {c.number: c.id for c in cards}
        numbers.update(options.pop("numbers", {}))
        self._host(options)
        carrier = Carrier(
            model,
            clock=clock or self.clock,
            auth=auth,
            require_register=require_register,
            numbers=numbers,
            **options,
        )
        await self._start(carrier)
        return carrier

    async def gateway(
        self,
        carrier: Carrier | str,
        *,
        cards: Sequence[SimCard] = (),
        users: Sequence[SimUser] = (),
        peers: Sequence[SimPeer] = (),
        policy: Mapping[str, Any] | None = None,
        quota_profiles: Mapping[str, Mapping[str, Any]] | None = None,
        rules: Sequence[Mapping[str, Any]] = DEFAULT_CARRIER_RULES,
        inbound: Mapping[str, Any] | None = None,
        carrier_timezone: str = "Asia/Shanghai",
        listen: Sequence[str] = ("udp:127.0.0.1:0",),
        extra: Mapping[str, Any] | None = None,
        clock: BusinessClock | None = None,
        consent: Iterable[str] = (),
        dnc: Iterable[str] = (),
    ) -> InProcessGateway:
        """A started in-process dialgate whose carrier trunk is ``carrier`` (or an address spec).

        The gateway always listens on real loopback sockets (``serve`` binds
        them), so it cannot join a kit's in-memory network.

        Calling hours default to the whole day (``00:00-24:00``) so a test does
        not depend on the wall clock while ``serve`` keeps real time; pass
        ``policy={"calling_hours": ...}`` to test them. ``consent`` and ``dnc``
        numbers are written into the gateway's store before it starts.
        """
        if self.network is not None:
            raise RuntimeError("the gateway binds real sockets: use a kit without a network")
        policy = {"calling_hours": "00:00-24:00", **(policy or {})}
        self._gateways += 1
        store = self.workdir / f"gateway-{self._gateways}" / "dialgate.db"
        store.parent.mkdir(parents=True, exist_ok=True)
        settings = build_settings(
            carrier_address=carrier.address_spec if isinstance(carrier, Carrier) else carrier,
            cards=[c.settings() for c in cards],
            users=[u.settings() for u in users],
            peers=[p.settings() for p in peers],
            store_path=store,
            listen=listen,
            carrier_timezone=carrier_timezone,
            carrier_rules=rules,
            policy=policy,
            quota_profiles=quota_profiles,
            inbound=inbound,
            extra=extra,
        )
        consent, dnc = list(consent), list(dnc)
        if consent or dnc:
            # Granted a day before both business time and real time.
            granted = min(self.clock.now(), time.time()) - 86400.0
            seed_store(settings, consent=consent, dnc=dnc, now=granted)
        gateway = InProcessGateway(settings, clock=clock or self.clock)
        self._owned.append(gateway)
        await gateway.start()
        return gateway

    async def softphone(
        self, name: str, password: str, address: Address, **options: Any
    ) -> Softphone:
        """A started softphone pointing at ``address`` (not registered yet)."""
        options.setdefault("clock", self.clock)
        self._host(options)
        phone = Softphone(name, password, address, **options)
        await self._start(phone)
        return phone

    async def dialer(self, name: str, password: str, address: Address, **options: Any) -> Dialer:
        """A started dialer pointing at ``address``."""
        options.setdefault("clock", self.clock)
        self._host(options)
        dialer = Dialer(name, password, address, **options)
        await self._start(dialer)
        return dialer


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def sim_start() -> datetime:
    """Where business time starts: Monday 2026-03-02 10:00 Asia/Shanghai."""
    return DEFAULT_START


@pytest.fixture
def sim_speed() -> float:
    """Business seconds per real second for the shared clock."""
    return 200.0


@pytest.fixture
def sim_clock(sim_start: datetime, sim_speed: float) -> ScaledClock:
    """The business clock shared by the carrier, the agents and the gateway."""
    return ScaledClock(sim_start, speed=sim_speed)


@pytest.fixture
def fake_clock(sim_start: datetime) -> FakeClock:
    """A clock that only moves on ``advance()`` (pure-model unit tests)."""
    return FakeClock(sim_start)


@pytest.fixture
def sim_cards() -> list[SimCard]:
    """Two cards in pool ``main``."""
    return [
        SimCard("c1", "+8613800000001", "c1", "card-secret-1", priority=1),
        SimCard("c2", "+8613800000002", "c2", "card-secret-2", priority=2),
    ]


@pytest.fixture
def sim_users() -> list[SimUser]:
    """Agents: ``alice`` bound to ``c1``, ``bob`` unbound."""
    return [SimUser("alice", "alice-pw", card="c1"), SimUser("bob", "bob-pw")]


@pytest.fixture
def sim_peers() -> list[SimPeer]:
    """One trusted dialer."""
    return [SimPeer("dialer-1", "dialer-pw", campaign="spring-promo")]


@pytest.fixture
def sim_answer() -> AnswerProfile:
    """The carrier's callee behaviour: always answer, ring 2 s, talk 10 s."""
    return always_answer()


@pytest_asyncio.fixture
async def sim_kit(tmp_path: Path, sim_clock: ScaledClock) -> AsyncIterator[SimKit]:
    """The kit that owns every simulated peer of the test; closes them all at teardown."""
    kit = SimKit(tmp_path, clock=sim_clock)
    try:
        yield kit
    finally:
        await kit.close()


@pytest_asyncio.fixture
async def carrier(sim_kit: SimKit, sim_cards: list[SimCard], sim_answer: AnswerProfile) -> Carrier:
    """A started carrier with accounts for ``sim_cards`` (digest 401)."""
    return await sim_kit.carrier(sim_cards, answer=sim_answer)


@pytest_asyncio.fixture
async def gateway(
    sim_kit: SimKit,
    carrier: Carrier,
    sim_cards: list[SimCard],
    sim_users: list[SimUser],
    sim_peers: list[SimPeer],
) -> InProcessGateway:
    """An in-process dialgate wired to ``carrier`` with the fixture cards, users and peers."""
    return await sim_kit.gateway(carrier, cards=sim_cards, users=sim_users, peers=sim_peers)


@pytest.fixture
def gateway_address(gateway: InProcessGateway) -> Address:
    """The gateway's UDP ``(host, port)``."""
    return gateway.address("udp")


@pytest_asyncio.fixture
async def softphone(
    sim_kit: SimKit, gateway_address: Address, sim_users: list[SimUser]
) -> Softphone:
    """A started softphone for the first user, pointing at the gateway (not registered)."""
    user = sim_users[0]
    return await sim_kit.softphone(user.name, user.password, gateway_address)


@pytest_asyncio.fixture
async def dialer(sim_kit: SimKit, gateway_address: Address, sim_peers: list[SimPeer]) -> Dialer:
    """A started dialer for the first peer, pointing at the gateway."""
    peer = sim_peers[0]
    return await sim_kit.dialer(peer.name, peer.password, gateway_address, campaign=peer.campaign)


# --- processes ---------------------------------------------------------------------------


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free loopback port, stopped (by PID) after the test."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed (make install, or apt-get install mosquitto)")
    broker = Mosquitto(binary, tmp_path / "mosquitto", free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Processes a test started (``Popen`` or with ``stop()``); each stopped by PID at teardown."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            if isinstance(p, subprocess.Popen):
                stop_pid(p)
            else:
                p.stop()


def sipp_binary() -> str:
    """Path of ``sipp`` (Debian package ``sip-tester``); the test fails without it.

    ``make test`` installs it (scripts/install-system-deps.sh): a missing SIPp is a broken
    set-up to repair, not a test to skip silently.
    """
    path = find_sipp()
    if path is None:
        pytest.fail("sipp (Debian package sip-tester) is not installed: run `make install`")
    return path
