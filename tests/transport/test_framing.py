"""StreamFramer: CRLFCRLF + Content-Length framing with a hard size bound (sans-IO)."""

from __future__ import annotations

import pytest

from gateway.sip import MessageTooLarge, ParseError
from gateway.transport import Frame, FramingError, Ping, StreamFramer

from .conftest import options

MAX = 4096


def test_two_messages_in_one_segment() -> None:
    """Two complete messages arriving together come out as two frames, in order."""
    a = options(call_id="a", body=b"hello")
    b = options(call_id="b")
    framer = StreamFramer(MAX)
    assert [Frame(a), Frame(b)] == framer.feed(a + b)
    assert framer.buffered == 0


def test_message_split_byte_by_byte() -> None:
    """A message fed one octet at a time yields exactly one frame, at its last octet."""
    msg = options(body=b"v=0\r\n\r\n")  # body containing CRLFCRLF must not confuse framing
    framer = StreamFramer(MAX)
    events = []
    for i in range(len(msg)):
        events.extend(framer.feed(msg[i : i + 1]))
        if i < len(msg) - 1:
            assert events == []
    assert [Frame(msg)] == events


def test_keepalive_ping_between_messages() -> None:
    """RFC 5626 CRLFCRLF between messages is a Ping; a lone CRLF before a message is ignored."""
    msg = options()
    framer = StreamFramer(MAX)
    assert [Ping(), Frame(msg)] == framer.feed(b"\r\n\r\n" + msg)
    assert [Frame(msg)] == framer.feed(b"\r\n" + msg)


def test_half_ping_waits() -> None:
    """A ping split across segments is recognised once complete."""
    framer = StreamFramer(MAX)
    assert framer.feed(b"\r\n") == []
    assert [Ping()] == framer.feed(b"\r\n")


def test_header_block_without_end_beyond_bound() -> None:
    """Headers that never end within max_size give a 513 framing error; the framer is dead."""
    framer = StreamFramer(MAX)
    start = b"OPTIONS sip:a@b SIP/2.0\r\nX-Junk: "
    events = framer.feed(start + b"a" * (MAX + 10))
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, FramingError)
    assert isinstance(event.error, MessageTooLarge)
    assert event.error.status_code == 513
    assert framer.dead
    assert framer.feed(options()) == []
    assert framer.buffered == 0


def test_buffer_never_exceeds_bound_when_trickled() -> None:
    """Trickled junk without CRLFCRLF never buffers more than max_size + one segment."""
    framer = StreamFramer(MAX)
    biggest = 0
    for _ in range(MAX // 100 + 5):
        framer.feed(b"x" * 100)
        biggest = max(biggest, framer.buffered)
    assert framer.dead
    assert biggest <= MAX + 100


def test_content_length_over_bound() -> None:
    """A Content-Length that would pass max_size is refused before any body is read."""
    framer = StreamFramer(MAX)
    events = framer.feed(options(content_length=MAX * 10))
    assert len(events) == 1
    assert isinstance(events[0], FramingError)
    assert events[0].error.status_code == 513
    assert events[0].head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"Content-Length: -999", "negative"),
        (b"Content-Length: abc", "not a number"),
        (b"Content-Length: 5\r\nl: 13", "conflicting"),
        (b"X-No-Length: 1", "missing"),
    ],
)
def test_unframeable_content_length(header: bytes, why: str) -> None:
    """Missing, malformed or conflicting Content-Length on a stream is a 400 framing error."""
    msg = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n" + header + b"\r\n\r\nhello"
    events = StreamFramer(MAX).feed(msg)
    assert len(events) == 1, why
    assert isinstance(events[0], FramingError)
    assert isinstance(events[0].error, ParseError)
    assert events[0].error.status_code == 400


def test_compact_content_length() -> None:
    """The compact form ``l:`` frames the body too (RFC 3261 §7.3.3)."""
    msg = options(body=b"abc").replace(b"Content-Length: 3", b"l:3")
    assert [Frame(msg)] == StreamFramer(MAX).feed(msg + b"trailing")
