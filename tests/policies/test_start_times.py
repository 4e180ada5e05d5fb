"""``StartTimes``: a card's call starts as a window of a list, read like the tuple it was.

Stores hand these out instead of a tuple of the day's starts (a copy per change, so
a cost per call that grew with the card's day). Everything a policy reads must
answer what the same starts in a tuple answer, and a window must never see a start
added or removed after it was taken.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.quotas import CardUsage, KeptStarts, StartTimes

_times = st.lists(st.integers(0, 40).map(float), max_size=30).map(sorted)


@given(starts=_times, lo=st.integers(0, 30), hi=st.integers(0, 30), probe=st.floats(-1, 41))
def test_a_window_reads_like_the_slice_it_stands_for(
    starts: list[float], lo: int, hi: int, probe: float
) -> None:
    lo, hi = min(lo, len(starts)), min(max(lo, hi), len(starts))
    view = StartTimes.window(starts, lo, hi)
    same = tuple(starts[lo:hi])
    assert view == same and same == view and len(view) == len(same)
    assert list(view) == list(same) and list(reversed(view)) == list(reversed(same))
    assert view.bisect_left(probe) == bisect_left(same, probe)
    assert view.bisect_right(probe) == bisect_right(same, probe)
    assert view.between(probe - 10, probe) == sum(probe - 10 < t <= probe for t in same)
    for i in range(-len(same), len(same)):
        assert view[i] == same[i]
    for a, b in ((1, None), (None, -1), (2, 5), (-3, None)):
        assert view[a:b] == same[a:b]
    assert view[::2] == same[::2]
    assert hash(view) == hash(same)
    with pytest.raises(IndexError):
        view[len(same)]


@given(starts=_times, added=st.lists(st.integers(-5, 45).map(float), max_size=8))
def test_added_starts_reach_only_the_windows_taken_after(
    starts: list[float], added: list[float]
) -> None:
    """``with_start`` appends in place when it can; every window taken before keeps
    what it held, even when two windows grow from the same one (a branch)."""
    view = StartTimes(starts)
    kept = [(view, tuple(starts))]
    expected = list(starts)
    for t in added:
        branch = view.with_start(t + 0.25)  # grown from the same window as the next
        kept.append((branch, tuple(sorted([*expected, t + 0.25]))))
        view = view.with_start(t)
        insort(expected, t)
        kept.append((view, tuple(expected)))
    for window, then in kept:
        assert window == then


def test_with_start_shares_the_list_only_at_its_end() -> None:
    base = StartTimes([1.0, 2.0])
    later = base.with_start(3.0)
    assert later._items is base._items and (1.0, 2.0) == base
    branch = base.with_start(4.0)  # base no longer ends the list: a copy
    assert branch._items is not base._items
    assert ((1.0, 2.0), (1.0, 2.0, 3.0), (1.0, 2.0, 4.0)) == (base, later, branch)
    earlier = later.with_start(0.5)  # before the last: a copy
    assert ((0.5, 1.0, 2.0, 3.0), (1.0, 2.0, 3.0)) == (earlier, later)


def test_without_removes_one_equal_start_in_a_copy() -> None:
    base = StartTimes([1.0, 2.0, 2.0, 3.0])
    assert (1.0, 2.0, 3.0) == base.without(2.0)
    assert (1.0, 2.0, 2.0, 3.0) == base
    assert base.without(9.0) is base


def test_start_times_of_a_sequence_is_a_copy_of_it() -> None:
    given = [1.0, 2.0]
    starts = StartTimes(given)
    given.append(3.0)
    assert (1.0, 2.0) == starts
    assert StartTimes() == CardUsage().call_starts == ()


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "window", "drop", "forget"]),
            st.integers(0, 40).map(float),
            st.integers(0, 5),
        ),
        max_size=60,
    )
)
def test_kept_starts_never_change_a_window_still_held(
    steps: list[tuple[str, float, int]],
) -> None:
    """Any mix of adds (in order or not), removals, drops of the oldest and windows
    taken (several from one list, some let go): every window held reads what it read
    when it was taken, and the list always equals the starts added and not removed."""
    kept = KeptStarts()
    expected: list[float] = []
    held: list[tuple[StartTimes, tuple[float, ...]]] = []
    for op, t, n in steps:
        if op == "add":
            kept.add(t)
            insort(expected, t)
        elif op == "remove":
            assert kept.remove(t) == (t in expected)
            if t in expected:
                expected.remove(t)
        elif op == "window":
            lo = min(n, len(expected))
            held.append((kept.window(lo), tuple(expected[lo:])))
        elif op == "drop":
            lo = min(n, len(expected))
            kept.drop_before(lo)
            del expected[:lo]
        elif held:
            held.pop(n % len(held))  # a reader lets its window go
        assert kept.items == expected
        for window, then in held:
            assert window == then


def test_kept_starts_copy_only_while_a_window_is_held() -> None:
    kept = KeptStarts([1.0, 2.0, 3.0])
    older, newer = kept.window(0), kept.window(1)  # two windows of one list
    del newer
    items = kept.items
    kept.remove(2.0)  # ``older`` still reads the list: the change goes to a copy
    assert kept.items is not items and (1.0, 2.0, 3.0) == older
    del older
    items = kept.items
    kept.add(0.5)  # out of order, no window held: in place
    kept.remove(3.0)
    assert kept.items is items and [0.5, 1.0] == items
    window = kept.window()
    kept.add(4.0)  # after the last: in place, past the window's end
    assert kept.items is items and (0.5, 1.0) == window


def test_a_kept_list_changes_only_through_its_owner() -> None:
    """A window of a ``KeptStarts`` grown with ``with_start`` is a copy (the owner's list
    never gets a start behind its back), and a slice of it holds the list as it does."""
    kept = KeptStarts([1.0, 2.0])
    grown = kept.window().with_start(3.0)
    assert [1.0, 2.0] == kept.items and (1.0, 2.0, 3.0) == grown
    tail = kept.window()[1:]
    kept.remove(1.0)  # the slice still reads the list: the change goes to a copy
    assert (2.0,) == tail and [2.0] == kept.items
