"""SIPp agent and carrier, a forger on another port in between (issue 15 item 2).

SIPp places one call (digest, 2 s long) through the gateway to a SIPp carrier.
While it is up, a plain UDP socket on another port sends a BYE with the A-leg's
dialog (as if it were the agent) and one with the B-leg's (as if it were the
carrier): both get 403, and the call goes on — both SIPp scenarios complete
with their own BYE, which they could not if a forged BYE had ended the call.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

from gateway.callpath.element import Gateway
from gateway.sip import Response, parse
from simulator.pytest_plugin import sipp_binary
from simulator.testkit import free_udp_port, start_sipp, stat_row, stop_pid
from tests.callpath.conftest import Agent, gateway_settings
from tests.callpath.test_sipp_calls import SIPP_DIR


def _forged_bye(gw: tuple[str, int], me: int, call_id: str, from_tag: str, to_tag: str) -> bytes:
    return (
        f"BYE sip:x@{gw[0]}:{gw[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKforged{to_tag[:6]};rport\r\n"
        f"From: <sip:x@127.0.0.1>;tag={from_tag}\r\n"
        f"To: <sip:y@127.0.0.1>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 99 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_forged_byes_from_another_port_do_not_end_a_sipp_call(tmp_path: Path) -> None:
    """Two forged BYEs (agent side, carrier side) → 403 each; SIPp's call completes normally."""
    sipp = sipp_binary()
    carrier_port = free_udp_port()
    carrier_dir, agent_dir = tmp_path / "carrier", tmp_path / "agent"
    carrier_dir.mkdir()
    agent_dir.mkdir()
    common = ["-buff_size", "1048576", "-timeout", "30s", "-nostdin", "-trace_stat"]
    carrier = start_sipp(
        [
            sipp,
            "-sf",
            str(SIPP_DIR / "carrier_uas.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(carrier_port),
            "-m",
            "1",
            *common,
            "-stf",
            str(carrier_dir / "stat.csv"),
        ],
        carrier_dir,
    )
    gw = Gateway(gateway_settings(("127.0.0.1", carrier_port), tmp_path / "gw.db"))
    agent: subprocess.Popen[bytes] | None = None
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await gw.start()
        target = gw.address("udp")
        alice = Agent("alice", "s3cret", target)
        await alice.start()
        try:
            assert 200 == (await alice.register()).status
        finally:
            await alice.close()
        numbers = agent_dir / "numbers.csv"
        numbers.write_text("SEQUENTIAL\n13910000001;\n")
        agent = start_sipp(
            [
                sipp,
                f"{target[0]}:{target[1]}",
                "-sf",
                str(SIPP_DIR / "agent_call_hold.xml"),
                "-inf",
                str(numbers),
                "-m",
                "1",
                "-d",
                "2000",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_udp_port()),
                "-default_behaviors",
                "all,-abortunexp",
                *common,
                "-stf",
                str(agent_dir / "stat.csv"),
            ],
            agent_dir,
        )
        b2bua = gw.b2bua
        assert b2bua is not None
        deadline = time.monotonic() + 10
        while not any(c.answered for c in b2bua.calls.values()):
            assert time.monotonic() < deadline, "the SIPp call was not answered"
            await asyncio.sleep(0.05)
        [call] = list(b2bua.calls.values())
        assert call.a.dialog is not None and call.b is not None and call.b.dialog is not None
        forger.bind(("127.0.0.1", 0))
        forger.settimeout(3)
        me = forger.getsockname()[1]
        byes = [
            _forged_bye(
                target, me, call.a.call_id, call.a.dialog.remote_tag or "", call.a.local_tag
            ),
            _forged_bye(
                target, me, call.b.call_id, call.b.dialog.remote_tag or "", call.b.local_tag
            ),
        ]
        for bye in byes:
            forger.sendto(bye, target)
            answer = parse(await asyncio.to_thread(forger.recv, 65535))
            assert isinstance(answer, Response)
            assert 403 == answer.status
        assert call.answered and not call.ended
        started = time.monotonic()
        while agent.poll() is None or carrier.poll() is None:
            assert time.monotonic() - started < 30
            await asyncio.sleep(0.1)
        a, c = stat_row(agent_dir / "stat.csv"), stat_row(carrier_dir / "stat.csv")
        assert ("1", "0") == (a["SuccessfulCall(C)"], a["FailedCall(C)"])
        assert ("1", "0") == (c["SuccessfulCall(C)"], c["FailedCall(C)"])
        assert 2 == gw.snapshot()["gateway"]["in_dialog_refused"]
        store = gw.store
        assert store is not None
        [cdr] = store.cdrs()
        assert "answered" == str(cdr.outcome)
        assert cdr.end_at is not None and cdr.answer_at is not None
        assert cdr.end_at - cdr.answer_at >= 1.5  # ended by SIPp's BYE, not the forged one
    finally:
        forger.close()
        if agent is not None:
            stop_pid(agent)
        stop_pid(carrier)
        await gw.close()
