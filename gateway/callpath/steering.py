"""Calls spread over the workers by Call-ID, whatever socket the caller sends from.

``dialgate run --workers N`` binds the SIP listeners with ``SO_REUSEPORT``: the kernel
hands each UDP datagram to a worker by a hash of its source and destination addresses.
One phone is one source, so a predictive dialer (one socket, all the calls) lands on
one worker, and 16 agents split 6/10 as often as not (measured: at 500 calls/s one
worker refused 1,143 calls while the other had room). Steering makes the *call* the
unit instead: a call belongs to worker ``crc32(Call-ID) mod N``, its owner. With
``[server] worker_balance = "load"`` (the default) a new call goes to its owner only
while the worker that received it is busy and the owner clearly less so
(:meth:`Steering.worth_it`), and stays where it arrived otherwise (a hand-over costs
CPU); ``"call-id"`` sends every new call to its owner.

The worker the kernel chose (the receiver) still does what is about the source:
the ban and flood guard, the digest check and its password-guessing count (all of
one source's requests keep reaching one worker, so no count is split N ways). It
then hands the authenticated INVITE to the call's owner over a Unix socket (sequenced
packets) in a private directory the supervisor made (0700), with the source address and the
identity the digest check named. The owner takes it as received on its own socket of
the same shared port (every worker has one, ``SO_REUSEPORT``), so its answers leave
from the address the caller sent to (RFC 3581 symmetric response). Everything after
that reaches the owner on its own: in-dialog requests and answers follow its Contact
and Via (its private port, ``gateway.workers``). What a caller sends to the shared
port instead is handed over too:

- a retransmission of the INVITE (same Call-ID and branch) while it is remembered
  (:data:`REMEMBER`); the owner's transaction absorbs it;
- a request this worker has no transaction or dialog for — a CANCEL, the ACK of the
  final answer, a BYE or re-INVITE from a peer that ignores the Contact — when the
  Call-ID is another worker's (a call the receiver kept is found here first).

Only UDP on the shared listeners is steered (a TCP or TLS connection belongs to the
worker that accepted it, with all the calls on it). When a sibling cannot take a new
call (restarting, or too far behind) the receiver serves it itself; what continues a
sibling's call is then dropped, never answered here (the caller retransmits).

This module must never block (a sibling's full buffer makes hand-overs wait, up to a
bound), and never accept a hand-over from anything but a socket in its own directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import os
import socket
import struct
import time
import zlib
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway.callpath.auth import Identity, IdentityKind
from gateway.sip import Request, parse
from gateway.transport.base import Address

__all__ = ["REMEMBER", "Handover", "Steering", "owner_of"]

log = structlog.get_logger("gateway.callpath.steering")

REMEMBER = 64.0
"""Seconds a handed-over INVITE's branch is remembered: its retransmissions (Timer B,
64*T1 at the default T1) and a CANCEL of it follow it to its owner without a
second digest check (whose replay guard would challenge a retransmission)."""

MAX_REMEMBERED = 200_000
"""Branches remembered at most (300 calls/s for 64 s is under 20,000)."""

MAX_ENVELOPE = 65536 + 4096
"""A datagram (at most 64 KiB) with its envelope line."""

READ_BATCH = 32
"""Hand-overs read per wake-up at most."""

MAX_PENDING = 512
"""Hand-overs waiting for one sibling's socket at most; past it the receiver serves
a new call itself (and drops what continues a sibling's call: the caller retransmits)."""

MAGIC = b"DGSTEER1 "

_CONTINUES_INVITE = frozenset({"INVITE", "ACK", "CANCEL"})
"""The methods that can carry a handed-over INVITE's branch: its retransmissions, the
ACK of its non-2xx final answer, its CANCEL (RFC 3261 §9.1, §17.1.1.3)."""

LOAD_INTERVAL = 0.1
"""Seconds between samples of a worker's load (its CPU time per second of wall time)."""

BUSY = 0.5
"""With ``worker_balance = "load"``: a worker busier than this ..."""

MARGIN = 0.15
"""... and busier than the call's owner by this much hands a new call over; otherwise
it serves the call itself (no hand-over while the kernel's spread is good enough)."""


def owner_of(call_id: str, count: int) -> int:
    """The worker (0 … count-1) a call with this Call-ID belongs to: the same in every
    process (``zlib.crc32``, not Python's salted ``hash``)."""
    return zlib.crc32(call_id.encode("utf-8", "surrogateescape")) % count


class Handover:
    """One request a sibling handed over: what it received, from whom, on which listener."""

    __slots__ = ("identity", "listener", "request", "source")

    def __init__(
        self, request: Request, source: Address, listener: int, identity: Identity | None
    ) -> None:
        self.request = request
        self.source = source
        self.listener = listener
        self.identity = identity


@dataclass(eq=False)
class _Peer:
    """The connection to one sibling: hand-overs waiting while its socket buffer is full."""

    sock: socket.socket
    pending: deque[bytes] = field(default_factory=deque)


class Steering:
    """This worker's end of the hand-overs: a Unix ``SOCK_SEQPACKET`` listener at
    ``<directory>/w<i>.sock``, and one connection to each sibling it hands calls to.

    Sequenced packets keep each hand-over whole, count the buffer in bytes (a datagram
    socket's queue holds 10 messages, ``net.unix.max_dgram_qlen``, far too few for a
    burst) and tell the sender when the sibling has room again: a burst waits
    (:data:`MAX_PENDING`) instead of failing. ``on_handover`` gets each request a
    sibling handed over (called from the event loop). ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        index: int,
        count: int,
        directory: str | Path,
        on_handover: Callable[[Handover], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        always: bool = True,
    ) -> None:
        self.index = index
        self.count = count
        self.directory = Path(directory)
        self.on_handover = on_handover
        self.clock = clock
        #: Hand every new call to its Call-ID's worker ("call-id"), or only while this
        #: worker is busy and the owner less so ("load", :meth:`worth_it`).
        self.always = always
        self._loads: mmap.mmap | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbound: set[socket.socket] = set()
        self._peers: dict[int, _Peer] = {}
        # (Call-ID, branch) of INVITEs handed over → (owner, when).
        self._sent: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        #: handed_over, received, failed (no sibling, or too much waiting), lost (queued
        #: for a sibling that went away), bad (not a hand-over: dropped).
        self.stats: defaultdict[str, int] = defaultdict(int)

    def path(self, index: int) -> Path:
        return self.directory / f"w{index}.sock"

    def start(self) -> None:
        """Listen on this worker's socket (a predecessor's file is replaced)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            path = self.path(self.index)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
            self._loads = self._map_loads()
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept)
        self._load_task = asyncio.ensure_future(self._sample_load())

    def _map_loads(self) -> mmap.mmap:
        """The workers' loads, a double each, in a file of the directory every worker maps."""
        fd = os.open(self.directory / "loads", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = 8 * self.count
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            return mmap.mmap(fd, size)
        finally:
            os.close(fd)

    async def _sample_load(self) -> None:
        """Publish this worker's load every :data:`LOAD_INTERVAL`: CPU seconds per second."""
        wall, cpu = time.monotonic(), time.process_time()
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            now_wall, now_cpu = time.monotonic(), time.process_time()
            if now_wall > wall:
                self.publish_load((now_cpu - cpu) / (now_wall - wall))
            wall, cpu = now_wall, now_cpu

    def publish_load(self, load: float) -> None:
        if self._loads is not None:
            struct.pack_into("d", self._loads, 8 * self.index, load)

    def load(self, index: int) -> float:
        """Worker ``index``'s last published load (0.0 before its first)."""
        if self._loads is None:
            return 0.0
        return float(struct.unpack_from("d", self._loads, 8 * index)[0])

    def worth_it(self, owner: int) -> bool:
        """Whether a new call belonging to ``owner`` goes there: always ("call-id"), or
        ("load") while this worker is busy and the owner clearly less so."""
        if self.always:
            return True
        mine = self.load(self.index)
        return mine >= BUSY and mine - self.load(owner) >= MARGIN

    def close(self) -> None:
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        if self._load_task is not None:
            self._load_task.cancel()
            self._load_task = None
        if self._loads is not None:
            self.publish_load(0.0)
            self._loads.close()
            self._loads = None
        for sock in [listener, *self._inbound, *(p.sock for p in self._peers.values())]:
            self._forget(sock)
        self._inbound.clear()
        self._peers.clear()
        with contextlib.suppress(OSError):
            self.path(self.index).unlink()

    def _forget(self, sock: socket.socket) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            with contextlib.suppress(Exception):
                self._loop.remove_writer(sock.fileno())
        sock.close()

    # -- receiver side ------------------------------------------------------------

    def owner(self, request: Request) -> int:
        return owner_of(request.call_id, self.count)

    def remembered(self, request: Request) -> int | None:
        """The owner of the INVITE this request continues (its retransmission, its CANCEL,
        the ACK of its final answer: same Call-ID and branch), if handed over lately.
        Other methods never share an INVITE's branch: their Via is not looked at."""
        if not self._sent or request.method not in _CONTINUES_INVITE:
            return None
        try:
            key = (request.call_id, request.via[0].branch or "")
        except Exception:  # a malformed Via: not one we handed over
            return None
        entry = self._sent.get(key)
        return None if entry is None else entry[0]

    def hand_over(
        self,
        owner: int,
        request: Request,
        source: Address,
        listener: int,
        identity: Identity | None = None,
    ) -> bool:
        """Send ``request`` to worker ``owner``; False when it cannot go (no such sibling
        now, or too much already waiting for it)."""
        if self._listener is None or owner == self.index or not 0 <= owner < self.count:
            return False
        peer = self._peer(owner)
        if peer is None or len(peer.pending) >= MAX_PENDING:
            self.stats["failed"] += 1
            return False
        head: dict[str, object] = {"l": listener, "h": source[0], "p": source[1]}
        if identity is not None:
            head["i"] = [identity.kind.value, identity.name, identity.campaign, identity.card]
        data = MAGIC + json.dumps(head, separators=(",", ":")).encode() + b"\n" + bytes(request)
        if peer.pending:
            peer.pending.append(data)
        else:
            try:
                peer.sock.send(data)
            except BlockingIOError:
                peer.pending.append(data)
                assert self._loop is not None
                self._loop.add_writer(peer.sock.fileno(), self._writable, owner)
            except OSError as exc:
                self._drop_peer(owner, exc)
                self.stats["failed"] += 1
                return False
        self.stats["handed_over"] += 1
        if request.method == "INVITE" and request.to.tag is None:
            self._remember(request, owner)
        return True

    def _peer(self, owner: int) -> _Peer | None:
        peer = self._peers.get(owner)
        if peer is not None:
            return peer
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            sock.connect(str(self.path(owner)))
        except OSError as exc:  # not listening (starting, restarting) or its backlog full
            sock.close()
            log.debug("steering.connect_failed", owner=owner, error=repr(exc))
            return None
        peer = self._peers[owner] = _Peer(sock)
        assert self._loop is not None
        # A sibling never writes back on this connection: readable means it closed.
        self._loop.add_reader(sock.fileno(), self._drop_peer, owner, None)
        return peer

    def _writable(self, owner: int) -> None:
        peer = self._peers.get(owner)
        if peer is None:
            return
        while peer.pending:
            try:
                peer.sock.send(peer.pending[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop_peer(owner, exc)
                return
            peer.pending.popleft()
        assert self._loop is not None
        self._loop.remove_writer(peer.sock.fileno())

    def _drop_peer(self, owner: int, exc: BaseException | None) -> None:
        """The sibling went away (exited, restarting): its waiting hand-overs are lost (the
        callers retransmit: UDP), and the next hand-over connects anew."""
        peer = self._peers.pop(owner, None)
        if peer is None:
            return
        self.stats["lost"] += len(peer.pending)
        self._forget(peer.sock)
        log.info("steering.sibling_gone", owner=owner, error=None if exc is None else repr(exc))

    def _remember(self, request: Request, owner: int) -> None:
        now = self.clock()
        try:
            key = (request.call_id, request.via[0].branch or "")
        except Exception:
            return
        sent = self._sent
        sent[key] = (owner, now)
        sent.move_to_end(key)
        while sent:
            first = next(iter(sent.values()))
            if len(sent) <= MAX_REMEMBERED and now - first[1] <= REMEMBER:
                break
            sent.popitem(last=False)

    # -- owner side ---------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.info("steering.accept_failed", error=repr(exc))
                return
            conn.setblocking(False)
            self._inbound.add(conn)
            assert self._loop is not None
            self._loop.add_reader(conn.fileno(), self._readable, conn)

    def _readable(self, conn: socket.socket) -> None:
        for _ in range(READ_BATCH):
            if conn not in self._inbound:
                return
            try:
                data = conn.recv(MAX_ENVELOPE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.info("steering.read_failed", error=repr(exc))
                data = b""
            if not data:  # the sibling closed its end
                self._inbound.discard(conn)
                self._forget(conn)
                return
            handover = self._decode(data)
            if handover is None:
                self.stats["bad"] += 1
                continue
            self.stats["received"] += 1
            try:
                self.on_handover(handover)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("steering.handover_failed", method=handover.request.method)

    def _decode(self, data: bytes) -> Handover | None:
        if not data.startswith(MAGIC):
            return None
        line, sep, raw = data[len(MAGIC) :].partition(b"\n")
        if not sep:
            return None
        try:
            head = json.loads(line)
            source = (str(head["h"]), int(head["p"]))
            listener = int(head["l"])
            identity = None
            if head.get("i") is not None:
                kind, name, campaign, card = head["i"]
                identity = Identity(IdentityKind(kind), str(name), campaign, card)
            message = parse(raw)
        except Exception:
            return None
        if not isinstance(message, Request):
            return None
        return Handover(message, source, listener, identity)
