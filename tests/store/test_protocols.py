"""One store protocol: every backend satisfies it, and the memory backend means what SQLite means.

The same script of operations runs against ``SQLiteStore(":memory:")`` and
``MemoryStore``; every answer the layers above read must be equal.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.store import (
    CallDialogs,
    CardRepository,
    Complaint,
    QuotaExceeded,
    RegistrationStore,
    ReservationError,
    SQLiteStore,
    StoredCard,
    StoredRegistration,
    StoreUnavailable,
    TransitionRecord,
    UsageLedger,
)
from gateway.store.memory import MemoryStore
from policies.quotas import QuotaProfile

T0 = 1_700_000_000.0
TZ = {"carrier-a": "Asia/Shanghai", "carrier-b": "UTC"}
CARDS = ("c1", "c2", "c3")
CALLEES = tuple(f"+86138111100{i:02d}" for i in range(6))
PROFILES = (
    QuotaProfile(name="rate", concurrent=3, calls_per_minute=2, calls_per_hour=20),
    QuotaProfile(
        name="shape",
        concurrent=2,
        calls_per_day=60,
        distinct_callees_per_day=5,
        answer_rate_floor=0.3,
        short_call_ceiling=0.5,
        rate_min_sample=3,
        consecutive_failures=3,
        talk_minutes_per_day=30,
    ),
)


def _backends() -> list[Any]:
    return [
        SQLiteStore(":memory:", carrier_timezones=TZ, outcome_window=5),
        MemoryStore(carrier_timezones=TZ, outcome_window=5),
    ]


def _seed(store: Any) -> None:
    for i, card in enumerate(CARDS):
        carrier = "carrier-b" if card == "c3" else "carrier-a"
        store.upsert_card(StoredCard(card, carrier, f"+86138000000{i}", "main", i, since=T0))


def test_every_backend_satisfies_its_protocols() -> None:
    """Runtime check of the method sets (mypy checks the signatures in each backend)."""
    for store in _backends():
        assert isinstance(store, UsageLedger)
        assert isinstance(store, CardRepository)
        assert isinstance(store, RegistrationStore)


def _script(store: Any, seed: int) -> list[Any]:
    """A random day of reservations, releases and finishes; what the readers saw."""
    rng = random.Random(seed)
    _seed(store)
    seen: list[Any] = []
    open_calls: list[str] = []
    now = T0
    for n in range(300):
        now += rng.choice((0.5, 3.0, 20.0, 200.0, 4000.0))
        op = rng.random()
        if op < 0.5 or not open_calls:
            call_id = f"call-{n}"
            card = rng.choice(CARDS)
            try:
                store.reserve(
                    card,
                    call_id,
                    rng.choice(CALLEES),
                    now,
                    profile=rng.choice((*PROFILES, None)),
                    agent=rng.choice(("alice", "bob")),
                )
                open_calls.append(call_id)
                seen.append(("reserved", call_id, card))
            except QuotaExceeded as exc:
                seen.append(("refused", call_id, exc.exhausted.limit))
        elif op < 0.65:
            call_id = open_calls.pop(rng.randrange(len(open_calls)))
            seen.append(("release", store.release(call_id, now, failed=rng.random() < 0.5)))
        else:
            call_id = open_calls.pop(rng.randrange(len(open_calls)))
            answered = rng.random() < 0.6
            talk = rng.choice((2.0, 30.0, 300.0)) if answered else 0.0
            seen.append(
                ("finish", store.finish(call_id, now, answered=answered, talk_seconds=talk))
            )
        if n % 7 == 0:
            store.add_complaint(Complaint(rng.choice(CALLEES), now, call_id=f"call-{n - 1}"))
        if n == 150:
            seen.append(("recover", store.recover(now)))
            open_calls.clear()
        for card in CARDS:
            seen.append(("usage", card, store.card_usage(card, now)))
        callee = rng.choice(CALLEES)
        seen.append(("attempts", store.attempts(callee, now - 86400.0)))
        seen.append(("answers", store.answers(callee, now - 86400.0)))
        seen.append(("agent", store.agent_usage("alice", now, window=3600.0)))
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_memory_ledger_answers_what_sqlite_answers(seed: int) -> None:
    sqlite, memory = _backends()
    assert _script(sqlite, seed) == _script(memory, seed)


def test_memory_reservations_are_write_ahead_like_sqlite() -> None:
    """A call holds one reservation at a time and never tries a card twice."""
    for store in _backends():
        _seed(store)
        store.reserve("c1", "x", CALLEES[0], T0)
        with pytest.raises(ReservationError):
            store.reserve("c2", "x", CALLEES[0], T0)
        assert "c1" == store.release("x", T0 + 1)
        with pytest.raises(ReservationError):
            store.reserve("c1", "x", CALLEES[0], T0 + 2)
        store.reserve("c2", "x", CALLEES[0], T0 + 2)
        assert None is store.release("nothing", T0 + 3)


def test_memory_lookups_cards_and_records_match_sqlite() -> None:
    def run(store: Any) -> list[Any]:
        _seed(store)
        at = datetime.fromtimestamp(T0 + 5, UTC)
        n = CALLEES[0]
        store.add_consent(n, T0, campaign="spring", source="form", evidence="f-1")
        out: list[Any] = [store.consent_status(n, "spring", at)]
        out.append(store.revoke_consent(n, T0 + 1))
        out.append(store.consent_status(n, "spring", at))
        out.append(store.revoke_consent(CALLEES[1], T0 + 1, campaign="autumn"))
        out.append(store.consent_status(CALLEES[1], "autumn", at))
        out.append((store.add_dnc(n, T0, source="complaint"), store.add_dnc(n, T0)))
        out.append(store.add_dncs([CALLEES[2], CALLEES[3], CALLEES[2]], T0, source="import"))
        out.append((store.lookup(n), store.lookup(CALLEES[4]), store.remove_dnc(n)))
        out.append(store.lookup(n))
        out.append((store.number_reset_at(n), store.reset_number(n, T0, actor="op", reason="r")))
        out.append(store.number_reset_at(n))
        card = store.load_cards()[0]
        suspended = StoredCard(**{**_fields(card), "state": "suspended", "reason": "manual"})
        store.save_transition(
            suspended, TransitionRecord("c1", T0 + 2, "active", "suspended", "manual", "op")
        )
        out.append((store.load_cards(), store.get_card("c1"), store.transitions("c1")))
        out.append(store.upsert_card(StoredCard("c1", "carrier-b", "+1", "spare", 9)))
        with pytest.raises(LookupError):
            store.save_transition(
                StoredCard("zz", "carrier-a", "+2", "main"),
                TransitionRecord("zz", T0, "active", "suspended", None, "x"),
            )
        out.append((store.set_agent_paused("bob", True, T0, reason="complaints", until=T0 + 60),))
        out.append((store.agent_pauses(), store.agent_usage("bob", T0, window=0)))
        out.append(store.set_agent_paused("bob", False, T0 + 1))
        store.save_agent_binding("bob", "c2", configured="c1", now=T0)
        out.append(store.agent_bindings())
        store.save_agent_binding("bob", None, configured="c1", now=T0)
        out.append(store.agent_bindings())
        store.add_complaint(Complaint(n, T0 + 3, card="c1", call_id="k", note="rude"))
        out.append((store.complaints(), store.complaints(card="c2")))
        record = CallRecord(
            call_id="k", attempt_at=T0, destination=n, outcome=Outcome.ANSWERED, final_code=200
        )
        store.add_cdrs([record])
        out.append((store.cdrs(call_id="k"), store.cdrs(since=T0 + 1), store.cdrs(destination=n)))
        store.save_call_dialogs(CallDialogs("k1", "k", "c1", n, T0))
        out.append(store.update_call_dialog_leg("k1", "b", {"tag": "t"}))
        out.append((store.update_call_dialog_leg("none", "a", {}), store.call_dialogs()))
        answered = store.answer_call_dialogs(
            "k1", answer_at=T0 + 2, a_leg=None, b_leg={"tag": "u"}, cdr="{}"
        )
        missing = store.answer_call_dialogs("none", answer_at=T0 + 2, a_leg={}, b_leg={}, cdr="{}")
        out.append((answered, missing, store.call_dialogs()))
        out.append((store.delete_call_dialogs("k1"), store.delete_call_dialogs("k1")))
        reg = StoredRegistration("alice", "sip:a@h", T0 + 60, "cid", 1, "10.0.0.1", 5060, "udp")
        store.save_registrations("alice", [reg], T0, node="gw1")
        out.append((store.load_registrations(T0, node="gw1"), store.load_registrations(T0)))
        out.append(store.load_registrations(T0 + 61, node="gw1"))
        return out

    sqlite, memory = _backends()
    assert run(sqlite) == run(memory)


def _fields(card: StoredCard) -> dict[str, Any]:
    return {name: getattr(card, name) for name in card.__slots__}


def test_memory_store_down_fails_closed() -> None:
    store = MemoryStore()
    _seed(store)
    store.down = True
    for call in (
        lambda: store.reserve("c1", "x", CALLEES[0], T0),
        lambda: store.card_usage("c1", T0),
        lambda: store.load_cards(),
        lambda: store.lookup(CALLEES[0]),
        lambda: store.call_dialogs(),
    ):
        with pytest.raises(StoreUnavailable):
            call()
    store.down = False
    assert 3 == len(store.load_cards())
