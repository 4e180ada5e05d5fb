"""``dialgate leads check`` as a subprocess: CSV answer, and one process or two give the
same rows in the same order (lists of 5,000 rows or more are split over processes)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path

from gateway.config import load_settings
from gateway.store import store_from_settings
from tests.integration.conftest import dialgate_command

CONFIG = """
[store]
path = "{db}"

[policy]
default_region = "CN"
consent = "require-consent"
calling_hours = "00:00-24:00"
"""


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    return subprocess.run(
        [*dialgate_command(), "leads", "check", *args, "--config", str(config)],
        env=env,
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_one_or_two_processes_give_the_same_answer(tmp_path: Path) -> None:
    config = tmp_path / "dialgate.toml"
    config.write_text(CONFIG.format(db=tmp_path / "d.db"))
    settings = load_settings(config)
    store = store_from_settings(settings)
    numbers = [f"139{n:08d}" for n in range(6000)]
    store.add_dncs([f"+86{n}" for n in numbers[::7]], 1.0, source="test")
    for n in numbers[::2]:
        store.add_consent(f"+86{n}", 1.0, source="test")
    store.close()
    leads = tmp_path / "leads.txt"  # one column, no header, no known extension
    leads.write_text("".join(f"{n}\n" for n in numbers) + "12345\n")

    one = _run(config, str(leads), "--format", "csv", "--jobs", "1")
    two = _run(config, str(leads), "--format", "csv", "--jobs", "2")
    assert 0 == one.returncode == two.returncode, (one.stderr, two.stderr)

    def rows(out: bytes) -> list[tuple[str, ...]]:
        parsed = list(csv.DictReader(io.StringIO(out.decode())))
        return [(r["row"], r["number"], r["callable"], r["reason"]) for r in parsed]

    first = rows(one.stdout)
    assert first == rows(two.stdout)
    assert 6001 == len(first)
    assert [str(i) for i in range(1, 6002)] == [r[0] for r in first]
    expected = [
        "dnc" if i % 7 == 0 else (None if i % 2 == 0 else "no-consent") for i in range(6000)
    ]
    assert expected == [r[3] or None for r in first[:-1]]
    assert ("false", "address-incomplete") == first[-1][2:]
    for out in (one, two):
        assert b"6001 leads:" in out.stderr, out.stderr
