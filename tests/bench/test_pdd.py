"""bench/pdd.py: the post-dial delay the gateway adds, timed on the wire.

The analysis is checked on datagrams built here (retransmissions, a refused call, a
call without its challenge); the capture on a real ``lo`` with real UDP sockets
(root or CAP_NET_RAW only: skipped elsewhere).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from . import load_bench

pdd = load_bench("pdd")
GW, CARRIER, AGENT = 5060, 5070, 40000


def invite(call_id: str, cseq: int, origin: str, *, auth: bool = False) -> bytes:
    body = f"v=0\r\no={origin} 1 IN IP4 127.0.0.1\r\ns=-\r\n"
    lines = [
        "INVITE sip:+8613800000000@127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1",
        f"i: {call_id}",
        f"CSeq: {cseq} INVITE",
    ]
    if auth:
        lines.append('Proxy-Authorization: Digest username="a", realm="r"')
    lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def response(code: int, call_id: str, cseq: int, method: str = "INVITE") -> bytes:
    return (
        f"SIP/2.0 {code} X\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def D(t: float, sport: int, dport: int, data: bytes) -> object:
    return pdd.Datagram(t, sport, dport, data)


def test_delays_per_call_first_copies_and_refused_calls() -> None:
    grams = [
        # call a1: challenge 2 ms, forward 3 ms, carrier 50 ms, relay 1 ms
        D(1.000, AGENT, GW, invite("a1", 1, "agent 1")),
        D(1.002, GW, AGENT, response(407, "a1", 1)),
        D(1.010, AGENT, GW, invite("a1", 2, "agent 1", auth=True)),
        D(1.013, GW, CARRIER, invite("b1", 1, "agent 1")),
        D(1.020, AGENT, GW, invite("a1", 2, "agent 1", auth=True)),  # retransmission
        D(1.063, CARRIER, GW, response(200, "b1", 1)),
        D(1.064, GW, AGENT, response(200, "a1", 2)),
        D(1.070, CARRIER, GW, response(200, "b1", 1)),  # retransmission
        D(1.071, GW, AGENT, response(200, "a1", 2)),
        D(1.200, AGENT, GW, response(200, "a1", 3, "BYE")),  # not an INVITE's
        # call a2: refused (503), no B leg
        D(2.000, AGENT, GW, invite("a2", 1, "agent 2")),
        D(2.001, GW, AGENT, response(407, "a2", 1)),
        D(2.005, AGENT, GW, invite("a2", 2, "agent 2", auth=True)),
        D(2.009, GW, AGENT, response(503, "a2", 2)),
        # call a3: no challenge seen (credentials at once): challenge counts 0
        D(3.000, AGENT, GW, invite("a3", 1, "agent 3", auth=True)),
        D(3.004, GW, CARRIER, invite("b3", 1, "agent 3")),
        D(3.104, CARRIER, GW, response(200, "b3", 1)),
        D(3.110, GW, AGENT, response(200, "a3", 1)),
    ]
    out = pdd.delays(reversed(grams), {GW}, CARRIER)  # any order in
    assert out.a_calls == 3
    assert out.incomplete == 1
    assert out.challenge == pytest.approx([2.0])
    assert sorted(out.forward) == pytest.approx([3.0, 4.0])
    assert sorted(out.relay) == pytest.approx([1.0, 6.0])
    assert sorted(out.added) == pytest.approx([6.0, 10.0])
    summary = out.summary()
    assert summary["calls"] == 2
    assert summary["added"]["max_ms"] == pytest.approx(10.0)
    assert summary["forward"]["p50_ms"] == pytest.approx(3.0)
    # By quarter of the run (when the INVITE with credentials came): a1 first, a3 last.
    windows = summary["added_by_window"]
    assert [w["calls"] for w in windows] == [1, 0, 0, 1]
    assert windows[0]["p99_ms"] == pytest.approx(6.0)
    assert windows[3]["p99_ms"] == pytest.approx(10.0)


def test_a_leg_matched_to_its_b_leg_by_the_sdp_origin_not_by_order() -> None:
    grams = [
        D(1.000, AGENT, GW, invite("a1", 2, "agent 1", auth=True)),
        D(1.001, AGENT + 1, GW, invite("a2", 2, "agent 2", auth=True)),
        D(1.010, GW, CARRIER, invite("b2", 1, "agent 2")),  # a2 leaves first
        D(1.020, GW, CARRIER, invite("b1", 1, "agent 1")),
        D(1.030, CARRIER, GW, response(200, "b1", 1)),
        D(1.031, CARRIER, GW, response(200, "b2", 1)),
        D(1.040, GW, AGENT, response(200, "a1", 2)),
        D(1.050, GW, AGENT + 1, response(200, "a2", 2)),
    ]
    out = pdd.delays(grams, {GW}, CARRIER)
    assert sorted(out.forward) == pytest.approx([9.0, 20.0])
    assert sorted(out.relay) == pytest.approx([10.0, 19.0])


def test_compact_keeps_what_the_analysis_reads() -> None:
    for data in (
        invite("a1", 2, "agent 7", auth=True),
        invite("a1", 1, "agent 7"),
        response(407, "a1", 1),
        response(200, "b1", 1, "BYE"),
    ):
        small = pdd.compact(data)
        assert len(small) < len(data)
        assert pdd.fields(small) == pdd.fields(data)


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pdd.pct(values, 0.5) == 50.0
    assert pdd.pct(values, 0.99) == 99.0
    assert pdd.pct([7.0], 0.99) == 7.0
    assert pdd.pct([], 0.5) is None


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_capture_on_loopback_times_real_datagrams() -> None:
    try:
        sock = pdd.open_socket("lo")
    except PermissionError:
        pytest.skip("packet capture needs root or CAP_NET_RAW")
    agent, gw, carrier = _udp(), _udp(), _udp()
    gw_port, carrier_port = gw.getsockname()[1], carrier.getsockname()[1]
    stop = threading.Event()
    got: list[object] = []
    thread = threading.Thread(target=pdd.capture, args=(sock, {gw_port, carrier_port}, stop, got))
    thread.start()
    try:
        time.sleep(0.05)
        to_gw, to_carrier = ("127.0.0.1", gw_port), ("127.0.0.1", carrier_port)
        agent_addr = agent.getsockname()
        agent.sendto(invite("a1", 1, "agent 9"), to_gw)
        gw.sendto(response(407, "a1", 1), agent_addr)
        agent.sendto(invite("a1", 2, "agent 9", auth=True), to_gw)
        time.sleep(0.030)  # the "gateway" takes at least 30 ms to forward
        gw.sendto(invite("b1", 1, "agent 9"), to_carrier)
        carrier.sendto(response(200, "b1", 1), gw.getsockname())
        time.sleep(0.020)  # and at least 20 ms to relay the answer
        gw.sendto(response(200, "a1", 2), agent_addr)
        gw.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", agent_addr)  # not kept
        other = _udp()
        other.sendto(invite("zz", 1, "agent 0"), agent_addr)  # neither port: not kept
        deadline = time.monotonic() + 5
        while len(got) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        other.close()
    finally:
        stop.set()
        thread.join(5)
        sock.close()
        for s in (agent, gw, carrier):
            s.close()
    assert len(got) == 6, got  # each datagram once (not the outgoing copy too)
    out = pdd.delays(got, {gw_port}, carrier_port)
    assert out.incomplete == 0
    (forward,) = out.forward
    (relay,) = out.relay
    assert 30.0 <= forward < 1000.0
    assert 20.0 <= relay < 1000.0
    assert out.added[0] == pytest.approx(out.challenge[0] + forward + relay)
