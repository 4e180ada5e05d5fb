"""``dialgate cluster status``: the gateway nodes sharing ``[store] redis``, from their heartbeats.

Each node renews a liveness key every 2 s (6 s TTL) with its name, SIP address,
start time and calls in progress (:meth:`gateway.store.redis.RedisStore.heartbeat`);
a node whose key expired is shown ``down``, and its open reservations are
orphaned by a live node (``open`` drops to 0). Exit status 1 when a node is down
or Redis cannot be read, 2 without ``[store] redis``.

What it must never do: write to Redis (it only reads the heartbeats).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command, load_or_report
from gateway.store import StoreUnavailable
from gateway.telemetry.events import iso_time

__all__ = ["cmd_cluster_status"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "cluster status",
    help="the nodes sharing [store] redis: up or down, address, calls in progress (heartbeats)",
    configure=_configure,
)
def cmd_cluster_status(args: argparse.Namespace) -> int:
    """Print every node Redis knows of; 1 when one is down or Redis does not answer."""
    settings = load_or_report(args)
    if settings is None:
        return EXIT_USAGE
    if settings.store.redis is None:
        print("dialgate cluster status: [store] redis is not set", file=sys.stderr)
        return EXIT_USAGE
    from gateway.store.redis import from_settings, node_name

    shared = from_settings(settings, node=node_name(settings), timeout=2.0)
    shared.cache.enabled = False
    try:
        nodes = shared.nodes()
    except StoreUnavailable as exc:
        print(f"dialgate cluster status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        shared.close()
    now = time.time()
    rows = [
        {
            "node": n["node"],
            "state": "up" if n["alive"] else "down",
            "address": n["address"],
            "started_at": iso_time(n["started_at"]),
            "last_heartbeat": iso_time(n["at"]),
            "heartbeat_age_seconds": None if n["at"] is None else round(now - n["at"], 1),
            "calls": n["calls"] if n["alive"] else 0,
            "open_reservations": n["open"],
        }
        for n in nodes
    ]
    if args.json:
        print(json.dumps({"nodes": rows}, indent=2))
    else:
        print(f"{'node':<28} {'state':<5} {'calls':>5} {'open':>5}  {'address':<28} last heartbeat")
        for r in rows:
            print(
                f"{r['node']:<28} {r['state']:<5} {r['calls']:>5} {r['open_reservations']:>5}  "
                f"{r['address']:<28} {r['last_heartbeat'] or '-'}"
            )
    return EXIT_OK if all(r["state"] == "up" for r in rows) else EXIT_FAILURE
