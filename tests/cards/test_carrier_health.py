"""Carrier health state machine (ACTIVE / TRYING / INACTIVE / PROBING) with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cards.health import (
    CarrierHealth,
    LineState,
    SendOptions,
    health_from_settings,
    is_ok_reply,
)
from gateway.config import load_settings

T0 = 1_000.0
L = LineState


class Clock:
    """A fake clock that drives the health core by its own timer."""

    def __init__(self, health: CarrierHealth) -> None:
        self.health = health
        self.now = T0

    def ping(self, ok: bool | None) -> SendOptions:
        """Advance to the next timer, take the ping sent, answer it (None: no answer)."""
        while True:
            timer = self.health.get_timer()
            assert timer is not None
            self.now = max(self.now, timer)
            actions = self.health.handle_timer(self.now)
            if actions:
                break
        [action] = actions
        if ok is not None:
            self.health.on_result(action.carrier, ok, now=self.now + 0.05, seq=action.seq)
        return action


@pytest.fixture
def health() -> CarrierHealth:
    """Health with N=3 failures to go down and M=2 successes to come back."""
    h = CarrierHealth(interval=30, failure_threshold=3, success_threshold=2, timeout=5)
    h.add("carrier-a", now=T0)
    return h


def test_full_cycle_through_all_four_states(health: CarrierHealth) -> None:
    """active → trying → inactive → probing → inactive → probing → active."""
    clock = Clock(health)
    seen = [health.state("carrier-a")]
    for ok in (True, False, False, False, True, False, True, True):
        clock.ping(ok)
        seen.append(health.state("carrier-a"))
    assert [
        L.ACTIVE,
        L.ACTIVE,
        L.TRYING,
        L.TRYING,
        L.INACTIVE,
        L.PROBING,
        L.INACTIVE,
        L.PROBING,
        L.ACTIVE,
    ] == seen
    changes = [(e.from_state, e.to_state) for e in health.drain_events()]
    assert [
        (L.ACTIVE, L.TRYING),
        (L.TRYING, L.INACTIVE),
        (L.INACTIVE, L.PROBING),
        (L.PROBING, L.INACTIVE),
        (L.INACTIVE, L.PROBING),
        (L.PROBING, L.ACTIVE),
    ] == changes


def test_availability_by_state(health: CarrierHealth) -> None:
    """TRYING still carries calls; INACTIVE and PROBING do not."""
    clock = Clock(health)
    clock.ping(False)
    assert (L.TRYING, True) == (health.state("carrier-a"), health.is_available("carrier-a"))
    clock.ping(False)
    clock.ping(False)
    assert (L.INACTIVE, False) == (health.state("carrier-a"), health.is_available("carrier-a"))
    clock.ping(True)
    assert (L.PROBING, False) == (health.state("carrier-a"), health.is_available("carrier-a"))


def test_one_success_in_trying_is_enough(health: CarrierHealth) -> None:
    """A single lost ping does not accumulate: success resets the failure count."""
    clock = Clock(health)
    clock.ping(False)
    clock.ping(False)
    clock.ping(True)
    clock.ping(False)
    clock.ping(False)
    assert L.TRYING == health.state("carrier-a")


def test_timeout_counts_as_failure(health: CarrierHealth) -> None:
    """A ping with no reply within the timeout is a failure, without any on_result call."""
    clock = Clock(health)
    first = clock.ping(None)
    assert first.at + 5 == health.get_timer()
    assert [] == health.handle_timer(first.at + 4.9)
    assert L.ACTIVE == health.state("carrier-a")
    health.handle_timer(first.at + 5)
    assert L.TRYING == health.state("carrier-a")
    # A reply to the timed-out ping arriving late is ignored (already counted).
    assert None is health.on_result("carrier-a", True, now=first.at + 6, seq=first.seq)
    assert L.TRYING == health.state("carrier-a")


def test_ping_schedule_follows_interval(health: CarrierHealth) -> None:
    """The first ping is due at once, the next one interval seconds later."""
    assert T0 == health.get_timer()
    [ping] = health.handle_timer(T0)
    assert ("carrier-a", T0) == (ping.carrier, ping.at)
    health.on_result("carrier-a", True, now=T0 + 0.1, seq=ping.seq)
    assert T0 + 30 == health.get_timer()
    assert [] == health.handle_timer(T0 + 29)
    assert 1 == len(health.handle_timer(T0 + 30))


def test_probe_interval_applies_while_down() -> None:
    """A down carrier is probed on probe_interval instead of interval."""
    h = CarrierHealth(interval=30, failure_threshold=1, success_threshold=1, probe_interval=5)
    h.add("c", now=T0)
    [ping] = h.handle_timer(T0)
    h.on_result("c", False, now=T0 + 0.1, seq=ping.seq)
    assert L.INACTIVE == h.state("c")
    assert T0 + 5 == h.get_timer()
    [ping] = h.handle_timer(T0 + 5)
    h.on_result("c", False, now=T0 + 5.1, seq=ping.seq)
    assert T0 + 10 == h.get_timer()
    [ping] = h.handle_timer(T0 + 10)
    h.on_result("c", True, now=T0 + 10.1, seq=ping.seq)
    assert L.ACTIVE == h.state("c")
    assert T0 + 40 == h.get_timer()  # back on the normal interval


def test_unknown_carrier_is_assumed_up() -> None:
    """Fail open: a carrier without probing is available."""
    h = CarrierHealth()
    assert (L.ACTIVE, True) == (h.state("nobody"), h.is_available("nobody"))
    assert None is h.on_result("nobody", False, now=T0)
    assert None is h.get_timer()


def test_reply_codes() -> None:
    """Any 2xx means alive; other codes only when listed as acceptable."""
    assert is_ok_reply(200)
    assert not is_ok_reply(404)
    assert is_ok_reply(404, extra_ok=[403, 404])


def test_on_reply_uses_status(health: CarrierHealth) -> None:
    """on_reply maps an OPTIONS status to success or failure."""
    [ping] = health.handle_timer(T0)
    change = health.on_reply("carrier-a", 503, now=T0 + 0.1, seq=ping.seq)
    assert change is not None
    assert ("reply:503", L.TRYING) == (change.cause, change.to_state)


def test_invalid_thresholds_are_rejected() -> None:
    """Thresholds below one would make the state machine meaningless."""
    with pytest.raises(ValueError):
        CarrierHealth(failure_threshold=0)
    with pytest.raises(ValueError):
        CarrierHealth(interval=0)


def test_selection_skips_cards_of_inactive_carrier(health: CarrierHealth) -> None:
    """Wired together, an INACTIVE carrier's cards drop out of card selection."""
    from datetime import UTC, datetime

    from gateway.cards import CardDef, CardManager, StoreCardSource
    from gateway.store.memory import MemoryStore
    from policies.context import CallContext
    from policies.quotas import QuotaProfile
    from policies.selection import CardSelection

    m = CardManager(carrier_available=health.is_available)
    m.load(
        [
            CardDef("a1", "carrier-a", "+8613800000011", "p", 1),
            CardDef("b1", "carrier-b", "+8613800000012", "p", 2),
        ],
        T0,
    )
    ledger = MemoryStore()
    source = StoreCardSource(
        m,
        ledger,
        profiles={"default": QuotaProfile(name="default")},
        timezones={},
        default_pool="p",
    )

    def pick(now: float) -> str | None:
        moment = datetime.fromtimestamp(now, UTC)
        ctx = CallContext(
            dialled="+8613811110001",
            agent="alice",
            campaign=None,
            default_region="CN",
            now=moment,
            destination="+8613811110001",
            call_id=f"k{now}",
        )
        decision = CardSelection(source)(ctx, moment)
        return decision.card_id

    clock = Clock(health)
    for _ in range(3):
        clock.ping(False)
    assert "b1" == pick(clock.now)
    clock.ping(True)
    clock.ping(True)
    assert "a1" == pick(clock.now)
    ledger.close()


def test_health_from_settings_probes_configured_carriers(tmp_path: Path) -> None:
    """Carriers with an options_interval are probed on it; the others are assumed up."""
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(
        '[policy]\nconsent = "dnc-only"\n'
        "[[carriers]]\n"
        'name = "a"\naddress = "udp:127.0.0.1:5070"\noptions_interval = 10\n'
        "[[carriers]]\n"
        'name = "b"\naddress = "udp:127.0.0.1:5071"\n',
        encoding="utf-8",
    )
    loaded = load_settings(cfg)
    a, b = loaded.carriers
    settings = loaded.model_copy(
        update={"carriers": [a, b.model_copy(update={"options_interval": None})]}
    )
    health = health_from_settings(settings, now=T0)
    assert {"a": L.ACTIVE} == health.carriers()
    [ping] = health.handle_timer(T0)
    health.on_result("a", True, now=T0 + 0.1, seq=ping.seq)
    assert T0 + 10 == health.get_timer()
