"""Per-agent state for the wallboard: ``dialgate/agents/{agent}/state`` (retained, QoS 1).

A bus subscriber that follows the call events of each agent (softphone user
or dialer peer) and the agent pause alerts, and publishes an
:class:`~gateway.telemetry.events.AgentState` whenever what a supervisor sees changes:

- ``state``: ``paused`` (with the pause's ``reason``) when the agent is paused
  (complaint ceiling, ``agent-paused`` alert) — else the most advanced state
  of its calls in progress: ``talking`` (answered) > ``ringing`` (18x from
  the far side) > ``dialling`` (INVITE accepted, no ring yet) > ``idle``;
- ``calls_today`` (attempts and blocked attempts), ``answered_today``,
  ``complaints_today`` (the store's complaints against its calls), ``card``
  (the card of its last call, else its configured binding), ``active_calls``.

"Today" is the calendar day in ``timezone`` (the first carrier's). Calls and
complaints of the day are seeded from the store when an agent is first seen,
answered calls are counted from the events seen by this process. Entries are
bounded by the configured identities; the calls in progress of one agent by
``MAX_ACTIVE``. Never logs or publishes a callee number.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.telemetry.events import (
    AgentState,
    Alert,
    AlertKind,
    CallEvent,
    CallEventKind,
    Event,
)
from policies.timeutil import day_bounds

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.store import SQLiteStore
    from gateway.telemetry.events import EventBus

__all__ = ["MAX_ACTIVE", "STATES", "AgentBoard", "wire_agent_board"]

#: Agent states, least to most advanced (``paused`` overrides them all).
STATES = ("idle", "dialling", "ringing", "talking")
MAX_ACTIVE = 1000
_ADVANCED_FIRST = STATES[:0:-1]  # talking, ringing, dialling

_STEP = {
    CallEventKind.ATTEMPT: "dialling",
    CallEventKind.RINGING: "ringing",
    CallEventKind.ANSWERED: "talking",
}


@dataclass
class _Agent:
    name: str
    card: str | None = None
    day_start: float = 0.0
    calls: int = 0
    answered: int = 0
    complaints: int = 0
    paused: str | None = None  # the pause reason while paused
    active: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # How many of ``active`` are at each step: the state is read on every call event,
    # and a dialer's identity can have hundreds of calls up (no scan of ``active``).
    steps: Counter[str] = field(default_factory=Counter)
    last: AgentState | None = None

    def set_step(self, call_id: str, step: str) -> None:
        """The call's step now (kept ``MAX_ACTIVE`` calls at most, the oldest dropped)."""
        old = self.active.get(call_id)
        if old is not None:
            self.steps[old] -= 1
        self.active[call_id] = step
        self.active.move_to_end(call_id)
        self.steps[step] += 1
        while len(self.active) > MAX_ACTIVE:
            _, gone = self.active.popitem(last=False)
            self.steps[gone] -= 1

    def end(self, call_id: str) -> None:
        """The call is over."""
        old = self.active.pop(call_id, None)
        if old is not None:
            self.steps[old] -= 1


class AgentBoard:
    """Follows call events and pause alerts; publishes each agent's state on change."""

    def __init__(
        self,
        publish: Callable[[Event], None],
        *,
        timezone: str = "UTC",
        bindings: dict[str, str | None] | None = None,
        seed: Callable[[str, float, float], tuple[int, int]] | None = None,
    ) -> None:
        """``bindings``: agent → configured card; ``seed(agent, day_start, now)`` →
        (calls, complaints) of the day from the store."""
        self.publish = publish
        self.timezone = timezone
        self.bindings = dict(bindings or {})
        self.seed = seed
        self.agents: dict[str, _Agent] = {}

    def start(self, now: float, names: Iterable[str] = ()) -> None:
        """Publish every configured agent (idle unless the store says otherwise)."""
        for name in [*self.bindings, *names]:
            self._publish(self._agent(name, now), now)

    def _agent(self, name: str, now: float) -> _Agent:
        agent = self.agents.get(name)
        day_start, _ = day_bounds(now, self.timezone)
        if agent is None:
            agent = self.agents[name] = _Agent(name, card=self.bindings.get(name))
            agent.day_start = day_start
            self._seed(agent, now)
        elif agent.day_start != day_start:  # a new day: the counters start again
            agent.day_start = day_start
            agent.calls = agent.answered = agent.complaints = 0
            self._seed(agent, now)
        return agent

    def _seed(self, agent: _Agent, now: float) -> None:
        if self.seed is None:
            return
        try:
            calls, complaints = self.seed(agent.name, agent.day_start, now)
        except Exception:  # the store briefly unavailable: counts from events only
            return
        agent.calls = max(agent.calls, calls)
        agent.complaints = max(agent.complaints, complaints)

    def __call__(self, event: Event) -> None:
        """Observe one bus event."""
        if isinstance(event, CallEvent) and event.agent:
            self._on_call(event)
        elif isinstance(event, Alert) and event.kind in (
            AlertKind.AGENT_PAUSED,
            AlertKind.AGENT_RESUMED,
        ):
            name = event.detail.get("agent") if event.detail else None
            if not isinstance(name, str):
                return
            agent = self._agent(name, event.at)
            if event.kind is AlertKind.AGENT_PAUSED:
                agent.paused = event.reason or "paused"
                self._seed(agent, event.at)  # the complaint that paused it
            else:
                agent.paused = None
            self._publish(agent, event.at)

    def _on_call(self, event: CallEvent) -> None:
        assert event.agent is not None
        agent = self._agent(event.agent, event.at)
        kind = event.kind
        if event.card:
            agent.card = event.card
        if kind in (CallEventKind.ATTEMPT, CallEventKind.BLOCKED):
            agent.calls += 1
        if kind is CallEventKind.ANSWERED:
            agent.answered += 1
        step = _STEP.get(kind)
        if step is not None:
            agent.set_step(event.call_id, step)
        elif kind is CallEventKind.ENDED:
            agent.end(event.call_id)
        self._publish(agent, event.at)

    def state_of(self, name: str) -> str:
        """The agent's state now (``idle`` when unknown)."""
        agent = self.agents.get(name)
        if agent is None:
            return "idle"
        return self._state(agent)

    @staticmethod
    def _state(agent: _Agent) -> str:
        if agent.paused is not None:
            return "paused"
        steps = agent.steps
        for state in _ADVANCED_FIRST:
            if steps[state] > 0:
                return state
        return "idle"

    def _publish(self, agent: _Agent, now: float) -> None:
        state = AgentState(
            agent=agent.name,
            at=now,
            state=self._state(agent),
            reason=agent.paused,
            card=agent.card,
            calls_today=agent.calls,
            answered_today=agent.answered,
            complaints_today=agent.complaints,
            active_calls=len(agent.active),
        )
        if agent.last is not None and _same(agent.last, state):
            return
        agent.last = state
        self.publish(state)


def _same(a: AgentState, b: AgentState) -> bool:
    return (
        a.state,
        a.reason,
        a.card,
        a.calls_today,
        a.answered_today,
        a.complaints_today,
        a.active_calls,
    ) == (
        b.state,
        b.reason,
        b.card,
        b.calls_today,
        b.answered_today,
        b.complaints_today,
        b.active_calls,
    )


def wire_agent_board(
    settings: Settings, store: SQLiteStore, bus: EventBus, now: float
) -> AgentBoard:
    """An :class:`AgentBoard` over the gateway's bus and store, every configured agent
    published once (idle unless the store says otherwise)."""

    def seed(agent: str, day_start: float, at: float) -> tuple[int, int]:
        usage = store.agent_usage(agent, at, window=max(1.0, at - day_start))
        return len(usage.call_starts), len(usage.complaints)

    bindings: dict[str, str | None] = {u.name: u.card for u in settings.users}
    bindings.update({p.name: None for p in settings.peers})
    timezone = settings.carriers[0].timezone if settings.carriers else "UTC"
    board = AgentBoard(bus.publish, timezone=timezone, bindings=bindings, seed=seed)
    bus.subscribe(board)
    board.start(now)
    return board
