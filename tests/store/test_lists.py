"""Consent, internal DNC and complaints tables."""

from __future__ import annotations

from gateway.store import Complaint, SQLiteStore

from .conftest import T0

N = "+8613811110001"


def test_consent_for_campaign_and_global(store: SQLiteStore) -> None:
    """Campaign consent covers that campaign only; a global grant covers all."""
    store.add_consent(N, T0, campaign="spring")
    assert store.has_consent(N, T0 + 1, campaign="spring")
    assert not store.has_consent(N, T0 + 1, campaign="autumn")
    store.add_consent(N, T0 + 2)
    assert store.has_consent(N, T0 + 3, campaign="autumn")


def test_consent_expires_and_can_be_revoked(store: SQLiteStore) -> None:
    """Expired or revoked consent no longer counts; renewing restores it."""
    store.add_consent(N, T0, expires_at=T0 + 100)
    assert store.has_consent(N, T0 + 99)
    assert not store.has_consent(N, T0 + 100)
    store.add_consent(N, T0 + 200)
    assert 1 == store.revoke_consent(N, T0 + 300)
    assert not store.has_consent(N, T0 + 301)
    store.add_consent(N, T0 + 400)
    assert store.has_consent(N, T0 + 401)


def test_dnc_add_remove(store: SQLiteStore) -> None:
    """DNC entries are idempotent to add and report whether they existed."""
    assert store.add_dnc(N, T0, source="complaint")
    assert not store.add_dnc(N, T0 + 1)
    assert store.is_dnc(N)
    assert store.remove_dnc(N)
    assert not store.remove_dnc(N)
    assert not store.is_dnc(N)


def test_complaints_by_card(store: SQLiteStore) -> None:
    """Complaints are kept with card and call for appeal evidence."""
    first = Complaint(N, T0, card="c1", call_id="k1", note="rude")
    second = Complaint("+8613811110002", T0 + 5, card="c2")
    store.add_complaint(first)
    store.add_complaint(second)
    assert [first] == store.complaints(card="c1")
    assert [first, second] == store.complaints()
    assert [second] == store.complaints(since=T0 + 1)
