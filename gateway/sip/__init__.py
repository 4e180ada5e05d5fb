"""``gateway.sip``: sans-IO SIP (RFC 3261) message handling.

Re-exports the public API of docs/sip-api.md. This package must never open
sockets, read clocks, start threads or touch asyncio.
"""

from __future__ import annotations

from .errors import (
    AuthError,
    BadExtension,
    MessageTooLarge,
    NotAcceptable,
    ParseError,
    SIPError,
    TooManyHops,
    TransactionError,
    UnsupportedURIScheme,
    VersionNotSupported,
)
from .headers import CSeq, Headers, NameAddr, Reason, RetryAfter, Via
from .message import (
    MAX_MESSAGE_SIZE,
    REASON_PHRASES,
    Request,
    Response,
    error_response,
    make_response,
    parse,
)
from .uri import URI
from .validate import check_request, check_response

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REASON_PHRASES",
    "URI",
    "AuthError",
    "BadExtension",
    "CSeq",
    "Headers",
    "MessageTooLarge",
    "NameAddr",
    "NotAcceptable",
    "ParseError",
    "Reason",
    "Request",
    "Response",
    "RetryAfter",
    "SIPError",
    "TooManyHops",
    "TransactionError",
    "UnsupportedURIScheme",
    "VersionNotSupported",
    "Via",
    "check_request",
    "check_response",
    "error_response",
    "make_response",
    "parse",
]
