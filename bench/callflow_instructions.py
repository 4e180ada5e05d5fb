"""Instructions per call of ``bench/callflow_cpu.py``, counted by valgrind: a figure that
does not move with the machine's load.

On this shared box the CPU time per call of ``callflow_cpu.py`` varies by ±8 % from
run to run (other tenants, frequency), so a change worth 2-3 % cannot be seen in it,
however many runs are averaged. Valgrind's ``callgrind`` counts the instructions the
process executes instead: the same tree gives the same count within ~0.1 %.

The count is taken at two call counts (``--low``, ``--high``) and the difference is
divided by the calls between them, so start-up (imports, the cached database, the
cards) cancels out. What is counted is the whole process: the gateway *and* the
scripted peers of ``callflow_cpu.py`` (about a seventh of it, the same on both sides
of a comparison). It is instructions, not time: a change that trades instructions
for cache misses or system calls shows here as a gain it may not be. Compare two
trees by running each one's own copy of this script (see BENCHMARKS.md).

    .venv/bin/python bench/callflow_instructions.py            # ~2 min on 2 cores

Needs ``valgrind`` (Debian ``valgrind``); exits 2 without it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "bench" / "callflow_cpu.py"
_COLLECTED = re.compile(rb"Collected : (\d+)")


def instructions(valgrind: str, calls: int, workdir: Path, extra: list[str]) -> int:
    """Instructions the whole ``callflow_cpu.py`` run executes with ``calls`` calls."""
    out = workdir / f"callgrind.{calls}"
    cmd = [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(FLOW),
        "--calls",
        str(calls),
        "--gc",
        "run",
        *extra,
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=3600)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise SystemExit(f"callflow_cpu.py --calls {calls} under valgrind failed:\n{tail}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--low", type=int, default=100, help="calls in the short run")
    parser.add_argument("--high", type=int, default=400, help="calls in the long run")
    parser.add_argument("--valgrind", default=shutil.which("valgrind") or "")
    args, extra = parser.parse_known_args()
    if not args.valgrind:
        print("valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.high <= args.low:
        parser.error("--high must be above --low")
    with (
        tempfile.TemporaryDirectory(prefix="dialgate-icount-") as tmp,
        ThreadPoolExecutor(max_workers=2) as pool,  # the two runs side by side
    ):
        low, high = pool.map(
            lambda n: instructions(args.valgrind, n, Path(tmp), extra), (args.low, args.high)
        )
    per_call = (high - low) / (args.high - args.low)
    print(f"instructions: {low:,} ({args.low} calls), {high:,} ({args.high} calls)")
    print(f"per call: {per_call / 1e6:.3f} M (gateway and scripted peers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
