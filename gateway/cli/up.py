"""``dialgate up``: the whole thing on one machine — broker, carrier, gateway, wallboard.

Registers itself in ``gateway.cli.main.COMMANDS`` when imported (``make run`` runs
it with ``examples/dialgate.toml``). In one process, in this order:

1. an MQTT broker on ``127.0.0.1``: ``mosquitto`` (``/usr/sbin/mosquitto`` or on
   PATH; ``make install`` installs it) started with a generated configuration in
   ``var/run/up-mqtt-PORT/`` (``listener PORT 127.0.0.1``, anonymous, no
   persistence; ``user`` = the current user when run as root). The port is
   ``--mqtt-port``, else the one of ``[mqtt] url``, else 1883. ``--no-broker``
   uses ``[mqtt] url`` as it is. Without mosquitto (and without ``--no-broker``)
   the command stops before starting anything, saying how to install it;
2. the simulator's carrier (:class:`simulator.carrier.Carrier`) on each
   ``[[carriers]] address`` (UDP on loopback), with carrier accounts for that
   carrier's ``[[cards]]`` and the simulator's default answer model, as
   in-process tasks (``--no-carrier``: none);
3. the gateway (``gateway.app.serve``) with ``[mqtt] url`` pointed at that broker;
4. the wallboard (:class:`gateway.operator.wallboard.server.WallboardServer`) on
   ``127.0.0.1:--wallboard-port`` (default 8088, or a free port when 8088 is taken);

then prints one block — SIP addresses, the agents a softphone can use, how to
dial, the wallboard, admin API and ``/metrics`` URLs — and runs until
SIGINT/SIGTERM, stopping everything in reverse order (the broker last, by PID).

Every configured port is checked before anything starts: a port in use ends the
command with exit status 1 and one line naming the key (``sip.listen[0]``,
``carriers[0].address``, ``admin.listen``, ``mqtt.url``, ``--wallboard-port``…).

What it must never do: print a password (agents are listed by name; "password
as in the config"), leave a broker it started running after it exits (it is
stopped by PID; a broker left over by a killed earlier run is found by its PID
file and stopped), or bind anything but loopback for the broker and wallboard.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command, load_or_report
from gateway.config import Settings

__all__ = ["PortInUse", "cmd_up", "find_mosquitto", "start_mosquitto"]

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
DEFAULT_WALLBOARD_PORT = 8088
DEFAULT_MQTT_PORT = 1883
BROKER_HOST = "127.0.0.1"
RUN_DIR = Path("var/run")
STOP_TIMEOUT = 15.0
MOSQUITTO_MISSING = (
    "mosquitto (the MQTT broker) is not installed: run `make install` "
    "or `apt-get install mosquitto`, or use --no-broker with a running broker in [mqtt] url"
)


class PortInUse(Exception):
    """A port some part needs is taken; ``key`` names the setting or option."""

    def __init__(self, key: str, where: str, detail: str = "address already in use") -> None:
        super().__init__(f"{key}: {where} is not available ({detail})")
        self.key = key
        self.where = where


class StartError(Exception):
    """A part could not start (the message is shown as is)."""


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt-port",
        type=int,
        default=None,
        metavar="N",
        help="port of the broker to start (default: the [mqtt] url port, else 1883; 0: free)",
    )
    parser.add_argument(
        "--wallboard-port",
        type=int,
        default=None,
        metavar="N",
        help=f"wallboard HTTP port (default {DEFAULT_WALLBOARD_PORT}, or a free one if busy)",
    )
    parser.add_argument(
        "--no-carrier", action="store_true", help="do not start the simulator's carrier"
    )
    parser.add_argument(
        "--no-broker",
        action="store_true",
        help="start no broker: use the one of [mqtt] url (it must be running)",
    )


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Port:
    key: str
    transport: str  # "udp" | "tcp"
    host: str
    port: int

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def check_ports(ports: list[_Port]) -> None:
    """Bind every port at once (so two parts asking for the same port also fail).

    Raise :class:`PortInUse` for the first that cannot be bound.
    """
    held: list[socket.socket] = []
    try:
        for p in ports:
            if p.port == 0:
                continue
            family = socket.AF_INET6 if ":" in p.host else socket.AF_INET
            kind = socket.SOCK_DGRAM if p.transport == "udp" else socket.SOCK_STREAM
            sock = socket.socket(family, kind)
            held.append(sock)
            try:
                if kind == socket.SOCK_STREAM:
                    # As asyncio's servers do; TIME_WAIT leftovers do not count as busy.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((p.host, p.port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(1)
            except OSError as exc:
                detail = (
                    "address already in use"
                    if exc.errno == errno.EADDRINUSE
                    else (exc.strerror or str(exc))
                )
                raise PortInUse(p.key, p.where, detail) from None
    finally:
        for sock in held:
            sock.close()


def free_tcp_port(host: str = BROKER_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_of(exc: OSError) -> int | None:
    """The port an asyncio bind error names (``... address ('127.0.0.1', 5060): ...``)."""
    text = str(exc)
    start = text.find("('")
    end = text.find(")", start)
    if start < 0 or end < 0:
        return None
    port = text[start:end].rpartition(",")[2].strip()
    return int(port) if port.isdigit() else None


# ---------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: SIGTERM the broker if dialgate dies without stopping it (kill -9).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM ``pid``, SIGKILL after ``timeout``; return when it is gone (not reaped)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass(slots=True)
class Mosquitto:
    """A mosquitto process started by ``dialgate up``."""

    proc: subprocess.Popen[bytes]
    port: int
    run_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_file(self) -> Path:
        return self.run_dir / "mosquitto.log"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; reap it and remove the PID file."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "mosquitto.pid").unlink()

    def log_tail(self, limit: int = 1500) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""


def _stop_leftover(run_dir: Path, conf: Path) -> int | None:
    """Stop a mosquitto that an earlier (killed) run left behind; its PID or None."""
    pid_file = run_dir / "mosquitto.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        pid_file.unlink(missing_ok=True)
        return None
    # Only a broker running our own configuration file is ours to stop.
    if str(conf.resolve()).encode() not in cmdline:
        pid_file.unlink(missing_ok=True)
        return None
    _stop_pid(pid)
    pid_file.unlink(missing_ok=True)
    return pid


async def start_mosquitto(
    binary: str, port: int, run_dir: Path, timeout: float = 10.0
) -> Mosquitto:
    """Start ``binary -c run_dir/mosquitto.conf`` on ``127.0.0.1:port``; wait until it listens."""
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "mosquitto.conf"
    leftover = _stop_leftover(run_dir, conf)
    if leftover is not None:
        print(
            f"dialgate up: stopped a broker left over by an earlier run (pid {leftover})",
            file=sys.stderr,
        )
    lines = [
        f"listener {port} {BROKER_HOST}",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # As root mosquitto would switch to the "mosquitto" user: stay who we are.
        lines.append(f"user {getpass.getuser()}")
    conf.write_text("\n".join(lines) + "\n")
    log_file = run_dir / "mosquitto.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", str(conf.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, not the broker: we stop it last
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    broker = Mosquitto(proc, port, run_dir)
    (run_dir / "mosquitto.pid").write_text(f"{proc.pid}\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.poll() is not None:
            broker.stop()
            raise StartError(f"mosquitto exited at start: {broker.log_tail() or 'no output'}")
        try:
            _, writer = await asyncio.open_connection(BROKER_HOST, port)
        except OSError:
            if loop.time() > deadline:
                broker.stop()
                raise StartError(f"mosquitto did not listen on {BROKER_HOST}:{port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return broker


# ---------------------------------------------------------------------------
# Carrier
# ---------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _carriers_to_start(settings: Settings) -> tuple[list[int], list[str]]:
    """Indexes of ``[[carriers]]`` the simulator can stand in for, and notes on the others."""
    chosen: list[int] = []
    notes: list[str] = []
    for i, carrier in enumerate(settings.carriers):
        address = carrier.address
        if address.transport.value != "udp":
            notes.append(f"{carrier.name}: not simulated (the simulator's carrier is UDP only)")
        elif not _is_loopback(address.ip):
            notes.append(f"{carrier.name}: not simulated ({address.host} is not loopback)")
        else:
            chosen.append(i)
    return chosen, notes


async def start_carrier(settings: Settings, index: int) -> Any:
    """The simulator's carrier for ``settings.carriers[index]``, with its cards' accounts."""
    from simulator.answer import AnswerProfile
    from simulator.antifraud import AntiFraudThresholds
    from simulator.carrier import Carrier
    from simulator.clock import ScaledClock
    from simulator.models import CardAccount, CarrierConfig, CarrierModel

    carrier = settings.carriers[index]
    cards = [c for c in settings.cards if c.carrier == carrier.name]
    accounts = [
        CardAccount(
            c.id,
            c.auth_username,
            c.password.get_secret_value() if c.password is not None else "",
        )
        for c in cards
    ]
    config = CarrierConfig(
        timezone=carrier.timezone,
        answer=AnswerProfile(),  # the simulator's mix: answered, busy, no answer, declined
        # The carrier suspends a card only when it is clearly abused (well above
        # the example's quotas): what dialgate exists to prevent.
        thresholds=AntiFraudThresholds(
            calls_per_hour=120,
            calls_per_day=600,
            answer_rate_floor=0.1,
            short_call_share_max=0.8,
        ),
    )
    model = CarrierModel(config, accounts, seed=os.getpid())
    # Digest only when every card has a password (otherwise the From user names the card).
    auth = 401 if cards and all(c.password is not None for c in cards) else None
    sim = Carrier(
        model,
        clock=ScaledClock(datetime.now(ZoneInfo(carrier.timezone)), speed=1.0),
        auth=auth,
        numbers={c.number: c.id for c in cards},
        host=carrier.address.ip,
        name=carrier.name,
        mask_callees=settings.policy.mask_numbers,
    )
    example = _dial_example(settings.policy.default_region)
    if example is not None:
        # The banner's number is the demo's callee: it answers at once, every time,
        # so the README's first call connects; any other number gets the model's mix.
        demo_callee = example[1]
        sim.plan = lambda req: ("answer",) if req.uri.user == demo_callee else None
    await sim.start(carrier.address.port)
    return sim


# ---------------------------------------------------------------------------
# The block printed when everything is up
# ---------------------------------------------------------------------------


def _dial_example(region: str) -> tuple[str, str] | None:
    import phonenumbers

    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    if example is None:
        return None
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    return "".join(ch for ch in national if ch.isdigit()), e164


@dataclass(slots=True)
class _Up:
    """What is running, for the summary and for shutdown."""

    config: Path | None
    sip: list[str] = field(default_factory=list)
    broker: str = ""
    mqtt_url: str = ""
    carriers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wallboard: str = ""
    admin: str | None = None


def summary_block(settings: Settings, up: _Up) -> str:
    """The text printed once everything listens (no secrets)."""
    sip = settings.sip
    first = up.sip[0] if up.sip else "127.0.0.1:5060"
    hostport = first.partition(":")[2]
    where = f"({up.config})" if up.config is not None else "(built-in defaults)"
    lines = ["", "dialgate is up", ""]
    lines.append(f"  SIP           {'  '.join(up.sip)}")
    if settings.users:
        agents = ", ".join(
            f"{u.name} (card {u.card})" if u.card else u.name for u in settings.users
        )
        lines.append(f"  agents        {agents}")
        lines.append(f'                realm "{sip.realm}"; password as in the config {where}')
        lines.append(
            f"  softphone     register sip:{settings.users[0].name}@{hostport} "
            f"(server {hostport}, UDP{' or TCP' if any('tcp' in s for s in up.sip) else ''})"
        )
    else:
        lines.append(f"  agents        none ([[users]] in the config {where})")
    policy = settings.policy
    example = _dial_example(policy.default_region)
    if example is not None:
        national, e164 = example
        lines.append(
            f"  dial          {national} (national, region {policy.default_region}) or {e164}"
        )
        if any("simulator" in line for line in up.carriers):
            lines.append("                the simulator carrier answers this number every time")
    lines.append(f"                calling hours {policy.calling_hours} (callee's local time)")
    for line in up.carriers:
        lines.append(f"  carrier       {line}")
    for note in up.notes:
        lines.append(f"  carrier       {note}")
    lines.append(f"  MQTT          {up.mqtt_url} ({up.broker})")
    lines.append(f"  wallboard     {up.wallboard}")
    if up.admin is not None:
        admin = up.admin.rstrip("/")
        lines.append(f"  admin API     {admin}/")
        lines.append(f"  metrics       {admin}/metrics")
    else:
        lines.append("  admin API     off ([admin] enabled = false)")
    lines += ["", "Ctrl-C to stop.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


@command(
    "up",
    help="run broker, simulated carrier, gateway and wallboard together (make run)",
    configure=_configure,
)
def cmd_up(args: argparse.Namespace) -> int:
    """Bring everything up, print where it is, run until SIGINT/SIGTERM."""
    settings = load_or_report(args)
    if settings is None:
        return EXIT_USAGE
    if args.no_broker and settings.mqtt is None:
        print(
            "dialgate up: --no-broker needs an [mqtt] table with the broker's url", file=sys.stderr
        )
        return EXIT_USAGE
    for option in ("mqtt_port", "wallboard_port"):
        value = getattr(args, option)
        if value is not None and not 0 <= value <= 65535:
            print(f"dialgate up: --{option.replace('_', '-')} must be 0..65535", file=sys.stderr)
            return EXIT_USAGE
    from gateway.telemetry.logging import configure_logging, get_logger

    configure_logging(settings.logging, mask_numbers=settings.policy.mask_numbers)
    log = get_logger("gateway.cli.main")
    try:
        return asyncio.run(_up(args, settings, log))
    except PortInUse as exc:
        print(f"dialgate up: {exc}", file=sys.stderr)
        print(f"  {_hint(exc.key, getattr(args, 'config', None))}", file=sys.stderr)
        return EXIT_FAILURE
    except StartError as exc:
        print(f"dialgate up: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # a signal before the loop installed its handlers
        return EXIT_FAILURE
    except Exception as exc:  # everything started was stopped on the way out
        log.exception("dialgate up failed")
        print(f"dialgate up: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _up(args: argparse.Namespace, settings: Settings, log: Any) -> int:
    from gateway.config import MqttSettings, ServiceUrl

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    installed: list[int] = []
    gateway_task: asyncio.Task[None] | None = None

    def on_signal(signum: int) -> None:
        if stop.is_set() and gateway_task is not None:
            log.warning("second signal, cancelling", signal=signal.Signals(signum).name)
            gateway_task.cancel()
        stop.set()

    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)

    # --- which ports, and are they free --------------------------------------------
    carrier_indexes, notes = ([], []) if args.no_carrier else _carriers_to_start(settings)
    if args.no_carrier and settings.carriers:
        notes = [f"{c.name}: not started (--no-carrier)" for c in settings.carriers]
    ports = [
        _Port(f"sip.listen[{i}]", spec.transport.value, spec.ip, spec.port)
        for i, spec in enumerate(settings.sip.listen)
    ]
    ports += [
        _Port(
            f"carriers[{i}].address",
            "udp",
            settings.carriers[i].address.ip,
            settings.carriers[i].address.port,
        )
        for i in carrier_indexes
    ]
    if settings.admin.enabled:
        ports.append(_Port("admin.listen", "tcp", settings.admin.host, settings.admin.port))
    mqtt_key = "--mqtt-port" if args.mqtt_port is not None else "mqtt.url"
    mqtt_port = args.mqtt_port
    if mqtt_port is None:
        mqtt_port = settings.mqtt.port if settings.mqtt is not None else DEFAULT_MQTT_PORT
    if not args.no_broker:
        ports.append(_Port(mqtt_key, "tcp", BROKER_HOST, mqtt_port))
    if args.wallboard_port:
        ports.append(_Port("--wallboard-port", "tcp", BROKER_HOST, args.wallboard_port))
    check_ports(ports)
    binary = None if args.no_broker else find_mosquitto()
    if not args.no_broker and binary is None:
        raise StartError(MOSQUITTO_MISSING)

    up = _Up(config=getattr(args, "config", None) or _default_config())
    up.notes = notes
    mosquitto: Mosquitto | None = None
    carriers: list[Any] = []
    wallboard: Any = None
    gateway_stop = asyncio.Event()
    try:
        # --- 1. broker --------------------------------------------------------------
        if args.no_broker:
            assert settings.mqtt is not None
            run_settings = settings
            up.broker = "not started: --no-broker"
        else:
            assert binary is not None
            if mqtt_port == 0:
                mqtt_port = free_tcp_port()
            run_dir = RUN_DIR / f"up-mqtt-{mqtt_port}"
            mosquitto = await start_mosquitto(binary, mqtt_port, run_dir)
            up.broker = f"mosquitto, pid {mosquitto.pid}, log {mosquitto.log_file}"
            url = ServiceUrl.parse(f"mqtt://{BROKER_HOST}:{mqtt_port}", schemes=("mqtt",))
            if settings.mqtt is None:
                mqtt = MqttSettings(url=url)
            else:
                # Our broker: plain MQTT on loopback, anonymous.
                mqtt = settings.mqtt.model_copy(
                    update={
                        "url": url,
                        "username": None,
                        "password": None,
                        "tls": False,
                        "ca_file": None,
                        "cert_file": None,
                        "key_file": None,
                    }
                )
            run_settings = settings.model_copy(update={"mqtt": mqtt})
        assert run_settings.mqtt is not None
        up.mqtt_url = str(run_settings.mqtt.url)

        # --- 2. carrier -------------------------------------------------------------
        for i in carrier_indexes:
            spec = settings.carriers[i]
            try:
                sim = await start_carrier(settings, i)
            except OSError as exc:
                raise PortInUse(
                    f"carriers[{i}].address", str(spec.address), exc.strerror or str(exc)
                ) from None
            carriers.append(sim)
            names = ", ".join(c.id for c in settings.cards if c.carrier == spec.name) or "no cards"
            up.carriers.append(f"{spec.name}: simulator on {sim.address_spec} ({names})")

        # --- 3. gateway -------------------------------------------------------------
        from gateway.app import serve
        from gateway.callpath.element import Gateway

        ready = asyncio.Event()
        started: list[Gateway] = []
        gateway_task = asyncio.ensure_future(
            serve(run_settings, ready=ready, stop=gateway_stop, on_ready=started.append)
        )
        await _first_of(ready.wait(), gateway_task)
        if gateway_task.done():
            if gateway_task.cancelled():
                return EXIT_FAILURE
            failure = gateway_task.exception()
            if isinstance(failure, OSError):
                raise PortInUse(
                    _key_for(failure, settings), _where(failure), failure.strerror or str(failure)
                )
            if failure is not None:
                raise failure
            return EXIT_OK
        gw = started[-1]
        up.sip = [str(a) for a in gw.addresses]
        up.admin = getattr(gw, "admin_url", None)
        if up.admin is None and settings.admin.enabled:
            up.admin = f"http://{settings.admin.listen}"

        # --- 4. wallboard -----------------------------------------------------------
        wallboard = await _start_wallboard(run_settings, args.wallboard_port, args.no_broker)
        up.wallboard = wallboard.http.url + "/"

        print(summary_block(settings, up), flush=True)
        log.info("up", wallboard=up.wallboard, mqtt=up.mqtt_url, sip=up.sip)
        await _first_of(stop.wait(), gateway_task)
        if gateway_task.done() and not gateway_task.cancelled() and gateway_task.exception():
            log.error("gateway failed", error=repr(gateway_task.exception()))
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        # Reverse order: wallboard, gateway, carriers, broker (last, by PID).
        if wallboard is not None:
            await wallboard.close()
        if gateway_task is not None:
            gateway_stop.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.wait({gateway_task})
            if not gateway_task.done():
                gateway_task.cancel()
                await asyncio.wait({gateway_task})
        for sim in reversed(carriers):
            await sim.close()
        if mosquitto is not None:
            await asyncio.to_thread(mosquitto.stop)
        for signum in installed:
            loop.remove_signal_handler(signum)
        log.info("stopped")


def _hint(key: str, config: Path | None) -> str:
    """What to do about a busy port named by ``key``."""
    if key in ("mqtt.url", "--mqtt-port"):
        return (
            "a broker already listens there? --no-broker uses it as it is; "
            "--mqtt-port N starts ours on another port"
        )
    if key.startswith("--"):
        return f"choose another {key}"
    return f"stop what uses it, or change {key} in {config or 'the configuration'}"


def _default_config() -> Path | None:
    from gateway.config import find_default_config

    return find_default_config()


async def _first_of(waiter: Coroutine[Any, Any, Any], task: asyncio.Task[Any]) -> None:
    """Wait until ``waiter`` finishes or ``task`` ends, whichever is first."""
    wait = asyncio.ensure_future(waiter)
    try:
        await asyncio.wait({wait, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wait.cancel()


def _key_for(exc: OSError, settings: Settings) -> str:
    """The setting whose port a gateway bind error is about."""
    port = _port_of(exc)
    for i, spec in enumerate(settings.sip.listen):
        if spec.port == port:
            return f"sip.listen[{i}]"
    if settings.admin.enabled and settings.admin.port == port:
        return "admin.listen"
    return "sip.listen or admin.listen"


def _where(exc: OSError) -> str:
    port = _port_of(exc)
    return f"port {port}" if port is not None else "a listener"


async def _start_wallboard(settings: Settings, port: int | None, external: bool) -> Any:
    from gateway.operator.wallboard.server import WallboardServer

    mqtt = settings.mqtt
    assert mqtt is not None
    username = password = None
    if external:
        user, secret = mqtt.credentials()
        username = user
        password = secret.get_secret_value() if secret is not None else None
    make: Callable[[int], Any] = lambda p: WallboardServer(  # noqa: E731
        mqtt.url,
        root=mqtt.root,
        host=BROKER_HOST,
        port=p,
        username=username,
        password=password,
        ca_file=str(mqtt.ca_file) if external and mqtt.ca_file is not None else None,
    )
    server = make(DEFAULT_WALLBOARD_PORT if port is None else port)
    try:
        await server.start()
    except OSError as exc:
        if port is not None:
            raise PortInUse(
                "--wallboard-port", f"tcp:{BROKER_HOST}:{port}", exc.strerror or str(exc)
            ) from None
        server = make(0)  # 8088 is taken: any free port
        await server.start()
    return server
