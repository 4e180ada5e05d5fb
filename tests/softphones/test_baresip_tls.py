"""baresip (Debian ``baresip-core``) as alice over SIP/TLS through ``dialgate run``.

The gateway listens on ``udp:`` and ``tls:`` (a certificate for 127.0.0.1 from
a test CA made in the module's temporary directory with the openssl CLI);
baresip's account says ``transport=tls`` and its outbound proxy is the TLS
port, with the test CA as its ``sip_cafile``. The carrier is the simulator's
(UDP): this module is about the agent's leg. baresip 1.0 (libre 1.1) speaks
TLS; what it prints (``-s`` trace lines ``TLS src -> dst``) is what is read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DialgateProcess, dialgate_command
from tests.softphones.conftest import (
    _ANSI,
    CALLEE_PHONE_HANGS_UP,
    CARD,
    PASSWORD,
    USER,
    Baresip,
    CarrierThread,
    SipMessage,
    gateway_toml,
    requests,
    responses,
)
from tests.tls_certs import make_ca, make_cert

pytestmark = pytest.mark.integration

_TRACE = re.compile(r"\x1b\[36;1m#\r?\nTLS (\S+) -> (\S+)\r?\n(.*?)\x1b\[;m", re.DOTALL)


class BaresipTLS(Baresip):
    """baresip with ``sip_trans_def tls``, the test CA, and a ``transport=tls`` account."""

    name = "baresip-tls"
    ca: Path = Path()

    def command(self) -> tuple[list[str], dict[str, str]]:
        """As :class:`Baresip`, its config and account turned to TLS."""
        cmd, env = super().command()
        host, port = self.gateway
        conf = self.workdir / "baresip"
        text = (conf / "config").read_text()
        text = text.replace(
            "sip_trans_def\t\tudp\n", f"sip_trans_def\t\ttls\nsip_cafile\t\t{self.ca}\n"
        )
        (conf / "config").write_text(text)
        (conf / "accounts").write_text(
            f"<sip:{USER}@{host};transport=tls>;auth_user={USER};auth_pass={PASSWORD};"
            f'outbound="sip:{host}:{port};transport=tls";regint=600;answermode=auto\n'
        )
        return cmd, env

    def sip_trace(self) -> list[SipMessage]:
        """The ``-s`` trace of TLS messages: from the gateway's port is "received"."""
        gateway = f"{self.gateway[0]}:{self.gateway[1]}"
        out = []
        for found in _TRACE.finditer(self.raw_output):
            direction = "received" if found.group(1) == gateway else "sent"
            message = SipMessage.parse(direction, found.group(3))
            if message is not None:
                out.append(message)
        return out


def _pump(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append(raw.decode("utf-8", "replace").rstrip("\n"))


def start_tls_gateway(tmp: Path, carrier_port: int, cert: Path, key: Path) -> DialgateProcess:
    """``dialgate run`` with udp: and tls: listeners on port 0; waits for both."""
    config = tmp / "dialgate.toml"
    config.write_text(
        "[sip]\n"
        'listen = ["udp:127.0.0.1:0", "tls:127.0.0.1:0"]\n'
        'digest_algorithms = ["MD5"]\n'
        f'tls_cert = "{cert}"\n'
        f'tls_key = "{key}"\n'
        "\n[store]\n"
        f'path = "{tmp / "dialgate.db"}"\n'
        "\n[admin]\n"
        'listen = "127.0.0.1:0"\n'
        "\n[logging]\n"
        "json = true\n" + gateway_toml(carrier_port)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    proc = subprocess.Popen(
        [*dialgate_command(), "run", "--config", str(config)],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gw = DialgateProcess(proc, config)
    gw._reader = threading.Thread(target=_pump, args=(proc, gw.lines), daemon=True)
    gw._reader.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for entry in gw.events("listening"):
            gw.addresses[entry["transport"]] = (entry["host"], int(entry["port"]))
        if {"udp", "tls"} <= gw.addresses.keys() and gw.events("ready"):
            return gw
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError("dialgate did not start:\n" + "\n".join(gw.lines[-30:]))


@dataclass
class TLSRig:
    """The carrier, the gateway (udp + tls) and baresip registered over TLS."""

    carrier: CarrierThread
    gateway: DialgateProcess
    phone: BaresipTLS


def _start_phone(tmp: Path, name: str, gateway: tuple[str, int], ca: Path) -> BaresipTLS:
    workdir = tmp / name
    workdir.mkdir()
    phone = BaresipTLS(workdir, gateway)
    phone.ca = ca
    phone.start()
    return phone


@pytest.fixture(scope="module")
def tls_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRig]:
    """One rig for the module; everything stopped by PID at teardown."""
    tmp = tmp_path_factory.mktemp("baresip-tls")
    ca = make_ca(tmp)
    cert = make_cert(tmp, ca, "gateway", ("IP:127.0.0.1",))
    started: list[Any] = []
    try:
        carrier = CarrierThread()
        started.append(carrier)
        gw = start_tls_gateway(tmp, carrier.address[1], cert.cert, cert.key)
        started.append(gw)
        phone = _start_phone(tmp, "baresip", gw.addresses["tls"], ca.cert)
        started.append(phone)
        yield TLSRig(carrier, gw, phone)
    finally:
        for thing in reversed(started):
            if isinstance(thing, CarrierThread):
                thing.close()
            else:
                thing.stop()


def test_registers_over_tls(tls_rig: TLSRig) -> None:
    """REGISTER over TLS: 401 then 200, Via TLS, a transport=tls Contact bound."""
    phone = tls_rig.phone
    ok = phone.wait_registered()
    phone.expect(r"alice@127\.0\.0\.1: \{0/TLS/v4\} 200 OK \(\) \[1 binding\]")
    assert [401, 200] == [m.status for m in responses(phone.sip_trace(), "REGISTER")][:2]
    assert "SIP/2.0/TLS" in (ok.header("Via") or "")
    [first, *_] = requests(phone.sip_trace(), "REGISTER", "sent")
    assert "transport=tls" in (first.header("Contact") or "")
    handshakes = [
        json.loads(line)
        for line in tls_rig.gateway.lines
        if '"transport.tls.handshake_failed"' in line
    ]
    assert [] == handshakes


def test_outbound_call_over_tls_answered_then_phone_hangs_up(tls_rig: TLSRig) -> None:
    """baresip calls over TLS: 407, answered by the carrier, BYE → 200.

    baresip dials a sip: URI, so our Contact is sip:…;transport=tls (a SIPS one
    would stop it: its libre sends in-dialog requests to sip: targets only).
    """
    rig = tls_rig
    phone = rig.phone
    phone.wait_registered()
    mark = phone.mark()
    phone.dial(CALLEE_PHONE_HANGS_UP)
    phone.expect(rf"Call established: sip:{CALLEE_PHONE_HANGS_UP}@127\.0\.0\.1", since=mark)
    [call_id] = rig.carrier.wait_dialogs(1)
    invite = [r for r in rig.carrier.invites() if r.call_id == call_id][-1]
    assert f"+86{CALLEE_PHONE_HANGS_UP}" == invite.uri.user
    assert CARD.number == invite.from_.uri.user
    answers = responses(phone.sip_trace(), "INVITE")
    assert 407 in [m.status for m in answers]
    [ok] = [m for m in answers if m.status == 200][-1:]
    tls_port = rig.gateway.addresses["tls"][1]
    assert f"<sip:dialgate@127.0.0.1:{tls_port};transport=tls>" == ok.header("Contact")
    mark = phone.mark()
    phone.hang_up()
    phone.expect_sip("200 to its BYE", lambda t: 200 in [m.status for m in responses(t, "BYE")])
    rig.carrier.wait_dialogs(0)
    assert "BYE" in [r.method for r in rig.carrier.requests() if r.call_id == call_id]


def test_inbound_call_reaches_the_phone_over_its_tls_flow(tls_rig: TLSRig) -> None:
    """A callback to the card rings baresip on the TLS connection it registered on."""
    rig = tls_rig
    phone = rig.phone
    phone.wait_registered()
    mark = phone.mark()
    response, _ = rig.carrier.invite(rig.gateway.addresses["udp"], CARD.number)
    assert 200 == response.status
    phone.expect(r"Call established: sip:\+8613987654321@", since=mark)
    [invite] = requests(phone.sip_trace(), "INVITE", "received")[-1:]
    assert "SIP/2.0/TLS" in (invite.header("Via") or "")
    tls_port = rig.gateway.addresses["tls"][1]
    assert f"<sip:dialgate@127.0.0.1:{tls_port};transport=tls>" == invite.header("Contact")
    [call_id] = rig.carrier.wait_dialogs(1)
    assert 200 == rig.carrier.bye(call_id).status
    phone.expect(r"sip:\+8613987654321@\S+: session closed", since=mark)
    rig.carrier.wait_dialogs(0)


def test_plain_sip_on_the_tls_port_is_logged_not_fatal(tls_rig: TLSRig) -> None:
    """Plain SIP sent to the TLS port: one handshake_failed line (not-tls); the phone still works."""
    import socket

    host, port = tls_rig.gateway.addresses["tls"]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        sock.settimeout(5)
        assert b"" == sock.recv(100)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        failed = tls_rig.gateway.events("transport.tls.handshake_failed")
        if failed:
            break
        time.sleep(0.05)
    assert ["not-tls"] == [e["reason"] for e in failed]
    assert tls_rig.gateway.alive()


def test_cli_output_has_no_ansi_in_trace_parse() -> None:
    """The trace pattern matches baresip's coloured TLS blocks (a sample of its -s output)."""
    sample = "\x1b[36;1m#\nTLS 127.0.0.1:1 -> 127.0.0.1:2\nOPTIONS sip:x SIP/2.0\r\n\r\n\x1b[;m"
    assert 1 == len(_TRACE.findall(sample))
    assert "" == _ANSI.sub("", "\x1b[;m")
