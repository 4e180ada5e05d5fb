"""Micro-benchmark of the SIP message core: parse, serialize, parse+serialize.

Prints microseconds per message (timeit, best of N repeats) for a typical INVITE
with SDP (~1 KB, 12 headers) and a 200 OK, plus full typed access, and the same
bytes through sipmessage (if installed) with the ratio. Run:

    .venv/bin/python bench/bench_sip.py [--number 20000] [--repeat 7] [--cpu]

``--cpu`` times with the thread's CPU clock instead of the wall clock (steadier
on a shared box). The first line says which SIP core ran: the mypyc-compiled
modules or the pure-Python ones (``DIALGATE_PURE_PYTHON=1`` forces the latter).

This script only measures; it asserts nothing and never touches the network.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

import gateway.sip
from gateway.sip import Request, parse

SDP = (
    b"v=0\r\n"
    b"o=dialgate 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=dialgate call\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 18 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:18 G729/8000\r\n"
    b"a=fmtp:18 annexb=no\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:+15551234567@carrier.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Call Center" <sip:agent7@gw.example.org>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@carrier.example.com;user=phone>\r\n"
    b"Call-ID: a84b4c76e66710@gw.example.org\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:agent7@192.0.2.10:5070;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    b"Supported: timer, 100rel, replaces\r\n"
    b"User-Agent: dialgate/0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds;rport=5070;received=198.51.100.7\r\n"
    b'From: "Call Center" <sip:agent7@gw.example.org>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@carrier.example.com;user=phone>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@gw.example.org\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:carrier@203.0.113.5>\r\n"
    b"Record-Route: <sip:p1.carrier.example.com;lr>, <sip:p2.carrier.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


TIMER: Callable[[], float] = time.perf_counter


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` time per call in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=TIMER)) / number * 1e6


def typed(data: bytes) -> None:
    """Parse and touch every typed view the gateway uses on each message."""
    msg = parse(data)
    _ = msg.via, msg.from_, msg.to, msg.call_id, msg.cseq, msg.contact, msg.content_length
    if isinstance(msg, Request):
        _ = msg.max_forwards


def main() -> None:
    """Run the benchmark and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cpu", action="store_true", help="thread CPU time instead of wall time")
    args = ap.parse_args()
    global TIMER
    if args.cpu:
        TIMER = time.thread_time
    build = getattr(gateway.sip, "build_name", lambda: "pure Python")()
    print(f"SIP core: {build}; {'thread CPU' if args.cpu else 'wall'} time")
    n, r = args.number, args.repeat
    try:
        import sipmessage
    except ImportError:
        sipmessage = None

    header = f"{'message':<8} {'bytes':>5} {'hdrs':>4} {'parse':>8} {'bytes()':>8} {'fresh':>8} {'p+s':>8} {'typed':>8}"
    if sipmessage is not None:
        header += f" {'sipmsg':>8} {'ratio':>6}"
    print(header + "   (µs per message)")
    for name, data in (("INVITE", INVITE), ("200 OK", OK)):
        msg = parse(data)
        edited = parse(data)
        edited.headers.set("Max-Forwards", "69")  # forces a fresh serialization
        row = (
            f"{name:<8} {len(data):>5} {len(msg.headers):>4}"
            f" {best_us(lambda d=data: parse(d), n, r):>8.2f}"
            f" {best_us(lambda m=msg: bytes(m), n, r):>8.2f}"
            f" {best_us(lambda m=edited: bytes(m), n, r):>8.2f}"
            f" {best_us(lambda d=data: bytes(parse(d)), n, r):>8.2f}"
            f" {best_us(lambda d=data: typed(d), n, r):>8.2f}"
        )
        if sipmessage is not None:
            ours = best_us(lambda d=data: parse(d), n, r)
            theirs = best_us(lambda d=data: sipmessage.Message.parse(d), n, r)
            row += f" {theirs:>8.2f} {theirs / ours:>5.1f}x"
        print(row)
    print(
        "parse = parse(); bytes() = unmodified (reuses original octets); fresh = after a header"
        " edit; p+s = bytes(parse()); typed = parse + Via/From/To/Call-ID/CSeq/Contact/..."
    )


if __name__ == "__main__":
    main()
