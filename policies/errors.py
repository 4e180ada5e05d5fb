"""Exceptions of the policy layer, each carrying the SIP status to answer with.

Policies raise these instead of crashing; the pipeline (or the gateway)
catches them and answers with `status_code`. Nothing here may ever hold a
secret or an unmasked callee number in its message.
"""

from __future__ import annotations

from policies.decision import Decision, RejectReason

__all__ = ["AddressIncompleteError", "PolicyError", "StoreUnavailableError"]


class PolicyError(Exception):
    """Base class: a policy could not decide; `status_code` is the SIP answer."""

    status_code: int = 500
    reason: RejectReason | None = None

    def to_decision(self, policy: str, retry_after: int | None = None) -> Decision:
        """The rejection the gateway should answer with."""
        if self.reason is None:
            raise ValueError("this error has no wire reason") from self
        return Decision.reject(self.reason, policy, str(self), retry_after)


class AddressIncompleteError(PolicyError):
    """The dialled string is not a routable number (484 Address Incomplete)."""

    status_code = 484
    reason = RejectReason.ADDRESS_INCOMPLETE


class StoreUnavailableError(PolicyError):
    """A storage protocol implementation cannot answer; policies fail closed (503)."""

    status_code = 503
    reason = RejectReason.STORE_UNAVAILABLE
