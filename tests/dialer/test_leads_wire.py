"""Lead scrubbing agrees with the wire: ``dialgate leads check`` and ``POST /leads/check``
give every row of a 1,000-number list the verdict a SIPp call to it gets from ``dialgate run``.

The list mixes DNC numbers, numbers without consent (``require-consent``),
numbers out of their calling hours (New York numbers while the window is
open in Shanghai), numbers over the frequency cap (answered once already, by
real calls through the gateway: one answer per day), numbers in a region that
is not allowed (France), invalid numbers and callable ones. All 1,000 rows
are checked against the expected class (CLI and admin API alike); then a
sample of every class is dialled through SIPp → dialgate → SIPp carrier and
each final answer (status, ``Reason`` text, ``Retry-After``) must be the
lead check's verdict for that number.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.store.sqlite import SQLiteStore
from simulator.testkit import Message
from tests.integration.conftest import dialgate_command
from tests.policy_sipp.conftest import (
    admin_url,
    gateway_toml,
    register_alice,
    run_agent,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHANGHAI = ZoneInfo("Asia/Shanghai")
CAMPAIGN = "policy-sipp"  # what the SIPp agent scenarios send in X-Campaign
MARGIN = 5  # seconds between the lead check and the SIP calls, plus rounding


def open_window(now: datetime) -> str:
    """A window open for two hours either side of ``now`` in Shanghai, closed in New York."""
    local = now.astimezone(SHANGHAI).replace(second=0, microsecond=0)
    start, end = local - timedelta(hours=2), local + timedelta(hours=2)
    if start.date() == end.date():
        return f"{start:%H:%M}-{end:%H:%M}"
    return f"{start:%H:%M}-24:00,00:00-{end:%H:%M}"


def lead_list() -> tuple[list[str], dict[str, str]]:
    """1,000 numbers in a shuffled order and the class of each."""
    rng = random.Random(18)
    cn = [f"139{n:08d}" for n in rng.sample(range(10**8), 610)]
    classes: dict[str, str] = {}
    for n in cn[:150]:
        classes[n] = "dnc"
    for n in cn[150:300]:
        classes[n] = "no-consent"
    for n in cn[300:310]:
        classes[n] = "frequency-cap"
    for n in cn[310:]:
        classes[n] = "callable"
    for n in rng.sample(range(2000000, 9999999), 150):
        classes[f"+1212{n}"] = "calling-hours"
    for n in rng.sample(range(20000000, 99999999), 100):
        classes[f"+331{n}"] = "destination-blocked"
    invalid = [f"1391234{n}" for n in range(50)] + [f"12{n:03d}" for n in range(45)]
    invalid += [f"+8699{n:07d}" for n in range(40)] + ["", "abc", "13-91x", "+", "00"]
    for n in invalid:
        classes[n] = "address-incomplete"
    numbers = list(classes)
    assert 1000 == len(numbers), len(numbers)
    rng.shuffle(numbers)
    return numbers, classes


def e164(number: str) -> str:
    return number if number.startswith("+") else "+86" + number


def to_number(message: Message) -> str:
    """The dialled number of a response (its To URI user part)."""
    to = message.header("To") or ""
    return to.split("sip:", 1)[1].split("@", 1)[0]


def run_cli_check(config: Path, leads: Path) -> tuple[list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    out = subprocess.run(
        [
            *dialgate_command(),
            "leads",
            "check",
            str(leads),
            "--config",
            str(config),
            "--campaign",
            CAMPAIGN,
        ],
        env=env,
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert 0 == out.returncode, out.stderr.decode(errors="replace")
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    return rows, out.stderr.decode()


def api_check(base: str, body: bytes) -> list[dict]:
    req = urllib.request.Request(
        f"{base}/leads/check?campaign={CAMPAIGN}",
        data=body,
        method="POST",
        headers={"Content-Type": "text/csv"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = resp.read().decode().splitlines()
    return [json.loads(line) for line in lines]


def test_every_row_matches_what_a_sip_call_gets(tmp_path: Path, processes: list) -> None:
    numbers, classes = lead_list()
    now = datetime.now(SHANGHAI)
    # The store as the operator filled it: DNC numbers, consent for every number but
    # the unconsented ones (the DNC ones have consent too: DNC wins).
    store = SQLiteStore(tmp_path / "dialgate.db")
    t = time.time()
    store.add_dncs([e164(n) for n, c in classes.items() if c == "dnc"], t, source="test")
    for n, c in classes.items():
        if c in ("dnc", "callable", "frequency-cap", "calling-hours", "destination-blocked"):
            store.add_consent(e164(n), t, source="test")
    store.close()

    carrier = start_carrier(tmp_path / "carrier", timeout=120)
    processes.append(carrier)
    toml = gateway_toml(
        carrier.port,
        calling_hours=open_window(now),
        quota={"calls_per_minute": 100000, "concurrent": 10},
        cards=4,
    ).replace('consent = "dnc-only"', 'consent = "require-consent"\nallowed_regions = ["CN", "US"]')
    toml = toml.replace(
        "\n[[users]]",
        "\n[policy.frequency]\nattempts = 2\nanswers = 1\nanswers_window = 86400\n\n[[users]]",
        1,
    )
    gw = start_dialgate(tmp_path, toml)
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")

    # The capped numbers were called and answered once today (one answer per day).
    capped = [n for n in numbers if classes[n] == "frequency-cap"]
    first = run_agent("agent_call.xml", target, tmp_path / "agent_first", capped, hold_ms=100)
    assert (0, len(capped), 0) == (first.returncode, first.successful, first.failed), first.stats

    # --- the lead check: CLI and admin API, all 1,000 rows --------------------------------
    leads = tmp_path / "leads.csv"
    leads.write_text("lead_id,number\n" + "".join(f"L{i},{n}\n" for i, n in enumerate(numbers, 1)))
    checked_at = time.time()
    rows, summary = run_cli_check(gw.config, leads)
    api_rows = api_check(admin_url(gw), leads.read_bytes())
    assert {"summary"} == set(api_rows[-1]), api_rows[-1]
    assert 1000 == api_rows[-1]["summary"]["rows"]
    print(summary)
    assert "1000 leads:" in summary
    assert 1000 == len(rows) == len(api_rows) - 1
    window_opens: dict[str, int] = {}
    for i, (row, api, number) in enumerate(zip(rows, api_rows, numbers, strict=False), 1):
        expected = classes[number]
        assert (i, number, f"L{i}") == (row["row"], row["number"], row["lead_id"])
        got = "callable" if row["callable"] else row["reason"]
        assert expected == got, (number, row)
        for key in ("callable", "reason", "sip_code", "e164"):
            assert row[key] == api[key], (number, key, row, api)
        if expected == "address-incomplete":
            assert (484, None, None) == (row["sip_code"], row["e164"], row["callable_at"])
            continue
        assert e164(number) == row["e164"], row
        if expected == "callable":
            assert row["callable_at"] is not None and row["retry_after"] is None
        elif expected in ("calling-hours", "frequency-cap"):
            assert 403 == row["sip_code"] and row["retry_after"] > 0, row
            at = datetime.fromisoformat(row["callable_at"].replace("Z", "+00:00")).timestamp()
            assert abs(at - (checked_at + row["retry_after"])) <= MARGIN, row
            if expected == "calling-hours":
                window_opens[number] = row["retry_after"]
            else:  # one answer per day: callable again a day after the answer
                assert 86400 - 60 <= row["retry_after"] <= 86400, row
        else:
            assert (403, None, None) == (row["sip_code"], row["retry_after"], row["callable_at"])

    # --- the wire: a sample of every class through SIPp → dialgate → carrier --------------
    by_row = {row["number"]: row for row in rows}
    sample: dict[str, list[str]] = {}
    for n in numbers:
        if n.strip() and n.isascii() and n.lstrip("+").isdigit():
            sample.setdefault(classes[n], [])
            if len(sample[classes[n]]) < 5:
                sample[classes[n]].append(n)
    assert {
        "dnc",
        "no-consent",
        "calling-hours",
        "frequency-cap",
        "destination-blocked",
        "address-incomplete",
        "callable",
    } == set(sample)
    refused = [
        n for c, ns in sample.items() if c not in ("callable", "address-incomplete") for n in ns
    ]
    wire_403 = run_agent("agent_reject_403.xml", target, tmp_path / "agent_403", refused)
    wire_484 = run_agent(
        "agent_reject_484.xml", target, tmp_path / "agent_484", sample["address-incomplete"]
    )
    wire_ok = run_agent(
        "agent_call.xml", target, tmp_path / "agent_ok", sample["callable"], hold_ms=100
    )
    seen: dict[str, Message] = {}
    for result in (wire_403, wire_484, wire_ok):
        for m in result.finals():
            seen[to_number(m)] = m
    assert len(refused) + 10 == len(seen), sorted(seen)
    for number, m in seen.items():
        row = by_row[number]
        if row["callable"]:
            assert 200 == m.status, (number, m.first_line)
            continue
        assert row["sip_code"] == m.status, (number, row, m.first_line)
        if row["sip_code"] == 484:
            continue
        assert f'SIP;cause=403;text="{row["reason"]}"' == m.header("Reason"), (number, row)
        retry = m.header("Retry-After")
        if row["retry_after"] is None:
            assert retry is None, (number, retry)
        else:
            assert retry is not None and abs(int(retry) - row["retry_after"]) <= MARGIN, (
                number,
                retry,
                row,
            )
    assert (0, 0, 0) == (wire_403.returncode, wire_484.returncode, wire_ok.returncode), (
        wire_403.stats,
        wire_484.stats,
        wire_ok.stats,
    )
    carrier.stop()
    # Only the calls meant to leave reached the carrier: the capped numbers' first calls
    # and the callable sample. With two attempts per week allowed, the callable sample
    # would have been refused had either lead check (CLI, API) recorded an attempt.
    reached = sorted(c.lstrip("+") for c in carrier.callees())
    expected_reached = sorted(e164(n).lstrip("+") for n in capped + sample["callable"])
    assert expected_reached == reached
