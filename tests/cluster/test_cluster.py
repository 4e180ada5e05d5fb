"""The cluster on the wire: SIPp dialer → Kamailio dispatcher → two dialgate nodes → one Redis → SIPp carrier.

(a) 50 concurrent attempts on a card with ``calls_per_minute = 10``: exactly 10
reach the carrier, the other 40 get the product's quota answer (503
``no-card-available``), both nodes took attempts, and Redis, the nodes' SQLite
files and each node's own view of the card agree on 10.

(b) A node killed with SIGKILL while calls run: the balancer takes it out and
calls continue through the other node; every call that finished has its CDR
in one of the nodes' SQLite files; no card counter in Redis goes down.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from simulator.testkit import Message, finish_sipp, sipp_command, start_sipp, wait_until
from tests.policy_sipp.conftest import admin_get, admin_url, cli_json
from tests.redis.conftest import RedisServer

from .conftest import (
    DIALER_HOST,
    NODE_HOSTS,
    SIPP_DIR,
    StartCarrierCluster,
    cluster_status,
    free_udp_port_on,
    kill9,
    sqlite_rows,
)


def numbers(count: int, base: int = 0) -> list[str]:
    """Distinct callees (none in any DNC list)."""
    return [f"+86139{base + i:08d}" for i in range(count)]


def start_dialer(
    workdir: Path,
    target: tuple[str, int],
    callees: list[str],
    *,
    rate: int,
    hold_ms: int,
    timeout: int,
) -> subprocess.Popen[bytes]:
    """The dialer: one call per callee at ``rate``/s from 127.0.0.4, each held ``hold_ms``."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "numbers.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in callees))
    cmd = sipp_command(
        SIPP_DIR / "dialer_call.xml",
        port=free_udp_port_on(DIALER_HOST),
        target=target,
        workdir=workdir,
        timeout=timeout,
        extra=[
            "-i",
            DIALER_HOST,
            "-inf",
            str(csv),
            "-m",
            str(len(callees)),
            "-r",
            str(rate),
            "-l",
            str(len(callees)),
            "-d",
            str(hold_ms),
            "-timeout_error",
            "-default_behaviors",
            "all,-abortunexp",
            "-recv_timeout",
            "8000",
        ],
    )
    return start_sipp(cmd, workdir)


def invite_finals(messages: Sequence[Message]) -> dict[str, int]:
    """Call-ID → final status of its authenticated INVITE (CSeq 2), as the dialer received it."""
    out: dict[str, int] = {}
    for m in messages:
        if (
            m.direction == "received"
            and m.status is not None
            and m.status >= 200
            and (m.header("CSeq") or "") == "2 INVITE"
        ):
            out.setdefault(m.header("Call-ID") or "", m.status)
    return out


def bye_answered(messages: Sequence[Message]) -> set[str]:
    """Call-IDs whose BYE got its 200 (the call finished as the dialer sees it)."""
    return {
        m.header("Call-ID") or ""
        for m in messages
        if m.direction == "received" and m.status == 200 and (m.header("CSeq") or "") == "3 BYE"
    }


def redis_starts(url: str, card: str) -> int:
    """The card's counted call starts in Redis (the shared counter every node reserves in)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.zcard(f"dialgate:card:{card}:starts"))
    finally:
        client.close()


def redis_in_use(url: str, card: str) -> int:
    """The card's open reservations in Redis (calls in use, every node's)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.hlen(f"dialgate:card:{card}:inuse"))
    finally:
        client.close()


def test_fifty_concurrent_attempts_place_exactly_the_quota(
    tmp_path: Path,
    redis_cluster_server: RedisServer,
    carrier_cluster: StartCarrierCluster,
) -> None:
    """(a) calls_per_minute = 10 across two nodes: 10 placed, 40 refused, everyone agrees."""
    carrier, cluster = carrier_cluster(
        {"calls_per_minute": 10, "calls_per_hour": 1000, "concurrent": 50}
    )
    callees = numbers(50)
    dialer = start_dialer(
        tmp_path / "dialer", cluster.lb.address, callees, rate=50, hold_ms=2000, timeout=60
    )
    result = finish_sipp(dialer, tmp_path / "dialer", 90)
    finals = invite_finals(result.messages)
    assert 50 == len(finals), (result.stats, cluster.lb.log()[-2000:])
    placed = [cid for cid, status in finals.items() if status == 200]
    refused = [cid for cid, status in finals.items() if status == 503]
    assert 10 == len(placed), finals
    assert 40 == len(refused), finals
    # The refusal is the product's quota answer, with the limit and when it frees.
    answers = [
        m
        for m in result.messages
        if m.direction == "received" and m.status == 503 and m.header("CSeq") == "2 INVITE"
    ]
    for answer in answers:
        assert "no-card-available" in (answer.header("Reason") or ""), answer.headers
        assert answer.header("Retry-After") is not None
    time.sleep(1.0)  # the last BYEs reach the carrier
    assert 10 == len(carrier.invites())

    # Both nodes took attempts (the balancer spreads the dialer's calls) ...
    def per_node() -> list[int]:
        return [sqlite_rows(db, "SELECT COUNT(*) FROM cdrs")[0][0] for db in cluster.dbs]

    wait_until(lambda: sum(per_node()) >= 50, 15, "a CDR for every attempt")
    assert all(n > 0 for n in per_node()), per_node()
    assert 50 == sum(per_node()), per_node()
    # ... and Redis, the nodes' own records and each node's view agree on 10.
    assert 10 == redis_starts(redis_cluster_server.url, "c1")
    starts = [
        sqlite_rows(db, "SELECT COUNT(*) FROM call_starts WHERE card = 'c1'")[0][0]
        for db in cluster.dbs
    ]
    assert 10 == sum(starts), starts
    for node in cluster.nodes:
        shown = cli_json(node.config, "cards", "show", "c1")
        assert {"used": 10, "limit": 10} == shown["usage"]["calls_per_minute"], shown


def test_a_node_killed_mid_load_loses_no_cdr_and_no_counter(
    tmp_path: Path,
    redis_cluster_server: RedisServer,
    carrier_cluster: StartCarrierCluster,
) -> None:
    """(b) kill -9 one node while calls run: the rest go through the other node."""
    carrier, cluster = carrier_cluster(
        {"calls_per_minute": 10000, "calls_per_hour": 100000, "concurrent": 200},
        carrier_timeout=180,
    )
    callees = numbers(60, base=1000)
    dialer = start_dialer(
        tmp_path / "dialer", cluster.lb.address, callees, rate=5, hold_ms=1500, timeout=90
    )
    # Kill node 1 once it has placed calls (some finished, some up).
    victim_db = cluster.dbs[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (
            sqlite_rows(victim_db, "SELECT COUNT(*) FROM cdrs WHERE answer_at IS NOT NULL")[0][0]
            >= 2
        ):
            break
        time.sleep(0.2)
    before = redis_starts(redis_cluster_server.url, "c1")
    assert before > 0
    kill9(cluster.nodes[0])
    killed_at = len(carrier.invites())
    result = finish_sipp(dialer, tmp_path / "dialer", 120)
    time.sleep(1.0)
    after = redis_starts(redis_cluster_server.url, "c1")
    assert after >= before, (before, after)  # no counter went down
    # Calls continued through the other node after the kill.
    invites = carrier.invites()
    later = invites[killed_at:]
    assert len(later) >= 10, (len(invites), killed_at, cluster.lb.log()[-3000:])
    vias = [m.header("Via") or "" for m in later[3:]]
    assert all(NODE_HOSTS[1] in v for v in vias), vias
    # Every call that finished (its BYE answered) has its CDR in a node's file.
    finished = bye_answered(result.messages)
    assert len(finished) >= 10
    cdrs: dict[str, str] = {}
    for db in cluster.dbs:
        for call_id, outcome in sqlite_rows(db, "SELECT call_id, outcome FROM cdrs"):
            cdrs[call_id] = outcome
    missing = [cid for cid in finished if cid not in cdrs]
    assert [] == missing, (missing, sorted(cdrs)[:5])
    # The live node saw the dead one's heartbeat expire and orphaned its open
    # reservations: nothing stays "in use" on the card, and the starts still count.
    wait_until(lambda: 0 == redis_in_use(redis_cluster_server.url, "c1"), 20, "in use 0")
    assert redis_starts(redis_cluster_server.url, "c1") >= after
    status = cluster_status(cluster.nodes[1])
    states = {n["address"]: n["state"] for n in status["nodes"]}
    assert "down" == states[f"udp:{NODE_HOSTS[0]}:{cluster.ports[0]}"], status
    assert "up" == states[f"udp:{NODE_HOSTS[1]}:{cluster.ports[1]}"], status
    # The live node's admin API says the same.
    shown = admin_get(admin_url(cluster.nodes[1]) + "/cluster")
    assert states == {n["address"]: n["state"] for n in shown["nodes"]}, shown
