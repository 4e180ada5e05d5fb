"""Tests for the consent registry, its CSV import and the consent policy modes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from policies.consent import (
    ConsentMode,
    ConsentPolicy,
    ConsentRecord,
    ConsentRegistry,
    ConsentStatus,
    parse_consent_csv,
)
from policies.decision import RejectReason
from policies.errors import StoreUnavailableError
from tests.policies.helpers import ctx, utc

NUMBER = "+8613812345678"
NOW = utc(2026, 6, 1, 4, 0)


def _registry(*records: ConsentRecord) -> ConsentRegistry:
    registry = ConsentRegistry()
    for record in records:
        registry.grant(record)
    return registry


def test_valid_consent_for_campaign() -> None:
    """A grant for the campaign, inside its validity, is GRANTED."""
    registry = _registry(ConsentRecord(NUMBER, "spring", utc(2026, 1, 1), utc(2027, 1, 1)))
    assert ConsentStatus.GRANTED == registry.consent_status(NUMBER, "spring", NOW)[0]
    assert ConsentStatus.NONE == registry.consent_status(NUMBER, "autumn", NOW)[0]


def test_all_campaign_consent_covers_any_campaign() -> None:
    """A grant with campaign None covers every campaign."""
    registry = _registry(ConsentRecord(NUMBER, None, utc(2026, 1, 1)))
    assert ConsentStatus.GRANTED == registry.consent_status(NUMBER, "autumn", NOW)[0]


def test_expiry_edge() -> None:
    """Consent is valid up to, and not at, its expiry instant."""
    expires = utc(2026, 6, 1, 4, 0)
    registry = _registry(ConsentRecord(NUMBER, None, utc(2026, 1, 1), expires))
    assert (
        ConsentStatus.GRANTED
        == registry.consent_status(NUMBER, "x", expires - timedelta(seconds=1))[0]
    )
    assert ConsentStatus.EXPIRED == registry.consent_status(NUMBER, "x", expires)[0]


def test_future_grant_is_not_consent_yet() -> None:
    """A grant dated after now does not count yet."""
    registry = _registry(ConsentRecord(NUMBER, None, utc(2026, 7, 1)))
    assert ConsentStatus.NONE == registry.consent_status(NUMBER, "x", NOW)[0]


def test_revocation_ends_consent_and_regrant_restores() -> None:
    """A revocation ends consent from its instant; a later grant restores it."""
    registry = _registry(ConsentRecord(NUMBER, None, utc(2026, 1, 1)))
    assert 1 == registry.revoke(NUMBER, utc(2026, 5, 1))
    assert ConsentStatus.GRANTED == registry.consent_status(NUMBER, "x", utc(2026, 4, 30))[0]
    assert ConsentStatus.REVOKED == registry.consent_status(NUMBER, "x", NOW)[0]
    registry.grant(ConsentRecord(NUMBER, None, utc(2026, 5, 20), source="web"))
    status, record = registry.consent_status(NUMBER, "x", NOW)
    assert ConsentStatus.GRANTED == status
    assert record is not None
    assert "web" == record.source


def test_campaign_revocation_keeps_other_campaigns() -> None:
    """Revoking one campaign leaves an all-campaign grant valid for the others."""
    registry = _registry(ConsentRecord(NUMBER, None, utc(2026, 1, 1)))
    registry.revoke(NUMBER, utc(2026, 5, 1), campaign="spring")
    assert ConsentStatus.REVOKED == registry.consent_status(NUMBER, "spring", NOW)[0]
    assert ConsentStatus.GRANTED == registry.consent_status(NUMBER, "autumn", NOW)[0]


def test_require_consent_mode() -> None:
    """require-consent rejects 403 no-consent without a valid grant."""
    registry = _registry(ConsentRecord("+8613912345678", None, utc(2026, 1, 1)))
    policy = ConsentPolicy(registry, ConsentMode.REQUIRE_CONSENT)
    decision = policy(ctx("13812345678"), NOW)
    assert decision is not None
    assert (403, RejectReason.NO_CONSENT, "no consent on record") == (
        decision.sip_code,
        decision.reason,
        decision.detail,
    )
    assert policy(ctx("13912345678"), NOW) is None


def test_require_consent_reports_expiry() -> None:
    """An expired grant is refused with detail 'consent expired'."""
    registry = _registry(ConsentRecord(NUMBER, None, utc(2025, 1, 1), utc(2026, 1, 1)))
    decision = ConsentPolicy(registry, ConsentMode.REQUIRE_CONSENT)(ctx(NUMBER), NOW)
    assert decision is not None
    assert "consent expired" == decision.detail


def test_dnc_only_mode_allows_unknown_but_honours_revocation() -> None:
    """dnc-only does not need consent, but a callee who revoked is not re-dialled."""
    registry = ConsentRegistry()
    policy = ConsentPolicy(registry, ConsentMode.DNC_ONLY)
    assert policy(ctx(NUMBER), NOW) is None
    registry.revoke(NUMBER, utc(2026, 5, 1), source="said no on call")
    decision = policy(ctx(NUMBER), NOW)
    assert decision is not None
    assert ("consent revoked", RejectReason.NO_CONSENT) == (decision.detail, decision.reason)


def test_store_failure_propagates() -> None:
    """A lookup that cannot answer raises, so the pipeline fails closed."""

    class Down:
        def consent_status(self, e164: str, campaign: str | None, now: object) -> object:
            raise StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        ConsentPolicy(Down(), ConsentMode.REQUIRE_CONSENT)(ctx(NUMBER), NOW)  # type: ignore[arg-type]


def test_csv_import_with_line_errors() -> None:
    """Good rows become records; bad rows are reported by their line number."""
    text = (
        "number,campaign,granted_at,expires_at,source,evidence\n"
        "13812345678,spring,2026-01-01T00:00:00+08:00,2027-01-01T00:00:00Z,web,form-1\n"
        "hello,spring,2026-01-01T00:00:00Z,,web,form-2\n"
        "13912345678,*,2026-01-01T00:00:00,,web,form-3\n"
        "13712345678,,2026-02-01T00:00:00Z,2026-01-01T00:00:00Z,web,form-4\n"
        "13612345678,,2026-02-01T00:00:00Z,,call,rec-5\n"
    )
    report = parse_consent_csv(text, "CN")
    assert [3, 4, 5] == [e.line for e in report.errors]
    assert ["+8613812345678", "+8613612345678"] == [r.number for r in report.records]
    first = report.records[0]
    assert ("spring", utc(2025, 12, 31, 16, 0), "form-1") == (
        first.campaign,
        first.granted_at,
        first.evidence,
    )
    assert report.records[1].campaign is None


def test_csv_import_needs_header() -> None:
    """A file without number/granted_at columns is one error on line 1."""
    report = parse_consent_csv("a,b\n1,2\n", "CN")
    assert [1] == [e.line for e in report.errors]
    assert [] == report.records
