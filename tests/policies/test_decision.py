"""Tests for the Decision type and the Reason header rendering."""

from __future__ import annotations

import pytest

from policies.decision import REASON_SIP_CODES, Decision, RejectReason, reason_header
from policies.errors import AddressIncompleteError, StoreUnavailableError


def test_reason_texts_match_design_table() -> None:
    """Reason texts are the exact strings of DESIGN.md's outcome table."""
    expected = {
        "dnc",
        "no-consent",
        "calling-hours",
        "frequency-cap",
        "agent-limit",
        "destination-blocked",
        "no-card-available",
        "store-unavailable",
        "address-incomplete",
    }
    assert expected == {str(r) for r in RejectReason}


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (RejectReason.DNC, 403),
        (RejectReason.NO_CONSENT, 403),
        (RejectReason.CALLING_HOURS, 403),
        (RejectReason.FREQUENCY_CAP, 403),
        (RejectReason.AGENT_LIMIT, 403),
        (RejectReason.DESTINATION_BLOCKED, 403),
        (RejectReason.NO_CARD_AVAILABLE, 503),
        (RejectReason.STORE_UNAVAILABLE, 503),
        (RejectReason.ADDRESS_INCOMPLETE, 484),
    ],
)
def test_reject_takes_sip_code_from_reason(reason: RejectReason, code: int) -> None:
    """Each reason maps to its SIP status code."""
    decision = Decision.reject(reason, "p")
    assert code == decision.sip_code
    assert code == REASON_SIP_CODES[reason]
    assert not decision.allowed


def test_reason_header_form() -> None:
    """The header reads `SIP;cause=403;text="dnc"`."""
    decision = Decision.reject(RejectReason.DNC, "dnc")
    assert 'SIP;cause=403;text="dnc"' == decision.reason_header


def test_reason_header_escapes_quotes() -> None:
    """Quotes inside the text are escaped as a quoted-string requires."""
    assert 'SIP;cause=503;text="a\\"b"' == reason_header(503, 'a"b')


def test_allow_has_no_reason_or_retry_after() -> None:
    """An allow renders no Reason and no Retry-After header."""
    decision = Decision.allow("cards", "c1")
    assert decision.allowed
    assert "c1" == decision.card_id
    assert decision.reason_header is None
    assert decision.retry_after_header is None


def test_retry_after_is_clamped_and_rendered() -> None:
    """Negative Retry-After values become 0; the header is whole seconds."""
    assert (
        "0" == Decision.reject(RejectReason.CALLING_HOURS, "h", retry_after=-5).retry_after_header
    )
    assert (
        "120"
        == Decision.reject(RejectReason.FREQUENCY_CAP, "f", retry_after=120).retry_after_header
    )


def test_errors_carry_status_codes_and_decisions() -> None:
    """Policy errors carry the SIP status and convert to the matching rejection."""
    assert 484 == AddressIncompleteError("x").status_code
    assert 503 == StoreUnavailableError("down").status_code
    decision = StoreUnavailableError("down").to_decision("dnc", retry_after=30)
    assert (503, RejectReason.STORE_UNAVAILABLE, 30) == (
        decision.sip_code,
        decision.reason,
        decision.retry_after,
    )
