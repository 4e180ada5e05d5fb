"""kill -9 of ``dialgate run`` at every point of a call, in a loop (issue 19, write-ahead B-legs).

SIPp agent → ``dialgate run`` → SIPp carrier (``carrier_late.xml``: 1.2 s
silent after the INVITE, 1.2 s ringing, then a 200 retransmitted until ACKed).
Each cycle places one call and SIGKILLs the gateway at one point of it:

* ``reserved``  — the gateway logged ``call.attempt`` (a DEBUG line: reserved,
  not committed; the write-ahead row, the one commit of both and the INVITE
  follow in the same step, so the kill lands before that commit, between commit
  and INVITE, or after the INVITE left: each is checked, see :func:`never_sent`);
* ``invite``    — the carrier holds the INVITE, unanswered;
* ``ringing``   — the carrier sent its 180;
* ``answered``  — the carrier got the ACK of its 200;
* ``bye``       — the carrier got the BYE the agent's hang-up became.

A new gateway on the same store (and ports) then serves the next cycle. After
each restart the test checks, with deadlines: the carrier saw the call ended
(a CANCEL for the stored INVITE, and ACK + BYE for the 200 it sends later, or
a BYE in the answered dialog), the agent got a final 500 (never answered) or
a BYE (answered), exactly one CDR for the call (``interrupted``, or its real
outcome when it had ended), and the card's calls in progress back to 0.

Cycles run in rounds over every point in random order, until 5 rounds or 45 s (a
cycle takes ~3 s: about 60 s in all);
at least one full round must fit.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.store import SQLiteStore
from simulator.testkit import Message, SippCarrier, free_udp_port, parse_trace, wait_until
from tests.policy_sipp.conftest import (
    SIPP_DIR,
    DialgateProcess,
    admin_get,
    admin_url,
    cli_json,
    finish_agent,
    gateway_toml,
    register_alice,
    start_agent,
    start_carrier,
    start_dialgate,
)
from tests.redis.conftest import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POINTS = ("reserved", "invite", "ringing", "answered", "bye")
ROUNDS = 5
BUDGET = 45.0  # seconds of cycles (one started within it finishes: ~60 s in all)
QUOTA = {"calls_per_minute": 1000, "concurrent": 1}
SIP_EXTRA = "t1 = 0.1\n"  # 64*T1 = 6.4 s: a CANCEL nobody answers ends in time


def of_call(messages: list[Message], call_id: str) -> list[Message]:
    return [m for m in messages if (m.header("Call-ID") or m.header("i")) == call_id]


def requests(messages: list[Message], direction: str, method: str) -> list[Message]:
    return [m for m in messages if m.direction == direction and m.method == method]


def b_call_id(messages: list[Message], callee: str) -> str | None:
    """Call-ID of the B-leg INVITE the carrier received for ``callee``."""
    for m in requests(messages, "received", "INVITE"):
        if f"sip:+86{callee}@" in m.first_line:
            return m.header("Call-ID")
    return None


def kill_9(gw: DialgateProcess) -> None:
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    assert -signal.SIGKILL == gw.proc.returncode


def cdrs(db: Path, call_id: str) -> list[tuple[str, int, float | None]]:
    with SQLiteStore(db) as store:
        return [(str(c.outcome), c.final_code, c.answer_at) for c in store.cdrs(call_id=call_id)]


def starts(db: Path, callee: str) -> list[str]:
    """The statuses of the SQLite store's counted starts for ``callee``."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT status FROM call_starts WHERE callee=?", (callee,))
        return [str(status) for (status,) in rows]
    finally:
        con.close()


@dataclass
class Rig:
    """What every cycle shares: the carrier, the config, the store, the ports, the gateway."""

    tmp: Path
    carrier: SippCarrier
    config: str
    port: int
    gw: DialgateProcess
    processes: list[Any]
    template: str
    store_extra: str = ""

    @property
    def db(self) -> Path:
        return self.tmp / "dialgate.db"


def cycle(rig: Rig, number: int, point: str) -> None:
    """One call, SIGKILL at ``point``, restart (``rig.gw`` is the new process), checks."""
    carrier = rig.carrier
    work = rig.tmp / f"c{number:02d}-{point}"
    work.mkdir()
    callee = f"1391234{number:04d}"
    scenario = work / "agent_kill.xml"
    hold = 300 if point == "bye" else 15000
    scenario.write_text(rig.template.replace("HOLD_MS", str(hold)))
    agent = start_agent(str(scenario), rig.gw.addresses["udp"], work / "agent", [callee])
    rig.processes.append(agent)

    def at_carrier(direction: str, method: str, after: int = 0) -> list[Message]:
        messages = carrier.messages()
        bid = b_call_id(messages, callee)
        if bid is None:
            return []
        return requests(of_call(messages[after:], bid), direction, method)

    def rang() -> bool:
        messages = carrier.messages()
        bid = b_call_id(messages, callee)
        return bid is not None and any(m.status == 180 for m in of_call(messages, bid))

    gw = rig.gw
    attempts = len(gw.events("call.attempt"))
    if point == "reserved":
        wait_until(lambda: len(gw.events("call.attempt")) > attempts, 10, "call.attempt")
    elif point == "invite":
        wait_until(lambda: at_carrier("received", "INVITE"), 10, "INVITE at the carrier")
    elif point == "ringing":
        wait_until(rang, 10, "180 from the carrier")
    elif point == "answered":
        wait_until(lambda: at_carrier("received", "ACK"), 10, "ACK at the carrier")
    else:
        wait_until(lambda: at_carrier("received", "BYE"), 15, "BYE at the carrier")
    kill_9(gw)
    after_kill = len(carrier.messages())
    # The same ports: the carrier's retransmissions and the agent find the new process.
    gw = rig.gw = start_dialgate(
        rig.tmp,
        rig.config,
        sip_extra=SIP_EXTRA,
        port=rig.port,
        store_extra=rig.store_extra,
        log_level="debug",
    )
    rig.processes.append(gw)
    url = admin_url(gw)
    bid = b_call_id(carrier.messages(), callee)
    print(f"cycle {number} {point}: B-leg {bid}")
    unanswered = point in ("reserved", "invite", "ringing")
    if point == "reserved" and bid is None:
        never_sent(rig, gw, url, agent, work, callee)
        return
    if unanswered:
        # The stored INVITE is CANCELled; the 200 the carrier sends later (or
        # retransmits, never ACKed) is ACKed and hung up by the new process.
        for method in ("CANCEL", "ACK", "BYE"):
            wait_until(
                lambda m=method: at_carrier("received", m, after_kill),  # type: ignore[misc]
                12,
                f"{method} at the carrier ({point})",
            )
        # RFC 3261 §9.1: the CANCEL repeats the INVITE's branch and CSeq number.
        cancel = at_carrier("received", "CANCEL")[0]
        invite = at_carrier("received", "INVITE")[0]  # its retransmissions: same branch
        assert _branch(invite) == _branch(cancel)
        assert (invite.header("CSeq") or "").split()[0] == (cancel.header("CSeq") or "").split()[0]
    elif point == "answered":
        wait_until(lambda: at_carrier("received", "BYE", after_kill), 12, "BYE at the carrier")
    else:
        assert at_carrier("received", "BYE")
    result = finish_agent(agent, work / "agent", bound=15)
    [a_invite, *_] = requests(result.messages, "sent", "INVITE")
    a_call_id = str(a_invite.header("Call-ID"))
    if unanswered:
        assert [500] == [m.status for m in result.finals()], point
    elif point == "answered":
        assert requests(result.messages, "received", "BYE"), "the agent's leg got no BYE"
    # Exactly one CDR per call: interrupted, or its real end when it had ended.
    wait_until(lambda: cdrs(rig.db, a_call_id), 10, f"CDR of {a_call_id}")
    time.sleep(0.2)  # a second CDR would come from the same restart pass
    [(outcome, code, answer_at)] = cdrs(rig.db, a_call_id)
    if point == "bye":
        assert outcome in ("answered", "interrupted"), outcome
    else:
        assert "interrupted" == outcome, (point, outcome)
        assert (answer_at is not None) == (point == "answered"), point
        assert (500 if unanswered else 200) == code
    wait_until(lambda: 0 == int(admin_get(f"{url}/cards/c1")["in_use"]), 5, "c1 in use back to 0")


def never_sent(
    rig: Rig, gw: DialgateProcess, url: str, agent: Any, work: Path, callee: str
) -> None:
    """The kill landed between the reservation and the INVITE's departure (the log line
    the test waits for comes before the write-ahead commit). Either the row was
    committed: the restart answers the agent 500, CANCELs the INVITE (which the
    carrier never saw) and writes the CDR; or it was not: nothing of this call left
    the gateway, nothing can be ended, no CDR exists, and no start is counted (the
    reservation and the row are one commit: neither is in the store)."""
    trace = work / "agent" / "messages.log"
    wait_until(lambda: requests(parse_trace(trace), "sent", "INVITE"), 5, "the agent's INVITE")
    a_call_id = str(requests(parse_trace(trace), "sent", "INVITE")[0].header("Call-ID"))
    # A stored row's CDR is written as soon as its CANCEL left (the carrier, which
    # never saw the INVITE, may leave the CANCEL unanswered for 64*T1).
    deadline = time.monotonic() + 3
    while not cdrs(rig.db, a_call_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    if cdrs(rig.db, a_call_id):
        result = finish_agent(agent, work / "agent", bound=15)
        assert [500] == [m.status for m in result.finals()]
        assert any(
            f"sip:+86{callee}@" in m.first_line
            for m in requests(rig.carrier.messages(), "received", "CANCEL")
        ), "no CANCEL for the stored INVITE"
        time.sleep(0.2)
        assert [("interrupted", 500, None)] == cdrs(rig.db, a_call_id)
        print("  killed after the write-ahead, before the INVITE left")
    else:
        finish_agent(agent, work / "agent", bound=0)  # no answer will come: stopped
        assert [] == cdrs(rig.db, a_call_id)
        assert [] == starts(rig.db, f"+86{callee}")
        print("  killed before the write-ahead commit: nothing sent, no CDR")
    wait_until(lambda: 0 == int(admin_get(f"{url}/cards/c1")["in_use"]), 5, "c1 in use back to 0")


def _branch(message: Message) -> str:
    return (message.header("Via") or "").split(";branch=")[1].split(";")[0]


@pytest.fixture(params=["sqlite", "redis"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None (SQLite only), or the URL of a redis-server of the test's own (quotas in
    Redis; the stored calls stay in the instance's SQLite file: they are not shared)."""
    if request.param == "sqlite":
        yield None
        return
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_kill_9_at_every_point_of_a_call_ends_both_legs_once(
    tmp_path: Path, processes: list[Any], redis_url: str | None
) -> None:
    """SQLite: rounds until 45 s; Redis: one round (every point once)."""
    carrier = start_carrier(
        tmp_path / "carrier",
        timeout=150,
        scenario=SIPP_DIR / "carrier_late.xml",
        extra=["-default_behaviors", "all,-abortunexp"],
    )
    processes.append(carrier)
    config = gateway_toml(carrier.port, quota=QUOTA, cards=1)
    store_extra = "" if redis_url is None else f'redis = "{redis_url}"\n'
    # One port for every process: with Redis, the node's name (which reservations a
    # restart orphans) is made of its listeners.
    gw = start_dialgate(
        tmp_path,
        config,
        sip_extra=SIP_EXTRA,
        store_extra=store_extra,
        port=free_udp_port(),
        log_level="debug",  # the "reserved" point waits for the DEBUG line call.attempt
    )
    processes.append(gw)
    # Once: registrations survive a restart (a new one per cycle would fill alice's
    # contact limit).
    register_alice(gw.addresses["udp"], tmp_path / "register")
    rig = Rig(
        tmp_path,
        carrier,
        config,
        gw.addresses["udp"][1],
        gw,
        processes,
        (SIPP_DIR / "agent_kill.xml.in").read_text(),
        store_extra,
    )
    rng = random.Random(int(time.time()))
    started = time.monotonic()
    done: list[str] = []
    for _round in range(ROUNDS if redis_url is None else 1):
        if time.monotonic() - started > BUDGET:
            break
        for point in rng.sample(POINTS, len(POINTS)):
            cycle(rig, len(done) + 1, point)
            done.append(point)
    print(f"{len(done)} kill cycles in {time.monotonic() - started:.1f} s: {done}")
    assert set(POINTS) <= set(done[: len(POINTS)]), done
    assert 0 == int(cli_json(rig.gw.config, "cards", "show", "c1")["in_use"])
    # Every orphan row was ended and deleted.
    with SQLiteStore(rig.db) as store:
        wait_until(lambda: not store.call_dialogs(), 10, "no stored call left")
