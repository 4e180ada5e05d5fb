"""TLSTransport over loopback: TLS round trips both ways, refused certificates, garbage.

Certificates are made per test with the openssl CLI in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import structlog

from gateway.sip import Request, parse
from gateway.transport import TLSTransport
from gateway.transport.tls import client_context, server_context
from tests.tls_certs import CA, Cert, make_ca, make_cert

from .conftest import Collector, options, parse_response


def _request() -> Request:
    message = parse(options(transport="TLS"))
    assert isinstance(message, Request)
    return message


async def _read_message(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + await reader.readexactly(length)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CA, Cert]:
    """A CA and a server certificate for 127.0.0.1 and gw.test."""
    ca = make_ca(tmp_path)
    return ca, make_cert(tmp_path, ca, "server", ("IP:127.0.0.1", "DNS:gw.test"))


@pytest.fixture
async def tls(collector: Collector, pki: tuple[CA, Cert]):  # type: ignore[no-untyped-def]
    """A TLS transport on 127.0.0.1:0 answering every request with 200."""
    collector.answer = True
    _, cert = pki
    transport = await TLSTransport.listen(
        "127.0.0.1",
        0,
        collector,
        server=server_context(cert.cert, cert.key),
        handshake_timeout=1.0,
        max_message_size=4096,
    )
    yield transport
    await transport.close()


async def test_round_trip_over_tls(
    tls: TLSTransport, collector: Collector, pki: tuple[CA, Cert]
) -> None:
    """A client trusting the CA sends OPTIONS over TLS; the answer comes back on that connection."""
    ca, _ = pki
    reader, writer = await asyncio.open_connection(
        *tls.local_address, ssl=client_context(ca.cert), server_hostname="127.0.0.1"
    )
    try:
        writer.write(options(transport="TLS"))
        response = parse_response(await _read_message(reader))
        assert 200 == response.status
        assert "tls" == collector.received[0][2].name
        assert 1 == tls.stats.tls_handshakes
        assert 1 == tls.stats.connections_opened
    finally:
        writer.close()


async def test_plain_sip_to_tls_port_is_counted_and_logged_once(tls: TLSTransport) -> None:
    """Plain-text SIP on the TLS port fails the handshake: counted, one log line per source."""
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*tls.local_address)
            writer.write(options(transport="TCP"))
            async with asyncio.timeout(3):
                assert b"" == await reader.read()  # closed, nothing answered in clear
            writer.close()
    assert 3 == tls.stats.tls_handshake_failures
    assert {"not-tls": 3} == dict(tls.stats.tls_failures_by_reason)
    assert 0 == tls.stats.connections_opened
    lines = [e for e in logs if e["event"] == "transport.tls.handshake_failed"]
    assert 1 == len(lines)
    assert "not-tls" == lines[0]["reason"]


async def test_silent_client_times_out(tls: TLSTransport) -> None:
    """A client that connects and says nothing is closed by the handshake timeout."""
    reader, writer = await asyncio.open_connection(*tls.local_address)
    async with asyncio.timeout(4):
        assert b"" == await reader.read()
    writer.close()
    assert {"timeout": 1} == dict(tls.stats.tls_failures_by_reason)


async def test_client_that_distrusts_us_is_counted(tls: TLSTransport, tmp_path: Path) -> None:
    """A client with another CA aborts the handshake; the server counts it, nothing crashes."""
    other = make_ca(tmp_path, "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            *tls.local_address, ssl=client_context(other.cert), server_hostname="127.0.0.1"
        )
    for _ in range(100):
        if tls.stats.tls_handshake_failures:
            break
        await asyncio.sleep(0.02)
    assert 1 == tls.stats.tls_handshake_failures


async def _peer_pair(
    tmp_path: Path, ca: CA, cert: Cert, trusted: Path, server_name: str | None
) -> tuple[TLSTransport, TLSTransport, Collector]:
    got = Collector()
    got.answer = True
    server = await TLSTransport.listen(
        "127.0.0.1", 0, got, server=server_context(cert.cert, cert.key)
    )
    ctx = client_context(trusted)
    client = await TLSTransport.listen(
        "127.0.0.1",
        0,
        Collector(),
        server=server_context(cert.cert, cert.key),
        client=lambda addr: (ctx, server_name),
        handshake_timeout=2.0,
    )
    return server, client, got


async def test_outbound_verified_connection(tmp_path: Path, pki: tuple[CA, Cert]) -> None:
    """A transport opens a TLS connection to a server whose certificate the CA signed."""
    ca, cert = pki
    server, client, got = await _peer_pair(tmp_path, ca, cert, ca.cert, "gw.test")
    try:
        request = _request()
        assert client.send(request, server.local_address)
        await asyncio.wait_for(got.event.wait(), 3)
        assert 1 == client.stats.tls_handshakes
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize("case", ["untrusted", "name-mismatch"])
async def test_outbound_wrong_certificate_is_refused(
    tmp_path: Path, pki: tuple[CA, Cert], case: str
) -> None:
    """An untrusted CA or a name the certificate does not carry: no connection, logged, counted."""
    ca, cert = pki
    trusted = make_ca(tmp_path, "other").cert if case == "untrusted" else ca.cert
    name = "carrier.example" if case == "name-mismatch" else None
    server, client, got = await _peer_pair(tmp_path, ca, cert, trusted, name)
    failed_to: list[tuple[str, int]] = []
    client.on_connect_failed = failed_to.append
    try:
        with structlog.testing.capture_logs() as logs:
            assert client.send(_request(), server.local_address)
            for _ in range(150):
                if client.stats.send_errors:
                    break
                await asyncio.sleep(0.02)
        assert 1 == client.stats.send_errors
        assert [server.local_address] == failed_to  # the layer above hears of it at once
        assert {case: 1} == dict(client.stats.tls_failures_by_reason)
        assert not got.received
        failed = [
            e
            for e in logs
            if e["event"] == "transport.tls.handshake_failed" and e["direction"] == "out"
        ]
        assert 1 == len(failed)
        assert case == failed[0]["reason"]
    finally:
        await client.close()
        await server.close()


async def test_handshakes_in_progress_count_against_the_per_source_limit(
    collector: Collector, pki: tuple[CA, Cert]
) -> None:
    """Silent connections still in their handshake count per source: the third one is refused."""
    _, cert = pki
    tls = await TLSTransport.listen(
        "127.0.0.1",
        0,
        collector,
        server=server_context(cert.cert, cert.key),
        handshake_timeout=5.0,
        max_per_source=2,
    )
    writers = []
    try:
        for _ in range(2):
            writers.append((await asyncio.open_connection(*tls.local_address))[1])
        for _ in range(50):
            if len(tls._handshaking) == 2:
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection(*tls.local_address)
        writers.append(writer)
        async with asyncio.timeout(3):
            assert b"" == await reader.read()  # closed at once, long before the 5 s timeout
        assert {"per-source-limit": 1} == dict(tls.stats.connections_refused_by_reason)
    finally:
        for w in writers:
            w.close()
        await tls.close()


async def test_close_with_a_handshake_in_progress(
    collector: Collector, pki: tuple[CA, Cert]
) -> None:
    """Closing the transport while a client sits in its handshake ends both promptly."""
    _, cert = pki
    tls = await TLSTransport.listen(
        "127.0.0.1", 0, collector, server=server_context(cert.cert, cert.key), handshake_timeout=30
    )
    reader, writer = await asyncio.open_connection(*tls.local_address)
    for _ in range(50):
        if tls._handshaking:
            break
        await asyncio.sleep(0.02)
    assert 1 == len(tls._handshaking)
    async with asyncio.timeout(3):
        await tls.close()
        assert b"" == await reader.read()
    assert not tls._handshaking
    assert 0 == tls.stats.tls_handshake_failures  # our own close is not the peer's failure
    writer.close()
