"""CDRs the store refused, kept until it takes them: a store outage never loses a CDR.

:class:`CdrWriter` is what the B2BUA writes call records through. A record
goes straight to the store; when the store raises
:class:`~gateway.store.StoreUnavailable` the record is appended to a spool
file beside the database (``<db>.cdr-spool.jsonl``, one JSON object a line,
flushed at once, mode 0600: it holds destinations in clear, like the
database) and kept in memory if even that write fails. :meth:`CdrWriter.flush`
moves everything spooled into the store in one transaction and empties the
spool; the gateway calls it on a timer, before every new write while anything
is pending, and at shutdown. A spool left by a process that died is replayed
at the next start (:meth:`CdrWriter.recover`).

Duplicates are impossible by construction only within one process: a record is
removed from the spool after the store committed it. If the process dies
between the commit and the truncation, the next start replays those lines
again; :meth:`recover` skips records whose ``call_id``/``attempt_at`` are
already stored.

This module must never log a destination (the spool's content) or raise out
of :meth:`CdrWriter.write`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import structlog

from gateway.callpath.cdr import CallRecord, Origin, Outcome
from gateway.private_files import open_private
from gateway.store.protocols import CdrStore
from gateway.store.records import StoreUnavailable

__all__ = ["CdrStore", "CdrWriter", "record_from_json", "record_to_json"]

log = structlog.get_logger("gateway.store.spool")

_FIELDS = tuple(f.name for f in dataclasses.fields(CallRecord))


def record_to_json(record: CallRecord) -> str:
    """One spool line (without the newline)."""
    # By hand, not dataclasses.asdict (a deep copy): this runs on every answered call.
    data = {name: getattr(record, name) for name in _FIELDS}
    data["cards"] = list(record.cards)
    data["outcome"] = record.outcome.value
    data["origin_kind"] = record.origin_kind.value
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def record_from_json(line: str) -> CallRecord:
    """The record of one spool line; ValueError/KeyError/TypeError if it is not one."""
    data: dict[str, Any] = json.loads(line)
    data["cards"] = tuple(data.get("cards", ()))
    data["outcome"] = Outcome(data["outcome"])
    data["origin_kind"] = Origin(data.get("origin_kind", Origin.AGENT.value))
    return CallRecord(**data)


class CdrWriter:
    """Writes CDRs to the store, spooling them while it is unavailable."""

    def __init__(self, store: CdrStore, spool: Path | None) -> None:
        self.store = store
        self.spool = spool
        self._memory: list[CallRecord] = []  # refused by the store and by the spool file
        self._spooled = 0  # records in the spool file not yet in the store
        self.written = 0
        self.spooled_total = 0
        self.replayed = 0

    @property
    def pending(self) -> int:
        """Records waiting for the store (file and memory)."""
        return self._spooled + len(self._memory)

    def write(self, record: CallRecord) -> bool:
        """Store ``record`` now, or keep it for later; True when the store has it."""
        if self.pending:
            self.flush()
        if not self.pending:
            try:
                self.store.add_cdrs([record])
                self.written += 1
                return True
            except StoreUnavailable as exc:
                log.error("cdr.store_unavailable", detail=exc.detail, spool=str(self.spool))
        self._keep(record)
        return False

    def note_written(self, count: int) -> None:
        """Count records the caller committed to the store itself (with other writes)."""
        self.written += count

    def _keep(self, record: CallRecord) -> None:
        self.spooled_total += 1
        if self.spool is not None and not self._memory:
            try:
                with open_private(self.spool, "a", encoding="utf-8") as out:
                    out.write(record_to_json(record) + "\n")
                self._spooled += 1
                return
            except OSError as exc:
                log.error("cdr.spool_failed", error=exc.strerror, spool=str(self.spool))
        # Order is kept: once anything is in memory, later records queue behind it.
        self._memory.append(record)

    def _read_spool(self) -> list[CallRecord]:
        if self.spool is None or not self.spool.exists():
            return []
        records: list[CallRecord] = []
        with self.spool.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    records.append(record_from_json(line))
                except (ValueError, KeyError, TypeError):
                    # A torn last line of a process killed mid-write: nothing to recover.
                    log.error("cdr.spool_bad_line", line=number, spool=str(self.spool))
        return records

    def flush(self) -> int:
        """Move every kept record into the store; return how many went in (0 if it is down)."""
        if not self.pending:
            return 0
        records = self._read_spool() + self._memory
        try:
            self.store.add_cdrs(records)
        except StoreUnavailable:
            return 0
        self._memory = []
        self._spooled = 0
        if self.spool is not None:
            try:
                self.spool.unlink(missing_ok=True)
            except OSError as exc:  # the records are in the store; a replay skips them
                log.error("cdr.spool_unlink_failed", error=exc.strerror, spool=str(self.spool))
        self.replayed += len(records)
        log.info("cdr.spool_flushed", records=len(records))
        return len(records)

    def recover(self) -> int:
        """At start-up: store what a previous process spooled (skipping stored ones)."""
        records = self._read_spool()
        if not records:
            return 0
        fresh = [r for r in records if not self._stored(r)]
        self.store.add_cdrs(fresh)
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
        self.replayed += len(fresh)
        log.info("cdr.spool_recovered", records=len(fresh), skipped=len(records) - len(fresh))
        return len(fresh)

    def _stored(self, record: CallRecord) -> bool:
        return any(
            abs(r.attempt_at - record.attempt_at) < 1e-6
            for r in self.store.cdrs(call_id=record.call_id, limit=1000)
        )

    def stats(self) -> dict[str, int]:
        """Counters for logs and metrics."""
        return {
            "written": self.written,
            "spooled": self.spooled_total,
            "replayed": self.replayed,
            "pending": self.pending,
        }
