"""RFC 4475 torture messages sent over real UDP to a running gateway.

Every ``semantic`` and ``invalid`` row of the shared MANIFEST goes out as one
datagram to a ``dialgate run`` subprocess (the real CLI) and the answer is
checked against what the MANIFEST names for a proxy (registrar for REGISTER).
An in-process ``serve()`` run checks the same corpus against the counters.
See ../shared/conformance/rfc4475/README.md for the MANIFEST columns.
"""

from __future__ import annotations

import asyncio
import csv
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from gateway import app
from gateway.callpath.element import Gateway
from gateway.config import Settings
from tests.conformance import RFC4475

if TYPE_CHECKING:  # the fixture's type; conftest is not importable as a package module
    from conftest import DialgateProcess

CORPUS = RFC4475
ANSWER_WAIT = 2.0
DROP_WAIT = 0.4
NORMAL_NOT = {400, 415, 416, 420, 505}

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Row:
    """One MANIFEST row."""

    file: str
    expectation: str
    expected_response: str
    lenient_ok: str

    @property
    def data(self) -> bytes:
        """The datagram, byte for byte."""
        return (CORPUS / self.file).read_bytes()

    @property
    def is_request(self) -> bool:
        """True unless the start line is a status line."""
        return not self.data.startswith(b"SIP/")

    @property
    def role(self) -> str:
        """The gateway's role for this message: registrar for REGISTER, else proxy."""
        return "registrar" if self.data.startswith(b"REGISTER ") else "proxy"

    def outcome(self) -> str | None:
        """The outcome named for our role (else ``any``), or None if nothing is prescribed."""
        if self.expected_response == "-":
            return None
        pairs = dict(p.split("=", 1) for p in self.expected_response.split(";"))
        return pairs.get(self.role, pairs.get("any"))


def _rows(expectation: str) -> list[Row]:
    if not (CORPUS / "MANIFEST.tsv").exists():
        return []
    with (CORPUS / "MANIFEST.tsv").open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return [
            Row(r["file"], r["expectation"], r["expected_response"], r["lenient_ok"])
            for r in reader
            if r["expectation"] == expectation
        ]


SEMANTIC = _rows("semantic")
INVALID = _rows("invalid")


def exchange(target: tuple[str, int], data: bytes, wait: float) -> bytes | None:
    """Send one datagram from a fresh socket; the first datagram back within ``wait``, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait)
        s.sendto(data, target)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def status_of(answer: bytes) -> int:
    """The status code of a response datagram."""
    first = answer.split(b"\r\n", 1)[0].split(b" ")
    assert b"SIP/2.0" == first[0], answer[:80]
    return int(first[1])


def options_ok(target: tuple[str, int]) -> bool:
    """True when an OPTIONS to the gateway itself gets 200."""
    host, port = target
    data = (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:9;branch=z9hG4bKalive;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@test>;tag=p\r\n"
        f"To: <sip:{host}:{port}>\r\nCall-ID: alive@test\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    answer = exchange(target, data, ANSWER_WAIT)
    return answer is not None and status_of(answer) == 200


def test_manifest_found() -> None:
    """The shared corpus is present: 14 semantic rows (incl. badvers) and 19 invalid ones (incl. test.dat)."""
    assert (14, 19) == (len(SEMANTIC), len(INVALID))


@pytest.mark.parametrize("row", SEMANTIC, ids=lambda r: r.file)
def test_semantic_row(dialgate: DialgateProcess, row: Row) -> None:
    """A well-formed message gets the response the MANIFEST names for our role."""
    outcome = row.outcome()
    assert outcome is not None
    target = dialgate.addresses["udp"]
    if outcome == "drop":
        assert exchange(target, row.data, DROP_WAIT) is None
        return
    answer = exchange(target, row.data, ANSWER_WAIT)
    assert answer is not None, f"no answer to {row.file}"
    status = status_of(answer)
    if outcome in ("forward", "accept"):
        assert status not in NORMAL_NOT, f"{row.file}: processed abnormally ({status})"
    elif outcome == "error":
        assert status >= 400
    else:
        assert status in {int(code) for code in outcome.split("|")}, row.file


@pytest.mark.parametrize("row", INVALID, ids=lambda r: r.file)
def test_invalid_row(dialgate: DialgateProcess, row: Row) -> None:
    """A malformed message gets an error response or is dropped, never a success.

    Requests the RFC does not let us accept liberally (``lenient_ok=no``) must get
    the named code; responses are always dropped.
    """
    target = dialgate.addresses["udp"]
    quick = not row.is_request or row.outcome() in (None, "drop")
    answer = exchange(target, row.data, DROP_WAIT if quick else ANSWER_WAIT)
    if not row.is_request:
        assert answer is None, f"{row.file}: a response must never be answered"
        return
    if answer is None:
        assert row.lenient_ok != "no" or row.outcome() in (None, "drop"), f"{row.file}: dropped"
        return
    status = status_of(answer)
    assert status >= 400, f"{row.file}: accepted with {status}"
    outcome = row.outcome()
    if row.lenient_ok == "no" and outcome not in (None, "error", "drop"):
        assert status in {int(code) for code in outcome.split("|")}, row.file


def test_still_answers_after_corpus(dialgate: DialgateProcess) -> None:
    """After every torture message the gateway process is alive and answers OPTIONS."""
    target = dialgate.addresses["udp"]
    for row in [*SEMANTIC, *INVALID]:
        exchange(target, row.data, 0.05)
    assert dialgate.alive()
    assert options_ok(target)


async def test_in_process_counters() -> None:
    """serve() in-process: invalid rows are counted as parse errors or answered rejections."""
    settings = Settings(sip={"listen": ["udp:127.0.0.1:0"]}, admin={"listen": "127.0.0.1:0"})
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(app.serve(settings, ready=ready, stop=stop, on_ready=started.append))
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        gw = started[-1]
        target = gw.address("udp")
        loop = asyncio.get_running_loop()
        for row in INVALID:
            await loop.run_in_executor(None, exchange, target, row.data, 0.3)
        udp_stats = gw.transports[0].stats
        assert len(INVALID) == udp_stats.received
        handled = udp_stats.parse_errors + sum(gw.stats.answered.values())
        handled += sum(gw.stats.dropped.values())
        assert len(INVALID) == handled
        assert 0 == gw.stats.answered[200]
        assert 0 == gw.stats.handler_errors
        assert await loop.run_in_executor(None, options_ok, target)
    finally:
        stop.set()
        await task
