"""Lead scrubbing: would a call to each number of a list be refused, why, and until when.

A dialer loads a list (CSV or NDJSON, one lead a row) and asks, before it
dials, which numbers the gateway would refuse. Each number goes through the
same code as a SIP INVITE: ``policies.context.build_context`` (484
``address-incomplete`` when it is not a valid number) and then
``Pipeline.check`` — the policy objects of the call path (emergency,
destination allow-list, DNC, consent, calling hours, frequency cap) without
the steps that judge the agent or reserve a card quota. Nothing is written:
no reservation, no attempt, no CDR. The reason texts are the SIP ``Reason``
texts (``dnc``, ``no-consent``, ``calling-hours``, ``frequency-cap``,
``destination-blocked``, ``address-incomplete``, ``store-unavailable``).

``callable_at`` is when the number becomes callable: ``now`` for a callable
number, ``now + Retry-After`` for ``calling-hours`` and ``frequency-cap``,
None when only an operator can change it (DNC, consent, destination).

The answer names the number (the dialer needs it to act on the row); logs
never do unless ``[policy] mask_numbers`` is off.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from policies.context import build_context
from policies.decision import Decision, RejectReason
from policies.errors import AddressIncompleteError, StoreUnavailableError
from policies.pipeline import CHECK_ORDER, Pipeline, PolicyDeps, build_pipeline
from policies.privacy import mask_number

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.store import SQLiteStore
    from policies.emergency import EmergencyNumbers

__all__ = [
    "CSV_FIELDS",
    "MAX_API_LEADS",
    "Lead",
    "LeadChecker",
    "LeadSummary",
    "LeadVerdict",
    "checker_from_settings",
    "parse_leads",
    "verdict_csv_header",
    "verdict_csv_row",
]

log = structlog.get_logger("gateway.operator.leads")

#: Numbers one ``POST /leads/check`` may carry (the CLI has no limit: it streams).
MAX_API_LEADS = 100_000
NUMBER_FIELDS = ("number", "phone", "e164", "msisdn", "tel", "telephone", "phone_number")
LEAD_ID_FIELDS = ("lead_id", "id", "lead")
CAMPAIGN_FIELDS = ("campaign",)
CSV_FIELDS = (
    "row",
    "number",
    "lead_id",
    "e164",
    "callable",
    "reason",
    "sip_code",
    "retry_after",
    "callable_at",
    "detail",
)


@dataclass(frozen=True, slots=True)
class Lead:
    """One row of a lead list: its 1-based row number, the number as given, ids."""

    row: int
    number: str
    lead_id: str | None = None
    campaign: str | None = None
    error: str | None = None  # the row could not be read (no number field, bad JSON)


@dataclass(frozen=True, slots=True)
class LeadVerdict:
    """What a call to one lead would get now."""

    row: int
    number: str
    lead_id: str | None
    e164: str | None
    callable: bool
    reason: str | None
    sip_code: int | None
    retry_after: int | None
    callable_at: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the row (NDJSON answer)."""
        return {
            "row": self.row,
            "number": self.number,
            "lead_id": self.lead_id,
            "e164": self.e164,
            "callable": self.callable,
            "reason": self.reason,
            "sip_code": self.sip_code,
            "retry_after": self.retry_after,
            "callable_at": self.callable_at,
            "detail": self.detail,
        }


@dataclass(slots=True)
class LeadSummary:
    """Counts of a check: rows, callable, refused by reason."""

    rows: int = 0
    callable: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, verdict: LeadVerdict) -> None:
        """Count one verdict."""
        self.rows += 1
        if verdict.callable:
            self.callable += 1
        else:
            self.by_reason[verdict.reason or "?"] += 1

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "rows": self.rows,
            "callable": self.callable,
            "refused": self.rows - self.callable,
            "by_reason": dict(sorted(self.by_reason.items())),
        }

    def text(self, seconds: float | None = None) -> str:
        """One line for a person: ``1000 leads: 412 callable, 588 refused (dnc 100, …)``."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.by_reason.items()))
        line = f"{self.rows} leads: {self.callable} callable, {self.rows - self.callable} refused"
        if reasons:
            line += f" ({reasons})"
        if seconds is not None and seconds > 0:
            line += f" in {seconds:.2f}s ({self.rows / seconds:,.0f} numbers/s)"
        return line


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class LeadChecker:
    """Judge leads with a check pipeline (``Pipeline.check``), as an INVITE would be judged."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        default_region: str,
        emergency: EmergencyNumbers | None,
        agent: str = "leads",
        campaign: str | None = None,
        mask: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.default_region = default_region
        self.emergency = emergency
        self.agent = agent
        self.campaign = campaign
        self.mask = mask

    def check(self, lead: Lead, now: float) -> LeadVerdict:
        """The verdict of one lead at ``now`` (epoch seconds); never writes anything."""
        if lead.error is not None:
            return self._refused(lead, None, _incomplete(lead.error), now)
        moment = datetime.fromtimestamp(now, UTC)
        campaign = lead.campaign or self.campaign
        try:
            ctx = build_context(
                lead.number,
                agent=self.agent,
                campaign=campaign,
                default_region=self.default_region,
                now=moment,
                emergency=self.emergency,
            )
        except AddressIncompleteError as exc:
            # The same answer as on_invite: 484 address-incomplete.
            return self._refused(lead, None, _incomplete(str(exc)), now)
        try:
            decision = self.pipeline.check(ctx, moment)
        except StoreUnavailableError as exc:
            decision = Decision.reject(
                RejectReason.STORE_UNAVAILABLE, "store", str(exc), retry_after=30
            )
        if decision.allowed:
            return LeadVerdict(
                row=lead.row,
                number=lead.number,
                lead_id=lead.lead_id,
                e164=ctx.destination,
                callable=True,
                reason=None,
                sip_code=None,
                retry_after=None,
                callable_at=_iso(now),
                detail=decision.detail,
            )
        return self._refused(lead, ctx.destination, decision, now)

    def _refused(self, lead: Lead, e164: str | None, decision: Decision, now: float) -> LeadVerdict:
        retry = decision.retry_after
        if decision.reason is RejectReason.STORE_UNAVAILABLE:
            log.warning(
                "leads.store_unavailable",
                row=lead.row,
                number=mask_number(lead.number, enabled=self.mask),
            )
        return LeadVerdict(
            row=lead.row,
            number=lead.number,
            lead_id=lead.lead_id,
            e164=e164,
            callable=False,
            reason=str(decision.reason) if decision.reason is not None else None,
            sip_code=decision.sip_code,
            retry_after=retry,
            callable_at=_iso(now + retry) if retry is not None else None,
            detail=decision.detail,
        )

    def check_all(
        self, leads: Iterable[Lead], now: float, summary: LeadSummary | None = None
    ) -> Iterator[LeadVerdict]:
        """Verdicts in row order, all judged at the same ``now``; counted into ``summary``."""
        for lead in leads:
            verdict = self.check(lead, now)
            if summary is not None:
                summary.add(verdict)
            yield verdict


def _incomplete(detail: str) -> Decision:
    return Decision.reject(RejectReason.ADDRESS_INCOMPLETE, "normalize", detail)


def checker_from_settings(
    settings: Settings,
    store: SQLiteStore,
    *,
    agent: str = "leads",
    campaign: str | None = None,
) -> LeadChecker:
    """A checker over ``store`` with the call path's policies (``[policy]`` settings)."""
    from gateway.policy_config import policy_deps_kwargs

    kwargs = policy_deps_kwargs(settings.policy)
    deps = PolicyDeps(dnc=store, consent=store, history=store, agents=store, **kwargs)
    return LeadChecker(
        build_pipeline(deps, CHECK_ORDER),
        default_region=settings.policy.default_region,
        emergency=kwargs["emergency"],
        agent=agent,
        campaign=campaign,
        mask=settings.policy.mask_numbers,
    )


# --- input ---------------------------------------------------------------------------


def _pick(keys: Iterable[str], wanted: Iterable[str], explicit: str | None) -> str | None:
    lowered = {k.strip().lower(): k for k in keys}
    if explicit is not None:
        return lowered.get(explicit.strip().lower())
    for name in wanted:
        if name in lowered:
            return lowered[name]
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text or None
    return None


def sniff_format(first_line: str) -> str:
    """``ndjson`` when the first non-blank line is a JSON object or string, else ``csv``."""
    head = first_line.lstrip("\ufeff \t")
    return "ndjson" if head.startswith(("{", '"')) else "csv"


def parse_leads(
    lines: Iterable[str], fmt: str | None = None, column: str | None = None
) -> Iterator[Lead]:
    """Leads of a CSV (header row optional) or NDJSON text, row numbers 1-based.

    CSV: the number column is ``column`` or the first of ``number``, ``phone``,
    ``e164``, ``msisdn``, ``tel``…; a file whose first row names none of them
    and has a single column is taken as numbers without a header. NDJSON: an
    object per line (the same field names) or a bare JSON string. ``lead_id``
    / ``id`` and ``campaign`` are carried when present. A row without a
    number is a lead with an ``error`` (answered 484), never skipped.
    """
    it = iter(lines)
    first: str | None = None
    for line in it:
        if line.strip():
            first = line
            break
    if first is None:
        return
    kind = fmt or sniff_format(first)
    if kind == "ndjson":
        yield from _parse_ndjson(_chain(first, it), column)
    elif kind == "csv":
        yield from _parse_csv(_chain(first, it), column)
    else:
        raise ValueError(f"unknown lead list format {kind!r} (csv or ndjson)")


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _parse_ndjson(lines: Iterator[str], column: str | None) -> Iterator[Lead]:
    row = 0
    for line in lines:
        if not line.strip():
            continue
        row += 1
        try:
            item = json.loads(line)
        except ValueError:
            yield Lead(row, "", error="row is not JSON")
            continue
        if isinstance(item, str | int):
            yield Lead(row, str(item).strip())
            continue
        if not isinstance(item, dict):
            yield Lead(row, "", error="row is not a JSON object or string")
            continue
        key = _pick(item.keys(), NUMBER_FIELDS, column)
        number = _text(item.get(key)) if key is not None else None
        id_key = _pick(item.keys(), LEAD_ID_FIELDS, None)
        camp_key = _pick(item.keys(), CAMPAIGN_FIELDS, None)
        lead_id = _text(item.get(id_key)) if id_key is not None else None
        campaign = _text(item.get(camp_key)) if camp_key is not None else None
        if number is None:
            yield Lead(row, "", lead_id, campaign, error="row has no number field")
        else:
            yield Lead(row, number, lead_id, campaign)


def _parse_csv(lines: Iterator[str], column: str | None) -> Iterator[Lead]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    key = _pick(header, NUMBER_FIELDS, column)
    row = 0
    if key is None:
        if column is not None:
            raise ValueError(f"no column {column!r} in the CSV header")
        if len(header) != 1:
            raise ValueError(
                "no number column in the CSV header (number, phone, e164, msisdn, tel); "
                "name it with --column / ?column="
            )
        # One column and no header: every row is a number, the first one included.
        for values in _chain_rows(header, reader):
            if not values or not "".join(values).strip():
                continue
            row += 1
            yield Lead(row, values[0].strip())
        return
    index = header.index(key)
    names = [h.strip().lower() for h in header]
    id_index = next((names.index(n) for n in LEAD_ID_FIELDS if n in names), None)
    camp_index = names.index("campaign") if "campaign" in names else None
    for values in reader:
        if not values or not "".join(values).strip():
            continue
        row += 1
        lead_id = _cell(values, id_index)
        campaign = _cell(values, camp_index)
        number = _cell(values, index)
        if number is None:
            yield Lead(row, "", lead_id, campaign, error="row has no number")
        else:
            yield Lead(row, number, lead_id, campaign)


def _chain_rows(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def _cell(values: list[str], index: int | None) -> str | None:
    if index is None or index >= len(values):
        return None
    text = values[index].strip()
    return text or None


# --- output --------------------------------------------------------------------------


def verdict_csv_header() -> str:
    """The CSV header line of the answer."""
    return ",".join(CSV_FIELDS) + "\r\n"


def verdict_csv_row(verdict: LeadVerdict) -> str:
    """One CSV line of the answer (``callable`` as ``true``/``false``)."""
    d = verdict.as_dict()
    d["callable"] = "true" if verdict.callable else "false"
    buf = io.StringIO()
    csv.writer(buf).writerow(["" if d[k] is None else d[k] for k in CSV_FIELDS])
    return buf.getvalue()


def verdict_json_line(verdict: LeadVerdict) -> str:
    """One NDJSON line of the answer."""
    return json.dumps(verdict.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"


# --- several processes (the CLI on a long list) ----------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init() -> None:
    from gateway.store import store_from_settings

    settings = _WORKER["settings"]
    _WORKER["checker"] = checker_from_settings(
        settings, store_from_settings(settings), campaign=_WORKER["campaign"]
    )


def _worker_run(job: tuple[list[Lead], float, bool]) -> tuple[str, dict[str, Any]]:
    leads, now, as_csv = job
    checker: LeadChecker = _WORKER["checker"]
    summary = LeadSummary()
    render = verdict_csv_row if as_csv else verdict_json_line
    text = "".join(render(v) for v in checker.check_all(leads, now, summary))
    counts = {"rows": summary.rows, "callable": summary.callable}
    return text, counts | {"by_reason": dict(summary.by_reason)}


def check_in_processes(
    settings: Settings,
    leads: Iterable[Lead],
    now: float,
    *,
    jobs: int,
    as_csv: bool,
    campaign: str | None = None,
    chunk: int = 2000,
    summary: LeadSummary,
) -> Iterator[str]:
    """Rendered verdicts in row order, judged by ``jobs`` forked processes.

    Each process opens its own store connection (read only in effect: the
    check writes nothing); chunks of ``chunk`` rows keep the order and bound
    the memory in flight.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from itertools import islice

    _WORKER["settings"] = settings
    _WORKER["campaign"] = campaign
    it = iter(leads)
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
    ) as pool:
        pending = []
        while True:
            part = list(islice(it, chunk))
            if part:
                pending.append(pool.submit(_worker_run, (part, now, as_csv)))
            if pending and (not part or len(pending) >= jobs * 2):
                text, counts = pending.pop(0).result()
                summary.rows += counts["rows"]
                summary.callable += counts["callable"]
                summary.by_reason.update(counts["by_reason"])
                yield text
            if not part and not pending:
                return
