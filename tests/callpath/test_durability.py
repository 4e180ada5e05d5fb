"""CDR durability: a ``dialgate run`` process killed with SIGKILL after a call keeps its CDR."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.store import SQLiteStore
from simulator.testkit import free_udp_port
from tests.callpath.conftest import Agent, Carrier


def config(tmp: Path, port: int, carrier: tuple[str, int]) -> Path:
    """A minimal TOML for ``dialgate run``: one agent, one carrier, one card."""
    path = tmp / "dialgate.toml"
    path.write_text(
        f"""
[sip]
listen = ["udp:127.0.0.1:{port}"]
[store]
path = "{tmp / "gw.db"}"
[policy]
consent = "dnc-only"
calling_hours = "00:00-24:00"
[[users]]
name = "alice"
password = "s3cret"
[[carriers]]
name = "carrier-a"
address = "udp:{carrier[0]}:{carrier[1]}"
[quota_profiles.open]
calls_per_minute = 1000
[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
quota = "open"
[logging]
json = true
"""
    )
    return path


async def test_cdr_survives_kill_9_after_the_call(carrier: Carrier, tmp_path: Path) -> None:
    """Call, hang up, SIGKILL the gateway process: the CDR is in the database afterwards."""
    port = free_udp_port()
    cfg = config(tmp_path, port, carrier.address)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    script = Path(sys.executable).with_name("dialgate")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    proc = subprocess.Popen(
        [*cmd, "run", "--config", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    alice = Agent("alice", "s3cret", ("127.0.0.1", port))
    await alice.start()
    try:
        for _ in range(150):
            try:
                if 200 == (await alice.register()).status:
                    break
            except TimeoutError:
                pass
            await asyncio.sleep(0.1)
        resp, invite = await alice.call("13912345678")
        assert 200 == resp.status
        assert 200 == (await alice.send_in_dialog(invite.call_id, "BYE")).status
        await asyncio.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with SQLiteStore(tmp_path / "gw.db") as store:
            [cdr] = store.cdrs()
        assert ("answered", ("c1",)) == (str(cdr.outcome), cdr.cards)
    finally:
        await alice.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
