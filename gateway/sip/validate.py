"""Element-level checks on a successfully parsed message (RFC 3261 §8.2, §16.3).

:func:`check_request` decides whether a request may be processed or must be
answered with an error; :func:`check_response` decides whether a response must
be silently dropped. Both force the full typed parse of every header the
gateway relies on, so malformed values surface here as :class:`ParseError`
(400) instead of later as crashes.

This module only *raises*; it never builds or sends responses, never mutates the
message and never does I/O. Each raised error carries the status to answer with
(and, for 420/406, the extra headers the response needs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from typing import Final, Literal

from .errors import (
    BadExtension,
    NotAcceptable,
    ParseError,
    TooManyHops,
    UnsupportedURIScheme,
    VersionNotSupported,
)
from .headers import split_list
from .message import Request, Response
from .uri import URI, remember

__all__ = ["MAGIC_COOKIE", "SUPPORTED_SCHEMES", "check_request", "check_response"]

MAGIC_COOKIE: Final = "z9hG4bK"
"""RFC 3261 §8.1.1.7: branch IDs of RFC 3261 elements start with this cookie."""

SUPPORTED_SCHEMES: Final = frozenset({"sip", "sips", "tel"})

Role = Literal["proxy", "uas", "registrar"]


def _check_version(version: str) -> None:
    # RFC 3261 §8.2.2 / §21.5.6: any SIP-Version other than 2.0 gets 505. The
    # literal "SIP" is case-insensitive (RFC 3261 §7.1).
    if version.upper() != "SIP/2.0":
        raise VersionNotSupported(f"SIP version {version!r} not supported")


def _option_tags(req: Request, name: str) -> list[str]:
    return [t for v in req.headers.values(name) if (t := v.strip(" \t"))]


def _accepts_sdp(accept_values: list[str]) -> bool:
    for value in accept_values:
        media = value.split(";", 1)[0].strip(" \t").lower()
        if media in ("application/sdp", "application/*", "*/*"):
            return True
    return False


def check_request(
    req: Request,
    *,
    role: Role = "proxy",
    supported: Collection[str] = (),
    local_uri: Callable[[URI], bool] | None = None,
) -> None:
    """Raise the SIPError a server should answer ``req`` with; return None if it is acceptable.

    Order follows RFC 3261 §16.3 for proxies (syntax, URI scheme, Max-Forwards,
    Proxy-Require) and §8.2 for UAS/registrar (syntax, URI scheme, Require,
    content): 505, 400, 416, 483, 420, 406.
    """
    _check_version(req.version)

    # RFC 3261 §8.1.1: To, From, CSeq, Call-ID, Max-Forwards and Via are mandatory.
    # Max-Forwards is tolerated when missing (RFC 2543 peers, RFC 4475 §3.4.1: a
    # proxy adds it, §16.6 step 3) but must be a single well-formed value if present.
    vias = req._vias()
    if not vias:
        raise ParseError("missing Via header")
    _ = req.from_, req.to, req.call_id
    cseq = req.cseq
    # Optional headers are parsed (and so validated) when present; an absent one
    # reads as None / [] and can never be malformed, so its view is left for later.
    h = req.headers
    max_forwards = req.max_forwards if h.count("max-forwards") else None
    if h.count("contact"):
        _ = req.contact_star, req.contact
    if h.count("route"):
        _ = req.route
    if h.count("record-route"):
        _ = req.record_route
    if h.count("expires"):
        _ = req.expires
    if h.count("content-length"):
        _ = req.content_length
    if cseq.method != req.method:
        # RFC 3261 §8.1.1.5: the CSeq method MUST match the request method.
        raise ParseError("CSeq method does not match the request method")
    # RFC 4475 §3.2.1: a branch that is only the magic cookie identifies nothing.
    if vias[0].branch == MAGIC_COOKIE:
        raise ParseError("Via branch is only the magic cookie")

    # RFC 3261 §8.2.2.1 / §16.3 step 2: a Request-URI scheme we do not understand → 416.
    if req.uri.scheme not in SUPPORTED_SCHEMES:
        raise UnsupportedURIScheme(f"Request-URI scheme {req.uri.scheme!r} not supported")

    if role == "registrar" and req.method == "REGISTER" and not req.to.uri.is_sip:
        # RFC 3261 §10.3 step 5: the To header must hold a valid SIP/SIPS address-of-record.
        raise ParseError("To of a REGISTER must be a sip: or sips: URI")

    local = local_uri is not None and local_uri(req.uri)
    if role == "proxy" and max_forwards == 0 and not local:
        # RFC 3261 §16.3 step 3: a proxy must not forward a request with Max-Forwards 0.
        raise TooManyHops("Max-Forwards is 0")

    # RFC 3261 §8.2.2.3 / §16.3 step 5: unknown option tags → 420 listing them in
    # Unsupported. Require is for the UAS; Proxy-Require is for proxies. An ACK or
    # CANCEL is never rejected this way (no response to an ACK; CANCEL has no options).
    if req.method not in ("ACK", "CANCEL"):
        header = "proxy-require" if role == "proxy" and not local else "require"
        allowed = {s.lower() for s in supported}
        unknown = [t for t in _option_tags(req, header) if t.lower() not in allowed]
        if unknown:
            raise BadExtension(
                f"unsupported option tags in {header}: {', '.join(unknown)}",
                extra_headers=[("Unsupported", ", ".join(unknown))],
            )

    # RFC 3261 §8.2.3 / §13.3.1.1: an INVITE whose Accept lists no type we can send
    # (we only answer with SDP) gets 406; an empty Accept accepts nothing (§20.1).
    if req.method == "INVITE" and "accept" in req.headers:
        values: list[str] = []
        for raw in req.headers.get_all("accept"):
            values.extend(split_list(raw))
        if not _accepts_sdp(values):
            raise NotAcceptable(
                "Accept does not include application/sdp",
                extra_headers=[
                    ("Accept", "application/sdp"),
                    ("Warning", '399 dialgate "only application/sdp is supported"'),
                ],
            )


_UNROUTABLE: Final[dict[str, bool]] = {}
"""``_unroutable`` by host text (bounded like the parse memos): hosts repeat, and
``ipaddress`` is slow enough to dominate a response check."""


def _unroutable(host: str) -> bool:
    hit = _UNROUTABLE.get(host)
    if hit is None:
        hit = _is_unroutable(host)
        remember(_UNROUTABLE, host, hit)
    return hit


def _is_unroutable(host: str) -> bool:
    text = host[1:-1] if host.startswith("[") else host
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address("255.255.255.255"):
        return True
    return addr.is_multicast or addr.is_unspecified


def check_response(resp: Response, *, role: Literal["uac", "proxy"] = "uac") -> None:
    """Raise a SIPError if ``resp`` must be silently dropped (responses are never answered).

    Drops: a version other than SIP/2.0, missing or malformed Via/From/To/Call-ID/CSeq
    (including CSeq numbers ≥ 2**31, RFC 4475 §3.1.2.5), malformed Contact,
    Expires or Retry-After, more than one Via at a UAC (RFC 3261 §8.1.3.3), and a
    Via sent-by that is a broadcast/multicast/unspecified address (RFC 4475 §3.3.10).
    """
    _check_version(resp.version)
    if not 100 <= resp.status <= 699:
        raise ParseError(f"status code {resp.status} out of range")
    vias = resp._vias()
    if not vias:
        raise ParseError("response without Via")
    _ = resp.from_, resp.to, resp.call_id, resp.cseq
    _ = resp.contact_star, resp.contact, resp.record_route
    _ = resp.expires, resp.retry_after, resp.content_length
    if role == "uac" and len(vias) > 1:
        # RFC 3261 §8.1.3.3: a UAC discards a response with more than one Via.
        raise ParseError("response with more than one Via at a UAC")
    for via in vias:
        if _unroutable(via.host) or (via.received is not None and _unroutable(via.received)):
            raise ParseError(f"Via sent-by {via.host} is a broadcast/multicast address")
