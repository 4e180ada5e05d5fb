"""DigestServer: signed nonces, expiry, replay, outcomes and the answers they produce.

Every test drives the server with explicit ``now`` values and a deterministic
salt source: nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable

import pytest

from gateway.sip.digest import (
    RFC8760_ALGORITHMS,
    Algorithm,
    AuthAnswer,
    Challenge,
    Credentials,
    DigestServer,
    Outcome,
    Verdict,
    authorize,
    ha1,
)

REALM = "dialgate.test"
KEY = b"0123456789abcdef0123456789abcdef"
USERS = {"alice": "s3cret", "bob": "hunter2"}


def _counter_random() -> Callable[[int], bytes]:
    """A salt source returning 1, 2, 3, ... as big-endian bytes: deterministic and distinct."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def lookup(user: str, algorithm: Algorithm) -> str | None:
    """HA1 store built the way the config stores ha1_md5 / ha1_sha256."""
    password = USERS.get(user)
    return None if password is None else ha1(user, REALM, password, algorithm)


def make_server(**kwargs: object) -> DigestServer:
    """A server with a fixed key and deterministic salts, offering SHA-256 then MD5 unless told."""
    kwargs.setdefault("algorithms", RFC8760_ALGORITHMS)
    return DigestServer(key=KEY, realm=REALM, random=_counter_random(), **kwargs)  # type: ignore[arg-type]


def answer_challenge(
    challenge: Challenge,
    *,
    user: str = "alice",
    password: str | None = None,
    method: str = "REGISTER",
    uri: str = "sip:dialgate.test",
    nc: int = 1,
    cnonce: str = "c0ffee",
) -> str:
    """The Authorization value a correct client would send."""
    return str(
        authorize(
            challenge,
            username=user,
            password=USERS.get(user, "x") if password is None else password,
            method=method,
            uri=uri,
            cnonce=cnonce,
            nc=nc,
        )
    )


def challenge_for(server: DigestServer, now: float, algorithm: Algorithm) -> Challenge:
    """The server's challenge for one algorithm, as a client would pick it."""
    for ch in server.challenges(now):
        if ch.algorithm is algorithm:
            return ch
    raise AssertionError(f"{algorithm} not offered")


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_round_trip_every_algorithm(algorithm: Algorithm) -> None:
    """A client answering the server's challenge is accepted, for each algorithm."""
    server = make_server(algorithms=(algorithm,))
    (challenge,) = server.challenges(10.0)
    value = answer_challenge(challenge)
    verdict = server.verify("REGISTER", value, lookup, 11.0)
    expected = Verdict(Outcome.OK, username="alice", reason="ok")
    assert expected == verdict
    assert server.answer(verdict, 11.0) is None


def test_default_offers_md5_only() -> None:
    """By default only MD5 is offered: SIPp and many phones read only the first challenge."""
    server = DigestServer(key=KEY, realm=REALM)
    (only,) = [Challenge.parse(v) for v in server.challenge_values(0.0)]
    expected = (Algorithm.MD5, ("auth",), server.opaque)
    assert expected == (only.algorithm, only.qop, only.opaque)


def test_rfc8760_offers_sha256_first_then_md5() -> None:
    """RFC 8760: SHA-256 is listed before MD5; each value has its own nonce and the opaque."""
    server = make_server()
    values = server.challenge_values(5.0)
    parsed = [Challenge.parse(v) for v in values]
    expected = [Algorithm.SHA256, Algorithm.MD5]
    assert expected == [c.algorithm for c in parsed]
    assert parsed[0].nonce != parsed[1].nonce
    assert {server.opaque} == {c.opaque for c in parsed}
    assert all(c.qop == ("auth",) and not c.stale for c in parsed)


def test_nonce_embeds_issue_time() -> None:
    """The nonce carries its issue time, recoverable only for nonces this server signed."""
    server = make_server()
    nonce = server.make_nonce(1234.567)
    expected = 1234.567
    assert expected == server.nonce_issued_at(nonce)
    other = DigestServer(key=b"another key of 32 bytes........!", realm=REALM)
    assert other.nonce_issued_at(nonce) is None


def test_stale_after_expiry_then_fresh_challenge_works() -> None:
    """An expired nonce with a correct response is STALE; the answer carries stale=true."""
    server = make_server(nonce_ttl=60.0)
    challenge = challenge_for(server, 100.0, Algorithm.SHA256)
    value = answer_challenge(challenge)
    ok = server.verify("REGISTER", value, lookup, 160.0)
    stale = server.verify("REGISTER", answer_challenge(challenge, nc=2), lookup, 160.5)
    expected = (Outcome.OK, Outcome.STALE, "nonce-expired")
    assert expected == (ok.outcome, stale.outcome, stale.reason)
    answer = server.answer(stale, 160.5)
    assert answer is not None
    fresh = [Challenge.parse(v) for name, v in answer.headers if name == "WWW-Authenticate"]
    expected_status = 401
    assert expected_status == answer.status
    assert all(c.stale for c in fresh) and len(fresh) == 2
    retry = answer_challenge(fresh[0])
    assert server.verify("REGISTER", retry, lookup, 161.0).ok


def test_expired_nonce_with_wrong_password_is_failed_not_stale() -> None:
    """stale=true only for a valid digest (RFC 7616 §3.3): a wrong password stays FAILED."""
    server = make_server(nonce_ttl=60.0)
    challenge = challenge_for(server, 0.0, Algorithm.MD5)
    value = answer_challenge(challenge, password="wrong")
    verdict = server.verify("REGISTER", value, lookup, 1000.0)
    expected = Outcome.FAILED
    assert expected == verdict.outcome


def test_nonce_from_the_future_is_stale() -> None:
    """A signed nonce issued after ``now`` (clock restarted) is answered as stale."""
    server = make_server()
    challenge = challenge_for(server, 500.0, Algorithm.SHA256)
    verdict = server.verify("REGISTER", answer_challenge(challenge), lookup, 10.0)
    expected = (Outcome.STALE, "nonce-from-future")
    assert expected == (verdict.outcome, verdict.reason)


def test_nc_replay_rejected_and_increasing_nc_accepted() -> None:
    """Per nonce the nc must strictly increase: the same request replayed is refused."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    first = answer_challenge(challenge, nc=1)
    outcomes = [
        server.verify("REGISTER", first, lookup, 1.0).outcome,
        server.verify("REGISTER", first, lookup, 2.0).outcome,  # replay
        server.verify("REGISTER", answer_challenge(challenge, nc=3), lookup, 3.0).outcome,
        server.verify("REGISTER", answer_challenge(challenge, nc=2), lookup, 4.0).outcome,  # older
        server.verify("REGISTER", answer_challenge(challenge, nc=4), lookup, 5.0).outcome,
    ]
    expected = [Outcome.OK, Outcome.STALE, Outcome.OK, Outcome.STALE, Outcome.OK]
    assert expected == outcomes


def test_failed_attempt_does_not_consume_nc() -> None:
    """A wrong-password try with nc=1 does not stop the real user from using nc=1."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    bad = server.verify("REGISTER", answer_challenge(challenge, password="nope"), lookup, 1.0)
    good = server.verify("REGISTER", answer_challenge(challenge), lookup, 1.0)
    expected = (Outcome.FAILED, Outcome.OK)
    assert expected == (bad.outcome, good.outcome)


def test_replay_lru_is_bounded_and_evicted_nonces_are_stale() -> None:
    """Memory stays bounded; a nonce that fell out of the LRU can never be replayed."""
    server = make_server(max_tracked_nonces=3)
    challenges = [challenge_for(server, float(t), Algorithm.SHA256) for t in range(5)]
    first = answer_challenge(challenges[0])
    results = [server.verify("REGISTER", first, lookup, 10.0).outcome]
    for ch in challenges[1:]:
        results.append(server.verify("REGISTER", answer_challenge(ch), lookup, 10.0).outcome)
    bound = 3
    assert bound == server.tracked_nonces
    # nonce 0 was evicted: even a "new" nc on it is refused as stale, never accepted
    later = server.verify("REGISTER", answer_challenge(challenges[0], nc=9), lookup, 11.0)
    # a nonce issued after every evicted one is still fresh
    newer = challenge_for(server, 6.0, Algorithm.SHA256)
    results += [
        later.outcome,
        server.verify("REGISTER", answer_challenge(newer), lookup, 11.0).outcome,
    ]
    expected = [Outcome.OK] * 5 + [Outcome.STALE, Outcome.OK]
    assert expected == results


def test_wrong_password_and_unknown_user_are_indistinguishable() -> None:
    """Both get FAILED and byte-for-byte the same kind of answer (status, header names, params)."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    wrong_pw = server.verify("REGISTER", answer_challenge(challenge, password="x"), lookup, 1.0)
    unknown = server.verify(
        "REGISTER", answer_challenge(challenge, user="mallory", password="x"), lookup, 1.0
    )
    expected = (Outcome.FAILED, Outcome.FAILED)
    assert expected == (wrong_pw.outcome, unknown.outcome)
    internal = ("wrong-response", "unknown-user")  # for local logs only
    assert internal == (wrong_pw.reason, unknown.reason)

    def shape(answer: AuthAnswer | None) -> tuple[object, ...]:
        assert answer is not None
        challenges = [Challenge.parse(v) for _, v in answer.headers]
        return (
            answer.status,
            answer.reason,
            [n for n, _ in answer.headers],
            [(c.realm, c.algorithm, c.qop, c.stale, c.opaque) for c in challenges],
        )

    a = server.answer(wrong_pw, 2.0)
    b = server.answer(unknown, 2.0)
    assert shape(a) == shape(b)
    assert a is not None and b is not None and a.headers != b.headers  # fresh nonces each time


def test_unknown_user_with_hex_lookup_garbage_fails() -> None:
    """A lookup returning something that is not an HA1 of the right length is an unknown user."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    verdict = server.verify("REGISTER", answer_challenge(challenge), lambda u, a: "abcd", 1.0)
    expected = (Outcome.FAILED, "unknown-user")
    assert expected == (verdict.outcome, verdict.reason)


def _tamper(nonce: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(nonce + "="))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 7, 8, 20, 31])
def test_tampered_nonce_rejected(index: int) -> None:
    """Flipping any bit of the nonce (time, salt or MAC) makes it not ours: FAILED, not stale."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    forged = Challenge(
        realm=challenge.realm,
        nonce=_tamper(challenge.nonce, index),
        algorithm=challenge.algorithm,
        opaque=challenge.opaque,
        qop=challenge.qop,
    )
    verdict = server.verify("REGISTER", answer_challenge(forged), lookup, 1.0)
    expected = (Outcome.FAILED, "bad-nonce")
    assert expected == (verdict.outcome, verdict.reason)


def test_nonce_from_another_realm_or_key_rejected() -> None:
    """Nonces are bound to key and realm: a nonce of another server is not accepted."""
    other = DigestServer(key=KEY, realm="other.realm", random=_counter_random())
    foreign = other.challenges(0.0)[0]
    server = make_server()
    borrowed = Challenge(
        realm=REALM,
        nonce=foreign.nonce,
        algorithm=Algorithm.SHA256,
        qop=("auth",),
        opaque=server.opaque,
    )
    verdict = server.verify("REGISTER", answer_challenge(borrowed), lookup, 1.0)
    expected = "bad-nonce"
    assert expected == verdict.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no-credentials"),
        ([], "no-credentials"),
        ("NoOneKnowsThisScheme opaque-data=here", "unsupported-scheme"),
        ("Basic YWxpY2U6czNjcmV0", "unsupported-scheme"),
    ],
)
def test_missing_or_foreign_scheme_gets_a_digest_challenge(
    value: str | list[str] | None, reason: str
) -> None:
    """No credentials or an unknown scheme: FAILED, answered 401 with Digest challenges."""
    server = make_server()
    verdict = server.verify("REGISTER", value, lookup, 0.0)
    answer = server.answer(verdict, 0.0)
    expected = (Outcome.FAILED, reason)
    expected_status = 401
    assert expected == (verdict.outcome, verdict.reason)
    assert answer is not None
    assert expected_status == answer.status
    assert all(Challenge.parse(v).realm == REALM for _, v in answer.headers)


def test_wrong_realm_is_failed() -> None:
    """Credentials for another realm are not ours to check: FAILED (fresh challenge)."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    moved = Challenge(
        realm="elsewhere", nonce=challenge.nonce, algorithm=Algorithm.SHA256, qop=("auth",)
    )
    verdict = server.verify("REGISTER", answer_challenge(moved), lookup, 1.0)
    expected = (Outcome.FAILED, "wrong-realm")
    assert expected == (verdict.outcome, verdict.reason)


def test_several_authorization_values_pick_our_realm() -> None:
    """RFC 3261 §22.3: with credentials for several realms, the one for ours is checked."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.MD5)
    ours = answer_challenge(challenge)
    theirs = 'Digest username="x", realm="upstream", nonce="n", uri="sip:a", response="00"'
    verdict = server.verify("INVITE", [theirs, ours], lookup, 1.0)
    assert verdict.ok is False  # method differs from the one hashed (REGISTER)
    ok = server.verify(
        "INVITE", [theirs, answer_challenge(challenge, method="INVITE", nc=2)], lookup, 1.0
    )
    assert ok.ok


@pytest.mark.parametrize(
    "value",
    [
        # sipvicious: qop=auth but no nc/cnonce
        'Digest username="100", realm="dialgate.test", nonce="abc", uri="sip:1.2.3.4", '
        'response="5f1fd3b5bd1d8a2c7a5c0f0e0e0e0e0e", qop=auth',
        'Digest username="a"',
        'Digest realm="unterminated',
        "Digest ,,,=",
    ],
)
def test_malformed_credentials_answered_400(value: str) -> None:
    """Malformed credentials give MALFORMED and a 400 answer, never an exception."""
    server = make_server()
    verdict = server.verify("REGISTER", value, lookup, 0.0)
    answer = server.answer(verdict, 0.0)
    expected_status = 400
    expected = Outcome.MALFORMED
    assert expected == verdict.outcome
    assert verdict.error is not None
    assert expected_status == verdict.error.status_code
    assert AuthAnswer(400, "Bad Request") == answer


def test_sipp_style_uri_is_verified_against_what_the_client_sent() -> None:
    """SIPp hashes uri=sip:<ip>:<port>, not the Request-URI; the server accepts it (§22.4)."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.MD5)
    value = answer_challenge(challenge, method="INVITE", uri="sip:127.0.0.1:40123")
    verdict = server.verify("INVITE", value, lookup, 1.0)
    assert verdict.ok


def test_method_is_part_of_the_digest() -> None:
    """A REGISTER digest cannot be reused for an INVITE (RFC 3261 §22.4 A2 = Method:uri)."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    value = answer_challenge(challenge, method="REGISTER")
    expected = (Outcome.FAILED, "wrong-response")
    verdict = server.verify("INVITE", value, lookup, 1.0)
    assert expected == (verdict.outcome, verdict.reason)


def test_response_compared_case_insensitively() -> None:
    """Upper-case hex in response is the same digest."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    creds = Credentials.parse(answer_challenge(challenge))
    upper = Credentials(
        username=creds.username,
        realm=creds.realm,
        nonce=creds.nonce,
        uri=creds.uri,
        response=creds.response.upper(),
        algorithm=creds.algorithm,
        cnonce=creds.cnonce,
        opaque=creds.opaque,
        qop=creds.qop,
        nc=creds.nc,
    )
    assert server.verify("REGISTER", str(upper), lookup, 1.0).ok


def test_wrong_or_missing_opaque_fails() -> None:
    """An opaque that is not ours fails, and so does none at all (issue 15: opaque echoed)."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    creds = authorize(
        challenge, username="alice", password="s3cret", method="REGISTER", uri="sip:x", cnonce="c"
    )
    fields = {f: getattr(creds, f) for f in Credentials.__dataclass_fields__}
    wrong = Credentials(**{**fields, "opaque": "not-ours"})
    absent = Credentials(**{**fields, "opaque": None})
    results = (
        server.verify("REGISTER", str(wrong), lookup, 1.0).reason,
        server.verify("REGISTER", str(absent), lookup, 1.0).reason,
        make_server(require_opaque=False).verify("REGISTER", str(absent), lookup, 1.0).outcome,
    )
    expected = ("wrong-opaque", "missing-opaque", Outcome.OK)
    assert expected == results


def test_algorithm_not_offered_fails() -> None:
    """An MD5 answer to a SHA-256-only server is refused with a fresh challenge."""
    server = make_server(algorithms=(Algorithm.SHA256,))
    md5_only = Challenge(
        realm=REALM, nonce=server.make_nonce(0.0), algorithm=Algorithm.MD5, qop=("auth",)
    )
    verdict = server.verify("REGISTER", answer_challenge(md5_only), lookup, 1.0)
    expected = (Outcome.FAILED, "algorithm-not-offered")
    assert expected == (verdict.outcome, verdict.reason)


def test_no_qop_requires_opt_in() -> None:
    """RFC 2069 credentials (no qop) are refused when qop was offered, accepted when allowed."""
    strict = make_server(algorithms=(Algorithm.MD5,))
    legacy = make_server(algorithms=(Algorithm.MD5,), qop=())
    lenient = make_server(algorithms=(Algorithm.MD5,), allow_no_qop=True)
    results = []
    for server in (strict, legacy, lenient):
        nonce = server.make_nonce(0.0)
        # no qop, no algorithm → RFC 2069 (the opaque is still echoed)
        bare = Challenge(realm=REALM, nonce=nonce, opaque=server.opaque)
        results.append(server.verify("REGISTER", answer_challenge(bare), lookup, 1.0).outcome)
    expected = [Outcome.FAILED, Outcome.OK, Outcome.OK]
    assert expected == results


def test_legacy_challenge_has_no_qop() -> None:
    """A server configured with qop=() offers the RFC 2069 form."""
    (challenge,) = make_server(algorithms=(Algorithm.MD5,), qop=()).challenges(0.0)
    assert not challenge.qop
    assert "qop" not in str(challenge)


def test_auth_int_round_trip_checks_body() -> None:
    """With qop=auth-int offered, the body is covered: a changed body fails."""
    server = make_server(qop=("auth-int",))
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    creds = authorize(
        challenge,
        username="bob",
        password="hunter2",
        method="INVITE",
        uri="sip:x",
        body=b"v=0",
        cnonce="c",
    )
    good = server.verify("INVITE", str(creds), lookup, 1.0, body=b"v=0")
    server2 = make_server(qop=("auth-int",))
    bad = server2.verify("INVITE", str(creds), lookup, 1.0, body=b"v=1")
    expected = (Outcome.OK, Outcome.FAILED)
    assert expected == (good.outcome, bad.outcome)


def test_auth_int_not_offered_is_refused() -> None:
    """auth-int credentials when only auth was offered: refused cleanly (FAILED)."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    int_only = Challenge(
        realm=REALM, nonce=challenge.nonce, algorithm=Algorithm.SHA256, qop=("auth-int",)
    )
    verdict = server.verify("INVITE", answer_challenge(int_only), lookup, 1.0)
    expected = (Outcome.FAILED, "qop-not-offered")
    assert expected == (verdict.outcome, verdict.reason)


def test_proxy_answer_is_407_with_proxy_authenticate() -> None:
    """proxy=True answers 407 with Proxy-Authenticate (RFC 3261 §22.3)."""
    server = make_server()
    answer = server.answer(Verdict(Outcome.FAILED, reason="no-credentials"), 0.0, proxy=True)
    assert answer is not None
    expected = (407, "Proxy Authentication Required", ["Proxy-Authenticate"] * 2)
    assert expected == (answer.status, answer.reason, [n for n, _ in answer.headers])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": b"short"},
        {"algorithms": ()},
        {"qop": ("auth-conf",)},
        {"max_tracked_nonces": 0},
        {"realm": "bad\r\nrealm"},
    ],
)
def test_bad_configuration_refused(kwargs: dict[str, object]) -> None:
    """Configuration mistakes are caught at construction, not at the first request."""
    args: dict[str, object] = {"key": KEY, "realm": REALM, **kwargs}
    with pytest.raises(Exception) as info:
        DigestServer(**args)  # type: ignore[arg-type]
    assert info.type.__name__ in ("ValueError", "AuthError")


def test_key_never_in_repr() -> None:
    """The server key does not leak through repr (logs, tracebacks)."""
    server = make_server()
    text = repr(server)
    assert KEY.decode() not in text and "key" not in text


def test_undecodable_octets_are_malformed_not_a_crash() -> None:
    """Invalid UTF-8 (decoded with surrogateescape by the parser) in credentials → 400."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    valid = answer_challenge(challenge)
    raw = valid.replace('username="alice"', 'username="al\udcffice"')
    verdict = server.verify("REGISTER", raw, lookup, 1.0)
    expected = Outcome.MALFORMED
    assert expected == verdict.outcome


def test_non_canonical_nonce_spelling_rejected() -> None:
    """A nonce whose last base64 character differs only in unused bits is not ours."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    last = challenge.nonce[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 32 bytes → 43 chars: the last char carries 4 data bits and 2 unused bits
    twin = challenge.nonce[:-1] + alphabet[alphabet.index(last) ^ 0b01]
    assert server.nonce_issued_at(challenge.nonce) is not None
    assert server.nonce_issued_at(twin) is None


def test_userhash_credentials_refused() -> None:
    """We never offer userhash (RFC 7616 §3.4.4), so such credentials get a fresh challenge."""
    server = make_server()
    challenge = challenge_for(server, 0.0, Algorithm.SHA256)
    creds = Credentials.parse(answer_challenge(challenge))
    fields = {f: getattr(creds, f) for f in Credentials.__dataclass_fields__}
    hashed = Credentials(**{**fields, "userhash": True})
    verdict = server.verify("REGISTER", str(hashed), lookup, 1.0)
    expected = (Outcome.FAILED, "userhash-not-offered")
    assert expected == (verdict.outcome, verdict.reason)


def test_session_algorithm_without_qop_is_malformed() -> None:
    """MD5-sess credentials with a cnonce but no qop: the server refuses them as 400."""
    server = make_server(algorithms=(Algorithm.MD5_SESS,), allow_no_qop=True)
    nonce = server.make_nonce(0.0)
    value = (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="sip:x", '
        'response="00", algorithm=MD5-sess, cnonce="c"'
    )
    verdict = server.verify("REGISTER", value, lookup, 1.0)
    expected = Outcome.MALFORMED
    assert expected == verdict.outcome


def test_first_malformed_value_is_reported() -> None:
    """With several malformed values and none for our realm, the first error is kept."""
    server = make_server()
    verdict = server.verify("REGISTER", ['Digest realm="x', "Digest a"], lookup, 0.0)
    assert verdict.error is not None
    expected = "unterminated quoted-string"
    assert expected == verdict.error.detail


def test_random_source_must_return_requested_length() -> None:
    """A broken salt source is a configuration error, caught when the nonce is made."""
    server = DigestServer(key=KEY, realm=REALM, random=lambda n: b"x")
    with pytest.raises(ValueError):
        server.make_nonce(0.0)


def test_default_salts_make_distinct_nonces() -> None:
    """With the default os.urandom salt, two nonces at the same instant differ."""
    server = DigestServer(key=KEY, realm=REALM)
    assert server.make_nonce(1.0) != server.make_nonce(1.0)


def test_unimplemented_algorithm_gets_a_challenge_not_400() -> None:
    """algorithm=SHA-512-256 is valid syntax (any token): answered 401 with what we offer."""
    server = make_server()
    nonce = server.make_nonce(0.0)
    value = (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="sip:x", '
        'response="00", algorithm=SHA-512-256, qop=auth, nc=00000001, cnonce="c"'
    )
    verdict = server.verify("REGISTER", value, lookup, 1.0)
    answer = server.answer(verdict, 1.0)
    expected = (Outcome.FAILED, "algorithm-not-offered", 401)
    assert answer is not None
    assert expected == (verdict.outcome, verdict.reason, answer.status)
