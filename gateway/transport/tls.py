"""SIP over TLS (RFC 3261 §26.2, §18): the TCP transport with a TLS layer under its framing.

A :class:`TLSTransport` is a :class:`~gateway.transport.tcp.TCPTransport` whose
accepted connections are upgraded with ``loop.start_tls`` before they count as
connections, and whose outbound connections are opened with the client context
of their destination (a carrier's CA and server name, see
:func:`client_context`). Framing, the size bound, idle timeout, write bounds,
connection limits and the response routing are the TCP transport's, unchanged:
only complete handshakes reach them.

A handshake that fails — an untrusted or misnamed certificate, a timeout, a
peer speaking plain SIP or anything else to the TLS port — is counted
(``tls_handshake_failures`` and ``tls_failures_by_reason``) and logged at most
once per source host per :data:`LOG_INTERVAL` seconds (and at most a few lines
a second in all), never raised. Handshakes in progress are bounded by the
connection limit and by the handshake timeout.

:func:`server_context` / :func:`client_context` build the ``ssl.SSLContext``
objects from configured files and raise :class:`TLSConfigError` naming the
setting at fault. They never read a key file into Python memory themselves and
no error or log line here ever carries key material or a key password.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.transport.base import (
    Address,
    LogLimiter,
    MessageHandler,
    TransportName,
    normalize_address,
)
from gateway.transport.tcp import TCPConnection, TCPTransport

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "ClientTLS",
    "TLSConfigError",
    "TLSConnection",
    "TLSTransport",
    "client_context",
    "failure_reason",
    "server_context",
]

log = structlog.get_logger("gateway.transport.tls")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
LOG_INTERVAL = 60.0
"""Seconds between two handshake-failure log lines for the same source host."""
_LOG_SOURCES = 4096

ClientTLS = tuple[ssl.SSLContext, str | None]
"""The client context for a destination and the server name to verify (None: the IP)."""


class TLSConfigError(ValueError):
    """A TLS file or setting is unusable; ``key`` names the setting (``tls_cert``, …)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _readable(key: str, path: Path) -> None:
    if not path.is_file():
        raise TLSConfigError(key, f"no such file: {path}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TLSConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    # why: without a callback OpenSSL prompts on the terminal for an encrypted key.
    return b""


def _load_chain(
    ctx: ssl.SSLContext, cert: Path, key: Path | None, password: str | None, *, prefix: str
) -> None:
    cert_key, key_key = f"{prefix}tls_cert", f"{prefix}tls_key"
    _readable(cert_key, cert)
    if key is not None:
        _readable(key_key, key)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, ValueError):
        raise TLSConfigError(cert_key, f"{cert} holds no PEM certificate") from None
    try:
        ctx.load_cert_chain(
            str(cert), None if key is None else str(key), password=password or _no_password
        )
    except ssl.SSLError as exc:
        reason = (exc.reason or "").upper()
        if reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                key_key, f"the key does not match the certificate {cert}"
            ) from None
        # OpenSSL says only "PEM lib" both for a file with no key and for an
        # encrypted key whose password is missing or wrong.
        raise TLSConfigError(
            key_key,
            f"{key or cert} cannot be used as the private key (not a PEM private key,"
            " or encrypted and tls_key_password is missing or wrong)",
        ) from None


def server_context(cert: Path, key: Path, password: str | None = None) -> ssl.SSLContext:
    """The context of a TLS listener: our certificate chain and key, TLS 1.2 or later.

    Clients are not asked for a certificate: agents authenticate with digest.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, Path(cert), Path(key), password, prefix="")
    return ctx


def client_context(
    ca: Path | None = None,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    """The context of a connection we open: the server certificate is always verified.

    ``ca``: a PEM file of the CAs to trust (None: the system's). RFC 3261 §26.2.2:
    the server's certificate must be valid for the name we connect to, so
    hostname checking stays on. ``cert``/``key``: our certificate, presented when
    the server asks for one (mutual TLS towards a carrier).
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _readable("tls_ca", Path(ca))
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, ValueError):
            raise TLSConfigError("tls_ca", f"{ca} holds no PEM certificate") from None
    if cert is not None and key is not None:
        _load_chain(ctx, Path(cert), Path(key), password, prefix="")
    return ctx


def failure_reason(exc: BaseException) -> str:
    """A short, stable label for a failed handshake (a metric label, a log field)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or "").lower()
        if "hostname" in message or "ip address mismatch" in message:
            return "name-mismatch"
        if "expired" in message:
            return "expired"
        return "untrusted"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}:
            return "not-tls"
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
            return "peer-refused-certificate"
        if "VERSION" in reason or "PROTOCOL" in reason or "CIPHER" in reason:
            return "no-common-protocol"
        return reason.lower().replace("_", "-") or "ssl-error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionAbortedError) and "longer than" in str(exc):
        return "timeout"  # asyncio's ssl_handshake_timeout
    if isinstance(exc, ConnectionError | EOFError):
        return "closed"
    return type(exc).__name__.lower()


def _detail(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason or "")[:200]
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)[:200]
    return repr(exc)[:200]


class _SourceLog:
    """One log line per source host per ``interval``; bounded; a global rate on top."""

    __slots__ = ("_global", "_last", "interval", "suppressed")

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._global = LogLimiter(5)
        self.suppressed = 0

    def take(self, host: str, now: float) -> int | None:
        """None: do not log; else the number of lines suppressed since the last one."""
        last = self._last.get(host)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return None
        if self._global.take(now) is None:
            self.suppressed += 1
            return None
        self._last[host] = now
        self._last.move_to_end(host)
        while len(self._last) > _LOG_SOURCES:
            self._last.popitem(last=False)
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


class TLSConnection(TCPConnection):
    """A TCP connection carrying TLS: accepted ones start plain and are upgraded first."""

    secured = False
    _early: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self.owner
        assert isinstance(owner, TLSTransport)
        if self.secured or self.outbound_key is not None:
            # Opened by us with ssl= (the handshake is done), or upgraded below.
            self.secured = True
            super().connection_made(transport)
            early, self._early = self._early, None
            for data in early or ():
                if self.transport is None or self.transport.is_closing():
                    break
                self.data_received(data)
            return
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.peer = normalize_address(peer) if peer else ("", 0)
        owner._start_handshake(self, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            # why: the TLS layer can hand over application data in the same read
            # that completes the handshake, before start_tls() has returned and
            # the connection is registered (so its answers would miss it). Kept
            # until then; bounded by what one handshake window can carry.
            early = self._early if self._early is not None else []
            if sum(map(len, early)) + len(data) > self.owner.max_message_size * 2:
                return
            early.append(data)
            self._early = early
            return
        super().data_received(data)


class TLSTransport(TCPTransport):
    """A TLS listener (our certificate) plus TLS connections out (verified). See :meth:`listen`."""

    name = TransportName.TLS
    reliable = True

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        server: ssl.SSLContext | None = None,
        client: Callable[[Address], ClientTLS] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        **options: Any,
    ) -> None:
        # ``options``: the TCP transport's bounds (max_message_size, idle_timeout,
        # max_connections, …), passed through unchanged.
        super().__init__(on_message, **options)
        self.server_context = server
        self.client = client or _default_client
        self.handshake_timeout = handshake_timeout
        self._handshaking: dict[TLSConnection, asyncio.Task[None]] = {}
        self._handshakes_from: dict[str, int] = {}
        self._source_log = _SourceLog()

    @classmethod
    async def listen(  # type: ignore[override]
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        server: ssl.SSLContext,
        client: Callable[[Address], ClientTLS] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        reuse_port: bool = False,
        **options: Any,
    ) -> TLSTransport:
        """Listen for TLS on ``host:port`` (port 0: any free port) with ``server``'s certificate.

        ``client(addr)`` gives the context and server name for a connection we
        open to ``addr`` (default: the system CAs, verified against the IP).
        ``options`` are the TCP transport's bounds; ``reuse_port`` as for TCP.
        """
        self = cls(
            on_message,
            server=server,
            client=client,
            handshake_timeout=handshake_timeout,
            **options,
        )
        loop = asyncio.get_running_loop()
        # Plain TCP underneath: the TLS layer is added per connection by
        # _start_handshake, so a failed handshake is ours to count and log
        # (asyncio's own ssl= server drops it silently outside debug mode).
        self._server = await loop.create_server(
            lambda: TLSConnection(self),
            host.strip("[]"),
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._local = normalize_address(self._server.sockets[0].getsockname())
        return self

    # -- accepted connections: the handshake -------------------------------------------

    def _start_handshake(self, conn: TLSConnection, raw: asyncio.Transport) -> None:
        # Handshakes in progress count against the same limits as connections
        # (total and per source), so a flood of silent connects cannot pile up.
        host = conn.peer[0]
        reason: str | None = None
        if self._closing or self.server_context is None:
            reason = "closing"
        elif len(self._all) + len(self._handshaking) >= self.max_connections:
            reason = "total-limit"
        elif (
            self._per_source.get(host, 0) + self._handshakes_from.get(host, 0)
            >= self.max_per_source
        ):
            reason = "per-source-limit"
        if reason is not None:
            self.stats.connections_refused += 1
            self.stats.connections_refused_by_reason[reason] += 1
            if reason != "closing" and self._source_log.take(host, time.monotonic()) is not None:
                log.warning("transport.tls.refused", peer=f"{host}:{conn.peer[1]}", reason=reason)
            raw.abort()
            return
        self._handshakes_from[host] = self._handshakes_from.get(host, 0) + 1
        # why: start_tls pauses reading too, but only once it runs; a ClientHello
        # delivered to the plain protocol before that would be lost.
        raw.pause_reading()
        task = asyncio.get_running_loop().create_task(self._handshake(conn, raw))
        self._handshaking[conn] = task

    async def _handshake(self, conn: TLSConnection, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        assert self.server_context is not None
        try:
            secured = await loop.start_tls(
                raw,
                conn,
                self.server_context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except asyncio.CancelledError:
            raw.abort()
            raise
        except Exception as exc:  # every handshake failure is counted, none escapes
            raw.abort()
            self._handshake_failed(conn.peer, exc, inbound=True)
            return
        finally:
            self._handshaking.pop(conn, None)
            left = self._handshakes_from.get(conn.peer[0], 0) - 1
            if left > 0:
                self._handshakes_from[conn.peer[0]] = left
            else:
                self._handshakes_from.pop(conn.peer[0], None)
        if secured is None:  # the peer went away as the handshake ended
            self._handshake_failed(conn.peer, ConnectionResetError("closed"), inbound=True)
            return
        self.stats.tls_handshakes += 1
        conn.secured = True
        conn.connection_made(secured)

    def _handshake_failed(self, peer: Address, exc: BaseException, *, inbound: bool) -> None:
        reason = failure_reason(exc)
        self.stats.tls_handshake_failures += 1
        self.stats.tls_failures_by_reason[reason] += 1
        suppressed = self._source_log.take(peer[0], time.monotonic())
        if suppressed is None:
            return
        log.warning(
            "transport.tls.handshake_failed",
            direction="in" if inbound else "out",
            peer=f"{peer[0]}:{peer[1]}",
            reason=reason,
            detail=_detail(exc),
            suppressed=suppressed,
        )

    # -- outbound connections ----------------------------------------------------------

    async def _connect(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            ctx, server_name = self.client(addr)
        except Exception as exc:  # a broken resolver of contexts is a send failure
            self._connect_failed(addr, exc)
            return
        try:
            async with asyncio.timeout(self.connect_timeout + self.handshake_timeout):
                _, conn = await loop.create_connection(
                    lambda: TLSConnection(self, outbound_key=addr),
                    addr[0],
                    addr[1],
                    ssl=ctx,
                    server_hostname=server_name or addr[0],
                    ssl_handshake_timeout=self.handshake_timeout,
                )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ssl.SSLError) or (
                isinstance(exc, ConnectionAbortedError) and "SSL" in str(exc)
            ):
                self._handshake_failed(addr, exc, inbound=False)
            self._connect_failed(addr, exc)
            return
        self.stats.tls_handshakes += 1
        for data in self._pending.pop(addr, []):
            conn.write(data)

    def _connect_failed(self, addr: Address, exc: BaseException) -> None:
        queued = self._pending.pop(addr, [])
        self.stats.send_errors += len(queued)
        self.stats.sent -= len(queued)  # they were counted as handed over
        log.info(
            "transport.tls.connect.failed",
            host=addr[0],
            port=addr[1],
            reason=failure_reason(exc),
            error=_detail(exc),
        )
        # The sends were queued (send() said True): the layer above learns of
        # the failure here, so a refused certificate is a transport error at
        # once (RFC 3261 §8.1.3.1: 503) instead of a Timer B timeout.
        notify = self.on_connect_failed
        if notify is not None:
            try:
                notify(addr)
            except Exception:  # the edge never lets a callback crash it
                log.exception("transport.tls.connect_failed_callback")

    async def close(self) -> None:
        if self._closing:
            return
        handshakes = list(self._handshaking.values())
        for task in handshakes:
            task.cancel()
        await super().close()
        await asyncio.gather(*handshakes, return_exceptions=True)


_DEFAULT_CLIENT: ssl.SSLContext | None = None


def _default_client(addr: Address) -> ClientTLS:
    global _DEFAULT_CLIENT
    if _DEFAULT_CLIENT is None:
        _DEFAULT_CLIENT = client_context()
    return _DEFAULT_CLIENT, None
