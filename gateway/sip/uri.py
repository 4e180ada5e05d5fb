"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), and any other absoluteURI kept opaque.

A :class:`URI` is an immutable value: parse it from text, read its parts, build
a new one with :func:`dataclasses.replace`. User and password stay %-escaped
exactly as on the wire (RFC 4475 §3.1.1.3: never unescape recursively).

This module must never raise anything but :class:`~gateway.sip.errors.ParseError`
from :meth:`URI.parse`, and never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Final, TypeVar

from .errors import ParseError
from .grammar import HEX, HOSTNAME_RE, IPV6_RE, PORT_RE, SCHEME_RE, URI_UNSAFE_RE

__all__ = ["URI", "format_params", "memoized", "remember", "split_host_port", "unescape"]

Params = tuple[tuple[str, str | None], ...]

_V = TypeVar("_V")

MEMO_MAX = 8192
"""Entries kept per parse memo (URI here, Via/NameAddr/CSeq in ``headers``)."""


def remember(memo: dict[str, _V], text: str, value: _V) -> None:
    """Keep ``text → value`` in a bounded parse memo (oldest half dropped when full).

    Why: one call carries the same From, To, Contact, Request-URI and Via
    texts in up to ten messages; the parsed values are immutable, so each text
    is parsed once instead of once per message. Bounded: unique texts from a
    hostile peer only ever cost ``MEMO_MAX`` entries.
    """
    if len(memo) >= MEMO_MAX:
        for old in list(islice(memo, MEMO_MAX // 2)):
            memo.pop(old, None)  # tolerant of a concurrent eviction (another thread)
    memo[text] = value


def memoized(memo: dict[str, _V], text: str, parse: Callable[[str], _V]) -> _V:
    """``parse(text)``, or the value a previous call kept for the same text."""
    hit = memo.get(text)
    if hit is not None:
        return hit
    value = parse(text)
    remember(memo, text, value)
    return value


_URI_MEMO: Final[dict[str, URI]] = {}


def _check_escapes(text: str, what: str) -> None:
    """Reject a ``%`` that is not followed by two hex digits (RFC 3261 ``escaped``)."""
    n = len(text)
    i = text.find("%")
    while i >= 0:
        if i + 2 >= n or text[i + 1] not in HEX or text[i + 2] not in HEX:
            raise ParseError(f"bad %-escape in URI {what}")
        i = text.find("%", i + 3)


def unescape(text: str) -> str:
    """Undo one level of %-escaping (RFC 3261 §19.1.4 compares URIs this way).

    Escaped octets are decoded as UTF-8 with ``surrogateescape``, so any octet
    (even %00 or invalid UTF-8) maps to a distinct character and nothing is lost.
    Applied once only: ``%2541`` becomes ``%41``, never ``A`` (RFC 4475 §3.1.1.3).
    """
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in HEX and text[i + 2] in HEX:
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (host may be an IPv6 reference in brackets); validate both."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if IPV6_RE.fullmatch(host) is None or host.count(":") < 2:
            raise ParseError("bad IPv6 reference")
        if rest and not rest.startswith(":"):
            raise ParseError("junk after IPv6 reference")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if not host or HOSTNAME_RE.fullmatch(host) is None:
            raise ParseError("bad host")
    port: int | None = None
    if port_text is not None:
        if PORT_RE.fullmatch(port_text) is None:
            raise ParseError("bad port")
        port = int(port_text)
        if port > 65535:
            raise ParseError("port out of range")
    return host, port


def _parse_params(text: str) -> Params:
    """Parse ``;name[=value]`` pieces (text without the leading ``;``)."""
    out: list[tuple[str, str | None]] = []
    for piece in text.split(";"):
        name, sep, value = piece.partition("=")
        if not name:
            raise ParseError("empty URI parameter name")
        _check_escapes(name, "parameter")
        if sep:
            _check_escapes(value, "parameter")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def format_params(params: Params) -> str:
    """Serialize parameters as ``;name=value;flag``."""
    if not params:
        return ""
    out: list[str] = []
    append = out.append
    for n, v in params:
        if v is None:
            append(";" + n)
        else:
            append(f";{n}={v}")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class URI:
    """A parsed URI. ``host`` keeps IPv6 brackets; ``opaque`` holds tel numbers and foreign URIs."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None

    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Params = (),
        headers: tuple[tuple[str, str], ...] = (),
        opaque: str | None = None,
    ) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "opaque", opaque)

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse URI text; raise :class:`ParseError` on anything malformed.

        Parsed values are immutable and memoized by text (:func:`remember`).
        """
        if cls is not URI:  # a subclass builds its own type: not from the memo
            return cls._parse(text)
        hit = _URI_MEMO.get(text)
        if hit is not None:
            return hit
        value = cls._parse(text)
        remember(_URI_MEMO, text, value)
        return value

    @classmethod
    def _parse(cls, text: str) -> URI:
        if URI_UNSAFE_RE.search(text) is not None:
            raise ParseError("whitespace, control or delimiter character in URI")
        scheme, sep, rest = text.partition(":")
        if not sep or SCHEME_RE.fullmatch(scheme) is None:
            raise ParseError("URI without a valid scheme")
        scheme = scheme.lower()
        if scheme in ("sip", "sips"):
            return cls._parse_sip(scheme, rest)
        if not rest:
            raise ParseError("empty URI after scheme")
        if scheme == "tel":
            number, sep, ptext = rest.partition(";")
            if not number:
                raise ParseError("empty tel number")
            return cls(scheme=scheme, opaque=number, params=_parse_params(ptext) if sep else ())
        return cls(scheme=scheme, opaque=rest)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> URI:
        # Why rfind: "@" cannot appear unescaped in params, headers or the password
        # (RFC 3261 §25.1 paramchar/hvalue/password), but ";" and "?" can appear in
        # the user part (user-unreserved), e.g. RFC 4475 §3.1.1.9 "sip:user;par=u%40ex.net@ex.com".
        at = rest.rfind("@")
        user: str | None = None
        password: str | None = None
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, sep, pw = userinfo.partition(":")
            if sep:
                password = pw
                _check_escapes(pw, "password")
            if not user:
                raise ParseError("empty user part")
            if "@" in userinfo:
                raise ParseError("unescaped @ in URI userinfo")
            _check_escapes(user, "user")
        rest, qsep, htext = rest.partition("?")
        hostport, psep, ptext = rest.partition(";")
        host, port = split_host_port(hostport)
        params = _parse_params(ptext) if psep else ()
        headers: tuple[tuple[str, str], ...] = ()
        if qsep:
            hs: list[tuple[str, str]] = []
            for piece in htext.split("&"):
                hname, hsep, hval = piece.partition("=")
                if not hname or not hsep:
                    raise ParseError("bad URI header")
                _check_escapes(hname, "header")
                _check_escapes(hval, "header")
                hs.append((hname, hval))
            headers = tuple(hs)
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=params,
            headers=headers,
        )

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            if self.scheme == "tel":
                return f"tel:{self.opaque}{format_params(self.params)}"
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host_port)
        parts.append(format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(parts)

    @property
    def host_port(self) -> str:
        """``host`` or ``host:port``."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def param(self, name: str) -> str | None:
        """Parameter lookup: the value as written, ``""`` for a flag, ``None`` if absent.

        Names compare case-insensitively after unescaping (RFC 3261 §19.1.4), so
        ``;n%61me=x`` is found as ``name``.
        """
        lname = name.lower()
        for n, v in self.params:
            if n.lower() == lname or ("%" in n and unescape(n).lower() == lname):
                return "" if v is None else v
        return None

    def with_params(self, **params: str | None) -> URI:
        """A copy with the given parameters set (replacing same-named ones, case-insensitively)."""
        lower = {k.lower() for k in params}
        kept = tuple((n, v) for n, v in self.params if n.lower() not in lower)
        return URI(
            scheme=self.scheme,
            user=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            params=kept + tuple(params.items()),
            headers=self.headers,
            opaque=self.opaque,
        )

    @property
    def is_sip(self) -> bool:
        """True for sip: and sips: URIs."""
        return self.scheme in ("sip", "sips")
