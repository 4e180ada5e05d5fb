"""bench/run_all.py's summary: a ceiling is never claimed at the last rate tried.

``make bench`` prints the highest clean rate of each end-to-end step. When every rate
it tried was clean, that rate is where the list stopped, not where the gateway did:
the line must say so; when a rate failed, it names the first failure instead.
"""

from __future__ import annotations

from typing import Any

from . import load_bench

run_all = load_bench("run_all")


def _row(cps: int, failed: int = 0) -> dict[str, Any]:
    return {
        "mode": "e2e",
        "offered_cps": cps,
        "measured_cps": cps * 0.98,
        "ok": cps * 4 - failed,
        "failed": failed,
        "unfinished": 0,
        "retransmissions": 0,
        "rt_p50_ms": 4,
        "rt_p99_ms": 8,
        "rt_mean_ms": 4.0,
    }


def _line(rows: list[dict[str, Any]]) -> str:
    lines = run_all.summary_lines({"e2e": {"json": {"rows": rows}}})
    (line,) = [text for text in lines if text.startswith("e2e, one process")]
    return str(line)


def test_all_rates_clean_says_the_ceiling_is_higher() -> None:
    line = _line([_row(100), _row(300), _row(600)])
    assert "600 CPS" in line
    assert "no failures at any rate tried (the ceiling is higher)" in line
    assert "first failures" not in line


def test_a_failed_rate_is_named_and_nothing_is_claimed_above_it() -> None:
    line = _line([_row(100), _row(300), _row(600, failed=12)])
    assert "highest rate with zero failed calls sustained (≥ 90% placed) 300 CPS" in line
    assert "first failures at 600 CPS (12 failed)" in line
    assert "ceiling is higher" not in line
