"""The error hierarchy: every class carries the status a server answers with."""

from __future__ import annotations

import pytest

from gateway.sip import (
    REASON_PHRASES,
    AuthError,
    BadExtension,
    MessageTooLarge,
    NotAcceptable,
    ParseError,
    SIPError,
    TooManyHops,
    TransactionError,
    UnsupportedURIScheme,
    VersionNotSupported,
)


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (SIPError, 400),
        (ParseError, 400),
        (VersionNotSupported, 505),
        (UnsupportedURIScheme, 416),
        (TooManyHops, 483),
        (MessageTooLarge, 513),
        (BadExtension, 420),
        (NotAcceptable, 406),
        (AuthError, 400),
        (TransactionError, 500),
    ],
)
def test_default_status_and_phrase(cls: type[SIPError], status: int) -> None:
    """Each class has its status code and the standard reason phrase for it."""
    err = cls("detail")
    assert (status, REASON_PHRASES[status]) == (err.status_code, err.reason_phrase)
    assert isinstance(err, SIPError)
    assert [] == err.extra_headers


def test_status_override_picks_matching_phrase() -> None:
    """Overriding status_code also picks that code's phrase unless one is given."""
    err = ParseError("no such user", status_code=404)
    assert (404, "Not Found") == (err.status_code, err.reason_phrase)
    custom = SIPError("busy", status_code=486, reason_phrase="Busy Here Now")
    assert "Busy Here Now" == custom.reason_phrase
    unknown = SIPError("odd", status_code=499)
    assert (499, "") == (unknown.status_code, unknown.reason_phrase)
    assert "ParseError('no such user', status_code=404)" == repr(err)
    assert "no such user" == str(err)


def test_extra_headers_are_copied() -> None:
    """extra_headers is an independent list (callers may reuse theirs)."""
    mine = [("Retry-After", "5")]
    err = SIPError("later", status_code=503, extra_headers=mine)
    mine.append(("X", "y"))
    assert [("Retry-After", "5")] == err.extra_headers
    assert "Service Unavailable" == err.reason_phrase
