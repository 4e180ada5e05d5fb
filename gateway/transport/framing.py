"""Sans-IO framing of SIP over a byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1).

Bytes go in with :meth:`StreamFramer.feed`; events come out: a complete
message (:class:`Frame`), a keep-alive ping (:class:`Ping`, answered with a
single CRLF pong), or a :class:`FramingError` after which the stream is dead
and the connection must be closed (the error carries the status to answer).

A message ends at the first CRLFCRLF plus the octets named by its
Content-Length, which a stream must carry. Everything is bounded by
``max_size``: a header block that does not end within it, or a Content-Length
that would pass it, is an error, never a bigger buffer.

This module must never do I/O and never interpret a message beyond finding its
Content-Length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.sip.errors import MessageTooLarge, ParseError, SIPError

__all__ = ["Frame", "FramerEvent", "FramingError", "Ping", "StreamFramer"]

_CRLF = b"\r\n"
_PING = b"\r\n\r\n"
_END = b"\r\n\r\n"

# Content-Length / compact "l" at the start of a header line (RFC 3261 §20.14,
# §7.3.3); HCOLON = *( SP / HTAB ) ":" SWS.
_CL_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete message (start line, headers, body)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """An RFC 5626 double-CRLF keep-alive ping between messages; answer ``b"\\r\\n"``."""


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream cannot be framed any more; ``head`` is what arrived of the message."""

    error: SIPError
    head: bytes


FramerEvent = Frame | Ping | FramingError


class StreamFramer:
    """Incremental splitter of one connection's byte stream into SIP messages."""

    __slots__ = ("_body_end", "_buf", "_dead", "_scan_from", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scan_from = 0  # where the search for CRLFCRLF resumes
        self._body_end: int | None = None  # end of the current message once headers are read
        self._dead = False

    @property
    def buffered(self) -> int:
        """Octets held for an incomplete message."""
        return len(self._buf)

    @property
    def dead(self) -> bool:
        """True once a FramingError was returned: feed() then ignores all input."""
        return self._dead

    def feed(self, data: bytes) -> list[FramerEvent]:
        """Add received octets; return every event they complete, in order."""
        if self._dead:
            return []
        self._buf += data
        events: list[FramerEvent] = []
        while True:
            event = self._next()
            if event is None:
                return events
            events.append(event)
            if isinstance(event, FramingError):
                self._dead = True
                self._buf.clear()
                return events

    def _next(self) -> FramerEvent | None:
        buf = self._buf
        if self._body_end is None:
            # Between messages: RFC 5626 §3.5.1 ping is CRLFCRLF; RFC 3261 §7.5 says
            # to ignore stray CRLFs before a start line.
            while buf.startswith(_CRLF):
                if buf.startswith(_PING):
                    del buf[:4]
                    self._scan_from = 0
                    return Ping()
                if len(buf) < 4 and _PING.startswith(bytes(buf)):
                    return None  # maybe half a ping: wait
                del buf[:2]
                self._scan_from = 0
            end = buf.find(_END, self._scan_from)
            if end < 0:
                if len(buf) > self.max_size:
                    return FramingError(
                        MessageTooLarge(f"header block longer than {self.max_size} octets"),
                        bytes(buf[: self.max_size]),
                    )
                self._scan_from = max(0, len(buf) - 3)
                return None
            head_len = end + 4
            if head_len > self.max_size:
                return FramingError(
                    MessageTooLarge(f"header block longer than {self.max_size} octets"),
                    bytes(buf[:head_len]),
                )
            head = bytes(buf[:head_len])
            try:
                length = _content_length(head)
            except SIPError as err:
                return FramingError(err, head)
            if head_len + length > self.max_size:
                return FramingError(
                    MessageTooLarge(f"Content-Length {length} exceeds {self.max_size} octets"),
                    head,
                )
            self._body_end = head_len + length
            self._scan_from = 0
        if len(buf) < self._body_end:
            return None
        frame = bytes(buf[: self._body_end])
        del buf[: self._body_end]
        self._body_end = None
        return Frame(frame)


def _content_length(head: bytes) -> int:
    """The Content-Length of a header block ending in CRLFCRLF.

    RFC 3261 §18.3: "In the case of stream-oriented transports such as TCP, the
    Content-Length header field indicates the size of the body. All
    implementations MUST use this to find the end of a message." Missing,
    malformed, negative, or several different values: the stream cannot be
    framed (RFC 4475 §3.1.2.3, §3.3.9).
    """
    values = {m.group(1).strip(b" \t") for m in _CL_RE.finditer(head)}
    if not values:
        raise ParseError("stream message without Content-Length")
    if len(values) > 1:
        raise ParseError("conflicting Content-Length values")
    (raw,) = values
    if not raw.isdigit() or len(raw) > 10:
        raise ParseError(f"bad Content-Length {raw[:20]!r}")
    return int(raw)
