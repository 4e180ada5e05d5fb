"""gateway.collector: garbage collection on a clock (issue 17: no collection pauses calls).

The pacer turns the interpreter's automatic collection off, collects the young
and middle generations together every round (a survivor is walked once) and the
whole heap only when the gateway is quiet (or when too long has passed), and
gives automatic collection back when it stops.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from gateway.collector import (
    FULL_LATEST,
    FULL_QUIET_EVERY,
    QUIET_TRANSACTIONS,
    CollectorPacer,
)
from gateway.config import ConfigError, Settings, load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A container that can point at itself (a reference cycle)."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture(autouse=True)
def _automatic_collection_back() -> object:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_every_round_collects_the_young_and_middle_generations() -> None:
    """Each busy round collects generations 0 and 1 together."""
    clock = Clock()
    pacer = CollectorPacer(live=lambda: QUIET_TRANSACTIONS * 10, clock=clock)
    pacer.start()
    assert [1] * 8 == [pacer.generation(clock()) for _ in range(8)]


def test_a_survivor_is_walked_once_then_old() -> None:
    """What survives one round is in the oldest generation: the next rounds do not walk it
    (collecting the middle generation every fourth round walked it a second time)."""
    clock = Clock()
    pacer = CollectorPacer(live=lambda: QUIET_TRANSACTIONS * 10, clock=clock)
    pacer.start()
    survivor = Node()
    assert any(o is survivor for o in gc.get_objects(generation=0))
    pacer.step()
    assert any(o is survivor for o in gc.get_objects(generation=2))
    assert not any(o is survivor for o in gc.get_objects(generation=1))


def test_full_collection_when_quiet_and_not_when_busy() -> None:
    """The whole heap only once FULL_QUIET_EVERY has passed and few transactions are alive."""
    clock = Clock()
    live = [QUIET_TRANSACTIONS * 10]
    pacer = CollectorPacer(live=lambda: live[0], clock=clock)
    pacer.start()
    live[0] = 0
    assert 2 != pacer.generation(clock())  # quiet, but the last full one is too recent
    clock.now += FULL_QUIET_EVERY
    live[0] = QUIET_TRANSACTIONS
    assert 2 != pacer.generation(clock())  # late enough, but busy
    live[0] = QUIET_TRANSACTIONS - 1
    assert 2 == pacer.generation(clock())


def test_full_collection_at_the_latest_even_when_busy() -> None:
    clock = Clock()
    pacer = CollectorPacer(live=lambda: QUIET_TRANSACTIONS * 10, clock=clock)
    pacer.start()
    clock.now += FULL_LATEST - 1
    assert 2 != pacer.generation(clock())
    clock.now += 1
    assert 2 == pacer.generation(clock())
    pacer.step()  # collects generation 2 and restarts the wait
    assert [0, 0, 1] == pacer.collections
    assert 2 != pacer.generation(clock())


def test_a_young_round_frees_a_cycle_automatic_collection_no_longer_would() -> None:
    """While paced the interpreter never collects by itself; a round does."""
    clock = Clock()
    pacer = CollectorPacer(live=lambda: QUIET_TRANSACTIONS * 10, clock=clock)
    pacer.start()
    assert not gc.isenabled()
    gc.collect()
    node = Node()
    node.other = node
    gone = weakref.ref(node)
    del node
    for _ in range(50_000):  # far past any automatic threshold: nothing collects it
        Node()
    assert gone() is not None
    assert 1 == pacer.step()
    assert gone() is None
    assert [0, 1, 0] == pacer.collections


def test_stop_gives_back_what_was_there() -> None:
    gc.enable()
    pacer = CollectorPacer(live=lambda: 0)
    pacer.start()
    assert not gc.isenabled()
    pacer.stop()
    assert gc.isenabled()
    gc.disable()  # an embedding program that turned it off keeps it off
    pacer = CollectorPacer(live=lambda: 0)
    pacer.start()
    pacer.stop()
    assert not gc.isenabled()


async def test_run_collects_on_its_clock_until_cancelled() -> None:
    gc.enable()
    pacer = CollectorPacer(live=lambda: 0)
    task = asyncio.ensure_future(pacer.run())
    await asyncio.sleep(0.5)
    assert not gc.isenabled()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert gc.isenabled()
    assert sum(pacer.collections) >= 3


def test_server_gc_key(tmp_path: Path) -> None:
    """``[server] gc``: "paced" by default, "auto" accepted, anything else names the key."""
    assert "paced" == Settings().server.gc
    path = tmp_path / "gw.toml"
    path.write_text('[policy]\nconsent = "dnc-only"\n[server]\ngc = "auto"\n')
    assert "auto" == load_settings(path).server.gc
    path.write_text('[policy]\nconsent = "dnc-only"\n[server]\ngc = "never"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.messages[0].startswith("server.gc:")
