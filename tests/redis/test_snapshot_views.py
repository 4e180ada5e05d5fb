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
from gateway.store.redis import _apply_delta, _Snapshot
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
