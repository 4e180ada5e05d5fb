"""Tests for the offline rehearsal command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.rehearse import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"


def test_guarded_run_exits_zero_and_writes_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A guarded rehearsal prints the report, writes JSON and PNG, and exits 0 (no suspension)."""
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    status = main([str(EXAMPLES / "guarded.toml"), "--json", str(out_json), "--png", str(out_png)])
    assert 0 == status
    assert "Scenario 'guarded'" in capsys.readouterr().out
    assert "guarded" == json.loads(out_json.read_text())["scenario"]
    assert b"\x89PNG\r\n\x1a\n" == out_png.read_bytes()[:8]


def test_unguarded_run_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Suspensions make the exit status 1; --quiet prints nothing."""
    assert 1 == main([str(EXAMPLES / "unguarded.toml"), "--quiet"])
    assert "" == capsys.readouterr().out


def test_invalid_scenario_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file is explained on stderr with its key path and exit status 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 1\n[clock]\nspeed = 1\n")
    assert 2 == main([str(bad)])
    err = capsys.readouterr().err
    assert "clock.start" in err
    assert 2 == main([str(tmp_path / "missing.toml")])


def test_seed_override_changes_the_run(tmp_path: Path) -> None:
    """--seed replaces the scenario's seed."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    main([str(EXAMPLES / "suspension-storm.toml"), "--quiet", "--json", str(a)])
    main([str(EXAMPLES / "suspension-storm.toml"), "--quiet", "--json", str(b), "--seed", "5"])
    assert 5 == json.loads(b.read_text())["seed"]
    assert a.read_text() != b.read_text()
