"""Admin API routes for dialers: ``POST /leads/check`` (lead scrubbing) and
``GET /pools/{pool}/capacity`` (pacing: ``gateway.cards.capacity``).

``POST /leads/check`` takes a CSV (``Content-Type: text/csv``) or NDJSON
(``application/x-ndjson``; other types are sniffed) list of at most
``MAX_API_LEADS`` numbers and streams one verdict per row (``gateway.operator.leads``:
the call path's checks, nothing reserved or written) as NDJSON — the last
line is ``{"summary": {...}}`` — or as CSV with ``?format=csv`` / ``Accept:
text/csv``. Query: ``column`` (number column/field), ``campaign`` (for rows
that name none). The rows are judged in chunks with the event loop given back
between them, so SIP traffic of the same process keeps flowing.

Authentication is the admin token middleware's, as for every other route.
It must never log a number of the list.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from aiohttp import web

from gateway.operator.api.keys import CLOCK_KEY, OPERATOR_KEY
from gateway.operator.leads import (
    MAX_API_LEADS,
    LeadSummary,
    checker_from_settings,
    parse_leads,
    verdict_csv_header,
    verdict_csv_row,
    verdict_json_line,
)
from gateway.operator.service import BadRequest, NotFound, OperatorError

__all__ = ["CHUNK", "add_dialer_routes"]

log = structlog.get_logger("gateway.operator.api")

#: Rows judged between two returns to the event loop.
CHUNK = 250


class TooManyLeads(OperatorError):
    """More rows than one request may carry."""

    status = 413


def _input_format(request: web.Request) -> str | None:
    kind = request.content_type.lower()
    if kind in ("text/csv", "application/csv"):
        return "csv"
    if kind in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        return "ndjson"
    return None


def _output_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "").lower()
    if fmt:
        if fmt not in ("csv", "ndjson"):
            raise BadRequest("format must be csv or ndjson")
        return fmt == "csv"
    return "text/csv" in request.headers.get("Accept", "")


def _short(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > 64:
        raise BadRequest(f"{name} is longer than 64 characters")
    return value.strip()


async def leads_check(request: web.Request) -> web.StreamResponse:
    """Stream a verdict per lead: E.164, callable, reason, Retry-After, callable_at."""
    as_csv = _output_csv(request)
    column = _short(request, "column")
    campaign = _short(request, "campaign")
    raw = await request.read()
    text = raw.decode("utf-8-sig", errors="replace")
    try:
        leads = list(parse_leads(text.splitlines(), _input_format(request), column))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except csv_error() as exc:
        raise BadRequest(f"unreadable CSV: {exc}") from None
    if len(leads) > MAX_API_LEADS:
        raise TooManyLeads(f"at most {MAX_API_LEADS} numbers per request ({len(leads)} sent)")
    op = request.app[OPERATOR_KEY]
    now = request.app[CLOCK_KEY]()
    checker = checker_from_settings(op.settings, op.store, campaign=campaign)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8"
            if as_csv
            else "application/x-ndjson; charset=utf-8"
        }
    )
    await response.prepare(request)
    summary = LeadSummary()
    if as_csv:
        await response.write(verdict_csv_header().encode())
    render = verdict_csv_row if as_csv else verdict_json_line
    for start in range(0, len(leads), CHUNK):
        part = leads[start : start + CHUNK]
        body = "".join(render(v) for v in checker.check_all(part, now, summary))
        await response.write(body.encode())
        await asyncio.sleep(0)  # let calls of this process through between chunks
    if not as_csv:
        await response.write((json.dumps({"summary": summary.as_dict()}) + "\n").encode())
    await response.write_eof()
    log.info("leads.checked", rows=summary.rows, callable=summary.callable, **_reasons(summary))
    return response


def csv_error() -> type[Exception]:
    """The csv module's error type (a malformed quoted field)."""
    import csv

    return csv.Error


def _reasons(summary: LeadSummary) -> dict[str, int]:
    return {k.replace("-", "_"): v for k, v in summary.by_reason.items()}


async def pool_capacity(request: web.Request) -> web.Response:
    """How many calls the pool's cards can start now and in the next minute, per card why."""
    from gateway.cards.capacity import capacity_payload, operator_pool_capacity

    pool = request.match_info["pool"]
    op = request.app[OPERATOR_KEY]
    now = request.app[CLOCK_KEY]()
    capacity = operator_pool_capacity(op, pool, now)
    if capacity is None:
        raise NotFound(f"no cards in pool {pool!r}")
    return web.json_response(capacity_payload(capacity, now))


def add_dialer_routes(app: web.Application) -> None:
    """Register the dialer routes on the admin application."""
    app.router.add_post("/leads/check", leads_check)
    app.router.add_get("/pools/{pool}/capacity", pool_capacity)
