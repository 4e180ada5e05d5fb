"""Micro-benchmarks of the per-call work of the call path that the other bench scripts miss.

* digest: the gateway's ``Authenticator.verify`` of an INVITE carrying MD5
  credentials (nonce check, HA1 from the configured password, response),
  and the 407 challenge it answers first;
* decision: ``services.pipeline.decide`` exactly as the B2BUA calls it — every
  policy over the real SQLite store (``--dnc`` DNC numbers, ``--consent``
  consent records, ``--cards`` cards bound to as many agents; the database
  ``bench/e2e.py`` builds and caches), card selection with the write-ahead
  reservation included. Each decision is for a new callee; the latency of the
  first and of the last few hundred calls is shown separately because the
  store's per-agent and per-card history grows with every call. ``--agents
  100,1`` runs it spread over 100 agents/cards, then with one hot agent and
  card (what one SIPp caller in ``bench/e2e.py`` produces).

Run: ``.venv/bin/python bench/micro_callpath.py [--decisions 3000]``. Uses a
copy of the cached database in a temp dir; opens no sockets; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # bench/ is not a package: found through sys.path above

from gateway.callpath.auth import Authenticator
from gateway.config import Settings, load_settings
from gateway.sip import Request
from gateway.sip.digest import DigestClient, DigestServer


def pcts(ns: list[int]) -> str:
    """p50/p99 of nanosecond samples, in µs."""
    s = sorted(ns)
    if not s:
        return "-"
    p50 = s[len(s) // 2] / 1000
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))] / 1000
    return f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"


def bench_digest(settings: Settings, n: int) -> None:
    """Challenge + verify of agent INVITEs, as ``Gateway._challenge`` does."""
    server = DigestServer(key=b"k" * 32, realm=settings.sip.realm)
    auth = Authenticator(settings, server)
    ruri = "sip:+8619900000001@127.0.0.1:5060"
    base = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKbench"),
        ("From", "<sip:agent001@127.0.0.1>;tag=1"),
        ("To", f"<{ruri}>"),
        ("Call-ID", "bench@x"),
        ("CSeq", "2 INVITE"),
    ]
    now = time.time()
    challenge_ns: list[int] = []
    verify_ns: list[int] = []
    clock = time.perf_counter_ns
    for i in range(n):
        plain = Request("INVITE", ruri, list(base))
        t0 = clock()
        result = auth.verify(plain, ("127.0.0.1", 5061), now, proxy=True)
        challenge_ns.append(clock() - t0)
        assert result.answer is not None
        client = DigestClient("agent001", "pw001")
        client.handle_challenge(407, [v for k, v in result.answer.headers])
        header = client.authorization("INVITE", ruri)
        assert header is not None
        signed = Request("INVITE", ruri, [*base, header])
        t0 = clock()
        ok = auth.verify(signed, ("127.0.0.1", 5061), now + i * 1e-4, proxy=True)
        verify_ns.append(clock() - t0)
        assert ok.identity is not None, ok.detail
    print(f"digest 407 challenge (Authenticator.verify, no credentials): {pcts(challenge_ns)}")
    print(f"digest MD5 verify (Authenticator.verify, valid credentials): {pcts(verify_ns)}")


def bench_decisions(settings: Settings, n: int, numbers: list[str], agents: int) -> None:
    """Pipeline decisions with card selection and reservation over the real store.

    Decisions go round-robin to ``agents`` agents (agentNNN, bound to cNNN).
    """
    from gateway.callpath.services import services_from_settings
    from gateway.store import store_from_settings
    from policies.context import build_context

    store = store_from_settings(settings)
    now = time.time()
    services = services_from_settings(settings, store, now=now)
    samples: list[int] = []
    outcomes: dict[str, int] = {}
    clock = time.perf_counter_ns
    cpu = time.thread_time_ns
    cpu_start = cpu()
    for i in range(n):
        t = now + i * 0.01
        agent = f"agent{i % agents:03d}"
        t0 = clock()
        ctx = build_context(
            numbers[i],
            agent=agent,
            campaign="bench",
            default_region="CN",
            now=datetime.fromtimestamp(t, UTC),
            emergency=services.emergency,
            bound_card=f"c{i % agents:03d}",
            call_id=f"bench-{i}",
        )
        decision = services.pipeline.decide(ctx)
        samples.append(clock() - t0)
        key = "allow" if decision.allowed else str(decision.reason)
        outcomes[key] = outcomes.get(key, 0) + 1
    cpu_us = (cpu() - cpu_start) / 1000 / max(n, 1)
    k = min(500, n // 3)
    print(
        f"decision, {agents} agent(s) (build_context + pipeline.decide with reservation, SQLite store): "
        f"all {pcts(samples)}; first {k}: {pcts(samples[:k])}; last {k}: {pcts(samples[-k:])}; "
        f"CPU {cpu_us:.0f} µs per decision; outcomes {outcomes}"
    )
    store.close()


def main() -> None:
    """Run both micro-benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digest", type=int, default=3000)
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--dnc", type=int, default=1_000_000)
    parser.add_argument("--consent", type=int, default=10_000)
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument(
        "--agents",
        default="100,1",
        help="decision runs, each spread over this many agents/cards (1 = one hot agent and card)",
    )
    ns = parser.parse_args()
    args = e2e.build_parser().parse_args(
        ["e2e", "--dnc", str(ns.dnc), "--consent", str(ns.consent), "--cards", str(ns.cards)]
    )
    template, _ = e2e.build_template(args)
    with tempfile.TemporaryDirectory(prefix="dialgate-micro-") as tmp:
        db = Path(tmp) / "gw.db"
        shutil.copyfile(template, db)
        cfg = Path(tmp) / "gw.toml"
        cfg.write_text(e2e.gateway_toml(sip_port=5060, carrier_port=5070, db=db, cards=ns.cards))
        settings = load_settings(cfg)
        print(f"load {e2e.loadavg()}")
        bench_digest(settings, ns.digest)
        numbers = e2e.consent_numbers(ns.consent)
        for agents in (int(a) for a in ns.agents.split(",")):
            # A fresh copy per run: history from one run must not slow the next.
            shutil.copyfile(template, db)
            Path(f"{db}-wal").unlink(missing_ok=True)
            Path(f"{db}-shm").unlink(missing_ok=True)
            count = min(ns.decisions, len(numbers))
            bench_decisions(settings, count, numbers, min(agents, ns.cards))


if __name__ == "__main__":
    main()
