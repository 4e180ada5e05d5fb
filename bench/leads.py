"""Lead scrubbing speed: numbers judged per second (``dialgate leads check``'s code path).

Builds a SQLite store in a temporary directory with 10,000 DNC numbers and
consent for half of a 100,000-number list ("require-consent"), writes the
list as CSV, then measures:

1. in-process: CSV parse → ``LeadChecker`` (``Pipeline.check``: emergency,
   destination, DNC, consent, hours, frequency) → NDJSON lines;
2. ``dialgate leads check`` as a subprocess on the same list (start-up included).

Prints ``leads in-process: N numbers in S s (R numbers/s)`` and
``leads CLI: …``; the figures are measured, never asserted. Run:

    .venv/bin/python bench/leads.py [--numbers 100000]
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_settings  # noqa: E402
from gateway.operator.leads import (  # noqa: E402
    LeadSummary,
    checker_from_settings,
    parse_leads,
    verdict_json_line,
)
from gateway.store import store_from_settings  # noqa: E402

CONFIG = """
[policy]
default_region = "CN"
consent = "require-consent"
calling_hours = "00:00-24:00"

[store]
path = "{db}"
"""


def numbers(count: int, seed: int = 7) -> list[str]:
    """Mobile numbers of China (valid plan), some written nationally, some in E.164."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        body = f"139{rng.randrange(10**8):08d}"
        out.append(body if i % 2 else "+86" + body)
    if count >= 10:
        out[::97] = ["12345"] * len(out[::97])  # invalid rows
    return out


def main() -> int:
    """Build the store, run both measurements, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=100_000)
    parser.add_argument("--no-cli", action="store_true", help="skip the subprocess measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dialgate-bench-leads-") as tmp:
        db = Path(tmp) / "leads.db"
        config = Path(tmp) / "dialgate.toml"
        config.write_text(CONFIG.format(db=db))
        settings = load_settings(config)
        store = store_from_settings(settings)
        leads = numbers(args.numbers)
        now = time.time()
        e164 = ["+86" + n[-11:] for n in leads if not n.startswith("1234")]
        store.add_dncs(e164[: min(10_000, len(e164) // 10)], now, source="bench")
        for n in e164[::2]:
            store.add_consent(n, now, source="bench")
        text = "number\n" + "\n".join(leads) + "\n"
        (Path(tmp) / "leads.csv").write_text(text)

        checker = checker_from_settings(settings, store)
        summary = LeadSummary()
        started = time.perf_counter()
        sink = io.StringIO()
        for verdict in checker.check_all(parse_leads(io.StringIO(text), "csv"), now, summary):
            sink.write(verdict_json_line(verdict))
        seconds = time.perf_counter() - started
        store.close()
        print(summary.text())
        print(
            f"leads in-process: {summary.rows} numbers in {seconds:.2f} s "
            f"({summary.rows / seconds:,.0f} numbers/s)"
        )
        if not args.no_cli:
            started = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "leads",
                    "check",
                    str(Path(tmp) / "leads.csv"),
                    "--config",
                    str(config),
                ],
                cwd=tmp,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=600,
                check=False,
            )
            seconds = time.perf_counter() - started
            rows = out.stdout.count(b"\n")
            print(f"leads CLI summary: {out.stderr.decode(errors='replace').strip()[-300:]}")
            print(
                f"leads CLI: {rows} numbers in {seconds:.2f} s "
                f"({rows / seconds:,.0f} numbers/s, process start-up included)"
            )
            if out.returncode != 0:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
