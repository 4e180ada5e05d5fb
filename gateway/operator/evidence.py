"""The appeal evidence pack: everything a carrier asks for, for one card, in one zip.

:func:`build_evidence` gathers, for a card and a period: the card and its
holder's record, its calls (time, masked callee, duration, outcome) each with
the consent record or DNC check that stood behind it *as of the call*, the
calls the policies blocked (with their reason), complaints, its usage against
every limit per carrier day, its state transitions with the carrier responses
that caused them, and its appeals. :func:`write_evidence_zip` writes it as one
archive: ``evidence.json``, a CSV per table and ``summary.html`` for a human.

As-of lookups. Consent is judged at the call's attempt time from the stored
grant/expiry/revocation times, so a consent revoked *after* the call still shows
as granted for it. The internal DNC list keeps each entry's ``added_at``: a
number added after the call shows ``clear`` for it (``listed-later``); a number
removed since is no longer known to the list (the audit log keeps the removal).

What it must never do: put an unmasked callee number or registration number in
the pack while ``[policy] mask_numbers`` is on, read a clock (``now`` is passed
in), or write anywhere but the stream or path it is given.
"""

from __future__ import annotations

import csv
import html
import io
import json
import zipfile
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.operator.service import NotFound, Operator, mask_evidence
from gateway.private_files import open_private
from gateway.store import TransitionRecord
from gateway.telemetry.events import iso_time
from policies.quotas import QuotaProfile
from policies.timeutil import day_bounds

__all__ = [
    "EvidencePack",
    "build_evidence",
    "daily_usage",
    "render_html",
    "write_evidence_zip",
]

PACK_VERSION = 1


@dataclass(slots=True)
class EvidencePack:
    """The gathered evidence (JSON-ready rows, numbers already masked as configured)."""

    card: dict[str, Any]
    since: float
    until: float
    generated_at: float
    calls: list[dict[str, Any]] = field(default_factory=list)
    blocked: list[dict[str, Any]] = field(default_factory=list)
    complaints: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    appeals: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The ``evidence.json`` document."""
        return {
            "v": PACK_VERSION,
            "card": self.card,
            "period": {"since": iso_time(self.since), "until": iso_time(self.until)},
            "generated_at": iso_time(self.generated_at),
            "calls": self.calls,
            "blocked": self.blocked,
            "complaints": self.complaints,
            "usage": self.usage,
            "transitions": self.transitions,
            "appeals": self.appeals,
        }


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _consent_as_of(op: Operator, record: CallRecord) -> dict[str, Any]:
    status, consent = op.store.consent_status(
        record.destination, record.campaign or None, _utc(record.attempt_at)
    )
    out: dict[str, Any] = {"status": status.value}
    if consent is not None:
        out.update(
            campaign=consent.campaign or "*",
            granted_at=consent.granted_at.isoformat(),
            expires_at=None if consent.expires_at is None else consent.expires_at.isoformat(),
            revoked_at=None if consent.revoked_at is None else consent.revoked_at.isoformat(),
            source=consent.source,
            evidence=consent.evidence,
        )
    return out


def _dnc_as_of(op: Operator, record: CallRecord) -> dict[str, Any]:
    entry = op.store.lookup(record.destination)
    if entry is None:
        return {"status": "clear"}
    added = entry.added_at.timestamp() if entry.added_at is not None else None
    if added is not None and added > record.attempt_at:
        return {"status": "clear", "note": "listed-later", "listed_at": iso_time(added)}
    return {
        "status": "listed",
        "list": entry.list_name,
        "source": entry.source.value,
        "listed_at": iso_time(added),
    }


def _call_row(op: Operator, record: CallRecord) -> dict[str, Any]:
    return {
        "call_id": record.call_id,
        "time": iso_time(record.attempt_at),
        "callee": op.masked(record.destination),
        "duration_seconds": round(record.talk_seconds, 1),
        "outcome": record.outcome.value,
        "final_code": record.final_code,
        "agent": record.origin,
        "campaign": record.campaign,
        "cards": " ".join(record.cards),
        "consent": _consent_as_of(op, record),
        "dnc": _dnc_as_of(op, record),
    }


def _peak(times: Sequence[float], window: float) -> int:
    """Most starts within any ``window`` seconds (sliding, both ends of one start)."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect_right(times, t + window - 1e-9) - i)
    return best


def _peak_concurrent(records: Sequence[CallRecord]) -> int:
    edges: list[tuple[float, int]] = []
    for r in records:
        end = r.end_at if r.end_at is not None else r.attempt_at
        edges.append((r.attempt_at, 1))
        edges.append((max(end, r.attempt_at), -1))
    edges.sort(key=lambda e: (e[0], e[1]))
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def daily_usage(
    records: Sequence[CallRecord], profile: QuotaProfile, timezone: str
) -> list[dict[str, Any]]:
    """Per carrier day: each limit of ``profile``, the day's use of it and the share used.

    Computed from the card's CDRs (placed calls, blocked ones excluded): counts
    and peaks over rolling windows, talk minutes, distinct callees, answer rate
    and short-call share. A limit the profile does not set is left out.
    """
    placed = sorted(
        (r for r in records if r.outcome not in (Outcome.BLOCKED,)), key=lambda r: r.attempt_at
    )
    days: dict[float, list[CallRecord]] = {}
    for r in placed:
        start, _ = day_bounds(r.attempt_at, timezone)
        days.setdefault(start, []).append(r)
    rows: list[dict[str, Any]] = []
    for start, calls in sorted(days.items()):
        day = datetime.fromtimestamp(start, ZoneInfo(timezone)).date().isoformat()
        times = [r.attempt_at for r in calls]
        answered = [r for r in calls if r.outcome is Outcome.ANSWERED]
        short = [r for r in answered if r.talk_seconds < profile.short_call_seconds]
        gaps = [b - a for a, b in pairwise(times)]
        measures: list[tuple[str, float, float | None, str]] = [
            ("calls_per_day", len(calls), profile.calls_per_day, "max"),
            ("calls_per_hour", _peak(times, 3600.0), profile.calls_per_hour, "max"),
            ("calls_per_minute", _peak(times, 60.0), profile.calls_per_minute, "max"),
            ("concurrent", _peak_concurrent(calls), profile.concurrent, "max"),
            (
                "talk_minutes_per_day",
                round(sum(r.talk_seconds for r in calls) / 60.0, 2),
                profile.talk_minutes_per_day,
                "max",
            ),
            (
                "distinct_callees_per_day",
                len({r.destination for r in calls}),
                profile.distinct_callees_per_day,
                "max",
            ),
            (
                "min_gap_seconds",
                round(min(gaps), 1) if gaps else 0.0,
                profile.min_gap_seconds if gaps else None,
                "min",
            ),
            (
                "answer_rate_floor",
                round(len(answered) / len(calls), 4),
                profile.answer_rate_floor,
                "min",
            ),
            (
                "short_call_ceiling",
                round(len(short) / len(answered), 4) if answered else 0.0,
                profile.short_call_ceiling,
                "max",
            ),
        ]
        for name, used, limit, sense in measures:
            if limit is None:
                continue
            within = used <= limit if sense == "max" else used >= limit
            rows.append(
                {
                    "day": day,
                    "limit": name,
                    "used": used,
                    "value": limit,
                    "kind": sense,
                    "share": round(used / limit, 3) if limit else None,
                    "within": within,
                    "calls": len(calls),
                }
            )
    return rows


def _transition_row(op: Operator, t: TransitionRecord) -> dict[str, Any]:
    evidence = mask_evidence(t.evidence, op.mask)
    return {
        "time": iso_time(t.at),
        "from": t.from_state,
        "to": t.to_state,
        "reason": t.reason,
        "cause": t.cause,
        "actor": t.actor,
        "carrier_response": evidence.get("response", ""),
        "warning": evidence.get("warning", ""),
        "evidence": evidence,
    }


def build_evidence(
    op: Operator, card_id: str, *, since: float, now: float, until: float | None = None
) -> EvidencePack:
    """Gather the evidence pack of ``card_id`` for calls from ``since`` to ``until`` (``now``)."""
    card = op.manager.find(card_id)
    if card is None:
        raise NotFound(f"unknown card {card_id!r}")
    end = now if until is None else until
    view = op.card_view(card, now)
    view["record"] = op.record_view(op.db.card_record(card_id))
    pack = EvidencePack(card=view, since=since, until=end, generated_at=now)

    bound_agents = {u.name for u in op.settings.users if u.card == card_id}
    records = op.store.cdrs(since=since, until=end, limit=1_000_000)
    for record in records:
        on_card = card_id in record.cards
        if record.outcome is Outcome.BLOCKED or (record.policy_reason and not on_card):
            if on_card or record.origin in bound_agents:
                pack.blocked.append(
                    {
                        "call_id": record.call_id,
                        "time": iso_time(record.attempt_at),
                        "callee": op.masked(record.destination),
                        "agent": record.origin,
                        "campaign": record.campaign,
                        "policy_reason": record.policy_reason or "unknown",
                        "final_code": record.final_code,
                    }
                )
            continue
        if on_card:
            pack.calls.append(_call_row(op, record))

    placed = [r for r in records if card_id in r.cards and r.outcome is not Outcome.BLOCKED]
    profile = op.profiles.get(card.quota_profile)
    if profile is not None:
        pack.usage = daily_usage(placed, profile, op.timezones.get(card.carrier, "UTC"))

    seen: set[tuple[str, float]] = set()
    attributed = {
        (c.number, c.at): c for c in op.db.attributed_complaints(card=card_id, since=since)
    }
    for c in op.store.complaints(card=card_id, since=since):
        if c.at >= end:
            continue
        seen.add((c.number, c.at))
        extra = attributed.get((c.number, c.at))
        pack.complaints.append(
            {
                "time": iso_time(c.at),
                "callee": op.masked(c.number),
                "call_id": c.call_id or "",
                "agent": extra.agent if extra is not None else "",
                "note": mask_evidence(c.note, op.mask),
            }
        )
    for key, extra in attributed.items():
        if key not in seen and extra.at < end:
            pack.complaints.append(
                {
                    "time": iso_time(extra.at),
                    "callee": op.masked(extra.number),
                    "call_id": extra.call_id or "",
                    "agent": extra.agent,
                    "note": mask_evidence(extra.note, op.mask),
                }
            )

    history = op.store.transitions(card_id)
    in_period = [t for t in history if since <= t.at < end]
    earlier = [t for t in history if t.at < since and t.to_state == "suspended"]
    if earlier and not any(t.to_state == "suspended" for t in in_period):
        in_period.insert(0, earlier[-1])  # the suspension being appealed began before `since`
    pack.transitions = [_transition_row(op, t) for t in in_period]
    pack.appeals = [op.appeal_view(a) for a in op.db.appeals(card_id)]
    return pack


# --- output ---------------------------------------------------------------------------

_CALL_COLUMNS = (
    "call_id",
    "time",
    "callee",
    "duration_seconds",
    "outcome",
    "final_code",
    "agent",
    "campaign",
    "cards",
    "consent_status",
    "consent_source",
    "consent_evidence",
    "dnc_status",
)


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


def _flat_calls(pack: EvidencePack) -> list[dict[str, Any]]:
    return [
        {
            **call,
            "consent_status": call["consent"]["status"],
            "consent_source": call["consent"].get("source", ""),
            "consent_evidence": call["consent"].get("evidence", ""),
            "dnc_status": call["dnc"]["status"]
            + (f" ({call['dnc']['note']})" if "note" in call["dnc"] else ""),
        }
        for call in pack.calls
    ]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p class='empty'>None in this period.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(pack: EvidencePack) -> str:
    """A self-contained HTML summary: one section per kind of evidence."""
    card = pack.card
    record = card.get("record", {})
    answered = sum(1 for c in pack.calls if c["outcome"] == "answered")
    consented = sum(1 for c in pack.calls if c["consent"]["status"] == "granted")
    listed = sum(1 for c in pack.calls if c["dnc"]["status"] == "listed")
    over = [u for u in pack.usage if not u["within"]]
    e = html.escape
    sections = [
        (
            "card",
            "Card",
            _table(
                ["field", "value"],
                [
                    ["card", card["id"]],
                    ["carrier", card["carrier"]],
                    [
                        "state",
                        f"{card['state']} ({card.get('reason') or '-'}) since {card['since']}",
                    ],
                    ["holder", record.get("holder", "")],
                    ["employee ID", record.get("employee_id", "")],
                    ["registered number", record.get("registered_number", "")],
                    ["carrier account", record.get("carrier_account", "")],
                    ["purchase channel", record.get("purchase_channel", "")],
                ],
            ),
        ),
        (
            "summary",
            "Summary",
            f"<ul><li>{len(pack.calls)} calls placed, {answered} answered</li>"
            f"<li>{consented} with consent on record at the time of the call; "
            f"{listed} to numbers on the DNC list at the time</li>"
            f"<li>{len(pack.blocked)} calls blocked by policy before reaching the carrier</li>"
            f"<li>{len(pack.complaints)} complaints</li>"
            f"<li>{len(over)} day-limits exceeded</li></ul>",
        ),
        (
            "transitions",
            "State changes and carrier responses",
            _table(
                ["time", "from", "to", "reason", "cause", "carrier response", "warning", "actor"],
                [
                    [
                        t["time"],
                        t["from"],
                        t["to"],
                        t["reason"],
                        t["cause"],
                        t["carrier_response"],
                        t["warning"],
                        t["actor"],
                    ]
                    for t in pack.transitions
                ],
            ),
        ),
        (
            "calls",
            "Calls",
            _table(
                [
                    "time",
                    "callee",
                    "duration (s)",
                    "outcome",
                    "agent",
                    "campaign",
                    "consent",
                    "DNC",
                ],
                [
                    [
                        c["time"],
                        c["callee"],
                        c["duration_seconds"],
                        c["outcome"],
                        c["agent"],
                        c["campaign"],
                        c["consent"]["status"],
                        c["dnc"]["status"],
                    ]
                    for c in pack.calls
                ],
            ),
        ),
        (
            "blocked",
            "Calls blocked by policy",
            _table(
                ["time", "callee", "agent", "campaign", "reason", "SIP code"],
                [
                    [
                        b["time"],
                        b["callee"],
                        b["agent"],
                        b["campaign"],
                        b["policy_reason"],
                        b["final_code"],
                    ]
                    for b in pack.blocked
                ],
            ),
        ),
        (
            "complaints",
            "Complaints",
            _table(
                ["time", "callee", "call", "agent", "note"],
                [
                    [c["time"], c["callee"], c["call_id"], c["agent"], c["note"]]
                    for c in pack.complaints
                ],
            ),
        ),
        (
            "usage",
            "Usage against limits per day",
            _table(
                ["day", "limit", "used", "limit value", "share", "within"],
                [
                    [
                        u["day"],
                        u["limit"],
                        u["used"],
                        u["value"],
                        u["share"],
                        "yes" if u["within"] else "NO",
                    ]
                    for u in pack.usage
                ],
            ),
        ),
        (
            "appeals",
            "Appeals",
            _table(
                ["opened", "reference", "channel", "submitted", "status", "updates"],
                [
                    [
                        a["opened_at"],
                        a["reference"],
                        a["channel"],
                        a["submitted_at"],
                        a["status"],
                        "; ".join(
                            f"{u['at']} {u['kind']} {u['decision'] or ''}".strip()
                            for u in a["updates"]
                        ),
                    ]
                    for a in pack.appeals
                ],
            ),
        ),
    ]
    body = "\n".join(
        f"<section id='{sid}'><h2>{e(title)}</h2>{content}</section>"
        for sid, title, content in sections
    )
    title = f"Evidence for card {card['id']}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:left}"
        "</style></head><body>"
        f"<h1>{e(title)}</h1><p>Period {e(str(iso_time(pack.since)))} to "
        f"{e(str(iso_time(pack.until)))}; generated {e(str(iso_time(pack.generated_at)))}. "
        "Callee numbers are masked.</p>\n"
        f"{body}\n</body></html>\n"
    )


def write_evidence_zip(pack: EvidencePack, out: str | Path | IO[bytes]) -> list[str]:
    """Write the pack as one zip archive; return the names of its members."""
    members = {
        "evidence.json": json.dumps(pack.as_dict(), indent=2, ensure_ascii=False, sort_keys=True),
        "calls.csv": _csv(_flat_calls(pack), _CALL_COLUMNS),
        "blocked.csv": _csv(
            pack.blocked,
            ("call_id", "time", "callee", "agent", "campaign", "policy_reason", "final_code"),
        ),
        "complaints.csv": _csv(pack.complaints, ("time", "callee", "call_id", "agent", "note")),
        "usage.csv": _csv(
            pack.usage, ("day", "limit", "used", "value", "kind", "share", "within", "calls")
        ),
        "transitions.csv": _csv(
            pack.transitions,
            ("time", "from", "to", "reason", "cause", "actor", "carrier_response", "warning"),
        ),
        "summary.html": render_html(pack),
    }
    stamp = datetime.fromtimestamp(pack.generated_at, UTC).timetuple()[:6]
    # A file on disk is created 0600 whatever the umask: it holds numbers.
    target = open_private(Path(out), "wb") if isinstance(out, str | Path) else out
    try:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, text in members.items():
                info = zipfile.ZipInfo(name, date_time=(max(stamp[0], 1980), *stamp[1:]))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, text.encode("utf-8"))
    finally:
        if target is not out:
            target.close()
    return list(members)
