"""The asyncio edge of dialgate: SIP over UDP, TCP and TLS, plus an in-memory transport.

Public names: :class:`Transport` (the common interface), :class:`UDPTransport`,
:class:`TCPTransport`, :class:`TLSTransport`, :class:`MemoryTransport`/:class:`MemoryNetwork` (tests),
:class:`TransportStats`, :class:`StreamFramer`, and the Via helpers
:func:`stamp_via` / :func:`response_destination`.

This package must never contain SIP semantics beyond parsing and the RFC 3261
§18 transport rules, and never raise OS errors into the layers above.
"""

from gateway.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Address,
    Message,
    MessageHandler,
    Transport,
    TransportName,
    TransportStats,
    normalize_address,
)
from gateway.transport.framing import Frame, FramingError, Ping, StreamFramer
from gateway.transport.memory import MemoryNetwork, MemoryTransport
from gateway.transport.tcp import TCPConnection, TCPTransport
from gateway.transport.tls import TLSConfigError, TLSTransport
from gateway.transport.udp import UDPTransport
from gateway.transport.via import response_destination, stamp_via

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Address",
    "Frame",
    "FramingError",
    "MemoryNetwork",
    "MemoryTransport",
    "Message",
    "MessageHandler",
    "Ping",
    "StreamFramer",
    "TCPConnection",
    "TCPTransport",
    "TLSConfigError",
    "TLSTransport",
    "Transport",
    "TransportName",
    "TransportStats",
    "UDPTransport",
    "normalize_address",
    "response_destination",
    "stamp_via",
]
