"""Property tests for digest parsing: garbage in, AuthError (400) out — never anything else.

Also round-trips: any challenge or credentials value we can build formats to
text that parses back to the same value, and any verification of arbitrary
text returns a Verdict instead of raising.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.digest import (
    Algorithm,
    Challenge,
    Credentials,
    DigestServer,
    Outcome,
    authorize,
    ha1,
    parse_auth_header,
)
from gateway.sip.errors import AuthError

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that make the fuzz reach deep into the grammar instead of dying at the scheme.
_FRAGMENTS = st.sampled_from(
    [
        "Digest ",
        "digest ",
        "Basic ",
        "realm",
        "nonce",
        "username",
        "uri",
        "response",
        "qop",
        "nc",
        "cnonce",
        "algorithm",
        "opaque",
        "stale",
        "=",
        ",",
        " ",
        "\t",
        '"',
        "\\",
        '\\"',
        "auth",
        "auth-int",
        "MD5",
        "SHA-256-sess",
        "00000001",
        "true",
        "abc",
        "é",
        "\x00",
        "\r\n",
    ]
)
HEADERISH = st.one_of(
    st.text(max_size=200),
    st.lists(_FRAGMENTS, max_size=40).map("".join),
    st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=40).map("".join),
)

SERVER = DigestServer(key=b"fuzz-key-0123456789abcdef", realm="r")


def _lookup(user: str, algorithm: Algorithm) -> str | None:
    return "0" * algorithm.hex_length if user else None


@SETTINGS
@given(HEADERISH)
def test_parsers_raise_only_auth_error(value: str) -> None:
    """parse_auth_header / Challenge.parse / Credentials.parse: success or AuthError(400)."""
    for parse in (parse_auth_header, Challenge.parse, Credentials.parse):
        try:
            parse(value)
        except AuthError as exc:
            expected = 400
            assert expected == exc.status_code


@SETTINGS
@given(HEADERISH, st.sampled_from(["REGISTER", "INVITE"]), st.binary(max_size=20))
def test_verify_never_raises(value: str, method: str, body: bytes) -> None:
    """verify() on arbitrary text returns a verdict; MALFORMED always carries a 400 error."""
    verdict = SERVER.verify(method, value, _lookup, 0.0, body=body)
    assert verdict.outcome in set(Outcome)
    assert verdict.outcome is not Outcome.OK  # garbage never authenticates
    if verdict.outcome is Outcome.MALFORMED:
        assert verdict.error is not None
        expected = 400
        assert expected == verdict.error.status_code


# printable text including quotes, backslashes, commas and non-ASCII; no control characters
_VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")),
    min_size=0,
    max_size=30,
)
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=10)


@SETTINGS
@given(
    realm=_VALUE,
    nonce=_VALUE,
    algorithm=st.none() | st.sampled_from(list(Algorithm)),
    opaque=st.none() | _VALUE,
    qop=st.lists(st.sampled_from(["auth", "auth-int"]), max_size=2, unique=True).map(tuple),
    stale=st.booleans(),
    domain=st.none() | _VALUE,
)
def test_challenge_round_trip(
    realm: str,
    nonce: str,
    algorithm: Algorithm | None,
    opaque: str | None,
    qop: tuple[str, ...],
    stale: bool,
    domain: str | None,
) -> None:
    """Challenge.parse(str(c)) == c for any values (escaping of quotes and backslashes)."""
    challenge = Challenge(
        realm=realm,
        nonce=nonce,
        algorithm=algorithm,
        opaque=opaque,
        qop=qop,
        stale=stale,
        domain=domain,
    )
    assert challenge == Challenge.parse(str(challenge))


@SETTINGS
@given(
    username=_VALUE,
    realm=_VALUE,
    nonce=_VALUE,
    uri=_VALUE,
    response=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64),
    algorithm=st.none() | st.sampled_from([Algorithm.MD5, Algorithm.SHA256]),
    with_qop=st.booleans(),
    cnonce=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1),
    nc=st.integers(min_value=1, max_value=0xFFFFFFFF),
    opaque=st.none() | _VALUE,
)
def test_credentials_round_trip(
    username: str,
    realm: str,
    nonce: str,
    uri: str,
    response: str,
    algorithm: Algorithm | None,
    with_qop: bool,
    cnonce: str,
    nc: int,
    opaque: str | None,
) -> None:
    """Credentials.parse(str(c)) == c, with and without qop."""
    creds = Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=cnonce if with_qop else None,
        opaque=opaque,
        qop="auth" if with_qop else None,
        nc=f"{nc:08x}" if with_qop else None,
    )
    assert creds == Credentials.parse(str(creds))


@SETTINGS
@given(
    st.lists(st.tuples(_TOKEN, st.one_of(_TOKEN, _VALUE)), max_size=10, unique_by=lambda t: t[0])
)
def test_generic_params_parse_back(params: list[tuple[str, str]]) -> None:
    """Any list of distinct params written as name="escaped value" parses back verbatim."""
    text = "Digest " + ", ".join(
        f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for name, value in params
    )
    assert tuple(params) == parse_auth_header(text).params


def _valid_authorization() -> tuple[DigestServer, str]:
    counter = iter(range(1, 1_000_000))
    server = DigestServer(
        key=b"fuzz-key-0123456789abcdef",
        realm="r",
        random=lambda n: next(counter).to_bytes(n, "big"),
    )
    challenge = server.challenges(0.0)[0]
    creds = authorize(
        challenge, username="u", password="p", method="INVITE", uri="sip:x", cnonce="c", nc=1
    )
    return server, str(creds)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=400),
            st.integers(min_value=0, max_value=3),
            st.sampled_from(['"', ",", "=", " ", "\\", "a", "0", "\x00", "é"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_valid_credentials_never_crash(edits: list[tuple[int, int, str]]) -> None:
    """Edits of a valid Authorization value give a Verdict; OK only if the meaning is intact."""
    server, text = _valid_authorization()
    original = Credentials.parse(text)
    for pos, delete, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + delete :]

    def lookup(user: str, algorithm: Algorithm) -> str | None:
        return ha1(user, "r", "p", algorithm)

    verdict = server.verify("INVITE", text, lookup, 1.0)
    if verdict.outcome is Outcome.OK:
        mutated = Credentials.parse(text)
        # the hashed fields must be what the client signed (case of hex may differ)
        signed = (original.username, original.nonce, original.uri, original.nc, original.cnonce)
        assert signed == (
            mutated.username,
            mutated.nonce,
            mutated.uri,
            mutated.nc,
            mutated.cnonce,
        )
