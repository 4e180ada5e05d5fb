"""Header fields: the ordered :class:`Headers` container and typed header values.

``Headers`` keeps every header line exactly as received (name spelling and value
text; folding already unfolded to one SP), so headers the gateway does not
interpret are forwarded unchanged. Lookups are case-insensitive and know the
RFC 3261 §7.3.3 compact forms. Typed values (:class:`Via`, :class:`NameAddr`,
:class:`CSeq`, :class:`Reason`, :class:`RetryAfter`) are immutable and parsed on
demand by ``message.py``.

Every scanner here walks its input once (no regex with choice points), so parsing
time stays linear in the input size. This module must never raise anything but
:class:`~gateway.sip.errors.ParseError` for bad wire text, and never does I/O.
Authorization header values are *not* parsed here (``digest.py`` does that).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from .errors import ParseError
from .grammar import DISPLAY_WORD_RE, TOKEN_RE, is_digits
from .uri import URI, Params, format_params, remember, split_host_port

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "Headers",
    "NameAddr",
    "Reason",
    "RetryAfter",
    "Via",
    "canonical_name",
    "parse_header_params",
    "quote_string",
    "split_list",
]

# RFC 3261 §7.3.3 compact forms, plus the IANA-registered ones from later RFCs.
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

MAX_DELTA_SECONDS: Final = 2**32 - 1
"""RFC 3261 §25.1 delta-seconds are bounded by 2**32-1 (RFC 4475 §3.1.2.4)."""


_CANONICAL: Final[dict[str, str]] = {}
_CANONICAL_MAX: Final = 4096  # bounded: unique names from hostile peers must not grow memory


def canonical_name(name: str) -> str:
    """Lower-case long form of a header name (``"v"`` and ``"VIA"`` both give ``"via"``)."""
    hit = _CANONICAL.get(name)
    if hit is None:
        lname = name.lower()
        hit = COMPACT_FORMS.get(lname, lname)
        if len(_CANONICAL) < _CANONICAL_MAX:
            _CANONICAL[name] = hit
    return hit


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings and ``<...>``; one linear pass.

    Why: RFC 3261 §7.3.1 lets several values share a header line separated by
    commas, but a comma (or semicolon) inside a quoted display name or inside an
    angle-bracketed URI is not a separator.
    """
    if '"' not in value and "<" not in value:
        return value.split(sep)
    out: list[str] = []
    start = 0
    i = 0
    n = len(value)
    in_quote = False
    in_angle = False
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif in_angle:
            if c == ">":
                in_angle = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == sep:
            out.append(value[start:i])
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError("unterminated quoted string")
    if in_angle:
        raise ParseError("unterminated <")
    out.append(value[start:])
    return out


def split_list(value: str, *, strict: bool = False) -> list[str]:
    """Comma-split a list header value (quote/<>-aware), stripping whitespace.

    Empty elements are dropped, or raise :class:`ParseError` when ``strict``
    (RFC 4475 §3.1.2.1: an extra comma in Via is malformed).
    """
    items = [p.strip(" \t") for p in _split(value, ",")]
    if strict:
        if any(not p for p in items):
            raise ParseError("empty element in list header")
        return items
    return [p for p in items if p]


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string starting at ``text[start] == '"'``.

    Returns the unescaped content and the index just past the closing quote.
    """
    parts: list[str] = []
    i = start + 1
    n = len(text)
    seg = i
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            parts.append(text[seg:i])
            parts.append(text[i + 1])
            i += 2
            seg = i
            continue
        if c == '"':
            parts.append(text[seg:i])
            return "".join(parts), i + 1
        i += 1
    raise ParseError("unterminated quoted string")


def quote_string(text: str) -> str:
    """Quote ``text`` as a quoted-string, escaping ``\\`` and ``"`` (RFC 3261 §25.1 quoted-pair)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_param_value(value: str) -> None:
    if value.startswith('"'):
        _, end = read_quoted(value, 0)
        if end != len(value):
            raise ParseError("junk after quoted parameter value")
    elif not value or any(c in value for c in ' \t"<>,'):
        raise ParseError("bad parameter value")


def parse_header_params(text: str) -> Params:
    """Parse ``name[=value]`` pieces separated by ``;`` (text after the first ``;``).

    Values stay as written (a quoted value keeps its quotes) so serialization
    round-trips; ``SWS "=" SWS`` spacing is removed.
    """
    return _param_pieces(_split(text, ";"))


# Parameter names seen on every message (each a valid token): checked by set
# membership before the regex.
_PARAM_NAMES: Final = frozenset(
    {
        "branch", "rport", "received", "tag", "lr", "transport", "user", "expires", "maddr",
        "ttl", "q", "method", "cause", "text", "duration", "ob", "reg-id", "+sip.instance",
    }
)  # fmt: skip


def _param_pieces(pieces: list[str]) -> Params:
    """:func:`parse_header_params` of text already split at its top-level ``;``."""
    out: list[tuple[str, str | None]] = []
    for piece in pieces:
        name, sep, value = piece.partition("=")
        name = name.strip(" \t")
        if name not in _PARAM_NAMES and TOKEN_RE.fullmatch(name) is None:
            raise ParseError("bad header parameter name")
        if sep:
            value = value.strip(" \t")
            _check_param_value(value)
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def _param(params: Params, name: str) -> str | None:
    lname = name.lower()
    for n, v in params:
        if n.lower() == lname:
            return "" if v is None else v
    return None


def parse_delta_seconds(text: str, what: str) -> int:
    """``delta-seconds = 1*DIGIT`` bounded by 2**32-1 (RFC 4475 §3.1.2.4)."""
    text = text.strip(" \t")
    if not is_digits(text) or len(text) > 10:
        raise ParseError(f"bad {what}")
    value = int(text)
    if value > MAX_DELTA_SECONDS:
        raise ParseError(f"{what} too large")
    return value


# Parsed typed values by their text (immutable, bounded: see uri.remember).
_VIA_MEMO: Final[dict[str, Via]] = {}
_NAME_ADDR_MEMO: Final[dict[str, NameAddr]] = {}
_CSEQ_MEMO: Final[dict[str, CSeq]] = {}

_VALID_NAMES: Final[set[str]] = set()
"""Header names already checked against the token grammar (bounded by _VALID_NAMES_MAX)."""
_VALID_NAMES_MAX: Final = 4096


_NO_POSITIONS: Final[list[int]] = []  # shared empty result of Headers._positions: never mutated


class Headers:
    """Ordered, case-insensitive header list that keeps names and values verbatim.

    Compact forms are understood for lookup: ``get("Via")`` finds a ``v:`` line.
    ``version`` increases on every mutation so messages can drop cached typed values.
    """

    __slots__ = ("_index", "_items", "_keys", "version")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._keys: list[str] = []
        self._index: dict[str, list[int]] | None = None
        self.version = 0
        for name, value in items:
            self._check(name, value)
            self._items.append((name, value))
            self._keys.append(canonical_name(name))

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]], keys: list[str]) -> Headers:
        """Build from parser output without re-validating (parser already did)."""
        h = cls()
        h._items = items
        h._keys = keys
        h._index = None
        h.version = 0
        return h

    def _positions(self, name: str) -> list[int]:
        """Indices of the lines with that name (index built once, dropped on mutation)."""
        index = self._index
        if index is None:
            index = {}
            for i, k in enumerate(self._keys):
                at = index.get(k)
                if at is None:
                    index[k] = [i]
                else:
                    at.append(i)
            self._index = index
        # Callers mostly pass the canonical name already ("via", "cseq"): one
        # lookup; other spellings ("Via", "v") are canonicalized on a miss.
        at = index.get(name)
        if at is None:
            at = index.get(canonical_name(name), _NO_POSITIONS)
        return at

    @staticmethod
    def _check(name: str, value: str) -> None:
        # A CR or LF in a value would let a caller inject header lines.
        if name not in _VALID_NAMES:
            if TOKEN_RE.fullmatch(name) is None:
                raise ParseError(f"bad header name {name!r}")
            # Names are few (the same dozen on every message): remember the good
            # ones so the regex runs once per name, not once per header line.
            if len(_VALID_NAMES) < _VALID_NAMES_MAX:
                _VALID_NAMES.add(name)
        if "\r" in value or "\n" in value:
            raise ParseError("CR/LF in header value")

    def get(self, name: str) -> str | None:
        """Raw value of the first line with that name, or None."""
        pos = self._positions(name)
        return self._items[pos[0]][1] if pos else None

    def get_all(self, name: str) -> list[str]:
        """Raw values of every line with that name, in order."""
        items = self._items
        return [items[i][1] for i in self._positions(name)]

    def values(self, name: str) -> list[str]:
        """Comma-split values across every line with that name (quote/<>-aware)."""
        out: list[str] = []
        for raw in self.get_all(name):
            out.extend(split_list(raw))
        return out

    def count(self, name: str) -> int:
        """Number of header lines with that name."""
        return len(self._positions(name))

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        self._check(name, value)
        self._items.append((name, value))
        self._keys.append(canonical_name(name))
        self.version += 1
        self._index = None

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first line with that name, or at the top if there is none."""
        self._check(name, value)
        key = canonical_name(name)
        try:
            idx = self._keys.index(key)
        except ValueError:
            idx = 0
        self._items.insert(idx, (name, value))
        self._keys.insert(idx, key)
        self.version += 1
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every line with that name by one line at the first one's position."""
        self._check(name, value)
        key = canonical_name(name)
        try:
            idx = self._keys.index(key)
        except ValueError:
            self.add(name, value)
            return
        self._remove_key(key)
        self._items.insert(idx, (name, value))
        self._keys.insert(idx, key)
        self.version += 1
        self._index = None

    def remove(self, name: str) -> None:
        """Remove every line with that name (no error if there is none)."""
        self._remove_key(canonical_name(name))
        self.version += 1
        self._index = None

    def _remove_key(self, key: str) -> None:
        keep = [i for i, k in enumerate(self._keys) if k != key]
        if len(keep) != len(self._keys):
            self._items = [self._items[i] for i in keep]
            self._keys = [self._keys[i] for i in keep]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name) in self._keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers._trusted(list(self._items), list(self._keys))

    def items(self) -> list[tuple[str, str]]:
        """A list copy of the (name, value) pairs."""
        return list(self._items)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (RFC 3261 §20.42). ``rport`` is True for a bare ``;rport`` flag.

    ``branch``/``received``/``rport`` mirror the params; pass either and the
    other is filled in.
    """

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    branch: str | None = None
    received: str | None = None
    rport: int | bool | None = None
    protocol: str = "SIP/2.0"

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params = (),
        branch: str | None = None,
        received: str | None = None,
        rport: int | bool | None = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        # Written out (not generated by @dataclass) so that mypyc compiles it: the
        # parser builds a Via for every new branch. object.__setattr__ because the
        # dataclass is frozen (mypyc turns these into plain slot stores).
        if branch is not None or received is not None or (rport is not None and rport is not False):
            params = _add_via_fields(params, branch, received, rport)
        else:
            params = tuple(params)  # a caller's list becomes a tuple (the same tuple is kept)
        found_branch, found_received, found_rport = _via_fields(params)
        object.__setattr__(self, "transport", transport.upper())
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "branch", found_branch)
        object.__setattr__(self, "received", found_received)
        object.__setattr__(self, "rport", found_rport)
        object.__setattr__(self, "protocol", protocol)

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm: ``SIP / 2.0 / UDP host[:port] *(;param)`` (memoized by text)."""
        if cls is not Via:  # a subclass builds its own type: not from the memo
            return cls._parse(text)
        # The memo lookup written out (not uri.memoized): no bound method per call.
        hit = _VIA_MEMO.get(text)
        if hit is not None:
            return hit
        value = cls._parse(text)
        remember(_VIA_MEMO, text, value)
        return value

    @classmethod
    def _parse(cls, text: str) -> Via:
        pieces = _split(text, ";")
        # The sent-protocol and sent-by of a peer repeat in every Via it sends; only
        # the params (a new branch per transaction) differ: parse the front once.
        first = pieces[0]
        front = _VIA_FRONT_MEMO.get(first)
        if front is None:
            front = _via_front(first)
            remember(_VIA_FRONT_MEMO, first, front)
        transport, host, port, protocol = front
        # Re-joining and re-splitting pieces[1:] gives the same pieces: no join here.
        params = _param_pieces(pieces[1:]) if len(pieces) > 1 else ()
        # Only the params give branch/received/rport here: the constructor reads them.
        return cls(transport, host, port, params, protocol=protocol)

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hp}{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        """Case-insensitive param lookup (``""`` for a flag)."""
        return _param(self.params, name)


_VIA_FRONT_MEMO: Final[dict[str, tuple[str, str, int | None, str]]] = {}
"""``_via_front`` by text (bounded like the parse memos)."""


def _via_front(first: str) -> tuple[str, str, int | None, str]:
    """(transport, host, port, protocol) of ``SIP / 2.0 / UDP host[:port]`` (no params)."""
    # sent-protocol = protocol-name SLASH protocol-version SLASH transport,
    # SLASH = SWS "/" SWS (RFC 3261 §20.42, §25.1): whitespace around "/" is legal.
    i1 = first.find("/")
    i2 = first.find("/", i1 + 1) if i1 >= 0 else -1
    if i2 < 0:
        raise ParseError("bad Via sent-protocol")
    name = first[:i1].strip(" \t")
    version = first[i1 + 1 : i2].strip(" \t")
    rest = first[i2 + 1 :].lstrip(" \t").split(None, 1)
    if len(rest) != 2:
        raise ParseError("Via without sent-by")
    transport, sent_by = rest
    if (
        TOKEN_RE.fullmatch(name) is None
        or TOKEN_RE.fullmatch(version) is None
        or TOKEN_RE.fullmatch(transport) is None
    ):
        raise ParseError("bad Via sent-protocol")
    # sent-by = host [ COLON port ], COLON = SWS ":" SWS
    # whitespace is legal only around the colon (COLON = SWS ":" SWS), so
    # "host junk" is malformed but "host : 5060" is fine.
    sent_by = sent_by.strip(" \t")
    if " " in sent_by or "\t" in sent_by:
        left, colon, right = sent_by.rpartition(":")
        left, right = left.strip(" \t"), right.strip(" \t")
        if not colon or len(left.split()) != 1 or len(right.split()) != 1:
            raise ParseError("whitespace in Via sent-by")
        sent_by = f"{left}:{right}"
    host, port = split_host_port(sent_by)
    return transport, host, port, f"{name}/{version}"


def _add_via_fields(
    params: Params, branch: str | None, received: str | None, rport: object
) -> Params:
    """``params`` plus ``branch``/``received``/``rport`` for each not already among them.

    ``rport`` is typed ``object``: as ``int | bool`` (which mypy reads as ``int``)
    mypyc would unbox a narrowed ``True`` to the integer 1 and write ``rport=1``.
    """
    out = list(params)
    names = {n.lower() for n, _ in out}
    if branch is not None and "branch" not in names:
        out.append(("branch", branch))
    if received is not None and "received" not in names:
        out.append(("received", received))
    if rport is not None and rport is not False and "rport" not in names:
        out.append(("rport", None if rport is True else str(rport)))
    return tuple(out)


def _via_fields(params: Params) -> tuple[str | None, str | None, int | bool | None]:
    """branch, received and rport (True for a bare flag) from Via params, first wins."""
    branch: str | None = None
    received: str | None = None
    rport: int | bool | None = None
    seen_rport = False
    for n, v in params:
        ln = n.lower()
        if ln == "branch":
            if branch is None:
                branch = "" if v is None else v
        elif ln == "received":
            if received is None:
                received = "" if v is None else v
        elif ln == "rport" and not seen_rport:
            seen_rport = True
            if v is None:
                rport = True
            elif not is_digits(v) or len(v) > 5 or int(v) > 65535:
                raise ParseError("bad rport")
            else:
                rport = int(v)
    return branch, received, rport


def _is_display_tokens(text: str) -> bool:
    return all(DISPLAY_WORD_RE.fullmatch(w) is not None for w in text.split())


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A name-addr / addr-spec with header params: From, To, Contact, Route, Record-Route..."""

    display_name: str | None
    uri: URI
    params: Params = ()

    def __init__(self, display_name: str | None, uri: URI, params: Params = ()) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "display_name", display_name)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "params", params)

    @property
    def tag(self) -> str | None:
        """The ``tag`` header param, or None."""
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        """Case-insensitive header param lookup (``""`` for a flag)."""
        return _param(self.params, name)

    @property
    def expires(self) -> int | None:
        """The ``expires`` contact param as an int (None if absent)."""
        raw = _param(self.params, "expires")
        return None if raw is None else parse_delta_seconds(raw, "contact expires")

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse ``["display"] <uri> *(;param)`` or ``addr-spec *(;param)`` (memoized by text)."""
        if cls is not NameAddr:  # a subclass builds its own type: not from the memo
            return cls._parse(text)
        # The memo lookup written out (not uri.memoized): no bound method per call.
        hit = _NAME_ADDR_MEMO.get(text)
        if hit is not None:
            return hit
        value = cls._parse(text)
        remember(_NAME_ADDR_MEMO, text, value)
        return value

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        s = text.strip(" \t")
        if not s:
            raise ParseError("empty name-addr")
        display: str | None = None
        if s[0] == '"':
            display, i = read_quoted(s, 0)
            rest = s[i:].lstrip(" \t")
            if not rest.startswith("<"):
                raise ParseError("quoted display name without <uri>")
            return cls._angle(display, rest)
        lt = s.find("<")
        if lt >= 0:
            prefix = s[:lt].strip(" \t")
            # RFC 4475 §3.1.1.6: "caller<sip:...>" (no LWS before "<") is accepted.
            if not prefix or _is_display_tokens(prefix):
                return cls._angle(prefix or None, s[lt:])
            if ";" not in prefix:
                raise ParseError("bad display name")
        # addr-spec form: RFC 3261 §20.10, without <> every ";" param is a header param,
        # and a URI with "?headers" or "," must be enclosed in <> (RFC 4475 §3.1.2.13).
        uri_text, sep, ptext = s.partition(";")
        if "?" in uri_text or "," in uri_text:
            raise ParseError("URI with headers must be in <>")
        uri = URI.parse(uri_text.rstrip(" \t"))
        params = parse_header_params(ptext) if sep else ()
        return cls(None, uri, params)

    @classmethod
    def _angle(cls, display: str | None, rest: str) -> NameAddr:
        end = rest.find(">")
        if end < 0:
            raise ParseError("unterminated <uri>")
        uri = URI.parse(rest[1:end])
        tail = rest[end + 1 :].strip(" \t")
        params: Params = ()
        if tail:
            if tail[0] != ";":
                raise ParseError("junk after <uri>")
            params = parse_header_params(tail[1:])
        return cls(display, uri, params)

    def __str__(self) -> str:
        dn = "" if self.display_name is None else quote_string(self.display_name) + " "
        return f"{dn}<{self.uri}>{format_params(self.params)}"

    def with_tag(self, tag: str) -> NameAddr:
        """A copy whose ``tag`` param is ``tag`` (replacing any existing one)."""
        kept = tuple((n, v) for n, v in self.params if n.lower() != "tag")
        return NameAddr(self.display_name, self.uri, (*kept, ("tag", tag)))


MAX_CSEQ: Final = 2**31 - 1
"""RFC 3261 §8.1.1.5: the CSeq sequence number MUST be less than 2**31."""


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq (RFC 3261 §20.16): sequence number and method."""

    seq: int
    method: str

    def __init__(self, seq: int, method: str) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "method", method)

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; the number must be < 2**31 (memoized by text)."""
        if cls is not CSeq:  # a subclass builds its own type: not from the memo
            return cls._parse(text)
        # The memo lookup written out (not uri.memoized): no bound method per call.
        hit = _CSEQ_MEMO.get(text)
        if hit is not None:
            return hit
        value = cls._parse(text)
        remember(_CSEQ_MEMO, text, value)
        return value

    @classmethod
    def _parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2:
            raise ParseError("bad CSeq")
        num, method = parts
        if not is_digits(num) or TOKEN_RE.fullmatch(method) is None:
            raise ParseError("bad CSeq")
        # Why the length check first: never int() an unbounded digit string.
        if len(num.lstrip("0")) > 10 or int(num) > MAX_CSEQ:
            raise ParseError("CSeq sequence number too large (RFC 3261 §8.1.1.5)")
        return cls(int(num), method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


@dataclass(frozen=True, slots=True)
class Reason:
    """Reason header (RFC 3326): ``SIP ;cause=200 ;text="..."``."""

    protocol: str
    cause: int | None = None
    text: str | None = None

    @classmethod
    def parse(cls, value: str) -> Reason:
        """Parse the first reason-value of a Reason header."""
        first = split_list(value)
        if not first:
            raise ParseError("empty Reason")
        pieces = _split(first[0], ";")
        protocol = pieces[0].strip(" \t")
        if TOKEN_RE.fullmatch(protocol) is None:
            raise ParseError("bad Reason protocol")
        params = parse_header_params(";".join(pieces[1:])) if len(pieces) > 1 else ()
        cause: int | None = None
        raw_cause = _param(params, "cause")
        if raw_cause is not None:
            if not is_digits(raw_cause) or len(raw_cause) > 9:
                raise ParseError("bad Reason cause")
            cause = int(raw_cause)
        text: str | None = _param(params, "text")
        if text is not None and text.startswith('"'):
            text = read_quoted(text, 0)[0]
        return cls(protocol, cause, text)

    def __str__(self) -> str:
        out = self.protocol
        if self.cause is not None:
            out += f";cause={self.cause}"
        if self.text is not None:
            out += ";text=" + quote_string(self.text)
        return out


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Retry-After (RFC 3261 §20.33): ``delta-seconds [comment] *(;retry-param)``."""

    seconds: int
    comment: str | None = None
    duration: int | None = None

    @classmethod
    def parse(cls, value: str) -> RetryAfter:
        """Parse a Retry-After value; values above 2**32-1 are malformed."""
        s = value.strip(" \t")
        i = 0
        while i < len(s) and s[i].isdigit():
            i += 1
        seconds = parse_delta_seconds(s[:i], "Retry-After")
        rest = s[i:].lstrip(" \t")
        comment: str | None = None
        if rest.startswith("("):
            depth = 0
            j = 0
            while j < len(rest):
                c = rest[j]
                if c == "\\":
                    j += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth != 0 or j >= len(rest):
                raise ParseError("unterminated Retry-After comment")
            comment = rest[1:j]
            rest = rest[j + 1 :].lstrip(" \t")
        duration: int | None = None
        if rest:
            if rest[0] != ";":
                raise ParseError("junk in Retry-After")
            params = parse_header_params(rest[1:])
            raw = _param(params, "duration")
            if raw is not None:
                duration = parse_delta_seconds(raw, "Retry-After duration")
        return cls(seconds, comment, duration)

    def __str__(self) -> str:
        out = str(self.seconds)
        if self.comment is not None:
            out += f" ({self.comment})"
        if self.duration is not None:
            out += f";duration={self.duration}"
        return out
