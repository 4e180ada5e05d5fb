"""Digest strictness (issue 15 item 6): uri = Request-URI, the nonce's algorithm, opaque echoed.

RFC 3261 §22.4 / RFC 2617 §3.2.2.5: the ``uri`` must name the Request-URI's
resource (compared as URIs; a mismatch is 400). A nonce carries the algorithm
of the challenge that issued it (a SHA-256 nonce answered with MD5 is
refused). The opaque sent with every challenge must come back unchanged.
"""

from __future__ import annotations

import pytest

from gateway.callpath.auth import digest_uri_matches
from gateway.sip.digest import (
    RFC8760_ALGORITHMS,
    Algorithm,
    Challenge,
    DigestServer,
    Outcome,
    authorize,
    ha1,
)
from gateway.sip.uri import URI

KEY = b"strict-test-key-0123456789abcdef"
REALM = "dialgate"


def lookup(user: str, algorithm: Algorithm) -> str | None:
    return ha1(user, REALM, "s3cret", algorithm) if user == "alice" else None


def server() -> DigestServer:
    return DigestServer(key=KEY, realm=REALM, algorithms=RFC8760_ALGORITHMS)


def creds_for(challenge: Challenge, uri: str = "sip:gw.test", method: str = "REGISTER") -> str:
    return str(
        authorize(
            challenge, username="alice", password="s3cret", method=method, uri=uri, cnonce="c0ffee"
        )
    )


def test_sha256_nonce_answered_with_md5_is_refused() -> None:
    """The nonce of the SHA-256 challenge, answered with algorithm=MD5: algorithm-mismatch."""
    srv = server()
    sha, md5 = srv.challenges(100.0)
    forged = Challenge(
        realm=REALM, nonce=sha.nonce, algorithm=Algorithm.MD5, opaque=sha.opaque, qop=("auth",)
    )
    verdicts = [
        (v.outcome, v.reason)
        for v in (
            srv.verify("REGISTER", creds_for(forged), lookup, 101.0),
            srv.verify("REGISTER", creds_for(sha), lookup, 101.0),
            srv.verify("REGISTER", creds_for(md5), lookup, 101.0),
        )
    ]
    expected = [(Outcome.FAILED, "algorithm-mismatch"), (Outcome.OK, "ok"), (Outcome.OK, "ok")]
    assert expected == verdicts


def test_nonce_algorithm_is_recoverable() -> None:
    """nonce_algorithm() names the challenge's algorithm; a foreign nonce has none."""
    srv = server()
    sha, md5 = srv.challenges(5.0)
    assert (Algorithm.SHA256, Algorithm.MD5, None) == (
        srv.nonce_algorithm(sha.nonce),
        srv.nonce_algorithm(md5.nonce),
        DigestServer(key=b"another-key-0123456789", realm=REALM).nonce_algorithm(sha.nonce),
    )


def test_uri_mismatch_is_400_before_any_password_check() -> None:
    """uri_matches refusing the credentials' uri: MALFORMED uri-mismatch (400), even with the
    right password; accepted when it matches."""
    srv = server()
    _, md5 = srv.challenges(0.0)
    value = creds_for(md5, uri="sip:13800000000@gw.test", method="INVITE")
    wrong = srv.verify(
        "INVITE", value, lookup, 1.0, uri_matches=lambda u: u == "sip:8613900000000@gw.test"
    )
    right = srv.verify(
        "INVITE", value, lookup, 1.0, uri_matches=lambda u: u == "sip:13800000000@gw.test"
    )
    assert (Outcome.MALFORMED, "uri-mismatch", 400) == (
        wrong.outcome,
        wrong.reason,
        srv.answer(wrong, 1.0).status,  # type: ignore[union-attr]
    )
    assert Outcome.OK == right.outcome


def test_missing_opaque_is_refused() -> None:
    """Credentials without the challenge's opaque: FAILED missing-opaque (a fresh challenge)."""
    srv = server()
    _, md5 = srv.challenges(0.0)
    bare = Challenge(realm=REALM, nonce=md5.nonce, algorithm=Algorithm.MD5, qop=("auth",))
    verdict = srv.verify("REGISTER", creds_for(bare), lookup, 1.0)
    assert (Outcome.FAILED, "missing-opaque") == (verdict.outcome, verdict.reason)


LOCAL_HOSTS = {"127.0.0.1", "gw.test"}


def is_local(uri: URI) -> bool:
    return uri.host.lower() in LOCAL_HOSTS and uri.port in (None, 5070)


@pytest.mark.parametrize(
    ("request_uri", "digest_uri", "expected"),
    [
        ("sip:alice@gw.test", "sip:alice@gw.test", True),
        ("sip:alice@gw.test", "SIP:alice@GW.TEST", True),  # scheme and host case
        ("sip:alice@gw.test", "sip:%61lice@gw.test", True),  # escaped user character
        ("sip:alice@gw.test", "sip:alice@gw.test:5060", True),  # explicit default port
        ("sips:alice@gw.test", "sips:alice@gw.test:5061", True),
        ("sip:alice@gw.test;transport=udp", "sip:alice@gw.test", True),  # param on one side
        ("sip:alice@gw.test", "sip:alice@gw.test;transport=tcp", True),
        ("sip:alice@[::1]:5070", "sip:alice@[::1]:5070", True),
        ("sip:alice@gw.test", "sip:Alice@gw.test", False),  # user is case-sensitive
        ("sip:alice@gw.test", "sip:bob@gw.test", False),
        ("sip:alice@gw.test", "sip:alice@other.test", False),
        ("sip:alice@gw.test", "sip:alice@gw.test:5080", False),
        ("sip:alice@gw.test", "sips:alice@gw.test", False),
        ("sip:alice@gw.test;transport=udp", "sip:alice@gw.test;transport=tcp", False),
        ("sip:13800000000@gw.test", "sip:8613800000000@gw.test", False),
        ("sip:alice@gw.test", "not a uri", False),
        ("sip:alice@gw.test", "tel:+8613800000000", False),
        ("tel:+8613800000000", "tel:+8613800000000", True),
    ],
)
def test_digest_uri_matches(request_uri: str, digest_uri: str, expected: bool) -> None:
    """Compared as URIs (RFC 3261 §19.1.4), equivalent spellings tolerated."""
    assert expected == digest_uri_matches(URI.parse(request_uri), digest_uri)


@pytest.mark.parametrize(
    ("digest_uri", "with_local", "expected"),
    [
        ("sip:127.0.0.1:5070", True, True),  # SIPp: sip:<remote ip>:<port>
        ("sip:gw.test", True, True),
        ("sip:127.0.0.1:5070", False, False),  # strict: not the Request-URI
        ("sip:198.51.100.1:5070", True, False),  # not this gateway
        ("sip:bob@127.0.0.1:5070", True, False),  # has a user: must be the Request-URI
    ],
)
def test_gateway_form_for_sipp(digest_uri: str, with_local: bool, expected: bool) -> None:
    """A user-less uri naming this gateway passes only when the gateway form is allowed."""
    ruri = URI.parse("sip:13800000000@127.0.0.1:5070")
    local = is_local if with_local else None
    assert expected == digest_uri_matches(ruri, digest_uri, local=local)
