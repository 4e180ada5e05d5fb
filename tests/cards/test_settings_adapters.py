"""From a TOML configuration to a working CardManager, store and quota headroom."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cards import (
    CardManager,
    SuspendReason,
    card_defs_from_settings,
    make_headroom,
    probation_profiles_from_settings,
    quota_profiles_from_settings,
    rules_from_settings,
)
from gateway.config import load_settings
from gateway.store import QuotaExceeded, store_from_settings
from policies.quotas import Exhausted, Headroom, QuotaLimit

T0 = 1_700_000_000.0

TOML = """
[store]
path = "var/test.db"

[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:5070"
timezone = "Asia/Shanghai"
  [[carriers.rules]]
  status = 403
  match = "(?i)suspend|blocked"
  reason = "violation"

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
"""


def test_configuration_drives_cards_rules_store_and_quotas(tmp_path: Path) -> None:
    """Rules, card order, the carrier's timezone and quota profiles all come from the file."""
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(TOML, encoding="utf-8")
    settings = load_settings(cfg)

    store = store_from_settings(settings, base_dir=tmp_path)
    assert (tmp_path / "var" / "test.db").exists()
    assert {"carrier-a": "Asia/Shanghai"} == store.carrier_timezones

    manager = CardManager(store, rules=rules_from_settings(settings))
    manager.load(card_defs_from_settings(settings), T0)
    assert ["c1", "c2"] == [c.id for c in manager.cards("main")]

    profiles = quota_profiles_from_settings(settings)
    assert "21:00-08:00" == profiles["default"].night_window
    assert {"default": "careful"} == probation_profiles_from_settings(settings)

    headroom = make_headroom(
        store,
        profiles=profiles,
        timezones=store.carrier_timezones,
        probation_of=probation_profiles_from_settings(settings),
    )
    # T0 is 06:13 in Shanghai: inside the night window, no card may call.
    night = manager.select("main", now=T0, headroom=headroom)
    assert None is night.card
    assert "quota:night_window" == night.skipped["c1"]
    day = T0 + 3 * 3600  # 09:13 Shanghai
    assert isinstance(headroom(manager.get("c1"), day), Headroom)
    chosen = manager.select("main", now=day, headroom=headroom).card
    assert chosen is not None and "c1" == chosen.id
    store.reserve("c1", "k1", "+8613811110001", day, profile=profiles["default"])
    answer = headroom(manager.get("c1"), day + 1)
    assert isinstance(answer, Exhausted) and QuotaLimit.CONCURRENT == answer.limit
    second = manager.select("main", now=day + 1, headroom=headroom).card
    assert second is not None and "c2" == second.id
    with pytest.raises(QuotaExceeded) as info:
        store.reserve("c1", "k2", "+8613811110002", day + 1, profile=profiles["default"])
    assert QuotaLimit.CONCURRENT == info.value.exhausted.limit

    verdict = manager.on_response("c1", 403, "Number blocked", now=day + 2)
    assert SuspendReason.VIOLATION == verdict.marked
    store.close()
