"""Inbound routing: a carrier's INVITE for a card's number → the agent who should ring.

A callee calling a card's number back reaches the gateway from the carrier.
The target is, in order (DESIGN.md "Inbound"):

1. the agent bound to that card (``[[users]] card = …``) when registered;
2. ``[inbound] fallback_user`` when registered;
3. nobody: 480 Temporarily Unavailable.

The card is found from the Request-URI user part, else the To user part,
compared as digits (``+8613800000001``, ``8613800000001`` and
``tel``-style spellings match alike).

This module must never route a request that did not come from a carrier
address (the caller checks that), never send anything itself, and never log
the caller's number unmasked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.callpath.registrar import Binding, Registrar
from gateway.config import Settings
from gateway.sip import Request
from gateway.sip.errors import SIPError

__all__ = ["InboundRoute", "InboundRouter"]


@dataclass(frozen=True, slots=True)
class InboundRoute:
    """Where an inbound call goes: the user, its binding and the card called (if known)."""

    user: str | None
    binding: Binding | None
    card: str | None


def _digits(text: str | None) -> str:
    return "".join(ch for ch in (text or "") if ch.isdigit())


class InboundRouter:
    """Maps a card's number to its bound agent, with the configured fallback."""

    def __init__(self, settings: Settings, registrar: Registrar) -> None:
        self.registrar = registrar
        #: Called with a user and ``now`` before its bindings are looked up (a worker of
        #: ``dialgate run --workers N`` reads them from the store its siblings share).
        self.refresh: Callable[[str, float], None] | None = None
        self.fallback = settings.inbound.fallback_user
        self._card_by_number = {_digits(c.number): c.id for c in settings.cards}
        self._agent_by_card: dict[str, str] = {}
        for user in settings.users:
            if user.card is not None:
                self._agent_by_card.setdefault(user.card, user.name)

    def card_for(self, req: Request) -> str | None:
        """The card whose number the call is for (Request-URI user, else To user)."""
        card = self._card_by_number.get(_digits(req.uri.user))
        if card is None:
            try:
                card = self._card_by_number.get(_digits(req.to.uri.user))
            except SIPError:
                card = None
        return card

    def route(self, req: Request, now: float) -> InboundRoute:
        """The agent and contact to ring, or an empty route (answer 480)."""
        card = self.card_for(req)
        candidates: list[str] = []
        if card is not None and card in self._agent_by_card:
            candidates.append(self._agent_by_card[card])
        if self.fallback is not None:
            candidates.append(self.fallback)
        for user in candidates:
            if self.refresh is not None:
                self.refresh(user, now)
            bindings = self.registrar.lookup(user, now)
            if bindings:
                return InboundRoute(user, bindings[0], card)
        return InboundRoute(None, None, card)
