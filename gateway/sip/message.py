"""SIP requests and responses: framing, parsing, typed access, serialization.

:func:`parse` does only the eager minimum (RFC 3261 §7, §18.3): find the empty
line, split the start line, split and unfold header lines, read Content-Length
and cut the body. Every typed view (``via``, ``from_``, ``cseq`` ...) is parsed
on first access, cached, and dropped when the headers change. ``bytes(msg)`` of
an unmodified parsed message returns the original octets.

This module must never let anything but a :class:`~gateway.sip.errors.SIPError`
escape from parsing or typed access (no IndexError/ValueError/UnicodeDecodeError),
never reads a clock and never does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

from .errors import REASON_PHRASES, MessageTooLarge, ParseError, SIPError
from .grammar import CALLID_RE, METHOD_RE, VERSION_RE, is_digits
from .headers import (
    CSeq,
    Headers,
    NameAddr,
    Reason,
    RetryAfter,
    Via,
    canonical_name,
    parse_delta_seconds,
    split_list,
)
from .uri import URI

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "error_response",
    "make_response",
    "parse",
]

MAX_MESSAGE_SIZE: Final = 65536
"""Largest message :func:`parse` accepts (64 KiB, the largest UDP payload)."""


_MISSING: Final[Any] = object()


class Message:
    """What requests and responses share: headers, body and the lazy typed views."""

    __slots__ = (
        "_body",
        "_cache",
        "_cache_headers",
        "_cache_version",
        "_raw",
        "_raw_key",
        "headers",
    )

    headers: Headers

    def __init__(self, headers: Headers | Iterable[tuple[str, str]], body: bytes) -> None:
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._body = body
        self._cache: dict[str, Any] = {}
        self._cache_headers: Headers | None = None
        self._cache_version = -1
        self._raw: bytes | None = None
        self._raw_key: tuple[Any, ...] | None = None

    @property
    def body(self) -> bytes:
        """The raw body octets."""
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        # Keep an existing Content-Length in step (name spelling kept), so that a
        # message equals its own re-parsed serialization.
        self._body = value
        for name, old in self.headers:
            if canonical_name(name) == "content-length":
                if old != str(len(value)):
                    self.headers.set(name, str(len(value)))
                break

    # -- lazy typed access -------------------------------------------------
    # Each view is computed once by _compute (on the first access after the
    # headers changed) and kept in _cache under its key. No closure per access:
    # the properties run on every message, compiled or not.
    def _typed(self, key: str) -> Any:
        h = self.headers
        if self._cache_headers is not h or self._cache_version != h.version:
            self._cache = {}
            self._cache_headers = h
            self._cache_version = h.version
        cache = self._cache
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = self._compute(key)
            cache[key] = value
        return value

    def _compute(self, key: str) -> Any:
        """Parse the view ``key``; translate any stray exception into ParseError."""
        try:
            if key == "via":
                return self._parse_via()
            if key == "from":
                return NameAddr.parse(self._single("from"))
            if key == "to":
                return NameAddr.parse(self._single("to"))
            if key == "call-id":
                return self._parse_call_id()
            if key == "cseq":
                return CSeq.parse(self._single("cseq"))
            if key == "max-forwards":
                return self._parse_max_forwards()
            if key == "contact":
                return self._parse_contact()
            if key == "contact-star":
                return self._star()
            if key == "route" or key == "record-route":
                return self._name_addrs(key)
            if key == "content-length":
                raw = self._optional_single("content-length")
                return None if raw is None else _content_length(raw)
            if key == "content-type":
                return self._optional_single("content-type")
            if key == "expires":
                raw = self._optional_single("expires")
                return None if raw is None else parse_delta_seconds(raw, "Expires")
            if key == "reason":
                raw = self.headers.get("reason")
                return None if raw is None else Reason.parse(raw)
            if key == "retry-after":
                raw = self._optional_single("retry-after")
                return None if raw is None else RetryAfter.parse(raw)
            raise KeyError(key)
        except SIPError:
            raise
        except Exception as exc:  # the contract: nothing but SIPError ever escapes
            # Only the type: the message text could quote header content (a callee number).
            raise ParseError(f"malformed header ({type(exc).__name__})") from exc

    def _single(self, name: str) -> str:
        h = self.headers
        pos = h._positions(name)
        if len(pos) != 1:
            raise ParseError(f"missing {name} header" if not pos else f"multiple {name} headers")
        return h._items[pos[0]][1]

    def _optional_single(self, name: str) -> str | None:
        h = self.headers
        pos = h._positions(name)
        if len(pos) > 1:
            raise ParseError(f"multiple {name} headers")
        return h._items[pos[0]][1] if pos else None

    def _name_addrs(self, name: str) -> list[NameAddr]:
        out: list[NameAddr] = []
        for raw in self.headers.get_all(name):
            for v in split_list(raw, strict=True):
                out.append(NameAddr.parse(v))
        return out

    def _parse_via(self) -> list[Via]:
        out: list[Via] = []
        for raw in self.headers.get_all("via"):
            for v in split_list(raw, strict=True):
                out.append(Via.parse(v))
        return out

    def _parse_call_id(self) -> str:
        value = self._single("call-id")
        if CALLID_RE.fullmatch(value) is None:
            raise ParseError("bad Call-ID")
        return value

    def _parse_max_forwards(self) -> int | None:
        raw = self._optional_single("max-forwards")
        if raw is None:
            return None
        raw = raw.strip(" \t")  # values set by callers may carry spaces
        if not is_digits(raw) or len(raw) > 10 or int(raw) > 255:
            raise ParseError("bad Max-Forwards")
        return int(raw)

    def _parse_contact(self) -> list[NameAddr]:
        if self._star():
            return []
        out = self._name_addrs("contact")
        for c in out:
            _ = c.expires  # overlarge expires params are malformed (RFC 4475 §3.1.2.4)
        return out

    def _vias(self) -> list[Via]:
        """The cached Via list itself (not a copy): for this package's read-only use."""
        vias: list[Via] = self._typed("via")
        return vias

    @property
    def via(self) -> list[Via]:
        """All Via values, top first (RFC 3261 §20.42)."""
        return list(self._vias())

    @property
    def from_(self) -> NameAddr:
        """The From header; ParseError if missing, repeated or malformed."""
        value: NameAddr = self._typed("from")
        return value

    @property
    def to(self) -> NameAddr:
        """The To header; ParseError if missing, repeated or malformed."""
        value: NameAddr = self._typed("to")
        return value

    @property
    def call_id(self) -> str:
        """Call-ID (``word ["@" word]``, RFC 3261 §20.8)."""
        value: str = self._typed("call-id")
        return value

    @property
    def cseq(self) -> CSeq:
        """CSeq (number < 2**31 and method)."""
        value: CSeq = self._typed("cseq")
        return value

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards 0-255, or None if absent (RFC 3261 §20.22)."""
        value: int | None = self._typed("max-forwards")
        return value

    @property
    def contact(self) -> list[NameAddr]:
        """Contact values ([] for ``Contact: *``, see :attr:`contact_star`)."""
        value: list[NameAddr] = self._typed("contact")
        return list(value)

    def _star(self) -> bool:
        values = self.headers.get_all("contact")
        stars = [v for v in values if v.strip(" \t") == "*"]
        if stars and len(values) > 1:
            # RFC 3261 §10.2.2: "*" must be the only Contact value.
            raise ParseError("Contact: * combined with other contacts")
        return bool(stars)

    @property
    def contact_star(self) -> bool:
        """True for ``Contact: *`` (RFC 3261 §10.2.2, REGISTER remove-all)."""
        value: bool = self._typed("contact-star")
        return value

    @property
    def route(self) -> list[NameAddr]:
        """Route values, in order."""
        value: list[NameAddr] = self._typed("route")
        return list(value)

    @property
    def record_route(self) -> list[NameAddr]:
        """Record-Route values, in order."""
        value: list[NameAddr] = self._typed("record-route")
        return list(value)

    @property
    def content_length(self) -> int | None:
        """Content-Length header value, or None if absent."""
        value: int | None = self._typed("content-length")
        return value

    @property
    def content_type(self) -> str | None:
        """Content-Type header value as written, or None."""
        value: str | None = self._typed("content-type")
        return value

    @property
    def expires(self) -> int | None:
        """Expires header (delta-seconds, ≤ 2**32-1), or None."""
        value: int | None = self._typed("expires")
        return value

    @property
    def reason_header(self) -> Reason | None:
        """The Reason header (RFC 3326), or None."""
        value: Reason | None = self._typed("reason")
        return value

    @property
    def retry_after(self) -> RetryAfter | None:
        """The Retry-After header, or None."""
        value: RetryAfter | None = self._typed("retry-after")
        return value

    def compact(self) -> None:
        """Drop the parsed views and the header index; the next access parses again.

        For a message kept only for a retransmission timer (RFC 3261 Timers J/K, RFC
        6026 Timers L/M: 32 s on UDP): its header lines, body and serialization stay,
        the many small objects parsing made (URIs, parameters, the index) go, so the
        garbage collector has fewer objects to walk while calls linger in timers.
        """
        self._cache = {}
        self._cache_headers = None
        self._cache_version = -1
        self.headers._index = None

    # -- serialization -----------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def _key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        if self._raw is not None and self._raw_unchanged():
            return self._raw
        body = self.body
        lines = [self._start_line()]
        cl_written = False
        h = self.headers
        for (name, value), key in zip(h._items, h._keys, strict=True):
            if key == "content-length":
                if cl_written:
                    continue
                value = str(len(body))
                cl_written = True
            lines.append(f"{name}: {value}")
        if not cl_written:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def _remember_raw(self, raw: bytes) -> None:
        # The key holds the very objects (not their id()s, which a new object could
        # reuse after the old one is freed) and the headers' mutation counter.
        self._raw = raw
        self._raw_key = (self.headers, self.headers.version, self._body, self._key())

    def _raw_unchanged(self) -> bool:
        key = self._raw_key
        return (
            key is not None
            and key[0] is self.headers
            and key[1] == self.headers.version
            and key[2] is self._body
            and key[3] == self._key()
        )


class Request(Message):
    """A SIP request. ``uri`` may be given as text (parsed, ParseError if bad)."""

    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        if "\r" in method or "\n" in method or " " in method:
            raise ParseError("bad method")  # would break the request line
        self.method = method
        self.uri = uri if isinstance(uri, URI) else URI.parse(uri)
        self.version = version

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def _key(self) -> tuple[Any, ...]:
        return (self.method, self.uri, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self.uri == other.uri
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"

    def copy(self) -> Request:
        """An independent copy (headers copied, body shared: bytes are immutable)."""
        return Request(self.method, self.uri, self.headers.copy(), self.body, self.version)


class Response(Message):
    """A SIP response; ``reason`` defaults to the standard phrase for ``status``."""

    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        if reason is not None and ("\r" in reason or "\n" in reason):
            raise ParseError("CR/LF in reason phrase")  # would inject header lines
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.version = version

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _key(self) -> tuple[Any, ...]:
        return (self.status, self.reason, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status == other.status
            and self.reason == other.reason
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    def copy(self) -> Response:
        """An independent copy."""
        return Response(self.status, self.reason, self.headers.copy(), self.body, self.version)


def _content_length(raw: str) -> int:
    # RFC 4475 §3.1.2.3: never use a negative or non-numeric value as a counter.
    raw = raw.strip(" \t")
    if not is_digits(raw) or len(raw) > 10:
        raise ParseError("bad Content-Length")
    return int(raw)


_NAME_CACHE: Final[dict[str, tuple[str, str]]] = {}
_NAME_CACHE_MAX: Final = 4096  # bounded: unique names from hostile peers must not grow memory


def _header_name(raw: str) -> tuple[str, str]:
    """Validate a header name (``token``, then ``*(SP / HTAB)`` before ":") → (name, key)."""
    hit = _NAME_CACHE.get(raw)
    if hit is not None:
        return hit
    # HCOLON = *( SP / HTAB ) ":" SWS
    name = raw.rstrip(" \t")
    if METHOD_RE.fullmatch(name) is None:
        raise ParseError("bad header name")
    hit = (name, canonical_name(name))
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[raw] = hit
    return hit


def _split_head(head: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Split the header section into start line and unfolded (name, value) pairs."""
    lines = head.split("\r\n")
    # A CR or LF that is not part of a CRLF is not a line break (RFC 3261 §7); reject
    # it rather than forward a header value that a later hop would split differently.
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
        raise ParseError("bare CR or LF in header section")
    items: list[tuple[str, str]] = []
    keys: list[str] = []
    folds: dict[int, list[str]] = {}
    for i in range(1, len(lines)):
        line = lines[i]
        first = line[:1]
        if first == " " or first == "\t":
            # RFC 3261 §7.3.1: a line starting with whitespace continues the previous
            # header; the LWS (and the CRLF) is equivalent to a single SP.
            if not items:
                raise ParseError("continuation line before any header")
            # Collected and joined once after the loop: linear even for 10k folds.
            pieces = folds.get(len(items) - 1)
            if pieces is None:
                folds[len(items) - 1] = pieces = [items[-1][1]]
            pieces.append(line)
            continue
        raw, sep, value = line.partition(":")
        if not sep:
            raise ParseError("header line without colon")
        name, key = _header_name(raw)
        items.append((name, value.strip(" \t")))
        keys.append(key)
    for idx, pieces in folds.items():
        stripped = (p.strip(" \t") for p in pieces)
        items[idx] = (items[idx][0], " ".join(p for p in stripped if p))
    return lines[0], items, keys


def parse(
    data: bytes | bytearray | memoryview, *, stream: bool = False, max_size: int = MAX_MESSAGE_SIZE
) -> Request | Response:
    """Parse one complete message; raise ParseError (or another SIPError) — nothing else.

    Datagram framing (RFC 3261 §18.3): octets after Content-Length are ignored; a
    missing Content-Length means the rest of the datagram. With ``stream=True``
    Content-Length is required.
    """
    try:
        return _parse(data, stream, max_size)
    except SIPError:
        raise
    except Exception as exc:  # the contract: nothing but SIPError ever escapes
        raise ParseError(f"malformed message ({type(exc).__name__})") from exc


def _parse(raw: bytes | bytearray | memoryview, stream: bool, max_size: int) -> Request | Response:
    # Transports hand over bytearray/memoryview; the body must still be bytes.
    data = raw if isinstance(raw, bytes) else bytes(raw)
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} octets exceeds {max_size}")
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    begin = 0
    while data[begin : begin + 2] == b"\r\n":
        begin += 2
    end = data.find(b"\r\n\r\n", begin)
    if end < 0:
        raise ParseError("no empty line after the header section")
    head = data[begin:end].decode("utf-8", "surrogateescape")
    start, items, keys = _split_head(head)
    body_start = end + 4

    # One Content-Length value, however often the header is repeated.
    cl_value: str | None = None
    if "content-length" in keys:
        for i, k in enumerate(keys):
            if k == "content-length":
                value = items[i][1]
                if cl_value is None:
                    cl_value = value
                elif value != cl_value:
                    # RFC 4475 §3.3.9: conflicting values make the framing unknowable.
                    raise ParseError("conflicting Content-Length headers")
    available = len(data) - body_start
    if cl_value is not None:
        length = _content_length(cl_value)
        if length > available:
            raise ParseError("Content-Length larger than the data received")
        body_end = body_start + length
    elif stream:
        raise ParseError("Content-Length is required on stream transports (RFC 3261 §18.3)")
    else:
        body_end = len(data)
    body = data[body_start:body_end]
    headers = Headers._trusted(items, keys)

    msg: Request | Response
    if start[:4].upper() == "SIP/":
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0" and VERSION_RE.fullmatch(version) is None:
            raise ParseError("bad SIP-Version in status line")
        if not _is_status_code(code) or int(code) > 699:
            raise ParseError("bad status code")
        msg = Response(int(code), reason, headers, body, version)
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            # RFC 4475 §3.1.2.8-10: extra SP in the request line is malformed.
            raise ParseError("request line must be Method SP Request-URI SP SIP-Version")
        method, uri_text, version = parts
        if method not in _METHODS and METHOD_RE.fullmatch(method) is None:
            raise ParseError("bad method")
        if version != "SIP/2.0" and VERSION_RE.fullmatch(version) is None:
            raise ParseError("bad SIP-Version in request line")
        msg = Request(method, URI.parse(uri_text), headers, body, version)
    if cl_value is not None:
        msg._remember_raw(data[begin:body_end])
    return msg


# The usual values are checked by set membership first (each is valid by the grammar),
# the regex only for the rest: two regex calls fewer per message.
_METHODS: Final = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
        "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
    }
)  # fmt: skip


def _is_status_code(code: str) -> bool:
    """``STATUS_RE.fullmatch(code) is not None``: ``[1-9][0-9][0-9]``."""
    return len(code) == 3 and code.isascii() and code.isdigit() and code[0] != "0"


def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to ``req`` (RFC 3261 §8.2.6.2).

    Copies every Via (in order), From, To, Call-ID and CSeq verbatim; adds
    ``;tag=to_tag`` to To when given and To has no tag yet.
    """
    # The copied lines come from a Headers (already checked): built directly.
    items: list[tuple[str, str]] = []
    keys: list[str] = []
    h = req.headers
    for item, key in zip(h._items, h._keys, strict=True):
        if key in _RESPONSE_COPY:
            items.append(item)
            keys.append(key)
        elif key == "to":
            name, value = item
            if to_tag is not None and "tag" not in _param_names(value):
                value = f"{value};tag={to_tag}"
                _check_value(value)
            items.append((name, value))
            keys.append(key)
        elif key == "timestamp" and status == 100:
            # RFC 3261 §8.2.6.1: a 100 (Trying) copies the request's Timestamp.
            items.append(item)
            keys.append(key)
    out = Headers._trusted(items, keys)
    for name, value in headers:
        out.add(name, value)
    return Response(status, reason, out, body)


_RESPONSE_COPY: Final = frozenset(("via", "from", "call-id", "cseq"))


def _check_value(value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ParseError("CR/LF in header value")


def _param_names(value: str) -> set[str]:
    try:
        return {n.lower() for n, _ in NameAddr.parse(value).params}
    except SIPError:
        return set()


def error_response(data: bytes | bytearray | memoryview, err: SIPError) -> bytes | None:
    """Best-effort response bytes for a request that failed to parse, or None to drop.

    Finds Via/From/To/Call-ID/CSeq lines however broken the rest is, so a UDP
    peer gets its 400 (RFC 3261 §16.3 / §8.2). Responses and hopeless input give None.
    """
    try:
        return _error_response(data if isinstance(data, bytes) else bytes(data), err)
    except Exception:  # best effort by contract: never raise
        return None


_COPY_KEYS: Final = ("via", "from", "to", "call-id", "cseq")


def _error_response(data: bytes, err: SIPError) -> bytes | None:
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    head = (data if end < 0 else data[:end]).decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    if not lines or lines[0][:4].upper() == "SIP/" or " " not in lines[0]:
        return None
    found: list[tuple[str, str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if found and found[-1][2] == "open":
                key, text, _ = found[-1]
                found[-1] = (key, text.rstrip(" \t") + " " + line.strip(" \t"), "open")
            continue
        if found:
            found[-1] = (found[-1][0], found[-1][1], "closed")
        name, sep, _ = line.partition(":")
        if not sep or "\r" in line or "\n" in line:
            continue
        key = canonical_name(name.strip(" \t"))
        if key in _COPY_KEYS:
            found.append((key, line.strip(" \t"), "open"))
    present = {k for k, _, _ in found}
    if not all(k in present for k in _COPY_KEYS):
        return None
    # Why a deterministic tag: a retransmitted bad request gets the same response,
    # and RFC 3261 §8.2.6.2 requires a To tag on non-100 responses.
    tag = hashlib.sha1(data, usedforsecurity=False).hexdigest()[:12]
    out = [f"SIP/2.0 {err.status_code} {err.reason_phrase}"]
    for key, text, _ in found:
        if key == "to" and ";tag=" not in text.replace(" ", "").lower():
            text = f"{text};tag={tag}"
        out.append(text)
    out.extend(f"{n}: {v}" for n, v in err.extra_headers)
    out.append("Content-Length: 0")
    wire = ("\r\n".join(out) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    # Never send what we could not parse ourselves: the copied lines come from a
    # message that already failed to parse, so check the result before returning it.
    try:
        resp = parse(wire)
        _ = resp.via[0], resp.call_id, resp.cseq
    except (SIPError, IndexError):
        return None
    return wire
