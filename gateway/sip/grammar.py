"""Regex fragments for the RFC 3261 §25.1 ABNF, each under the rule it implements.

Only *character-class* fragments live here: every compiled pattern built from
them is a single character class with a ``+`` or ``*`` (or a fixed sequence of
such classes with disjoint delimiters), used with ``fullmatch``. Such patterns
run in linear time because there is never a choice point to backtrack into.

This module must never hold a pattern with nested or adjacent overlapping
quantifiers (the shapes that backtrack catastrophically) and must never do I/O.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CALLID_RE",
    "DIGITS_RE",
    "DISPLAY_WORD_RE",
    "HEX",
    "HOSTNAME_RE",
    "IPV6_RE",
    "METHOD_RE",
    "PORT_RE",
    "SCHEME_RE",
    "STATUS_RE",
    "TOKEN",
    "TOKEN_RE",
    "URI_UNSAFE_RE",
    "VERSION_RE",
    "WORD",
    "is_digits",
]

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]"
TOKEN_RE: Final = re.compile(TOKEN + r"+")

# display-name = *(token LWS) / quoted-string. Unquoted words are tokens; non-ASCII
# characters are also accepted there because real peers send unquoted UTF-8 names.
DISPLAY_WORD_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]+")

# Method = INVITEm / ACKm / OPTIONSm / BYEm / CANCELm / REGISTERm / extension-method
# extension-method = token
METHOD_RE: Final = TOKEN_RE

# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")

# hostname = *( domainlabel "." ) toplabel [ "." ]
# (kept lenient: the label structure is not enforced, only the alphabet; "_" is
# accepted because real peers send it in SRV-ish names)
HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9\-._~]+")

# IPv6reference = "[" IPv6address "]"   (IPv4-mapped tails allowed: hexpart ":" IPv4address)
IPV6_RE: Final = re.compile(r"\[[0-9A-Fa-f:.]+\]")

# port = 1*DIGIT
PORT_RE: Final = re.compile(r"[0-9]{1,5}")
DIGITS_RE: Final = re.compile(r"[0-9]+")


def is_digits(text: str) -> bool:
    """``DIGITS_RE.fullmatch(text) is not None`` (``1*DIGIT``) without the regex call.

    ``isascii`` first: ``str.isdigit`` alone also accepts non-ASCII digits ("²").
    """
    return text.isascii() and text.isdigit()


# HEXDIG
HEX: Final = frozenset("0123456789abcdefABCDEF")

# Status-Code = 3DIGIT
STATUS_RE: Final = re.compile(r"[1-9][0-9][0-9]")

# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT   (the literal "SIP" is case-insensitive)
VERSION_RE: Final = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")

# Characters that can never appear inside a URI on the wire: whitespace, controls,
# and the delimiters the surrounding grammar uses (RFC 3986 §2 excludes "<>\"", SP).
URI_UNSAFE_RE: Final = re.compile(r"[\x00-\x20\x7f<>\"]")

# word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" /
#           "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}" )
# callid = word [ "@" word ]      ("@" is not a word character: no backtracking)
WORD: Final = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]"
CALLID_RE: Final = re.compile(WORD + r"+(?:@" + WORD + r"+)?")
