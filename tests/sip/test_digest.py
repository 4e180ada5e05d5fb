"""Digest primitives: published test vectors, HA1 helpers, header parsing and formatting.

Vectors come from RFC 2617 §3.5 and RFC 7616 §3.9.1; each one is also
recomputed here with plain :mod:`hashlib` so a bug shared by the module and
its expectation cannot hide.
"""

from __future__ import annotations

import hashlib

import pytest

from gateway.sip.digest import (
    Algorithm,
    AuthHeader,
    Challenge,
    Credentials,
    authorize,
    compute_response,
    ha1,
    parse_auth_header,
    session_ha1,
)
from gateway.sip.errors import AuthError

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _rfc7616_challenge(algorithm: str) -> str:
    # RFC 7616 §3.9.1 challenge, unfolded to one line as a SIP parser hands it over.
    return (
        f'Digest realm="{RFC7616_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )


def _independent(algorithm: str, user: str, realm: str, pw: str, *rest: str) -> str:
    """Textbook qop=auth digest with hashlib only: KD(HA1, nonce:nc:cnonce:qop:HA2)."""
    nonce, nc, cnonce, qop, method, uri = rest

    def h(s: str) -> str:
        return hashlib.new(algorithm, s.encode()).hexdigest()

    return h(f"{h(f'{user}:{realm}:{pw}')}:{nonce}:{nc}:{cnonce}:{qop}:{h(f'{method}:{uri}')}")


def test_rfc2617_example_response() -> None:
    """RFC 2617 §3.5: Mufasa / "Circle Of Life" gives 6629fae4…; the client reproduces it."""
    expected = "6629fae49393a05397450978507c4ef1"
    independent = _independent(
        "md5",
        "Mufasa",
        "testrealm@host.com",
        "Circle Of Life",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "00000001",
        "0a4f113b",
        "auth",
        "GET",
        "/dir/index.html",
    )
    creds = authorize(
        RFC2617_CHALLENGE,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
        nc=1,
    )
    assert expected == independent
    assert expected == creds.response
    expected = "5ccc069c403ebaf9f0171e9517f40e41"
    assert expected == creds.opaque


def test_rfc2617_authorization_parses_and_verifies() -> None:
    """The RFC 2617 Authorization header parses into the fields the RFC lists."""
    creds = Credentials.parse(RFC2617_AUTHORIZATION)
    stored = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    computed = compute_response(
        algorithm=creds.effective_algorithm,
        stored_ha1=stored,
        method="GET",
        uri=creds.uri,
        nonce=creds.nonce,
        qop=creds.qop,
        nc=creds.nc,
        cnonce=creds.cnonce,
    )
    expected = ("Mufasa", "auth", "00000001", 1)
    assert expected == (
        creds.username,
        creds.qop,
        creds.nc,
        creds.nc_value,
    )
    assert creds.response == computed


@pytest.mark.parametrize(
    ("algorithm", "hash_name", "expected"),
    [
        ("MD5", "md5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "sha256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, hash_name: str, expected: str) -> None:
    """RFC 7616 §3.9.1: Mufasa / "Circle of Life", qop=auth, MD5 and SHA-256 responses."""
    independent = _independent(
        hash_name,
        "Mufasa",
        RFC7616_REALM,
        "Circle of Life",
        RFC7616_NONCE,
        "00000001",
        RFC7616_CNONCE,
        "auth",
        "GET",
        "/dir/index.html",
    )
    creds = authorize(
        _rfc7616_challenge(algorithm),
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
        nc=1,
    )
    assert expected == independent
    assert expected == creds.response
    assert Algorithm(algorithm) == creds.algorithm
    expected = "auth"  # "auth" preferred over "auth-int" when both are offered
    assert expected == creds.qop


def test_ha1_matches_hashlib_for_both_hashes() -> None:
    """ha1() is H(user:realm:password) with MD5 or SHA-256, and -sess stores the same HA1."""
    md5 = hashlib.md5(b"alice:dialgate:s3cret").hexdigest()
    sha = hashlib.sha256(b"alice:dialgate:s3cret").hexdigest()
    assert md5 == ha1("alice", "dialgate", "s3cret", Algorithm.MD5)
    assert md5 == ha1("alice", "dialgate", "s3cret", Algorithm.MD5_SESS)
    assert sha == ha1("alice", "dialgate", "s3cret", Algorithm.SHA256)
    assert sha == ha1("alice", "dialgate", "s3cret", Algorithm.SHA256_SESS)


def test_ha1_encodes_utf8() -> None:
    """Non-ASCII user names and passwords are hashed as UTF-8 (RFC 7616 §3.4.2)."""
    expected = hashlib.sha256("José:dialgate:pässword".encode()).hexdigest()
    assert expected == ha1("José", "dialgate", "pässword", Algorithm.SHA256)


@pytest.mark.parametrize(
    ("algorithm", "hash_name"), [(Algorithm.MD5_SESS, "md5"), (Algorithm.SHA256_SESS, "sha256")]
)
def test_session_algorithms_match_independent_computation(
    algorithm: Algorithm, hash_name: str
) -> None:
    """-sess: HA1 = H(H(user:realm:pw):nonce:cnonce), then the usual qop=auth digest."""

    def h(s: str) -> str:
        return hashlib.new(hash_name, s.encode()).hexdigest()

    base = h("bob:example.com:pw")
    sess = h(f"{base}:N1:C1")
    expected = h(f"{sess}:N1:00000002:C1:auth:{h('INVITE:sip:+8613800000001@example.com')}")
    challenge = Challenge(realm="example.com", nonce="N1", algorithm=algorithm, qop=("auth",))
    creds = authorize(
        challenge,
        username="bob",
        password="pw",
        method="INVITE",
        uri="sip:+8613800000001@example.com",
        cnonce="C1",
        nc=2,
    )
    assert sess == session_ha1(base, "N1", "C1", algorithm)
    assert expected == creds.response
    expected = "00000002"
    assert expected == creds.nc


def test_auth_int_hashes_the_body() -> None:
    """qop=auth-int: HA2 = H(method:uri:H(body)) (RFC 7616 §3.4.3)."""

    def h(s: str | bytes) -> str:
        return hashlib.md5(s.encode() if isinstance(s, str) else s).hexdigest()

    body = b"v=0\r\n"
    ha2 = h(f"INVITE:sip:x@y:{h(body)}")
    expected = h(f"{h('u:r:p')}:n:00000001:c:auth-int:{ha2}")
    creds = authorize(
        Challenge(realm="r", nonce="n", qop=("auth-int",)),
        username="u",
        password="p",
        method="INVITE",
        uri="sip:x@y",
        body=body,
        cnonce="c",
    )
    assert ("auth-int", expected) == (creds.qop, creds.response)


def test_rfc2069_no_qop() -> None:
    """Without qop in the challenge, response = H(HA1:nonce:HA2) and no nc/cnonce is sent."""

    def h(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    expected = h(f"{h('u:r:p')}:abc:{h('REGISTER:sip:r')}")
    creds = authorize(
        'Digest realm="r", nonce="abc"',
        username="u",
        password="p",
        method="REGISTER",
        uri="sip:r",
        cnonce="ignored",
    )
    value = str(creds)
    assert expected == creds.response
    absent = (None, None, None)
    assert absent == (creds.qop, creds.nc, creds.cnonce)
    assert "nc=" not in value and "cnonce" not in value and "algorithm" not in value


def test_authorize_with_stored_ha1_equals_password() -> None:
    """A client configured with HA1 instead of the password produces the same response."""
    ch = Challenge(realm="dialgate", nonce="n", algorithm=Algorithm.SHA256, qop=("auth",))
    with_pw = authorize(ch, username="a", password="pw", method="INVITE", uri="sip:x", cnonce="c")
    with_ha1 = authorize(
        ch,
        username="a",
        stored_ha1=ha1("a", "dialgate", "pw", Algorithm.SHA256),
        method="INVITE",
        uri="sip:x",
        cnonce="c",
    )
    assert with_pw == with_ha1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "password or an HA1"),
        ({"password": "p", "cnonce": None}, "cnonce"),
        ({"stored_ha1": "zz"}, "HA1"),
        ({"password": "p", "cnonce": "c", "nc": 0}, "nonce count"),
        ({"password": "p", "cnonce": "c\r\nVia: x"}, "control"),
    ],
)
def test_authorize_refuses_bad_inputs(kwargs: dict[str, object], fragment: str) -> None:
    """authorize() reports missing secrets, missing cnonce, bad HA1, bad nc, CRLF injection."""
    ch = Challenge(realm="r", nonce="n", qop=("auth",))
    with pytest.raises(AuthError) as info:
        authorize(ch, username="u", method="INVITE", uri="sip:x", **kwargs)  # type: ignore[arg-type]
    assert fragment in info.value.detail


def test_authorize_refuses_unknown_qop() -> None:
    """A challenge offering only an unknown qop is refused cleanly."""
    with pytest.raises(AuthError):
        authorize(
            'Digest realm="r", nonce="n", qop="auth-conf"',
            username="u",
            password="p",
            method="INVITE",
            uri="sip:x",
            cnonce="c",
        )


# ---------------------------------------------------------------- parsing


def test_parse_challenge_fields_and_case_insensitivity() -> None:
    """Scheme, param names and algorithm/stale values are case-insensitive."""
    ch = Challenge.parse(
        'dIgEsT REALM="sip.example", Nonce="abc", ALGORITHM=sha-256-SESS, '
        'QOP="Auth , auth-int", Stale=TRUE, opaque="o", domain="sip:a sip:b"'
    )
    expected = Challenge(
        realm="sip.example",
        nonce="abc",
        algorithm=Algorithm.SHA256_SESS,
        opaque="o",
        qop=("auth", "auth-int"),
        stale=True,
        domain="sip:a sip:b",
    )
    assert expected == ch


def test_parse_quoted_escapes_commas_and_whitespace() -> None:
    """Escapes resolve, commas and '=' inside quotes stay, tabs and odd spacing are allowed."""
    header = parse_auth_header(
        'Digest\trealm = "a, \\"quoted\\" b=c\\\\" ,,  nonce="n\\x",opaque=tok , '
    )
    expected = AuthHeader(
        scheme="Digest",
        params=(("realm", 'a, "quoted" b=c\\'), ("nonce", "nx"), ("opaque", "tok")),
        quoted=frozenset({"realm", "nonce"}),
    )
    assert expected == header


def test_parse_keeps_non_ascii_in_quoted_strings() -> None:
    """UTF8-NONASCII is qdtext (RFC 3261 §25.1): a realm may be non-ASCII."""
    expected = "réseau"
    assert expected == Challenge.parse('Digest realm="réseau", nonce="n"').realm


def test_unknown_scheme_is_reported_not_parsed() -> None:
    """An unknown scheme is returned as such, with its raw text, for a 401 with a Digest challenge."""
    header = parse_auth_header("NoOneKnowsThisScheme opaque-data=here")
    expected = ("NoOneKnowsThisScheme", False, "opaque-data=here", ())
    assert expected == (
        header.scheme,
        header.is_digest,
        header.raw,
        header.params,
    )
    # token68 forms of other schemes are not an error either
    expected = "Basic"
    assert expected == parse_auth_header("Basic dXNlcjpwYXNz==").scheme


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        '"Digest" realm="x"',
        'Digest,realm="x"',
        'Digest realm="x',  # unterminated quoted-string
        'Digest realm="x\\',  # escape at the end
        'Digest realm="a\x00b"',  # control character inside quotes
        'Digest realm="a\\\rb"',  # quoted-pair may not escape CR
        "Digest realm",
        "Digest realm=",
        "Digest realm= ,nonce=x",
        'Digest realm="x" nonce="y"',  # missing comma
        'Digest realm="x", realm="y"',  # duplicate param
        "Digest =x",
        "Digest realm=a/b",  # '/' is not a token character
        "Digest " + ",".join(f"p{i}=v" for i in range(100)),  # too many params
        "Digest realm=" + "x" * 9000,  # too long
    ],
)
def test_malformed_headers_raise_auth_error_400(value: str) -> None:
    """Malformed auth headers raise AuthError with status 400, never another exception."""
    with pytest.raises(AuthError) as info:
        Challenge.parse(value)
    expected = 400
    assert expected == info.value.status_code


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('Digest realm="r", nonce="n"', "username"),
        ('Digest username="u", realm="r", nonce="n", uri="sip:x"', "response"),
        ('Digest username="u", realm="r", nonce="n", uri="sip:x", response="zz"', "hex"),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", qop=auth',
            "nc and cnonce",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", '
            'qop=auth, nc=1, cnonce="c"',
            "8 hex",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", nc=00000001',
            "without qop",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", '
            "algorithm=SHA-512-256",
            "algorithm",
        ),
        (
            'Digest username*=UTF-8\'\'J%C3%A4, realm="r", nonce="n", uri="u", response="ab"',
            "username*",
        ),
        ('Basic realm="r"', "not Digest"),
    ],
)
def test_malformed_credentials(value: str, fragment: str) -> None:
    """Credentials missing required parts (e.g. sipvicious' qop without nc/cnonce) are 400."""
    with pytest.raises(AuthError) as info:
        Credentials.parse(value)
    expected = 400
    assert expected == info.value.status_code
    assert fragment in info.value.detail


def test_challenge_without_nonce_is_malformed() -> None:
    """A Digest challenge needs realm and nonce."""
    with pytest.raises(AuthError):
        Challenge.parse('Digest realm="r"')


# ---------------------------------------------------------------- formatting


def test_challenge_format_round_trip() -> None:
    """str(Challenge) parses back to an equal value, with quotes escaped."""
    ch = Challenge(
        realm='odd "realm" \\ here',
        nonce="n0",
        algorithm=Algorithm.SHA256,
        opaque="op",
        qop=("auth", "auth-int"),
        stale=True,
        domain="sip:example.com",
    )
    assert ch == Challenge.parse(str(ch))


def test_challenge_format_is_what_phones_expect() -> None:
    """Token params unquoted (algorithm, stale), qop-options quoted (RFC 3261 §25.1)."""
    ch = Challenge(realm="r", nonce="n", algorithm=Algorithm.MD5, opaque="o", qop=("auth",))
    expected = 'Digest realm="r", nonce="n", opaque="o", algorithm=MD5, qop="auth"'
    assert expected == str(ch)


def test_credentials_format_round_trip_and_quoting() -> None:
    """str(Credentials) parses back equal; qop and nc are tokens, response is quoted."""
    creds = Credentials(
        username='we"ird',
        realm="r",
        nonce="n",
        uri="sip:+8613800000001@127.0.0.1:5070;transport=udp",
        response="0123abcd",
        algorithm=Algorithm.SHA256_SESS,
        cnonce="c",
        opaque="o",
        qop="auth",
        nc="0000000a",
    )
    text = str(creds)
    assert creds == Credentials.parse(text)
    assert "qop=auth, nc=0000000a" in text
    assert 'response="0123abcd"' in text
    expected = 10
    assert expected == creds.nc_value


def test_format_refuses_crlf_injection() -> None:
    """A value with CR/LF is never written into a header line."""
    with pytest.raises(AuthError):
        str(Challenge(realm="r\r\nX-Evil: 1", nonce="n"))
    with pytest.raises(AuthError):
        str(Credentials(username="u\n", realm="r", nonce="n", uri="u", response="00"))


def test_algorithm_properties() -> None:
    """Algorithm parsing is case-insensitive; base/session/hex length are consistent."""
    expected = Algorithm.SHA256_SESS
    assert expected == Algorithm.parse("sha-256-SESS")
    expected = (Algorithm.SHA256, True, 64)
    assert expected == (
        Algorithm.SHA256_SESS.base,
        Algorithm.SHA256_SESS.is_session,
        Algorithm.SHA256_SESS.hex_length,
    )
    expected = (Algorithm.MD5, False, 32)
    assert expected == (
        Algorithm.MD5.base,
        Algorithm.MD5.is_session,
        Algorithm.MD5.hex_length,
    )
    with pytest.raises(AuthError):
        Algorithm.parse("SHA-512-256")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"algorithm": Algorithm.MD5_SESS, "qop": "auth", "nc": "00000001"}, "requires a cnonce"),
        ({"qop": "auth-conf", "nc": "00000001", "cnonce": "c"}, "unsupported qop"),
        ({"qop": "auth"}, "nc and cnonce"),
    ],
)
def test_compute_response_refuses_incomplete_inputs(
    kwargs: dict[str, object], fragment: str
) -> None:
    """compute_response() names what is missing instead of hashing a wrong string."""
    args: dict[str, object] = {
        "algorithm": Algorithm.MD5,
        "stored_ha1": "0" * 32,
        "method": "INVITE",
        "uri": "sip:x",
        "nonce": "n",
        **kwargs,
    }
    with pytest.raises(AuthError) as info:
        compute_response(**args)  # type: ignore[arg-type]
    assert fragment in info.value.detail


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('Digest realm="r", nonce="n", qop="auth,,auth-int"', "qop-options"),
        ('Digest realm="r", nonce="n", qop="auth int"', "qop-options"),
    ],
)
def test_malformed_qop_options(value: str, fragment: str) -> None:
    """qop-options must be a comma list of tokens."""
    with pytest.raises(AuthError) as info:
        Challenge.parse(value)
    assert fragment in info.value.detail


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (
            'Digest username="u", realm="r", nonce="n", uri="u", response="ab", '
            'qop=auth, nc=00000001, cnonce=""',
            "empty cnonce",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="u", response="ab", algorithm=MD5-sess',
            "without cnonce",
        ),
    ],
)
def test_more_malformed_credentials(value: str, fragment: str) -> None:
    """Empty cnonce, and a -sess algorithm with no cnonce to build the session key from."""
    with pytest.raises(AuthError) as info:
        Credentials.parse(value)
    assert fragment in info.value.detail


def test_userhash_flag_round_trips() -> None:
    """userhash=true (RFC 7616 §3.4.4) is parsed and written back."""
    creds = Credentials(
        username="ab" * 32, realm="r", nonce="n", uri="u", response="00", userhash=True
    )
    text = str(creds)
    assert "userhash=true" in text
    assert creds == Credentials.parse(text)


def test_format_refuses_undecodable_octets() -> None:
    """A lone surrogate (an undecodable octet) cannot be written into a header."""
    with pytest.raises(AuthError) as info:
        str(Challenge(realm="r\udcff", nonce="n"))
    assert "UTF-8" in info.value.detail


def test_session_challenge_without_qop_is_refused() -> None:
    """A -sess challenge without qop cannot be answered (the cnonce would have nowhere to go)."""
    with pytest.raises(AuthError):
        authorize(
            'Digest realm="r", nonce="n", algorithm=MD5-sess',
            username="u",
            password="p",
            method="INVITE",
            uri="sip:x",
            cnonce="c",
        )
