"""bench/e2e.py's process samples: the event loop's CPU apart from the process's.

One process's ceiling is its main thread (the event loop) at one core; the process's
total also counts SQLite's checkpoint thread and the store's probe, which run on
another core. ``loop%`` must be the main thread alone, and the busiest of several
workers, not their sum.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from . import load_bench

e2e = load_bench("e2e")


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_busy_helper_thread_counts_for_the_process_not_the_loop() -> None:
    before = e2e.sample(os.getpid())
    helper = threading.Thread(target=_burn, args=(0.4,))
    helper.start()
    helper.join()
    after = e2e.sample(os.getpid())
    assert before is not None and after is not None
    process = after.cpu - before.cpu
    loop = after.loop - before.loop
    # /proc counts in clock ticks (10 ms): the helper's 0.4 s shows in the process,
    # and the main thread, which only waited for it, shows next to nothing.
    assert process >= 0.3
    assert loop < 0.1
    assert after.loop <= after.cpu


def test_the_main_thread_is_the_loop() -> None:
    before = e2e.sample(os.getpid())
    _burn(0.3)
    after = e2e.sample(os.getpid())
    assert before is not None and after is not None
    assert after.loop - before.loop >= 0.2


def _pair(loop_seconds: float, wall: float = 10.0) -> tuple[Any, Any]:
    a = e2e.ProcSample(wall=0.0, cpu=0.0, rss_kb=0, hwm_kb=0, loop=0.0)
    b = e2e.ProcSample(wall=wall, cpu=loop_seconds * 1.1, rss_kb=0, hwm_kb=0, loop=loop_seconds)
    return a, b


def test_loop_percent_is_the_busiest_worker_not_the_sum() -> None:
    assert e2e.loop_percent([_pair(6.0), _pair(9.0)]) == 90.0
    assert e2e.loop_percent([_pair(3.0)]) == 30.0


def test_loop_percent_without_samples_is_unknown() -> None:
    assert e2e.loop_percent([]) is None
    assert e2e.loop_percent([(None, None)]) is None


def test_combined_workers_sum_their_loops() -> None:
    total = e2e.combined([_pair(6.0)[1], _pair(9.0)[1]])
    assert total is not None
    assert total.loop == 15.0
