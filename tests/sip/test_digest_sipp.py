"""Interop: SIPp 3.6.1 answers DigestServer challenges over real UDP on 127.0.0.1.

A tiny in-test UAS (one UDP socket, gateway.sip.message for framing) challenges
SIPp's REGISTER (401) and MESSAGE (407) and verifies the credentials SIPp
computes with its own MD5 code. This pins the two traps in TOOLS.md: SIPp's
digest ``uri=`` is ``sip:<remote ip>:<port>`` rather than the Request-URI, and
SIPp reads only the first challenge. Every SIPp process is stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gateway.sip.digest import (
    Algorithm,
    Credentials,
    DigestServer,
    Outcome,
    Verdict,
    ha1,
)
from gateway.sip.message import Request, make_response, parse
from simulator.testkit import free_udp_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("sipp") is None, reason="sipp (Debian sip-tester) not installed"
    ),
]

REALM = "dialgate.test"

_HEAD = """
      {method} {ruri} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <{to}>
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:alice@[local_ip]:[local_port]>
      Max-Forwards: 70
      Expires: 60
{auth}      Content-Length: 0
"""


def _scenario(method: str, ruri: str, to: str, challenge: int, password: str, final: int) -> str:
    first = _HEAD.format(method=method, ruri=ruri, to=to, cseq=1, auth="")
    auth = f"      [authentication username=alice password={password}]\n"
    second = _HEAD.format(method=method, ruri=ruri, to=to, cseq=2, auth=auth)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="digest {method}">
  <send retrans="500"><![CDATA[
{first}
  ]]></send>
  <recv response="{challenge}" auth="true"/>
  <send retrans="500"><![CDATA[
{second}
  ]]></send>
  <recv response="{final}"/>
</scenario>
"""


def _lookup(user: str, algorithm: Algorithm) -> str | None:
    return ha1(user, REALM, "s3cret", algorithm) if user == "alice" else None


def _run(
    tmp_path: Path, scenario: str, server: DigestServer, *, proxy: bool
) -> tuple[int, list[Verdict], list[Request]]:
    """Run SIPp against the in-test UAS; return (SIPp exit code, verdicts, requests seen)."""
    xml = tmp_path / "scenario.xml"
    xml.write_text(scenario)
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    uas.settimeout(0.1)
    port = uas.getsockname()[1]
    verdicts: list[Verdict] = []
    requests: list[Request] = []
    proc = subprocess.Popen(
        [
            "sipp",
            f"127.0.0.1:{port}",
            "-sf",
            str(xml),
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_udp_port()),
            "-timeout",
            "10s",
            "-timeout_error",
            "-nostdin",
            "-buff_size",
            "1048576",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                data, addr = uas.recvfrom(65535)
            except TimeoutError:
                continue
            req = parse(data)
            assert isinstance(req, Request)
            requests.append(req)
            now = time.monotonic()
            name = "Proxy-Authorization" if proxy else "Authorization"
            verdict = server.verify(req.method, req.headers.get_all(name) or None, _lookup, now)
            verdicts.append(verdict)
            answer = server.answer(verdict, now, proxy=proxy)
            if answer is None:
                resp = make_response(req, 200, to_tag="uas1")
            else:
                resp = make_response(
                    req, answer.status, answer.reason, to_tag="uas1", headers=answer.headers
                )
            uas.sendto(bytes(resp), addr)
        code = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        uas.close()
    return code, verdicts, requests


def test_sipp_register_with_md5_default(tmp_path: Path) -> None:
    """SIPp REGISTER → 401 → REGISTER with Authorization → 200 with the default (MD5) server."""
    server = DigestServer(key=b"sipp-interop-key-0123456789", realm=REALM)
    scenario = _scenario(
        "REGISTER", "sip:[remote_ip]:[remote_port]", "sip:alice@[remote_ip]", 401, "s3cret", 200
    )
    code, verdicts, _ = _run(tmp_path, scenario, server, proxy=False)
    expected = (0, [Outcome.FAILED, Outcome.OK])
    assert expected == (code, [v.outcome for v in verdicts])


def test_sipp_message_407_uri_differs_from_request_uri(tmp_path: Path) -> None:
    """SIPp's digest uri is sip:<ip>:<port>, not the Request-URI; it is still accepted (§22.4)."""
    server = DigestServer(key=b"sipp-interop-key-0123456789", realm=REALM)
    ruri = "sip:+8613800000002@[remote_ip]:[remote_port]"
    scenario = _scenario("MESSAGE", ruri, ruri, 407, "s3cret", 200)
    code, verdicts, requests = _run(tmp_path, scenario, server, proxy=True)
    expected = (0, [Outcome.FAILED, Outcome.OK])
    assert expected == (code, [v.outcome for v in verdicts])
    creds = Credentials.parse(requests[-1].headers.get("Proxy-Authorization") or "")
    assert creds.uri != str(requests[-1].uri)  # the trap TOOLS.md describes


def test_sipp_wrong_password_gets_a_new_challenge(tmp_path: Path) -> None:
    """A wrong password is answered with another 401 (FAILED), never an error or a crash."""
    server = DigestServer(key=b"sipp-interop-key-0123456789", realm=REALM)
    scenario = _scenario(
        "REGISTER", "sip:[remote_ip]:[remote_port]", "sip:alice@[remote_ip]", 401, "wrong", 401
    )
    code, verdicts, _ = _run(tmp_path, scenario, server, proxy=False)
    expected = (0, [("failed", "no-credentials"), ("failed", "wrong-response")])
    assert expected == (code, [(v.outcome.value, v.reason) for v in verdicts])
