"""Consent registry and the consent policy.

A consent record says that a callee agreed to be called: for one campaign or
for all (`campaign=None`), from `granted_at` until `expires_at` (or without
end), with its `source` (web form, call recording, contract…) and an
`evidence` reference an appeal can point to. A revocation ends it.

Modes (`[policy] consent`):
- `require-consent`: no valid consent on record → 403 `no-consent`;
- `dnc-only`: consent is not required, but an explicit revocation (the
  callee said no) still rejects 403 `no-consent` for the revoked scope, so
  nobody re-dials a callee who refused.

Failure mode: fails closed — a lookup raising `StoreUnavailableError` makes
the pipeline answer 503 store-unavailable; a record with an unknown or
unparseable time never counts as valid. This module must never read a
clock (`now` is passed in) nor log an unmasked number or evidence content.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from threading import Lock
from typing import Protocol, runtime_checkable

from policies.context import CallContext, normalize
from policies.decision import Decision, RejectReason
from policies.dnc import LineError
from policies.errors import AddressIncompleteError
from policies.timeutil import as_utc

__all__ = [
    "ConsentImportReport",
    "ConsentLookup",
    "ConsentMode",
    "ConsentPolicy",
    "ConsentRecord",
    "ConsentRegistry",
    "ConsentStatus",
    "parse_consent_csv",
]


class ConsentMode(StrEnum):
    """How the consent policy treats numbers without a record (``[policy] consent``)."""

    DNC_ONLY = "dnc-only"
    REQUIRE_CONSENT = "require-consent"


class ConsentStatus(StrEnum):
    """State of consent for (number, campaign) at one instant."""

    GRANTED = "granted"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One consent: who, for what campaign (None = all), when, from where, with what evidence."""

    number: str
    campaign: str | None
    granted_at: datetime
    expires_at: datetime | None = None
    source: str = ""
    evidence: str = ""
    revoked_at: datetime | None = None

    def covers(self, campaign: str | None) -> bool:
        """Whether the record's scope includes `campaign`."""
        return self.campaign is None or self.campaign == campaign

    def status(self, now: datetime) -> ConsentStatus:
        """GRANTED, REVOKED or EXPIRED at `now` (a future grant is NONE)."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return ConsentStatus.REVOKED
        if self.granted_at > now:
            return ConsentStatus.NONE
        if self.expires_at is not None and self.expires_at <= now:
            return ConsentStatus.EXPIRED
        return ConsentStatus.GRANTED


@runtime_checkable
class ConsentLookup(Protocol):
    """What the consent policy reads; the gateway's store implements it.

    Raises `StoreUnavailableError` when it cannot answer.
    """

    def consent_status(
        self, e164: str, campaign: str | None, now: datetime
    ) -> tuple[ConsentStatus, ConsentRecord | None]:
        """Status for (number, campaign) at `now`, with the deciding record if any."""
        ...


def resolve_status(
    records: Iterable[ConsentRecord], campaign: str | None, now: datetime
) -> tuple[ConsentStatus, ConsentRecord | None]:
    """Combine the records of one number: a valid grant wins over a revocation made before it.

    A revocation at or after the latest grant of the same scope wins (the
    callee said no after agreeing). With no grant and no revocation: NONE,
    or EXPIRED when only expired grants exist.
    """
    best: tuple[ConsentStatus, ConsentRecord | None] = (ConsentStatus.NONE, None)
    latest_revocation: ConsentRecord | None = None
    for record in records:
        if not record.covers(campaign):
            continue
        status = record.status(now)
        if status == ConsentStatus.GRANTED:
            if best[0] != ConsentStatus.GRANTED or (
                best[1] is not None and record.granted_at > best[1].granted_at
            ):
                best = (status, record)
        elif status == ConsentStatus.REVOKED:
            assert record.revoked_at is not None
            if latest_revocation is None or (
                latest_revocation.revoked_at is not None
                and record.revoked_at > latest_revocation.revoked_at
            ):
                latest_revocation = record
        elif status == ConsentStatus.EXPIRED and best[0] == ConsentStatus.NONE:
            best = (status, record)
    if latest_revocation is not None:
        grant = best[1] if best[0] == ConsentStatus.GRANTED else None
        assert latest_revocation.revoked_at is not None
        if grant is None or grant.granted_at <= latest_revocation.revoked_at:
            return ConsentStatus.REVOKED, latest_revocation
    return best


class ConsentRegistry:
    """In-memory `ConsentLookup` for tests and the simulator: number → records."""

    def __init__(self) -> None:
        self._records: dict[str, list[ConsentRecord]] = {}
        self._lock = Lock()

    def __len__(self) -> int:
        return sum(len(v) for v in self._records.values())

    def grant(self, record: ConsentRecord) -> None:
        """Add a consent record."""
        with self._lock:
            self._records.setdefault(record.number, []).append(record)

    def revoke(self, e164: str, at: datetime, campaign: str | None = None, source: str = "") -> int:
        """Revoke consent for a campaign (None = all campaigns) at `at`; returns records touched.

        A revocation without a matching grant is still recorded, so that
        `dnc-only` mode honours the callee's refusal.
        """
        at = as_utc(at)
        touched = 0
        with self._lock:
            records = self._records.setdefault(e164, [])
            for i, record in enumerate(records):
                if record.revoked_at is None and (campaign is None or record.campaign == campaign):
                    records[i] = replace(record, revoked_at=at)
                    touched += 1
            records.append(
                ConsentRecord(e164, campaign, at, None, source or "revocation", "", revoked_at=at)
            )
        return touched

    def records(self, e164: str) -> Sequence[ConsentRecord]:
        """All records of a number, oldest first."""
        return tuple(self._records.get(e164, ()))

    def consent_status(
        self, e164: str, campaign: str | None, now: datetime
    ) -> tuple[ConsentStatus, ConsentRecord | None]:
        """Status for (number, campaign) at `now`."""
        return resolve_status(self._records.get(e164, ()), campaign, as_utc(now))


@dataclass(slots=True)
class ConsentImportReport:
    """Outcome of a consent import: records read and bad lines with their numbers."""

    records: list[ConsentRecord] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("time without zone offset")
    return as_utc(value)


def _csv_problem(exc: csv.Error) -> str:
    """A csv module error in an operator's words (never the line's content)."""
    message = str(exc)
    if "new-line character seen in unquoted field" in message:
        return "carriage return (CR) inside the line; save the file with LF or CRLF line ends"
    return f"unreadable CSV: {message}"


def parse_consent_csv(text: str, default_region: str) -> ConsentImportReport:
    """Parse consent CSV: `number,campaign,granted_at,expires_at,source,evidence` with a header.

    `campaign` empty or `*` means all campaigns; times are ISO 8601 with an
    offset; `expires_at` may be empty. Bad lines are reported with their
    1-based line number and skipped, also lines the csv module cannot read
    (a lone CR inside an unquoted field, a runaway field): lines end at LF
    (or CRLF), so the numbers are those an editor shows.
    """
    report = ConsentImportReport()
    # newline="\n": a lone CR does not end a line, it stays inside its line and
    # makes only that line unreadable.
    reader = csv.DictReader(io.StringIO(text, newline="\n"))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        report.errors.append(LineError(1, "", f"header: {_csv_problem(exc)}"))
        return report
    if fieldnames is None or not {"number", "granted_at"} <= {
        f.strip().lower() for f in fieldnames
    }:
        report.errors.append(LineError(1, "", "header needs at least number,granted_at"))
        return report
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader drops the rest of the bad line and goes on with the next one.
            # (DictReader.line_num is only updated on success: ask the csv reader.)
            report.errors.append(LineError(reader.reader.line_num, "", _csv_problem(exc)))
            continue
        lineno = reader.line_num
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        try:
            number = normalize(row.get("number", ""), default_region).e164
        except AddressIncompleteError as exc:
            report.errors.append(LineError(lineno, "", f"number: {exc}"))
            continue
        try:
            granted = _parse_time(row.get("granted_at", ""))
            expires_text = row.get("expires_at", "")
            expires = _parse_time(expires_text) if expires_text else None
        except ValueError as exc:
            report.errors.append(LineError(lineno, "", f"time: {exc}"))
            continue
        if expires is not None and expires <= granted:
            report.errors.append(LineError(lineno, "", "expires_at is not after granted_at"))
            continue
        campaign = row.get("campaign", "")
        report.records.append(
            ConsentRecord(
                number=number,
                campaign=None if campaign in ("", "*") else campaign,
                granted_at=granted,
                expires_at=expires,
                source=row.get("source", ""),
                evidence=row.get("evidence", ""),
            )
        )
    return report


@dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """Reject `no-consent` (403) per the mode; fails closed on store errors."""

    lookup: ConsentLookup
    mode: ConsentMode = ConsentMode.DNC_ONLY
    name: str = "consent"
    bypassed_by_emergency: bool = True

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """403 no-consent when consent is required and missing, or was revoked; else no opinion."""
        status, _ = self.lookup.consent_status(ctx.destination, ctx.campaign, now)
        if status == ConsentStatus.REVOKED:
            return Decision.reject(RejectReason.NO_CONSENT, self.name, "consent revoked")
        if self.mode == ConsentMode.REQUIRE_CONSENT and status != ConsentStatus.GRANTED:
            detail = (
                "consent expired" if status == ConsentStatus.EXPIRED else "no consent on record"
            )
            return Decision.reject(RejectReason.NO_CONSENT, self.name, detail)
        return None
