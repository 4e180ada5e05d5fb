"""The common interface of every SIP transport, its counters, and the receive path.

A transport turns bytes into ``gateway.sip`` messages and back. It owns the
socket edge only: framing, the size bound, the RFC 3261 §18.2.1 / RFC 3581
``received``/``rport`` stamping of incoming requests, the §18.2.2 choice of where
a response goes, and the stateless answer to a request that fails to parse.
Everything above it (validation, transactions, routing) receives
``(message, source, transport)`` through one callback.

This module must never raise an OS error or a parse error into the layer above:
both are translated here into a log line and a counter. It must never keep an
unbounded buffer and never decide anything about SIP semantics beyond parsing.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeAlias, cast

import structlog

from gateway.sip.errors import MessageTooLarge, SIPError
from gateway.sip.message import Request, Response, error_response, parse
from gateway.transport.via import response_destination, stamp_via

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Address",
    "LogLimiter",
    "Message",
    "MessageHandler",
    "Transport",
    "TransportName",
    "TransportStats",
    "normalize_address",
]

log = structlog.get_logger("gateway.transport")

Address: TypeAlias = tuple[str, int]
"""``(host, port)``: an IP literal without brackets (``"::1"``, not ``"[::1]"``)."""

Message: TypeAlias = Request | Response

MessageHandler: TypeAlias = Callable[[Message, Address, "Transport"], None]
"""Called once per received message with its source address and the transport."""

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024


class TransportName(StrEnum):
    """The Via transport token of a transport, lower case."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


def normalize_address(addr: tuple[Any, ...]) -> Address:
    """``(host, port[, flowinfo, scope_id])`` from the socket module → ``(host, port)``."""
    if (
        type(addr) is tuple
        and len(addr) == 2
        and type(addr[0]) is str
        and type(addr[1]) is int
        and not addr[0].startswith("[")
    ):
        return cast(Address, addr)  # already one: most calls, from this layer's own callers
    host = str(addr[0])
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(addr[1])


@dataclasses.dataclass(slots=True)
class TransportStats:
    """Per-transport counters; plain ints so a snapshot is cheap and JSON-ready.

    ``received`` counts every message-sized unit that reached the parser
    (datagrams, stream frames); keep-alives are counted apart. ``wakeups`` (UDP):
    the event loop's reads that handed datagrams over, each with those read after it
    (``received / wakeups`` datagrams per wake-up).
    """

    received: int = 0
    wakeups: int = 0
    delivered: int = 0
    sent: int = 0
    send_errors: int = 0
    parse_errors: int = 0
    dropped: int = 0
    answered_errors: int = 0
    keepalives: int = 0
    handler_errors: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    connections_refused: int = 0
    connections_closed_idle: int = 0
    connections_closed_slow: int = 0
    framing_closes: int = 0
    tls_handshakes: int = 0
    tls_handshake_failures: int = 0
    by_status: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    dropped_by_reason: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    tls_failures_by_reason: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    connections_refused_by_reason: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )

    def drop(self, reason: str) -> None:
        """Count one dropped unit under ``reason``."""
        self.dropped += 1
        self.dropped_by_reason[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (status keys become strings)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, collections.Counter):
                out[field.name] = {str(k): v for k, v in sorted(value.items())}
            else:
                out[field.name] = value
        return out


class Transport(abc.ABC):
    """One listening SIP transport (a UDP socket, a TCP listener with its connections).

    Subclasses implement ``_send_bytes`` and ``local_address``; the receive path
    (``_receive``) and response routing (``send_response``) are shared.
    """

    name: TransportName
    reliable: bool
    on_connect_failed: Callable[[Address], None] | None = None
    """Called with the destination when a connection opened for a send fails
    (a stream transport queues the send first, so ``send`` said True)."""

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.on_message = on_message
        self.max_message_size = max_message_size
        self.stats = TransportStats()
        self._log_limit = LogLimiter()

    # -- interface -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def local_address(self) -> Address:
        """The bound ``(host, port)``; the real port when port 0 was asked for."""

    @abc.abstractmethod
    def _send_bytes(self, data: bytes, addr: Address) -> bool:
        """Hand ``data`` to the OS for ``addr``; False (logged, counted) if impossible."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening and close every socket/connection. Idempotent."""

    # -- sending ---------------------------------------------------------------------

    def send(self, data: bytes | Request | Response, addr: Address) -> bool:
        """Send one message (or raw bytes) to ``addr``. Never raises an OS error."""
        try:
            payload = data if isinstance(data, bytes) else bytes(data)
        except (SIPError, ValueError) as exc:  # UnicodeError is a ValueError
            # A message built from hostile input that cannot be serialized is a
            # send failure at the edge, not a crash of the caller.
            self.stats.send_errors += 1
            log.warning("transport.send.failed", transport=str(self.name), reason=repr(exc)[:200])
            return False
        if len(payload) > self.max_message_size and not self.reliable:
            # RFC 3261 §18.1.1 would move a large request to TCP; the layer above
            # picks the transport, so here it is only refused and counted.
            self.stats.send_errors += 1
            log.warning(
                "transport.send.failed",
                transport=str(self.name),
                reason="too-large",
                size=len(payload),
            )
            return False
        ok = self._send_bytes(payload, normalize_address(addr))
        if ok:
            self.stats.sent += 1
        else:
            self.stats.send_errors += 1
        return ok

    def send_response(
        self, response: Response, source: Address | None = None, *, symmetric: bool = False
    ) -> bool:
        """Send a response where RFC 3261 §18.2.2 / RFC 3581 §4 say it goes.

        ``source`` is the address the request came from. Over a reliable
        transport the response goes back on the connection the request came in
        on (found by ``source``) while it is open; otherwise to the address the
        top Via names (received + sent-by port). Over UDP ``symmetric=True``
        sends to ``source`` always, as if every request carried ``;rport``
        (Kamailio's ``force_rport``): clients behind NAT need it, and it never
        reflects a response to a port that a forged sent-by names. ``source``
        is also the fallback when the top Via cannot be read.
        """
        if source is not None:
            source = normalize_address(source)
            if self.reliable and self.has_connection(source):
                return self.send(response, source)
            if symmetric and not self.reliable:
                return self.send(response, source)
        dest = response_destination(response, reliable=self.reliable)
        if dest is None:
            if source is None:
                self.stats.drop("response-no-destination")
                return False
            dest = source
        return self.send(response, dest)

    def has_connection(self, addr: Address) -> bool:
        """True when a reliable transport holds an open connection to ``addr``."""
        return False

    # -- receiving -------------------------------------------------------------------

    def _receive(
        self,
        data: bytes,
        source: Address,
        reply: Callable[[bytes], object],
        *,
        stream: bool,
    ) -> None:
        """Parse one unit, answer or drop what fails, stamp Via, deliver the rest."""
        message = self._parse_unit(data, source, reply, stream=stream)
        if message is not None:
            self._hand_over(message, source)

    def _parse_unit(
        self,
        data: bytes,
        source: Address,
        reply: Callable[[bytes], object],
        *,
        stream: bool,
    ) -> Message | None:
        """The first half of :meth:`_receive`: count and parse one unit; answer or drop
        what fails (None); a request comes back with its Via stamped."""
        self.stats.received += 1
        message: Message
        try:
            if len(data) > self.max_message_size:
                raise MessageTooLarge(
                    f"message of {len(data)} octets exceeds {self.max_message_size}"
                )
            message = parse(data, stream=stream, max_size=self.max_message_size)
        except SIPError as err:
            self.stats.parse_errors += 1
            self._answer_error(data, err, source, reply)
            return None
        except Exception:  # the parser promises ParseError only; the edge never trusts that
            self.stats.parse_errors += 1
            self.stats.drop("parser-crash")
            log.exception("transport.parse.crashed", transport=str(self.name), source=_fmt(source))
            return None
        if isinstance(message, Request):
            message = stamp_via(message, source)
        return message

    def _hand_over(self, message: Message, source: Address) -> None:
        """The second half of :meth:`_receive`: give a parsed unit to the handler (whose
        exceptions are contained and counted)."""
        try:
            self.on_message(message, source, self)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("transport.handler.failed", transport=str(self.name), source=_fmt(source))
            return
        self.stats.delivered += 1

    def _answer_error(
        self, data: bytes, err: SIPError, source: Address, reply: Callable[[bytes], object]
    ) -> None:
        """Answer an unparseable request statelessly when possible, else drop it."""
        try:
            answer = error_response(data, err)
        except Exception:  # best-effort helper: a crash there is a drop, not our crash
            log.exception("transport.error_response.crashed", transport=str(self.name))
            answer = None
        if answer is None:
            self.stats.drop("unparseable")
        else:
            self.stats.answered_errors += 1
            self.stats.by_status[err.status_code] += 1
        suppressed = self._log_limit.take(time.monotonic())
        if suppressed is not None:
            log.info(
                "transport.parse.dropped" if answer is None else "transport.parse.answered",
                transport=str(self.name),
                source=_fmt(source),
                status=err.status_code,
                detail=err.detail[:200],
                suppressed=suppressed,
            )
        if answer is not None:
            reply(answer)


class LogLimiter:
    """At most ``rate`` log lines per second; counts what it suppressed in between.

    A flood of garbage must not become a flood of log lines (the counters still
    see every datagram).
    """

    __slots__ = ("_count", "_suppressed", "_window", "rate")

    def __init__(self, rate: int = 20) -> None:
        self.rate = rate
        self._window = -1.0
        self._count = 0
        self._suppressed = 0

    def take(self, now: float) -> int | None:
        """None: do not log. Else log, reporting how many lines were suppressed before."""
        if now - self._window >= 1.0:
            self._window = now
            self._count = 0
        if self._count >= self.rate:
            self._suppressed += 1
            return None
        self._count += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def _fmt(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
