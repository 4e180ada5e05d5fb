"""`dialgate cdrs export`: ISO 8601 times like the admin API, one call found by its SIP Call-ID.

Issue 14 item 6: the CSV had epoch floats where the API has ISO times, and
nothing led from a log line's ``call_id`` to its record.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import gateway.cli.main
from gateway.callpath.cdr import CallRecord, Outcome
from gateway.store import SQLiteStore
from gateway.telemetry.events import iso_time
from tests.operator.conftest import T0

A_ID = "3f2a9c@agent-phone"


@pytest.fixture(autouse=True)
def operator_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator commands on a copy of the registry (as tests/operator/test_cli.py does)."""
    monkeypatch.setattr("gateway.cli.base.COMMANDS", dict(gateway.cli.main.COMMANDS))
    if "cards list" not in gateway.cli.main.COMMANDS:
        module = sys.modules.get("gateway.cli.operator")
        if module is None:
            importlib.import_module("gateway.cli.operator")
        else:
            importlib.reload(module)


def _records(store: SQLiteStore) -> None:
    store.add_cdrs(
        [
            CallRecord(
                call_id=A_ID,
                attempt_at=T0 + 0.25,
                destination="+8613912345678",
                outcome=Outcome.ANSWERED,
                final_code=200,
                origin="alice",
                cards=("c1",),
                ring_at=T0 + 1.5,
                answer_at=T0 + 4.0,
                end_at=T0 + 64.0,
            ),
            CallRecord(
                call_id="other@agent-phone",
                attempt_at=T0 + 100,
                destination="+8613912345679",
                outcome=Outcome.CANCELLED,
                final_code=487,
                origin="alice",
                cards=("c1",),
                end_at=T0 + 105,
            ),
        ]
    )


def _export(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, str]]:
    code = gateway.cli.main.main(["cdrs", "export", *argv])
    out, _ = capsys.readouterr()
    assert 0 == code
    return list(csv.DictReader(io.StringIO(out)))


def test_csv_times_are_iso_8601_utc_like_the_api(
    config_file: Path, store: SQLiteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every time column parses as ISO 8601 with its UTC offset and equals the API's form."""
    _records(store)
    rows = _export(capsys, "--config", str(config_file))
    first = rows[0]
    assert (iso_time(T0 + 0.25), iso_time(T0 + 1.5), iso_time(T0 + 4.0), iso_time(T0 + 64.0)) == (
        first["attempt_at"],
        first["ring_at"],
        first["answer_at"],
        first["end_at"],
    )
    parsed = datetime.fromisoformat(first["attempt_at"])
    assert (UTC.utcoffset(None), T0 + 0.25) == (parsed.utcoffset(), parsed.timestamp())
    assert ("", "") == (rows[1]["ring_at"], rows[1]["answer_at"])  # never rang
    assert "60.0" == first["talk_seconds"]
    assert "+86139****5678" == first["destination"]
    # --json is the admin API's view: the same strings.
    code = gateway.cli.main.main(["cdrs", "export", "--json", "--config", str(config_file)])
    out, _ = capsys.readouterr()
    assert 0 == code
    assert first["attempt_at"] == json.loads(out)[0]["attempt_at"]


def test_one_call_by_its_sip_call_id(
    config_file: Path, store: SQLiteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--call-id`` (the A-leg Call-ID of the logs and MQTT events) selects that call only."""
    _records(store)
    rows = _export(capsys, "--call-id", A_ID, "--config", str(config_file))
    assert [(A_ID, "answered")] == [(r["call_id"], r["outcome"]) for r in rows]
    assert [] == _export(capsys, "--call-id", "nobody@nowhere", "--config", str(config_file))
