"""An agent whose node dies keeps calling through the other node, without re-registering.

SIPp agent alice → Kamailio dispatcher → two dialgate nodes sharing Redis → SIPp
carrier. alice REGISTERs through the balancer (hashed by her From URI to one
node); that node is killed with SIGKILL; her next call goes through the balancer
to the other node, which has never seen her REGISTER: it finds her binding in the
cluster-wide copy in Redis and places the call (without it: 403, "not
registered", until the phone's next REGISTER, up to an hour later).
"""

from __future__ import annotations

from pathlib import Path

from tests.policy_sipp.conftest import register_alice, run_agent

from .conftest import NODE_HOSTS, StartCarrierCluster, kill9, sqlite_rows
from .test_cluster import numbers


def test_an_agent_whose_node_died_calls_through_the_other_node(
    tmp_path: Path, carrier_cluster: StartCarrierCluster
) -> None:
    carrier, cluster = carrier_cluster(
        {"calls_per_minute": 100, "calls_per_hour": 1000, "concurrent": 10}, agents=True
    )
    register_alice(cluster.lb.address, tmp_path / "register")
    held = [
        i
        for i, db in enumerate(cluster.dbs)
        if sqlite_rows(db, "SELECT COUNT(*) FROM registrations WHERE aor='alice'")[0][0]
    ]
    assert 1 == len(held), held  # the balancer sent the REGISTER to one node
    home, other = held[0], 1 - held[0]
    # A call through her home node works (the baseline).
    first = run_agent("agent_call.xml", cluster.lb.address, tmp_path / "call1", numbers(1))
    assert 1 == first.successful, first.stats
    kill9(cluster.nodes[home])
    invites_before = len(carrier.invites())
    result = run_agent(
        "agent_call.xml", cluster.lb.address, tmp_path / "call2", numbers(1, base=500)
    )
    assert 1 == result.successful, (result.stats, cluster.lb.log()[-2000:])
    placed = carrier.invites()[invites_before:]
    assert placed, "the call did not reach the carrier"
    assert NODE_HOSTS[other] in (placed[-1].header("Via") or "")
