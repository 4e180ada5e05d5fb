"""Issue 19 item 7: loss tolerated — 5 % packet loss each way on both sides of the gateway.

SIPp agent alice → lossy relay → ``dialgate run`` → lossy relay → SIPp carrier
(:class:`simulator.lossy.LossyRelay`, seeded, 5 % of the datagrams dropped in
each direction on each hop; the kernel's netem is not available here). The
gateway's carrier address is the second relay, so the B-leg's INVITE, ACK and
BYE and the carrier's answers all cross it; the gateway answers the agent at
the first relay's upstream socket (rport), so both directions of the A-leg
cross that one. Calls complete through retransmissions (the agent's SIPp
timers, the gateway's RFC 3261 §17 timers with ``t1 = 0.1``, the carrier's
2xx retransmission): at least 99 % of them, and the carrier never sees a
second B-leg (a distinct Call-ID) for any callee.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from simulator.lossy import LossyRelay
from simulator.pytest_plugin import sipp_binary
from simulator.testkit import (
    SippCarrier,
    SippResult,
    run_sipp_agent,
)
from tests.carrier_answers.conftest import Started, attempts, start_gateway
from tests.policy_sipp.conftest import SIPP_DIR, admin_url, gateway_toml, register_alice
from tests.policy_sipp.conftest import start_carrier as policy_start_carrier

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.integration

# Longer runs for BENCHMARKS.md: DIALGATE_TEST_LOSS_CALLS=1000 DIALGATE_TEST_LOSS_SEED=3.
CALLS = int(os.environ.get("DIALGATE_TEST_LOSS_CALLS", "200"))
SEED = int(os.environ.get("DIALGATE_TEST_LOSS_SEED", "7"))
RATE = 20
HOLD_MS = 200
LOSS = 0.05


class Relays:
    """Lossy relays served by an event loop on a background thread (the test itself blocks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.relays: list[LossyRelay] = []

    def add(self, target: tuple[str, int], *, seed: int) -> LossyRelay:
        """A started relay to ``target`` (5 % loss each way)."""
        relay = LossyRelay(target, loss=LOSS, seed=seed)
        asyncio.run_coroutine_threadsafe(relay.start(), self.loop).result(5)
        self.relays.append(relay)
        return relay

    def stats(self, relay: LossyRelay) -> dict[str, int]:
        """The relay's counters, read on its loop."""

        async def read() -> dict[str, int]:
            return relay.stats.as_dict()

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(5)


def start_carrier(workdir: Path, timeout: int = 120) -> SippCarrier:
    """The SIPp carrier of ``sipp/carrier_lossy.xml`` on a free UDP port (stopped by PID).

    Like tests/policy_sipp's carrier, but it answers a retransmitted INVITE
    again instead of aborting the call (SIPp's own scenario does not).
    """
    return policy_start_carrier(workdir, timeout, scenario=HERE / "sipp" / "carrier_lossy.xml")


def run_agent(
    target: tuple[str, int],
    gateway: tuple[str, int],
    workdir: Path,
    numbers: list[str],
    *,
    timeout: int = 60,
) -> SippResult:
    """alice calls each number once (``agent_call.xml``) through ``target`` (the relay).

    SIPp hashes ``sip:<remote ip>:<port>`` as the digest ``uri`` — here the
    relay's address, which the gateway rightly refuses as not its own (400,
    uri-mismatch); ``-auth_uri`` makes it name the gateway's listener, the
    user-less form the gateway accepts from SIPp (gateway.callpath.auth).
    """
    sipp_binary()  # fails when SIPp is missing
    return run_sipp_agent(
        SIPP_DIR / "agent_call.xml",
        target,
        workdir,
        numbers,
        rate=RATE,
        timeout=timeout,
        hold_ms=HOLD_MS,
        extra=["-auth_uri", f"{gateway[0]}:{gateway[1]}"],
    )


def _active_calls(base: str) -> float:
    """``dialgate_active_calls`` from the admin port's /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("dialgate_active_calls "):
                return float(line.split()[1])
    raise AssertionError("no dialgate_active_calls in /metrics")


@contextmanager
def relays() -> Iterator[Relays]:
    """A :class:`Relays` whose loop and sockets are closed at the end."""
    r = Relays()
    r.thread.start()
    try:
        yield r
    finally:

        async def close() -> None:
            for relay in r.relays:
                relay.close()

        asyncio.run_coroutine_threadsafe(close(), r.loop).result(5)
        r.loop.call_soon_threadsafe(r.loop.stop)
        r.thread.join(5)
        r.loop.close()


def test_calls_complete_through_5_percent_loss_each_way(tmp_path: Path, processes: Started) -> None:
    """200 calls at 20 CPS through two lossy hops: >= 99 % complete, none doubled at the carrier."""
    carrier = start_carrier(tmp_path / "carrier", timeout=max(120, CALLS // RATE + 60))
    processes.append(carrier)
    with relays() as r:
        to_carrier = r.add(("127.0.0.1", carrier.port), seed=SEED + 12)
        gw = start_gateway(tmp_path, gateway_toml(to_carrier.address[1]), sip_extra="t1 = 0.1\n")
        processes.append(gw)
        register_alice(gw.addresses["udp"], tmp_path / "register")
        to_gateway = r.add(gw.addresses["udp"], seed=SEED)

        numbers = [f"1392{i:07d}" for i in range(CALLS)]
        started = time.monotonic()
        result = run_agent(
            to_gateway.address,
            gw.addresses["udp"],
            tmp_path / "agent",
            numbers,
            timeout=max(60, CALLS // RATE + 30),
        )
        elapsed = time.monotonic() - started
        # No call is left hanging in the gateway by a lost packet (64*T1 = 6.4 s at most).
        active = _active_calls(admin_url(gw))
        deadline = time.monotonic() + 10
        while active and time.monotonic() < deadline:
            time.sleep(0.2)
            active = _active_calls(admin_url(gw))
        agent_hop, carrier_hop = r.stats(to_gateway), r.stats(to_carrier)

    per_callee = Counter(a.callee for a in attempts(carrier))
    doubled = {c: n for c, n in per_callee.items() if n > 1}
    rate = result.successful / CALLS
    print(
        f"{result.successful}/{CALLS} calls completed ({100 * rate:.1f} %) in {elapsed:.1f} s, "
        f"{result.failed} failed, {active:.0f} left active; carrier reached {len(per_callee)} callees, doubled {doubled}; "
        f"agent hop {agent_hop}; carrier hop {carrier_hop}"
    )
    assert rate >= 0.99, result.stats
    assert 0 == active
    assert {} == doubled
    assert len(per_callee) >= 0.99 * CALLS
    # The loss really happened on both hops, both ways.
    for hop in (agent_hop, carrier_hop):
        assert hop["up_dropped"] > 0 and hop["down_dropped"] > 0, hop
