"""CPU per call of the whole gateway, in one process, without SIPp or sockets.

The real :class:`gateway.callpath.element.Gateway` (every policy on, the cached database of
``bench/e2e.py``, the same configuration, JSON logging to /dev/null at INFO as
``dialgate run`` does) on a :class:`~gateway.transport.memory.MemoryTransport`;
scripted agents and a scripted carrier on memory transports play the SIPp
scenarios of ``bench/sipp`` (INVITE → 407 → ACK, INVITE with digest → 100 /
180 / 200, ACK, BYE → 200; the carrier answers 180 then 200 + SDP and the BYE).

Only the gateway's CPU is counted: the thread CPU time of the whole run minus
the time spent in the scripted peers (building their requests, computing the
digest, parsing and answering what reaches them), which is measured around
every peer step. Timers run on a short T1 (``--t1``, default 20 ms, so Timers
J/K/L/M end within the run) and the run waits for them, so their cost is in
the figure too. The figure is far steadier than the end-to-end run (no other
process shares the measurement), but it is not the same number: no socket
syscalls, no event-loop wake-ups per datagram.

    .venv/bin/python bench/callflow_cpu.py --calls 2000
    .venv/bin/python bench/callflow_cpu.py --calls 1000 --cprofile /tmp/flow.prof
    .venv/bin/python bench/callflow_cpu.py --calls 2000 --sibling   # as one of two workers
    .venv/bin/python bench/callflow_cpu.py --calls 2000 --day-calls 50000   # busy cards
    .venv/bin/python bench/callflow_cpu.py --calls 2000 --redis   # a node of a cluster

``--sibling`` runs the gateway's store as one worker of ``dialgate run --workers 2``
(``owner``/``siblings`` set as the supervisor sets them) beside a second connection to
the same file playing the other worker: before each of the gateway's store operations
that is not inside a transaction of its own, the sibling commits one change on cards
the gateway's agents do not use (a reservation or the finish of one, as its calls
would), so the gateway finds the file changed by another process at nearly every look,
as a worker does under load. The sibling's time is counted as the peers'.

``--redis`` runs the gateway as a node of a cluster: a private ``redis-server`` on a free
loopback port (``bench/e2e_workers.py``'s, stopped by PID) and ``[store] redis`` pointing
at it. Only this process's CPU is counted, so Redis's own work is not in the figure; the
waits for its answers are not CPU either (they are printed beside it).

Asserts nothing about speed; exits non-zero when calls fail.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # bench/ is not a package: found through sys.path above
import e2e_workers

from gateway import sip
from gateway.app import _tune_gc
from gateway.callpath.element import Gateway
from gateway.collector import CollectorPacer
from gateway.config import load_settings
from gateway.sip import Request, Response, make_response
from gateway.sip.digest import DigestClient
from gateway.telemetry.logging import configure_logging
from gateway.transport.memory import MemoryNetwork, MemoryTransport

HOST = "127.0.0.1"
GW = (HOST, 5060)
CARRIER = (HOST, 5070)
SDP_A = (
    b"v=0\r\no=agent 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP_C = SDP_A.replace(b"agent", b"carrier")


class PeerClock:
    """Thread CPU spent in the scripted peers (re-entrant: only the outermost step counts)."""

    def __init__(self) -> None:
        self.ns = 0
        self._depth = 0

    def __enter__(self) -> None:
        if self._depth == 0:
            self._t0 = time.thread_time_ns()
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.ns += time.thread_time_ns() - self._t0


class PeerTransport(MemoryTransport):
    """A scripted peer's memory transport: parsing what reaches the peer is the peer's
    time, not the gateway's (the peer clock runs around the whole delivery)."""

    def __init__(self, clock: PeerClock, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def inject(self, data: bytes, source: tuple[str, int]) -> None:
        with self.clock:
            super().inject(data, source)


class Sibling:
    """The other worker of ``--sibling``: a second store on the gateway's file that commits
    one change (a reservation, then its finish) before each look of the gateway's store."""

    def __init__(self, store: Any, cards: list[str], clock: PeerClock) -> None:
        from gateway.store import SQLiteStore

        store.owner, store.siblings = "w0", ("w1",)
        self.store = SQLiteStore(store.path, carrier_timezones=dict(store.carrier_timezones))
        self.store.owner, self.store.siblings = "w1", ("w0",)
        self.cards = cards
        self.clock = clock
        self.open: list[str] = []
        self.made = 0
        self.commits = 0
        gateway_store = store
        guarded = store._guarded

        def look_after_a_sibling_commit(*, write: bool) -> None:
            if not gateway_store._db.in_transaction:
                with self.clock:
                    self.step()
            guarded(write=write)

        store._guarded = look_after_a_sibling_commit

    def step(self) -> None:
        now = time.time()
        if len(self.open) < 4:
            call = f"sibling-{self.made}"
            card = self.cards[self.made % len(self.cards)]
            self.made += 1
            self.store.reserve(card, call, f"+8613{self.made % 10**9:09d}", now, agent="w1")
            self.open.append(call)
        else:
            self.store.finish(self.open.pop(0), now, answered=True, talk_seconds=1.0)
        self.commits += 1


class Agent:
    """One SIPp-like agent: registers once, then places calls one after another."""

    def __init__(self, net: MemoryNetwork, index: int, peer_clock: PeerClock) -> None:
        self.user = f"agent{index:03d}"
        self.password = f"pw{index:03d}"
        self.addr = (HOST, 6000 + index)
        self.tp = PeerTransport(peer_clock, self.on_message, self.addr, network=net)
        self.clock = peer_clock
        self.seq = 0
        self.call: dict[str, object] = {}
        self.done: Counter[str] = Counter()
        self.digest = DigestClient(self.user, self.password)

    def via(self) -> str:
        self.seq += 1
        return f"SIP/2.0/UDP {HOST}:{self.addr[1]};branch=z9hG4bK{self.user}-{self.seq}"

    def register(self) -> None:
        with self.clock:
            self._register(None)

    def _register(self, auth: tuple[str, str] | None) -> None:
        headers = [
            ("Via", self.via()),
            ("From", f"<sip:{self.user}@{HOST}>;tag=r{self.user}"),
            ("To", f"<sip:{self.user}@{HOST}>"),
            ("Call-ID", f"reg-{self.user}"),
            ("CSeq", f"{1 if auth is None else 2} REGISTER"),
            ("Contact", f"<sip:{self.user}@{HOST}:{self.addr[1]}>"),
            ("Expires", "3600"),
            ("Max-Forwards", "70"),
        ]
        if auth is not None:
            headers.append(auth)
        self.tp.send(Request("REGISTER", f"sip:{HOST}:{GW[1]}", headers), GW)

    def start_call(self, callee: str, n: int) -> None:
        with self.clock:
            call_id = f"{n}-{self.user}@bench"
            self.call = {"callee": callee, "call_id": call_id, "tag": f"t{n}", "state": "1"}
            self.tp.send(self._invite(None), GW)

    def _invite(self, auth: tuple[str, str] | None) -> Request:
        c = self.call
        ruri = f"sip:{c['callee']}@{HOST}:{GW[1]}"
        headers = [
            ("Via", self.via()),
            ("From", f"<sip:{self.user}@{HOST}>;tag={c['tag']}"),
            ("To", f"<{ruri}>"),
            ("Call-ID", str(c["call_id"])),
            ("CSeq", f"{1 if auth is None else 2} INVITE"),
            ("Contact", f"<sip:{self.user}@{HOST}:{self.addr[1]}>"),
        ]
        if auth is not None:
            headers.append(auth)
        headers += [
            ("Max-Forwards", "70"),
            ("X-Campaign", "bench"),
            ("Content-Type", "application/sdp"),
        ]
        return Request("INVITE", ruri, headers, SDP_A)

    def on_message(self, msg: Request | Response, source: object, tp: object) -> None:
        with self.clock:
            self._on_message(msg)

    def _on_message(self, msg: Request | Response) -> None:
        if not isinstance(msg, Response):
            return
        method = msg.cseq.method
        if method == "REGISTER":
            if msg.status == 401:
                self.digest.handle_challenge(401, msg.headers.get_all("WWW-Authenticate"))
                value = self.digest.authorization("REGISTER", f"sip:{HOST}:{GW[1]}")
                assert value is not None
                self._register(value)
            else:
                self.done[f"register-{msg.status}"] += 1
            return
        c = self.call
        if method == "INVITE" and msg.status == 407 and msg.cseq.seq == 1:
            ack = Request(
                "ACK",
                f"sip:{c['callee']}@{HOST}:{GW[1]}",
                [
                    ("Via", msg.headers.get("Via") or ""),
                    ("From", msg.headers.get("From") or ""),
                    ("To", msg.headers.get("To") or ""),
                    ("Call-ID", str(c["call_id"])),
                    ("CSeq", "1 ACK"),
                    ("Max-Forwards", "70"),
                ],
            )
            self.tp.send(ack, GW)
            self.digest = DigestClient(self.user, self.password)  # one per call, as SIPp
            self.digest.handle_challenge(407, msg.headers.get_all("Proxy-Authenticate"))
            ruri = f"sip:{c['callee']}@{HOST}:{GW[1]}"
            value = self.digest.authorization("INVITE", ruri)
            assert value is not None
            self.tp.send(self._invite(value), GW)
        elif method == "INVITE" and msg.status == 200 and c.get("state") == "1":
            c["state"] = "up"
            contact = msg.contact[0].uri
            routes = [("Route", str(r)) for r in msg.record_route]
            c["target"] = str(contact)
            c["routes"] = routes
            c["to"] = msg.headers.get("To") or ""
            self.tp.send(self._in_dialog("ACK", 2), GW)
        elif method == "INVITE" and msg.status >= 300:
            self.done[f"invite-{msg.status}"] += 1
            c["state"] = "failed"
        elif method == "BYE":
            self.done[f"bye-{msg.status}"] += 1
            c["state"] = "done"

    def _in_dialog(self, method: str, cseq: int) -> Request:
        c = self.call
        routes = c["routes"]
        assert isinstance(routes, list)
        headers = [
            ("Via", self.via()),
            ("From", f"<sip:{self.user}@{HOST}>;tag={c['tag']}"),
            ("To", str(c["to"])),
            *routes,
            ("Call-ID", str(c["call_id"])),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:{self.user}@{HOST}:{self.addr[1]}>"),
            ("Max-Forwards", "70"),
        ]
        return Request(method, str(c["target"]), headers)

    def hang_up(self) -> None:
        with self.clock:
            if self.call.get("state") == "up":
                self.tp.send(self._in_dialog("BYE", 3), GW)


class Carrier:
    """SIPp's carrier.xml: 180 then 200 + SDP for an INVITE; 200 for BYE and OPTIONS."""

    def __init__(self, net: MemoryNetwork, peer_clock: PeerClock) -> None:
        self.tp = PeerTransport(peer_clock, self.on_message, CARRIER, network=net)
        self.clock = peer_clock
        self.n = 0

    def on_message(self, msg: Request | Response, source: tuple[str, int], tp: object) -> None:
        with self.clock:
            self._on_message(msg, source)

    def _on_message(self, msg: Request | Response, source: tuple[str, int]) -> None:
        if not isinstance(msg, Request) or msg.method == "ACK":
            return
        if msg.method == "INVITE":
            self.n += 1
            tag = f"c{self.n}"
            extra = [("Record-Route", v) for v in msg.headers.get_all("Record-Route")]
            contact = ("Contact", f"<sip:carrier@{HOST}:{CARRIER[1]};transport=udp>")
            ringing = make_response(msg, 180, to_tag=tag, headers=[*extra, contact])
            self.tp.send(ringing, source)
            ok = make_response(
                msg,
                200,
                to_tag=tag,
                headers=[*extra, contact, ("Content-Type", "application/sdp")],
                body=SDP_C,
            )
            self.tp.send(ok, source)
        else:
            self.tp.send(
                make_response(msg, 200, to_tag="opt" if msg.method == "OPTIONS" else None), source
            )


def in_process_gateway(
    template: Path,
    workdir: Path,
    *,
    cards: int,
    t1: float,
    log_level: str,
    prepare: Callable[[Gateway], None] | None = None,
    day_calls: tuple[int, int] = (0, 0),
    redis_url: str | None = None,
) -> tuple[Gateway, MemoryNetwork, TextIO]:
    """The real gateway on the memory network: a copy of the bench database in ``workdir``,
    e2e's configuration with timers scaled to ``t1``, logs to /dev/null (the returned sink:
    close it); ``prepare(gateway)`` runs before the call path starts (bus subscribers);
    ``day_calls`` = (cards, calls): that many finished calls earlier today on each of the
    first cards (``e2e.prefill_day``); ``redis_url``: ``[store] redis``."""
    db = workdir / "gw.db"
    shutil.copyfile(template, db)
    if day_calls[1]:
        e2e.prefill_day(db, *day_calls)
    cfg = workdir / "gw.toml"
    text = e2e.gateway_toml(
        sip_port=GW[1], carrier_port=CARRIER[1], db=db, cards=cards, log_level=log_level
    )
    text = text.replace(
        'realm = "dialgate"',
        f'realm = "dialgate"\nt1 = {t1}\nt2 = {4 * t1}\nt4 = {t1}',
    )
    if redis_url is not None:
        text = e2e_workers.with_redis(text, redis_url)
    cfg.write_text(text)
    settings = load_settings(cfg)
    sink = open("/dev/null", "w")  # noqa: SIM115 - the caller closes it
    configure_logging(settings.logging, mask_numbers=settings.policy.mask_numbers, stream=sink)
    net = MemoryNetwork()
    gw = Gateway(settings)
    if prepare is not None:
        prepare(gw)
    gw.add_transport(MemoryTransport(gw.handle, GW, network=net))
    gw._start_call_path()
    return gw, net, sink


async def run(ns: argparse.Namespace) -> int:
    args = e2e.build_parser().parse_args(
        ["e2e", "--dnc", str(ns.dnc), "--consent", str(ns.consent), "--cards", str(ns.cards)]
    )
    template, _ = e2e.build_template(args)
    numbers = e2e.consent_numbers(ns.consent)
    workdir = Path(tempfile.mkdtemp(prefix="dialgate-callflow-"))
    redis_proc = None
    try:
        redis_url = None
        if ns.redis:
            redis_proc, port = e2e_workers.start_redis(workdir / "redis")
            redis_url = f"redis://{HOST}:{port}/0"
        gw, net, sink = in_process_gateway(
            template,
            workdir,
            cards=ns.cards,
            t1=ns.t1,
            log_level=ns.log_level,
            day_calls=(ns.callers, ns.day_calls),
            redis_url=redis_url,
        )
        peer_clock = PeerClock()
        sibling = None
        if ns.sibling:
            assert gw.store is not None
            spare = [f"c{i:03d}" for i in range(ns.callers, ns.cards)]
            sibling = Sibling(gw.store, spare, peer_clock)
        _carrier = Carrier(net, peer_clock)  # listens on the memory network
        agents = [Agent(net, i, peer_clock) for i in range(ns.callers)]
        for a in agents:
            a.register()
        net.flush()
        await asyncio.sleep(0.05)
        net.flush()

        pacing: asyncio.Future[None] | None = None
        if ns.gc in ("run", "auto"):
            _tune_gc()  # what serve() does for dialgate run: freeze start-up, raise thresholds
        if ns.gc == "run":  # and [server] gc = "paced", its default
            pacer = CollectorPacer(live=lambda: len(gw.endpoint.layer))
            pacing = asyncio.ensure_future(pacer.run())
        profiler = cProfile.Profile() if ns.cprofile else None
        cpu0 = time.thread_time_ns()
        peer0 = peer_clock.ns
        wall0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for n in range(0, ns.calls, len(agents)):
            batch = agents[: min(len(agents), ns.calls - n)]
            for i, a in enumerate(batch):
                a.start_call(numbers[(n + i) % len(numbers)], n + i)
            net.flush()
            await asyncio.sleep(0)
            net.flush()
            for a in batch:
                a.hang_up()
            net.flush()
            await asyncio.sleep(0)
            net.flush()
        # Let Timers J/K/L/M (64*T1) and the B2BUA's timers end every transaction.
        deadline = time.monotonic() + 80 * ns.t1 + 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            net.flush()
        if profiler is not None:
            profiler.disable()
        cpu = time.thread_time_ns() - cpu0
        if pacing is not None:
            pacing.cancel()
            await asyncio.gather(pacing, return_exceptions=True)
        peers = peer_clock.ns - peer0
        wall = time.perf_counter() - wall0
        outcomes: Counter[str] = Counter()
        for a in agents:
            outcomes.update(a.done)
        ok = outcomes.get("bye-200", 0)
        gw_ns = cpu - peers
        print(f"SIP core: {'native (mypyc)' if sip.NATIVE else 'pure Python'}; GC: {ns.gc}")
        print(
            f"calls {ns.calls}, callers {ns.callers}, outcomes {dict(outcomes)}; "
            f"transactions left {len(gw.endpoint.layer)}"
        )
        print(
            f"gateway CPU per call: {gw_ns / max(ok, 1) / 1e6:.3f} ms "
            f"(whole thread {cpu / 1e9:.2f} s, scripted peers {peers / 1e9:.2f} s, "
            f"wall {wall:.1f} s incl. {80 * ns.t1 + 1.0:.1f} s waiting for timers)"
        )
        print(f"gateway stats: {gw.stats.as_dict()}")
        if sibling is not None:
            store = gw.store
            assert store is not None
            print(
                f"sibling: {sibling.commits} commits; the gateway's counters: "
                f"{store.counters_rebuilt} rebuilt, {store.counters_caught_up} changes applied"
            )
            sibling.store.close()
        await gw.close(log_stats=False)
        sink.close()
        if profiler is not None:
            profiler.dump_stats(ns.cprofile)
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(ns.top)
            stats.sort_stats("tottime").print_stats(ns.top)
        return 0 if ok == ns.calls else 1
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--t1", type=float, default=0.02)
    parser.add_argument("--dnc", type=int, default=1_000_000)
    parser.add_argument("--consent", type=int, default=10_000)
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--day-calls",
        type=int,
        default=0,
        help="finished calls earlier today on each caller's card (a card met mid-shift)",
    )
    parser.add_argument(
        "--gc",
        choices=("default", "auto", "run"),
        default="default",
        help="run: the collection dialgate run does (gateway.app: freeze the start-up objects;"
        ' gateway/collector.py paces collections); auto: [server] gc = "auto" (thresholds'
        " GC_THRESHOLD); default: Python's (the figures before issue 17)",
    )
    parser.add_argument("--cprofile", help="profile the calls (not setup) and dump pstats here")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--sibling",
        action="store_true",
        help="the store as one of two workers, the other committing before each look",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="a node of a cluster: [store] redis on a private redis-server",
    )
    ns = parser.parse_args()
    sys.exit(asyncio.run(run(ns)))


if __name__ == "__main__":
    main()
