"""``dialgate security bans``: the guessing/flood ban list, shown and cleared.

Reads and writes the ban file next to the database (``<database>.bans.json``,
:class:`gateway.callpath.security.BanFile`); a running gateway adopts the change within
one housekeeping round (1 s): a cleared source is answered again and its
failure counts are forgotten.

What it must never do: ban an address (bans come only from the SIP side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.callpath.security import Ban, BanFile, ban_file_path, normalize_address, source_key
from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command, load_or_report
from gateway.telemetry.events import iso_time

__all__ = ["cmd_security_bans"]


def _configure(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--clear",
        metavar="ADDR",
        help="lift the ban of one source address (an IPv6 address: its /64's ban)",
    )
    what.add_argument("--all", action="store_true", help="lift every ban")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _row(ban: Ban, now: float) -> dict[str, object]:
    return {
        "address": ban.address,
        "reason": ban.reason,
        "count": ban.count,
        "offence": ban.offence,
        "since": iso_time(ban.since),
        "until": iso_time(ban.until),
        "remaining_seconds": max(0, round(ban.until - now)),
    }


@command(
    "security bans",
    help="list the sources banned for password guessing or floods; --clear ADDR / --all",
    configure=_configure,
)
def cmd_security_bans(args: argparse.Namespace) -> int:
    """List, or clear, the bans in the ban file."""
    settings = load_or_report(args)
    if settings is None:
        return EXIT_USAGE
    banfile = BanFile(ban_file_path(settings))
    now = time.time()
    try:
        if args.clear is not None or args.all:
            target: str | None = None
            if args.clear is not None:
                try:
                    target = normalize_address(args.clear)
                    if "/" not in target:  # an IPv6 address is banned as its network
                        target = source_key(target, settings.security.ipv6_prefix)
                except ValueError:
                    print(
                        f"dialgate security bans: not an IP address: {args.clear}", file=sys.stderr
                    )
                    return EXIT_USAGE
            lifted: list[Ban] = []

            def remove(bans: dict[str, Ban]) -> None:
                if target is None:
                    lifted.extend(b for b in bans.values() if b.until > now)
                    bans.clear()
                elif target in bans:
                    ban = bans.pop(target)
                    if ban.until > now:
                        lifted.append(ban)

            banfile.update(remove, now)
            if args.json:
                print(json.dumps({"lifted": [_row(b, now) for b in lifted]}))
            elif target is not None and not lifted:
                print(f"{target}: not banned")
                return EXIT_FAILURE
            else:
                for ban in lifted:
                    print(f"lifted {ban.address}")
                if not lifted:
                    print("no bans")
            return EXIT_OK
        bans = sorted((b for b in banfile.load().values() if b.until > now), key=lambda b: b.until)
    except OSError as exc:
        print(f"dialgate security bans: {banfile.path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps({"bans": [_row(b, now) for b in bans]}))
        return EXIT_OK
    if not bans:
        print("no bans")
        return EXIT_OK
    print(f"{'ADDRESS':<40} {'REASON':<14} {'COUNT':>6} {'#':>3}  UNTIL (UTC)               LEFT")
    for ban in bans:
        left = max(0, round(ban.until - now))
        print(
            f"{ban.address:<40} {ban.reason:<14} {ban.count:>6} {ban.offence:>3}"
            f"  {iso_time(ban.until)}  {left} s"
        )
    return EXIT_OK
