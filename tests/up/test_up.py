"""``dialgate up`` as a subprocess: broker, simulated carrier, gateway and wallboard together.

Each test writes a small configuration on free loopback ports (one UDP SIP
listener, one carrier, one user, one card), starts ``dialgate up`` in a temporary
working directory, waits for the printed block, then checks every part from
outside: the wallboard page answers 200, a late MQTT subscriber gets the
gateway's retained status and the card's retained state, the SIP port answers
an OPTIONS with 200. SIGTERM then ends the command with status 0 and the
mosquitto it started is gone.

Runs the real ``dialgate`` entry point once ``gateway.cli.main`` registers ``up``;
until then the same ``main()`` with ``gateway.cli.up`` imported first.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from simulator.testkit import Mosquitto, free_ports, gateway_toml, mosquitto_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT = 60.0  # bounds (not assertions on speed): how long to wait before giving up
STOP_TIMEOUT = 30.0


@pytest.fixture
def installed_mosquitto() -> str:
    """mosquitto's path: `dialgate up` needs it and `make install` installs it, so a missing
    one is a broken set-up to repair and fails the test (it is never skipped)."""
    path = mosquitto_binary()
    if path is None:
        pytest.fail("mosquitto is not installed: run `make install`")
    return path


def up_command() -> list[str]:
    from gateway.cli import main as cli

    if "up" in cli.COMMANDS:
        entry = Path(sys.executable).parent / "dialgate"
        if entry.exists():
            return [str(entry), "up"]
    code = "import sys, gateway.cli.up; from gateway.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "up"]


def write_config(tmp: Path, *, sip: int, carrier: int, mqtt: int, admin: int) -> Path:
    config = tmp / "dialgate.toml"
    config.write_text(
        gateway_toml(
            sip=sip,
            carrier=carrier,
            mqtt=mqtt,
            admin=admin,
            store=tmp / "dialgate.db",
            node="gw-up",
            extra='[logging]\nlevel = "info"\njson = true\n',
        )
    )
    return config


class Up:
    """A running ``dialgate up`` and the block it printed."""

    def __init__(self, proc: subprocess.Popen[str], stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.lines: list[str] = []

    def wait_block(self) -> str:
        """Read stdout until "Ctrl-C to stop." (bounded); return the block."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("Ctrl-C to stop"):
                return "".join(self.lines)
        raise AssertionError(
            f"no block printed (exit {self.proc.poll()}):\n{''.join(self.lines)}\n"
            f"stderr:\n{self.stderr.read_text()[-3000:]}"
        )

    def field(self, name: str) -> str:
        for line in self.lines:
            m = re.match(rf"\s+{re.escape(name)}\s+(\S.*)$", line)
            if m:
                return m.group(1).strip()
        raise AssertionError(f"no {name!r} line in {''.join(self.lines)}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def run_up(tmp_path: Path) -> Iterator[object]:
    started: list[Up] = []

    def start(*extra: str, config: Path) -> Up:
        stderr = tmp_path / f"stderr-{len(started)}.txt"
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [*up_command(), "--config", str(config), *extra],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        up = Up(proc, stderr)
        started.append(up)
        return up

    yield start
    for up in started:  # a failed test must not leave a gateway or broker behind
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGTERM)
            try:
                up.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()
        if up.proc.stdout is not None:
            up.proc.stdout.close()


def sip_options(port: int) -> str:
    """Send OPTIONS to 127.0.0.1:port over UDP (retransmitted); return the status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        local = s.getsockname()[1]
        message = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-up-{local};rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:probe@127.0.0.1>;tag=up-probe\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: up-probe-{local}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        for _ in range(10):
            s.sendto(message, ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                continue
            return data.decode(errors="replace").split("\r\n", 1)[0]
    raise AssertionError("no answer to OPTIONS")


async def retained(mqtt_port: int, topics: set[str]) -> dict[str, dict[str, object]]:
    """Connect after the gateway started; collect the retained messages of ``topics``."""
    got: dict[str, dict[str, object]] = {}
    async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="up-test") as client:
        await client.subscribe("dialgate/#", qos=1)
        async with asyncio.timeout(START_TIMEOUT):
            async for message in client.messages:
                topic = str(message.topic)
                if topic in topics and message.retain:
                    assert isinstance(message.payload, bytes)
                    got[topic] = json.loads(message.payload)
                    if set(got) == topics:
                        return got
    raise AssertionError("unreachable")


def http_status(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def mosquitto_running(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"mosquitto" in cmdline


@pytest.mark.usefixtures("installed_mosquitto")
async def test_up_brings_everything_up_and_down(tmp_path: Path, run_up: object) -> None:
    sip, carrier, mqtt, admin, wallboard = free_ports(5)
    config = write_config(tmp_path, sip=sip, carrier=carrier, mqtt=mqtt, admin=admin)
    extra = ["--wallboard-port", str(wallboard)]
    up = run_up(*extra, config=config)  # type: ignore[operator]
    block = await asyncio.to_thread(up.wait_block)

    # The block: where everything is, and no password.
    assert up.field("wallboard") == f"http://127.0.0.1:{wallboard}/"
    assert up.field("SIP") == f"udp:127.0.0.1:{sip}"
    assert up.field("admin API") == f"http://127.0.0.1:{admin}/"
    assert up.field("metrics") == f"http://127.0.0.1:{admin}/metrics"
    assert "alice (card c1)" in up.field("agents")
    assert "password as in the config" in block
    assert f"udp:127.0.0.1:{carrier}" in up.field("carrier")
    assert "secret" not in block
    mqtt_line = up.field("MQTT")
    assert mqtt_line.startswith(f"mqtt://127.0.0.1:{mqtt} ")
    m = re.search(r"mosquitto, pid (\d+)", mqtt_line)
    assert m, mqtt_line
    pid = int(m.group(1))
    assert mosquitto_running(pid)

    # The wallboard page, the metrics, SIP.
    status, page = await asyncio.to_thread(http_status, up.field("wallboard"))
    assert status == 200 and "<html" in page.lower()
    status, metrics = await asyncio.to_thread(http_status, up.field("metrics"))
    assert status == 200 and "dialgate_" in metrics
    status_line = await asyncio.to_thread(sip_options, sip)
    assert status_line.startswith("SIP/2.0 200"), status_line

    # A subscriber that connects now gets the retained gateway status and card state.
    got = await retained(mqtt, {"dialgate/gateway/gw-up/status", "dialgate/cards/c1/state"})
    assert got["dialgate/gateway/gw-up/status"]["status"] == "online"
    assert got["dialgate/cards/c1/state"]["state"] == "active"
    assert got["dialgate/cards/c1/state"]["card"] == "c1"

    # SIGTERM: everything stops, exit 0, the broker is gone.
    assert await asyncio.to_thread(up.terminate) == 0, up.stderr.read_text()[-3000:]
    assert not mosquitto_running(pid)
    assert not (tmp_path / f"var/run/up-mqtt-{mqtt}/mosquitto.pid").exists()
    assert "Traceback" not in up.stderr.read_text()


@pytest.mark.parametrize(
    "busy", ["sip.listen[0]", "carriers[0].address", "admin.listen", "mqtt.url"]
)
def test_busy_port_names_the_key(tmp_path: Path, run_up: object, busy: str) -> None:
    sip, carrier, mqtt, admin = free_ports(4)
    config = write_config(tmp_path, sip=sip, carrier=carrier, mqtt=mqtt, admin=admin)
    kind, port = {
        "sip.listen[0]": (socket.SOCK_DGRAM, sip),
        "carriers[0].address": (socket.SOCK_DGRAM, carrier),
        "admin.listen": (socket.SOCK_STREAM, admin),
        "mqtt.url": (socket.SOCK_STREAM, mqtt),
    }[busy]
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            holder.listen(1)
        up = run_up(config=config)  # type: ignore[operator]
        assert up.proc.wait(timeout=START_TIMEOUT) == 1
    err = up.stderr.read_text()
    assert f"dialgate up: {busy}: " in err
    assert f"127.0.0.1:{port} is not available (address already in use)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "var" / "run").exists()  # nothing was started


async def test_no_broker_uses_the_configured_one_and_no_carrier(
    tmp_path: Path, run_up: object, installed_mosquitto: str
) -> None:
    sip, carrier, admin, wallboard, mqtt = free_ports(5)
    with Mosquitto(installed_mosquitto, tmp_path / "broker", mqtt):
        config = write_config(tmp_path, sip=sip, carrier=carrier, mqtt=mqtt, admin=admin)
        up = run_up(  # type: ignore[operator]
            "--no-broker", "--no-carrier", "--wallboard-port", str(wallboard), config=config
        )
        await asyncio.to_thread(up.wait_block)
        assert up.field("MQTT") == f"mqtt://127.0.0.1:{mqtt} (not started: --no-broker)"
        assert up.field("carrier") == "carrier-a: not started (--no-carrier)"
        got = await retained(mqtt, {"dialgate/gateway/gw-up/status"})
        assert got["dialgate/gateway/gw-up/status"]["status"] == "online"
        # The wallboard follows the same broker: its /state holds the card.
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                _, body = await asyncio.to_thread(http_status, up.field("wallboard") + "state")
                if "c1" in json.loads(body)["cards"]:
                    break
                await asyncio.sleep(0.1)
        assert await asyncio.to_thread(up.terminate) == 0
        # A clean stop leaves "offline" as the retained status on the (still running) broker.
        got = await retained(mqtt, {"dialgate/gateway/gw-up/status"})
        assert got["dialgate/gateway/gw-up/status"]["status"] == "offline"
    assert not (tmp_path / "var" / "run").exists()


def demo_config(tmp: Path, *, sip: int, carrier: int, mqtt: int, admin: int) -> Path:
    """``examples/demo.toml`` (what ``make run`` starts) with free ports and a private store."""
    text = (Path(__file__).resolve().parents[2] / "examples" / "demo.toml").read_text()
    for old, new in (
        ('"udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"', f'"udp:127.0.0.1:{sip}"'),
        ("udp:127.0.0.1:5070", f"udp:127.0.0.1:{carrier}"),
        ("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{mqtt}"),
        ('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{admin}"'),
        ('path = "var/dialgate.db"', f'path = "{tmp / "demo.db"}"'),
        # The SIPp agent scenarios (tests/policy_sipp/sipp) authenticate as alice/s3cret.
        ('password = "demo-pw-4417"', 'password = "s3cret"'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config = tmp / "demo.toml"
    config.write_text(text)
    return config


@pytest.mark.usefixtures("installed_mosquitto")
async def test_readme_first_call_connects_with_the_demo_config(
    tmp_path: Path, run_up: object
) -> None:
    """make run's config: alice registers and the banner's number is answered, whatever the hour
    (open calling hours, no night window, the demo carrier answers that number every time);
    the same number again that day is refused by the frequency cap."""
    from tests.policy_sipp.conftest import register_alice, run_agent

    sip, carrier, mqtt, admin, wallboard = free_ports(5)
    config = demo_config(tmp_path, sip=sip, carrier=carrier, mqtt=mqtt, admin=admin)
    up = run_up("--wallboard-port", str(wallboard), config=config)  # type: ignore[operator]
    await asyncio.to_thread(up.wait_block)
    national = up.field("dial").split()[0]
    assert national.isdigit(), up.field("dial")
    await asyncio.to_thread(register_alice, ("127.0.0.1", sip), tmp_path / "reg")
    result = await asyncio.to_thread(
        run_agent, "agent_call.xml", ("127.0.0.1", sip), tmp_path / "call", [national]
    )
    finals = [m.status for m in result.messages if m.status and m.status >= 200]
    assert "1" == result.stats.get("SuccessfulCall(C)"), finals
    assert 200 in finals, finals
    # Called again the same day: one answered call a day per number (frequency cap).
    again = await asyncio.to_thread(
        run_agent, "agent_reject_403.xml", ("127.0.0.1", sip), tmp_path / "again", [national]
    )
    reasons = [m.header("Reason") for m in again.messages if m.status == 403]
    assert 'SIP;cause=403;text="frequency-cap"' in reasons, reasons
    assert await asyncio.to_thread(up.terminate) == 0, up.stderr.read_text()[-3000:]


def test_without_mosquitto_up_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No mosquitto: exit 1 before anything starts, naming `make install` and the package."""
    import gateway.cli.up as up_cli
    from gateway.cli.main import main

    monkeypatch.setattr(up_cli, "find_mosquitto", lambda: None)
    monkeypatch.chdir(tmp_path)
    sip, carrier, mqtt, admin, wallboard = free_ports(5)
    config = write_config(tmp_path, sip=sip, carrier=carrier, mqtt=mqtt, admin=admin)
    assert main(["up", "--config", str(config), "--wallboard-port", str(wallboard)]) == 1
    err = capsys.readouterr().err
    assert "mosquitto" in err and "make install" in err and "apt-get install mosquitto" in err
    assert "Traceback" not in err
    assert not (tmp_path / "var" / "run").exists()  # nothing was started
    # The sockets the gateway would have used are still free.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", sip))
