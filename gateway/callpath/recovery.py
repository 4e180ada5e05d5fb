"""Ending what a dead process left, and 2xx answers nobody wants any more.

After a crash the next start calls :meth:`OrphanRecovery.end_all` for every
``call_dialogs`` row (see :mod:`gateway.callpath.dialogs`). An answered row: a
BYE on each leg (``Reason: SIP;cause=487;text="gateway restarted"``). An
unanswered one: a CANCEL for the stored INVITE (same Request-URI, Call-ID, From,
To, CSeq number and branch, RFC 3261 §9.1; a 481 means the carrier had already
forgotten it) and a final ``500`` with ``Reason: …text="gateway restarted"`` to
the agent's INVITE. Either way the row's ``interrupted`` CDR is written unless
the dead process wrote the call's CDR, then the row goes; the card's
concurrency slot was already freed by the ledger's ``recover``.

:class:`StrayAnswers`: a 2xx to a B-leg INVITE no call listens to any more (a
failover moved on, the call was CANCELled or ended, or the INVITE was a dead
process's) is ACKed and hung up with a BYE (§13.2.2.4, §15: the far end would
otherwise keep the line up); a retransmission of that 2xx gets the same ACK
again, not a second BYE.

This module must never touch a call in progress: it works from stored rows and
bare INVITEs only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

import structlog

from gateway.callpath.calls import Side
from gateway.callpath.dialogs import ORPHAN_A_STATUS
from gateway.sip import Request, Response
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.errors import SIPError
from gateway.sip.message import make_response
from gateway.sip.transaction import build_cancel
from gateway.sip.uri import URI
from gateway.store import StoreUnavailable
from gateway.store.spool import CdrWriter, record_from_json
from gateway.store.sqlite import CallDialogs
from gateway.transport import Address
from gateway.transport.endpoint import ClientRequest, Peer, SipEndpoint
from policies.decision import reason_header

if TYPE_CHECKING:
    from gateway.sip.dialog import DialogRecord
    from gateway.store import CallPathStore

__all__ = ["ABANDONED_MEMORY", "ORPHAN_REASON", "OrphanRecovery", "StrayAnswers"]

log = structlog.get_logger("gateway.callpath.recovery")

ORPHAN_REASON = reason_header(487, "gateway restarted")
"""Reason of the BYEs sent at start-up for calls a dead process left up (RFC 3326)."""

ORPHAN_A_REASON = reason_header(500, "gateway restarted")

ORPHAN_CONCURRENCY = 64
"""BYE transactions in flight at once while ending orphaned calls."""

ABANDONED_MEMORY = 1024
"""B-leg INVITEs given up on (CANCELled, no final answer) remembered for a late 2xx."""


class StrayAnswers:
    """ACK + BYE for 2xx answers to INVITEs nobody listens to; bounded memory of them."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        # (Call-ID, From tag) of B-leg INVITEs given up on → their late-2xx handler.
        # Restored at start-up for the INVITEs a dead process left unanswered too.
        self._abandoned: dict[tuple[str, str | None], Callable[[Response], None]] = {}

    def answer(self, resp: Response) -> None:
        """A response no transaction took: hand it to its INVITE's handler, if any."""
        try:
            late = self._abandoned.get((resp.call_id, resp.from_.tag))
        except SIPError:
            return
        if late is not None:
            late(resp)

    def late_2xx(
        self,
        invite: Request,
        peer: Peer,
        call_id: str | None,
        acked: dict[str | None, Request] | None = None,
    ) -> Callable[[Response], None]:
        """The handler of 2xx answers to an INVITE nobody wants: ACK + BYE once per To tag,
        the same ACK again for a retransmission (``acked``: To tag → ACK already sent)."""
        sent_acks: dict[str | None, Request] = {} if acked is None else acked

        def late(resp: Response) -> None:
            if not 200 <= resp.status < 300:
                return
            try:
                tag = resp.to.tag
            except SIPError:
                return
            ack = sent_acks.get(tag)
            if ack is not None:
                self.endpoint.send_stateless(ack, peer.address, transport=peer.transport)
                return
            if len(sent_acks) >= 8:
                return  # a misbehaving peer forking without end: bounded
            sent = self.ack_and_bye(invite, resp, peer, call_id)
            if sent is not None:
                sent_acks[tag] = sent

        return late

    def remember(self, invite: Request, late: Callable[[Response], None]) -> None:
        """Route stray 2xx answers of ``invite`` (Call-ID, From tag) to ``late``; bounded FIFO."""
        try:
            key = (invite.call_id, invite.from_.tag)
        except SIPError:
            return
        self._abandoned[key] = late
        while len(self._abandoned) > ABANDONED_MEMORY:
            self._abandoned.pop(next(iter(self._abandoned)))

    def ack_and_bye(
        self, invite: Request, resp: Response, peer: Peer, call_id: str | None = None
    ) -> Request | None:
        """ACK a 2xx nobody wants and hang it up with a BYE; return the ACK sent."""
        try:
            dialog = Dialog.from_uac(invite, resp)
        except (DialogError, SIPError):
            return None
        ack = dialog.create_request("ACK", cseq=invite.cseq.seq)
        self.endpoint.send_stateless(ack, peer.address, transport=peer.transport)
        bye = dialog.create_request("BYE")
        self.endpoint.send_request(bye, peer.address, transport=peer.transport)
        log.info(
            "call.stray_2xx_hung_up", call_id=call_id, b_call_id=invite.call_id, status=resp.status
        )
        return ack


class OrphanRecovery:
    """Ends the calls of the ``call_dialogs`` rows a dead process left."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        store: CallPathStore,
        cdrs: CdrWriter,
        strays: StrayAnswers,
        stats: dict[str, int],
        mask: Callable[[str], str],
    ) -> None:
        self.endpoint = endpoint
        self.store = store
        self.cdrs = cdrs
        self.strays = strays
        #: The B2BUA's counters (``orphans_ended``, ``orphans_cancelled``, ``dialog_store_errors``).
        self.stats = stats
        #: How a callee number is logged (masked when ``[policy] mask_numbers``).
        self.mask = mask

    async def end_all(self, live: Container[str]) -> int:
        """End the calls a dead process left; return how many stored calls were ended.

        For every row of ``call_dialogs`` (written by a previous process of this
        gateway; ``live``: keys of this process's own calls, skipped): an answered
        call gets a BYE on each stored leg; an unanswered one a CANCEL of its
        stored B-leg INVITE and a final 500 to the agent's INVITE, and a 2xx the
        carrier sends later for that INVITE is ACKed and hung up (the stray-2xx
        handler is installed before anything is sent). Each request is a client
        transaction (its own Timer F: no answer ends as a local 408); the row's
        ``interrupted`` CDR is written unless the call's CDR exists, then the row
        is deleted whatever the answers (481 or 408 mean the peer already forgot
        the call). One log line per call. Runs in the background at start-up;
        cancelled, it leaves the remaining rows for the next start.
        """
        store = self.store
        try:
            rows = store.call_dialogs()
        except StoreUnavailable as exc:
            log.error("call.orphans.unreadable", error=str(exc))
            return 0
        rows = [row for row in rows if row.key not in live]
        if not rows:
            return 0
        log.info("call.orphans.found", count=len(rows))
        gate = asyncio.Semaphore(ORPHAN_CONCURRENCY)
        # Every stored INVITE's late 2xx is caught before the first request leaves.
        restored = {row.key: self._restore_invite(row) for row in rows}

        async def one(row: CallDialogs) -> bool:
            async with gate:
                found = restored[row.key]
                if found is not None and row.answer_at is None:
                    return await self._end_unanswered_orphan(row, *found)
                return await self._end_orphan(row)

        done = await asyncio.gather(*(one(row) for row in rows))
        ended = sum(1 for ok in done if ok)
        self.stats["orphans_ended"] += ended
        return ended

    def _restore_invite(self, row: CallDialogs) -> tuple[Request, Peer] | None:
        """The stored B-leg INVITE and its peer, its stray-2xx handler installed; None when
        the row has none (written before schema 10) or it is unreadable."""
        rec = row.b_invite
        if rec is None:
            return None
        try:
            headers = [
                ("Via", str(rec["via"])),
                ("Max-Forwards", "70"),
                ("From", str(rec["from"])),
                ("To", str(rec["to"])),
                ("Call-ID", str(rec["call_id"])),
                ("CSeq", f"{int(rec['cseq'])} INVITE"),
            ]
            if rec.get("contact"):
                headers.append(("Contact", str(rec["contact"])))
            invite = Request("INVITE", URI.parse(str(rec["uri"])), headers)
            host, port = rec["address"]
            address: Address = (str(host), int(port))
            transport = self.endpoint.transport(str(rec["transport"]), ipv6=":" in address[0])
            invite.from_.tag  # noqa: B018 — parsed now: a damaged row fails here
        except (SIPError, LookupError, TypeError, ValueError) as exc:
            log.warning(
                "call.orphan.bad_invite", call_id=row.call_id, key=row.key, error=repr(exc)[:200]
            )
            return None
        peer = Peer(transport, address)
        acked: dict[str | None, Request] = {}
        if row.answer_at is not None and row.b_leg is not None:
            # Answered: a 2xx the carrier still retransmits (our ACK never left) gets
            # its ACK only; the BYE goes in the stored dialog.
            try:
                dialog = Dialog.from_record(row.b_leg["dialog"])
                acked[dialog.remote_tag] = dialog.create_request("ACK", cseq=invite.cseq.seq)
            except (DialogError, SIPError, LookupError, TypeError, ValueError):
                pass
        self.strays.remember(invite, self.strays.late_2xx(invite, peer, row.call_id, acked))
        return invite, peer

    async def _end_unanswered_orphan(self, row: CallDialogs, invite: Request, peer: Peer) -> bool:
        """CANCEL the stored B-leg INVITE, answer the agent's INVITE, CDR, forget the row.

        The CDR is written as soon as the CANCEL has left (a carrier that ignores a
        CANCEL keeps it waiting up to 64*T1); the row goes after its answer.
        """
        a_status = self._answer_orphan_a(row)
        handle: ClientRequest | None = None
        try:
            handle = self.endpoint.send_request(
                build_cancel(invite), peer.address, transport=peer.transport, add_via=False
            )
        except Exception as exc:
            log.warning(
                "call.orphan.cancel_failed", call_id=row.call_id, key=row.key, error=repr(exc)[:200]
            )
        self.stats["orphans_cancelled"] += 1
        cdr = self._orphan_cdr(row)
        cancel_status = None if handle is None else (await handle.final).status
        deleted = self._forget_orphan(row)
        log.info(
            "call.orphan_ended",
            call_id=row.call_id,
            key=row.key,
            b_call_id=invite.call_id,
            card=row.card,
            destination=self.mask(row.callee),
            answered=False,
            cancel_status=cancel_status,
            a_status=a_status,
            cdr=cdr,
            row_deleted=deleted,
        )
        return True

    def _answer_orphan_a(self, row: CallDialogs) -> int | None:
        """Send the final 500 to the stored A-leg INVITE (statelessly: no transaction
        survived); its status, None when nothing could be sent."""
        rec = row.a_invite
        if rec is None:
            return None
        try:
            headers = [("Via", str(v)) for v in rec["via"]]
            headers += [
                ("From", str(rec["from"])),
                ("To", str(rec["to"])),
                ("Call-ID", str(rec["call_id"])),
                ("CSeq", f"{int(rec['cseq'])} INVITE"),
            ]
            req = Request("INVITE", URI.parse(str(rec["uri"])), headers)
            status, phrase = ORPHAN_A_STATUS
            out = make_response(
                req, status, phrase, to_tag=str(rec["tag"]), headers=[("Reason", ORPHAN_A_REASON)]
            )
            host, port = rec["address"]
            address: Address = (str(host), int(port))
            transport = self.endpoint.transport(str(rec["transport"]), ipv6=":" in address[0])
            sent = transport.send_response(out, address, symmetric=self.endpoint.symmetric)
        except (SIPError, LookupError, TypeError, ValueError, OSError) as exc:
            log.warning(
                "call.orphan.bad_a_invite", call_id=row.call_id, key=row.key, error=repr(exc)[:200]
            )
            return None
        return status if sent else None

    def _orphan_cdr(self, row: CallDialogs) -> str:
        """Write the row's ``interrupted`` CDR unless the call's CDR exists; say which."""
        cdr = "missing"
        try:
            if any(c.attempt_at == row.attempt_at for c in self.store.cdrs(call_id=row.call_id)):
                # Written before the crash (the process died between the CDR and the
                # row's delete): it already holds the end.
                cdr = "stored"
        except StoreUnavailable:
            cdr = "unknown"
        if cdr == "missing" and row.cdr:
            # The record stored with the row: outcome "interrupted", no end (the talk
            # time is unknown; the call_starts row, orphaned by recover, counts the start).
            try:
                written = self.cdrs.write(record_from_json(row.cdr))
                cdr = "written" if written else "spooled"
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "call.orphan.bad_cdr", call_id=row.call_id, key=row.key, error=repr(exc)[:200]
                )
        return cdr

    def _forget_orphan(self, row: CallDialogs) -> bool:
        """Delete an ended orphan's row; False when it could not be (or was gone)."""
        try:
            return self.store.delete_call_dialogs(row.key)
        except StoreUnavailable as exc:
            self.stats["dialog_store_errors"] += 1
            log.error("call.orphan.delete_failed", call_id=row.call_id, key=row.key, error=str(exc))
            return False

    async def _end_orphan(self, row: CallDialogs) -> bool:
        """BYE both stored legs of an answered call, CDR, forget the row."""
        b_status, a_status = await asyncio.gather(
            self._orphan_bye(row, "b", row.b_leg), self._orphan_bye(row, "a", row.a_leg)
        )
        cdr = self._orphan_cdr(row)
        deleted = self._forget_orphan(row)
        log.info(
            "call.orphan_ended",
            call_id=row.call_id,
            key=row.key,
            card=row.card,
            destination=self.mask(row.callee),
            answered=True,
            b_status=b_status,
            a_status=a_status,
            cdr=cdr,
            row_deleted=deleted,
        )
        return b_status is not None or a_status is not None

    async def _orphan_bye(
        self, row: CallDialogs, side: Side, leg: dict[str, Any] | None
    ) -> int | None:
        """Send the BYE of one stored leg; its final status (None when nothing was sent)."""
        if leg is None:
            return None
        try:
            record: DialogRecord = leg["dialog"]
            dialog = Dialog.from_record(record)
            host, port = leg["address"]
            address: Address = (str(host), int(port))
            transport = self.endpoint.transport(str(leg["transport"]), ipv6=":" in address[0])
            bye = dialog.create_request("BYE", headers=[("Reason", ORPHAN_REASON)])
        except (DialogError, SIPError, LookupError, TypeError, ValueError) as exc:
            log.warning(
                "call.orphan.bad_leg",
                call_id=row.call_id,
                key=row.key,
                side=side,
                error=repr(exc)[:200],
            )
            return None
        try:
            response = await self.endpoint.request(bye, address, transport=transport)
        except Exception as exc:
            log.warning(
                "call.orphan.bye_failed",
                call_id=row.call_id,
                key=row.key,
                side=side,
                error=repr(exc)[:200],
            )
            return None
        return response.status
