"""``policies.consent.parse_consent_csv`` on unreadable lines: reported by number, never raised.

(Lives here because this change's owner owns policies/consent.py but not
tests/policies; the leads a rehearsal grants consent to come through the
same import in production.)
"""

from __future__ import annotations

import csv

import pytest

from policies.consent import parse_consent_csv

HEADER = "number,campaign,granted_at,expires_at,source,evidence\n"


def _row(number: str, evidence: str) -> str:
    return f"{number},spring,2026-01-01T00:00:00Z,,web,{evidence}"


def test_lone_cr_inside_a_line_is_that_lines_error() -> None:
    """A stray CR makes its own line bad (by number); the lines around it are kept."""
    text = (
        HEADER
        + _row("13812345678", "form-1")
        + "\n"
        + _row("1391234\r5678", "form-2")
        + "\n"
        + _row("13712345678", "form-3")
        + "\n"
    )
    report = parse_consent_csv(text, "CN")
    assert [3] == [e.line for e in report.errors]
    assert "carriage return" in report.errors[0].error
    assert "5678" not in report.errors[0].error  # the number is not echoed
    assert ["+8613812345678", "+8613712345678"] == [r.number for r in report.records]
    assert ["form-1", "form-3"] == [r.evidence for r in report.records]


def test_lone_cr_lines_keep_later_line_numbers_right() -> None:
    """Line numbers after a bad line, and after other bad lines, are the file's own."""
    text = (
        HEADER
        + _row("13812345678", "a\rb")  # line 2: CR inside an unquoted field
        + "\n"
        + _row("hello", "x")  # line 3: not a number
        + "\n"
        + _row("13712345678", "c")  # line 4: good
        + "\n"
        + _row("13612345678\r", "d")  # line 5: CR before a separator
        + "\n"
        + _row("13512345678", "e")  # line 6: good, stray CRs only before its LF
        + "\r\r\n"
    )
    report = parse_consent_csv(text, "CN")
    assert [2, 3, 5] == [e.line for e in report.errors]
    assert ["+8613712345678", "+8613512345678"] == [r.number for r in report.records]


def test_crlf_line_ends_and_a_quoted_cr_are_fine() -> None:
    """CRLF files import as usual; a CR inside a quoted field is data, not an error."""
    text = (
        HEADER.replace("\n", "\r\n")
        + _row("13812345678", "f1")
        + "\r\n"
        + _row("13912345678", '"multi\rpart"')
        + "\r\n"
        + _row("13712345678", "f3")  # last line without a line end
    )
    report = parse_consent_csv(text, "CN")
    assert [] == report.errors
    assert ["f1", "multi\rpart", "f3"] == [r.evidence for r in report.records]


def test_lone_cr_in_the_header_is_a_line_1_error() -> None:
    """A header the csv module cannot read is reported on line 1, nothing imported."""
    report = parse_consent_csv("num\rber,granted_at\n13812345678,2026-01-01T00:00:00Z\n", "CN")
    assert [1] == [e.line for e in report.errors]
    assert [] == report.records


@pytest.mark.parametrize(
    ("junk", "bad"),
    [("\r", []), ("\r\r", []), ("x\ry", [3]), ("\rx", [3]), ('"x"\r,y', [3])],
)
def test_parse_never_raises_csv_error(junk: str, bad: list[int]) -> None:
    """Whatever the stray CRs, the parser answers with a report (CRs alone: a blank line)."""
    text = HEADER + _row("13812345678", "ok") + "\n" + junk + "\n" + _row("13712345678", "ok2")
    try:
        report = parse_consent_csv(text, "CN")
    except csv.Error as exc:  # pragma: no cover - the failure being tested
        pytest.fail(f"csv.Error escaped: {exc}")
    assert ["+8613812345678", "+8613712345678"] == [r.number for r in report.records]
    assert bad == [e.line for e in report.errors]
