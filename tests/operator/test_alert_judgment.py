"""Alerts with judgment (issue 13 item 5): `dialgate alerts check` and the gateway agree.

The CLI (``Operator.check_alerts``) and the running gateway's bus subscriber
(``AlertWatch`` on the card states the status loop publishes) run the one alert
engine of ``gateway.telemetry.events``: for the same usage they raise the same alerts.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import pytest

import gateway.cli.main
from gateway.config import load_settings
from gateway.operator.service import operator_from_settings
from gateway.store import SQLiteStore, store_from_settings
from gateway.telemetry.alerts import AlertWatch
from gateway.telemetry.events import Alert, AlertKind, Event, EventBus

from .conftest import CONFIG, T0, TOKEN

#: The default profile also guards the carrier's risk model (answer rate, short calls).
RISK_CONFIG = CONFIG.replace(
    'concurrent = 1\nprobation = "careful"',
    'concurrent = 1\nanswer_rate_floor = 0.18\nshort_call_ceiling = 0.5\nmin_sample = 10\nprobation = "careful"',
)


@pytest.fixture
def risk_config(tmp_path: Path) -> Path:
    """A dialgate.toml whose default profile has an answer-rate floor and short-call ceiling."""
    path = tmp_path / "dialgate.toml"
    path.write_text(RISK_CONFIG.format(db=tmp_path / "var" / "dialgate.db", token=TOKEN))
    return path


@pytest.fixture(autouse=True)
def operator_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator commands registered on a copy of the CLI registry (as tests/operator/test_cli)."""
    monkeypatch.setattr("gateway.cli.base.COMMANDS", dict(gateway.cli.main.COMMANDS))
    if "alerts check" not in gateway.cli.main.COMMANDS:
        module = sys.modules.get("gateway.cli.operator")
        if module is None:
            importlib.import_module("gateway.cli.operator")
        else:
            importlib.reload(module)


def _busy_card(store: SQLiteStore, start: float) -> None:
    """c1: 12 calls, 2 answered (one short), the last still up; c2: 3 calls in a minute."""
    for i in range(12):
        store.reserve("c1", f"a{i}", f"+86139000010{i:02d}", start + i * 120, agent="alice")
        if i < 11:
            answered = i in (0, 5)
            talk = 5.0 if i == 0 else 60.0
            store.finish(
                f"a{i}",
                start + i * 120 + 90,
                answered=answered,
                talk_seconds=talk if answered else 0,
            )
    for i in range(4):
        store.reserve("c2", f"b{i}", f"+86139000020{i:02d}", start + 1400 + i * 5)
        store.finish(f"b{i}", start + 1402 + i * 5, answered=False)


def _key(alert: Alert) -> tuple[str, str | None, str | None, str]:
    return (alert.kind.value, alert.card, alert.reason, alert.message)


def test_cli_and_gateway_raise_the_same_alerts_for_the_same_usage(risk_config: Path) -> None:
    """Same store, same instant: Operator.check_alerts == AlertWatch over the published states."""
    settings = load_settings(risk_config)
    store = store_from_settings(settings)
    try:
        _busy_card(store, T0)
        now = T0 + 1430
        cli = operator_from_settings(settings, now=now, store=store)
        from_cli = cli.check_alerts(now)

        bus = EventBus()
        got: list[Event] = []
        bus.subscribe(AlertWatch(bus.publish))
        bus.subscribe(got.append)
        gw = operator_from_settings(settings, now=now, store=store)
        for card in gw.manager.cards():  # what the gateway's status loop publishes
            status = gw.status(card.id, now)
            assert status is not None
            bus.publish(status)
        from_gateway = [e for e in got if isinstance(e, Alert)]
        cli.close()
        gw.close()
    finally:
        store.close()
    assert sorted(map(_key, from_cli)) == sorted(map(_key, from_gateway))
    kinds = sorted((a.card or "", a.kind, a.reason or "") for a in from_cli)
    assert [
        ("c1", AlertKind.CARD_AT_RISK, "answer_rate"),  # 2/11 = 0.18: at the floor
        ("c2", AlertKind.QUOTA_NEAR, "calls_per_minute"),  # 4 of 5 in a minute
    ] == kinds
    # c1 is at concurrent 1/1 with a call up: no quota-near for that.
    assert not any(a.reason == "concurrent" for a in from_cli + from_gateway)


def test_check_alerts_has_hysteresis_and_ignores_concurrency(risk_config: Path) -> None:
    """The operator's rounds: one quota-near per crossing; a 1/1 card call after call: none."""
    settings = load_settings(risk_config)
    store = store_from_settings(settings)
    op = operator_from_settings(settings, now=T0, store=store)
    try:
        raised: list[tuple[float, str | None, str | None]] = []
        # c2 makes one answered call every 12 s (5 a minute at most), each up while checked.
        for i in range(40):
            t = T0 + 12 * i
            store.reserve("c2", f"h{i}", f"+86139000030{i:02d}", t)
            raised += [(t, a.card, a.reason) for a in op.check_alerts(t + 1)]
            store.finish(f"h{i}", t + 10, answered=True, talk_seconds=15.0)
            raised += [(t + 10, a.card, a.reason) for a in op.check_alerts(t + 10)]
        # Steadily 5 calls a minute (100 %) and 1/1 concurrent on every call: raised once.
        assert [(T0 + 36, "c2", "calls_per_minute")] == raised
        # A pause: the minute empties (re-armed), then the rate climbs again.
        quiet = T0 + 12 * 40 + 120
        assert [] == op.check_alerts(quiet)
        for i in range(4):
            store.reserve("c2", f"k{i}", f"+86139000040{i:02d}", quiet + i)
            store.finish(f"k{i}", quiet + i + 0.5, answered=False)
        again = op.check_alerts(quiet + 5)
        assert [("c2", "calls_per_minute")] == [(a.card, a.reason) for a in again]
    finally:
        op.close()
        store.close()


def test_alerts_check_command_reports_quota_near_and_card_at_risk(
    risk_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dialgate alerts check --json` on a store with a card at risk and one near its quota."""
    settings = load_settings(risk_config)
    store = store_from_settings(settings)
    _busy_card(store, time.time() - 1430)
    store.close()
    code = gateway.cli.main.main(["alerts", "check", "--config", str(risk_config), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert 0 == code
    assert [
        ("card-at-risk", "c1", "answer_rate"),
        ("quota-near", "c2", "calls_per_minute"),
    ] == sorted((a["kind"], a["card"], a["reason"]) for a in out["alerts"])
