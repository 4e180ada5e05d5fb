"""Profile the gateway during one end-to-end step: where its CPU goes per call.

Runs one step of ``bench/e2e.py e2e`` (SIPp agents → dialgate → SIPp carrier,
every policy on, the same cached database) at ``--rate`` and samples the
gateway process while the calls run:

* ``--profiler py-spy`` (default): ``py-spy record --format raw --nonblocking``
  attached to the gateway's PID (needs ptrace: root, or
  ``kernel.yama.ptrace_scope=0``). Install it outside the project venv if
  needed: ``pip install --target /tmp/benchx py-spy`` and pass
  ``--py-spy /tmp/benchx/bin/py-spy``.
* ``--profiler cprofile``: the gateway runs under cProfile inside
  ``bench/gateway_runner.py`` (deterministic, slower: use a lower rate).

Prints the top functions by self time and by inclusive time, and self time
per source file, as a share of the gateway's busy samples; with
``--out DIR`` the raw profile is kept there. Run:

    .venv/bin/python bench/profile_e2e.py --rate 100 --seconds 15 --py-spy /tmp/benchx/bin/py-spy

Asserts nothing; loopback only; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import collections
import io
import pstats
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # bench/ is not a package: found through sys.path above

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``"handle (gateway/app.py:123)"`` → ``"handle (gateway/app.py)"`` (site-packages trimmed)."""
    frame = _LINE.sub(")", frame.strip())
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        at = frame.find(marker)
        if at >= 0:
            head = frame[: frame.index("(") + 1]
            frame = head + frame[at + len(marker) :]
    return frame


def file_of(frame: str) -> str:
    """The source file part of a frame name."""
    start = frame.rfind("(")
    return frame[start + 1 : -1] if start >= 0 else frame


def summarize_raw(path: Path, top: int) -> str:
    """Top self/inclusive functions and self time per file from py-spy's raw output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    file_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[leaf] += count
        file_counts[file_of(leaf)] += count
        for name in set(frames):
            incl_counts[name] += count
    out = io.StringIO()
    print(f"busy samples: {total}", file=out)
    for title, counter in (
        ("self time (leaf frame)", self_counts),
        ("inclusive time", incl_counts),
        ("self time by file", file_counts),
    ):
        print(f"\n{title}:", file=out)
        for name, count in counter.most_common(top):
            print(f"  {100.0 * count / max(total, 1):5.1f}%  {name}", file=out)
    return out.getvalue()


def summarize_pstats(path: Path, top: int) -> str:
    """Top functions by tottime and cumtime from a cProfile dump."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumtime").print_stats(top)
    return out.getvalue()


def main() -> None:
    """Run one profiled step and print the hotspots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pause-ms", type=int, default=100)
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--sample-rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--idle",
        action="store_true",
        help="py-spy --idle: keep samples of a blocked thread (fsync, the loop's select)",
    )
    parser.add_argument("--out", type=Path, help="keep the raw profile and step files here")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--extra-path", default="")
    parser.add_argument("--dnc", type=int, default=1_000_000)
    parser.add_argument("--consent", type=int, default=10_000)
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument("--callers", type=int, default=1, help="as bench/e2e.py --callers")
    parser.add_argument("--gc", choices=("paced", "auto"), default="paced", help="as bench/e2e.py")
    parser.add_argument("--overload-kb", type=int, default=None, help="as bench/e2e.py")
    ns = parser.parse_args()
    argv = [
        "e2e",
        "--dnc",
        str(ns.dnc),
        "--consent",
        str(ns.consent),
        "--cards",
        str(ns.cards),
        "--pause-ms",
        str(ns.pause_ms),
        "--callers",
        str(ns.callers),
    ]
    argv += ["--gc", ns.gc]
    if ns.overload_kb is not None:
        argv += ["--overload-kb", str(ns.overload_kb)]
    if ns.uvloop:
        argv += ["--uvloop", "--extra-path", ns.extra_path]
    args = e2e.build_parser().parse_args(argv)
    sipp = e2e.sipp_binary()
    template, _ = e2e.build_template(args)
    numbers = e2e.consent_numbers(args.consent)
    calls = e2e.step_calls(ns.rate, ns.seconds, args.consent)
    workdir = ns.out or Path(tempfile.mkdtemp(prefix="dialgate-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "pyspy.raw"
    prof = workdir / "gateway.prof"
    profile = None
    runner_args: list[str] = []
    if ns.profiler == "py-spy":
        profile = [
            ns.py_spy,
            "record",
            "--pid",
            "{pid}",
            "--format",
            "raw",
            "--rate",
            str(ns.sample_rate),
            "--nonblocking",
            "--output",
            str(raw),
            *(["--idle"] if ns.idle else []),
        ]
    else:
        runner_args = ["--cprofile", str(prof)]
    print(f"machine: {e2e.machine()}, load {e2e.loadavg()}")
    result, gw = e2e.e2e_step(
        args,
        sipp,
        template,
        ns.rate,
        calls,
        numbers,
        workdir / "step",
        profile=profile,
        runner_args=runner_args,
    )
    print(
        f"step: {ns.rate:g} CPS offered, {result.ok}/{calls} ok, {result.failed} failed, "
        f"{result.unfinished} unfinished; INVITE→200 p50 {result.rt_p50_ms} ms, "
        f"p99 {result.rt_p99_ms} ms; gateway CPU {gw.cpu_pct}%, RSS {gw.rss_mb} MB; "
        f"load {result.load}"
    )
    if ns.profiler == "py-spy":
        if raw.exists():
            print(summarize_raw(raw, ns.top))
        else:
            err = workdir / "step" / "profiler.err"
            print("py-spy wrote nothing:", err.read_text() if err.exists() else "?")
    elif prof.exists():
        print(summarize_pstats(prof, ns.top))
    if ns.out is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
