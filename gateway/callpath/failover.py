"""Whether a failed B-leg's call may try another card, and which card it gets.

DESIGN.md "Call flow" step 5: only ``card-dead`` or ``trunk-unreachable``
before any 18x from the far side moves a call to another card — at most
:data:`MAX_CARDS_PER_CALL` cards a call; after ``trunk-unreachable`` at most one
more attempt, on a card that shares neither the device nor the trunk; a bound
agent whose card's trunk failed waits for it unless its pool allows ``spill``.
Everything else is the callee's answer and is never retried: that would dial
the same person twice.

This module must never send SIP, answer the agent or end a call: it answers
questions and the B2BUA acts on the answers.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.callpath.calls import Call
from gateway.cards import CardManager, PoolExhausted
from policies.decision import Decision, RejectReason
from policies.errors import StoreUnavailableError

if TYPE_CHECKING:
    from gateway.config import Settings
    from policies.selection import CardSelection

__all__ = ["MAX_CARDS_PER_CALL", "Failover"]

MAX_CARDS_PER_CALL = 3
"""Cards one call may try (the first plus failovers after proven card deaths)."""


class Failover:
    """The failover decisions of the call path, over the card manager and the card picker."""

    def __init__(
        self, cards: CardManager, selection: CardSelection | None, settings: Settings
    ) -> None:
        self.cards = cards
        self.selection = selection
        self.settings = settings

    def allowed(self, call: Call, card_id: str, allowed: bool, trunk: bool) -> bool:
        """Whether this call may try another card after its card failed before ringing.

        ``allowed``: the verdict's own answer (classification); ``trunk``: the
        failure was ``trunk-unreachable``.
        """
        ctx = call.ctx
        if not allowed or call.a_final is not None or call.cancelled or ctx is None:
            return False
        if self.selection is None or len(call.cards_tried) >= MAX_CARDS_PER_CALL:
            return False
        if trunk:
            if call.trunk_retry_used:
                return False  # at most one more attempt after a trunk failure
            if ctx.bound_card == card_id and not ctx.spill:
                return False  # a bound agent waits for its card's trunk
        return True

    def next_card(self, call: Call, card_id: str, trunk: bool, now: float) -> tuple[Decision, bool]:
        """Another card for the call, and True when the store could not be asked.

        Excludes every card tried; after ``trunk-unreachable`` also every card
        sharing the failed one's device or trunk, and spends the call's one trunk
        retry. The decision is the picker's (a reservation on success).
        """
        assert call.ctx is not None and self.selection is not None
        call.exclude.update(call.cards_tried)
        if trunk:
            call.trunk_retry_used = True
            call.exclude.update(self.cards.sharing(card_id))
        ctx = replace(call.ctx, exclude=frozenset(call.exclude), last_card=None)
        try:
            return self.selection(ctx, datetime.fromtimestamp(now, UTC)), False
        except StoreUnavailableError as exc:
            decision = Decision.reject(
                RejectReason.STORE_UNAVAILABLE,
                "store",
                str(exc),
                retry_after=getattr(exc, "retry_after", None) or 30,
            )
            return decision, True

    def pool_exhausted(self, call: Call, decision: Decision, now: float) -> None:
        """Queue a ``pool-exhausted`` alert for a call no card could take."""
        card = self.cards.find(call.card) if call.card else None
        pool = (
            card.pool
            if card is not None
            else (self.settings.cards[0].pool if self.settings.cards else "main")
        )
        self.cards.events.append(
            PoolExhausted(
                pool=pool,
                at=now,
                call_id=call.a.call_id,
                retry_after=decision.retry_after,
                skipped={"causes": decision.detail},
            )
        )
