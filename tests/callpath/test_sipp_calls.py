"""SIPp as agent (digest) and as carrier: 200 short calls at 20 CPS through the gateway."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from gateway.callpath.element import Gateway
from simulator.pytest_plugin import sipp_binary
from simulator.testkit import free_udp_port, stat_row, stop_pid
from tests.callpath.conftest import Agent, gateway_settings

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
CALLS = 200
RATE = 20


async def test_200_calls_at_20_cps_all_complete(tmp_path: Path) -> None:
    """SIPp agent → dialgate → SIPp carrier: 200 successful, 0 failed; 200 CDRs stored."""
    sipp = sipp_binary()
    carrier_port = free_udp_port()
    carrier_dir = tmp_path / "carrier"
    agent_dir = tmp_path / "agent"
    carrier_dir.mkdir()
    agent_dir.mkdir()
    carrier = subprocess.Popen(
        [
            sipp,
            "-sf",
            str(SIPP_DIR / "carrier_uas.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(carrier_port),
            "-m",
            str(CALLS),
            "-buff_size",
            "1048576",
            "-timeout",
            "90s",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(carrier_dir / "stat.csv"),
            "-trace_err",
            "-error_file",
            str(carrier_dir / "errors.log"),
        ],
        cwd=carrier_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gw = Gateway(gateway_settings(("127.0.0.1", carrier_port), tmp_path / "gw.db"))
    agent_proc: subprocess.Popen[bytes] | None = None
    try:
        await gw.start()
        target = gw.address("udp")
        agent_port = free_udp_port()
        # alice registers first (calls need a live registration); SIPp then calls as alice.
        alice = Agent("alice", "s3cret", target)
        await alice.start()
        try:
            assert 200 == (await alice.register()).status
        finally:
            await alice.close()
        numbers = agent_dir / "numbers.csv"
        numbers.write_text("SEQUENTIAL\n" + "".join(f"1391000{i:04d};\n" for i in range(CALLS)))
        cmd = [
            sipp,
            f"{target[0]}:{target[1]}",
            "-sf",
            str(SIPP_DIR / "agent_call.xml"),
            "-inf",
            str(numbers),
            "-m",
            str(CALLS),
            "-r",
            str(RATE),
            "-l",
            "100",
            "-i",
            "127.0.0.1",
            "-p",
            str(agent_port),
            "-buff_size",
            "1048576",
            "-timeout",
            "90s",
            "-timeout_error",
            "-default_behaviors",
            "all,-abortunexp",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(agent_dir / "stat.csv"),
            "-trace_err",
            "-error_file",
            str(agent_dir / "errors.log"),
        ]
        started = time.monotonic()
        agent_proc = subprocess.Popen(
            cmd,
            cwd=agent_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        while agent_proc.poll() is None and time.monotonic() - started < 100:
            await asyncio.sleep(0.1)
        duration = time.monotonic() - started
        result = stat_row(agent_dir / "stat.csv")
        store = gw.store
        assert store is not None
        for _ in range(50):
            if len(store.cdrs()) >= CALLS:
                break
            await asyncio.sleep(0.1)
        cdrs = store.cdrs()
        print(
            f"sipp: {result.get('SuccessfulCall(C)')} ok, {result.get('FailedCall(C)')} failed "
            f"in {duration:.1f}s; CDRs {len(cdrs)}"
        )
        assert (str(CALLS), "0") == (result["SuccessfulCall(C)"], result["FailedCall(C)"])
        assert 0 == agent_proc.returncode
        assert CALLS == len(cdrs)
        assert {"answered"} == {str(c.outcome) for c in cdrs}
        assert {"sipp-load"} == {c.campaign for c in cdrs}
        assert CALLS == len({c.destination for c in cdrs})
    finally:
        if agent_proc is not None:
            stop_pid(agent_proc)
        stop_pid(carrier)
        await gw.close()
