"""Fixtures for the event, MQTT, metrics and wallboard tests: a real mosquitto.

``mosquitto`` starts ``/usr/sbin/mosquitto -c FILE`` on a free 127.0.0.1 port
(``listener PORT 127.0.0.1``, ``allow_anonymous true``, ``persistence false``)
and stops it by PID in teardown. The :class:`Mosquitto` handle can ``kill()``
the broker and ``start()`` it again on the same port, for outage tests.

Written with no dependency on the rest of ``tests/events`` so it can move to a
shared pytest plugin unchanged.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto_binary() -> str | None:
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


class Mosquitto:
    """One mosquitto broker process on a fixed (free) port; restartable."""

    def __init__(
        self, binary: str, workdir: Path, port: int, *, extra: str = "", scheme: str = "mqtt"
    ) -> None:
        self.binary = binary
        self.port = port
        self.host = "127.0.0.1"
        self.scheme = scheme
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        anonymous = "false" if "password_file" in extra else "true"
        self.config.write_text(
            f"listener {port} 127.0.0.1\n"
            f"allow_anonymous {anonymous}\n"
            "persistence false\n"
            # Run as the test's own user: when started as root mosquitto would switch
            # to "mosquitto", which cannot read certificate files under the tmp dir.
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (``mqtts://`` for a TLS broker)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the broker (an outage) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the broker by PID, SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free port, stopped (by PID) after the test."""
    binary = _mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed (scripts/install-system-deps.sh installs it)")
    broker = Mosquitto(binary, tmp_path, free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
    binary = _mosquitto_binary()
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
