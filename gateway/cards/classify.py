"""One classification of every B-leg outcome: what a carrier's answer proves about the card.

DESIGN.md call flow step 5 and ``../shared/CARRIERS.md`` "The rule this project
follows", as one table (:data:`TABLE`) a reader can check against a carrier's
documentation. Every final answer to a card's INVITE (and every answer to its
REGISTER) falls into exactly one of three classes:

``card-dead``
    The answer proves the card cannot place calls: a carrier rule matched
    (status plus a pattern on the reason phrase, the ``Reason`` text or the
    ``Warning`` text), 402 (arrears), a Q.850 cause the carrier's
    documentation says names the subscription (``dead_causes``), the card's
    credentials refused (a final 401/407), or its REGISTER refused.
    The card is suspended with the evidence; the call fails over only when the
    far side never rang.
``trunk-unreachable``
    The callee was never rung because the card's way out failed: no response
    at all to the INVITE (Timer B, transport error), a refusal (4xx-6xx) whose Q.850
    cause names the originating side (34, 38, 41, 42, 47), or a 503 with
    Retry-After (the carrier's server says it is unavailable for a while). The
    card *rests* (a cooldown, not a suspension) and the answer counts toward
    ``suspect``; at most one more attempt, on a card that does not share the
    device or trunk.
``callee-outcome``
    Everything else, including every answer after an 18x: the callee's. It is
    relayed and never retried on another card. Refusals that could be the
    card's as well as the destination's (403, 404, 5xx without a rule or a
    cause, before any 18x) are *ambiguous*: they feed the per-card suspicion
    (N of them to N distinct callees within a window make the card
    ``suspect``), never a suspension on their own. No-answer outcomes
    (408/480/487) are never ambiguous: they count in the answer-rate limit only.

The module is pure: no clock, no I/O, no state. :func:`classify` is the only
decision; :class:`gateway.cards.CardManager` applies the result to the card.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies.quotas import SuspendReason

__all__ = [
    "AMBIGUOUS_STATUSES",
    "DEFAULT_DEAD_CAUSES",
    "ORIGINATING_CAUSES",
    "TABLE",
    "Answer",
    "BLegClass",
    "CarrierRule",
    "Classification",
    "SuspendReason",
    "classify",
    "q850_cause",
]


class BLegClass(StrEnum):
    """The three classes of a B-leg outcome."""

    CARD_DEAD = "card-dead"
    TRUNK_UNREACHABLE = "trunk-unreachable"
    CALLEE = "callee-outcome"


#: Q.850 causes that name the originating side (the gateway port, its SIM, the trunk):
#: no circuit/channel (34), network out of order (38), temporary failure (41),
#: switching equipment congestion (42), resource unavailable (47). RFC 3398 §7.2.4.1.
ORIGINATING_CAUSES = frozenset({34, 38, 41, 42, 47})

#: Q.850 causes that *can* name the subscription (GSM operator-determined barring 8,
#: facility not subscribed 50, calls barred 55, bearer capability not authorized 57).
#: Not applied unless a carrier lists them in ``dead_causes``: vendors map them
#: differently and some also use them for the callee's side.
DEFAULT_DEAD_CAUSES: frozenset[int] = frozenset()

#: Final statuses that, before any 18x and with no rule or cause explaining them,
#: could be the card's or the destination's: they feed the card's suspicion.
AMBIGUOUS_STATUSES = frozenset({403, 404}) | frozenset(range(500, 600))

#: Longest rest a carrier's Retry-After can impose on a card (seconds).
MAX_REST = 3600.0

_CAUSE = re.compile(r"(?i)(?:^|;)\s*cause\s*=\s*(\d{1,3})\s*(?:;|$)")


def _elements(value: str) -> list[str]:
    """The comma-separated values of a header, commas inside quoted strings kept."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def _without_quoted(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


def q850_cause(reason_headers: Iterable[str]) -> int | None:
    """The Q.850 cause of the first ``Reason: Q.850;cause=N`` (RFC 3326), None when absent.

    Parameters may come in any order (``Q.850;text="a, b";cause=31``); a cause
    outside 0-127 is no Q.850 cause.
    """
    for value in reason_headers:
        for element in _elements(value):
            protocol, _, params = _without_quoted(element).strip().partition(";")
            if protocol.strip().upper() != "Q.850":
                continue
            match = _CAUSE.search(";" + params)
            if match is not None and int(match.group(1)) <= 127:
                return int(match.group(1))
    return None


@dataclass(frozen=True, slots=True)
class CarrierRule:
    """Carrier response → card reason: ``status`` plus an optional regex.

    The regex is searched in the reason phrase, the ``Reason`` header text and
    the ``Warning`` text; any of them matching is enough.
    """

    status: int
    reason: SuspendReason
    match: re.Pattern[str] | None = None

    def matches(
        self, status: int, reason_phrase: str, warning: str | None, reason_header: str | None = None
    ) -> bool:
        """Whether a response with this status and texts falls under the rule."""
        if status != self.status:
            return False
        if self.match is None:
            return True
        return any(
            text and self.match.search(text) for text in (reason_phrase, warning, reason_header)
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """One final answer to a card's request, with what was seen before it.

    ``local`` answers were made by the gateway (Timer B → 408, a transport
    error → 503). ``provisional`` is True once any 1xx arrived (a 100 too),
    ``ringing`` once an 18x arrived from the far side. ``register`` marks an
    answer to the card's REGISTER (health check or suspect probe).
    """

    status: int
    reason_phrase: str = ""
    warning: str | None = None
    reason_header: str | None = None
    retry_after: float | None = None
    local: bool = False
    provisional: bool = False
    ringing: bool = False
    register: bool = False


@dataclass(frozen=True, slots=True)
class Classification:
    """What an answer means: its class, the table row that decided, and what follows.

    ``reason``: the suspension reason of a ``card-dead`` answer. ``ambiguous``:
    counts toward the card's suspicion. ``rest``: seconds the card rests (a
    cooldown). ``failover``: the call may move to another card (the callee was
    never rung). ``row``: the :data:`TABLE` row, for logs and evidence.
    """

    kind: BLegClass
    row: str
    reason: SuspendReason | None = None
    ambiguous: bool = False
    rest: float | None = None
    failover: bool = False
    cause: int | None = None


#: The rows of :func:`classify`, in the order they are tried (first match wins).
TABLE: Sequence[tuple[str, str, str]] = (
    ("2xx", "answered", "callee-outcome"),
    ("487", "Request Terminated (a CANCEL)", "callee-outcome"),
    ("rule", "a carrier rule matches status + reason phrase / Reason / Warning text", "card-dead"),
    ("402", "Payment Required: arrears", "card-dead"),
    ("dead-cause", "a Q.850 cause listed in the carrier's dead_causes", "card-dead"),
    ("credentials", "a final 401/407: the card's credentials refused or missing", "card-dead"),
    ("register", "the card's REGISTER refused (4xx but 408, 6xx)", "card-dead"),
    ("ringing", "anything after an 18x from the far side", "callee-outcome"),
    ("no-response", "no response at all: Timer B, transport error", "trunk-unreachable"),
    (
        "originating-cause",
        "Q.850 cause 34, 38, 41, 42 or 47 on a refusal (4xx-6xx) before any 18x",
        "trunk-unreachable",
    ),
    (
        "503-retry-after",
        "503 with Retry-After before any 18x: the server rests",
        "trunk-unreachable",
    ),
    ("ambiguous", "403, 404, 5xx before any 18x, no rule or cause", "callee-outcome (suspicion)"),
    ("callee", "everything else: 404/410/480/484/486/408/6xx…", "callee-outcome"),
)


def classify(
    answer: Answer,
    rules: Sequence[CarrierRule] = (),
    *,
    dead_causes: Iterable[int] = DEFAULT_DEAD_CAUSES,
    rest_seconds: float = 30.0,
) -> Classification:
    """The class of one final answer to a card's INVITE or REGISTER (see :data:`TABLE`).

    ``rules`` are the carrier's, in file order. ``rest_seconds``: how long the card rests after a
    ``trunk-unreachable`` answer without a Retry-After.
    """
    status = answer.status
    if status < 200 or status > 699:
        raise ValueError(f"not a final response status: {status}")
    # A REGISTER has no callee to move: its verdicts never fail a call over.
    before_ring = not answer.ringing and not answer.register
    cause = None if answer.reason_header is None else q850_cause([answer.reason_header])
    if 200 <= status < 300:
        return Classification(BLegClass.CALLEE, "2xx")
    if status == 487 and not answer.register:
        # A CANCEL ended it (the caller's, or Timer C's): never the card's.
        return Classification(BLegClass.CALLEE, "487", cause=cause)
    if not answer.local:
        for rule in rules:
            if rule.matches(status, answer.reason_phrase, answer.warning, answer.reason_header):
                return Classification(
                    BLegClass.CARD_DEAD, "rule", rule.reason, failover=before_ring, cause=cause
                )
        if status == 402:
            return Classification(
                BLegClass.CARD_DEAD, "402", SuspendReason.ARREARS, failover=before_ring, cause=cause
            )
        if cause is not None and cause in set(dead_causes):
            return Classification(
                BLegClass.CARD_DEAD,
                "dead-cause",
                SuspendReason.UNKNOWN,
                failover=before_ring,
                cause=cause,
            )
        if status in (401, 407):
            # The B2BUA answers one challenge with the card's credentials; a final
            # 401/407 means they were refused (or the card has none): the card's.
            return Classification(
                BLegClass.CARD_DEAD, "credentials", SuspendReason.FAULT, failover=before_ring
            )
        if answer.register and ((400 <= status < 500 and status != 408) or status >= 600):
            return Classification(BLegClass.CARD_DEAD, "register", SuspendReason.UNKNOWN)
    if answer.register:
        # A REGISTER that timed out or met a 5xx proves nothing about the card.
        return Classification(BLegClass.CALLEE, "callee", cause=cause)
    if answer.ringing:
        return Classification(BLegClass.CALLEE, "ringing", cause=cause)
    if answer.local:
        if answer.provisional:
            # Something came back (a 100): the network took the call.
            return Classification(BLegClass.CALLEE, "callee")
        return Classification(
            BLegClass.TRUNK_UNREACHABLE,
            "no-response",
            ambiguous=True,
            rest=rest_seconds,
            failover=True,
        )
    if cause is not None and cause in ORIGINATING_CAUSES and status >= 400:
        # On a refusal only (a GSM port without a channel answers 503, sometimes 480 or
        # 403): a redirect is not one, whatever cause it carries, and is relayed.
        return Classification(
            BLegClass.TRUNK_UNREACHABLE,
            "originating-cause",
            ambiguous=True,
            rest=_rest(answer.retry_after, rest_seconds),
            failover=True,
            cause=cause,
        )
    if status == 503 and answer.retry_after is not None:
        return Classification(
            BLegClass.TRUNK_UNREACHABLE,
            "503-retry-after",
            ambiguous=True,
            rest=_rest(answer.retry_after, rest_seconds),
            failover=True,
            cause=cause,
        )
    if status in AMBIGUOUS_STATUSES:
        return Classification(BLegClass.CALLEE, "ambiguous", ambiguous=True, cause=cause)
    return Classification(BLegClass.CALLEE, "callee", cause=cause)


def _rest(retry_after: float | None, default: float) -> float:
    if retry_after is None or retry_after <= 0:
        return default
    return min(float(retry_after), MAX_REST)
