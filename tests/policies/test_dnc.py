"""Tests for DNC lists: import formats, bad lines by number, lookups, atomic reload."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from policies.decision import RejectReason
from policies.dnc import (
    DncList,
    DncPolicy,
    DncRegistry,
    DncSource,
    load_dnc_file,
    load_dnc_lines,
)
from policies.errors import StoreUnavailableError
from tests.policies.helpers import ctx, utc

NOW = utc(2026, 6, 1, 4, 0)


def test_plain_lines_with_bad_lines_reported_by_number() -> None:
    """Good lines are kept; bad ones are reported with their 1-based line number."""
    lines = ["+8613812345678", "13912345678", "hello", "", "# comment", "12", "+8613712345678"]
    dnc_list, report = load_dnc_lines(lines, "imported", "CN")
    assert 3 == len(dnc_list)
    assert [3, 6] == [e.line for e in report.errors]
    assert 2 == report.bad_lines
    assert 3 == report.loaded
    assert "+8613912345678" in dnc_list


def test_csv_with_number_column() -> None:
    """A CSV header names the number column; other columns are ignored."""
    lines = ["name,phone,note", "a,+8613812345678,x", 'b,"139 1234 5678",y', "c", "d,,z"]
    dnc_list, report = load_dnc_lines(lines, "csv", "CN")
    assert {"+8613812345678", "+8613912345678"} == {
        n for n in ("+8613812345678", "+8613912345678") if n in dnc_list
    }
    assert [4, 5] == [e.line for e in report.errors]
    assert "no column 2" == report.errors[0].error
    assert "empty number" == report.errors[1].error


def test_csv_without_header_uses_first_column() -> None:
    """Comma-separated lines without a known header take the number from column 1."""
    dnc_list, report = load_dnc_lines(["+8613812345678,x", "+8613912345678,y"], "l", "CN")
    assert 2 == len(dnc_list)
    assert 0 == report.bad_lines


def test_duplicates_counted_once() -> None:
    """The same number in two spellings is stored once and counted as a duplicate."""
    dnc_list, report = load_dnc_lines(["+8613812345678", "138 1234 5678"], "l", "CN")
    assert 1 == len(dnc_list)
    assert 1 == report.duplicates


def test_lookup_misses_and_non_e164() -> None:
    """Numbers not on the list, non-strings and non-E.164 strings are not found."""
    dnc_list = DncList.from_numbers("l", ["+8613812345678"])
    assert "+8613812345679" not in dnc_list
    assert "8613812345678" not in dnc_list
    assert 8613812345678 not in dnc_list


def test_load_file_100k_entries_sorted_and_found(tmp_path: Path) -> None:
    """100k numbers load from a file (several sort chunks merged) and each is found."""
    import policies.dnc as dnc_module

    path = tmp_path / "dnc.txt"
    numbers = [f"+86138{i:08d}" for i in range(100_000)]
    path.write_text("\n".join(reversed(numbers)) + "\n", encoding="utf-8")
    old_chunk = dnc_module._CHUNK
    dnc_module._CHUNK = 30_000  # force the k-way merge path
    try:
        dnc_list, report = load_dnc_file(path, "big", "CN")
    finally:
        dnc_module._CHUNK = old_chunk
    assert 100_000 == len(dnc_list) == report.loaded
    assert 800_000 == dnc_list.nbytes
    assert all(n in dnc_list for n in numbers[::997])
    assert "+8613900000000" not in dnc_list


def test_registry_internal_entry_carries_reason() -> None:
    """Opt-outs and complaints are found with their source."""
    registry = DncRegistry("CN")
    registry.add("+8613812345678", DncSource.COMPLAINT, NOW, "called twice")
    entry = registry.lookup("+8613812345678")
    assert entry is not None
    assert ("internal", DncSource.COMPLAINT) == (entry.list_name, entry.source)
    assert registry.remove("+8613812345678")
    assert registry.lookup("+8613812345678") is None


def test_registry_refuses_non_e164() -> None:
    """The internal list only takes E.164 numbers."""
    with pytest.raises(ValueError, match=r"E\.164"):
        DncRegistry().add("13812345678", DncSource.OPT_OUT)


def test_reload_swaps_atomically(tmp_path: Path) -> None:
    """Readers during a reload see the complete old or the complete new list, never none."""
    old_path, new_path = tmp_path / "old.txt", tmp_path / "new.txt"
    old_path.write_text("\n".join(f"+86138{i:08d}" for i in range(50_000)), encoding="utf-8")
    new_path.write_text(
        "\n".join(f"+86138{i:08d}" for i in range(25_000, 75_000)), encoding="utf-8"
    )
    registry = DncRegistry("CN")
    registry.load(old_path, "national")
    probe = "+8613800030000"  # on both lists
    misses: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if registry.lookup(probe) is None:
                misses.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            registry.load(new_path, "national")
            registry.load(old_path, "national")
    finally:
        stop.set()
        thread.join()
    assert [] == misses
    registry.load(new_path, "national")
    assert registry.lookup("+8613800070000") is not None
    assert registry.lookup("+8613800000001") is None


def test_failed_reload_keeps_old_list(tmp_path: Path) -> None:
    """A reload that cannot read its file leaves the list in force untouched."""
    path = tmp_path / "l.txt"
    path.write_text("+8613812345678\n", encoding="utf-8")
    registry = DncRegistry("CN")
    registry.load(path, "national")
    with pytest.raises(OSError):
        registry.load(tmp_path / "missing.txt", "national")
    assert registry.lookup("+8613812345678") is not None
    assert {"national": 1, "internal": 0} == registry.list_sizes()


def test_drop_list() -> None:
    """Dropping an imported list removes its numbers."""
    registry = DncRegistry("CN")
    registry.install(DncList.from_numbers("x", ["+8613812345678"]))
    assert registry.drop("x")
    assert not registry.drop("x")
    assert registry.lookup("+8613812345678") is None


def test_policy_rejects_listed_number() -> None:
    """A listed destination is refused 403 dnc; others pass."""
    registry = DncRegistry("CN")
    registry.install(DncList.from_numbers("national", ["+8613812345678"]))
    policy = DncPolicy(registry)
    decision = policy(ctx("13812345678"), NOW)
    assert decision is not None
    assert (403, RejectReason.DNC) == (decision.sip_code, decision.reason)
    assert 'SIP;cause=403;text="dnc"' == decision.reason_header
    assert policy(ctx("13912345678"), NOW) is None


def test_policy_propagates_store_failure() -> None:
    """A lookup that cannot answer raises StoreUnavailableError (fail closed in the pipeline)."""

    class Down:
        def lookup(self, e164: str) -> None:
            raise StoreUnavailableError("sqlite locked")

    with pytest.raises(StoreUnavailableError):
        DncPolicy(Down())(ctx("13812345678"), NOW)


def test_e164_lines_skip_phonenumbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines already in E.164 never reach phonenumbers; only odd lines do."""
    import policies.dnc as dnc_module

    calls: list[str] = []
    real = dnc_module._normalize_slow

    def counting(text: str, region: str) -> int | str:
        calls.append(text)
        return real(text, region)

    monkeypatch.setattr(dnc_module, "_normalize_slow", counting)
    lines = [f"+86138{i:08d}" for i in range(1000)] + ["139 1234 5678"]
    dnc_list, _ = load_dnc_lines(lines, "l", "CN")
    assert 1001 == len(dnc_list)
    assert ["139 1234 5678"] == calls


def test_line_numbers_count_blank_and_comment_lines() -> None:
    """Reported line numbers are file line numbers, blank and comment lines included."""
    lines = ["", "# exported 2026-06-01", "number", "", "+8613812345678", "bad"]
    _, report = load_dnc_lines(lines, "l", "CN")
    assert [6] == [e.line for e in report.errors]
    _, plain = load_dnc_lines(["", "", "+8613812345678", "x"], "l", "CN")
    assert [4] == [e.line for e in plain.errors]


def test_bad_line_details_are_capped() -> None:
    """Every bad line is counted; only the first MAX_REPORTED_ERRORS are kept in detail."""
    from policies.dnc import MAX_REPORTED_ERRORS

    lines = ["junk"] * (MAX_REPORTED_ERRORS + 5)
    _, report = load_dnc_lines(lines, "l", "CN")
    assert (MAX_REPORTED_ERRORS + 5, MAX_REPORTED_ERRORS) == (report.bad_lines, len(report.errors))
