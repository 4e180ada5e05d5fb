"""kill -9 of ``dialgate run`` during a SIPp run, restart on the same store: no counter went down.

DESIGN "Quotas": the reservation is stored before the INVITE leaves, so a
crash can only over-count. Card counters (calls per minute / hour / day) are
read from the running gateway's admin API (``GET /cards/{id}``) right before
SIGKILL, then after the restart both through ``dialgate cards show`` (the
store on disk) and the new process's admin API; none may be lower. The
restarted gateway then carries more calls and the counters grow by them.

The carrier's timezone is picked at test time so that its calendar day
(daily quota) is near noon and does not roll over during the test.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.policy_sipp.conftest import (
    admin_get,
    admin_url,
    cli_json,
    finish_agent,
    gateway_toml,
    register_alice,
    run_agent,
    start_agent,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARDS = ("c1", "c2")
COUNTERS = ("calls_per_minute", "calls_per_hour", "calls_per_day")
QUOTA = {"calls_per_minute": 1000, "calls_per_hour": 1000, "calls_per_day": 1000, "concurrent": 100}
CALLS = 80
RATE = 20
HOLD_MS = 2000
KILL_AFTER = 20  # call starts counted on the cards before the kill


def noon_zone(now: datetime) -> str:
    """An ``Etc/GMT±N`` zone where it is around noon now (far from the day's rollover)."""
    offset = (12 - now.astimezone(UTC).hour + 12) % 24 - 12  # hours east of UTC, -12..11
    # POSIX-style names: Etc/GMT-8 is UTC+8.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def counters(view: dict[str, Any]) -> dict[str, int]:
    """calls per minute/hour/day used, and calls in progress, of one card view."""
    out = {name: int(view["usage"][name]["used"]) for name in COUNTERS}
    out["in_use"] = int(view["in_use"])
    return out


def via_admin(url: str) -> dict[str, dict[str, int]]:
    """Every card's counters from the admin API."""
    return {card: counters(admin_get(f"{url}/cards/{card}")) for card in CARDS}


def via_cli(config: Path) -> dict[str, dict[str, int]]:
    """Every card's counters from ``dialgate cards show ID``."""
    return {card: counters(cli_json(config, "cards", "show", card)) for card in CARDS}


def not_lower(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], names: tuple[str, ...]
) -> list[str]:
    """Counters of ``after`` that are lower than in ``before``."""
    return [
        f"{card}.{name}: {before[card][name]} -> {after[card][name]}"
        for card in CARDS
        for name in names
        if after[card][name] < before[card][name]
    ]


def test_kill_9_and_restart_never_lowers_card_counters(tmp_path: Path, processes: list) -> None:
    zone = noon_zone(datetime.now(UTC))
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    config = gateway_toml(carrier.port, quota=QUOTA, carrier_timezone=zone)
    gw = start_dialgate(tmp_path, config)
    processes.append(gw)
    url = admin_url(gw)
    register_alice(gw.addresses["udp"], tmp_path / "register")

    numbers = [f"1391000{i:04d}" for i in range(CALLS)]
    run_started = time.time()
    agent = start_agent(
        "agent_call.xml",
        gw.addresses["udp"],
        tmp_path / "agent_run",
        numbers,
        rate=RATE,
        hold_ms=HOLD_MS,
    )
    processes.append(agent)
    deadline = time.monotonic() + 30
    before = via_admin(url)
    while (
        sum(c["calls_per_day"] for c in before.values()) < KILL_AFTER
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        before = via_admin(url)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    assert -signal.SIGKILL == gw.proc.returncode
    in_flight = finish_agent(agent, tmp_path / "agent_run", bound=0)  # stopped by PID
    print(f"before kill (admin API): {before}; agent had {in_flight.successful} calls done")
    assert sum(c["calls_per_day"] for c in before.values()) >= KILL_AFTER, before
    # Killed mid-run: calls were up and the agent had not finished its run.
    assert sum(c["in_use"] for c in before.values()) > 0, before
    assert in_flight.successful < CALLS

    # Restart on the same store and config.
    gw2 = start_dialgate(tmp_path, config)
    processes.append(gw2)
    on_disk = via_cli(gw2.config)
    url2 = admin_url(gw2)
    restarted = via_admin(url2)
    after_read = time.time()
    print(f"after restart: cli {on_disk}; admin API {restarted}")
    # Rolling minute: only comparable while no call of the run can have aged out.
    names = COUNTERS if after_read - run_started < 60 else COUNTERS[1:]
    assert [] == not_lower(before, on_disk, names)
    assert [] == not_lower(before, restarted, names)

    # The restarted gateway carries calls again, and they count on top.
    register_alice(gw2.addresses["udp"], tmp_path / "register2")
    more = [f"1392000{i:04d}" for i in range(4)]
    ok = run_agent("agent_call.xml", gw2.addresses["udp"], tmp_path / "agent_after", more, rate=10)
    assert (0, len(more), 0) == (ok.returncode, ok.successful, ok.failed), ok.stats
    final = via_admin(url2)
    print(f"after {len(more)} more calls: {final}")
    for name in ("calls_per_hour", "calls_per_day"):
        assert sum(c[name] for c in final.values()) == sum(
            c[name] for c in restarted.values()
        ) + len(more)
