"""Request-body limits of the admin API: size per route, JSON nesting depth.

One table says how many octets each route's body may have (list imports are
large, every JSON body small); :func:`body_limit_middleware` answers 413 before
reading a body whose Content-Length is over it and bounds a chunked body the
same way (aiohttp's ``client_max_size`` of a cloned request), and
:func:`document_limits` writes the same numbers into the OpenAPI document
(``x-max-body-bytes`` and a 413 answer on every operation with a body), so the
document and the server cannot disagree. :func:`check_json_depth` refuses JSON
nested deeper than :data:`MAX_JSON_DEPTH` before it is parsed (the standard
parser would recurse until a ``RecursionError``).

It must never read a body itself beyond the limit, and never answer 5xx for a
client's oversized or over-nested input.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

__all__ = [
    "IMPORT_BODY_LIMIT",
    "JSON_BODY_LIMIT",
    "MAX_JSON_DEPTH",
    "ROUTE_BODY_LIMITS",
    "body_limit",
    "body_limit_middleware",
    "check_json_depth",
    "document_limits",
    "largest_limit",
]

JSON_BODY_LIMIT = 64 * 1024
"""Octets of a JSON request body (every field has a documented maxLength far below)."""

IMPORT_BODY_LIMIT = 10 * 1024 * 1024
"""Octets of a DNC or consent list sent to an import route (bigger lists: the CLI)."""

MAX_JSON_DEPTH = 32
"""Nesting depth of arrays and objects a JSON body may have (the API needs 2)."""

ROUTE_BODY_LIMITS: dict[str, int] = {
    "/dnc/import": IMPORT_BODY_LIMIT,
    "/consent/import": IMPORT_BODY_LIMIT,
    "/leads/check": IMPORT_BODY_LIMIT,
}
"""Routes (as in the OpenAPI document) whose bodies may exceed :data:`JSON_BODY_LIMIT`."""


def body_limit(route: str) -> int:
    """The body size limit of ``route`` (its canonical path)."""
    return ROUTE_BODY_LIMITS.get(route, JSON_BODY_LIMIT)


def largest_limit() -> int:
    """The largest body any route accepts (the application's ``client_max_size``)."""
    return max(JSON_BODY_LIMIT, *ROUTE_BODY_LIMITS.values())


def _too_large(limit: int) -> web.Response:
    return web.json_response(
        {"error": f"request body larger than {limit} bytes"},
        status=413,
        headers={"Connection": "close"},
    )


@web.middleware
async def body_limit_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """413 for a body over its route's limit: at once from Content-Length, else while read."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    limit = body_limit(route)
    length = request.content_length
    if length is not None and length > limit:
        return _too_large(limit)
    if request.can_read_body:
        request = request.clone(client_max_size=limit)
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limit)


def check_json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when no array/object in ``raw`` is nested deeper than ``limit``.

    A linear scan that skips string contents (with their escapes); it does not
    validate JSON — the parser does that afterwards, safely.
    """
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return True


def document_limits(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the OpenAPI ``document`` with each operation's body limit and its 413."""
    doc = copy.deepcopy(document)
    error = {"description": "the request body is larger than x-max-body-bytes"}
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            limit = body_limit(path)
            operation["x-max-body-bytes"] = limit
            operation.setdefault("responses", {})["413"] = error
            for media in operation["requestBody"].get("content", {}).values():
                schema = media.get("schema", {})
                if schema.get("type") == "string":
                    schema["maxLength"] = limit
    return doc
