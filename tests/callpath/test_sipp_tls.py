"""SIPp over TLS on both legs: SIPp agent → TLS → dialgate → TLS → SIPp carrier.

Debian's SIPp (sip-tester 3.6.1) is built without OpenSSL: ``sipp -t l1``
exits with "To use a TLS transport you must compile SIPp with OpenSSL"
(:func:`test_debian_sipp_has_no_tls` keeps that on record). So SIPp speaks
TCP (``-t t1``) and ``socat`` (Debian package) carries it over TLS:

* agent side: SIPp → plain TCP → socat → TLS, verifying the gateway's
  certificate against the test CA, → the gateway's ``tls:`` listener;
* carrier side: the gateway → TLS (verified against the carrier's ``tls_ca``,
  name ``carrier.test``) → socat, with the carrier's certificate → plain TCP →
  SIPp UAS.

Every TLS handshake is between dialgate's TLS and OpenSSL's via socat; the SIP
dialogue (digest 407, ACK, BYE) is SIPp's. Certificates are made in
``tmp_path`` with the openssl CLI. Processes are stopped by PID.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gateway.callpath.element import Gateway
from simulator.pytest_plugin import sipp_binary
from simulator.testkit import free_udp_port, stat_row, stop_pid
from tests.callpath.conftest import Agent, gateway_settings
from tests.callpath.test_sipp_calls import SIPP_DIR
from tests.tls_certs import make_ca, make_cert

CALLS = 20
RATE = 10


def socat_binary() -> str:
    """Path of ``socat``; FAIL (not skip) when missing: the install script provides it."""
    path = shutil.which("socat")
    if path is None:
        pytest.fail("socat is not installed: Debian package socat (scripts/install-system-deps.sh)")
    return path


def test_debian_sipp_has_no_tls(tmp_path: Path) -> None:
    """The reason for the socat relays: this SIPp refuses -t l1 (fails once it has TLS, so the
    relays are replaced by SIPp's own TLS rather than kept for a reason that is gone)."""
    out = subprocess.run(
        [sipp_binary(), "-t", "l1", "-sn", "uac", "127.0.0.1:9", "-m", "1", "-timeout", "2s"],
        cwd=tmp_path,
        capture_output=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert "must compile SIPp with OpenSSL" in text, (
        "this SIPp has TLS (-t l1): run it over TLS directly and drop the socat relays"
    )
    assert 0 != out.returncode


async def _wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def test_sipp_calls_over_tls_on_both_legs(tmp_path: Path) -> None:
    """20 SIPp calls (407, 200, ACK, BYE) through TLS on both legs: all complete, 20 CDRs."""
    sipp, socat = sipp_binary(), socat_binary()
    ca = make_ca(tmp_path)
    gw_cert = make_cert(tmp_path, ca, "gateway", ("IP:127.0.0.1",))
    carrier_cert = make_cert(tmp_path, ca, "carrier", ("DNS:carrier.test",))
    carrier_dir, agent_dir = tmp_path / "carrier", tmp_path / "agent"
    carrier_dir.mkdir()
    agent_dir.mkdir()
    carrier_tcp, carrier_tls, agent_relay = free_udp_port(), free_udp_port(), free_udp_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    start(
        [sipp, "-sf", str(SIPP_DIR / "carrier_uas.xml"), "-t", "t1", "-i", "127.0.0.1",
         "-p", str(carrier_tcp), "-m", str(CALLS), "-timeout", "60s", "-nostdin",
         "-trace_err", "-error_file", str(carrier_dir / "errors.log")],
        carrier_dir,
    )  # fmt: skip
    start(
        [socat, f"OPENSSL-LISTEN:{carrier_tls},bind=127.0.0.1,reuseaddr,fork,"
         f"cert={carrier_cert.cert},key={carrier_cert.key},verify=0",
         f"TCP:127.0.0.1:{carrier_tcp}"],
        tmp_path,
    )  # fmt: skip
    settings = gateway_settings(
        ("127.0.0.1", carrier_tls),
        tmp_path / "gw.db",
        extra={
            "sip": {
                "listen": ["udp:127.0.0.1:0", "tls:127.0.0.1:0"],
                "realm": "dialgate",
                "tls_cert": str(gw_cert.cert),
                "tls_key": str(gw_cert.key),
            },
            # SIPp hashes sip:<remote ip>:<remote port> as the digest uri, here the
            # relay's address, which is not the gateway's own (TOOLS.md, issue 15).
            "security": {"digest_uri_check": False},
            "carriers": [
                {
                    "name": "carrier-a",
                    "address": f"tls:127.0.0.1:{carrier_tls}",
                    "timezone": "Asia/Shanghai",
                    "options_interval": None,
                    "tls_ca": str(ca.cert),
                    "tls_server_name": "carrier.test",
                }
            ],
        },
    )
    gw = Gateway(settings)
    try:
        await gw.start()
        tls_port = gw.address("tls")[1]
        start(
            [socat, f"TCP-LISTEN:{agent_relay},bind=127.0.0.1,reuseaddr,fork",
             f"OPENSSL:127.0.0.1:{tls_port},cafile={ca.cert},verify=1"],
            tmp_path,
        )  # fmt: skip
        await _wait_port(carrier_tls)
        await _wait_port(agent_relay)
        alice = Agent("alice", "s3cret", gw.address("udp"))
        await alice.start()
        try:
            assert 200 == (await alice.register()).status
        finally:
            await alice.close()
        numbers = agent_dir / "numbers.csv"
        numbers.write_text("SEQUENTIAL\n" + "".join(f"1391000{i:04d};\n" for i in range(CALLS)))
        agent = start(
            [sipp, f"127.0.0.1:{agent_relay}", "-sf", str(SIPP_DIR / "agent_call.xml"),
             "-t", "t1", "-inf", str(numbers), "-m", str(CALLS), "-r", str(RATE), "-l", "20",
             "-i", "127.0.0.1", "-p", str(free_udp_port()), "-timeout", "60s",
             "-timeout_error", "-default_behaviors", "all,-abortunexp", "-nostdin",
             "-trace_stat", "-stf", str(agent_dir / "stat.csv"),
             "-trace_err", "-error_file", str(agent_dir / "errors.log")],
            agent_dir,
        )  # fmt: skip
        started = time.monotonic()
        while agent.poll() is None and time.monotonic() - started < 70:
            await asyncio.sleep(0.1)
        result = stat_row(agent_dir / "stat.csv")
        store = gw.store
        assert store is not None
        for _ in range(50):
            if len(store.cdrs()) >= CALLS:
                break
            await asyncio.sleep(0.1)
        errors = agent_dir / "errors.log"
        detail = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
        assert (str(CALLS), "0") == (result["SuccessfulCall(C)"], result["FailedCall(C)"]), detail
        assert 0 == agent.returncode
        cdrs = store.cdrs()
        assert CALLS == len(cdrs)
        assert {"answered"} == {str(c.outcome) for c in cdrs}
        tls = next(t for t in gw.transports if t.name == "tls")
        assert 0 == tls.stats.tls_handshake_failures
        assert 2 <= tls.stats.tls_handshakes  # the agent relay in, the carrier out
        udp = next(t for t in gw.transports if t.name == "udp")
        assert 2 == udp.stats.received  # alice's REGISTER (401, then 200) only
    finally:
        for proc in reversed(procs):
            stop_pid(proc)
        await gw.close()
