"""``dialgate simulate SCENARIO``: rehearse a campaign over SIP and print the report.

Registers the ``simulate`` subcommand in :data:`gateway.cli.main.COMMANDS` when
imported. It starts the simulated carrier, the scenario's softphone agents and
dialers, and either uses a running dialgate (``--gateway HOST:PORT``; its
``[[carriers]]`` must point at the carrier port given with ``--carrier-port``)
or starts one in-process with settings built from the scenario; ``--direct``
skips the gateway (agents dial the carrier with their cards: the unprotected
baseline); ``--offline`` replays the scenario without SIP through the carrier
model and a stand-in of the policies. Without ``--gateway`` every peer is in
this process and business time is a discrete-event clock (it jumps to the next
call event once no SIP message is in flight): the same seed gives the same
report. ``--gateway`` (and ``--realtime-clock``) run on the scenario's scaled
clock, where totals depend on real call timing; the report says which mode and
clock ran. A
live progress line goes to the terminal, the text report to
stdout, and ``--json`` / ``--png`` save the report.

Exit codes: 0 no card suspended, 1 at least one suspension or a runtime
failure, 2 usage error or invalid scenario.

What it must never do: import the simulator or the running gateway at module
import time (both are imported inside the handler), print a secret, or leave
a peer running after it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command
from gateway.config import LoggingSettings, LogLevel

if TYPE_CHECKING:
    from simulator.report import Report

__all__ = ["cmd_simulate", "parse_hostport"]


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → ``(host, port)``; ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _hostport_arg(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", type=Path, help="scenario TOML file")
    parser.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        type=_hostport_arg,
        help="run against this running dialgate (default: start one in-process)",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="no gateway: agents dial the carrier with their cards (unprotected baseline)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="no SIP: replay the scenario through the carrier model and a stand-in of the "
        "gateway's policies (deterministic for the seed; seconds instead of minutes)",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the JSON report here")
    parser.add_argument("--png", metavar="FILE", type=Path, help="write the usage chart here")
    parser.add_argument(
        "--speed",
        type=_positive,
        help="business seconds per real second (overrides the file; scaled clock only)",
    )
    parser.add_argument(
        "--realtime-clock",
        action="store_true",
        help="in-process/direct runs: business time flows with real time at the scenario's "
        "speed instead of jumping between events (not seed-determined)",
    )
    parser.add_argument("--max-leads", type=int, metavar="N", help="dial at most N leads")
    parser.add_argument(
        "--carrier-port", type=int, default=0, metavar="PORT", help="carrier UDP port (0: free)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line, no text report")
    parser.add_argument("--verbose", action="store_true", help="log SIP peers at info level")


@command(
    "simulate",
    help="rehearse a scenario over SIP (carrier, agents, dialer, gateway) and report",
    configure=_configure,
)
def cmd_simulate(args: argparse.Namespace) -> int:
    """Load the scenario, run it over SIP, print and save the report."""
    from gateway.telemetry.logging import configure_logging
    from simulator.runner import run_scenario
    from simulator.scenario import ScenarioError, load_scenario

    chosen = [
        n
        for n, on in (
            ("--gateway", args.gateway),
            ("--direct", args.direct),
            ("--offline", args.offline),
        )
        if on
    ]
    if len(chosen) > 1:
        print(f"dialgate simulate: {' and '.join(chosen)} exclude each other", file=sys.stderr)
        return EXIT_USAGE
    try:
        scenario = load_scenario(args.scenario)
    except (ScenarioError, OSError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    level = LogLevel.INFO if args.verbose else LogLevel.WARNING
    configure_logging(
        LoggingSettings(level=level),
        mask_numbers=scenario.gateway.mask_callees,
        stream=sys.stderr,
    )

    if args.offline:
        from simulator.offline import run_offline
        from simulator.report import report_from_offline

        replay = run_offline(scenario, max_leads=args.max_leads)
        return _finish(report_from_offline(replay), args)

    def announce(carrier: object, target: tuple[str, int] | None) -> None:
        if args.quiet:
            return
        address = getattr(carrier, "address_spec", "?")
        where = "direct to the carrier" if target is None else f"gateway {target[0]}:{target[1]}"
        print(f"carrier {address}; agents → {where}", file=sys.stderr)

    try:
        result = asyncio.run(
            run_scenario(
                scenario,
                gateway=args.gateway,
                direct=args.direct,
                speed=args.speed,
                progress=None if args.quiet else sys.stderr,
                carrier_port=args.carrier_port,
                max_leads=args.max_leads,
                on_ready=announce,
                realtime_clock=args.realtime_clock,
            )
        )
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        print(f"dialgate simulate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.quiet and args.speed is not None and result.business_clock == "event":
        print(
            "note: --speed has no effect on the event clock (business time jumps between "
            "events); use --realtime-clock to run at a speed",
            file=sys.stderr,
        )
    if not args.quiet and result.mode == "in-process" and not result.clock_shared:
        print(
            "note: the in-process gateway keeps real time (serve() takes no clock); "
            "its time-based policies do not fast-forward",
            file=sys.stderr,
        )
    return _finish(result.report(), args)


def _finish(report: Report, args: argparse.Namespace) -> int:
    """Print and save the report; the exit status (1 when a card got suspended)."""
    if not args.quiet:
        sys.stdout.write(report.to_text())
    if args.json is not None:
        args.json.write_text(report.to_json(), encoding="utf-8")
    if args.png is not None:
        report.write_png(args.png)
    return EXIT_FAILURE if report.suspensions else EXIT_OK
