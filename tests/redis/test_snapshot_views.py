"""A node's cached copy of a card, grown by each write it hears of, without copying the day.

``_apply_delta`` applies a write (this node's or another's) to the cached snapshot:
a reservation adds a start and maybe a callee, a release takes them away. The copy's
starts and callees grow in place when the snapshot ends its list and map, so every
snapshot taken before must keep what it held; no Redis is needed for these.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.store.records import CalleesToday
from gateway.store.redis import _OUTCOME, _apply_delta, _outcomes, _Snapshot
from policies.quotas import CardUsage, StartTimes

DAY = 1_800_000_000.0


def _snapshot() -> _Snapshot:
    return _Snapshot(
        CardUsage(call_starts=StartTimes(), callees_today=CalleesToday.of(())), "0", True, ()
    )


def _reserve(start: float, callee: str) -> list[bytes]:
    return [b"R", f"d:{int(DAY)}".encode(), repr(start).encode(), callee.encode()]


def _release(start: float, callee: str, left: int) -> list[bytes]:
    head = [b"L", f"d:{int(DAY)}".encode(), repr(start).encode(), callee.encode()]
    return [*head, str(left).encode(), b"", b"", b"", b"", b""]


_steps = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "release", "branch"]),
        st.integers(0, 30).map(lambda s: DAY + s),
        st.integers(0, 4).map(lambda c: f"+86138000000{c:02d}"),
    ),
    max_size=50,
)


@given(steps=_steps)
def test_every_snapshot_keeps_what_it_held(steps: list[tuple[str, float, str]]) -> None:
    """Writes applied one after another, and writes applied to an earlier snapshot (a
    branch, as when a copy is dropped and an older one kept elsewhere): each snapshot
    reads the starts and callees it was made with, whatever came after it."""
    snap = _snapshot()
    starts: list[float] = []
    calls: dict[str, int] = {}
    kept: list[tuple[_Snapshot, tuple[float, ...], frozenset[str]]] = []
    version = 0
    for op, start, callee in steps:
        version += 1
        if op == "branch" and kept:
            old = kept[len(kept) // 2][0]
            other = _apply_delta(old, DAY, version, _reserve(start + 0.5, callee + "9"), 50)
            assert other is not None
            kept.append(
                (
                    other,
                    (*sorted([*old.usage.call_starts, start + 0.5]),),
                    frozenset([*old.usage.callees_today, callee + "9"]),
                )
            )
            continue
        if op == "reserve":
            delta = _reserve(start, callee)
            starts.append(start)
            starts.sort()
            calls[callee] = calls.get(callee, 0) + 1
        else:
            if start not in starts:
                continue
            starts.remove(start)
            left = calls.get(callee, 0) - 1
            if left > 0:
                calls[callee] = left
            else:
                calls.pop(callee, None)
            delta = _release(start, callee, left)
        updated = _apply_delta(snap, DAY, version, delta, 50)
        assert updated is not None
        snap = updated
        assert snap.usage.call_starts == tuple(starts)
        assert set(snap.usage.callees_today) == set(calls)
        kept.append((snap, tuple(starts), frozenset(calls)))
    for held, then_starts, then_callees in kept:
        assert held.usage.call_starts == then_starts
        assert held.usage.callees_today == then_callees
        assert len(held.usage.callees_today) == len(then_callees)
        for c in [f"+86138000000{c:02d}" for c in range(5)]:
            assert (c in held.usage.callees_today) == (c in then_callees)


def test_a_new_callee_is_added_in_place_only_at_the_end_of_the_map() -> None:
    base = CalleesToday.of(["a", "b"])
    grown = base.with_callee("c")
    assert grown._order is base._order and {"a", "b"} == set(base) and "c" not in base
    branch = base.with_callee("d")  # base no longer ends the map: a copy
    assert branch._order is not base._order
    assert ({"a", "b", "c"}, {"a", "b", "d"}) == (set(grown), set(branch))
    assert grown.with_callee("a") is grown
    assert {"b", "c"} == grown.without("a") and {"a", "b", "c"} == grown
    assert frozenset({"a", "b", "c", "z"}) == grown | {"z"}


def _finish(start: float, seq: int, talk: float, end: float, flags: int) -> list[bytes]:
    head = [b"F", f"d:{int(DAY)}".encode(), repr(start).encode(), b"+8613800000000"]
    return [
        *head,
        b"0",
        b"1.0",
        str(flags).encode(),
        str(seq).encode(),
        repr(talk).encode(),
        repr(end).encode(),
    ]


@given(
    finishes=st.lists(
        st.tuples(
            st.integers(0, 40).map(lambda s: DAY + s / 2),  # ties in start happen
            st.integers(1, 10**6),  # seq: among one start, the packed bytes order by it
            st.sampled_from([1, 2, 4, 5, 6]),
        ),
        max_size=40,
        unique_by=lambda f: f[1],
    ),
    window=st.integers(1, 8),
)
def test_finishes_keep_the_scripts_order_of_outcomes(
    finishes: list[tuple[float, int, int]], window: int
) -> None:
    """Each finish's outcome lands where the scripts' sorted set puts it (by start, then
    by the packed bytes) and only the last ``window`` stay, whatever order calls end in;
    the outcomes and short flags read like the members, and earlier snapshots keep
    theirs."""
    snap = _snapshot()
    every: list[bytes] = []
    kept: list[tuple[_Snapshot, tuple[bytes, ...]]] = []
    for version, (start, seq, flags) in enumerate(finishes, 1):
        talk = float(seq % 7)
        end = start + 60 + talk
        updated = _apply_delta(snap, DAY, version, _finish(start, seq, talk, end, flags), window)
        assert updated is not None
        snap = updated
        every.append(_OUTCOME.pack(seq, start, talk, end, flags))
        expected = tuple(sorted(every, key=lambda m: (_OUTCOME.unpack(m)[1], m))[-window:])
        assert expected == snap.members
        outcomes, shorts = _outcomes(expected)
        assert (outcomes, shorts) == (snap.usage.recent_outcomes, snap.shorts)
        kept.append((snap, expected))
    for held, then in kept:
        assert then == held.members
        assert _outcomes(then) == (held.usage.recent_outcomes, held.shorts)
