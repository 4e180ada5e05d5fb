"""Which card an agent is bound to, and moving it for good when that card dies.

An agent (or dialer) may be bound to a card in the configuration: its calls go
out with that card's caller number. When the card dies (suspended, suspect,
appealing, retired) and a call of the agent leaves on another card, the agent is
re-bound to that card once, for good — stored, logged and published as an
``agent-rebound`` alert — so that its next calls stay on one number instead of
rotating. When its own card is back in service the re-binding ends. A spill (the
pool lets a bound agent use another card while its card only waits) changes no
binding.

This module must never send SIP or choose a card: it remembers the choice the
card picker made. A store that refuses a binding is logged; the binding holds in
memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from gateway.callpath.calls import Call
from gateway.telemetry.events import Alert, AlertKind, EventBus, Severity

if TYPE_CHECKING:
    from gateway.callpath.auth import Identity
    from gateway.cards import CardManager
    from gateway.config import Settings
    from gateway.store import CallPathStore

__all__ = ["AgentBindings"]

log = structlog.get_logger("gateway.callpath.bindings")


class AgentBindings:
    """The agents re-bound after their configured card died: agent → (card, configured)."""

    def __init__(
        self,
        store: CallPathStore,
        cards: CardManager,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.cards = cards
        self.settings = settings
        self.clock = clock
        self.bus = bus
        self.rebound: dict[str, tuple[str, str | None]] = {}
        # Pool name → its ``spill``: read once per pool (``Settings.pool`` builds a
        # model for a pool without a table; the pools are the configuration's).
        self._spill: dict[str, bool] = {}
        try:
            self.rebound = dict(store.agent_bindings())
        except Exception as exc:
            log.error("agent.bindings.unreadable", error=repr(exc)[:200])

    def bound_card(self, identity: Identity) -> str | None:
        """The card the agent is bound to now: its re-binding when one is stored for the
        configured card it has today, else the configured card (None: unbound)."""
        stored = self.rebound.get(identity.name)
        if stored is None:
            return identity.card
        configured = None if identity.card is None else self.cards.find(identity.card)
        if configured is not None and configured.usable:
            # Its own card is back in service (restored, cleared, maintenance over):
            # the agent goes back to its own caller number; the re-binding is over.
            self._unbind(identity.name, f"{configured.id} {configured.state}")
            return identity.card
        if stored[1] == identity.card and self.cards.find(stored[0]) is not None:
            return stored[0]
        return identity.card

    def _unbind(self, agent: str, cause: str) -> None:
        stored = self.rebound.pop(agent, None)
        if stored is None:
            return
        try:
            self.store.save_agent_binding(
                agent, None, configured=stored[1], now=self.clock(), cause=cause
            )
        except Exception as exc:
            log.error("agent.unbind.store_failed", agent=agent, error=repr(exc)[:200])
        log.info("agent.back_on_card", agent=agent, card=stored[1], was=stored[0], cause=cause)

    def spill(self, card_id: str) -> bool:
        """Whether the card's pool lets a bound agent use another card while it waits."""
        card = self.cards.find(card_id)
        if card is None:
            return False
        spill = self._spill.get(card.pool)
        if spill is None:
            spill = self._spill[card.pool] = self.settings.pool(card.pool).spill
        return spill

    def note(self, call: Call, bound: str | None, chosen: str) -> None:
        """A bound agent's call left on another card: re-bind it if its card is dead.

        A spill (the pool allows it while the bound card only waits) changes no
        binding. A dead bound card (suspended, suspect, appealing, retired) moves
        the agent once, for good: stored, logged and published, so the next calls
        stay on the new card instead of rotating.
        """
        if bound is None or chosen == bound:
            return
        card = self.cards.find(bound)
        if card is not None and card.usable:
            return
        agent = call.identity.name
        configured = call.identity.card
        state = "unknown" if card is None else str(card.state)
        cause = f"{bound} {state}"
        self.rebound[agent] = (chosen, configured)
        try:
            self.store.save_agent_binding(
                agent, chosen, configured=configured, now=self.clock(), cause=cause
            )
        except Exception as exc:
            log.error("agent.rebind.store_failed", agent=agent, error=repr(exc)[:200])
        log.warning(
            "agent.rebound",
            call_id=call.a.call_id,
            agent=agent,
            from_card=bound,
            to_card=chosen,
            cause=cause,
        )
        if self.bus is not None:
            new = self.cards.find(chosen)
            self.bus.publish(
                Alert(
                    kind=AlertKind.AGENT_REBOUND,
                    at=self.clock(),
                    severity=Severity.WARNING,
                    message=f"agent {agent} moved from card {bound} ({state}) to {chosen}",
                    card=chosen,
                    pool=new.pool if new is not None else None,
                    detail={"agent": agent, "from": bound, "to": chosen, "cause": cause},
                )
            )
