"""Integration fixtures: a real ``dialgate run`` subprocess on free ports, and SIPp helpers.

Everything binds 127.0.0.1 with port 0 (or a port just proven free), never 5060;
every process started here is stopped by its PID in the fixture teardown
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from simulator.pytest_plugin import sipp_binary
from simulator.testkit import free_ports, sipp_command, stat_row, stop_pid

REPO = Path(__file__).resolve().parents[2]
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def dialgate_command() -> list[str]:
    """The ``dialgate`` console script of this interpreter's environment, else ``-m gateway``."""
    script = Path(sys.executable).with_name("dialgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


@dataclass
class DialgateProcess:
    """A running ``dialgate run`` and what it printed (JSON log lines on stderr)."""

    proc: subprocess.Popen[bytes]
    config: Path
    lines: list[str] = field(default_factory=list)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    _reader: threading.Thread | None = None

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every JSON log line whose event is ``name``."""
        out = []
        for line in list(self.lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                out.append(entry)
        return out

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM by PID, wait, SIGKILL if needed; returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        return self.proc.returncode


def _pump(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append(raw.decode("utf-8", "replace").rstrip("\n"))


def start_dialgate(
    tmp: Path,
    extra_toml: str = "",
    *,
    sip_extra: str = "",
    port: int = 0,
    ready_event: str | None = None,
    db: Path | None = None,
    store_extra: str = "",
    workers: int | None = None,
    log_level: str = "info",
) -> DialgateProcess:
    """Write a config with UDP+TCP listeners on ``port`` (0: any), start ``dialgate run``,
    wait for both ports (and for a log line ``ready_event`` when given).

    ``sip_extra``: more ``[sip]`` lines (e.g. ``t1 = 0.05\n``). ``db``: the database
    file (default ``tmp/dialgate.db``); ``store_extra``: more ``[store]`` lines.
    ``workers``: ``dialgate run --workers N`` (default: the configuration's, one process).
    ``log_level``: ``debug`` for a test that waits for a step of a call (each call
    has one ``info`` line, ``call.ended``).
    """
    config = tmp / "dialgate.toml"
    if "[policy]" not in extra_toml:
        # Every configuration must choose its consent mode (issue 13).
        extra_toml += '\n[policy]\nconsent = "dnc-only"\n'
    config.write_text(
        "[sip]\n"
        f'listen = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]\n'
        'domains = ["gw.test"]\n' + sip_extra + "\n[store]\n"
        f'path = "{db or tmp / "dialgate.db"}"\n' + store_extra + "\n[admin]\n"
        'listen = "127.0.0.1:0"\n'
        "\n[logging]\n"
        f'level = "{log_level}"\n'
        "json = true\n" + extra_toml
    )
    return start_dialgate_config(config, ready_event=ready_event, workers=workers)


def start_dialgate_config(
    config: Path,
    *,
    transports: tuple[str, ...] = ("udp", "tcp"),
    ready_event: str | None = None,
    workers: int | None = None,
    timeout: float = START_TIMEOUT,
) -> DialgateProcess:
    """``dialgate run --config config`` (in the config's folder, no ``DIALGATE_*`` variables),
    its stderr pumped into ``lines``; waits for a ``listening`` line of every one of
    ``transports`` (and for a log line ``ready_event`` when given), else stops it and raises.

    ``workers``: ``dialgate run --workers N`` (default: the configuration's, one process).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    proc = subprocess.Popen(
        [
            *dialgate_command(),
            "run",
            "--config",
            str(config),
            *([] if workers is None else ["--workers", str(workers)]),
        ],
        cwd=config.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gw = DialgateProcess(proc, config)
    gw._reader = threading.Thread(target=_pump, args=(proc, gw.lines), daemon=True)
    gw._reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in gw.events("listening"):
            gw.addresses[entry["transport"]] = (entry["host"], int(entry["port"]))
        if set(transports) <= gw.addresses.keys() and (
            ready_event is None or gw.events(ready_event)
        ):
            return gw
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError("dialgate did not start:\n" + "\n".join(gw.lines[-30:]))


@pytest.fixture(scope="module")
def dialgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DialgateProcess]:
    """One ``dialgate run`` subprocess for the module; stopped by PID at teardown."""
    gw = start_dialgate(tmp_path_factory.mktemp("dialgate"))
    try:
        yield gw
    finally:
        gw.stop()


def run_sipp(
    scenario: Path,
    target: tuple[str, int],
    *,
    calls: int,
    rate: int,
    workdir: Path,
    timeout: float = 30.0,
    transport: str = "u1",
) -> subprocess.CompletedProcess[bytes]:
    """Run one SIPp client scenario to completion (bounded by -timeout and our own wait).

    ``transport`` is SIPp's ``-t`` mode: ``u1`` (one UDP socket) or ``t1`` (one TCP
    connection).

    TOOLS.md: ``-buff_size 1048576`` or the default socket buffer drops datagrams.
    """
    cmd = sipp_command(
        scenario,
        # Free for TCP too: with -t t1 SIPp listens on TCP there ("Unable to bind main
        # socket, errno 98" when only UDP was checked and a TCP socket held the port).
        port=free_ports(1)[0],
        target=target,
        timeout=timeout,
        trace=False,
        binary=sipp_binary(),
        extra=[
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-l",
            str(max(10, rate)),
            "-t",
            transport,
            "-timeout_error",
            "-trace_err",
            "-error_file",
            str(workdir / "sipp_errors.log"),
            "-trace_stat",
            "-stf",
            str(workdir / "sipp_stat.csv"),
        ],
    )
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        stop_pid(proc)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@dataclass(frozen=True)
class Sipp:
    """SIPp helpers handed to tests as one fixture (``sipp.run``, ``sipp.stats``)."""

    scenarios: Path

    def run(
        self,
        scenario: str,
        target: tuple[str, int],
        *,
        calls: int,
        rate: int,
        workdir: Path,
        timeout: float = 30.0,
        transport: str = "u1",
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``sipp/<scenario>`` as a client against ``target`` to completion."""
        return run_sipp(
            self.scenarios / scenario,
            target,
            calls=calls,
            rate=rate,
            workdir=workdir,
            timeout=timeout,
            transport=transport,
        )

    def stats(self, workdir: Path) -> dict[str, str]:
        """The final -trace_stat row."""
        return stat_row(workdir / "sipp_stat.csv")


@pytest.fixture
def sipp() -> Sipp:
    """SIPp runner (skips when sipp is not installed)."""
    sipp_binary()
    return Sipp(SIPP_DIR)
