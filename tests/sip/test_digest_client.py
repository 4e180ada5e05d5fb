"""DigestClient: choosing a challenge, nonce counting, and refusing to loop.

The client talks to a real DigestServer with explicit ``now`` values, so each
test is a full challenge/response exchange without sockets.
"""

from __future__ import annotations

import itertools

import pytest

from gateway.sip.digest import (
    RFC8760_ALGORITHMS,
    Algorithm,
    Challenge,
    Credentials,
    DigestClient,
    DigestServer,
    Outcome,
    ha1,
)

REALM = "carrier.example"
KEY = b"k" * 32


def lookup(user: str, algorithm: Algorithm) -> str | None:
    """One carrier account, c1 / card-secret."""
    return ha1(user, REALM, "card-secret", algorithm) if user == "c1" else None


def make_server(**kwargs: object) -> DigestServer:
    """Carrier-side server with deterministic salts."""
    counter = itertools.count(1)
    return DigestServer(
        key=KEY,
        realm=REALM,
        random=lambda n: next(counter).to_bytes(n, "big"),
        **{"algorithms": RFC8760_ALGORITHMS, **kwargs},  # type: ignore[arg-type]
    )


def make_client(password: str = "card-secret") -> DigestClient:
    """Client with a deterministic cnonce source."""
    cnonces = (f"cn{i}" for i in itertools.count(1))
    return DigestClient("c1", password=password, cnonce_source=lambda: next(cnonces))


def test_register_flow_with_nc_increment() -> None:
    """401 → credentials accepted; later requests reuse the nonce with nc 2, 3 (RFC 7616 §3.4)."""
    server = make_server()
    client = make_client()
    assert client.authorization("REGISTER", "sip:carrier.example") is None
    assert client.handle_challenge(401, server.challenge_values(0.0))
    outcomes = []
    ncs = []
    for t in (1.0, 2.0, 3.0):
        header = client.authorization("REGISTER", "sip:carrier.example")
        assert header is not None
        name, value = header
        expected_name = "Authorization"
        assert expected_name == name
        ncs.append(Credentials.parse(value).nc)
        outcomes.append(server.verify("REGISTER", value, lookup, t).outcome)
        client.accepted()
    expected = [Outcome.OK] * 3
    assert expected == outcomes
    expected_ncs = ["00000001", "00000002", "00000003"]
    assert expected_ncs == ncs


def test_client_takes_first_supported_challenge() -> None:
    """Server order is preference order (RFC 8760): SHA-256 is answered when listed first."""
    server = make_server()
    client = make_client()
    client.handle_challenge(401, server.challenge_values(0.0))
    header = client.authorization("INVITE", "sip:+8613800000002@carrier.example")
    assert header is not None
    expected = Algorithm.SHA256
    assert expected == Credentials.parse(header[1]).algorithm


def test_client_skips_unknown_schemes_and_algorithms() -> None:
    """Unknown schemes and algorithms (e.g. SHA-512-256) are skipped, not fatal."""
    client = make_client()
    values = [
        "NoOneKnowsThisScheme opaque-data=here",
        'Digest realm="r", nonce="n1", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="n2", algorithm=MD5, qop="auth-conf"',
        'Digest realm="r", nonce="n3", algorithm=MD5-sess',  # -sess without qop: unusable
        'Digest realm="r", nonce="n4", algorithm=MD5, qop="auth"',
    ]
    chosen = client.choose(values)
    assert chosen is not None
    expected = "n4"
    assert expected == chosen.nonce
    assert client.choose(values[:4]) is None
    assert client.handle_challenge(401, values[:4]) is False


def test_proxy_challenge_uses_proxy_authorization() -> None:
    """After a 407 the credentials go into Proxy-Authorization (RFC 3261 §22.3)."""
    server = make_server()
    client = make_client()
    answer = server.answer(server.verify("INVITE", None, lookup, 0.0), 0.0, proxy=True)
    assert answer is not None
    assert client.handle_challenge(answer.status, [v for _, v in answer.headers])
    header = client.authorization("INVITE", "sip:x@carrier.example")
    assert header is not None
    expected = "Proxy-Authorization"
    assert expected == header[0] == client.header_name
    assert server.verify("INVITE", header[1], lookup, 1.0).ok


def test_wrong_password_gives_up_after_one_try() -> None:
    """A second non-stale challenge after our answer means rejection: no loop (RFC 3261 §22.2)."""
    server = make_server()
    client = make_client(password="wrong")
    assert client.handle_challenge(401, server.challenge_values(0.0))
    header = client.authorization("REGISTER", "sip:carrier.example")
    assert header is not None
    verdict = server.verify("REGISTER", header[1], lookup, 1.0)
    answer = server.answer(verdict, 1.0)
    assert answer is not None
    assert client.handle_challenge(answer.status, [v for _, v in answer.headers]) is False


def test_same_nonce_without_stale_gives_up() -> None:
    """The same nonce challenged again with stale=false: give up."""
    client = make_client()
    values = ['Digest realm="r", nonce="same", qop="auth"']
    assert client.handle_challenge(401, values)
    assert client.authorization("REGISTER", "sip:r") is not None
    assert client.handle_challenge(401, values) is False


def test_stale_challenge_is_answered_with_new_nonce_and_nc_reset() -> None:
    """stale=true after expiry: retry with the new nonce, nc back to 1, without re-prompting."""
    server = make_server(nonce_ttl=30.0)
    client = make_client()
    client.handle_challenge(401, server.challenge_values(0.0))
    first = client.authorization("REGISTER", "sip:carrier.example")
    assert first is not None
    assert server.verify("REGISTER", first[1], lookup, 1.0).ok
    client.accepted()
    late = client.authorization("REGISTER", "sip:carrier.example")
    assert late is not None
    verdict = server.verify("REGISTER", late[1], lookup, 100.0)
    expected = Outcome.STALE
    assert expected == verdict.outcome
    answer = server.answer(verdict, 100.0)
    assert answer is not None
    assert client.handle_challenge(answer.status, [v for _, v in answer.headers])
    retry = client.authorization("REGISTER", "sip:carrier.example")
    assert retry is not None
    creds = Credentials.parse(retry[1])
    expected_nc = "00000001"
    assert expected_nc == creds.nc
    assert server.verify("REGISTER", retry[1], lookup, 100.5).ok


def test_repeated_stale_for_same_nonce_gives_up() -> None:
    """A stale challenge repeating the nonce we just used is a loop: give up."""
    client = make_client()
    assert client.handle_challenge(401, ['Digest realm="r", nonce="a", qop="auth"'])
    client.authorization("REGISTER", "sip:r")
    assert client.handle_challenge(401, ['Digest realm="r", nonce="b", qop="auth", stale=true'])
    client.authorization("REGISTER", "sip:r")
    stale_again = ['Digest realm="r", nonce="b", qop="auth", stale=true']
    assert client.handle_challenge(401, stale_again) is False


def test_challenge_after_accepted_is_answered_again() -> None:
    """After success, a later plain challenge (server forgot us) is answered once more."""
    client = make_client()
    assert client.handle_challenge(401, ['Digest realm="r", nonce="a", qop="auth"'])
    client.authorization("REGISTER", "sip:r")
    client.accepted()
    assert client.handle_challenge(401, ['Digest realm="r", nonce="b", qop="auth"'])


def test_client_with_ha1_only() -> None:
    """A client configured with HA1 per algorithm (no plaintext) authenticates; without the
    HA1 for the offered algorithm it skips that challenge."""
    server = make_server()
    sha_only = DigestClient(
        "c1",
        ha1={Algorithm.SHA256: ha1("c1", REALM, "card-secret", Algorithm.SHA256)},
        cnonce_source=lambda: "fixed",
    )
    assert sha_only.handle_challenge(401, server.challenge_values(0.0))
    header = sha_only.authorization("REGISTER", "sip:carrier.example")
    assert header is not None
    assert server.verify("REGISTER", header[1], lookup, 1.0).ok

    md5_only = DigestClient(
        "c1",
        ha1={Algorithm.MD5: ha1("c1", REALM, "card-secret", Algorithm.MD5)},
        cnonce_source=lambda: "fixed",
    )
    chosen = md5_only.choose(server.challenge_values(0.0))
    assert chosen is not None
    expected = Algorithm.MD5
    assert expected == chosen.algorithm


def test_client_needs_a_secret_and_hides_it() -> None:
    """No password and no HA1 is a configuration error; secrets never show in repr."""
    with pytest.raises(ValueError):
        DigestClient("c1")
    client = DigestClient("c1", password="card-secret")
    assert "card-secret" not in repr(client)


def test_handle_challenge_rejects_non_challenge_status() -> None:
    """Only 401 and 407 carry challenges."""
    with pytest.raises(ValueError):
        make_client().handle_challenge(403, ['Digest realm="r", nonce="n"'])


def test_rfc2069_server_round_trip() -> None:
    """Against a server offering no qop, the client sends no nc/cnonce and is accepted."""
    server = make_server(algorithms=(Algorithm.MD5,), qop=())
    client = make_client()
    assert client.handle_challenge(401, server.challenge_values(0.0))
    header = client.authorization("REGISTER", "sip:carrier.example")
    assert header is not None
    creds = Credentials.parse(header[1])
    expected = (None, None)
    assert expected == (creds.nc, creds.cnonce)
    assert server.verify("REGISTER", header[1], lookup, 1.0).ok
    # without nc, the nonce may be reused until it expires (RFC 2069 has no replay counter)
    assert server.verify("REGISTER", header[1], lookup, 2.0).ok


def test_chosen_challenge_echoes_opaque() -> None:
    """The opaque value from the challenge is returned unchanged (RFC 7616 §3.4)."""
    client = make_client()
    client.handle_challenge(401, ['Digest realm="r", nonce="n", opaque="o/p=q", qop="auth"'])
    header = client.authorization("BYE", "sip:x")
    assert header is not None
    expected = "o/p=q"
    assert expected == Credentials.parse(header[1]).opaque
    assert Challenge.parse('Digest realm="r", nonce="n", opaque="o/p=q"').opaque == expected


def test_endless_stale_challenges_give_up() -> None:
    """A server calling every fresh nonce stale gets max_stale_retries retries, then we stop."""
    client = make_client()
    assert client.handle_challenge(401, ['Digest realm="r", nonce="n0", qop="auth"'])
    results = []
    for i in range(1, 5):
        client.authorization("REGISTER", "sip:r")
        results.append(
            client.handle_challenge(
                401, [f'Digest realm="r", nonce="n{i}", qop="auth", stale=true']
            )
        )
    expected = [True, True, False, False]
    assert expected == results


def test_default_cnonce_is_random_and_nc_is_reported() -> None:
    """Without an injected source the cnonce is random hex; nonce_count follows each request."""
    client = DigestClient("c1", password="card-secret")
    client.handle_challenge(401, ['Digest realm="r", nonce="n", qop="auth"'])
    counts = [client.nonce_count]
    header = client.authorization("REGISTER", "sip:r")
    counts.append(client.nonce_count)
    assert header is not None
    cnonce = Credentials.parse(header[1]).cnonce
    assert cnonce is not None and len(cnonce) == 32 and int(cnonce, 16) >= 0
    expected = [0, 1]
    assert expected == counts
