"""MemoryTransport/MemoryNetwork: the same receive path as sockets, deterministic, no I/O."""

from __future__ import annotations

from gateway.sip import Request, Response
from gateway.transport import MemoryNetwork, MemoryTransport, TransportName

from .conftest import Collector, options, parse_response


def test_inject_runs_the_socket_receive_path() -> None:
    """inject parses, stamps Via, counts, and delivers with the source address."""
    seen = Collector()
    mem = MemoryTransport(seen, ("127.0.0.1", 5060))
    mem.inject(options(via_host="10.0.0.1:5060", rport=True), ("127.0.0.1", 40000))
    message, source, transport = seen.received[0]
    assert isinstance(message, Request)
    assert source == ("127.0.0.1", 40000)
    assert mem is transport
    assert message.via[0].rport == 40000
    assert mem.stats.delivered == 1


def test_malformed_answered_through_sent_list() -> None:
    """A malformed answerable request produces a 400 in ``sent``, addressed to the source."""
    mem = MemoryTransport(Collector(), ("127.0.0.1", 5060))
    mem.inject(options(content_length=5000), ("127.0.0.1", 40000))
    [(data, dest)] = mem.sent
    assert dest == ("127.0.0.1", 40000)
    assert parse_response(data).status == 400
    assert mem.stats.answered_errors == 1


def test_network_round_trip() -> None:
    """Two endpoints on a network: a request and the 200 it gets, delivered by flush()."""
    net = MemoryNetwork()
    server_seen = Collector(answer=True)
    client_seen = Collector()
    MemoryTransport(server_seen, ("10.0.0.1", 5060), network=net)
    client = MemoryTransport(client_seen, ("10.0.0.2", 5060), network=net)
    client.send(options(via_host="10.0.0.2:5060"), ("10.0.0.1", 5060))
    assert net.flush() == 2
    [(response, source, _)] = client_seen.received
    assert isinstance(response, Response)
    assert response.status == 200
    assert source == ("10.0.0.1", 5060)


def test_undeliverable_and_failed_sends() -> None:
    """Sends to unknown addresses are kept aside; fail_sends simulates an OS error."""
    net = MemoryNetwork()
    mem = MemoryTransport(Collector(), ("10.0.0.1", 5060), network=net)
    assert mem.send(b"x", ("10.9.9.9", 5060))
    net.flush()
    assert net.undeliverable == [(b"x", ("10.9.9.9", 5060))]
    mem.fail_sends = True
    assert mem.send(b"y", ("10.9.9.9", 5060)) is False
    assert mem.stats.send_errors == 1


def test_stream_flavour_requires_content_length() -> None:
    """A TCP-named memory transport parses as a stream: no Content-Length → 400."""
    mem = MemoryTransport(Collector(), name=TransportName.TCP)
    assert mem.reliable
    mem.inject(options().replace(b"Content-Length: 0\r\n", b""), ("127.0.0.1", 1))
    assert parse_response(mem.sent[0][0]).status == 400


def test_parse_error_logs_are_rate_limited() -> None:
    """A garbage flood is fully counted but logs at most LogLimiter.rate lines per second."""
    from structlog.testing import capture_logs

    mem = MemoryTransport(Collector())
    with capture_logs() as logs:
        for _ in range(100):
            mem.inject(b"garbage", ("127.0.0.1", 1))
    assert 100 == mem.stats.parse_errors
    lines = [e for e in logs if e["event"] == "transport.parse.dropped"]
    assert 20 == len(lines)


def test_log_limiter_reports_suppressed() -> None:
    """After a quiet second the next line carries the number suppressed before it."""
    from gateway.transport.base import LogLimiter

    limiter = LogLimiter(rate=2)
    assert [0, 0, None, None] == [limiter.take(10.0) for _ in range(4)]
    assert 2 == limiter.take(11.0)
