"""``dialgate security bans``: list, --clear ADDR, --all, --json, against the ban file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.callpath.security import Ban, BanFile
from gateway.cli.main import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose store (and ban file) is in tmp_path, with two bans and an ended one."""
    path = tmp_path / "dialgate.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "gw.db"}"\n\n[policy]\nconsent = "dnc-only"\n')
    now = time.time()
    bans = {
        "127.0.0.3": Ban("127.0.0.3", now, now + 600, "auth-failures", 10),
        "2001:db8::/64": Ban("2001:db8::/64", now, now + 1200, "flood", 1001, 2),
        "198.51.100.1": Ban("198.51.100.1", now - 900, now - 300, "flood", 1001),
    }

    def fill(current: dict[str, Ban]) -> None:
        current.update(bans)

    BanFile(tmp_path / "gw.db.bans.json").update(fill, now - 1000)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["security", "bans", *args])
    return code, capsys.readouterr().out


def test_list_shows_bans_in_force(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table and --json list the two bans in force, soonest to end first."""
    code, out = run(capsys, "--config", str(config), "--json")
    assert 0 == code
    expected = [("127.0.0.3", "auth-failures", 1), ("2001:db8::/64", "flood", 2)]
    assert expected == [(b["address"], b["reason"], b["offence"]) for b in json.loads(out)["bans"]]
    code, out = run(capsys, "--config", str(config))
    assert 0 == code and "127.0.0.3" in out and "198.51.100.1" not in out


def test_clear_one_then_all(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--clear ADDR (an IPv6 address of the banned /64) lifts one; again: not banned (exit 1);
    --all lifts the rest."""
    assert (0, "lifted 2001:db8::/64\n") == run(
        capsys, "--config", str(config), "--clear", "[2001:DB8:0::7]"
    )
    code, out = run(capsys, "--config", str(config), "--clear", "2001:db8::7")
    assert (1, "2001:db8::/64: not banned\n") == (code, out)
    assert (0, "lifted 127.0.0.3\n") == run(capsys, "--config", str(config), "--all")
    assert (0, "no bans\n") == run(capsys, "--config", str(config))


def test_clear_refuses_a_non_address(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--clear with something that is not an IP address: usage error (2)."""
    assert 2 == main(["security", "bans", "--config", str(config), "--clear", "alice"])
