"""Hypothesis properties of the transport edge: framing is chunking-invariant, and no input
crashes the receive path or the stage-2 handler."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.callpath.element import Gateway
from gateway.config import Settings
from gateway.transport import Frame, MemoryTransport, StreamFramer, TransportName

from .conftest import options

MESSAGES = [
    options(call_id="a"),
    options(call_id="b", body=b"v=0\r\n\r\nx"),
    options(call_id="c", body=b"\x00\r\n\xff"),
]


@given(
    picks=st.lists(st.sampled_from(range(len(MESSAGES))), min_size=1, max_size=6),
    pings=st.lists(st.booleans(), min_size=6, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=200),
)
def test_framing_independent_of_segmentation(
    picks: list[int], pings: list[bool], cuts: list[int]
) -> None:
    """However the stream is cut into segments, the same frames come out in order."""
    stream = b""
    for i, pick in enumerate(picks):
        stream += (b"\r\n\r\n" if pings[i] else b"") + MESSAGES[pick]
    framer = StreamFramer(4096)
    frames: list[bytes] = []
    pos = 0
    k = 0
    while pos < len(stream):
        size = cuts[k % len(cuts)]
        k += 1
        for event in framer.feed(stream[pos : pos + size]):
            if isinstance(event, Frame):
                frames.append(event.data)
        pos += size
    assert [MESSAGES[p] for p in picks] == frames
    assert 0 == framer.buffered


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), stream=st.booleans())
def test_arbitrary_bytes_never_crash_the_gateway(data: bytes, stream: bool) -> None:
    """Random octets, alone or after a valid header prefix, are parsed, answered or dropped."""
    gw = Gateway(Settings(sip={"listen": ["udp:127.0.0.1:5070"]}))
    name = TransportName.TCP if stream else TransportName.UDP
    mem = MemoryTransport(gw.handle, ("127.0.0.1", 5070), name=name)
    gw.add_transport(mem)
    mem.inject(data, ("127.0.0.1", 1))
    mem.inject(options()[:80] + data, ("127.0.0.1", 1))
    mem.inject(
        options().replace(
            b"Max-Forwards: 70",
            b"Max-Forwards: 70\r\nX: " + data.replace(b"\r", b"").replace(b"\n", b""),
        ),
        ("127.0.0.1", 1),
    )
    assert 0 == mem.stats.handler_errors
    assert 0 == gw.stats.handler_errors
    assert 3 == mem.stats.received
