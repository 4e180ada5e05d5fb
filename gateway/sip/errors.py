"""The one error hierarchy of ``gateway.sip``.

Every protocol error raised by the SIP package is a :class:`SIPError` and carries
the status code (and reason phrase, and any extra headers) that a server should
answer with, in the style of h11's ``error_status_hint``. The layer that catches
the error decides whether to answer (requests) or drop (responses).

This module must never import other ``gateway`` modules and must never do I/O.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadExtension",
    "MessageTooLarge",
    "NotAcceptable",
    "ParseError",
    "SIPError",
    "TooManyHops",
    "TransactionError",
    "UnsupportedURIScheme",
    "VersionNotSupported",
]


class SIPError(Exception):
    """Base class: a protocol problem with the response a server should answer with."""

    status_code: int = 400
    reason_phrase: str = "Bad Request"

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        reason_phrase: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
            if reason_phrase is None:
                # A small local table: importing REASON_PHRASES from message.py would
                # make errors.py (imported by everything) depend on the parser.
                reason_phrase = _DEFAULT_PHRASES.get(status_code, type(self).reason_phrase)
        if reason_phrase is not None:
            self.reason_phrase = reason_phrase
        self.extra_headers: list[tuple[str, str]] = list(extra_headers or [])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, status_code={self.status_code})"


class ParseError(SIPError):
    """Malformed syntax or framing (400)."""

    status_code = 400
    reason_phrase = "Bad Request"


class VersionNotSupported(SIPError):
    """SIP-Version other than SIP/2.0 (505, RFC 3261 §21.5.6)."""

    status_code = 505
    reason_phrase = "Version Not Supported"


class UnsupportedURIScheme(SIPError):
    """Request-URI scheme the element does not handle (416, RFC 3261 §8.2.2.1)."""

    status_code = 416
    reason_phrase = "Unsupported URI Scheme"


class TooManyHops(SIPError):
    """Max-Forwards reached zero at a proxy (483, RFC 3261 §16.3 step 3)."""

    status_code = 483
    reason_phrase = "Too Many Hops"


class MessageTooLarge(SIPError):
    """Message larger than the element accepts (513, RFC 3261 §21.5.13)."""

    status_code = 513
    reason_phrase = "Message Too Large"


class BadExtension(SIPError):
    """Require/Proxy-Require option tags not supported (420, RFC 3261 §8.2.2.3).

    ``extra_headers`` carries the ``Unsupported`` header listing them.
    """

    status_code = 420
    reason_phrase = "Bad Extension"


class NotAcceptable(SIPError):
    """The request's Accept excludes every body type we could send (406)."""

    status_code = 406
    reason_phrase = "Not Acceptable"


class AuthError(SIPError):
    """Digest authentication problems (400 for malformed credentials)."""

    status_code = 400
    reason_phrase = "Bad Request"


class TransactionError(SIPError):
    """Misuse of a transaction machine (a programming error surfaced as 500)."""

    status_code = 500
    reason_phrase = "Server Internal Error"


_DEFAULT_PHRASES: dict[int, str] = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}
