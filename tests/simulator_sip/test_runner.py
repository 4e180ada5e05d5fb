"""The SIP scenario runner and ``dialgate simulate``: direct, in-process and external gateway runs."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import gateway.cli.simulate  # noqa: F401  (registers the subcommand)
from gateway import app
from gateway.callpath.element import Gateway
from gateway.cli.main import main
from gateway.cli.simulate import parse_hostport
from simulator.runner import (
    InProcessGateway,
    Progress,
    build_settings,
    run_scenario,
    settings_from_scenario,
)
from simulator.scenario import Scenario, load_scenario, loads_scenario
from simulator.testkit import free_udp_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"

SMALL = """
name = "small"
seed = 3

[clock]
start = 2026-03-02T10:00:00+08:00
speed = 2000.0
duration = "2h"

[carrier]
timezone = "Asia/Shanghai"

[carrier.answer]
answer = 0.5
busy = 0.5
no_answer = 0.0
decline = 0.0
ring_min = 2.0
ring_max = 4.0
busy_ring = 0.5
talk_mean = 20.0
talk_sigma = 0.0
talk_min = 20.0
talk_max = 20.0

[carrier.antifraud]
calls_per_hour = 2

[[cards]]
id = "c1"
number = "+8613800000001"
username = "c1"
password = "card-secret-1"

[[cards]]
id = "c2"
number = "+8613800000002"
username = "c2"
password = "card-secret-2"

[gateway]
guarded = false

[[agents]]
name = "alice"
password = "alice-pw"
card = "c1"

[[agents]]
name = "bob"
password = "bob-pw"
card = "c2"

[leads]
numbers = [
  { number = "+8613911110001" }, { number = "+8613911110002" },
  { number = "+8613911110003" }, { number = "+8613911110004" },
  { number = "+8613911110005" }, { number = "+8613911110006" },
  { number = "+8613911110007" }, { number = "+8613911110008" },
  { number = "+8613911110009" }, { number = "+8613911110010" },
  { number = "+8613911110011" }, { number = "+8613911110012" },
]

[pacing]
calls_per_minute_per_agent = 6.0
think_seconds = 1.0
"""


@pytest.fixture
def small() -> Scenario:
    """A two-card scenario whose carrier suspends a card on its third call in an hour."""
    return loads_scenario(SMALL, "small.toml")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``dialgate simulate`` configures logging for the process: put it back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_direct_run_reaches_suspensions_and_reports(small: Scenario) -> None:
    """Without a gateway, agents hammer their cards until the carrier suspends them."""
    result = await run_scenario(small, direct=True)
    report = result.report()
    assert "direct" == result.mode
    assert 12 == report.attempts == len(result.calls)
    assert {"c1", "c2"} == {s.card for s in report.suspensions}
    assert 0 == result.leads_left
    # Every lead was tried exactly once, each attempt has a card and a status.
    dialled = sorted(r.callee for _, r in result.results)
    assert sorted(lead.number for lead in small.expand_leads()) == dialled
    assert [] == [c for c in result.calls if c.card not in ("c1", "c2") or not c.status]
    blocked = [c for c in result.calls if c.outcome == "blocked"]
    assert blocked and {"carrier-403"} == {c.reason for c in blocked}
    assert all("****" in c.callee for c in result.calls)  # masked in the records


async def test_in_process_run_starts_and_stops_the_gateway(small: Scenario) -> None:
    """The in-process mode runs every lead through a dialgate it starts and stops itself."""
    seen: list[tuple[str, int] | None] = []
    result = await run_scenario(
        small, max_leads=3, on_ready=lambda _carrier, target: seen.append(target)
    )
    assert "in-process" == result.mode
    assert 1 == len(seen) and seen[0] is not None
    assert 3 == len(result.calls)
    assert all(r.status is not None for _, r in result.results)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(seen[0])  # the gateway it started let its listener go


async def test_external_gateway_mode(small: Scenario, tmp_path: Path) -> None:
    """``--gateway`` mode drives a dialgate that was started separately, pointed at the carrier."""
    port = free_udp_port()
    settings = settings_from_scenario(small, f"udp:127.0.0.1:{port}", store_path=tmp_path / "gw.db")
    async with InProcessGateway(settings) as gw:
        address = gw.address()
        result = await run_scenario(small, gateway=address, carrier_port=port, max_leads=2)
        assert gw.running
    assert "external" == result.mode
    assert address == result.gateway_address
    assert not gw.running
    assert 2 == len(result.results)


def test_settings_from_scenarios_validate(tmp_path: Path) -> None:
    """Scenario quota profiles arrive in the gateway's keys; unguarded keeps only ``concurrent``."""
    guarded = settings_from_scenario(
        load_scenario(EXAMPLES / "guarded.toml"), "udp:127.0.0.1:5999", store_path=tmp_path / "a"
    )
    profile = guarded.quota_profiles["default"]
    assert (40, 40, 30) == (profile.calls_per_hour, profile.rate_window_calls, profile.min_sample)
    assert profile.night_window is not None
    assert 10.0 == profile.short_call_seconds
    assert "require-consent" == str(guarded.policy.consent)
    assert ["alice", "bob", "carol", "dave"] == [u.name for u in guarded.users]
    unguarded = settings_from_scenario(
        load_scenario(EXAMPLES / "unguarded.toml"),
        "udp:127.0.0.1:5999",
        store_path=tmp_path / "b",
    )
    assert unguarded.quota_profiles["default"].calls_per_hour is None
    assert "dnc-only" == str(unguarded.policy.consent)


def test_build_settings_puts_cards_on_the_carrier(tmp_path: Path) -> None:
    """Cards get the carrier's name; admin listens on a free port, never a fixed one."""
    settings = build_settings(
        carrier_address="udp:127.0.0.1:6000",
        cards=[{"id": "c1", "number": "+8613800000001", "username": "c1", "password": "p"}],
        store_path=tmp_path / "gw.db",
        quota_profiles={"default": {"concurrent": 1, "rate_window_calls": 10}},
    )
    assert "carrier-a" == settings.cards[0].carrier
    assert 10 == settings.quota_profiles["default"].rate_window_calls
    assert 0 == settings.admin.port


def test_cli_simulate_direct_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """``dialgate simulate --direct`` prints the report, writes JSON and PNG, exits 1 on suspensions."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL, encoding="utf-8")
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    args = ["simulate", str(scenario), "--direct", "--json", str(out), "--png", str(png)]
    code = main([*args, "--speed", "4000"])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert 1 == code  # the carrier suspended cards
    assert data["suspensions"]
    captured = capsys.readouterr()
    assert "Scenario 'small'" in captured.out
    assert "calls 12" in captured.err  # the final progress line


def test_cli_simulate_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """A bad --gateway, a bad scenario and --gateway with --direct are usage errors (exit 2)."""
    with pytest.raises(SystemExit) as bad:
        main(["simulate", "x.toml", "--gateway", "nohost"])
    assert 2 == bad.value.code
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 1\n", encoding="utf-8")
    assert 2 == main(["simulate", str(broken)])
    assert "invalid scenario" in capsys.readouterr().err
    good = tmp_path / "small.toml"
    good.write_text(SMALL, encoding="utf-8")
    assert 2 == main(["simulate", str(good), "--direct", "--gateway", "127.0.0.1:5080"])


def test_parse_hostport() -> None:
    """HOST:PORT and [v6]:PORT parse; a missing or bad port is refused."""
    assert ("127.0.0.1", 5080) == parse_hostport("127.0.0.1:5080")
    assert ("::1", 5080) == parse_hostport("[::1]:5080")
    for bad in ("127.0.0.1", "host:0", "host:x", ":5060"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_place_on_a_tty_and_by_tenths_otherwise() -> None:
    """On a TTY the line is redrawn with a carriage return; elsewhere one line per tenth."""
    tty = _Tty()
    bar = Progress(tty, total=100.0)
    bar.update(10.0, 5, 2, 1, 0)
    bar.update(20.0, 9, 3, 1, 1)
    bar.finish()
    assert 2 == tty.getvalue().count("\r")
    assert tty.getvalue().endswith("suspensions 1\n")
    plain = io.StringIO()
    bar = Progress(plain, total=100.0)
    for step in range(0, 101, 5):
        bar.update(float(step), step, 0, 0, 0)
    lines = plain.getvalue().splitlines()
    assert 11 == len(lines)
    assert "\r" not in plain.getvalue()
    assert lines[-1].startswith("[####################] 100.0%")


def test_requeue_waits_scale_with_the_gateway_clock() -> None:
    """503 no-card-available requeues the lead for Retry-After, scaled when the gateway runs real time."""
    from simulator.runner import NO_CARD_RETRY_SECONDS, _requeuer
    from simulator.sipkit import CallResult

    def result(status: int, text: str | None, retry: int | None) -> CallResult:
        r = CallResult("cid", "out", "gw", "+8613911110001", 0.0, status=status)
        r.reason_text, r.retry_after = text, retry
        return r

    shared, real = _requeuer(1.0), _requeuer(600.0)
    assert 30.0 == shared("x", result(503, "no-card-available", 30))
    assert 18000.0 == real("x", result(503, "no-card-available", 30))
    assert NO_CARD_RETRY_SECONDS == shared("x", result(503, "store-unavailable", None))
    assert shared("x", result(403, "dnc", None)) is None
    assert shared("x", result(503, None, 30)) is None  # a carrier 503 is not requeued


async def test_a_serve_that_takes_a_clock_gets_the_business_clock(
    small: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ``serve`` accepts ``clock``, the in-process gateway runs on the scenario's clock."""
    seen: list[float] = []

    async def serve_with_clock(settings, *, ready=None, stop=None, clock=None, on_ready=None):  # type: ignore[no-untyped-def]
        assert clock is not None
        seen.append(clock())
        gw = Gateway(settings, clock=clock)
        await gw.start()
        try:
            on_ready(gw)
            ready.set()
            await stop.wait()
        finally:
            await gw.close()

    monkeypatch.setattr(app, "serve", serve_with_clock)
    result = await run_scenario(small, max_leads=4)
    assert result.clock_shared
    # Business time: the scenario's morning in 2026, not today's wall clock.
    assert small.start_epoch <= seen[0] < small.end_epoch
    assert 4 == len(result.calls)


async def test_in_process_run_with_dialer_channels() -> None:
    """A dialer's channels work the shared lead list through the gateway, each lead once."""
    text = SMALL.replace(
        '[[agents]]\nname = "bob"\npassword = "bob-pw"\ncard = "c2"\n',
        '[[dialers]]\nname = "dialer-1"\npassword = "dialer-pw"\ncampaign = "spring"\n'
        "channels = 2\n",
    )
    text = text.replace("calls_per_hour = 2", "calls_per_hour = 50")
    text = text.replace('duration = "2h"', 'duration = "30m"')
    scenario = loads_scenario(text, "dialer.toml")
    result = await run_scenario(scenario, max_leads=6)
    sources = {source for source, _ in result.results}
    assert sources <= {"alice", "dialer-1/1", "dialer-1/2"}
    assert "dialer-1/1" in sources
    placed = [r.callee for _, r in result.results if r.status != 503]
    assert len(placed) == len(set(placed))  # no callee dialled twice
    # A lead refused with 503 no-card-available waits for Retry-After (real seconds
    # at this clock speed) and may still be queued when business time runs out.
    assert 6 == len(placed) + result.leads_left
    assert all(r.challenges == 1 for _, r in result.results)  # digest answered once per call
