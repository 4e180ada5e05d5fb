"""Fixtures for the operator tests: a configuration file, a store, an operator, a clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings, load_settings
from gateway.operator.service import Operator, operator_from_settings
from gateway.store import SQLiteStore, store_from_settings
from gateway.telemetry.events import EventBus
from simulator.testkit import capture_events

#: 2026-11-02 00:00:00 UTC — a Monday; tests move time forward from here explicitly.
T0 = 1_793_577_600.0
TOKEN = "op-token-4f9a2c"

CONFIG = """
[store]
path = "{db}"

[policy]
default_region = "CN"
consent = "dnc-only"

[[users]]
name = "alice"
password = "s3cret"
card = "c1"

[[users]]
name = "bob"
password = "s3cret"

[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:5070"
timezone = "Asia/Shanghai"
  [[carriers.rules]]
  status = 403
  match = "(?i)suspend|blocked"
  reason = "violation"

[quota_profiles.default]
calls_per_minute = 5
calls_per_hour = 60
calls_per_day = 300
concurrent = 1
probation = "careful"

[quota_profiles.careful]
calls_per_minute = 1
calls_per_hour = 10
calls_per_day = 20
concurrent = 1

[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
username = "c1"
password = "card-secret"
pool = "main"
priority = 1

[[cards]]
id = "c2"
carrier = "carrier-a"
number = "+8613800000002"
pool = "main"
priority = 2

[admin]
listen = "127.0.0.1:0"
token = "{token}"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A dialgate.toml with two cards, a probation profile, two agents and an admin token."""
    path = tmp_path / "dialgate.toml"
    path.write_text(CONFIG.format(db=tmp_path / "var" / "dialgate.db", token=TOKEN))
    return path


@pytest.fixture
def settings(config_file: Path) -> Settings:
    """The loaded configuration."""
    return load_settings(config_file)


@pytest.fixture
def store(settings: Settings) -> Iterator[SQLiteStore]:
    """The SQLite store named by the configuration."""
    s = store_from_settings(settings)
    yield s
    s.close()


@pytest.fixture
def bus() -> EventBus:
    """An event bus whose events the tests inspect through ``published``."""
    return EventBus()


@pytest.fixture
def published(bus: EventBus) -> Iterator[list[object]]:
    """Every event published on the bus."""
    with capture_events(bus) as seen:
        yield seen


@pytest.fixture
def operator(settings: Settings, store: SQLiteStore, bus: EventBus) -> Iterator[Operator]:
    """An operator with its own card manager loaded at ``T0``."""
    op = operator_from_settings(settings, now=T0, store=store, bus=bus)
    yield op
    op.close()
