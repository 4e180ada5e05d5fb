"""The OpenAPI 3 document of the admin HTTP API (served at ``/openapi.json``).

Built from small helpers so each route is described once, next to its
parameters and bodies. ``gateway.operator.api.routes`` implements exactly these
operations; a test runs schemathesis against this document.

What it must never do: contain a secret or an example phone number that could
be a real person's (examples use the +1 202 555 01xx fictional range).
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
_OBJECT = {"type": "object"}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _OBJECT}},
    }


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok, "401": _ERROR}
    for code in (400, *errors):
        out[str(code)] = _ERROR
    return out


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "maxLength": 64},
    }


def _body(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _text_body(media: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {media: {"schema": {"type": "string", "maxLength": 100000}}},
    }


_S = {"type": "string", "maxLength": 2000}
_TIME = {
    "description": "ISO 8601 date or time (UTC when no offset), or epoch seconds",
    "oneOf": [{"type": "string", "maxLength": 40}, {"type": "number"}],
}
_NUMBER = {"type": "string", "minLength": 1, "maxLength": 32, "example": "+12025550123"}
_CARD = _path_param("card", "card id")
_TIME_FILTERS = [
    _query("since", "from this time (ISO 8601 or epoch seconds)"),
    _query("until", "before this time"),
]
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


_BAN = {
    "type": "object",
    "properties": {
        "address": {"type": "string"},
        "reason": {"type": "string", "enum": ["auth-failures", "flood"]},
        "count": {"type": "integer"},
        "offence": {"type": "integer"},
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "remaining_seconds": {"type": "integer"},
    },
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, "security": _SECURITY}
    op.update(extra)
    return op


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 description of every admin route."""
    card_ok = _json("the card with its record, appeals and timeline")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dialgate admin API",
            "version": version,
            "description": (
                "Operator API of the dialgate gateway: cards and their lifecycle, appeal "
                "evidence, DNC, consent, complaints and call detail records. Callee numbers "
                "are masked in every answer unless the gateway is configured otherwise. "
                "Every write is audited (actor `api`, or `api:NAME` with X-Dialgate-Actor)."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "liveness (no token needed); 503 while the store does not answer",
                    "security": [],
                    "responses": {
                        "200": _json(
                            "alive",
                            {
                                "type": "object",
                                "properties": {"status": {"type": "string"}},
                                "required": ["status"],
                            },
                        ),
                        "503": _json(
                            "degraded: the store does not answer (calls are refused 503)",
                            {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "string"},
                                    "store": {"type": "object"},
                                },
                                "required": ["status", "store"],
                            },
                        ),
                    },
                }
            },
            "/metrics": {
                "get": _op(
                    "Prometheus metrics of the running gateway (text exposition format)",
                    {
                        "200": {
                            "description": "the exposition text",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _ERROR,
                    },
                )
            },
            "/cards": {
                "get": _op(
                    "every card with state and usage against each limit",
                    _responses(
                        _json(
                            "cards", {"type": "object", "properties": {"cards": {"type": "array"}}}
                        )
                    ),
                )
            },
            "/cluster": {
                "get": _op(
                    "the gateway nodes sharing [store] redis: up/down, address, calls in"
                    " progress, open reservations, last heartbeat (404 without Redis)",
                    _responses(
                        _json(
                            "nodes", {"type": "object", "properties": {"nodes": {"type": "array"}}}
                        ),
                        404,
                    ),
                )
            },
            "/cards/{card}": {
                "get": _op(
                    "one card with its record and timeline",
                    _responses(card_ok, 404),
                    parameters=[_CARD],
                )
            },
            "/cards/{card}/record": {
                "patch": _op(
                    "edit the card's record (holder, employee ID, registration number…)",
                    _responses(_json("the record, registration number masked"), 404),
                    parameters=[_CARD],
                    requestBody=_body(
                        {
                            "holder": _S,
                            "employee_id": _S,
                            "registered_number": {"type": "string", "maxLength": 32},
                            "carrier_account": _S,
                            "purchase_channel": _S,
                            "notes": _S,
                        }
                    ),
                )
            },
            "/cards/{card}/suspend": {
                "post": _op(
                    "take the card out of service",
                    _responses(card_ok, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body(
                        {
                            "reason": {
                                "type": "string",
                                "enum": [
                                    "arrears",
                                    "violation",
                                    "abnormal-use",
                                    "maintenance",
                                    "fault",
                                    "manual",
                                    "unknown",
                                ],
                            },
                            "note": _S,
                        }
                    ),
                )
            },
            "/cards/{card}/appeal": {
                "post": _op(
                    "file an appeal with the carrier (card → appealing)",
                    _responses(card_ok, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body(
                        {"reference": _S, "channel": _S, "submitted_at": _TIME, "notes": _S}
                    ),
                )
            },
            "/cards/{card}/appeal/updates": {
                "post": _op(
                    "record a step of the open appeal (a rejection returns the card to suspended)",
                    _responses(card_ok, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body(
                        {
                            "kind": {
                                "type": "string",
                                "enum": [
                                    "more-info-requested",
                                    "material-sent",
                                    "note",
                                    "decision",
                                ],
                            },
                            "decision": {"type": "string", "enum": ["granted", "rejected"]},
                            "notes": _S,
                        },
                        ("kind",),
                    ),
                )
            },
            "/cards/{card}/probation": {
                "post": _op(
                    "restore the card on probation (reduced profile) until a date or for a duration",
                    _responses(card_ok, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body(
                        {
                            "until": _TIME,
                            "duration": {
                                "description": "days as a number, or text such as 14d / 12h",
                                "oneOf": [{"type": "string", "maxLength": 20}, {"type": "number"}],
                            },
                            "profile": {"type": "string", "maxLength": 64},
                            "note": _S,
                        }
                    ),
                )
            },
            "/cards/{card}/restore": {
                "post": _op(
                    "put the card back into service on its carrier's probation "
                    "(skip_probation with a reason: normal limits at once)",
                    _responses(card_ok, 400, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body(
                        {
                            "note": _S,
                            "skip_probation": {"type": "boolean"},
                            "reason": {"type": "string", "maxLength": 500},
                        }
                    ),
                )
            },
            "/cards/{card}/clear": {
                "post": _op(
                    "clear a suspect card (the operator's verdict): back into service",
                    _responses(card_ok, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body({"note": _S}),
                )
            },
            "/cards/{card}/retire": {
                "post": _op(
                    "take the card out of service for good",
                    _responses(card_ok, 404, 409),
                    parameters=[_CARD],
                    requestBody=_body({"note": _S}),
                )
            },
            "/cards/{card}/evidence": {
                "get": _op(
                    "the appeal evidence pack (zip: JSON, CSV, HTML summary)",
                    {
                        "200": {
                            "description": "zip archive",
                            "content": {
                                "application/zip": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                    },
                    parameters=[_CARD, *_TIME_FILTERS],
                )
            },
            "/numbers/{number}": {
                "get": _op(
                    "one number: attempts and answers in the [policy.frequency] windows,"
                    " complaints, DNC entry, consent status, when it may be called next",
                    _responses(_json("the number's history and state (number masked)")),
                    parameters=[
                        {
                            "name": "number",
                            "in": "path",
                            "required": True,
                            "schema": _NUMBER,
                        },
                        _query("campaign", "campaign to judge consent and frequency for"),
                    ],
                )
            },
            "/numbers/{number}/reset": {
                "post": _op(
                    "start a number's frequency history afresh (audited; DNC, consent and"
                    " the cards' quotas are untouched)",
                    _responses(_json("what was cleared"), 400),
                    parameters=[
                        {"name": "number", "in": "path", "required": True, "schema": _NUMBER}
                    ],
                    requestBody=_body({"reason": {"type": "string", "minLength": 1}}, ("reason",)),
                )
            },
            "/dnc": {
                "post": _op(
                    "put a number on the internal DNC list",
                    _responses(_json("added")),
                    requestBody=_body({"number": _NUMBER, "note": _S}, ("number",)),
                )
            },
            "/dnc/{number}": {
                "delete": _op(
                    "take a number off the internal DNC list; an entry a complaint put there"
                    " needs force=true and a reason (audited), else 409",
                    _responses(_json("removed"), 400, 409),
                    parameters=[
                        {"name": "number", "in": "path", "required": True, "schema": _NUMBER},
                        _query("force", "remove a complaint's entry", {"type": "boolean"}),
                        _query(
                            "reason",
                            "why the entry may go (required with force)",
                            {"type": "string", "maxLength": 500},
                        ),
                    ],
                )
            },
            "/dnc/import": {
                "post": _op(
                    "import a DNC list (one number per line, or CSV); bad lines reported by number",
                    _responses(_json("counts and bad lines")),
                    requestBody=_text_body("text/plain", "the list"),
                )
            },
            "/consent": {
                "post": _op(
                    "record a callee's consent",
                    _responses(_json("the number's consent status")),
                    requestBody=_body(
                        {
                            "number": _NUMBER,
                            "campaign": {"type": "string", "maxLength": 64},
                            "granted_at": _TIME,
                            "expires_at": _TIME,
                            "source": _S,
                            "evidence": _S,
                        },
                        ("number",),
                    ),
                )
            },
            "/consent/revoke": {
                "post": _op(
                    "revoke a callee's consent (one campaign, or all when none given)",
                    _responses(_json("the number's consent status")),
                    requestBody=_body(
                        {"number": _NUMBER, "campaign": {"type": "string", "maxLength": 64}},
                        ("number",),
                    ),
                )
            },
            "/consent/import": {
                "post": _op(
                    "import consent CSV: number,campaign,granted_at,expires_at,source,evidence",
                    _responses(_json("counts and bad lines")),
                    requestBody=_text_body("text/csv", "the CSV with a header line"),
                )
            },
            "/complaints": {
                "post": _op(
                    "record a complaint: the number goes on the DNC list; counts against agent and card",
                    _responses(_json("the complaint"), 404),
                    requestBody=_body(
                        {
                            "number": _NUMBER,
                            "agent": {"type": "string", "maxLength": 64},
                            "call_id": {"type": "string", "maxLength": 256},
                            "card": {"type": "string", "maxLength": 64},
                            "note": _S,
                        },
                        ("number",),
                    ),
                )
            },
            "/agents/{agent}": {
                "get": _op(
                    "an agent's pause (reason, until), complaints of the last day and week,"
                    " calls of the last day, the [policy.agents] limits",
                    _responses(_json("the agent")),
                    parameters=[_path_param("agent", "agent (softphone user or dialer peer)")],
                )
            },
            "/agents/{agent}/resume": {
                "post": _op(
                    "lift an agent's pause (complaint ceiling or rate); audited",
                    _responses(_json("the agent; resumed: whether it was paused")),
                    parameters=[_path_param("agent", "agent (softphone user or dialer peer)")],
                    requestBody={**_body({"note": {"type": "string"}}), "required": False},
                )
            },
            "/cdrs": {
                "get": _op(
                    "call detail records by time, card, agent, campaign, outcome",
                    _responses(_json("records (destinations masked)")),
                    parameters=_cdr_filters(),
                )
            },
            "/cdrs.csv": {
                "get": _op(
                    "call detail records as CSV",
                    {
                        "200": {
                            "description": "CSV",
                            "content": {"text/csv": {"schema": {"type": "string"}}},
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                    },
                    parameters=_cdr_filters(),
                )
            },
            "/leads/check": {
                "post": _op(
                    "judge a lead list (CSV or NDJSON, up to 100,000 numbers) as calls to it"
                    " would be judged now, without reserving anything: per row the E.164"
                    " number or 484 address-incomplete, callable, the SIP Reason text (dnc,"
                    " no-consent, calling-hours, frequency-cap, destination-blocked), Retry-After"
                    " and callable_at (ISO time); streamed NDJSON (last line {summary}) or CSV",
                    {
                        "200": {
                            "description": "one verdict per row, in row order",
                            "content": {
                                "application/x-ndjson": {"schema": {"type": "string"}},
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                        "413": _ERROR,
                    },
                    parameters=[
                        _query(
                            "format",
                            "answer format (default ndjson, or csv; also Accept: text/csv)",
                            {"type": "string", "enum": ["ndjson", "csv"]},
                        ),
                        _query("column", "name of the number column or field"),
                        _query("campaign", "campaign of rows that name none (consent, hours)"),
                    ],
                    requestBody={
                        "required": True,
                        "description": "CSV with a header naming the number column (number,"
                        " phone, e164, msisdn, tel; lead_id and campaign are carried), or"
                        " NDJSON objects with the same fields",
                        "content": {
                            "text/csv": {"schema": {"type": "string", "maxLength": 100000}},
                            "application/x-ndjson": {
                                "schema": {"type": "string", "maxLength": 100000}
                            },
                        },
                    },
                )
            },
            "/pools/{pool}/capacity": {
                "get": _op(
                    "how many calls the pool's cards can start now and in the next minute"
                    " (sum over its cards of what quotas and free lines leave), and per card"
                    " why not more (the words of a 503 no-card-available Warning); the same"
                    " document as the retained MQTT topic dialgate/pools/{pool}/capacity",
                    _responses(_json("the pool's capacity"), 404),
                    parameters=[_path_param("pool", "card pool")],
                )
            },
            "/security/bans": {
                "get": _op(
                    "source addresses banned for password guessing or a flood (inside"
                    " `dialgate run`), soonest to end first, with the guard's counters",
                    _responses(
                        _json(
                            "the bans in force",
                            {
                                "type": "object",
                                "properties": {
                                    "bans": {"type": "array", "items": _BAN},
                                    "stats": _OBJECT,
                                },
                            },
                        )
                    ),
                )
            },
            "/security/bans/{address}": {
                "delete": _op(
                    "lift the ban of one source address (`all`: every ban); its failure"
                    " counts are forgotten",
                    _responses(
                        _json(
                            "the bans lifted",
                            {
                                "type": "object",
                                "properties": {"lifted": {"type": "array", "items": _BAN}},
                            },
                        ),
                        404,
                    ),
                    parameters=[
                        {
                            "name": "address",
                            "in": "path",
                            "required": True,
                            "description": "an IPv4/IPv6 address (an IPv6 address lifts its network's ban), or `all`",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                        }
                    ],
                )
            },
        },
    }


def _cdr_filters() -> list[dict[str, Any]]:
    return [
        *_TIME_FILTERS,
        _query("card", "calls tried on this card"),
        _query("agent", "calls placed by this agent or dialer"),
        _query("campaign", "calls of this campaign"),
        _query(
            "outcome",
            "answered, busy, no-answer, declined, not-found, cancelled, blocked, no-card, failed",
        ),
        _query(
            "call_id",
            "the call with this SIP Call-ID (of the A-leg, as in logs and MQTT)",
            {"type": "string", "maxLength": 256},
        ),
        _query(
            "limit",
            "at most this many records",
            {"type": "integer", "minimum": 1, "maximum": 100000},
        ),
    ]
