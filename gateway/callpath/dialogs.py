"""Calls in progress as the store keeps them, so that a later process can end them.

Write-ahead B-legs. Every B-leg INVITE is written to the ``call_dialogs`` row of
its call *before* it leaves (the B2BUA chooses its top Via and branch for that):
Call-ID, branch, From tag, CSeq, Request-URI, where it goes, the card and callee,
the A-leg INVITE's identity (Vias, From, To, Call-ID, CSeq, our To tag, source)
and the CDR a crash would leave (outcome ``interrupted``). One write per B-leg
INVITE (a failover or a digest retry is a new INVITE: the row is replaced). At
the answer the row gains the answer time, both legs' confirmed dialogs (the
carrier's To tag is the B-leg's remote tag) and the answered CDR, before the 2xx
is relayed to the agent: an update of those columns, the stored INVITEs are not
written again (37 µs instead of 66 for the whole row). It is deleted when the
call ends. A
provisional answer is not written: it changes nothing a restart needs (the
CANCEL carries no To tag), and a write at the 18x cost ~10 % of the gateway's
CPU per call; so the ``interrupted`` CDR of a call cut while ringing has no
ring time.

The stored CSeq of a confirmed leg is its local CSeq plus :data:`CSEQ_HEADROOM`;
the row is rewritten only when relayed in-dialog requests use that headroom up
or a target refresh moves the remote target.

This module must never send SIP or decide anything about a call. The
write-ahead reports a failure (the B2BUA then keeps the INVITE back: fail
closed); every later write is logged and counted, never fatal to the call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from gateway.callpath.calls import Call, Leg
from gateway.callpath.cdr import Outcome, call_record
from gateway.store import StoreUnavailable
from gateway.store.spool import record_to_json
from gateway.store.sqlite import CallDialogs

if TYPE_CHECKING:
    from gateway.store import CallPathStore

__all__ = ["CSEQ_HEADROOM", "ORPHAN_A_STATUS", "STORED_VERSION", "CallDialogStore"]

log = structlog.get_logger("gateway.callpath.dialogs")

CSEQ_HEADROOM = 100
"""CSeq numbers reserved above a leg's local CSeq when its dialog is stored.

A BYE sent after a restart uses the stored number + 1; a strict peer answers 500
to a CSeq below the last one it saw (RFC 3261 §12.2.2) but must accept a gap
("not an error condition"). Storing the exact CSeq would mean a store write for
every relayed in-dialog request (INFO DTMF…); with the headroom the row is
rewritten only once per this many relayed requests on a leg."""

ORPHAN_A_STATUS = (500, "Server Internal Error")
"""Final answer sent at start-up to an agent's INVITE a dead process left unanswered
(and the final code of the ``interrupted`` CDR of such a call)."""

STORED_VERSION = 1
"""``"v"`` of the ``b_invite`` / ``a_invite`` JSON of a stored call (schema 10)."""


class CallDialogStore:
    """Writes, refreshes and deletes the ``call_dialogs`` row of each call."""

    def __init__(
        self,
        store: CallPathStore,
        stats: dict[str, int],
        unfinished: list[Callable[[], object]],
    ) -> None:
        self.store = store
        #: The B2BUA's counters (``dialogs_stored``, ``b_legs_stored``, ``dialog_store_errors``).
        self.stats = stats
        #: The B2BUA's queue of store writes an outage refused, retried in order.
        self.unfinished = unfinished

    def _failed(self, event: str, call: Call, exc: Exception, **extra: object) -> None:
        """Count and log a store write the call path goes on without."""
        self.stats["dialog_store_errors"] += 1
        log.error(event, call_id=call.a.call_id, key=call.key, error=repr(exc)[:200], **extra)

    @staticmethod
    def _leg_record(leg: Leg | None) -> tuple[dict[str, Any], int] | None:
        """What ending ``leg`` from another process needs, and the CSeq ceiling stored."""
        if leg is None or leg.dialog is None:
            return None
        dialog = leg.dialog
        record = dialog.to_record()
        used = dialog.local_seq if dialog.local_seq is not None else dialog.initial_seq - 1
        ceiling = used + CSEQ_HEADROOM
        record["local_seq"] = ceiling
        data: dict[str, Any] = {
            "dialog": record,
            "transport": str(leg.transport.name),
            "address": [leg.address[0], leg.address[1]],
        }
        return data, ceiling

    def _b_invite_record(self, call: Call) -> dict[str, Any] | None:
        """The current B-leg INVITE as a CANCEL (and an ACK of a late 2xx) needs it."""
        b, invite = call.b, call.b_invite
        if b is None or invite is None:
            return None
        h = invite.headers
        return {
            "v": STORED_VERSION,
            "uri": str(invite.uri),
            "via": h.get("Via"),
            "from": h.get("From"),
            "to": h.get("To"),
            "call_id": invite.call_id,
            "cseq": invite.cseq.seq,
            "contact": h.get("Contact"),
            "to_tag": b.dialog.remote_tag if b.dialog is not None else None,
            "transport": str(b.transport.name),
            "address": [b.address[0], b.address[1]],
        }

    def _a_invite_record(self, call: Call) -> dict[str, Any]:
        """The A-leg INVITE as a final response to it needs it (built once per call)."""
        if call.a_stored is None:
            req = call.a_req.request
            h = req.headers
            call.a_stored = {
                "v": STORED_VERSION,
                "uri": str(req.uri),
                "via": list(h.get_all("Via")),
                "from": h.get("From"),
                "to": h.get("To"),
                "call_id": req.call_id,
                "cseq": req.cseq.seq,
                "tag": call.a.local_tag,
                "transport": str(call.a.transport.name),
                "address": [call.a.address[0], call.a.address[1]],
            }
        return call.a_stored

    @staticmethod
    def _cdr(call: Call) -> str:
        """The CDR the next start writes if this process dies during the call: answered
        (200) or not (the 500 the agent then gets)."""
        code = 200 if call.answered else ORPHAN_A_STATUS[0]
        return record_to_json(call_record(call, Outcome.INTERRUPTED, code, None))

    def _call_row(
        self, call: Call, a: dict[str, Any] | None = None, b: dict[str, Any] | None = None
    ) -> CallDialogs:
        """The stored form of the call as it stands (``a``/``b``: confirmed legs)."""
        return CallDialogs(
            key=call.key,
            call_id=call.a.call_id,
            card=call.card,
            callee=call.destination,
            attempt_at=call.attempt_at,
            answer_at=call.answer_at if call.answered else None,
            a_leg=a,
            b_leg=b,
            cdr=self._cdr(call),
            b_invite=self._b_invite_record(call),
            a_invite=self._a_invite_record(call),
        )

    def write_ahead(self, call: Call) -> bool:
        """Store the call with its current B-leg INVITE (one write); False when it failed.

        Called before each B-leg INVITE leaves. Once the call is answered the row
        is :meth:`store_answered`'s.
        """
        if call.answered or call.ended:
            return True
        try:
            self.store.save_call_dialogs(self._call_row(call))
            # A new call's reservation was batched with this row: both commit here,
            # before the INVITE leaves (no batch open: already committed).
            self.store.commit()
        except Exception as exc:
            self._failed("call.b_leg.store_failed", call, exc, b_call_id=call.b_call_id)
            return False
        self.stats["b_legs_stored"] += 1
        call.persisted = True
        return True

    def store_answered(self, call: Call) -> None:
        """Persist the answered call's dialogs (never raises: the call goes on regardless).

        The write-ahead row gains the answer time, both confirmed legs and the answered
        CDR; its stored INVITEs are not rewritten. Without a row (the write-ahead
        failed, or a store outage took it) the whole row is written.
        """
        a = self._leg_record(call.a)
        b = self._leg_record(call.b)
        if b is None:
            return
        a_leg = None if a is None else a[0]
        try:
            answered = (
                call.persisted
                and call.answer_at is not None
                and self.store.answer_call_dialogs(
                    call.key,
                    answer_at=call.answer_at,
                    a_leg=a_leg,
                    b_leg=b[0],
                    cdr=self._cdr(call),
                )
            )
            if not answered:
                self.store.save_call_dialogs(self._call_row(call, a_leg, b[0]))
        except Exception as exc:
            self._failed("call.dialogs.store_failed", call, exc)
            return
        self.stats["dialogs_stored"] += 1
        call.persisted = True
        for side, leg, rec in (("a", call.a, a), ("b", call.b, b)):
            if rec is not None and leg is not None and leg.dialog is not None:
                call.stored[side] = (rec[1], str(leg.dialog.remote_target))

    def refresh(self, call: Call) -> None:
        """Rewrite a stored leg whose CSeq used up the headroom or whose target moved."""
        if not call.persisted or call.ended:
            return
        for side, leg in (("a", call.a), ("b", call.b)):
            if leg is None or leg.dialog is None or side not in call.stored:
                continue
            ceiling, target = call.stored[side]
            dialog = leg.dialog
            if (dialog.local_seq or 0) < ceiling and str(dialog.remote_target) == target:
                continue
            rec = self._leg_record(leg)
            if rec is None:
                continue
            try:
                self.store.update_call_dialog_leg(call.key, side, rec[0])
            except Exception as exc:
                self._failed("call.dialogs.update_failed", call, exc)
                continue
            call.stored[side] = (rec[1], str(dialog.remote_target))

    def forgotten(self, call: Call) -> None:
        """The caller deleted the call's stored row itself (with the call's other end writes)."""
        call.persisted = False
        call.stored.clear()

    def forget(self, call: Call) -> None:
        """The call ended: delete its stored dialogs (retried after a store outage; a
        row left at a crash costs one stray BYE answered 481 at the next start)."""
        if not call.persisted:
            return
        self.forgotten(call)
        delete = functools.partial(self.store.delete_call_dialogs, call.key)
        try:
            delete()
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                self.unfinished.append(delete)  # retried once the store answers
            self._failed("call.dialogs.delete_failed", call, exc)
