"""From a TOML configuration to a working CardManager, store, card source and quota checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cards import (
    CardManager,
    CarrierTerms,
    StoreCardSource,
    SuspendReason,
    card_defs_from_settings,
    probation_profiles_from_settings,
    quota_profiles_from_settings,
    rules_from_settings,
    terms_from_settings,
)
from gateway.config import load_settings
from gateway.store import QuotaExceeded, store_from_settings
from policies.context import CallContext
from policies.quotas import Exhausted, Headroom, QuotaLimit, evaluate_card
from policies.selection import CardSelection

T0 = 1_700_000_000.0

TOML = """
[store]
path = "var/test.db"

[policy]
consent = "dnc-only"

[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:5070"
timezone = "Asia/Shanghai"
suspect_after = 3
suspect_window = 900
rest_seconds = 45
dead_causes = [55, 57]
  [[carriers.rules]]
  status = 403
  match = "(?i)suspend|blocked"
  reason = "violation"

[[carriers]]
name = "carrier-b"
address = "udp:127.0.0.1:5080"

[quota_profiles.default]
calls_per_minute = 2
concurrent = 1
night_window = "21:00-08:00"
probation = "careful"

[quota_profiles.careful]
calls_per_minute = 1
concurrent = 1

[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
password = "card-secret"
pool = "main"
priority = 1

[[cards]]
id = "c2"
carrier = "carrier-a"
number = "+8613800000002"
password = "card-secret"
pool = "main"
priority = 2

[[cards]]
id = "c3"
carrier = "carrier-b"
number = "+8613800000003"
password = "card-secret"
pool = "main"
priority = 3
device = "goip-7"

[[cards]]
id = "c4"
carrier = "carrier-b"
number = "+8613800000004"
password = "card-secret"
pool = "main"
priority = 4
device = "goip-7"
"""


def _ctx(call_id: str, now: float) -> CallContext:
    moment = datetime.fromtimestamp(now, UTC)
    return CallContext(
        dialled="+8613811110001",
        agent="alice",
        campaign=None,
        default_region="CN",
        now=moment,
        destination="+8613811110001",
        call_id=call_id,
    )


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    """The configuration above, written to a file."""
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(TOML, encoding="utf-8")
    return cfg


def test_configuration_drives_cards_rules_store_and_quotas(
    settings_file: Path, tmp_path: Path
) -> None:
    """Rules, card order, the carrier's timezone and quota profiles all come from the file."""
    settings = load_settings(settings_file)
    store = store_from_settings(settings, base_dir=tmp_path)
    assert (tmp_path / "var" / "test.db").exists()
    assert {"carrier-a": "Asia/Shanghai", "carrier-b": "UTC"} == store.carrier_timezones

    manager = CardManager(store, rules=rules_from_settings(settings))
    manager.load(card_defs_from_settings(settings), T0)
    assert ["c1", "c2", "c3", "c4"] == [c.id for c in manager.cards("main")]
    manager.suspend("c3", now=T0)  # keep the Shanghai cards to themselves below
    manager.suspend("c4", now=T0)

    profiles = quota_profiles_from_settings(settings)
    assert "21:00-08:00" == profiles["default"].night_window
    assert {"default": "careful"} == probation_profiles_from_settings(settings)
    source = StoreCardSource(
        manager,
        store,
        profiles=profiles,
        timezones=store.carrier_timezones,
        probation_of=probation_profiles_from_settings(settings),
    )
    pick = CardSelection(source)

    # T0 is 06:13 in Shanghai: inside the night window, no card may call.
    night = pick(_ctx("k0", T0), datetime.fromtimestamp(T0, UTC))
    assert not night.allowed
    assert night.detail.startswith("c1 night_window until 08:00; c2 night_window until 08:00")
    day = T0 + 3 * 3600  # 09:13 Shanghai
    [snap] = source.snapshots(["c1"], day)
    assert isinstance(evaluate_card(snap, day, "+8613811110001"), Headroom)
    first = pick(_ctx("k1", day), datetime.fromtimestamp(day, UTC))
    assert (True, "c1") == (first.allowed, first.card_id)
    assert [("k1", "c1")] == store.open_reservations()
    [snap] = source.snapshots(["c1"], day + 1)
    answer = evaluate_card(snap, day + 1, "+8613811110002")
    assert isinstance(answer, Exhausted) and QuotaLimit.CONCURRENT == answer.limit
    second = pick(_ctx("k2", day + 1), datetime.fromtimestamp(day + 1, UTC))
    assert "c2" == second.card_id
    with pytest.raises(QuotaExceeded) as info:
        store.reserve("c1", "k3", "+8613811110002", day + 1, profile=profiles["default"])
    assert QuotaLimit.CONCURRENT == info.value.exhausted.limit

    verdict = manager.on_response("c1", 403, "Number blocked", now=day + 2)
    assert SuspendReason.VIOLATION == verdict.marked
    store.close()


def test_carrier_terms_and_devices_come_from_the_file(settings_file: Path) -> None:
    """suspect_*, rest_seconds and dead_causes per carrier; a card's device or its trunk."""
    settings = load_settings(settings_file)
    terms = terms_from_settings(settings)
    assert CarrierTerms(frozenset({55, 57}), 45.0, 3, 900.0) == terms["carrier-a"]
    assert CarrierTerms() == terms["carrier-b"]
    defs = {d.id: d for d in card_defs_from_settings(settings)}
    assert "trunk:udp:127.0.0.1:5070" == defs["c1"].device == defs["c2"].device
    assert "goip-7" == defs["c3"].device == defs["c4"].device

    manager = CardManager(terms=terms)
    manager.load(defs.values(), T0)
    # Cards without a device share their carrier's trunk; a device groups its SIMs.
    assert {"c1", "c2"} == manager.sharing("c1")
    assert {"c3", "c4"} == manager.sharing("c4")
    verdict = manager.on_response("c2", 403, "Forbidden", reason_header="Q.850;cause=55", now=T0)
    assert ("dead-cause", SuspendReason.UNKNOWN, True) == (
        verdict.row,
        verdict.marked,
        verdict.failover,
    )
    rest = manager.on_fault("c1", "timer-b", now=T0, callee="+8613811110001")
    assert T0 + 45 == rest.rest_until
