"""Under umask 022 every file dialgate creates is 0600 and every directory 0700 (issue 15 item 4).

A real ``dialgate run`` (database, WAL/SHM, a blocked call's CDR), then the CLI's
CDR export and evidence pack, all started with umask 022; afterwards every path
under the work directory but the test's own config file is checked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from gateway.store import SQLiteStore
from simulator.testkit import free_udp_port
from tests.callpath.conftest import Agent
from tests.integration.conftest import dialgate_command


def _umask_022() -> None:
    os.umask(0o022)


CONFIG = """
[sip]
listen = ["udp:127.0.0.1:{port}"]
[store]
path = "{db}"
[admin]
listen = "127.0.0.1:0"
[policy]
consent = "dnc-only"
calling_hours = "00:00-24:00"
[[users]]
name = "alice"
password = "s3cret-passphrase-1"
[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:9"
[quota_profiles.open]
calls_per_minute = 10
calls_per_hour = 100
calls_per_day = 1000
[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
quota = "open"
[logging]
json = true
"""


async def test_every_file_dialgate_creates_is_private(tmp_path: Path) -> None:
    """dialgate run + a CDR + cdrs export + cards evidence under umask 022: 0600 / 0700."""
    port = free_udp_port()
    db = tmp_path / "var" / "data" / "dialgate.db"
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(CONFIG.format(port=port, db=db))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    proc = subprocess.Popen(
        [*dialgate_command(), "run", "--config", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_umask_022,
    )
    alice = Agent("alice", "s3cret-passphrase-1", ("127.0.0.1", port))
    await alice.start()
    try:
        for _ in range(150):
            try:
                if 200 == (await alice.register()).status:
                    break
            except TimeoutError:
                pass
            await asyncio.sleep(0.1)
        resp, _ = await alice.call("12")  # unparseable: 484 and a blocked CDR
        assert 484 == resp.status
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with SQLiteStore(db) as store:
                if store.cdrs():
                    break
            await asyncio.sleep(0.1)
    finally:
        await alice.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(15)
    out = tmp_path / "exports"
    for args in (
        ["cdrs", "export", "--out", str(out / "cdrs.csv")],
        ["cards", "evidence", "c1", "--since", "2020-01-01", "--out", str(out / "c1.zip")],
    ):
        done = subprocess.run(
            [*dialgate_command(), *args, "--config", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
            preexec_fn=_umask_022,
        )
        assert 0 == done.returncode, done.stderr.decode()[-2000:]
    assert (out / "cdrs.csv").read_text().count("\n") >= 2  # header + the blocked call
    assert (out / "c1.zip").stat().st_size > 0
    created = [p for p in tmp_path.rglob("*") if p != cfg]
    names = {p.name for p in created}
    assert {"dialgate.db", "cdrs.csv", "c1.zip"} <= names
    for path in created:
        expected = 0o700 if path.is_dir() else 0o600
        assert (str(path), oct(expected)) == (str(path), oct(stat.S_IMODE(path.stat().st_mode)))
