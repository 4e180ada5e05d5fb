"""Digest access authentication for SIP, server and client roles.

Implements RFC 3261 §22 (SIP's use of HTTP digest) with the algorithms of
RFC 7616 (MD5, MD5-sess, SHA-256, SHA-256-sess) as RFC 8760 brings them to SIP,
plus the RFC 2069 "no qop" form for old clients.

What lives here:

* a robust parser for ``WWW-Authenticate`` / ``Proxy-Authenticate`` and
  ``Authorization`` / ``Proxy-Authorization`` header *values*
  (:func:`parse_auth_header`, :meth:`Challenge.parse`, :meth:`Credentials.parse`)
  and their formatting (``str()`` of those types);
* HA1 helpers (:func:`ha1`, :func:`session_ha1`) and the response computation
  (:func:`compute_response`);
* :class:`DigestServer`: stateless HMAC-signed nonces that embed their issue
  time, verification of credentials returning a small :class:`Verdict`, and the
  answer a registrar or proxy should send (:meth:`DigestServer.answer`);
* :class:`DigestClient` and :func:`authorize`: answering a 401/407 challenge.

Server use, in a registrar or proxy (``values`` = every (Proxy-)Authorization
header line of the request)::

    server = DigestServer(key=secret_bytes, realm="dialgate")
    verdict = server.verify(req.method, values, lookup_ha1, now, body=req.body)
    answer = server.answer(verdict, now, proxy=(req.method == "INVITE"))
    # None → authenticated as verdict.username; else answer.status/.reason/.headers

Interop facts this module is built around (see tests/sip/test_digest_sipp.py
and test_digest_sipvicious.py): SIPp 3.6.1 reads only the first challenge and
knows only MD5, and hashes ``uri=sip:<remote ip>:<port>`` rather than the
Request-URI (so the caller's ``uri_matches`` decides whether that form is
accepted); sipvicious answers a challenge without qop with ``qop=auth`` and
no nc/cnonce (→ 400 here).

What this module must never do: read a clock (``now`` is always passed in),
do I/O, log, import other ``gateway.sip`` modules than ``errors`` (it works on
header value strings, not on messages), let any exception other than
:class:`~gateway.sip.errors.AuthError` escape from parsing, or tell a caller
from outside *why* credentials failed (wrong password and unknown user get the
same answer so that user names cannot be enumerated). Secrets (passwords,
HA1 values, the server key) are never put into ``repr`` or error details.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from mypy_extensions import mypyc_attr

from gateway.sip.errors import AuthError

__all__ = [
    "RFC8760_ALGORITHMS",
    "Algorithm",
    "AuthAnswer",
    "AuthHeader",
    "Challenge",
    "Credentials",
    "DigestClient",
    "DigestServer",
    "HA1Lookup",
    "Outcome",
    "UnsupportedAlgorithm",
    "Verdict",
    "authorize",
    "compute_response",
    "ha1",
    "parse_auth_header",
    "session_ha1",
]

# Bounds on the work one header value can cause. Real digest headers are a few
# hundred octets; anything near these limits is an attack or garbage.
MAX_HEADER_LENGTH: Final = 8192
MAX_PARAMS: Final = 64


# --------------------------------------------------------------------------
# Algorithms and hashing
# --------------------------------------------------------------------------


class Algorithm(StrEnum):
    """Digest algorithms (RFC 7616 §3.3; RFC 8760 §2 registers them for SIP)."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"

    @classmethod
    def parse(cls, text: str) -> Algorithm:
        """The algorithm named by ``text`` (case-insensitive); AuthError if unknown."""
        found = _ALGORITHMS_BY_LOWER.get(text.lower())
        if found is None:
            raise UnsupportedAlgorithm(f"unsupported digest algorithm {text[:40]!r}")
        return found

    @property
    def is_session(self) -> bool:
        """True for the "-sess" variants, whose HA1 also covers nonce and cnonce."""
        # A StrEnum member is its value as a str (cheaper than the .value property).
        return self.endswith("-sess")

    @property
    def base(self) -> Algorithm:
        """The non-session algorithm whose hash function this one uses."""
        return Algorithm.MD5 if self in (Algorithm.MD5, Algorithm.MD5_SESS) else Algorithm.SHA256

    @property
    def hash_name(self) -> str:
        """The :mod:`hashlib` name of the hash function."""
        return "md5" if self.base is Algorithm.MD5 else "sha256"

    @property
    def hex_length(self) -> int:
        """Length of a hex digest of this algorithm (32 for MD5, 64 for SHA-256)."""
        return 32 if self.base is Algorithm.MD5 else 64


_ALGORITHMS_BY_LOWER: Final[dict[str, Algorithm]] = {a.value.lower(): a for a in Algorithm}


@mypyc_attr(native_class=False)
class UnsupportedAlgorithm(AuthError):
    """A well-formed ``algorithm=`` token naming an algorithm not implemented here.

    RFC 3261 §25.1 allows any token as algorithm, so this is not bad syntax:
    a server answers it with a fresh challenge (listing what it does support)
    rather than 400, and a client skips such a challenge.
    """


def _h(algorithm: Algorithm, data: str | bytes) -> str:
    """H(data) as lower-case hex (RFC 7616 §3.4: H is the algorithm's hash, KD(s,d)=H(s:d))."""
    # surrogateescape: hash exactly the octets received, and never raise on them.
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    # The constructor itself (same digest as hashlib.new(name, ...), without its
    # interpreted name lookup): H runs three to four times per verification.
    return _HASHES[algorithm.hash_name](raw, usedforsecurity=False).hexdigest()


_HASHES: Final = {"md5": hashlib.md5, "sha256": hashlib.sha256}


def ha1(username: str, realm: str, password: str, algorithm: Algorithm = Algorithm.MD5) -> str:
    """HA1 = H(username ":" realm ":" password) for ``algorithm``'s hash.

    This is what a user store keeps instead of the password (``ha1_md5`` /
    ``ha1_sha256``). For a "-sess" algorithm it returns the same stored value as
    for its base algorithm; the per-session HA1 is :func:`session_ha1`.
    Values are the unquoted strings, UTF-8 encoded (RFC 7616 §3.4.2).
    """
    return _h(algorithm, f"{username}:{realm}:{password}")


def session_ha1(stored_ha1: str, nonce: str, cnonce: str, algorithm: Algorithm) -> str:
    """The HA1 actually used in the response computation.

    RFC 7616 §3.4.2: for "-sess" algorithms
    ``HA1 = H(H(username:realm:passwd) ":" nonce ":" cnonce)``; otherwise the
    stored HA1 itself.
    """
    if algorithm.is_session:
        return _h(algorithm, f"{stored_ha1.lower()}:{nonce}:{cnonce}")
    return stored_ha1.lower()


def compute_response(
    *,
    algorithm: Algorithm,
    stored_ha1: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest (``response=``) for the given inputs, lower-case hex.

    RFC 7616 §3.4.1 / RFC 2617 §3.2.2.1:
      qop = auth or auth-int:  KD(HA1, nonce:nc:cnonce:qop:HA2)
      no qop (RFC 2069):       KD(HA1, nonce:HA2)
    with HA2 = H(method:uri) for auth (and no qop) and
    HA2 = H(method:uri:H(entity-body)) for auth-int (§3.4.3).
    Raises AuthError if qop needs nc/cnonce and they are missing, or if qop is
    unknown.
    """
    if algorithm.is_session and cnonce is None:
        # RFC 7616 §3.4.2: the session HA1 is defined over the cnonce.
        raise AuthError(f"{algorithm} requires a cnonce")
    key = session_ha1(stored_ha1, nonce, cnonce or "", algorithm)
    if qop is None:
        ha2 = _h(algorithm, f"{method}:{uri}")
        return _h(algorithm, f"{key}:{nonce}:{ha2}")
    qop_l = qop.lower()
    if qop_l == "auth":
        ha2 = _h(algorithm, f"{method}:{uri}")
    elif qop_l == "auth-int":
        ha2 = _h(algorithm, f"{method}:{uri}:{_h(algorithm, body)}")
    else:
        raise AuthError(f"unsupported qop {qop[:40]!r}")
    if nc is None or cnonce is None:
        raise AuthError("qop given without nc and cnonce")
    return _h(algorithm, f"{key}:{nonce}:{nc}:{cnonce}:{qop_l}:{ha2}")


# --------------------------------------------------------------------------
# Header value grammar
# --------------------------------------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
# LWS after unfolding is SP / HTAB (RFC 3261 §25.1: LWS = [*WSP CRLF] 1*WSP).
_WSP: Final = frozenset(" \t")
# nc-value = 8LHEX (RFC 3261 §25.1; upper-case accepted, hashed as written).
_NC_RE: Final = re.compile(r"[0-9A-Fa-f]{8}")
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]+")


def _is_qdtext(ch: str) -> bool:
    """qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII (RFC 3261 §25.1).

    Lone surrogates are what ``surrogateescape`` decoding makes of invalid
    UTF-8 octets: they are not UTF8-NONASCII, so they are refused here.
    """
    o = ord(ch)
    if 0xD800 <= o <= 0xDFFF:
        return False
    return o in (0x09, 0x20, 0x21) or 0x23 <= o <= 0x5B or 0x5D <= o <= 0x7E or o >= 0x80


def _is_quoted_pair_char(ch: str) -> bool:
    """quoted-pair = "\\" (%x00-09 / %x0B-0C / %x0E-7F) (RFC 3261 §25.1)."""
    o = ord(ch)
    return o <= 0x7F and o not in (0x0A, 0x0D)


def _skip_wsp(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WSP:
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    start = i
    n = len(text)
    while i < n and text[i] in _TOKEN_CHARS:
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at the DQUOTE at ``i``; return (unescaped value, end)."""
    n = len(text)
    i += 1  # opening DQUOTE
    out: list[str] = []
    start = i  # the run of plain qdtext since the last escape, appended as one slice
    while i < n:
        ch = text[i]
        if ch == '"':
            if not out:
                return text[start:i], i + 1
            out.append(text[start:i])
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= n or not _is_quoted_pair_char(text[i + 1]):
                raise AuthError("bad escape in quoted-string")
            out.append(text[start:i])
            out.append(text[i + 1])
            i += 2
            start = i
            continue
        if not _is_qdtext(ch):
            raise AuthError(f"control character {ord(ch):#04x} in quoted-string")
        i += 1
    raise AuthError("unterminated quoted-string")


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """One challenge or credentials header value, split into scheme and params.

    ``params`` holds ``(name, value)`` with names lower-cased (auth-param names
    are case-insensitive, RFC 7235 §2.1) and values unquoted. For a scheme
    other than Digest the rest of the value is kept verbatim in ``raw`` and
    ``params`` is empty: we never need to understand other schemes, only to
    recognise that they are not Digest (RFC 3261 §22.1 / §22.4).
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()
    raw: str = ""
    quoted: frozenset[str] = frozenset()

    def __init__(
        self,
        scheme: str,
        params: tuple[tuple[str, str], ...] = (),
        raw: str = "",
        quoted: frozenset[str] = frozenset(),
    ) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "quoted", quoted)

    @property
    def is_digest(self) -> bool:
        """True if the scheme is Digest (scheme names are case-insensitive)."""
        return self.scheme.lower() == "digest"

    def get(self, name: str) -> str | None:
        """Value of the param ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.params:
            if key == wanted:
                return value
        return None


def parse_auth_header(value: str) -> AuthHeader:
    """Parse ``auth-scheme LWS auth-param *(COMMA auth-param)``.

    RFC 3261 §25.1: ``auth-param = auth-param-name EQUAL (token / quoted-string)``,
    with LWS allowed around ``=`` and ``,``. Empty list elements (``a=1,,b=2``)
    are tolerated as RFC 7230 §7 tells recipients to. Duplicate params are
    rejected: two ``response=`` values would make the result depend on which
    one a peer reads. Raises AuthError (400) on malformed input, nothing else.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise AuthError("authentication header too long")
    i = _skip_wsp(value, 0)
    scheme, i = _read_token(value, i)
    if not scheme:
        raise AuthError("missing authentication scheme")
    n = len(value)
    if i < n and value[i] not in _WSP:
        raise AuthError("authentication scheme not followed by whitespace")
    if scheme.lower() != "digest":
        return AuthHeader(scheme=scheme, raw=value[i:].strip(" \t"))

    params: list[tuple[str, str]] = []
    quoted: set[str] = set()
    seen: set[str] = set()
    expect_separator = False
    while True:
        i = _skip_wsp(value, i)
        if i >= n:
            break
        if value[i] == ",":
            i += 1
            expect_separator = False
            continue
        if expect_separator:
            raise AuthError(f"expected ',' at offset {i}")
        name, i = _read_token(value, i)
        if not name:
            raise AuthError(f"expected auth-param name at offset {i}")
        i = _skip_wsp(value, i)
        if i >= n or value[i] != "=":
            raise AuthError(f"auth-param {name[:40]!r} has no value")
        i = _skip_wsp(value, i + 1)
        if i < n and value[i] == '"':
            param_value, i = _read_quoted(value, i)
            is_quoted = True
        else:
            param_value, i = _read_token(value, i)
            is_quoted = False
            if not param_value:
                raise AuthError(f"auth-param {name[:40]!r} has an empty or invalid value")
        key = name.lower()
        if key in seen:
            raise AuthError(f"duplicate auth-param {key[:40]!r}")
        if len(params) >= MAX_PARAMS:
            raise AuthError("too many auth-params")
        seen.add(key)
        if is_quoted:
            quoted.add(key)
        params.append((key, param_value))
        expect_separator = True
    return AuthHeader(scheme=scheme, params=tuple(params), quoted=frozenset(quoted))


def _quote(value: str) -> str:
    """quoted-string with ``\\`` and ``"`` escaped (RFC 3261 §25.1 quoted-pair)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_formattable(name: str, value: str) -> None:
    # CR/LF or other controls would let a value break out of the header line;
    # lone surrogates (undecodable octets) cannot be written as UTF-8.
    for ch in value:
        o = ord(ch)
        if ch != "\t" and (o < 0x20 or o == 0x7F):
            raise AuthError(f"control character in {name}")
        if 0xD800 <= o <= 0xDFFF:
            raise AuthError(f"invalid UTF-8 in {name}")


# --------------------------------------------------------------------------
# Challenge and credentials values
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """A Digest challenge (``WWW-Authenticate`` / ``Proxy-Authenticate`` value).

    ``algorithm`` is None when the parameter was absent (MD5 is then implied,
    RFC 7616 §3.3). ``qop`` holds the offered qop-options in order; empty means
    the RFC 2069 form (no qop).
    """

    realm: str
    nonce: str
    algorithm: Algorithm | None = None
    opaque: str | None = None
    qop: tuple[str, ...] = ()
    stale: bool = False
    domain: str | None = None

    def __init__(
        self,
        realm: str,
        nonce: str,
        algorithm: Algorithm | None = None,
        opaque: str | None = None,
        qop: tuple[str, ...] = (),
        stale: bool = False,
        domain: str | None = None,
    ) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "realm", realm)
        object.__setattr__(self, "nonce", nonce)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "opaque", opaque)
        object.__setattr__(self, "qop", qop)
        object.__setattr__(self, "stale", stale)
        object.__setattr__(self, "domain", domain)

    @property
    def effective_algorithm(self) -> Algorithm:
        """The algorithm in force: MD5 when the parameter was absent."""
        return self.algorithm or Algorithm.MD5

    @classmethod
    def parse(cls, value: str) -> Challenge:
        """Parse a Digest challenge; AuthError (400) if malformed, not Digest,
        or using an algorithm we do not implement."""
        header = parse_auth_header(value)
        if not header.is_digest:
            raise AuthError(f"not a Digest challenge (scheme {header.scheme[:40]!r})")
        realm = header.get("realm")
        nonce = header.get("nonce")
        if realm is None or nonce is None:
            raise AuthError("Digest challenge without realm or nonce")
        algorithm_text = header.get("algorithm")
        algorithm = Algorithm.parse(algorithm_text) if algorithm_text is not None else None
        qop_text = header.get("qop")
        qop: tuple[str, ...] = ()
        if qop_text is not None:
            # qop-options = "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
            qop = tuple(part.strip(" \t").lower() for part in qop_text.split(","))
            if not all(part and set(part) <= _TOKEN_CHARS for part in qop):
                raise AuthError("malformed qop-options")
        stale_text = header.get("stale")
        stale = stale_text is not None and stale_text.lower() == "true"
        return cls(
            realm=realm,
            nonce=nonce,
            algorithm=algorithm,
            opaque=header.get("opaque"),
            qop=qop,
            stale=stale,
            domain=header.get("domain"),
        )

    def __str__(self) -> str:
        """The header value, e.g. ``Digest realm="x", nonce="...", algorithm=SHA-256, qop="auth"``."""
        for name, value in (("realm", self.realm), ("nonce", self.nonce)):
            _check_formattable(name, value)
        parts = [f"realm={_quote(self.realm)}"]
        if self.domain is not None:
            _check_formattable("domain", self.domain)
            parts.append(f"domain={_quote(self.domain)}")
        parts.append(f"nonce={_quote(self.nonce)}")
        if self.opaque is not None:
            _check_formattable("opaque", self.opaque)
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm.value}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Digest credentials (``Authorization`` / ``Proxy-Authorization`` value).

    ``nc`` is kept exactly as written (8 hex digits) because the response is
    computed over the string the client sent; :attr:`nc_value` is its number.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: Algorithm | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    userhash: bool = False

    def __init__(
        self,
        username: str,
        realm: str,
        nonce: str,
        uri: str,
        response: str,
        algorithm: Algorithm | None = None,
        cnonce: str | None = None,
        opaque: str | None = None,
        qop: str | None = None,
        nc: str | None = None,
        userhash: bool = False,
    ) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "realm", realm)
        object.__setattr__(self, "nonce", nonce)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "cnonce", cnonce)
        object.__setattr__(self, "opaque", opaque)
        object.__setattr__(self, "qop", qop)
        object.__setattr__(self, "nc", nc)
        object.__setattr__(self, "userhash", userhash)

    @property
    def effective_algorithm(self) -> Algorithm:
        """The algorithm in force: MD5 when the parameter was absent."""
        return self.algorithm or Algorithm.MD5

    @property
    def nc_value(self) -> int:
        """The nonce count as a number (0 when absent)."""
        return int(self.nc, 16) if self.nc is not None else 0

    @classmethod
    def parse(cls, value: str) -> Credentials:
        """Parse Digest credentials; AuthError (400) if malformed or not Digest.

        Checks the shape RFC 3261 §22.4 / RFC 7616 §3.4 requires: username,
        realm, nonce, uri and response present; with qop, both nc (8 hex
        digits) and cnonce present (RFC 7616 §3.4: "cnonce ... MUST be
        specified if a qop parameter is sent"); without qop, neither.
        """
        return cls.from_header(parse_auth_header(value))

    @classmethod
    def from_header(cls, header: AuthHeader) -> Credentials:
        """Build credentials from an already split header (see :meth:`parse`)."""
        if not header.is_digest:
            raise AuthError(f"not Digest credentials (scheme {header.scheme[:40]!r})")
        required: dict[str, str] = {}
        for name in ("username", "realm", "nonce", "uri", "response"):
            got = header.get(name)
            if got is None:
                if name == "username" and header.get("username*") is not None:
                    # RFC 7616 §3.4.4 extended notation; SIP has no use for it.
                    raise AuthError("username* is not supported")
                raise AuthError(f"Digest credentials without {name}")
            required[name] = got
        if not required["response"] or not _HEX_RE.fullmatch(required["response"]):
            raise AuthError("Digest response is not hex")
        algorithm_text = header.get("algorithm")
        algorithm = Algorithm.parse(algorithm_text) if algorithm_text is not None else None
        qop = header.get("qop")
        nc = header.get("nc")
        cnonce = header.get("cnonce")
        if qop is not None:
            if nc is None or cnonce is None:
                # sipvicious sends exactly this: qop=auth with no nc/cnonce.
                raise AuthError("qop given without nc and cnonce")
            if not _NC_RE.fullmatch(nc):
                raise AuthError("nc is not 8 hex digits")
            if not cnonce:
                raise AuthError("empty cnonce")
        elif nc is not None:
            raise AuthError("nc given without qop")
        if algorithm is not None and algorithm.is_session and cnonce is None:
            raise AuthError(f"{algorithm} credentials without cnonce")
        userhash_text = header.get("userhash")
        return cls(
            username=required["username"],
            realm=required["realm"],
            nonce=required["nonce"],
            uri=required["uri"],
            response=required["response"],
            algorithm=algorithm,
            cnonce=cnonce,
            opaque=header.get("opaque"),
            qop=qop.lower() if qop is not None else None,
            nc=nc,
            userhash=userhash_text is not None and userhash_text.lower() == "true",
        )

    def __str__(self) -> str:
        """The header value. Quoting follows RFC 3261 §25.1: qop, nc and
        algorithm are tokens; everything else is a quoted-string."""
        for name, value in (
            ("username", self.username),
            ("realm", self.realm),
            ("nonce", self.nonce),
            ("uri", self.uri),
            ("response", self.response),
        ):
            _check_formattable(name, value)
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm.value}")
        if self.cnonce is not None:
            _check_formattable("cnonce", self.cnonce)
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            _check_formattable("opaque", self.opaque)
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------
# Server role
# --------------------------------------------------------------------------


class Outcome(StrEnum):
    """What a verification concluded."""

    OK = "ok"
    STALE = (
        "stale"  # valid response for an expired/evicted/replayed nonce: re-challenge, stale=true
    )
    FAILED = "failed"  # anything else that deserves a fresh challenge (401/407)
    MALFORMED = "malformed"  # syntactically broken credentials (400)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of :meth:`DigestServer.verify`.

    ``reason`` is a short diagnostic for local logs and metrics (for example
    ``"unknown-user"`` or ``"wrong-response"``). It must never be put on the
    wire: the outward answer for every FAILED verdict is the same challenge.
    """

    outcome: Outcome
    username: str | None = None
    reason: str = ""
    error: AuthError | None = None

    def __init__(
        self,
        outcome: Outcome,
        username: str | None = None,
        reason: str = "",
        error: AuthError | None = None,
    ) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "error", error)

    @property
    def ok(self) -> bool:
        """True when the credentials were accepted."""
        return self.outcome is Outcome.OK


@dataclass(frozen=True, slots=True)
class AuthAnswer:
    """The response a server should send for a verdict that is not OK."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "headers", headers)


# RFC 8760 §2.3 (UAS behavior): challenges are listed "starting with the most
# preferred algorithm at the top" — SHA-256, then MD5 for older clients.
RFC8760_ALGORITHMS: Final[tuple[Algorithm, ...]] = (Algorithm.SHA256, Algorithm.MD5)

# lookup(username, base algorithm) -> stored HA1 (hex) or None if the user is unknown.
# The algorithm passed is always MD5 or SHA-256: "-sess" variants use the base HA1.
HA1Lookup = Callable[[str, Algorithm], str | None]

_NONCE_MAC_LEN: Final = 16
_NONCE_SALT_LEN: Final = 8
_NONCE_RAW_LEN: Final = 8 + _NONCE_SALT_LEN + _NONCE_MAC_LEN  # issue time (ms) + salt + mac
_NONCE_TEXT_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of 32 bytes, no padding
_MIN_KEY_LEN: Final = 16
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")


def _b64url(raw: bytes) -> str:
    """``base64.urlsafe_b64encode(raw)`` without padding, as text."""
    return (
        binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")
    )


@dataclass(slots=True)
class _NonceUse:
    highest_nc: int
    issued_ms: int

    def __init__(self, highest_nc: int, issued_ms: int) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        self.highest_nc = highest_nc
        self.issued_ms = issued_ms


@dataclass(slots=True)
class DigestServer:
    """Issues challenges and verifies credentials for one realm.

    Nonces are stateless: ``base64url(issued_ms || salt || HMAC(key, realm,
    issued_ms, salt)[:16])``, so expiry and authenticity are checked without
    remembering issued nonces (RFC 7616 §3.3 suggests exactly this shape of
    nonce: a time stamp plus a private-key hash). The only state is a bounded
    LRU of recently used nonces with the highest nonce count seen, for replay
    detection (RFC 7616 §3.4: the server "SHOULD ... detect replays by
    watching nc"). A nonce that fell out of that LRU is answered as stale, so
    a replay can never succeed just because memory was bounded.

    ``algorithms`` are offered in the given order, one header value each.
    The default is MD5 alone, for interoperability: SIPp 3.6.1 (our test peer)
    and many deployed phones read only the *first* challenge and implement
    only MD5 — SIPp aborts with "authentication must use MD5" when SHA-256 is
    listed first. Pass ``(Algorithm.SHA256, Algorithm.MD5)`` (see
    :data:`RFC8760_ALGORITHMS`) to offer SHA-256 first as RFC 8760 §2.3 asks
    (a UAC answers the topmost challenge it supports, §2.4), when every client
    picks the first challenge it supports; ``answer(..., algorithms=...)``
    narrows the offer per request. ``qop`` is the list of qop-options offered;
    an empty tuple means the RFC 2069 form. ``allow_no_qop`` additionally
    accepts credentials without qop when qop was offered (very old phones);
    ``require_opaque`` refuses credentials that do not echo the challenge's
    opaque value.
    ``random`` supplies the nonce salt (injected so tests are deterministic).
    """

    key: bytes = field(repr=False)
    realm: str
    algorithms: tuple[Algorithm, ...] = (Algorithm.MD5,)
    qop: tuple[str, ...] = ("auth",)
    nonce_ttl: float = 300.0
    allow_no_qop: bool = False
    require_opaque: bool = True
    max_tracked_nonces: int = 10_000
    random: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    _used: OrderedDict[str, _NonceUse] = field(default_factory=OrderedDict, init=False, repr=False)
    _evicted_watermark_ms: int | None = field(default=None, init=False, repr=False)
    _opaque: str = field(default="", init=False, repr=False)
    # HMAC-SHA256 keyed with ``key``, copied for every nonce MAC (see _mac).
    _keyed: hmac.HMAC | None = field(default=None, init=False, repr=False)
    _keyed_for: bytes = field(default=b"", init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < _MIN_KEY_LEN:
            raise ValueError(f"digest server key must be at least {_MIN_KEY_LEN} bytes")
        if not self.algorithms:
            raise ValueError("at least one digest algorithm must be offered")
        for q in self.qop:
            if q not in ("auth", "auth-int"):
                raise ValueError(f"unsupported qop {q!r}")
        if self.max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be positive")
        _check_formattable("realm", self.realm)
        mac = hmac.new(self.key, b"dialgate-opaque\x00" + self.realm.encode(), "sha256")
        self._opaque = base64.urlsafe_b64encode(mac.digest()[:12]).decode("ascii")

    # -- nonces ------------------------------------------------------------

    def _mac(self, issued_ms: int, salt: bytes, algorithm: Algorithm) -> bytes:
        # The algorithm of the challenge is signed into its nonce: credentials
        # must use the algorithm of the challenge that issued the nonce (a nonce
        # from a SHA-256 challenge answered with algorithm=MD5 is refused).
        msg = (
            b"dialgate-nonce\x00"
            + self.realm.encode()
            + b"\x00"
            + algorithm.encode("ascii")  # a StrEnum member is its value
            + b"\x00"
            + struct.pack(">q", issued_ms)
        )
        # A copy of an HMAC already keyed with ``key``: the same bytes as
        # hmac.new(key, msg, "sha256").digest(), without setting the key up (and,
        # with OpenSSL 3, fetching the algorithm) for every nonce.
        keyed = self._keyed
        if keyed is None or self._keyed_for is not self.key:
            keyed = self._keyed = hmac.new(self.key, digestmod="sha256")
            self._keyed_for = self.key
        mac = keyed.copy()
        mac.update(msg + salt)
        return mac.digest()[:_NONCE_MAC_LEN]

    def make_nonce(self, now: float, algorithm: Algorithm = Algorithm.MD5) -> str:
        """A fresh signed nonce embedding ``now`` (milliseconds), valid for ``algorithm`` only."""
        issued_ms = int(now * 1000)
        salt = self.random(_NONCE_SALT_LEN)
        if len(salt) != _NONCE_SALT_LEN:
            raise ValueError("random source returned the wrong number of bytes")
        raw = struct.pack(">q", issued_ms) + salt + self._mac(issued_ms, salt, algorithm)
        return _b64url(raw)

    def nonce_issued_at(self, nonce: str) -> float | None:
        """The issue time (seconds) of a nonce this server signed (any algorithm); None if not ours."""
        for algorithm in Algorithm:
            issued_ms = self._check_nonce(nonce, algorithm)
            if issued_ms is not None:
                return issued_ms / 1000
        return None

    def nonce_algorithm(self, nonce: str) -> Algorithm | None:
        """The algorithm of the challenge that issued ``nonce``; None if not ours."""
        for algorithm in Algorithm:
            if self._check_nonce(nonce, algorithm) is not None:
                return algorithm
        return None

    def _check_nonce(self, nonce: str, algorithm: Algorithm) -> int | None:
        if not _NONCE_TEXT_RE.fullmatch(nonce):
            return None
        # 43 base64url chars: always 32 bytes (binascii directly, as base64.urlsafe_b64decode
        # does after its interpreted argument handling).
        raw = binascii.a2b_base64((nonce + "=").encode("ascii").translate(_FROM_URLSAFE))
        # base64 decoding ignores the unused low bits of the last character, so
        # several spellings decode alike; accept only the one we issued.
        if _b64url(raw) != nonce:
            return None
        (issued_ms,) = struct.unpack(">q", raw[:8])
        salt = raw[8 : 8 + _NONCE_SALT_LEN]
        if not hmac.compare_digest(
            raw[8 + _NONCE_SALT_LEN :], self._mac(issued_ms, salt, algorithm)
        ):
            return None
        return int(issued_ms)

    @property
    def opaque(self) -> str:
        """The opaque value sent with every challenge (fixed per key and realm)."""
        return self._opaque

    # -- challenges --------------------------------------------------------

    def challenges(
        self,
        now: float,
        *,
        stale: bool = False,
        algorithms: Sequence[Algorithm] | None = None,
    ) -> list[Challenge]:
        """One challenge per offered algorithm, in preference order, each with its own nonce.

        ``algorithms`` narrows the offer for one request (a user whose stored
        HA1 is for one algorithm only); each must be one this server accepts
        (ValueError otherwise: credentials for it would be refused). Default:
        :attr:`algorithms`.
        """
        offer = self.algorithms if algorithms is None else tuple(algorithms)
        if not offer:
            raise ValueError("at least one digest algorithm must be offered")
        for algorithm in offer:
            if algorithm not in self.algorithms:
                raise ValueError(f"{algorithm} is not accepted by this server")
        return [
            Challenge(
                realm=self.realm,
                nonce=self.make_nonce(now, algorithm),
                algorithm=algorithm,
                opaque=self._opaque,
                qop=self.qop,
                stale=stale,
            )
            for algorithm in offer
        ]

    def challenge_values(
        self,
        now: float,
        *,
        stale: bool = False,
        algorithms: Sequence[Algorithm] | None = None,
    ) -> list[str]:
        """The header values of :meth:`challenges` (one header line each)."""
        return [str(c) for c in self.challenges(now, stale=stale, algorithms=algorithms)]

    def answer(
        self,
        verdict: Verdict,
        now: float,
        *,
        proxy: bool = False,
        algorithms: Sequence[Algorithm] | None = None,
    ) -> AuthAnswer | None:
        """The response for a verdict: None for OK, 400 for MALFORMED, else 401/407 + challenges.

        ``proxy`` selects 407 with ``Proxy-Authenticate`` (RFC 3261 §22.3)
        instead of 401 with ``WWW-Authenticate`` (§22.2). FAILED always gets
        the same answer, whatever the internal reason. ``algorithms`` narrows
        the challenges offered (see :meth:`challenges`).
        """
        if verdict.outcome is Outcome.OK:
            return None
        if verdict.outcome is Outcome.MALFORMED:
            return AuthAnswer(400, "Bad Request")
        status, reason, name = (
            (407, "Proxy Authentication Required", "Proxy-Authenticate")
            if proxy
            else (401, "Unauthorized", "WWW-Authenticate")
        )
        stale = verdict.outcome is Outcome.STALE
        values = self.challenge_values(now, stale=stale, algorithms=algorithms)
        return AuthAnswer(status, reason, tuple((name, v) for v in values))

    # -- verification ------------------------------------------------------

    def verify(
        self,
        method: str,
        authorization: str | Sequence[str] | None,
        lookup: HA1Lookup,
        now: float,
        *,
        body: bytes = b"",
        uri_matches: Callable[[str], bool] | None = None,
    ) -> Verdict:
        """Check credentials for a request; never raises for any header content.

        ``authorization`` is the (Proxy-)Authorization value, or all of them
        (one per header line): RFC 3261 §22.3 lets several be present for
        different realms, and the one for our realm is used.
        ``method`` is the method of the request carrying the credentials
        (RFC 3261 §22.4 hashes it into A2). ACK and CANCEL are never
        challenged (§22.1), so a caller does not verify them.

        The response is computed over the ``uri`` the client put in the
        credentials. ``uri_matches`` (the caller's comparison with the
        Request-URI, as URIs) must accept that ``uri``, else the credentials
        are MALFORMED (``uri-mismatch``, 400: RFC 2617 §3.2.2.5 / RFC 7616
        §3.4.6 "SHOULD return a 400 Bad Request"); without it the ``uri`` is
        not checked. The nonce must come from a challenge of the algorithm the
        credentials name (``algorithm-mismatch``), and the opaque value sent
        with every challenge must be echoed unchanged (``missing-opaque`` /
        ``wrong-opaque``) when :attr:`require_opaque` is set (the default).
        """
        if authorization is None:
            return Verdict(Outcome.FAILED, reason="no-credentials")
        values = [authorization] if isinstance(authorization, str) else list(authorization)
        if not values:
            return Verdict(Outcome.FAILED, reason="no-credentials")
        chosen: Credentials | None = None
        first_error: AuthError | None = None
        saw_other_scheme = False
        saw_unknown_algorithm = False
        for value in values:
            try:
                header = parse_auth_header(value)
                if not header.is_digest:
                    saw_other_scheme = True
                    continue
                creds = Credentials.from_header(header)
            except UnsupportedAlgorithm:
                saw_unknown_algorithm = True
                continue
            except AuthError as exc:
                if first_error is None:
                    first_error = exc
                continue
            if creds.realm == self.realm:
                chosen = creds
                break
        if chosen is None:
            if first_error is not None:
                return Verdict(Outcome.MALFORMED, reason="malformed", error=first_error)
            if saw_unknown_algorithm:
                return Verdict(Outcome.FAILED, reason="algorithm-not-offered")
            if saw_other_scheme:
                # RFC 3261 §22.1 / RFC 7235 §2.1: an unknown scheme is answered
                # with a challenge the client may understand.
                return Verdict(Outcome.FAILED, reason="unsupported-scheme")
            return Verdict(Outcome.FAILED, reason="wrong-realm")
        return self._verify_credentials(method, chosen, lookup, now, body, uri_matches)

    def _verify_credentials(
        self,
        method: str,
        creds: Credentials,
        lookup: HA1Lookup,
        now: float,
        body: bytes,
        uri_matches: Callable[[str], bool] | None = None,
    ) -> Verdict:
        algorithm = creds.effective_algorithm
        if algorithm not in self.algorithms:
            # RFC 7616 §3.3 leaves the choice to the server; we only accept what we offered.
            return Verdict(Outcome.FAILED, reason="algorithm-not-offered")
        if creds.userhash:
            return Verdict(Outcome.FAILED, reason="userhash-not-offered")
        if creds.qop is None:
            if self.qop and not self.allow_no_qop:
                return Verdict(Outcome.FAILED, reason="qop-required")
            if algorithm.is_session:
                return Verdict(
                    Outcome.MALFORMED,
                    reason="malformed",
                    error=AuthError(f"{algorithm} credentials without qop"),
                )
        elif creds.qop not in self.qop:
            return Verdict(Outcome.FAILED, reason="qop-not-offered")
        if creds.opaque is None:
            if self.require_opaque:
                # RFC 7616 §3.4: the opaque sent in the challenge "SHOULD be
                # returned by the client unchanged"; every challenge here has one.
                return Verdict(Outcome.FAILED, reason="missing-opaque")
        elif not hmac.compare_digest(
            creds.opaque.encode("utf-8", "surrogateescape"), self._opaque.encode("ascii")
        ):
            return Verdict(Outcome.FAILED, reason="wrong-opaque")
        if uri_matches is not None and not uri_matches(creds.uri):
            # RFC 2617 §3.2.2.5: the resource named by "uri" must be the one of
            # the Request-Line; "if they are not, the server SHOULD return a
            # 400 Bad Request error" (RFC 7616 §3.4.6 the same).
            return Verdict(
                Outcome.MALFORMED,
                reason="uri-mismatch",
                error=AuthError("digest uri does not match the Request-URI"),
            )
        issued_ms = self._check_nonce(creds.nonce, algorithm)
        if issued_ms is None:
            if self.nonce_algorithm(creds.nonce) is not None:
                # Our nonce, issued in a challenge for another algorithm.
                return Verdict(Outcome.FAILED, reason="algorithm-mismatch")
            return Verdict(Outcome.FAILED, reason="bad-nonce")

        stored = lookup(creds.username, algorithm.base)
        known_user = stored is not None and _is_hex_of(stored, algorithm.hex_length)
        # For unknown users, still compute a digest over a key-derived dummy HA1
        # so that the time taken does not reveal whether the user exists.
        secret_ha1 = stored if known_user and stored is not None else self._dummy_ha1(algorithm)
        expected = compute_response(
            algorithm=algorithm,
            stored_ha1=secret_ha1,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
            body=body,
        )
        # Constant-time comparison (bytes: compare_digest rejects non-ASCII str).
        matches = hmac.compare_digest(
            expected.encode("ascii"), creds.response.lower().encode("ascii")
        )
        if not known_user:
            return Verdict(Outcome.FAILED, reason="unknown-user")
        if not matches:
            return Verdict(Outcome.FAILED, reason="wrong-response")

        # RFC 7616 §3.3: stale=true only when "the nonce value was stale" but the
        # digest was valid, so the client can retry without asking the user.
        now_ms = int(now * 1000)
        if now_ms - issued_ms > int(self.nonce_ttl * 1000):
            return Verdict(Outcome.STALE, username=creds.username, reason="nonce-expired")
        if issued_ms > now_ms + 1000:
            # Signed by us "in the future": the caller's clock restarted.
            return Verdict(Outcome.STALE, username=creds.username, reason="nonce-from-future")
        if creds.qop is not None and not self._accept_nc(creds.nonce, creds.nc_value, issued_ms):
            return Verdict(Outcome.STALE, username=creds.username, reason="nc-replay")
        return Verdict(Outcome.OK, username=creds.username, reason="ok")

    def _dummy_ha1(self, algorithm: Algorithm) -> str:
        return hmac.new(self.key, b"dialgate-dummy-ha1", algorithm.hash_name).hexdigest()

    def _accept_nc(self, nonce: str, nc: int, issued_ms: int) -> bool:
        """Record nc for nonce if it strictly increases; False for a replay.

        RFC 7616 §3.4: nc lets the server "detect request replays by maintaining
        its own copy of this count — if the same nc-value is seen twice, then
        the request is a replay". A nonce not in the LRU but issued no later than
        the newest nonce ever evicted may have been used before: refuse it
        (answered as stale, so an honest client just takes a fresh nonce).
        """
        use = self._used.get(nonce)
        if use is None:
            if self._evicted_watermark_ms is not None and issued_ms <= self._evicted_watermark_ms:
                return False
            self._used[nonce] = _NonceUse(highest_nc=nc, issued_ms=issued_ms)
            while len(self._used) > self.max_tracked_nonces:
                _, evicted = self._used.popitem(last=False)
                if (
                    self._evicted_watermark_ms is None
                    or evicted.issued_ms > self._evicted_watermark_ms
                ):
                    self._evicted_watermark_ms = evicted.issued_ms
            return True
        if nc <= use.highest_nc:
            return False
        use.highest_nc = nc
        self._used.move_to_end(nonce)
        return True

    @property
    def tracked_nonces(self) -> int:
        """How many nonces the replay LRU currently remembers."""
        return len(self._used)


def _is_hex_of(value: str, length: int) -> bool:
    return len(value) == length and _HEX_RE.fullmatch(value) is not None


# --------------------------------------------------------------------------
# Client role
# --------------------------------------------------------------------------


def _choose_qop(offered: tuple[str, ...]) -> str | None:
    if not offered:
        return None  # RFC 2069 compatibility: the challenge did not offer qop
    if "auth" in offered:
        return "auth"
    if "auth-int" in offered:
        return "auth-int"
    raise AuthError("challenge offers no qop we support")


def authorize(
    challenge: Challenge | str,
    *,
    username: str,
    method: str,
    uri: str,
    password: str | None = None,
    stored_ha1: str | None = None,
    body: bytes = b"",
    cnonce: str | None = None,
    nc: int = 1,
) -> Credentials:
    """Answer one challenge: the credentials for a request (``str()`` is the header value).

    Give either ``password`` or ``stored_ha1`` (HA1 for the challenge's base
    algorithm and realm). ``cnonce`` is required when the challenge offers qop
    or uses a "-sess" algorithm (inject it: the module draws no randomness on
    the client side). ``uri`` is the digest-uri, normally the Request-URI
    (RFC 3261 §22.4). The opaque value is echoed unchanged (RFC 7616 §3.4).
    """
    ch = Challenge.parse(challenge) if isinstance(challenge, str) else challenge
    algorithm = ch.effective_algorithm
    if password is not None:
        secret = ha1(username, ch.realm, password, algorithm)
    elif stored_ha1 is not None:
        if not _is_hex_of(stored_ha1, algorithm.hex_length):
            raise AuthError(f"stored HA1 is not a {algorithm.base} digest")
        secret = stored_ha1
    else:
        raise AuthError("a password or an HA1 is needed to answer a challenge")
    qop = _choose_qop(ch.qop)
    if qop is None and algorithm.is_session:
        raise AuthError(f"{algorithm} challenge without qop")
    if not 1 <= nc <= 0xFFFFFFFF:
        raise AuthError("nonce count out of range")
    nc_text = f"{nc:08x}" if qop is not None else None
    used_cnonce = cnonce if qop is not None else None
    if qop is not None and not used_cnonce:
        raise AuthError("a cnonce is needed for qop")
    if used_cnonce is not None:
        _check_formattable("cnonce", used_cnonce)
    response = compute_response(
        algorithm=algorithm,
        stored_ha1=secret,
        method=method,
        uri=uri,
        nonce=ch.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=used_cnonce,
        body=body,
    )
    return Credentials(
        username=username,
        realm=ch.realm,
        nonce=ch.nonce,
        uri=uri,
        response=response,
        algorithm=ch.algorithm,
        cnonce=used_cnonce,
        opaque=ch.opaque,
        qop=qop,
        nc=nc_text,
    )


def _default_cnonce() -> str:
    return secrets.token_hex(16)


@dataclass(slots=True)
class DigestClient:
    """Answers 401/407 challenges for one user and remembers the nonce.

    Flow: on a 401/407 call :meth:`handle_challenge` with the status and all
    ``WWW-Authenticate`` / ``Proxy-Authenticate`` values; if it returns True,
    resend the request with :meth:`authorization` (each call uses the next
    nonce count, RFC 7616 §3.4). Call :meth:`accepted` when a request carrying
    credentials got a non-401/407 final answer, so a later challenge (nonce
    expired at a server that does not say stale) is answered again.

    It refuses to loop: a challenge that arrives after our credentials were
    sent for the current nonce, without ``stale=true``, means they were
    rejected (RFC 3261 §22.2: do not retry the same credentials); a repeated
    stale challenge for the same nonce is refused too, and so is a run of more
    than ``max_stale_retries`` stale challenges with no :meth:`accepted` between
    (a server that calls every nonce stale would otherwise loop us forever).

    Secrets: either ``password`` or ``ha1`` (stored HA1 per base algorithm, for
    the realm the server will use). Neither appears in ``repr``.
    """

    username: str
    password: str | None = field(default=None, repr=False)
    ha1: Mapping[Algorithm, str] | None = field(default=None, repr=False)
    cnonce_source: Callable[[], str] = field(default=_default_cnonce, repr=False)
    max_stale_retries: int = 2
    _challenge: Challenge | None = field(default=None, init=False)
    _header_name: str = field(default="Authorization", init=False)
    _nc: int = field(default=0, init=False)
    _cnonce: str | None = field(default=None, init=False, repr=False)
    _answered: bool = field(default=False, init=False)
    _stale_run: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.password is None and not self.ha1:
            raise ValueError("DigestClient needs a password or HA1 values")

    def _supports(self, algorithm: Algorithm) -> bool:
        return self.password is not None or (self.ha1 is not None and algorithm.base in self.ha1)

    def choose(self, values: Sequence[str]) -> Challenge | None:
        """The first Digest challenge we can answer (servers list them by preference, RFC 8760 §2.4)."""
        for value in values:
            try:
                ch = Challenge.parse(value)
                _choose_qop(ch.qop)
            except AuthError:
                continue  # other scheme, unknown algorithm or qop: try the next one
            if ch.algorithm is not None and ch.algorithm.is_session and not ch.qop:
                continue
            if self._supports(ch.effective_algorithm):
                return ch
        return None

    def handle_challenge(self, status: int, values: Sequence[str]) -> bool:
        """Take a 401/407 challenge; True if the request should be retried with credentials."""
        if status not in (401, 407):
            raise ValueError(f"status {status} is not a challenge")
        ch = self.choose(values)
        if ch is None:
            return False
        previous = self._challenge
        if previous is not None and self._answered:
            same_nonce = previous.nonce == ch.nonce and previous.realm == ch.realm
            if not ch.stale or same_nonce:
                # Our credentials for this nonce were rejected: asking again
                # with the same password would loop forever.
                return False
            self._stale_run += 1
            if self._stale_run > self.max_stale_retries:
                return False
        self._challenge = ch
        self._header_name = "Proxy-Authorization" if status == 407 else "Authorization"
        self._nc = 0
        self._cnonce = None
        self._answered = False
        return True

    def accepted(self) -> None:
        """The last request with credentials was not challenged again."""
        self._answered = False
        self._stale_run = 0

    @property
    def header_name(self) -> str:
        """``Authorization`` after a 401, ``Proxy-Authorization`` after a 407."""
        return self._header_name

    @property
    def nonce_count(self) -> int:
        """The nc used by the last :meth:`authorization` call (0 before any)."""
        return self._nc

    def authorization(self, method: str, uri: str, body: bytes = b"") -> tuple[str, str] | None:
        """``(header name, value)`` for the next request, or None with no challenge yet."""
        ch = self._challenge
        if ch is None:
            return None
        if self._cnonce is None:
            self._cnonce = self.cnonce_source()
        self._nc += 1
        algorithm = ch.effective_algorithm
        stored = None if self.ha1 is None else self.ha1.get(algorithm.base)
        creds = authorize(
            ch,
            username=self.username,
            method=method,
            uri=uri,
            password=self.password,
            stored_ha1=None if self.password is not None else stored,
            body=body,
            cnonce=self._cnonce,
            nc=self._nc,
        )
        self._answered = True
        return self._header_name, str(creds)
