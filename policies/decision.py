"""The one outcome type of the policy pipeline: allow (with a card) or reject.

A `Decision` is what the gateway turns into a SIP answer: an allowed call
leaves on `card_id`; a rejected call is answered with `sip_code`, a
`Reason: SIP;cause=…;text="…"` header and, when known, `Retry-After`.
The reason texts are the contract in DESIGN.md "Policy outcomes on the wire"
and must never change spelling.

This module must never read a clock, touch I/O, or put an unmasked callee
number into `detail` (details end up in logs and MQTT events).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "REASON_SIP_CODES",
    "Decision",
    "RejectReason",
    "reason_header",
]


class RejectReason(StrEnum):
    """Reason texts carried in the `Reason` header of a policy rejection."""

    DNC = "dnc"
    NO_CONSENT = "no-consent"
    CALLING_HOURS = "calling-hours"
    FREQUENCY_CAP = "frequency-cap"
    AGENT_LIMIT = "agent-limit"
    DESTINATION_BLOCKED = "destination-blocked"
    NO_CARD_AVAILABLE = "no-card-available"
    STORE_UNAVAILABLE = "store-unavailable"
    ADDRESS_INCOMPLETE = "address-incomplete"


#: The SIP status each reason is answered with (DESIGN.md table; 484 per call flow step 2).
REASON_SIP_CODES: dict[RejectReason, int] = {
    RejectReason.DNC: 403,
    RejectReason.NO_CONSENT: 403,
    RejectReason.CALLING_HOURS: 403,
    RejectReason.FREQUENCY_CAP: 403,
    RejectReason.AGENT_LIMIT: 403,
    RejectReason.DESTINATION_BLOCKED: 403,
    RejectReason.NO_CARD_AVAILABLE: 503,
    RejectReason.STORE_UNAVAILABLE: 503,
    RejectReason.ADDRESS_INCOMPLETE: 484,
}


def reason_header(sip_code: int, text: str) -> str:
    """Render the value of a `Reason` header (RFC 3326): `SIP;cause=403;text="dnc"`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'SIP;cause={sip_code};text="{escaped}"'


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of one policy step or of the whole pipeline.

    Build instances with `Decision.allow`, `Decision.reject` or
    `Decision.emergency_bypass`; the constructor does not check coherence.
    """

    allowed: bool
    policy: str
    card_id: str | None = None
    sip_code: int | None = None
    reason: RejectReason | None = None
    retry_after: int | None = None
    detail: str = ""
    bypass: bool = False

    @classmethod
    def allow(cls, policy: str, card_id: str | None = None, detail: str = "") -> Decision:
        """An allow; the final one of a pipeline carries the chosen card id."""
        return cls(allowed=True, policy=policy, card_id=card_id, detail=detail)

    @classmethod
    def emergency_bypass(cls, policy: str, detail: str = "") -> Decision:
        """An allow that tells the pipeline to skip every check an emergency call bypasses."""
        return cls(allowed=True, policy=policy, detail=detail, bypass=True)

    @classmethod
    def reject(
        cls,
        reason: RejectReason,
        policy: str,
        detail: str = "",
        retry_after: int | None = None,
    ) -> Decision:
        """A rejection; the SIP code follows from the reason (DESIGN.md table)."""
        if retry_after is not None and retry_after < 0:
            retry_after = 0
        return cls(
            allowed=False,
            policy=policy,
            sip_code=REASON_SIP_CODES[reason],
            reason=reason,
            retry_after=retry_after,
            detail=detail,
        )

    @property
    def reason_header(self) -> str | None:
        """`Reason` header value for a rejection, None for an allow."""
        if self.allowed or self.reason is None or self.sip_code is None:
            return None
        return reason_header(self.sip_code, str(self.reason))

    @property
    def retry_after_header(self) -> str | None:
        """`Retry-After` header value (whole seconds), None when not applicable."""
        if self.allowed or self.retry_after is None:
            return None
        return str(self.retry_after)
