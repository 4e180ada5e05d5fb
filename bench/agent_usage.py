"""What the agent-limit policy reads per call, against the agent's calls in its window.

``AgentLimitsPolicy`` asks ``SQLiteStore.agent_usage(agent, now, window=…)`` on every
call while ``[policy.agents]`` sets a limit; the store returns every call start of the
agent in the longest window in force (a day with ``calls_per_day``). This measures that
read as the call path makes it (a read, then the call's reservation, 50 calls in a
row), and ``agent_calls`` (the count the alert round uses), for an agent (a dialer)
with 1,000 / 10,000 / 30,000 calls in the store, one every 2 s:

    .venv/bin/python bench/agent_usage.py
    .venv/bin/python bench/agent_usage.py --workers

``--workers``: two stores as two workers of ``dialgate run --workers 2`` (siblings of
each other), taking turns: each read follows a reservation by the other worker, as when
a dialer's calls go through both.

Asserts nothing; a temporary database.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.store.sqlite import SQLiteStore

T0 = 1_793_577_600.0


def main() -> int:
    workers = "--workers" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="dialgate-agent-") as tmp:
        store = SQLiteStore(Path(tmp) / "agent.db", autocheckpoint=False)
        other = store
        if workers:
            other = SQLiteStore(Path(tmp) / "agent.db", autocheckpoint=False)
            store.owner, store.siblings = "w0", ("w1",)
            other.owner, other.siblings = "w1", ("w0",)
        made = 0
        for target in (1_000, 10_000, 30_000):
            with store.batch():
                while made < target:
                    store.reserve(
                        "c1", f"k{made}", f"+86139{made:08d}", T0 + made * 2.0, agent="dialer"
                    )
                    made += 1
            for window in (3600.0, 86400.0):
                # As on the call path: a read, then this call's reservation, call after call
                # (the first read may load the window from the rows; the rest are steady).
                reps, read_s = 50, 0.0
                for _ in range(reps):
                    now = T0 + made * 2.0
                    began = time.perf_counter()
                    usage = store.agent_usage("dialer", now, window=window)
                    read_s += time.perf_counter() - began
                    other.reserve("c1", f"k{made}", f"+86139{made:08d}", now, agent="dialer")
                    made += 1
                read_ms = read_s / reps * 1000
                count = ""
                if hasattr(store, "agent_calls"):  # not in trees before it (comparisons)
                    began = time.perf_counter()
                    for _ in range(reps):
                        store.agent_calls("dialer", now - window)
                    count = f", agent_calls {(time.perf_counter() - began) / reps * 1000:6.2f} ms"
                print(
                    f"{made:>6} calls in the store, window {window:>6.0f} s:"
                    f" agent_usage {read_ms:6.2f} ms ({len(usage.call_starts)} starts){count}"
                )
        store.close()
        if other is not store:
            other.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
