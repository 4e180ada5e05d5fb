"""The overload controller alone: the share of new calls refused for a backlog."""

from __future__ import annotations

import itertools

import pytest

from gateway.callpath.overload import FLOOR, RELEASE, WINDOW, Episode, OverloadControl

LIMIT = 1000


def standing(control: OverloadControl, queued: int, now: float) -> tuple[object, object]:
    """A backlog of ``queued`` over the whole window (its last sample at ``now``); what
    the last sample returned."""
    for i in range(WINDOW - 1):
        control.sample(queued, now - (WINDOW - 1 - i) * 0.1)
    return control.sample(queued, now)


def draws(*values: float) -> OverloadControl:
    """A controller whose per-call draws are ``values``, over and over."""
    cycle = itertools.cycle(values)
    return OverloadControl(LIMIT, draw=lambda: next(cycle))


@pytest.mark.parametrize(
    ("queued", "share"),
    [(0, 0.0), (250, 0.0), (400, 0.2), (625, 0.5), (850, 0.8), (1000, 1.0), (5000, 1.0)],
)
def test_the_share_grows_with_the_backlog_between_a_quarter_and_the_limit(
    queued: int, share: float
) -> None:
    control = OverloadControl(LIMIT)
    standing(control, queued, 0.0)
    assert share == pytest.approx(control.share)


def test_a_burst_shorter_than_the_window_refuses_nothing() -> None:
    """The smallest backlog of the last WINDOW samples is judged: a burst the gateway
    drains by itself is not overload, a standing queue is."""
    control = OverloadControl(LIMIT)
    for t in range(3 * WINDOW):  # a burst every WINDOW samples, the last WINDOW-1 ago
        queued = 5000 if t % WINDOW == 0 else 0
        assert (None, None) == control.sample(queued, t / 10)
    assert (0.0, 0) == (control.share, control.episodes)
    for _ in range(WINDOW - 1):
        control.sample(5000, 1.0)
        assert 0.0 == control.share
    control.sample(5000, 1.1)
    assert 1.0 == control.share


def test_a_rise_applies_at_once_a_fall_by_release_per_sample() -> None:
    control = OverloadControl(LIMIT)
    standing(control, 625, 0.0)
    assert 0.5 == pytest.approx(control.share)
    control.sample(100, 0.1)  # below a quarter, something still waits: RELEASE
    assert 0.5 - RELEASE == pytest.approx(control.share)
    control.sample(0, 0.2)  # nothing waited at one sample of the window: halved
    assert (0.5 - RELEASE) / 2 == pytest.approx(control.share)
    standing(control, 850, 0.5)  # more backlog: up at once
    assert 0.8 == pytest.approx(control.share)
    control.sample(550, 0.6)  # asks for 0.4: down by RELEASE only
    assert 0.8 - RELEASE == pytest.approx(control.share)


def test_an_idle_gateway_halves_the_share_down_to_none() -> None:
    control = OverloadControl(LIMIT)
    standing(control, 1000, 0.0)
    shares = []
    for t in range(1, 20):
        control.sample(0, t / 10)
        shares.append(control.share)
        if control.share == 0.0:
            break
    assert shares == [0.5**k for k in range(1, len(shares))] + [0.0]
    assert shares[-2] / 2 < FLOOR <= shares[-2]


def test_an_episode_runs_from_the_first_share_to_none_and_counts_its_refusals() -> None:
    control = draws(0.1, 0.9)  # in turn: under and over a share of 0.5
    assert (None, None) == standing(control, 100, 0.0)
    assert not control.refuse()
    started, ended = standing(control, 625, 1.0)
    assert isinstance(started, Episode) and ended is None
    assert [True, False, True, False] == [control.refuse() for _ in range(4)]
    assert (None, None) == standing(control, 1000, 1.5)
    assert all(control.refuse() for _ in range(3))  # at the limit: every new call
    t = 1.5
    while True:
        t += 0.1
        started, ended = control.sample(0, t)
        assert started is None
        if ended is not None:
            break
    assert (5, 1.0, 1000, 1.0) == (
        ended.refused,
        ended.peak_share,
        ended.peak_queued,
        ended.started_at,
    )
    assert (1, 5, 0.0) == (control.episodes, control.refused, control.share)
    assert not control.refuse()


def test_off_or_unknown_backlog_changes_nothing() -> None:
    off = OverloadControl(0)
    assert (None, None) == off.sample(10**9, 0.0)
    assert not off.refuse()
    control = OverloadControl(LIMIT)
    standing(control, 1000, 0.0)
    assert (None, None) == control.sample(None, 0.1)  # /proc unreadable: keep the share
    assert 1.0 == control.share


def test_fit_lowers_the_limit_only() -> None:
    control = OverloadControl(LIMIT)
    assert not control.fit(0)  # unknown
    assert not control.fit(2 * LIMIT)
    assert LIMIT == control.limit
    assert control.fit(LIMIT // 2)
    standing(control, LIMIT // 2, 0.0)
    assert 1.0 == control.share
