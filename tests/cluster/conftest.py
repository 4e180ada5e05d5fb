"""A dialgate cluster on loopback: Kamailio dispatcher → two ``dialgate run`` nodes → one Redis.

- Kamailio (Debian ``kamailio``) runs ``examples/cluster/kamailio.cfg`` in the
  foreground as a child of the test (``-DD -E``, small ``-m/-M``, its own
  runtime dir), on 127.0.0.1 and a free UDP port, with a dispatcher list
  naming the nodes; stopped by PID.
- The nodes listen on 127.0.0.2 and 127.0.0.3 (free ports), share one
  redis-server (``tests/redis``'s fixture class) and keep their own SQLite file.
  Each has ``[admin] listen`` on its own address, ``[policy] consent`` and a
  node name of its own (``[mqtt]`` is off: the name is host + listener).
- The carrier is a SIPp UAS; the dialer (``[[peers]]`` dialer-1) a SIPp UAC on
  127.0.0.4, the address the balancer spreads by Call-ID.
- A test starts the carrier and the cluster through the ``carrier_cluster``
  fixture, which waits until the balancer answers and stops both at teardown.

Missing kamailio, redis-server or SIPp fails the tests (``make install`` provides them).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.testkit import stop_pid
from tests.integration.conftest import (
    DialgateProcess,
    _pump,
    dialgate_command,
    start_dialgate_config,
)
from tests.policy_sipp.conftest import SippCarrier, start_carrier
from tests.redis.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO_CFG = ROOT / "examples" / "cluster" / "kamailio.cfg"
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
LB_HOST = "127.0.0.1"
NODE_HOSTS = ("127.0.0.2", "127.0.0.3")
DIALER_HOST = "127.0.0.4"
START_TIMEOUT = 30.0


def free_udp_port_on(host: str) -> int:
    """A UDP port free on ``host`` (any loopback address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def kamailio_binary() -> str:
    """``kamailio`` from the Debian package; fails the test when it is missing."""
    path = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.path.exists("/usr/sbin/kamailio") else None
    )
    if path is None:
        pytest.fail("kamailio is not installed (make install: Debian package kamailio)")
    return path


def kamailio_modules() -> str:
    """The package's module directory (holds dispatcher.so)."""
    found = sorted(glob.glob("/usr/lib/*/kamailio/modules/dispatcher.so"))
    found += sorted(glob.glob("/usr/lib/kamailio/modules/dispatcher.so"))
    if not found:
        pytest.fail("kamailio's dispatcher module not found (Debian package kamailio)")
    return str(Path(found[0]).parent)


@dataclass
class Kamailio:
    """Kamailio in the foreground, its log captured; stopped by PID."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    lines: list[str]

    @property
    def address(self) -> tuple[str, int]:
        return (LB_HOST, self.port)

    def stop(self) -> None:
        stop_pid(self.proc)

    def log(self) -> str:
        return "\n".join(self.lines)


def start_kamailio(workdir: Path, nodes: list[tuple[str, int]]) -> Kamailio:
    """The example configuration with a dispatcher list of ``nodes`` on a free port."""
    binary = kamailio_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run").mkdir(exist_ok=True)
    listing = workdir / "nodes.list"
    listing.write_text("".join(f"1 sip:{host}:{port}\n" for host, port in nodes))
    port = free_udp_port_on(LB_HOST)
    cmd = [
        binary,
        "-DD",
        "-E",
        "-x",
        "tlsf",
        "-m",
        "32",
        "-M",
        "8",
        "-f",
        str(KAMAILIO_CFG),
        "-P",
        str(workdir / "kamailio.pid"),
        "-Y",
        str(workdir / "run"),
        "-L",
        kamailio_modules(),
        "-A",
        f"LB_LISTEN=udp:{LB_HOST}:{port}",
        "-A",
        f'LB_NODES="{listing}"',
        "-A",
        f'LB_DIALERS="{DIALER_HOST}"',
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    lb = Kamailio(proc, port, workdir, lines)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("kamailio exited:\n" + lb.log()[-3000:])
        if any("dispatcher" in ln and "up" in ln for ln in lines) or _answers(LB_HOST, port):
            return lb
        time.sleep(0.1)
    lb.stop()
    raise RuntimeError("kamailio did not start:\n" + lb.log()[-3000:])


def _answers(host: str, port: int) -> bool:
    """Whether something answers an OPTIONS on ``host:port`` (any response)."""
    return options_status(host, port) is not None


def options_status(host: str, port: int) -> int | None:
    """The status of the answer to an OPTIONS sent to ``host:port``, None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LB_HOST, 0))
        s.settimeout(0.3)
        local = s.getsockname()[1]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LB_HOST}:{local};branch=z9hG4bK-probe{time.monotonic_ns()}\r\n"
            f"From: <sip:probe@{LB_HOST}>;tag=p\r\nTo: <sip:{host}:{port}>\r\n"
            f"Call-ID: probe-{time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except OSError:
                return None
            if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1"):
                return int(data.split(b" ", 2)[1])
        return None


def node_toml(
    host: str,
    port: int,
    *,
    db: Path,
    redis_url: str,
    carrier_port: int,
    profile: dict[str, int],
    agents: bool = False,
) -> str:
    """One node: SIP on ``host:port``, the cluster's address as a domain, Redis, one card;
    with ``agents`` also the softphone user alice (password s3cret) on that card."""
    limits = "\n".join(f"{k} = {v}" for k, v in profile.items())
    users = '\n[[users]]\nname = "alice"\npassword = "s3cret"\ncard = "c1"\n' if agents else ""
    return f"""{users}
[sip]
listen = ["udp:{host}:{port}"]
realm = "dialgate"
# Requests name the balancer's address; digest uris too (SIPp hashes sip:<remote>:<port>).
domains = ["{LB_HOST}"]

[store]
path = "{db}"
redis = "{redis_url}"

[admin]
listen = "{host}:0"

[logging]
json = true

[policy]
consent = "dnc-only"
default_region = "CN"
calling_hours = "00:00-24:00"

# Every request arrives from the balancer: per-source limits belong there.
[security]
exempt = ["{LB_HOST}/32"]

[[peers]]
name = "dialer-1"
addresses = ["{LB_HOST}/32"]
password = "dialer-secret"

[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:{carrier_port}"
timezone = "Asia/Shanghai"
options_interval = 3600

[quota_profiles.q]
{limits}

[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
username = "c1"
password = "card1-secret"
pool = "main"
quota = "q"
"""


def start_node(workdir: Path, toml: str) -> DialgateProcess:
    """``dialgate run`` with ``toml`` (written whole: one UDP listener on the node's own
    address); waits for its UDP listener; stopped by PID."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "node.toml"
    config.write_text(toml)
    return start_dialgate_config(config, transports=("udp",), timeout=START_TIMEOUT)


def kill9(node: DialgateProcess) -> None:
    """SIGKILL by PID (no shutdown, no last write) and reap it."""
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)


@dataclass
class Cluster:
    """The balancer, the nodes (with their databases), Redis and the carrier port."""

    lb: Kamailio
    nodes: list[DialgateProcess]
    dbs: list[Path]
    redis: RedisServer
    carrier_port: int
    ports: list[int]

    def stop(self) -> None:
        """Stop every process by PID; each node's log is left beside its database."""
        for node, db in zip(self.nodes, self.dbs, strict=True):
            node.stop()
            (db.parent / "node.log").write_text("\n".join(node.lines))
        self.lb.stop()
        (self.lb.workdir / "kamailio.log").write_text(self.lb.log())


def start_cluster(
    workdir: Path,
    redis: RedisServer,
    carrier_port: int,
    profile: dict[str, int],
    *,
    agents: bool = False,
) -> Cluster:
    """Two nodes on 127.0.0.2/.3 sharing ``redis``, and Kamailio in front of them
    (``agents``: the nodes also know the softphone user alice)."""
    ports = [free_udp_port_on(h) for h in NODE_HOSTS]
    nodes: list[DialgateProcess] = []
    dbs = [workdir / f"node{i + 1}" / "node.db" for i in range(len(NODE_HOSTS))]
    try:
        for i, (host, port) in enumerate(zip(NODE_HOSTS, ports, strict=True)):
            toml = node_toml(
                host,
                port,
                db=dbs[i],
                redis_url=redis.url,
                carrier_port=carrier_port,
                profile=profile,
                agents=agents,
            )
            nodes.append(start_node(workdir / f"node{i + 1}", toml))
        lb = start_kamailio(workdir / "kamailio", list(zip(NODE_HOSTS, ports, strict=True)))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return Cluster(lb, nodes, dbs, redis, carrier_port, ports)


def wait_nodes_up(lb: Kamailio, timeout: float = 15.0) -> None:
    """Until the balancer answers through a node (its probes marked them up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if options_status(*lb.address) == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"no node answered through the balancer:\n{lb.log()[-3000:]}")


def sqlite_rows(db: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``query`` from a node's SQLite file (read-only; WAL included)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return list(con.execute(query, args))
    finally:
        con.close()


def cluster_status(node: DialgateProcess) -> Any:
    """``dialgate cluster status --json`` with the node's configuration (exit 1 when one is down)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    out = subprocess.run(
        [*dialgate_command(), "cluster", "status", "--config", str(node.config), "--json"],
        env=env,
        cwd=node.config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr.decode(errors="replace")
    return json.loads(out.stdout)


@pytest.fixture
def redis_cluster_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The cluster's one redis-server (its own, on a free port)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make install)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


StartCarrierCluster = Callable[..., tuple[SippCarrier, Cluster]]


@pytest.fixture
def carrier_cluster(
    tmp_path: Path, redis_cluster_server: RedisServer
) -> Iterator[StartCarrierCluster]:
    """``start(profile, *, agents=False, carrier_timeout=120)``: the SIPp carrier, the
    cluster in front of it (``start_cluster``) and a wait until the balancer answers
    through a node. What it started is stopped by PID at teardown, the cluster first."""
    started: list[SippCarrier | Cluster] = []

    def start(
        profile: dict[str, int], *, agents: bool = False, carrier_timeout: int = 120
    ) -> tuple[SippCarrier, Cluster]:
        carrier = start_carrier(tmp_path / "carrier", timeout=carrier_timeout)
        started.append(carrier)
        cluster = start_cluster(
            tmp_path, redis_cluster_server, carrier.port, profile, agents=agents
        )
        started.append(cluster)
        wait_nodes_up(cluster.lb)
        return carrier, cluster

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()
