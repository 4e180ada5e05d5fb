"""Start ``dialgate`` exactly as ``dialgate run`` does, with benchmark instruments around it.

``bench/e2e.py`` starts the gateway through this runner so it can see what the
gateway cannot report about itself without app changes:

* ``--gc-stats FILE``: a ``gc.callbacks`` hook times every collection
  (end time, generation, duration, objects collected); written as JSON when
  the gateway stops (after SIGTERM, ``dialgate run`` returns normally);
  :func:`summarize` turns it into per-generation statistics;
* ``--uvloop``: run the event loop on uvloop (if importable) — the quick
  experiment of issue 7; the gateway itself has no such option yet;
* ``--cprofile FILE``: the whole run under cProfile (pstats dump at exit);
* ``--heap-dump FILE``: on SIGUSR1, the GC-tracked objects counted by type;
* ``--slow-callbacks FILE``: time every event-loop callback (``asyncio.Handle._run``,
  ~0.3 µs each) and write, when the gateway stops, each one that held the loop
  longer than ``--slow-ms`` (default 4): its end time, milliseconds (wall, and the
  thread's CPU: much less than wall means the thread was preempted or blocked in a
  system call) and what it ran — the stalls that make a call's post-dial delay long (asyncio's own
  debug mode would find them too, but records a stack for every callback);
* ``--experiment-paused-only``: a what-if that sizes a store fix (see its help);
* ``--operator-cli``: register the operator subcommands (``dnc import``,
  ``consent import``…) of ``gateway.cli.operator``, which ``gateway/cli/main.py``
  does not import yet, so the bench imports data the way an operator would.

Everything after ``--`` goes to ``gateway.cli.main.main`` unchanged, e.g.
``python bench/gateway_runner.py --gc-stats gc.json -- run --config gw.toml``.
This module changes no gateway behaviour and never opens a socket itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class SlowCallbacks:
    """Times every event-loop callback; keeps those longer than ``threshold`` seconds."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.slow: list[tuple[float, float, float, str]] = []
        self.count = 0

    @staticmethod
    def name(handle: Any) -> str:
        """What a handle runs: the task's coroutine, or the callback's qualified name."""
        callback = handle._callback
        owner = getattr(callback, "__self__", None)
        coro = getattr(owner, "get_coro", None)
        if coro is not None:  # a task's step: name its coroutine
            inner = coro()
            return f"task {getattr(inner, '__qualname__', inner)}"
        return str(getattr(callback, "__qualname__", callback))

    def install(self) -> None:
        import asyncio.events

        from gateway.transport.base import Transport

        original = asyncio.events.Handle._run
        record = self
        parse_unit = Transport._parse_unit
        #: The start lines of the SIP messages the current callback received.
        lines: list[str] = []

        def _parse_unit(transport: Any, data: bytes, *args: Any, **kwargs: Any) -> Any:
            head = bytes(data[:80]).split(b"\r\n", 1)[0]
            lines.append(head.decode("utf-8", "replace").split(" sip", 1)[0][:40])
            return parse_unit(transport, data, *args, **kwargs)

        Transport._parse_unit = _parse_unit  # type: ignore[method-assign]

        def _run(handle: Any) -> None:
            lines.clear()
            began = time.perf_counter()
            cpu = time.thread_time()
            try:
                original(handle)
            finally:
                took = time.perf_counter() - began
                record.count += 1
                if took > record.threshold:
                    spent = (time.thread_time() - cpu) * 1000
                    what = record.name(handle)
                    if lines:  # a datagram or stream read: name the SIP messages it carried
                        what += " [" + ", ".join(lines[:3]) + (" …" if len(lines) > 3 else "") + "]"
                    record.slow.append((time.monotonic(), took * 1000, spent, what))

        asyncio.events.Handle._run = _run  # type: ignore[method-assign]

    def dump(self) -> dict[str, Any]:
        return {
            "callbacks": self.count,
            "threshold_ms": self.threshold * 1000,
            "slow": [
                [round(t, 4), round(ms, 3), round(cpu, 3), what] for t, ms, cpu, what in self.slow
            ],
        }


class GcTimer:
    """Collects every garbage collection through ``gc.callbacks``.

    Each pause is ``(time.monotonic() at its end, generation, milliseconds,
    objects collected)``; CLOCK_MONOTONIC is system-wide on Linux, so the
    benchmark can keep only the pauses inside its traffic window.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float, int]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            elapsed = (time.perf_counter() - self._start) * 1000
            self.pauses.append(
                (time.monotonic(), int(info["generation"]), elapsed, int(info["collected"]))
            )

    def dump(self) -> dict[str, Any]:
        """Thresholds, frozen objects and every pause (JSON-ready)."""
        return {
            "thresholds": gc.get_threshold(),
            "frozen": gc.get_freeze_count(),
            "pauses": [[round(t, 4), g, round(ms, 4), n] for t, g, ms, n in self.pauses],
        }


def summarize(
    pauses: list[list[float]], start: float = 0.0, end: float = float("inf")
) -> dict[str, Any]:
    """Count, total, p50/p99/max pause (ms) per generation for pauses ending in [start, end]."""
    out: dict[str, Any] = {}
    for gen in (0, 1, 2):
        chosen = [p for p in pauses if p[1] == gen and start <= p[0] <= end]
        times = sorted(p[2] for p in chosen)
        if not times:
            out[f"gen{gen}"] = {"count": 0}
            continue
        out[f"gen{gen}"] = {
            "count": len(times),
            "total_ms": round(sum(times), 2),
            "p50_ms": round(times[len(times) // 2], 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "max_ms": round(times[-1], 3),
            "collected": int(sum(p[3] for p in chosen)),
        }
    return out


def main() -> int:
    """Parse the runner's options, install the instruments, run the CLI."""
    argv = sys.argv[1:]
    if "--" in argv:
        split = argv.index("--")
        own, rest = argv[:split], argv[split + 1 :]
    else:
        own, rest = argv, ["run"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gc-stats", type=Path)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--cprofile", type=Path)
    parser.add_argument("--operator-cli", action="store_true")
    parser.add_argument("--slow-callbacks", type=Path)
    parser.add_argument("--slow-ms", type=float, default=4.0)
    parser.add_argument(
        "--experiment-paused-only",
        action="store_true",
        help="what-if: SQLiteStore.agent_usage reads only the pause flag (valid while no "
        "agent limit is configured, as in bench/e2e.py) — sizes the store fix, changes no file",
    )
    parser.add_argument(
        "--heap-dump",
        type=Path,
        help="on SIGUSR1 write the GC-tracked objects by type (top 40) to this file",
    )
    args = parser.parse_args(own)
    if args.uvloop:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.heap_dump is not None:
        import collections
        import signal

        def dump_heap(_signum: int, _frame: object) -> None:
            objects = gc.get_objects()
            counts = collections.Counter(type(o).__qualname__ for o in objects)
            sized = [(len(o), type(o).__qualname__) for o in objects if isinstance(o, list | dict)]
            biggest = sorted(sized, reverse=True)[:5]
            del objects
            t0 = time.perf_counter()
            gc.collect()
            full_ms = (time.perf_counter() - t0) * 1000
            after = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            lines = [
                f"tracked objects: {sum(counts.values())} (frozen {gc.get_freeze_count()});"
                f" a full gc.collect() now takes {full_ms:.1f} ms and leaves {sum(after.values())}",
                f"largest lists/dicts: {biggest}",
                "   before     after  type",
            ]
            lines += [f"{n:>9} {after[name]:>9}  {name}" for name, n in counts.most_common(40)]
            args.heap_dump.write_text("\n".join(lines) + "\n")

        signal.signal(signal.SIGUSR1, dump_heap)
    if args.experiment_paused_only:
        from gateway.store.sqlite import SQLiteStore
        from policies.agent import AgentUsage
        from policies.quotas import StartTimes

        def paused_only(self: SQLiteStore, agent: str, now: float, **_: Any) -> AgentUsage:
            pause = self._read("SELECT reason FROM agent_pauses WHERE agent=?", (agent,))
            return AgentUsage(
                call_starts=StartTimes(),
                complaints=(),
                paused=bool(pause),
                pause_reason=pause[0]["reason"] if pause else "",
            )

        SQLiteStore.agent_usage = paused_only  # type: ignore[method-assign]
    slow = SlowCallbacks(args.slow_ms / 1000)
    if args.slow_callbacks is not None:
        slow.install()
    timer = GcTimer()
    if args.gc_stats is not None:
        gc.callbacks.append(timer)
    from gateway.cli.main import main as cli_main

    if args.operator_cli:
        import gateway.cli.operator  # noqa: F401  (registers its subcommands)

    profiler = None
    if args.cprofile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        return cli_main(rest)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(args.cprofile))
        if args.slow_callbacks is not None:
            args.slow_callbacks.write_text(json.dumps(slow.dump()))
        if args.gc_stats is not None:
            gc.callbacks.remove(timer)
            dump = timer.dump()
            dump["uvloop"] = args.uvloop
            args.gc_stats.write_text(json.dumps(dump))


if __name__ == "__main__":
    sys.exit(main())
