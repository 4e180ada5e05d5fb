"""Running per-card usage counters: always equal to a fresh recount from the rows.

``card_usage`` is served from counters kept beside ``call_starts`` (issue 7:
reading a card's whole day per call was most of the gateway's CPU). These
tests hold them to the rows: after any sequence of reservations, releases and
finishes, across midnight and the hour, after a restart, and when another
connection writes to the same file.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left, bisect_right
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import SQLiteStore, StoredCard
from gateway.store.sqlite import CATCH_UP_MAX
from policies.agent import AgentLimits, AgentLimitsPolicy
from policies.quotas import CardUsage

from .conftest import T0

DAY = 86400.0
MIDNIGHT = (T0 // DAY + 1) * DAY  # the next UTC midnight after T0 (~1h47m later)


def _same(counted: CardUsage, recounted: CardUsage) -> None:
    """Equal usage; talk time compared approximately (sums in another order)."""
    assert counted.call_starts == recounted.call_starts
    assert counted.callees_today == recounted.callees_today
    assert counted.in_use == recounted.in_use
    assert counted.recent_outcomes == recounted.recent_outcomes
    assert counted.talk_seconds_today == pytest.approx(recounted.talk_seconds_today)


def _cards(store: SQLiteStore) -> None:
    store.upsert_card(StoredCard("c1", "carrier-a", "+8613800000001", "main", since=T0))
    store.upsert_card(StoredCard("c2", "carrier-a", "+8613800000002", "main", since=T0))


def test_counters_equal_recount_and_survive_restart(db_path: Path) -> None:
    """Counters match a recount from the rows, and a reopened store rebuilds the same."""
    s = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"}, outcome_window=3)
    _cards(s)
    s.card_usage("c1", T0)  # counters exist before the writes below
    for i in range(8):
        s.reserve("c1", f"k{i}", f"+86138000001{i % 3:02d}", T0 + i)
        if i % 3 == 0:
            s.release(f"k{i}", T0 + i + 0.5, failed=i % 2 == 0)
        elif i % 3 == 1:
            s.finish(f"k{i}", T0 + i + 0.5, answered=True, talk_seconds=1.25 * i)
    counted = s.card_usage("c1", T0 + 20)
    _same(counted, s.recount_card_usage("c1", T0 + 20))
    assert 3 == len(counted.recent_outcomes)
    assert 2 == counted.in_use  # k2 and k5 were left open
    s.close()
    again = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"}, outcome_window=3)
    _same(again.card_usage("c1", T0 + 20), counted)
    again.close()


def test_new_carrier_day_starts_from_zero(store: SQLiteStore) -> None:
    """After the carrier's midnight, yesterday's callees and talk no longer count."""
    store.card_usage("c1", MIDNIGHT - 100)
    store.reserve("c1", "k1", "+8613800000100", MIDNIGHT - 50)
    store.finish("k1", MIDNIGHT - 20, answered=True, talk_seconds=30)
    before = store.card_usage("c1", MIDNIGHT - 1)
    assert (1, 30.0) == (len(before.callees_today), before.talk_seconds_today)
    after = store.card_usage("c1", MIDNIGHT + 1)
    assert (frozenset(), 0.0) == (after.callees_today, after.talk_seconds_today)
    assert (MIDNIGHT - 50,) == after.call_starts  # still within the last hour
    _same(after, store.recount_card_usage("c1", MIDNIGHT + 1))


def test_writes_of_another_connection_are_seen(db_path: Path) -> None:
    """A reservation committed by another process (connection) reaches the counters."""
    a = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"})
    _cards(a)
    a.reserve("c1", "k1", "+8613800000100", T0)
    assert 1 == a.card_usage("c1", T0 + 1).in_use
    b = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"})
    b.reserve("c1", "k2", "+8613800000101", T0 + 2)
    b.finish("k1", T0 + 3, answered=True, talk_seconds=1)
    usage = a.card_usage("c1", T0 + 4)
    assert (1, (T0, T0 + 2)) == (usage.in_use, usage.call_starts)
    _same(usage, a.recount_card_usage("c1", T0 + 4))
    b.close()
    a.close()


def test_recover_and_prune_rebuild_the_counters(store: SQLiteStore) -> None:
    """Orphaned and pruned rows are reflected at once (counters dropped and rebuilt)."""
    store.reserve("c1", "k1", "+8613800000100", T0)
    assert 1 == store.card_usage("c1", T0 + 1).in_use
    store.recover(T0 + 2)
    usage = store.card_usage("c1", T0 + 3)
    assert (0, (T0,)) == (usage.in_use, usage.call_starts)
    assert 1 == store.prune_usage(T0 + 10)
    assert CardUsage() == store.card_usage("c1", T0 + 11)


def test_card_usage_fails_closed_once_the_store_is_gone(db_path: Path) -> None:
    """Counters in memory are never served when the database cannot be reached."""
    s = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"})
    _cards(s)
    s.card_usage("c1", T0)
    s.close()
    from gateway.store import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        s.card_usage("c1", T0 + 1)


def _write(
    s: SQLiteStore, op: str, call_id: str, card_id: str, callee: int, now: float, talk: int
) -> bool:
    """Step ``op`` when it is a write (reserve, release, release-ok, finish) on ``s``:
    whether it was."""
    if op == "reserve":
        # ReservationError (a ValueError): open, or already tried on that card.
        with contextlib.suppress(ValueError):
            s.reserve(card_id, call_id, f"+86138000002{callee:02d}", now)
    elif op == "release":
        s.release(call_id, now)
    elif op == "release-ok":
        s.release(call_id, now, failed=False)
    elif op == "finish":
        s.finish(call_id, now, answered=talk > 10, talk_seconds=talk, failed=talk == 0)
    else:
        return False
    return True


def _still_as_taken(taken: list[tuple[CardUsage, frozenset[str], tuple[float, ...]]]) -> None:
    """Usage handed out earlier still holds what it held then: its day's callees and its
    starts are views of lists the counters went on changing."""
    numbers = [f"+86138000002{callee:02d}" for callee in range(4)]
    for usage, callees, starts in taken:
        view = usage.callees_today
        assert len(view) == len(callees)
        assert [n in view for n in numbers] == [n in callees for n in numbers]
        assert set(view) == callees
        assert usage.call_starts == starts
        assert list(usage.call_starts) == list(starts)
        for t in {*starts, *(t + 0.5 for t in starts)}:
            assert usage.call_starts.bisect_left(t) == bisect_left(starts, t)
            assert usage.call_starts.bisect_right(t) == bisect_right(starts, t)


_step = st.tuples(
    st.sampled_from(["reserve", "release", "release-ok", "finish", "read", "other"]),
    st.integers(0, 7),  # call
    st.integers(0, 1),  # card
    st.integers(0, 3),  # callee
    st.floats(0, 900, allow_nan=False),  # seconds since the previous step
    st.integers(0, 120),  # talk seconds
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_step, max_size=50), window=st.integers(1, 6))
def test_incremental_counters_equal_a_full_recount(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int, int, int, float, int]],
    window: int,
) -> None:
    """Any mix of reserve/release/finish (across the hour and midnight, with another
    connection writing too) leaves counters equal to a recount from the rows, and
    every day's-callees view handed out earlier still holds what it held then."""
    path = tmp_path_factory.mktemp("counters") / "c.db"
    s = SQLiteStore(path, carrier_timezones={"carrier-a": "UTC"}, outcome_window=window)
    other = SQLiteStore(path, carrier_timezones={"carrier-a": "UTC"}, outcome_window=window)
    _cards(s)
    now = MIDNIGHT - 3000.0
    taken: list[tuple[CardUsage, frozenset[str], tuple[float, ...]]] = []
    for op, call, card, callee, gap, talk in steps:
        now += gap
        card_id = f"c{card + 1}"
        call_id = f"k{call}"
        if op == "other":
            other.finish(call_id, now, answered=True, talk_seconds=talk)
        elif not _write(s, op, call_id, card_id, callee, now, talk):
            for c in ("c1", "c2"):
                usage = s.card_usage(c, now)
                _same(usage, s.recount_card_usage(c, now))
                taken.append((usage, frozenset(usage.callees_today), tuple(usage.call_starts)))
    for c in ("c1", "c2"):
        _same(s.card_usage(c, now), s.recount_card_usage(c, now))
    _still_as_taken(taken)
    other.close()
    s.close()


_unordered_step = st.tuples(
    st.sampled_from(["reserve", "release", "release-ok", "finish", "read", "drop"]),
    st.integers(0, 7),  # call
    st.integers(0, 3),  # callee
    st.floats(0, 600, allow_nan=False),  # when, in any order (all within the hour)
    st.integers(0, 120),  # talk seconds
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_unordered_step, max_size=60))
def test_starts_handed_out_stay_as_they_were_whatever_the_order_of_changes(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int, int, float, int]],
) -> None:
    """The counters hand out windows of their list of starts, not copies. Starts that
    arrive out of order, releases and the counters' trim change that list: a window
    still held must keep what it held (a copy is made then), one dropped costs none."""
    path = tmp_path_factory.mktemp("windows") / "c.db"
    s = SQLiteStore(path, carrier_timezones={"carrier-a": "UTC"})
    _cards(s)
    taken: list[tuple[CardUsage, frozenset[str], tuple[float, ...]]] = []
    latest = T0
    for op, call, callee, at, talk in steps:
        now = T0 + at
        latest = max(latest, now)
        if op == "drop":
            taken.clear()  # no reader left: the next change is made in place
        elif not _write(s, op, f"k{call}", "c1", callee, now, talk):
            usage = s.card_usage("c1", latest)
            _same(usage, s.recount_card_usage("c1", latest))
            taken.append((usage, frozenset(usage.callees_today), tuple(usage.call_starts)))
    _same(s.card_usage("c1", latest), s.recount_card_usage("c1", latest))
    _still_as_taken(taken)
    s.close()


def test_a_start_after_the_last_is_appended_to_the_list_windows_read(store: SQLiteStore) -> None:
    """Taking a card's usage copies none of its starts: a later start is appended to the
    list the earlier window reads (past that window's end); a release copies the list
    only while a window of it is still held."""
    store.reserve("c1", "k1", "+8613800000100", T0)
    first = store.card_usage("c1", T0 + 1).call_starts
    store.reserve("c1", "k2", "+8613800000101", T0 + 2)
    second = store.card_usage("c1", T0 + 3).call_starts
    assert ((T0,), (T0, T0 + 2)) == (first, second)
    assert first._items is second._items  # one list, two windows of it
    store.release("k2", T0 + 4)  # first and second are held: the counters copy
    third = store.card_usage("c1", T0 + 5).call_starts
    assert ((T0,), (T0, T0 + 2), (T0,)) == (first, second, third)
    assert third._items is not second._items
    del first, second
    kept = third._items
    del third
    store.reserve("c1", "k3", "+8613800000102", T0 + 6)
    store.reserve("c1", "k4", "+8613800000103", T0 + 5.5)  # out of order, no window held
    store.release("k3", T0 + 7)
    assert store.card_usage("c1", T0 + 8).call_starts._items is kept  # changed in place
    assert (T0, T0 + 5.5) == store.card_usage("c1", T0 + 8).call_starts


_sibling_step = st.tuples(
    st.sampled_from(["reserve", "release", "release-ok", "finish", "read"]),
    st.integers(0, 1),  # which worker
    st.integers(0, 9),  # call
    st.integers(0, 1),  # card
    st.integers(0, 3),  # callee
    st.floats(0, 600, allow_nan=False),  # seconds since the previous step
    st.integers(0, 120),  # talk seconds
)


def _workers(path: Path, window: int) -> list[SQLiteStore]:
    stores = []
    for i in range(2):
        s = SQLiteStore(path, carrier_timezones={"carrier-a": "UTC"}, outcome_window=window)
        s.owner, s.siblings = f"w{i}", (f"w{1 - i}",)
        stores.append(s)
    return stores


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_sibling_step, max_size=60), window=st.integers(1, 6))
def test_sibling_changes_applied_to_the_counters_equal_a_full_recount(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int, int, int, int, float, int]],
    window: int,
) -> None:
    """Two workers on one file, both reserving, releasing and finishing on the same
    cards (across the hour and midnight): each applies the other's changes to its
    counters (``card_usage_changes``) and stays equal to a recount from the rows."""
    path = tmp_path_factory.mktemp("siblings") / "c.db"
    stores = _workers(path, window)
    _cards(stores[0])
    for s in stores:
        for c in ("c1", "c2"):
            s.card_usage(c, MIDNIGHT - 3000.0)
    now = MIDNIGHT - 3000.0
    for op, who, call, card, callee, gap, talk in steps:
        now += gap
        s = stores[who]
        card_id = f"c{card + 1}"
        call_id = f"k{call}"
        if not _write(s, op, call_id, card_id, callee, now, talk):
            for c in ("c1", "c2"):
                _same(s.card_usage(c, now), s.recount_card_usage(c, now))
    for s in stores:
        for c in ("c1", "c2"):
            _same(s.card_usage(c, now), s.recount_card_usage(c, now))
    for s in stores:
        s.close()


def test_sibling_changes_are_applied_not_reread(db_path: Path) -> None:
    """Each worker's reservations and finishes on a card reach the other's counters as
    the rows they changed: no rebuild from the card's rows after the first read."""
    a, b = _workers(db_path, 50)
    _cards(a)
    for s in (a, b):
        s.card_usage("c1", T0)
    built = (a.counters_rebuilt, b.counters_rebuilt)
    for i in range(40):
        s = (a, b)[i % 2]
        s.reserve("c1", f"k{i}", f"+86138000003{i:02d}", T0 + i)
        s.finish(f"k{i}", T0 + i + 0.5, answered=True, talk_seconds=0.5)
    for s in (a, b):
        _same(s.card_usage("c1", T0 + 60), s.recount_card_usage("c1", T0 + 60))
    assert built == (a.counters_rebuilt, b.counters_rebuilt)
    # 40 calls, a start and an end each: each worker applied the other's half.
    assert (40, 40) == (a.counters_caught_up, b.counters_caught_up)
    b.close()
    a.close()


def test_own_write_after_a_sibling_s_applies_the_sibling_s_first(db_path: Path) -> None:
    """A worker's reservation or finish on a card a sibling changed since its last read
    brings its counters up to the sibling's change before counting its own: they are
    never marked as current while missing the sibling's change."""
    a, b = _workers(db_path, 50)
    _cards(a)
    a.card_usage("c1", T0)
    a.reserve("c1", "k1", "+8613800000401", T0 + 1)
    b.reserve("c1", "k2", "+8613800000402", T0 + 2)
    a.finish("k1", T0 + 3, answered=True, talk_seconds=1.0)  # no read of c1 in between
    _same(a.card_usage("c1", T0 + 4), a.recount_card_usage("c1", T0 + 4))
    b.finish("k2", T0 + 5, answered=False)
    a.reserve("c1", "k3", "+8613800000403", T0 + 6)  # without a quota check
    usage = a.card_usage("c1", T0 + 7)
    _same(usage, a.recount_card_usage("c1", T0 + 7))
    assert (1, (T0 + 1, T0 + 2, T0 + 6)) == (usage.in_use, usage.call_starts)
    assert 1 == a.counters_rebuilt  # the first read only: applied, not re-read
    b.close()
    a.close()


def test_unlogged_changes_rebuild_the_counters(db_path: Path) -> None:
    """A change a sibling's log does not hold (a process without siblings, a recovery,
    more than CATCH_UP_MAX behind) is never guessed at: the counters are re-read."""
    a, b = _workers(db_path, 50)
    _cards(a)
    a.card_usage("c1", T0)
    lone = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"})
    lone.reserve("c1", "k1", "+8613800000100", T0 + 1)  # the CLI, say: logs nothing
    built = a.counters_rebuilt
    assert 1 == a.card_usage("c1", T0 + 2).in_use
    assert built + 1 == a.counters_rebuilt
    b.reserve("c1", "k2", "+8613800000101", T0 + 3)
    b.recover(T0 + 4)  # b's own k2 orphaned: the recovery logs nothing
    usage = a.card_usage("c1", T0 + 5)
    _same(usage, a.recount_card_usage("c1", T0 + 5))
    assert built + 2 == a.counters_rebuilt
    a.card_usage("c2", T0 + 5)
    built = a.counters_rebuilt
    for i in range(CATCH_UP_MAX // 2 + 1):  # two changes each: more than a catch-up takes
        b.reserve("c2", f"m{i}", "+8613800000102", T0 + 10 + i)
        b.finish(f"m{i}", T0 + 10.5 + i, answered=False)
    _same(a.card_usage("c2", T0 + 400), a.recount_card_usage("c2", T0 + 400))
    assert built + 1 == a.counters_rebuilt
    for s in (lone, b, a):
        s.close()


def test_dnc_batch_import_counts_new_numbers(store: SQLiteStore) -> None:
    """``add_dncs`` adds in one transaction and reports only numbers not yet listed."""
    assert store.add_dnc("+8613900000001", T0)
    added = store.add_dncs(["+8613900000001", "+8613900000002", "+8613900000002"], T0)
    assert 1 == added
    assert store.is_dnc("+8613900000002")


def test_agent_policy_without_limits_reads_only_the_pause(store: SQLiteStore) -> None:
    """With no agent limit set, the policy asks for no history; a pause still refuses."""
    assert 0.0 == AgentLimits().window
    assert 86400.0 == AgentLimits(calls_per_hour=5, calls_per_day=50).window
    store.reserve("c1", "k1", "+8613800000100", T0, agent="alice")
    assert () == store.agent_usage("alice", T0 + 1, window=0).call_starts
    assert (T0,) == store.agent_usage("alice", T0 + 1, window=3600).call_starts
    store.set_agent_paused("alice", True, T0 + 2, reason="review")
    usage = store.agent_usage("alice", T0 + 3, window=0)
    assert (True, "review") == (usage.paused, usage.pause_reason)
    assert isinstance(AgentLimitsPolicy(store), AgentLimitsPolicy)
