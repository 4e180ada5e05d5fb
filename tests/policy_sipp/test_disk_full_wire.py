"""The database's disk fills up (issue 19, item 6): calls fail closed, no CDR is lost.

``dialgate run`` keeps its SQLite database on a small tmpfs mounted for the
test and its CDR spool (``[store] spool_dir``) on another filesystem. A filler
file takes the tmpfs's last byte while calls are up. Commits may still land in
WAL space SQLite allocated earlier (those calls are stored and go through) until
the WAL checkpoint, run every 0.2 s in a thread, fails to grow the database file:
from then on new calls are refused ``503 store-unavailable`` at once and none
reaches the carrier (never a call without its reservation); the calls that end
meanwhile have their CDRs
spooled; once the filler is removed the gateway recovers by itself and every
spooled CDR lands in the database.

Mounting needs root (CAP_SYS_ADMIN); without it the test fails with that
message (missing test prerequisites fail, they do not skip).
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.agents import Softphone
from tests.policy_sipp.conftest import (
    admin_get,
    admin_url,
    gateway_toml,
    start_carrier,
    start_dialgate,
)
from tests.policy_sipp.test_store_lock_wire import QUOTA, health_status, timed_call

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TMPFS_SIZE = "4m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for the test, unmounted at teardown."""
    mount = tmp_path / "dbdisk"
    mount.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if out.returncode != 0:
        pytest.fail(
            "this test needs to mount a tmpfs (root / CAP_SYS_ADMIN): mount -t tmpfs failed: "
            + out.stderr.decode(errors="replace").strip()
        )
    try:
        yield mount
    finally:
        done = subprocess.run(["umount", str(mount)], capture_output=True, timeout=10, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; returns its path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


async def test_full_database_disk_fails_closed_and_loses_no_cdr(
    tmp_path: Path, small_disk: Path, processes: list
) -> None:
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    spool_dir = tmp_path / "spool"  # another filesystem than the database
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    gw = start_dialgate(
        gw_dir,
        gateway_toml(carrier.port, quota=QUOTA),
        db=small_disk / "dialgate.db",
        store_extra=f'spool_dir = "{spool_dir}"\n',
    )
    processes.append(gw)
    url = admin_url(gw)
    spool = spool_dir / "dialgate.db.cdr-spool.jsonl"
    phone = Softphone("alice", "s3cret", gw.addresses["udp"])
    await phone.start()
    try:
        assert 200 == (await phone.register()).status
        numbers = iter(f"1392000{i:04d}" for i in range(10_000))
        before = [await timed_call(phone, next(numbers), 0.2) for _ in range(3)]
        assert [200] * 3 == [r.status for r, _ in before]
        spanning = [asyncio.ensure_future(timed_call(phone, next(numbers), 2.0)) for _ in range(2)]
        await asyncio.sleep(0.5)

        filler = fill(small_disk)
        # Until a checkpoint finds the disk full, calls are stored in WAL space
        # allocated earlier and go through; a few at most (one checkpoint round).
        early = []
        first = await timed_call(phone, next(numbers), 0.2)
        while first[0].status == 200 and len(early) < 10:
            early.append(first)
            first = await timed_call(phone, next(numbers), 0.2)
        assert len(early) < 10, "the full disk was never noticed"
        invites_at_fill = len(carrier.invites())
        refused = [first] + [await timed_call(phone, next(numbers), 0.2) for _ in range(5)]
        spanned = [await f for f in spanning]
        assert [True, True] == [r.answered for r, _ in spanned]
        print(
            f"disk full: {len(early)} calls stored before it was noticed; "
            + ", ".join(f"{r.status} {r.reason_text} {t:.3f}s" for r, t in refused)
            + f"; spool {spool.exists() and len(spool.read_text().splitlines())} lines"
        )
        for result, seconds in refused:
            assert 503 == result.status, result
            assert "store-unavailable" == result.reason_text
            assert seconds < 2.0
        # Fail closed: nothing reached the carrier without a stored reservation.
        assert invites_at_fill == len(carrier.invites())
        assert 503 == health_status(url)
        # The CDRs of the calls that ended meanwhile wait in the spool, on the other disk.
        deadline = time.monotonic() + 5.0
        while not (spool.exists() and len(spool.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline, "no CDR spooled"
            await asyncio.sleep(0.05)

        filler.unlink()  # space again: the gateway recovers by itself
        freed = time.monotonic()
        while health_status(url) != 200:
            assert time.monotonic() - freed < 5.0, "/health did not recover"
            await asyncio.sleep(0.05)
        print(f"/health ok {time.monotonic() - freed:.3f}s after the disk was freed")

        answered = {r.call_id for r, _ in before + early + spanned if r.answered}
        refused_ids = {r.call_id for r, _ in refused}
        deadline = time.monotonic() + 10.0
        stored: set[str] = set()
        while time.monotonic() < deadline:
            stored = {c["call_id"] for c in admin_get(f"{url}/cdrs?limit=1000")["cdrs"]}
            if (answered | refused_ids) <= stored and not spool.exists():
                break
            await asyncio.sleep(0.1)
        assert answered <= stored, answered - stored
        assert refused_ids <= stored, refused_ids - stored
        assert not spool.exists()

        after = [await timed_call(phone, next(numbers), 0.2) for _ in range(2)]
        assert [200, 200] == [r.status for r, _ in after]
    finally:
        await phone.close()
        gw.stop()  # before the tmpfs is unmounted
