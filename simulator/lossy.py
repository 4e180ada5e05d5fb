"""A lossy UDP relay for the test kit: packet loss on loopback without the kernel's netem.

What this module is for: put a seeded, lossy hop between two SIP peers so
tests can check that calls complete through retransmissions (RFC 3261 §17
timers) and that no callee is dialled twice. :class:`LossyRelay` listens on a
loopback port and forwards every datagram to one ``target``; like a NAT it
opens one upstream socket per client address, so the target sees each client
as a distinct source and its answers (to the packet's source, RFC 3581 rport,
or to a request's Via when that names the relay) come back to that socket and
are forwarded to the client from the listening port. Each direction drops a
datagram with its own probability, drawn from its own ``random.Random(seed)``
stream, so a run is reproducible for a given packet order.

Usage (in a test, on the running loop)::

    relay = LossyRelay(("127.0.0.1", gateway_port), loss=0.05, seed=7)
    await relay.start()
    relay.address            # ("127.0.0.1", port): point the SIP peer here
    relay.stats.as_dict()    # forwarded/dropped each way
    relay.close()

or as a process: ``python -m simulator.lossy --target 127.0.0.1:5060 --loss 0.05``
(prints ``listening 127.0.0.1:PORT``; stop it by PID).

What it must never do: listen on or forward to anything but loopback (it is a
test tool, not a proxy), hold packets (no queue: a datagram is forwarded or
dropped on arrival, never delayed), or grow without bound (at most
``max_clients`` upstream sockets; the least recently used one is closed to make
room). It does not parse SIP: bytes in, the same bytes out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import random
import signal
from dataclasses import dataclass

__all__ = ["LossyRelay", "RelayStats", "main"]

Address = tuple[str, int]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class RelayStats:
    """Datagrams seen by the relay: ``up`` = client → target, ``down`` = target → client."""

    up_forwarded: int = 0
    up_dropped: int = 0
    down_forwarded: int = 0
    down_dropped: int = 0
    clients_evicted: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {
            "up_forwarded": self.up_forwarded,
            "up_dropped": self.up_dropped,
            "down_forwarded": self.down_forwarded,
            "down_dropped": self.down_dropped,
            "clients_evicted": self.clients_evicted,
        }


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.relay._from_client(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable on loopback: ignore
        pass


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay, client: Address) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if (str(addr[0]), int(addr[1])) == self.relay.target:  # only the target's answers
            self.relay._from_target(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass


class LossyRelay:
    """Forwards UDP ``listen`` → ``target`` and back, dropping ``loss`` of the datagrams each way.

    ``loss`` applies to both directions unless ``loss_down`` is given (target →
    client). ``seed`` seeds the two drop streams (``seed`` up, ``seed + 1`` down).
    """

    def __init__(
        self,
        target: Address,
        *,
        loss: float = 0.05,
        loss_down: float | None = None,
        seed: int = 0,
        listen: Address = ("127.0.0.1", 0),
        max_clients: int = 256,
    ) -> None:
        for host in (target[0], listen[0]):
            if not _loopback(host):
                raise ValueError(f"the lossy relay is loopback only, not {host!r}")
        down = loss if loss_down is None else loss_down
        for p in (loss, down):
            if not 0.0 <= p < 1.0:
                raise ValueError("loss must be in [0, 1)")
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self.target = target
        self.loss_up = loss
        self.loss_down = down
        self.listen = listen
        self.max_clients = max_clients
        self.stats = RelayStats()
        self._rng_up = random.Random(seed)
        self._rng_down = random.Random(seed + 1)
        self._listener: asyncio.DatagramTransport | None = None
        self._upstreams: collections.OrderedDict[Address, _Upstream] = collections.OrderedDict()
        self._opening: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> Address:
        """Where the relay listens (the address to give the client)."""
        if self._listener is None:
            raise RuntimeError("relay not started")
        host, port = self._listener.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    async def start(self) -> None:
        """Bind the listening socket."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=self.listen
        )
        self._listener = transport

    def close(self) -> None:
        """Close every socket (pending upstream opens are cancelled)."""
        for task in self._tasks:
            task.cancel()
        for up in self._upstreams.values():
            if up.transport is not None:
                up.transport.close()
        self._upstreams.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def __aenter__(self) -> LossyRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # --- forwarding --------------------------------------------------------------------

    def _from_client(self, data: bytes, client: Address) -> None:
        if self._rng_up.random() < self.loss_up:
            self.stats.up_dropped += 1
            return
        up = self._upstreams.get(client)
        if up is not None and up.transport is not None:
            self._upstreams.move_to_end(client)
            up.transport.sendto(data, self.target)
            self.stats.up_forwarded += 1
            return
        # First datagram from this client: open its upstream socket (the few that
        # arrive meanwhile are held only until it is bound, bounded below).
        pending = self._opening.get(client)
        if pending is not None:
            if len(pending) < 16:
                pending.append(data)
            else:
                self.stats.up_dropped += 1
            return
        self._opening[client] = [data]
        task = asyncio.get_running_loop().create_task(self._open(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, client: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), local_addr=("127.0.0.1", 0)
            )
        except OSError:
            self.stats.up_dropped += len(self._opening.pop(client, []))
            return
        proto.transport = transport
        self._upstreams[client] = proto
        while len(self._upstreams) > self.max_clients:
            _, old = self._upstreams.popitem(last=False)
            if old.transport is not None:
                old.transport.close()
            self.stats.clients_evicted += 1
        for data in self._opening.pop(client, []):
            transport.sendto(data, self.target)
            self.stats.up_forwarded += 1

    def _from_target(self, data: bytes, client: Address) -> None:
        if self._rng_down.random() < self.loss_down:
            self.stats.down_dropped += 1
            return
        if self._listener is None:
            return
        self._listener.sendto(data, client)
        self.stats.down_forwarded += 1


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


async def _serve(args: argparse.Namespace) -> None:
    relay = LossyRelay(
        _address(args.target),
        loss=args.loss,
        loss_down=args.loss_down,
        seed=args.seed,
        listen=_address(args.listen),
    )
    await relay.start()
    host, port = relay.address
    print(f"listening {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        relay.close()
        print(" ".join(f"{k}={v}" for k, v in relay.stats.as_dict().items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m simulator.lossy --target HOST:PORT [--listen HOST:PORT] [--loss P]``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator.lossy", description="A lossy UDP relay on loopback."
    )
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to (loopback)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on")
    parser.add_argument("--loss", type=float, default=0.05, help="drop probability each way")
    parser.add_argument("--loss-down", type=float, default=None, help="target → client only")
    parser.add_argument("--seed", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
