"""Redis mode: the operator (CLI, admin API) reads usage and card states from the shared store.

Two gateway instances are two SQLite files with a ``MirroredLedger`` each on
one real redis-server (what ``dialgate run`` builds with ``[store] redis``).
Each takes 5 of the card's 10 calls a day; ``dialgate cards show --json``
and ``GET /cards/c1`` from either instance must report 10/10 used and the
same state — not the 5/10 that each instance's own SQLite file holds.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

import gateway.cli.main
from gateway.config import Settings, load_settings
from gateway.operator.api import build_admin_app
from gateway.operator.service import operator_from_settings
from gateway.store import SQLiteStore, store_from_settings
from gateway.store.redis import MirroredLedger, ledger_from_settings

from .conftest import RedisServer

TOKEN = "operator-token-123456"


def config(tmp_path: Path, name: str, redis_url: str) -> Path:
    """One instance's configuration: its own SQLite file, the shared Redis."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / name}.db"\nredis = "{redis_url}"\n'
        '[policy]\nconsent = "dnc-only"\n'
        f'[admin]\ntoken = "{TOKEN}"\n'
        "[quota_profiles.ten]\ncalls_per_day = 10\ncalls_per_hour = 100\n"
        "calls_per_minute = 100\nconcurrent = 10\ndistinct_callees_per_day = 20\n"
        '[[carriers]]\nname = "carrier-a"\naddress = "udp:127.0.0.1:5070"\n'
        'timezone = "UTC"\n'
        '[[cards]]\nid = "c1"\ncarrier = "carrier-a"\nnumber = "+8613800000001"\n'
        'password = "x"\nquota = "ten"\n'
    )
    return path


class Instance:
    """One gateway's stores: its SQLite file and its ledger over the shared Redis."""

    def __init__(self, cfg: Path, node: str) -> None:
        self.cfg = cfg
        self.settings: Settings = load_settings(cfg)
        self.store: SQLiteStore = store_from_settings(self.settings)
        ledger = ledger_from_settings(self.settings, self.store, node=node)
        assert isinstance(ledger, MirroredLedger)
        self.ledger = ledger
        self.ledger.recover(time.time())

    def take_calls(self, count: int, first: int, now: float) -> None:
        """``count`` answered calls on c1 to distinct callees."""
        for i in range(first, first + count):
            call_id = f"{self.ledger.shared.node}-{i}"
            self.ledger.reserve("c1", call_id, f"+86139{i:08d}", now)
            self.ledger.finish(call_id, now + 1, answered=True, talk_seconds=30.0)

    def close(self) -> None:
        self.ledger.close()
        self.store.close()


@pytest.fixture
def instances(tmp_path: Path, private_redis: RedisServer) -> Iterator[list[Instance]]:
    """Two instances on one Redis, 5 calls each on card c1."""
    now = time.time() - 60
    pair = [
        Instance(config(tmp_path, "gwa", private_redis.url), "gwa"),
        Instance(config(tmp_path, "gwb", private_redis.url), "gwb"),
    ]
    pair[0].take_calls(5, 0, now)
    pair[1].take_calls(5, 100, now)
    yield pair
    for inst in pair:
        inst.close()


@pytest.fixture(autouse=True)
def operator_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator commands registered on a copy of the CLI registry (as tests/operator)."""
    monkeypatch.setattr("gateway.cli.base.COMMANDS", dict(gateway.cli.main.COMMANDS))
    if "cards list" not in gateway.cli.main.COMMANDS:
        module = sys.modules.get("gateway.cli.operator")
        if module is None:
            importlib.import_module("gateway.cli.operator")
        else:
            importlib.reload(module)


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code = gateway.cli.main.main(list(argv))
    out, err = capsys.readouterr()
    assert 0 == code, err
    return json.loads(out)


def test_each_sqlite_file_holds_only_its_own_half(instances: list[Instance]) -> None:
    """The premise: the instances' own files each count 5 calls; Redis counts 10."""
    now = time.time()
    for inst in instances:
        assert 5 == len(inst.store.card_usage("c1", now).call_starts)
        assert 10 == len(inst.ledger.card_usage("c1", now).call_starts)


def test_cards_show_from_either_instance_reports_the_combined_usage(
    instances: list[Instance], capsys: pytest.CaptureFixture[str]
) -> None:
    """``cards show --json`` and ``cards list --json`` read Redis: 10/10, exhausted, same state."""
    for inst in instances:
        shown = cli_json(capsys, "cards", "show", "c1", "--config", str(inst.cfg), "--json")
        assert isinstance(shown, dict)
        day = shown["usage"]["calls_per_day"]
        assert (10, 10) == (day["used"], day["limit"]), day
        assert 10 == shown["usage"]["distinct_callees_per_day"]["used"]
        assert "active" == shown["state"]
        listed = cli_json(capsys, "cards", "list", "--config", str(inst.cfg), "--json")
        assert isinstance(listed, list)
        assert 10 == listed[0]["usage"]["calls_per_day"]["used"]


def test_a_state_set_on_one_instance_is_what_the_other_shows(
    instances: list[Instance], capsys: pytest.CaptureFixture[str]
) -> None:
    """Suspended through gwa's CLI: gwb's CLI (its SQLite never saw it) shows it suspended."""
    a, b = instances
    code = gateway.cli.main.main(
        ["cards", "suspend", "c1", "--reason", "arrears", "--config", str(a.cfg)]
    )
    capsys.readouterr()
    assert 0 == code
    shown = cli_json(capsys, "cards", "show", "c1", "--config", str(b.cfg), "--json")
    assert isinstance(shown, dict)
    assert ("suspended", "arrears") == (shown["state"], shown["reason"])
    assert not b.store.transitions("c1")  # gwb's own file knows nothing of it


async def test_admin_api_reports_the_combined_usage(instances: list[Instance]) -> None:
    """``GET /cards/c1`` on a stand-alone admin server of either instance: 10 used of 10."""
    for inst in instances:
        op = operator_from_settings(inst.settings, now=time.time(), store=inst.store)
        app = build_admin_app(inst.settings, inst.store, operator=op)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.get("/cards/c1", headers={"Authorization": f"Bearer {TOKEN}"})
            assert 200 == resp.status, await resp.text()
            body = await resp.json()
        op.close()
        assert 10 == body["usage"]["calls_per_day"]["used"]
