"""Carrier health (OPTIONS pings) and card REGISTER driven from asyncio."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.callpath.element import Gateway
from gateway.cards import (
    CardManager,
    CardState,
    StoreCardSource,
    SuspendReason,
    card_defs_from_settings,
    quota_profiles_from_settings,
)
from gateway.cards.health import CarrierHealth, LineState
from gateway.cards.runner import HealthRunner
from gateway.store import SQLiteStore, ledger_from_settings
from gateway.transport.endpoint import SipEndpoint
from policies.context import build_context
from policies.selection import CardSelection
from simulator.testkit import eventually
from tests.callpath.conftest import FAST, Carrier, gateway_settings


async def test_unanswered_pings_take_the_carrier_down_and_its_cards_out(tmp_path: Path) -> None:
    """A carrier that never answers OPTIONS goes INACTIVE; CardManager then skips its cards."""
    carrier = Carrier(silent=True)  # records every request, answers none
    await carrier.start()
    settings = gateway_settings(carrier.address, tmp_path / "x.db")
    endpoint = SipEndpoint(lambda sr: None, timers=FAST)
    await endpoint.listen("udp", "127.0.0.1", 0)
    health = CarrierHealth(interval=0.1, failure_threshold=2, timeout=0.2)
    cards = CardManager(carrier_available=health.is_available)
    cards.load(card_defs_from_settings(settings), 0.0)
    runner = HealthRunner(endpoint, settings, health, cards)
    health.add("carrier-a", now=runner.clock(), interval=0.1)
    runner.start()
    try:
        await eventually(lambda: health.state("carrier-a") is LineState.INACTIVE, 5)
        first = carrier.requests[0]
        assert ("OPTIONS", "sip") == (first.method, first.uri.scheme)
        now = runner.clock()
        store = SQLiteStore(tmp_path / "s.db")
        source = StoreCardSource(
            cards,
            ledger_from_settings(settings, store, node="gw1"),
            profiles=quota_profiles_from_settings(settings),
            timezones={c.name: c.timezone for c in settings.carriers},
        )
        context = build_context(
            "13912345678",
            agent="alice",
            campaign=None,
            default_region="CN",
            now=datetime.fromtimestamp(now, UTC),
        )
        decision = CardSelection(source)(context, datetime.fromtimestamp(now, UTC))
        assert decision.card_id is None
        assert "c1 unavailable carrier down; c2 unavailable carrier down" == decision.detail
        store.close()
    finally:
        await runner.stop()
        await endpoint.close()
        await carrier.close()


async def test_answered_pings_keep_the_carrier_active(carrier: Carrier, tmp_path: Path) -> None:
    """A carrier answering 200 to OPTIONS stays ACTIVE and its pings are counted as OK."""
    settings = gateway_settings(carrier.address, tmp_path / "x.db")
    endpoint = SipEndpoint(lambda sr: None, timers=FAST)
    await endpoint.listen("udp", "127.0.0.1", 0)
    health = CarrierHealth(interval=0.1, failure_threshold=1, timeout=1.0)
    cards = CardManager(carrier_available=health.is_available)
    runner = HealthRunner(endpoint, settings, health, cards)
    health.add("carrier-a", now=runner.clock(), interval=0.1)
    runner.start()
    try:
        await eventually(lambda: carrier.methods().count("OPTIONS") >= 3, 5)
        assert LineState.ACTIVE == health.state("carrier-a")
    finally:
        await runner.stop()
        await endpoint.close()


async def test_card_register_refused_suspends_the_card(tmp_path: Path) -> None:
    """register = true: c1's REGISTER answered 403 Card Suspended marks c1; c2 registers."""
    carrier = Carrier(register_expires=300)
    await carrier.start()
    carrier.sim.suspend("c1")  # the carrier's operator: c1's REGISTER gets 403 Card Suspended
    base = gateway_settings(carrier.address, tmp_path / "gw.db")
    carriers = [c.model_dump(by_alias=True) for c in base.carriers]
    carriers[0]["register"] = True
    carriers[0]["address"] = f"udp:{carrier.address[0]}:{carrier.address[1]}"
    settings = gateway_settings(carrier.address, tmp_path / "gw.db", extra={"carriers": carriers})
    gw = Gateway(settings)
    await gw.start()
    try:
        await eventually(lambda: gw.health is not None and "c2" in gw.health.registered, 5)
        assert 300 == gw.health.registered["c2"]  # type: ignore[union-attr]
        c1 = gw.b2bua.services.cards.get("c1")  # type: ignore[union-attr]
        await eventually(lambda: c1.state is CardState.SUSPENDED, 5)
        assert SuspendReason.VIOLATION == c1.reason
        assert (403, 200) == tuple(
            next(status for _t, user, status in carrier.sim.register_log if user == card)
            for card in ("c1", "c2")
        )
    finally:
        await gw.close()
        await carrier.close()
