"""Do-not-call lists: the internal list (opt-outs, complaints) and imported lists.

Imported lists are files with one number per line, or CSV with a number
column. Numbers are stored as E.164 digits in a sorted `array('q')` (8 bytes
per entry: 10 million numbers take 80 MB) and looked up with `bisect`
(O(log n)). Lines that already are `+` and digits take a fast path without
`phonenumbers`; other lines are normalized with the default region. Bad lines
are reported by line number and skipped; good lines are kept.

Reloading a list builds the new array beside the old one and swaps a single
reference, so a lookup always sees either the complete old or the complete
new list — never a window with no list in force. If the load fails, the old
list stays.

Failure mode: the `DncPolicy` fails closed — when its lookup raises
`StoreUnavailableError` the pipeline answers 503 store-unavailable. This
module must never read a clock (timestamps are passed in) and never log an
unmasked number.
"""

from __future__ import annotations

import csv
import heapq
import io
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import chain
from threading import Lock
from typing import Protocol, runtime_checkable

import phonenumbers
from phonenumbers import NumberParseException

from policies.context import CallContext
from policies.decision import Decision, RejectReason

__all__ = [
    "DncEntry",
    "DncList",
    "DncLookup",
    "DncPolicy",
    "DncRegistry",
    "DncSource",
    "LineError",
    "LoadReport",
    "load_dnc_file",
    "load_dnc_lines",
    "parse_dnc_lines",
]

_CHUNK = 1_000_000
_NUMBER_COLUMNS = ("number", "phone", "e164", "msisdn", "tel", "telephone")
MAX_REPORTED_ERRORS = 1000


class DncSource(StrEnum):
    """Why a number is on the internal list."""

    OPT_OUT = "opt-out"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    IMPORTED = "imported"


@dataclass(frozen=True, slots=True)
class DncEntry:
    """A hit: which list holds the number and why."""

    number: str
    list_name: str
    source: DncSource
    added_at: datetime | None = None
    note: str = ""


@runtime_checkable
class DncLookup(Protocol):
    """What the DNC policy reads; the gateway's store may implement it instead of `DncRegistry`."""

    def lookup(self, e164: str) -> DncEntry | None:
        """The entry listing `e164`, or None. Raises `StoreUnavailableError` when it cannot tell."""
        ...


@dataclass(frozen=True, slots=True)
class LineError:
    """One rejected input line (1-based line number as in the file)."""

    line: int
    text: str
    error: str


@dataclass(slots=True)
class LoadReport:
    """Outcome of an import: counts and the first `MAX_REPORTED_ERRORS` bad lines."""

    loaded: int = 0
    duplicates: int = 0
    bad_lines: int = 0
    errors: list[LineError] = field(default_factory=list)

    def add_error(self, line: int, text: str, error: str) -> None:
        """Count a bad line; keep its details while under the reporting cap."""
        self.bad_lines += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(LineError(line, text[:80], error))


def _digits_key(e164: str) -> int | None:
    """int64 key of an E.164 string (`+` then 1..15 digits), None otherwise."""
    if len(e164) < 2 or e164[0] != "+" or not e164[1:].isdecimal() or len(e164) > 16:
        return None
    return int(e164[1:])


class DncList:
    """An immutable sorted set of E.164 numbers (int64 keys) with O(log n) lookup."""

    __slots__ = ("_keys", "name")

    def __init__(self, name: str, keys: array[int]) -> None:
        self.name = name
        self._keys = keys

    @classmethod
    def from_numbers(cls, name: str, numbers: Iterable[str]) -> DncList:
        """Build from E.164 strings (not normalized here; invalid ones are skipped)."""
        keys = sorted({k for n in numbers if (k := _digits_key(n)) is not None})
        return cls(name, array("q", keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, e164: object) -> bool:
        if not isinstance(e164, str):
            return False
        key = _digits_key(e164)
        if key is None:
            return False
        keys = self._keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    @property
    def nbytes(self) -> int:
        """Bytes held by the key array."""
        return self._keys.buffer_info()[1] * self._keys.itemsize


def _normalize_slow(text: str, default_region: str) -> int | str:
    """Key of an odd line via phonenumbers, or an error message."""
    if not text:
        return "empty number"
    try:
        parsed = phonenumbers.parse(text, default_region)
    except NumberParseException as exc:
        return f"unparseable: {exc}"
    if not phonenumbers.is_possible_number(parsed):
        return "impossible length"
    key = _digits_key(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    return "not E.164" if key is None else key


def _line_values(lines: Iterator[tuple[int, str]], report: LoadReport) -> Iterator[tuple[int, str]]:
    """Yield (line number, number text) from plain or CSV lines; skip header/blank/comment lines.

    The first non-blank line decides the format: a header naming a number
    column (`number`, `phone`, `e164`, …) selects that column; a line with
    commas but no such header means CSV with the number in column 1;
    otherwise every line is one number.
    """
    column: int | None = None
    first = True
    for lineno, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if first:
            first = False
            header = [c.strip().strip('"').lower() for c in line.split(",")]
            found = next((i for i, c in enumerate(header) if c in _NUMBER_COLUMNS), None)
            if found is not None:
                column = found
                continue
            if "," in line:
                column = 0
        if column is None:
            yield lineno, line
            continue
        cells = next(csv.reader(io.StringIO(line))) if '"' in line else line.split(",")
        if column >= len(cells):
            report.add_error(lineno, line, f"no column {column + 1}")
            continue
        yield lineno, cells[column].strip()


def _is_fast(line: str) -> bool:
    """`+` then 7..15 decimal digits: already E.164, no phonenumbers needed."""
    return line[:1] == "+" and 8 <= len(line) <= 16 and line[1:].isdecimal()


def parse_dnc_lines(lines: Iterable[str], default_region: str, report: LoadReport) -> Iterator[int]:
    """Keys of the numbers in `lines`; bad lines go to `report` with their line number."""
    region = default_region.upper()
    for lineno, text in _line_values(enumerate(lines, start=1), report):
        if _is_fast(text):
            yield int(text[1:])
            continue
        result = _normalize_slow(text, region)
        if isinstance(result, str):
            report.add_error(lineno, text, result)
        else:
            yield result


def _sorted_chunks(
    lines: Iterable[str], default_region: str, report: LoadReport
) -> list[array[int]]:
    """Parse lines into sorted int64 chunks of at most `_CHUNK` keys.

    One-number-per-line files take a tight loop in which only odd lines
    (not `+` and digits) reach phonenumbers; CSV files go through the
    column-aware generator.
    """
    region = default_region.upper()
    chunks: list[array[int]] = []
    buf: list[int] = []

    def flush() -> None:
        nonlocal buf
        if buf:
            buf.sort()
            chunks.append(array("q", buf))
            buf = []

    numbered = enumerate(lines, start=1)
    first: tuple[int, str] | None = None
    for lineno, raw in numbered:
        line = raw.strip()
        if line and not line.startswith("#"):
            first = (lineno, raw)
            break
    if first is None:
        return chunks
    head = first[1].strip()
    is_csv = "," in head or head.strip('"').lower() in _NUMBER_COLUMNS
    if is_csv:
        for key in parse_dnc_lines(_renumbered(first, numbered), region, report):
            buf.append(key)
            if len(buf) >= _CHUNK:
                flush()
        flush()
        return chunks

    chunk = _CHUNK
    append = buf.append
    for lineno, raw in chain((first,), numbered):
        line = raw.strip()
        if line[:1] == "+" and 8 <= len(line) <= 16 and line[1:].isdecimal():
            append(int(line[1:]))
        elif not line or line[0] == "#":
            continue
        else:
            result = _normalize_slow(line, region)
            if isinstance(result, str):
                report.add_error(lineno, line, result)
                continue
            append(result)
        if len(buf) >= chunk:
            flush()
            append = buf.append
    flush()
    return chunks


def _renumbered(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[str]:
    """Lines again from the first significant one, padded so line numbers stay right."""
    for _ in range(first[0] - 1):
        yield ""
    yield first[1]
    for _, raw in rest:
        yield raw


def _merge_unique(chunks: list[array[int]], report: LoadReport) -> array[int]:
    """K-way merge of sorted chunks into one sorted array without duplicates."""
    out = array("q")
    last = -1
    total = 0
    merged: Iterable[int] = chunks[0] if len(chunks) == 1 else heapq.merge(*chunks)
    append = out.append
    for key in merged:
        total += 1
        if key != last:
            append(key)
            last = key
    report.duplicates = total - len(out)
    report.loaded = len(out)
    return out


def _build(lines: Iterable[str], default_region: str, report: LoadReport) -> array[int]:
    chunks = _sorted_chunks(lines, default_region, report)
    if not chunks:
        return array("q")
    out = _merge_unique(chunks, report)
    chunks.clear()
    return out


def load_dnc_file(
    path: str | os.PathLike[str], name: str, default_region: str
) -> tuple[DncList, LoadReport]:
    """Load a list file into a new `DncList`; the caller swaps it in. Raises `OSError` on I/O."""
    report = LoadReport()
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        keys = _build(fh, default_region, report)
    return DncList(name, keys), report


def load_dnc_lines(
    lines: Iterable[str], name: str, default_region: str
) -> tuple[DncList, LoadReport]:
    """Like `load_dnc_file` for lines already in memory."""
    report = LoadReport()
    keys = _build(lines, default_region, report)
    return DncList(name, keys), report


class DncRegistry:
    """In-memory `DncLookup`: the internal list plus named imported lists.

    The internal list is a dict (opt-outs and complaints arrive one at a
    time); imported lists are `DncList`s swapped in whole. Internal entries
    win over imported ones in lookups (they carry the reason).
    """

    def __init__(self, default_region: str = "CN") -> None:
        self.default_region = default_region.upper()
        self._internal: dict[str, DncEntry] = {}
        self._lists: dict[str, DncList] = {}
        self._write = Lock()

    def add(
        self,
        e164: str,
        source: DncSource,
        at: datetime | None = None,
        note: str = "",
    ) -> DncEntry:
        """Put a number on the internal list (opt-out, complaint, manual)."""
        if _digits_key(e164) is None:
            raise ValueError("DNC numbers must be E.164")
        entry = DncEntry(e164, "internal", source, at, note)
        with self._write:
            self._internal[e164] = entry
        return entry

    def remove(self, e164: str) -> bool:
        """Take a number off the internal list; True if it was there."""
        with self._write:
            return self._internal.pop(e164, None) is not None

    def install(self, dnc_list: DncList) -> None:
        """Swap a fully built list in under its name (atomic reference swap)."""
        with self._write:
            new = dict(self._lists)
            new[dnc_list.name] = dnc_list
            self._lists = new

    def load(self, path: str | os.PathLike[str], name: str) -> LoadReport:
        """Load a list file beside the one in force, then swap; on error the old list stays."""
        dnc_list, report = load_dnc_file(path, name, self.default_region)
        self.install(dnc_list)
        return report

    def drop(self, name: str) -> bool:
        """Remove an imported list; True if it existed."""
        with self._write:
            if name not in self._lists:
                return False
            new = dict(self._lists)
            del new[name]
            self._lists = new
            return True

    def list_sizes(self) -> dict[str, int]:
        """Entries per list, the internal one included."""
        sizes = {name: len(lst) for name, lst in self._lists.items()}
        sizes["internal"] = len(self._internal)
        return sizes

    def lookup(self, e164: str) -> DncEntry | None:
        """The entry listing `e164` (internal first), or None."""
        entry = self._internal.get(e164)
        if entry is not None:
            return entry
        lists = self._lists  # one read: a concurrent swap cannot tear this loop
        for name, dnc_list in lists.items():
            if e164 in dnc_list:
                return DncEntry(e164, name, DncSource.IMPORTED)
        return None


@dataclass(frozen=True, slots=True)
class DncPolicy:
    """Reject `dnc` (403) when the destination is on any DNC list.

    Fails closed: a lookup that raises `StoreUnavailableError` makes the
    pipeline answer 503 store-unavailable; the call never leaves unchecked.
    """

    lookup: DncLookup
    name: str = "dnc"
    bypassed_by_emergency: bool = True

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """403 dnc for a listed destination, else no opinion."""
        entry = self.lookup.lookup(ctx.destination)
        if entry is None:
            return None
        return Decision.reject(
            RejectReason.DNC, self.name, f"on DNC list {entry.list_name} ({entry.source})"
        )
