"""Message.compact(): a message kept only for a retransmission timer drops its parsed
views and header index; everything it says stays the same (re-parsed on access).

Checked over every message of the RFC 4475 corpus that parses: the serialization
and each typed view are equal before and after compact(), and after it the
message holds no parsed view until one is asked for again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip import ParseError, SIPError, parse
from gateway.sip.message import Message
from tests.conformance import RFC4475

VIEWS = ("via", "from_", "to", "call_id", "cseq", "contact", "route", "record_route")


def _views(msg: Message) -> list[str]:
    out: list[str] = []
    for name in VIEWS:
        try:
            out.append(repr(getattr(msg, name)))
        except (SIPError, AttributeError) as exc:  # a torture message may lack one
            out.append(type(exc).__name__)
    return out


def _corpus() -> list[Path]:
    return sorted(RFC4475.glob("*.dat"))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_compact_keeps_what_the_message_says(path: Path) -> None:
    try:
        msg = parse(path.read_bytes())
    except ParseError:
        return  # an invalid message is never kept for a timer
    raw = bytes(msg)
    views = _views(msg)
    msg.compact()
    assert 0 == len(msg._cache)
    assert raw == bytes(msg)
    assert views == _views(msg)


def test_the_corpus_is_there() -> None:
    assert len(_corpus()) >= 40
