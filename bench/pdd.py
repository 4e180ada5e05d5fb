"""Post-dial delay added by the gateway, timed on the wire (a capture of the loopback).

SIPp's response times (``bench/e2e.py``'s rtd 1, INVITE→200) include the carrier's
answer and both SIPp processes' own scheduling: SIPp reads its sockets and stamps
times in steps of a few milliseconds, and at 300 calls/s the agents and the
carrier share the two cores with the gateway. This measures only the gateway's
part, from the kernel's timestamps of the datagrams on ``lo``
(``SO_TIMESTAMPNS`` on an ``AF_PACKET`` socket; needs root or CAP_NET_RAW):

* **challenge**: the agent's first INVITE → the gateway's 407;
* **forward**: the agent's INVITE with credentials → the B-leg INVITE to the carrier;
* **relay**: the carrier's 200 → the gateway's 200 to the agent;
* **added** = challenge + forward + relay: what the agent waits for that only the
  gateway causes. The carrier's time (B INVITE → its 200) and the agent's (407 →
  its second INVITE) are not in it.

A datagram is stamped when the sender hands it to ``lo``, so time spent waiting in
the gateway's socket buffer (queueing under load) is in the figure. The A and B legs
of a call are matched by the SDP offer's ``o=`` line, which the B2BUA copies and
``bench/sipp/agent.xml`` makes unique per call (``[pid]0[call_number]``). The first
copy of each message counts (a retransmission is not a new start). A call refused by
the gateway (no B leg, or no 200) is not in the percentiles; it is counted.

    python bench/pdd.py capture --gateway-port 5060 --carrier-port 5070 --out pdd.json
    (SIGTERM or SIGINT ends the capture and writes the summary)

``bench/e2e.py e2e --pdd`` runs it around each step. Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ETH_P_IP = 0x0800
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SOL_PACKET = getattr(socket, "SOL_PACKET", 263)  # linux/socket.h
PACKET_IGNORE_OUTGOING = 23  # linux/if_packet.h: loopback frames are seen once, not twice
POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram on the wire: kernel timestamp (s), ports, payload."""

    t: float
    sport: int
    dport: int
    data: bytes


def wanted(data: bytes) -> bool:
    """Only INVITE requests and responses are kept (the rest is never looked at)."""
    return data.startswith((b"INVITE ", b"SIP/2.0 "))


_KEPT = (b"call-id", b"i", b"cseq")
_CREDENTIALS = (b"proxy-authorization", b"authorization")


def compact(data: bytes) -> bytes:
    """``data`` with only what :func:`fields` reads: the start line, Call-ID, CSeq,
    whether credentials came, the SDP ``o=`` line (a run's capture stays ~150 bytes a
    datagram instead of a whole INVITE)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name in _KEPT:
            kept.append(line)
        elif name in _CREDENTIALS:
            kept.append(name + b": x")
    origin = next((line for line in body.split(b"\r\n") if line.startswith(b"o=")), b"")
    return b"\r\n".join(kept) + b"\r\n\r\n" + origin


def open_socket(interface: str = "lo") -> socket.socket:
    """A packet socket on ``interface`` delivering IPv4 with kernel timestamps."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    with contextlib.suppress(OSError):  # before Linux 4.20 outgoing copies are dropped below
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((interface, 0))
    sock.settimeout(POLL_S)
    return sock


def capture(
    sock: socket.socket, ports: set[int], stop: threading.Event, out: list[Datagram]
) -> int:
    """Append to ``out`` every wanted UDP datagram from or to one of ``ports`` until
    ``stop`` is set; return how many packets were read in all."""
    seen = 0
    while not stop.is_set():
        try:
            packet, ancillary, _flags, address = sock.recvmsg(65535, 64)
        except TimeoutError:
            continue
        seen += 1
        if address[2] == socket.PACKET_OUTGOING:
            continue
        if len(packet) < 28 or packet[9] != 17:  # not UDP
            continue
        ihl = (packet[0] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", packet, ihl)
        if sport not in ports and dport not in ports:
            continue
        data = packet[ihl + 8 :]
        if not wanted(data):
            continue
        data = compact(data)
        stamp = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                stamp = sec + nsec / 1e9
        out.append(Datagram(stamp, sport, dport, data))
    return seen


@dataclass(slots=True)
class _Fields:
    start: bytes
    call_id: str
    cseq_method: str
    credentials: bool
    origin: str


def fields(data: bytes) -> _Fields | None:
    """The start line, Call-ID, CSeq method, whether credentials are present and the SDP
    ``o=`` line of one message (None when it has no Call-ID or CSeq)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    call_id = cseq = ""
    credentials = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key in (b"call-id", b"i"):
            call_id = value.strip().decode("latin-1")
        elif key == b"cseq":
            cseq = value.strip().decode("latin-1").rpartition(" ")[2].upper()
        elif key in (b"proxy-authorization", b"authorization"):
            credentials = True
    if not call_id or not cseq:
        return None
    origin = ""
    for line in body.split(b"\r\n"):
        if line.startswith(b"o="):
            origin = line.decode("latin-1")
            break
    return _Fields(lines[0], call_id, cseq, credentials, origin)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class _ALeg:
    first_invite: float | None = None
    challenge: float | None = None
    invite: float | None = None
    origin: str = ""
    answer: float | None = None


@dataclass
class _BLeg:
    invite: float | None = None
    origin: str = ""
    answer: float | None = None


@dataclass
class Delays:
    """Per-call delays (ms) of the calls seen whole, and the calls that were not."""

    challenge: list[float] = field(default_factory=list)
    forward: list[float] = field(default_factory=list)
    relay: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    a_calls: int = 0
    incomplete: int = 0
    #: Per whole call: (time of the INVITE with credentials, challenge, forward, relay).
    calls: list[tuple[float, float, float, float]] = field(default_factory=list)

    def summary(self, windows: int = 4) -> dict[str, Any]:
        out: dict[str, Any] = {"calls": len(self.added), "a_calls": self.a_calls}
        out["incomplete"] = self.incomplete
        out["added_by_window"] = self.by_window(windows)
        for name in ("added", "challenge", "forward", "relay"):
            values = getattr(self, name)
            out[name] = {
                "p50_ms": _ms(pct(values, 0.5)),
                "p99_ms": _ms(pct(values, 0.99)),
                "max_ms": _ms(max(values) if values else None),
                "mean_ms": _ms(sum(values) / len(values) if values else None),
            }
        return out

    def by_window(self, windows: int) -> list[dict[str, Any]]:
        """The added delay's p50/p99 in ``windows`` equal slices of the run, by when the
        call's INVITE came: does the delay grow as calls linger in their timers?"""
        if not self.calls:
            return []
        ordered = sorted(self.calls)
        first, last = ordered[0][0], ordered[-1][0]
        span = max(last - first, 1e-9)
        slices: list[list[float]] = [[] for _ in range(windows)]
        for at, challenge, forward, relay in ordered:
            index = min(windows - 1, int((at - first) / span * windows))
            slices[index].append(challenge + forward + relay)
        return [
            {
                "from_s": round(i * span / windows, 1),
                "calls": len(values),
                "p50_ms": _ms(pct(values, 0.5)),
                "p99_ms": _ms(pct(values, 0.99)),
            }
            for i, values in enumerate(slices)
        ]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def delays(datagrams: Iterable[Datagram], gateway_ports: set[int], carrier_port: int) -> Delays:
    """The gateway's added delays per call, from the datagrams of a run (any order)."""
    a: dict[str, _ALeg] = {}
    b: dict[str, _BLeg] = {}
    for d in sorted(datagrams, key=lambda d: d.t):
        f = fields(d.data)
        if f is None or f.cseq_method != "INVITE":
            continue
        request = f.start.startswith(b"INVITE ")
        if request and d.dport in gateway_ports and d.sport != carrier_port:
            leg = a.setdefault(f.call_id, _ALeg())
            if not f.credentials and leg.first_invite is None:
                leg.first_invite = d.t
            elif f.credentials and leg.invite is None:
                leg.invite, leg.origin = d.t, f.origin
        elif request and d.dport == carrier_port:
            bleg = b.setdefault(f.call_id, _BLeg())
            if bleg.invite is None:
                bleg.invite, bleg.origin = d.t, f.origin
        elif not request:
            code = f.start[8:11]
            if d.sport in gateway_ports and d.dport != carrier_port:
                leg = a.setdefault(f.call_id, _ALeg())
                if code == b"407" and leg.challenge is None:
                    leg.challenge = d.t
                elif code == b"200" and leg.answer is None:
                    leg.answer = d.t
            elif d.sport == carrier_port and code == b"200":
                bleg = b.setdefault(f.call_id, _BLeg())
                if bleg.answer is None:
                    bleg.answer = d.t
    by_origin = {leg.origin: leg for leg in b.values() if leg.origin and leg.invite is not None}
    out = Delays()
    for leg in a.values():
        if leg.invite is None:
            continue
        out.a_calls += 1
        bleg = by_origin.get(leg.origin) if leg.origin else None
        if bleg is None or bleg.invite is None or bleg.answer is None or leg.answer is None:
            out.incomplete += 1
            continue
        forward = (bleg.invite - leg.invite) * 1000
        relay = (leg.answer - bleg.answer) * 1000
        challenge = 0.0
        if leg.first_invite is not None and leg.challenge is not None:
            challenge = (leg.challenge - leg.first_invite) * 1000
            out.challenge.append(challenge)
        out.forward.append(forward)
        out.relay.append(relay)
        out.added.append(challenge + forward + relay)
        out.calls.append((leg.invite, challenge, forward, relay))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("capture", help="capture until SIGTERM/SIGINT, then write the summary")
    c.add_argument("--gateway-port", type=int, action="append", required=True)
    c.add_argument("--carrier-port", type=int, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--seconds", type=float, default=900.0, help="stop by itself after this")
    c.add_argument("--interface", default="lo")
    args = parser.parse_args(argv)
    try:
        sock = open_socket(args.interface)
    except PermissionError as exc:
        print(f"pdd: no packet capture here ({exc}): needs root or CAP_NET_RAW", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    timer = threading.Timer(args.seconds, stop.set)
    timer.daemon = True
    timer.start()
    got: list[Datagram] = []
    print("ready", flush=True)
    began = time.process_time()
    seen = capture(sock, {*args.gateway_port, args.carrier_port}, stop, got)
    cpu = time.process_time() - began
    gateway_ports = set(args.gateway_port)
    summary = delays(got, gateway_ports, args.carrier_port).summary()
    summary["packets_read"] = seen
    summary["datagrams_kept"] = len(got)
    summary["capture_cpu_s"] = round(cpu, 2)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
