"""Fixtures for the event, MQTT, metrics and wallboard tests.

``mosquitto`` (a real broker on a free loopback port, stopped by PID) comes from
the test kit (:mod:`simulator.pytest_plugin`); ``mosquitto_tls`` adds a TLS
listener and a password file to it; ``chromium`` is a headless browser for the
wallboard. Nothing here binds anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.pytest_plugin import mosquitto  # noqa: F401  (a fixture of this folder)
from simulator.testkit import Mosquitto, free_port, mosquitto_binary


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass(frozen=True)
class TlsBroker:
    """A TLS + password mosquitto and what a client needs to reach it."""

    broker: Mosquitto
    ca_file: Path
    username: str
    password: str


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[TlsBroker]:
    """mosquitto with a TLS listener (throw-away CA made with openssl) and a password file."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed (scripts/install-system-deps.sh installs it)")
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("openssl and mosquitto_passwd are needed for the TLS broker")
    d = tmp_path
    _run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dialgate test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    _run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(d / "server.key"),
        "-out",
        str(d / "server.csr"),
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run(
        "openssl",
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(d / "san.ext"),
        "-out",
        str(d / "server.crt"),
    )
    user, password = "dialgate", "br0ker-s3cret"
    _run("mosquitto_passwd", "-b", "-c", str(d / "passwd"), user, password)
    os.chmod(d / "passwd", 0o600)
    extra = (
        f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
        f"password_file {d / 'passwd'}\n"
    )
    broker = Mosquitto(binary, d, free_port(), extra=extra, scheme="mqtts")
    broker.start()
    try:
        yield TlsBroker(broker, d / "ca.crt", user, password)
    finally:
        broker.stop()


# --- headless Chromium driven over the DevTools protocol ---------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
    "--window-size=1920,1080",
)


def chromium_binary() -> str | None:
    """Path of the Debian ``chromium`` binary, None when it is not installed."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """A headless Chromium process with a fresh profile; ``devtools_port`` once started."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.devtools_port: int | None = None
        self.log = profile.parent / "chromium.log"

    def start(self, url: str, timeout: float = 30.0) -> None:
        """Open ``url``; wait for DevToolsActivePort in the profile to name the port."""
        self.profile.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", url],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log.read_text()[-2000:]}")
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    self.devtools_port = int(first[0])
                    return
            time.sleep(0.05)
        raise RuntimeError("chromium did not write DevToolsActivePort")

    def stop(self) -> None:
        """SIGTERM the browser by PID; SIGKILL its own process group if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # The group was created for this browser by start_new_session: only its
            # own renderer/zygote children are in it.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    """A headless Chromium (not yet started); skipped only when chromium is not installed."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    browser = Chromium(binary, tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.stop()
