"""In-memory transports for unit tests of the layers above (httpcore's mock backend).

A :class:`MemoryNetwork` joins :class:`MemoryTransport` endpoints by address.
``send`` records the bytes and queues them; ``MemoryNetwork.flush()`` delivers
queued bytes, in order, through the *same* receive path the socket transports
use (parse, stateless error answers, Via stamping, counters). ``inject`` feeds
bytes as if received from an address. Nothing here touches a socket, a clock,
or an event loop, so tests are deterministic.

It must never be used by the running gateway.
"""

from __future__ import annotations

from collections import deque

from gateway.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Address,
    MessageHandler,
    Transport,
    TransportName,
    normalize_address,
)

__all__ = ["MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """A lossless, ordered, synchronous network of memory transports."""

    def __init__(self) -> None:
        self.endpoints: dict[Address, MemoryTransport] = {}
        self.queue: deque[tuple[bytes, Address, Address]] = deque()
        self.undeliverable: list[tuple[bytes, Address]] = []

    def flush(self, max_steps: int = 10_000) -> int:
        """Deliver queued datagrams until none is left; returns how many were delivered.

        ``max_steps`` bounds a ping-pong between two buggy layers.
        """
        delivered = 0
        while self.queue and delivered < max_steps:
            data, source, dest = self.queue.popleft()
            endpoint = self.endpoints.get(dest)
            if endpoint is None:
                self.undeliverable.append((data, dest))
                continue
            endpoint.inject(data, source)
            delivered += 1
        return delivered


class MemoryTransport(Transport):
    """A transport whose "socket" is a list of sent datagrams and a network queue."""

    def __init__(
        self,
        on_message: MessageHandler,
        local_address: Address = ("127.0.0.1", 5060),
        *,
        network: MemoryNetwork | None = None,
        name: TransportName = TransportName.UDP,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(on_message, max_message_size=max_message_size)
        self.name = name
        self.reliable = name is not TransportName.UDP
        self._local = normalize_address(local_address)
        self.network = network
        self.sent: list[tuple[bytes, Address]] = []
        self.closed = False
        self.fail_sends = False  # set True to simulate an OS error on send
        if network is not None:
            network.endpoints[self._local] = self

    @property
    def local_address(self) -> Address:
        return self._local

    def inject(self, data: bytes, source: Address) -> None:
        """Receive ``data`` from ``source`` as one datagram (or one stream frame)."""
        source = normalize_address(source)
        self._receive(data, source, lambda answer: self.send(answer, source), stream=self.reliable)

    def _send_bytes(self, data: bytes, addr: Address) -> bool:
        if self.closed or self.fail_sends:
            return False
        self.sent.append((data, addr))
        if self.network is not None:
            self.network.queue.append((data, self._local, addr))
        return True

    async def close(self) -> None:
        self.closed = True
        if self.network is not None and self.network.endpoints.get(self._local) is self:
            del self.network.endpoints[self._local]
