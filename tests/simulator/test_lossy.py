"""simulator.lossy: the lossy UDP relay of the test kit (loopback only, seeded, bounded)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from simulator.lossy import LossyRelay, main


class _Echo(asyncio.DatagramProtocol):
    """A target that answers every datagram with b"echo:" + it, and notes the sources."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append((addr[0], addr[1]))
        assert self.transport is not None
        self.transport.sendto(b"echo:" + data, addr)


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, (addr[0], addr[1])))


async def _echo() -> tuple[asyncio.DatagramTransport, _Echo]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))


async def _client() -> tuple[asyncio.DatagramTransport, _Client]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))


async def _settle(predicate: object, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate() and asyncio.get_running_loop().time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


def test_loopback_only_and_sane_parameters() -> None:
    """Anything but loopback, a loss outside [0, 1) or no room for a client is refused."""
    with pytest.raises(ValueError, match="loopback"):
        LossyRelay(("10.0.0.1", 5060))
    with pytest.raises(ValueError, match="loopback"):
        LossyRelay(("127.0.0.1", 5060), listen=("0.0.0.0", 0))
    with pytest.raises(ValueError, match="loopback"):
        LossyRelay(("carrier.example", 5060))
    for loss in (-0.1, 1.0):
        with pytest.raises(ValueError):
            LossyRelay(("127.0.0.1", 5060), loss=loss)
    with pytest.raises(ValueError):
        LossyRelay(("127.0.0.1", 5060), loss_down=1.5)
    with pytest.raises(ValueError):
        LossyRelay(("127.0.0.1", 5060), max_clients=0)
    LossyRelay(("::1", 5060), listen=("::1", 0))  # IPv6 loopback is fine


async def test_forwards_both_ways_and_answers_come_from_the_listening_port() -> None:
    """No loss: every datagram reaches the target and its answer reaches the client, which sees
    it come from the relay's address (transparent for answers to the source, RFC 3581)."""
    target, echo = await _echo()
    client, got = await _client()
    try:
        async with LossyRelay(target.get_extra_info("sockname")[:2], loss=0.0) as relay:
            for i in range(20):
                client.sendto(f"m{i}".encode(), relay.address)
            await _settle(lambda: len(got.received) == 20)
            assert [f"echo:m{i}".encode() for i in range(20)] == [d for d, _ in got.received]
            assert {relay.address} == {a for _, a in got.received}
            assert 1 == len(set(echo.sources))  # one upstream socket for this client
            assert relay.address not in echo.sources
            assert {
                "up_forwarded": 20,
                "up_dropped": 0,
                "down_forwarded": 20,
                "down_dropped": 0,
                "clients_evicted": 0,
            } == relay.stats.as_dict()
    finally:
        client.close()
        target.close()


async def test_loss_is_seeded_and_applied_each_way() -> None:
    """Same seed, same datagram order: the same drops; about `loss` of them each way."""

    async def run(seed: int) -> dict[str, int]:
        target, _ = await _echo()
        client, got = await _client()
        try:
            async with LossyRelay(
                target.get_extra_info("sockname")[:2], loss=0.2, seed=seed
            ) as relay:
                for i in range(500):
                    client.sendto(f"m{i}".encode(), relay.address)
                    if i % 50 == 0:
                        await asyncio.sleep(0.005)
                stats = relay.stats
                await _settle(
                    lambda: (
                        stats.down_forwarded + stats.down_dropped == stats.up_forwarded
                        and stats.up_forwarded + stats.up_dropped == 500
                    )
                )
                assert len(got.received) == stats.down_forwarded
                return relay.stats.as_dict()
        finally:
            client.close()
            target.close()

    first, again, other = await run(1), await run(1), await run(2)
    assert first == again
    assert first != other
    assert 60 < first["up_dropped"] < 140  # 20 % of 500
    assert 40 < first["down_dropped"] < 130  # 20 % of what went up


async def test_one_upstream_socket_per_client_bounded() -> None:
    """Two clients are two sources at the target; past max_clients the oldest is closed."""
    target, echo = await _echo()
    a, got_a = await _client()
    b, got_b = await _client()
    try:
        async with LossyRelay(
            target.get_extra_info("sockname")[:2], loss=0.0, max_clients=1
        ) as relay:
            a.sendto(b"a1", relay.address)
            await _settle(lambda: len(got_a.received) == 1)
            b.sendto(b"b1", relay.address)
            await _settle(lambda: len(got_b.received) == 1)
            assert 2 == len(set(echo.sources))
            assert 1 == relay.stats.clients_evicted
            a.sendto(b"a2", relay.address)  # a comes back on a fresh socket
            await _settle(lambda: len(got_a.received) == 2)
            assert [b"echo:a1", b"echo:a2"] == [d for d, _ in got_a.received]
            assert 3 == len(set(echo.sources))
    finally:
        a.close()
        b.close()
        target.close()


def test_cli_refuses_a_non_loopback_target() -> None:
    """`python -m simulator.lossy --target 192.0.2.1:5060` fails before binding anything."""
    with pytest.raises(ValueError, match="loopback"):
        main(["--target", "192.0.2.1:5060"])


async def test_cli_relays_until_sigterm_and_prints_its_counters() -> None:
    """`python -m simulator.lossy --target …`: prints where it listens, relays, and on SIGTERM
    (by PID) prints its counters and exits 0."""
    target, _ = await _echo()
    client, got = await _client()
    host, port = target.get_extra_info("sockname")[:2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator.lossy",
        "--target",
        f"{host}:{port}",
        "--loss",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        assert "listening" == first[0]
        relay_host, _, relay_port = first[1].rpartition(":")
        client.sendto(b"hello", (relay_host, int(relay_port)))
        await _settle(lambda: bool(got.received))
        assert [b"echo:hello"] == [d for d, _ in got.received]
        os.kill(proc.pid, signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
        assert 0 == await asyncio.wait_for(proc.wait(), 10)
        assert "up_forwarded=1 up_dropped=0 down_forwarded=1" in rest
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        client.close()
        target.close()
