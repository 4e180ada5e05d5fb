"""The operator CLI: `dialgate cards …`, `dnc …`, `consent import`, `complaint add`, `cdrs export`.

Most commands run in-process through ``gateway.cli.main.main`` (the parser the
``dialgate`` script builds); a few run as a real subprocess. Until
``gateway/cli/main.py`` imports ``gateway.cli.operator`` itself, the subprocess
imports it first and then calls the same ``main``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gateway.cli.main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def operator_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the operator commands for one test only, on a copy of the registry.

    Other tests (tests/config) register commands of their own under the same
    names; until gateway/cli/main.py imports gateway.cli.operator, nothing here may
    leave the global registry changed.
    """
    monkeypatch.setattr("gateway.cli.base.COMMANDS", dict(gateway.cli.main.COMMANDS))
    if "cards list" not in gateway.cli.main.COMMANDS:
        module = sys.modules.get("gateway.cli.operator")
        if module is None:
            importlib.import_module("gateway.cli.operator")
        else:
            importlib.reload(module)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run one command in-process; return (exit code, stdout, stderr)."""
    code = gateway.cli.main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


SCRIPT = Path(sys.executable).parent / "dialgate"
#: Once gateway/cli/main.py imports the operator commands, the installed script is used.
REGISTERED = "cli_operator" in Path(gateway.cli.main.__file__).read_text(encoding="utf-8")


def dialgate(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``dialgate`` as a subprocess (with the operator commands registered)."""
    if REGISTERED and SCRIPT.exists():
        command = [str(SCRIPT), *argv]
    else:
        script = "import sys, gateway.cli.operator; from gateway.cli.main import main; sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", script, *argv]
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd)},
    )


def test_card_walk_from_the_command_line(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """record → suspend → appeal → probation → show: masked number, actor, states; illegal refused."""
    cfg = ("--config", str(config_file), "--actor", "cli:tester")
    code, out, _ = run(
        capsys,
        "cards", "record", "c1", *cfg,
        "--holder", "Li Wei", "--employee-id", "E-7", "--registered-number", "13912345678",
    )  # fmt: skip
    assert 0 == code
    assert "+86139****5678" in out and "13912345678" not in out
    assert 0 == run(capsys, "cards", "suspend", "c1", *cfg, "--reason", "violation")[0]
    code, out, _ = run(
        capsys, "cards", "appeal", "c1", *cfg, "--reference", "APL-1", "--channel", "shop"
    )
    assert 0 == code and "appeal #1 open: ref APL-1 via shop" in out
    assert 0 == run(capsys, "cards", "probation", "c1", *cfg, "--for", "14d")[0]
    code, out, _ = run(capsys, "cards", "show", "c1", *cfg, "--json")
    shown = json.loads(out)
    assert ("probation", "careful") == (shown["state"], shown["profile_in_force"])
    assert [
        ("suspended", "cli:tester"),
        ("appealing", "cli:tester"),
        ("probation", "cli:tester"),
    ] == [(t["to"], t["actor"]) for t in shown["timeline"] if t["kind"] == "transition"]
    code, _, err = run(capsys, "cards", "appeal", "c2", *cfg)
    assert (1, True) == (code, "cannot go to appealing" in err)
    code, _, err = run(capsys, "cards", "show", "nope", *cfg)
    assert (1, True) == (code, "unknown card" in err)
    code, out, _ = run(capsys, "cards", "list", *cfg)
    assert 0 == code
    assert ["c1", "c2"] == [line.split()[0] for line in out.splitlines()[1:]]
    assert "probation" in out.splitlines()[1]


def test_dnc_consent_complaint_and_exports(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Imports report bad lines by number and keep good ones; a complaint DNCs; evidence is written."""
    cfg = ("--config", str(config_file))
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("+8613800001111\nnonsense\n13800002222\n")
    code, out, _ = run(capsys, "dnc", "import", str(dnc), *cfg)
    assert 1 == code  # bad lines present; the good ones are kept
    assert "added 2" in out and "line 2:" in out
    code, out, _ = run(capsys, "dnc", "check", "13800002222", *cfg)
    assert "+86138****2222: DNC listed (imported)" in out
    assert 0 == run(capsys, "dnc", "remove", "+8613800002222", *cfg)[0]
    assert 1 == run(capsys, "dnc", "remove", "+8613800002222", *cfg)[0]
    assert 0 == run(capsys, "dnc", "add", "+8613800003333", *cfg)[0]

    consent = tmp_path / "consent.csv"
    consent.write_text(
        "number,campaign,granted_at,expires_at,source,evidence\n"
        "+8613700001234,spring,2026-11-01T00:00:00+08:00,,web,form-9\n"
    )
    code, out, _ = run(capsys, "consent", "import", str(consent), *cfg)
    assert (0, True) == (code, "added 1" in out)

    code, out, _ = run(
        capsys, "complaint", "add", "13700001234", "--agent", "alice", "--card", "c1", *cfg
    )
    assert 0 == code
    assert "+86137****1234: complaint recorded, on DNC; card c1, agent alice" == out.strip()
    code, out, _ = run(capsys, "dnc", "check", "+8613700001234", *cfg, "--json")
    looked = json.loads(out)
    assert ("complaint", 1) == (looked["dnc"]["source"], looked["complaints"])

    pack = tmp_path / "pack.zip"
    code, out, _ = run(
        capsys, "cards", "evidence", "c1", "--since", "2026-01-01", "--out", str(pack), *cfg
    )
    assert 0 == code and "1 complaints" in out
    with zipfile.ZipFile(pack) as archive:
        doc = json.loads(archive.read("evidence.json"))
    assert ["+86137****1234"] == [c["callee"] for c in doc["complaints"]]
    code, out, _ = run(capsys, "cdrs", "export", *cfg)
    assert (0, True) == (code, out.startswith("call_id,"))
    code, out, _ = run(capsys, "alerts", "check", *cfg)
    assert (0, "no alerts") == (code, out.strip())


def test_commands_run_as_a_subprocess(config_file: Path, tmp_path: Path) -> None:
    """The same commands from a separate process, sharing the store file; bad usage exits 2."""
    cfg = ("--config", str(config_file))
    done = dialgate("cards", "suspend", "c2", "--reason", "arrears", *cfg, cwd=tmp_path)
    assert 0 == done.returncode, done.stderr
    done = dialgate("cards", "show", "c2", "--json", *cfg, cwd=tmp_path)
    shown = json.loads(done.stdout)
    assert ("suspended", "arrears") == (shown["state"], shown["reason"])
    assert shown["timeline"][-1]["actor"].startswith("cli")
    done = dialgate("cards", "probation", "c2", *cfg, cwd=tmp_path)  # neither --until nor --for
    assert 2 == done.returncode
    done = dialgate("dnc", "add", "12", *cfg, cwd=tmp_path)
    assert 2 == done.returncode and "12" not in done.stdout
