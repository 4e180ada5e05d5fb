"""Bearer-token authentication of the admin HTTP API.

``Authorization: Bearer <token>`` is compared with ``[admin] token`` in constant
time (:func:`hmac.compare_digest`). ``/health`` and ``/openapi.json`` need no
token. Without a configured token the API only serves loopback clients (the
configuration refuses to listen elsewhere without one). The request's actor,
recorded in the audit log, is ``api`` — or ``api:NAME`` when the client names
its operator in ``X-Dialgate-Actor``.

What it must never do: log, echo or time-leak a token (a wrong token and a
missing one get the same 401 body), or let a request through on a parse error.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import SecretStr

__all__ = ["ACTOR_KEY", "PUBLIC_PATHS", "actor_of", "token_middleware"]

PUBLIC_PATHS = frozenset({"/health", "/openapi.json"})
ACTOR_KEY: web.RequestKey[str] = web.RequestKey("actor", str)
_ACTOR_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "unauthorized: send Authorization: Bearer <admin token>"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="dialgate"'},
    )


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def token_ok(header: str | None, token: SecretStr) -> bool:
    """Whether ``header`` is ``Bearer <token>`` (scheme case-insensitive, constant-time compare)."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    expected = token.get_secret_value().encode("utf-8")
    return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), expected)


def token_middleware(token: SecretStr | None) -> Middleware:
    """The aiohttp middleware enforcing the admin token and setting the request's actor."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        if token is None:
            if not _is_loopback(request.remote):
                return _unauthorized()
        elif not token_ok(request.headers.get("Authorization"), token):
            return _unauthorized()
        name = request.headers.get("X-Dialgate-Actor", "").strip()
        request[ACTOR_KEY] = f"api:{name}" if _ACTOR_RE.match(name) else "api"
        return await handler(request)

    return middleware


def actor_of(request: web.Request) -> str:
    """The audited actor of an authenticated request."""
    actor: str = request.get(ACTOR_KEY, "api")
    return actor
