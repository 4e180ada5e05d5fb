"""Handlers of the admin HTTP API: thin JSON adapters over :class:`gateway.operator.service.Operator`.

Each handler validates its input (JSON object bodies with typed fields, query
filters), reads the clock once, calls the operator with the request's actor and
answers JSON. ``OperatorError`` becomes its HTTP status with ``{"error": …}``;
any other exception is logged (without the request body) and answered 500.

What it must never do: implement a lifecycle or DNC rule itself (the operator
does), echo an unmasked number, or log a request body or header.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from gateway import __version__
from gateway.operator.api.auth import actor_of
from gateway.operator.api.keys import CLOCK_KEY, OPERATOR_KEY, STORE_GUARDS_KEY
from gateway.operator.api.leads_routes import add_dialer_routes
from gateway.operator.api.limits import MAX_JSON_DEPTH, check_json_depth, document_limits
from gateway.operator.api.monitoring import health
from gateway.operator.api.openapi import openapi_document
from gateway.operator.evidence import build_evidence, write_evidence_zip
from gateway.operator.service import BadRequest, Operator, OperatorError, parse_duration, parse_time

__all__ = ["CLOCK_KEY", "OPERATOR_KEY", "STORE_GUARDS_KEY", "add_routes", "error_middleware"]

log = structlog.get_logger("gateway.operator.api")

MAX_TEXT_BODY = 50 * 1024 * 1024


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Operator errors → their status; unexpected ones → 500 without details."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except OperatorError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return web.json_response({"error": exc.reason}, status=exc.status, headers=_allow(exc))
        raise
    except Exception:
        log.exception("admin request failed", method=request.method, route=_route(request))
        return web.json_response({"error": "internal error"}, status=500)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "?"


# --- input helpers ----------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not check_json_depth(raw):
        raise BadRequest(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(extra))[:200]}")


def _text(
    body: dict[str, Any], name: str, *, required: bool = False, max_len: int = 2000
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > max_len:
        raise BadRequest(f"{name} is longer than {max_len} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} contains a NUL character")
    return value


def _time(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest(f"{name} must be a time (ISO 8601 or epoch seconds)")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{name} must be finite")
    return parse_time(value)


def _query_time(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    return None if value is None or value == "" else parse_time(value)


def _query_text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > 256:
        raise BadRequest(f"{name} is too long")
    return value


def _query_int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not 1 <= number <= 100_000:
        raise BadRequest(f"{name} must be between 1 and 100000")
    return number


async def _text_body(request: web.Request) -> str:
    raw = await request.read()
    if len(raw) > MAX_TEXT_BODY:
        raise BadRequest("body too large")
    return raw.decode("utf-8-sig", errors="replace")


def _op(request: web.Request) -> Operator:
    return request.app[OPERATOR_KEY]


def _now(request: web.Request) -> float:
    return request.app[CLOCK_KEY]()


def _card_id(request: web.Request) -> str:
    return request.match_info["card"]


async def _write(request: web.Request, action: Callable[[], Any]) -> web.Response:
    """Run a write and answer its JSON.

    The operator's writes are synchronous short transactions with no ``await``
    inside, so requests on this event loop never interleave within one.
    """
    return web.json_response(action())


# --- handlers ---------------------------------------------------------------------------


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document."""
    return web.json_response(document_limits(openapi_document(__version__)))


async def list_cards(request: web.Request) -> web.Response:
    """Every card with its state and usage against limits."""
    return web.json_response({"cards": _op(request).list_cards(_now(request))})


async def cluster(request: web.Request) -> web.Response:
    """The nodes sharing ``[store] redis``, from their heartbeats (404 without Redis, 503
    while Redis does not answer): what ``dialgate cluster status`` prints."""
    from gateway.operator.service import NotFound, shared_usage_view
    from gateway.store import StoreUnavailable
    from gateway.telemetry.events import iso_time

    shared = shared_usage_view(_op(request).manager)
    nodes_of = getattr(shared, "nodes", None)
    if nodes_of is None:
        raise NotFound("no cluster: [store] redis is not set")
    try:
        nodes = nodes_of()
    except StoreUnavailable as exc:
        return web.json_response({"error": "store-unavailable", "detail": str(exc)}, status=503)
    return web.json_response(
        {
            "nodes": [
                {
                    "node": n["node"],
                    "state": "up" if n["alive"] else "down",
                    "address": n["address"],
                    "started_at": iso_time(n["started_at"]),
                    "last_heartbeat": iso_time(n["at"]),
                    "calls": n["calls"] if n["alive"] else 0,
                    "open_reservations": n["open"],
                }
                for n in nodes
            ]
        }
    )


async def show_card(request: web.Request) -> web.Response:
    """One card with record, appeals and timeline."""
    return web.json_response(_op(request).show_card(_card_id(request), _now(request)))


async def update_record(request: web.Request) -> web.Response:
    """Edit the card's record."""
    body = await _body(request)
    fields = {
        "holder",
        "employee_id",
        "registered_number",
        "carrier_account",
        "purchase_channel",
        "notes",
    }
    _only(body, fields)
    changes = {name: _text(body, name) for name in fields}
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(request, lambda: op.update_record(card, changes, actor=actor, now=now))


async def suspend(request: web.Request) -> web.Response:
    """Take the card out of service."""
    body = await _body(request)
    _only(body, {"reason", "note"})
    reason = _text(body, "reason", max_len=32) or "manual"
    note = _text(body, "note") or ""
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(
        request, lambda: op.suspend(card, actor=actor, now=now, reason=reason, note=note)
    )


async def appeal(request: web.Request) -> web.Response:
    """File an appeal."""
    body = await _body(request)
    _only(body, {"reference", "channel", "submitted_at", "notes"})
    reference = _text(body, "reference") or ""
    channel = _text(body, "channel") or ""
    notes = _text(body, "notes") or ""
    submitted = _time(body, "submitted_at")
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.appeal(
            card,
            actor=actor,
            now=now,
            reference=reference,
            channel=channel,
            submitted_at=submitted,
            notes=notes,
        ),
    )


async def appeal_update(request: web.Request) -> web.Response:
    """Record a step of the open appeal."""
    body = await _body(request)
    _only(body, {"kind", "decision", "notes"})
    kind = _text(body, "kind", required=True, max_len=64) or ""
    decision = _text(body, "decision", max_len=32)
    notes = _text(body, "notes") or ""
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.appeal_update(
            card, actor=actor, now=now, kind=kind, notes=notes, decision=decision
        ),
    )


async def probation(request: web.Request) -> web.Response:
    """Restore on probation."""
    body = await _body(request)
    _only(body, {"until", "duration", "profile", "note"})
    until = _time(body, "until")
    duration_value = body.get("duration")
    duration = None
    if duration_value is not None:
        if isinstance(duration_value, bool) or not isinstance(duration_value, str | int | float):
            raise BadRequest("duration must be a number of days or text such as 14d")
        duration = parse_duration(duration_value)
    profile = _text(body, "profile", max_len=64)
    note = _text(body, "note") or ""
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.probation(
            card, actor=actor, now=now, until=until, duration=duration, profile=profile, note=note
        ),
    )


async def restore(request: web.Request) -> web.Response:
    """Back into service, through the carrier's probation unless skipped with a reason."""
    body = await _body(request)
    _only(body, {"note", "skip_probation", "reason"})
    note = _text(body, "note") or ""
    skip = body.get("skip_probation", False)
    if not isinstance(skip, bool):
        raise BadRequest("skip_probation must be true or false")
    reason = _text(body, "reason", max_len=500) or ""
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.restore(
            card, actor=actor, now=now, note=note, skip_probation=skip, reason=reason
        ),
    )


async def clear(request: web.Request) -> web.Response:
    """A suspect card is fine after all."""
    body = await _body(request)
    _only(body, {"note"})
    note = _text(body, "note") or ""
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(request, lambda: op.clear(card, actor=actor, now=now, note=note))


async def retire(request: web.Request) -> web.Response:
    """Out of service for good."""
    body = await _body(request)
    _only(body, {"note"})
    note = _text(body, "note") or ""
    op = _op(request)
    card, now, actor = _card_id(request), _now(request), actor_of(request)
    return await _write(request, lambda: op.retire(card, actor=actor, now=now, note=note))


async def evidence(request: web.Request) -> web.Response:
    """The evidence pack as a zip download."""
    op = _op(request)
    now = _now(request)
    since = _query_time(request, "since")
    until = _query_time(request, "until")
    card = _card_id(request)
    pack = build_evidence(op, card, since=0.0 if since is None else since, now=now, until=until)
    buf = io.BytesIO()
    write_evidence_zip(pack, buf)
    op.db.record_audit(
        at=now, actor=actor_of(request), action="card.evidence", target=card, card=card
    )
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in card)
    return web.Response(
        body=buf.getvalue(),
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="evidence-{safe}.zip"'},
    )


async def lookup_number(request: web.Request) -> web.Response:
    """One number: attempts, answers, complaints, DNC, consent, when it may be called next."""
    campaign = _query_text(request, "campaign")
    return web.json_response(
        _op(request).number_show(request.match_info["number"], now=_now(request), campaign=campaign)
    )


async def number_reset(request: web.Request) -> web.Response:
    """Start a number's frequency history afresh (reason required; audited)."""
    body = await _body(request)
    _only(body, {"reason"})
    reason = _text(body, "reason", required=True, max_len=500) or ""
    number = request.match_info["number"]
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request, lambda: op.number_reset(number, actor=actor, now=now, reason=reason)
    )


async def dnc_add(request: web.Request) -> web.Response:
    """Put a number on the DNC list."""
    body = await _body(request)
    _only(body, {"number", "note"})
    number = _text(body, "number", required=True, max_len=64) or ""
    note = _text(body, "note") or ""
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(request, lambda: op.dnc_add(number, actor=actor, now=now, note=note))


async def dnc_remove(request: web.Request) -> web.Response:
    """Take a number off the DNC list; a complaint's entry needs ``force`` and ``reason``
    (query parameters, or a JSON body)."""
    body = await _body(request)
    _only(body, {"force", "reason"})
    force_value = body.get("force", request.query.get("force", "false"))
    if isinstance(force_value, str):
        force_value = force_value.lower() in ("1", "true", "yes")
    if not isinstance(force_value, bool):
        raise BadRequest("force must be true or false")
    reason = _text(body, "reason", max_len=500) or _query_text(request, "reason") or ""
    number = request.match_info["number"]
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.dnc_remove(number, actor=actor, now=now, force=force_value, reason=reason),
    )


async def dnc_import(request: web.Request) -> web.Response:
    """Import a DNC list."""
    text = await _text_body(request)
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.dnc_import(text.splitlines(), actor=actor, now=now, name="api").as_dict(),
    )


async def consent_add(request: web.Request) -> web.Response:
    """Record consent."""
    body = await _body(request)
    _only(body, {"number", "campaign", "granted_at", "expires_at", "source", "evidence"})
    number = _text(body, "number", required=True, max_len=64) or ""
    campaign = _text(body, "campaign", max_len=64) or ""
    granted = _time(body, "granted_at")
    expires = _time(body, "expires_at")
    source = _text(body, "source") or "api"
    proof = _text(body, "evidence") or ""
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.consent_add(
            number,
            actor=actor,
            now=now,
            campaign=campaign,
            granted_at=granted,
            expires_at=expires,
            source=source,
            evidence=proof,
        ),
    )


async def consent_revoke(request: web.Request) -> web.Response:
    """Revoke consent."""
    body = await _body(request)
    _only(body, {"number", "campaign"})
    number = _text(body, "number", required=True, max_len=64) or ""
    campaign = _text(body, "campaign", max_len=64)
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request, lambda: op.consent_revoke(number, actor=actor, now=now, campaign=campaign)
    )


async def consent_import(request: web.Request) -> web.Response:
    """Import consent CSV."""
    text = await _text_body(request)
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request, lambda: op.consent_import(text, actor=actor, now=now, name="api").as_dict()
    )


async def complaint_add(request: web.Request) -> web.Response:
    """Record a complaint."""
    body = await _body(request)
    _only(body, {"number", "agent", "call_id", "card", "note"})
    number = _text(body, "number", required=True, max_len=64) or ""
    agent = _text(body, "agent", max_len=64) or ""
    call_id = _text(body, "call_id", max_len=256)
    card = _text(body, "card", max_len=64)
    note = _text(body, "note") or ""
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(
        request,
        lambda: op.complaint_add(
            number, actor=actor, now=now, agent=agent, call_id=call_id, card=card, note=note
        ),
    )


async def agent_resume(request: web.Request) -> web.Response:
    """Lift an agent's pause (audited; optional ``note``)."""
    body = await _body(request)
    _only(body, {"note"})
    note = _text(body, "note", max_len=500) or ""
    agent = request.match_info["agent"]
    op, now, actor = _op(request), _now(request), actor_of(request)
    return await _write(request, lambda: op.agent_resume(agent, actor=actor, now=now, note=note))


async def agent_show(request: web.Request) -> web.Response:
    """An agent's pause, complaints and calls."""
    return web.json_response(_op(request).agent_status(request.match_info["agent"], _now(request)))


def _cdr_query(request: web.Request) -> dict[str, Any]:
    return {
        "since": _query_time(request, "since"),
        "until": _query_time(request, "until"),
        "card": _query_text(request, "card"),
        "agent": _query_text(request, "agent"),
        "campaign": _query_text(request, "campaign"),
        "outcome": _query_text(request, "outcome"),
        "call_id": _query_text(request, "call_id"),
        "limit": _query_int(request, "limit", 1000),
    }


async def cdrs(request: web.Request) -> web.Response:
    """CDRs as JSON."""
    op = _op(request)
    records = op.cdrs(**_cdr_query(request))
    return web.json_response({"cdrs": [op.cdr_view(r) for r in records], "count": len(records)})


async def cdrs_csv(request: web.Request) -> web.Response:
    """CDRs as CSV."""
    op = _op(request)
    records = op.cdrs(**_cdr_query(request))
    return web.Response(
        text=op.cdrs_csv(records),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="cdrs.csv"'},
    )


def add_routes(app: web.Application) -> None:
    """Register every route of the OpenAPI document."""
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/cards", list_cards)
    app.router.add_get("/cluster", cluster)
    app.router.add_get("/cards/{card}", show_card)
    app.router.add_patch("/cards/{card}/record", update_record)
    app.router.add_post("/cards/{card}/suspend", suspend)
    app.router.add_post("/cards/{card}/appeal", appeal)
    app.router.add_post("/cards/{card}/appeal/updates", appeal_update)
    app.router.add_post("/cards/{card}/probation", probation)
    app.router.add_post("/cards/{card}/restore", restore)
    app.router.add_post("/cards/{card}/clear", clear)
    app.router.add_post("/cards/{card}/retire", retire)
    app.router.add_get("/cards/{card}/evidence", evidence)
    app.router.add_get("/numbers/{number}", lookup_number)
    app.router.add_post("/numbers/{number}/reset", number_reset)
    app.router.add_post("/dnc", dnc_add)
    app.router.add_post("/dnc/import", dnc_import)
    app.router.add_delete("/dnc/{number}", dnc_remove)
    app.router.add_post("/consent", consent_add)
    app.router.add_post("/consent/revoke", consent_revoke)
    app.router.add_post("/consent/import", consent_import)
    app.router.add_post("/complaints", complaint_add)
    app.router.add_get("/agents/{agent}", agent_show)
    app.router.add_post("/agents/{agent}/resume", agent_resume)
    app.router.add_get("/cdrs", cdrs)
    app.router.add_get("/cdrs.csv", cdrs_csv)
    add_dialer_routes(app)  # dialers: leads, capacity
