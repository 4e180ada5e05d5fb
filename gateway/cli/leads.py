"""``dialgate leads check FILE``: scrub a lead list before a dialer loads it.

Reads a CSV or NDJSON list (``-`` for stdin), judges every number with the
call path's policies (``gateway.operator.leads``: the same checks and reason texts as
the SIP answers, nothing reserved or written) and prints one row per lead on
stdout — NDJSON (default) or CSV (``--format csv``) — and a summary line for a
person on stderr (``--summary-json`` prints it as JSON there instead).

Exit codes: 0 done (refused leads are an answer, not a failure); 1 the store
could not be opened; 2 bad usage, configuration or an unreadable list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path
from typing import TextIO

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command, load_or_report
from gateway.store import StoreUnavailable

__all__ = ["cmd_leads_check"]

#: Lists at least this long are judged by one process per CPU (unless --jobs).
PARALLEL_FROM = 5000


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="lead list: CSV or NDJSON ('-' reads stdin)")
    parser.add_argument(
        "--input-format",
        choices=("csv", "ndjson"),
        default=None,
        help="format of FILE (default: from the extension, else sniffed)",
    )
    parser.add_argument(
        "--format",
        choices=("ndjson", "csv"),
        default="ndjson",
        help="format of the answer on stdout (default ndjson)",
    )
    parser.add_argument("--column", default=None, help="name of the number column/field")
    parser.add_argument(
        "--campaign", default=None, help="campaign of rows that name none (consent, hours)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="processes judging the list (default: one per CPU for lists over 5,000 rows)",
    )
    parser.add_argument(
        "--summary-json", action="store_true", help="print the summary on stderr as JSON"
    )


def _input_format(path: str, explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix in (".ndjson", ".jsonl", ".json"):
        return "ndjson"
    if suffix in (".csv", ".tsv"):
        return "csv"
    return None


def _lines(handle: TextIO) -> Iterator[str]:
    yield from handle


@command(
    "leads check",
    help="judge every number of a lead list as a call to it would be judged",
    configure=_configure,
)
def cmd_leads_check(args: argparse.Namespace) -> int:
    """Print a verdict per lead on stdout and a summary on stderr."""
    settings = load_or_report(args)
    if settings is None:
        return EXIT_USAGE
    from gateway.operator.leads import (
        LeadSummary,
        check_in_processes,
        checker_from_settings,
        parse_leads,
        verdict_csv_header,
        verdict_csv_row,
        verdict_json_line,
    )
    from gateway.store import store_from_settings
    from gateway.telemetry.logging import configure_logging

    configure_logging(
        settings.logging, mask_numbers=settings.policy.mask_numbers, stream=sys.stderr
    )
    try:
        handle: TextIO = (
            sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig", newline="")  # noqa: SIM115
        )
    except OSError as exc:
        print(f"dialgate: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        store = store_from_settings(settings)
    except StoreUnavailable as exc:
        print(f"dialgate: store unavailable: {exc.detail}", file=sys.stderr)
        handle.close()
        return EXIT_FAILURE
    store_open = True
    out = sys.stdout
    summary = LeadSummary()
    started = time.perf_counter()
    try:
        leads = parse_leads(
            _lines(handle), _input_format(args.file, args.input_format), args.column
        )
        if args.format == "csv":
            out.write(verdict_csv_header())
        now = time.time()
        first = list(islice(leads, PARALLEL_FROM))
        jobs = args.jobs or (os.cpu_count() or 1 if len(first) >= PARALLEL_FROM else 1)
        if jobs > 1:
            # No SQLite connection (nor its guard's thread) may cross a fork: each
            # process opens its own.
            store.close()
            store_open = False
            for text in check_in_processes(
                settings,
                chain(first, leads),
                now,
                jobs=jobs,
                as_csv=args.format == "csv",
                campaign=args.campaign,
                summary=summary,
            ):
                out.write(text)
        else:
            checker = checker_from_settings(settings, store, campaign=args.campaign)
            render = verdict_csv_row if args.format == "csv" else verdict_json_line
            batch: list[str] = []
            for verdict in checker.check_all(chain(first, leads), now, summary):
                batch.append(render(verdict))
                if len(batch) >= 1000:
                    out.write("".join(batch))
                    batch.clear()
            out.write("".join(batch))
        out.flush()
    except ValueError as exc:
        print(f"dialgate: {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if handle is not sys.stdin:
            handle.close()
        if store_open:
            store.close()
    seconds = time.perf_counter() - started
    if args.summary_json:
        data = summary.as_dict() | {"seconds": round(seconds, 3)}
        print(json.dumps(data), file=sys.stderr)
    else:
        print(summary.text(seconds), file=sys.stderr)
    return EXIT_OK
