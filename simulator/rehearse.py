"""Command line for an offline rehearsal: load a scenario, replay it, print and save the report.

    python -m simulator.rehearse examples/scenarios/unguarded.toml --json out.json --png out.png

Exit status: 0 when the run ended without a suspension, 1 when the carrier
suspended at least one card (so a CI job can gate on a guarded scenario), 2 for
an invalid scenario. The ``dialgate simulate`` subcommand can call :func:`main`.
This module must never open sockets; the SIP rehearsal lives elsewhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from simulator.offline import run_offline
from simulator.report import report_from_offline
from simulator.scenario import ScenarioError, load_scenario

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator.rehearse",
        description="Replay a scenario through the simulated carrier (no SIP) and report.",
    )
    parser.add_argument("scenario", type=Path, help="scenario TOML file")
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--png", type=Path, help="write the usage chart here")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--quiet", action="store_true", help="do not print the text report")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
    except (ScenarioError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.seed is not None:
        scenario = scenario.model_copy(update={"seed": args.seed})
    report = report_from_offline(run_offline(scenario))
    if not args.quiet:
        sys.stdout.write(report.to_text())
    if args.json is not None:
        args.json.write_text(report.to_json(), encoding="utf-8")
    if args.png is not None:
        report.write_png(args.png)
    return 1 if report.suspensions else 0


if __name__ == "__main__":
    raise SystemExit(main())
