"""Via rules of the server transport: RFC 3261 §18.2.1/§18.2.2 and RFC 3581 §4.

Pure functions over ``gateway.sip`` messages, no sockets: ``stamp_via`` adds
``received``/fills ``rport`` on the top Via of an incoming request, and
``response_destination`` says where a response must be sent.

This module must never do I/O, never resolve names (a response goes to an IP
literal we stamped ourselves, or to nothing), and never raise: a request whose
Via cannot be read is passed through untouched for the validation layer to
reject.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from gateway.sip.errors import SIPError
from gateway.sip.headers import Headers, Via, canonical_name, split_list
from gateway.sip.message import Request, Response

__all__ = ["response_destination", "stamp_via", "strip_brackets"]

DEFAULT_PORT = 5060


def strip_brackets(host: str) -> str:
    """``"[::1]"`` → ``"::1"``; other hosts unchanged."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def _same_ip(a: str, b: str) -> bool:
    if a == b:
        return True  # the usual case (sent-by is the source IP as written): no ipaddress parse
    try:
        return ipaddress.ip_address(strip_brackets(a)) == ipaddress.ip_address(strip_brackets(b))
    except ValueError:
        return False


def stamp_via(request: Request, source: tuple[str, int]) -> Request:
    """Return ``request`` with its top Via stamped for ``source``.

    RFC 3261 §18.2.1: "If the host portion of the "sent-by" parameter contains a
    domain name, or if it contains an IP address that differs from the packet
    source address, the server MUST add a "received" parameter".
    RFC 3581 §4: if the top Via has an ``rport`` without value, "it MUST set the
    value of the parameter to the source port of the request" and "MUST add a
    received parameter ... even if it is identical to the value of the sent-by".

    A request that needs no change is returned as is (same object); otherwise
    a new Request with the same other header lines, in the same order.
    """
    src_host, src_port = source
    try:
        raw = request.headers.get("via")
        if raw is None:
            return request
        values = split_list(raw)
        # Via.parse is memoized: the message's own ``via`` view reuses this parse.
        top = Via.parse(values[0])
    except (IndexError, SIPError):
        return request
    need_received = top.rport is True or not _same_ip(top.host, src_host)
    need_rport = top.rport is True
    if not need_received and not need_rport:
        return request
    params: list[tuple[str, str | None]] = []
    for pname, pvalue in top.params:
        lname = pname.lower()
        if lname == "received":
            continue  # ours replaces whatever the sender claimed
        if lname == "rport" and need_rport:
            params.append((pname, str(src_port)))
            continue
        params.append((pname, pvalue))
    if need_received:
        params.append(("received", strip_brackets(src_host)))
    stamped = dataclasses.replace(top, params=tuple(params), branch=None, received=None, rport=None)
    items = request.headers.items()
    index = next(i for i, (name, _) in enumerate(items) if canonical_name(name) == "via")
    name = items[index][0]
    items[index] = (name, ", ".join([str(stamped), *values[1:]]))
    try:
        headers = Headers(items)
    except SIPError:
        return request
    return Request(request.method, request.uri, headers, request.body, version=request.version)


def response_destination(response: Response, *, reliable: bool) -> tuple[str, int] | None:
    """Where RFC 3261 §18.2.2 (with RFC 3581 §4) sends ``response``, from its top Via.

    - ``received`` + ``rport`` value, unreliable transport: to that IP and port
      (RFC 3581 §4);
    - ``maddr`` on an unreliable transport: to maddr, sent-by port or 5060 — but
      only when it is an IP literal: we never resolve names here;
    - ``received``: to that IP, sent-by port or 5060;
    - otherwise the sent-by itself when it is an IP literal.

    For a reliable transport the caller first tries the connection the request
    came on; this address is where §18.2.2 would open a new one.
    Returns None when no usable address is in the Via.
    """
    try:
        vias = response.via
    except SIPError:
        return None
    if not vias:
        return None
    top = vias[0]
    port = top.port or DEFAULT_PORT
    received = top.received
    if received and not reliable and isinstance(top.rport, int) and not isinstance(top.rport, bool):
        # RFC 3581 §4 (UDP): back to the source port. A new TCP connection to a
        # client's ephemeral source port would reach nothing, so a reliable
        # transport falls through to received + sent-by port (RFC 3261 §18.2.2).
        return strip_brackets(received), top.rport
    maddr = top.param("maddr")
    if maddr and not reliable and _is_ip(maddr):
        return strip_brackets(maddr), port
    if received and _is_ip(received):
        return strip_brackets(received), port
    if _is_ip(top.host):
        return strip_brackets(top.host), port
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(strip_brackets(host))
    except ValueError:
        return False
    return True
