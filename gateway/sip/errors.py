"""The one error hierarchy of ``gateway.sip``.

Every protocol error raised by the SIP package is a :class:`SIPError` and carries
the status code (and reason phrase, and any extra headers) that a server should
answer with, in the style of h11's ``error_status_hint``. The layer that catches
the error decides whether to answer (requests) or drop (responses).

This module must never import other ``gateway`` modules and must never do I/O.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

__all__ = [
    "REASON_PHRASES",
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


@mypyc_attr(native_class=False)
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
                # An unknown code gets an empty phrase (RFC 3261 §7.2 allows one).
                reason_phrase = REASON_PHRASES.get(status_code, "")
        if reason_phrase is not None:
            self.reason_phrase = reason_phrase
        self.extra_headers: list[tuple[str, str]] = list(extra_headers or [])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, status_code={self.status_code})"


@mypyc_attr(native_class=False)
class ParseError(SIPError):
    """Malformed syntax or framing (400)."""

    status_code = 400
    reason_phrase = "Bad Request"


@mypyc_attr(native_class=False)
class VersionNotSupported(SIPError):
    """SIP-Version other than SIP/2.0 (505, RFC 3261 §21.5.6)."""

    status_code = 505
    reason_phrase = "Version Not Supported"


@mypyc_attr(native_class=False)
class UnsupportedURIScheme(SIPError):
    """Request-URI scheme the element does not handle (416, RFC 3261 §8.2.2.1)."""

    status_code = 416
    reason_phrase = "Unsupported URI Scheme"


@mypyc_attr(native_class=False)
class TooManyHops(SIPError):
    """Max-Forwards reached zero at a proxy (483, RFC 3261 §16.3 step 3)."""

    status_code = 483
    reason_phrase = "Too Many Hops"


@mypyc_attr(native_class=False)
class MessageTooLarge(SIPError):
    """Message larger than the element accepts (513, RFC 3261 §21.5.13)."""

    status_code = 513
    reason_phrase = "Message Too Large"


@mypyc_attr(native_class=False)
class BadExtension(SIPError):
    """Require/Proxy-Require option tags not supported (420, RFC 3261 §8.2.2.3).

    ``extra_headers`` carries the ``Unsupported`` header listing them.
    """

    status_code = 420
    reason_phrase = "Bad Extension"


@mypyc_attr(native_class=False)
class NotAcceptable(SIPError):
    """The request's Accept excludes every body type we could send (406)."""

    status_code = 406
    reason_phrase = "Not Acceptable"


@mypyc_attr(native_class=False)
class AuthError(SIPError):
    """Digest authentication problems (400 for malformed credentials)."""

    status_code = 400
    reason_phrase = "Bad Request"


@mypyc_attr(native_class=False)
class TransactionError(SIPError):
    """Misuse of a transaction machine (a programming error surfaced as 500)."""

    status_code = 500
    reason_phrase = "Server Internal Error"


# RFC 3261 §21 plus the common later additions.
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}
