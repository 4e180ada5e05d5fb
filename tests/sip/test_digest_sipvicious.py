"""Hostile peer: sipvicious' svcrack (GPL, used only as a CLI) against DigestServer over UDP.

svcrack guesses passwords from a dictionary. Against a challenge without qop
(the RFC 2069 form) it sends ``qop=auth`` with no nc/cnonce — malformed input
the server must answer with 400, never crash on. Against the normal qop=auth
challenge it behaves like a correct client, so the right password from its
dictionary is accepted and every wrong one gets the same fresh challenge.
Everything runs on 127.0.0.1 with a free port; svcrack is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sip.digest import Algorithm, DigestServer, Outcome, Verdict, ha1
from gateway.sip.message import Request, make_response, parse

REALM = "dialgate.test"


def _svcrack() -> str | None:
    local = Path(sys.executable).parent / "sipvicious_svcrack"
    return str(local) if local.exists() else shutil.which("sipvicious_svcrack")


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_svcrack() is None, reason="sipvicious (PyPI) not installed"),
]


def _lookup(user: str, algorithm: Algorithm) -> str | None:
    return ha1(user, REALM, "s3cret", algorithm) if user == "alice" else None


def _crack(tmp_path: Path, server: DigestServer, passwords: list[str]) -> list[Verdict]:
    """Run svcrack for user alice against an in-test UAS; return the verdicts given."""
    wordlist = tmp_path / "dict.txt"
    wordlist.write_text("\n".join(passwords) + "\n")
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    uas.settimeout(0.1)
    port = uas.getsockname()[1]
    svcrack = _svcrack()
    assert svcrack is not None
    proc = subprocess.Popen(
        [
            svcrack,
            "-u",
            "alice",
            "-d",
            str(wordlist),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "--maximumtime=2",
            "127.0.0.1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    verdicts: list[Verdict] = []
    try:
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                data, addr = uas.recvfrom(65535)
            except TimeoutError:
                continue
            req = parse(data)
            assert isinstance(req, Request)
            now = time.monotonic()
            verdict = server.verify(
                req.method, req.headers.get_all("Authorization") or None, _lookup, now
            )
            verdicts.append(verdict)
            answer = server.answer(verdict, now)
            if answer is None:
                resp = make_response(req, 200, to_tag="uas1")
            else:
                resp = make_response(
                    req, answer.status, answer.reason, to_tag="uas1", headers=answer.headers
                )
            uas.sendto(bytes(resp), addr)
            guesses = sum(1 for v in verdicts if v.reason != "no-credentials")
            if guesses >= len(passwords) or verdict.outcome is Outcome.MALFORMED:
                # Every word was tried, or svcrack got a 400 — after which it
                # gives up ("unknown response") but idles for ~10 s. Give it a
                # moment to finish, then stop it.
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        uas.close()
    return verdicts


def test_svcrack_without_qop_challenge_is_answered_400(tmp_path: Path) -> None:
    """RFC 2069 challenge: svcrack's qop=auth without nc/cnonce is MALFORMED (400), no crash."""
    server = DigestServer(key=b"sipvicious-key-0123456789", realm=REALM, qop=())
    verdicts = _crack(tmp_path, server, ["wrong1", "s3cret", "wrong2"])
    with_credentials = [v for v in verdicts if v.reason != "no-credentials"]
    assert with_credentials, "svcrack sent no credentials"
    expected = {(Outcome.MALFORMED, 400)}
    assert expected == {
        (v.outcome, v.error.status_code if v.error else None) for v in with_credentials
    }


def test_svcrack_wrong_guesses_all_look_alike(tmp_path: Path) -> None:
    """qop=auth challenge: wrong guesses are FAILED/wrong-response; the right one is OK."""
    server = DigestServer(key=b"sipvicious-key-0123456789", realm=REALM)
    verdicts = _crack(tmp_path, server, ["wrong1", "wrong2", "s3cret"])
    guesses = [(v.outcome, v.reason) for v in verdicts if v.reason != "no-credentials"]
    expected = [
        (Outcome.FAILED, "wrong-response"),
        (Outcome.FAILED, "wrong-response"),
        (Outcome.OK, "ok"),
    ]
    assert expected == guesses
