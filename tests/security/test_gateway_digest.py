"""Digest strictness through the SIP element (gateway.callpath.element): uri, algorithm, opaque.

alice REGISTERs through a MemoryTransport: credentials whose ``uri`` names
another resource get 400; SIPp's user-less ``sip:<gateway>:<port>`` is
accepted while ``[security] digest_uri_gateway_form`` is on (the default); a
nonce from a SHA-256 challenge answered with MD5 is challenged again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.digest import Algorithm, Challenge, DigestClient, authorize
from tests.security.test_gateway_guard import AGENT, make_gateway, register, to


def challenge(gw, mem, n: int = 0):  # type: ignore[no-untyped-def]
    mem.inject(register(AGENT, 100 + n), AGENT)
    last = to(mem, AGENT)[-1]
    assert 401 == last.status
    return last.headers.get_all("WWW-Authenticate")


@pytest.mark.parametrize(
    ("uri", "gateway_form", "expected"),
    [
        ("sip:127.0.0.1:5070", True, 200),  # the Request-URI itself
        ("sip:127.0.0.1:5070;transport=udp", True, 200),  # an equivalent spelling
        ("sip:gw.other:5070", True, 400),  # another resource
        ("sip:alice@127.0.0.1:5070", True, 400),  # a user the Request-URI does not have
        ("sip:127.0.0.1", True, 200),  # user-less, names this gateway: the gateway form
        ("sip:127.0.0.1", False, 400),  # strict: port 5060 is not the Request-URI's 5070
    ],
)
async def test_register_uri_must_match(
    tmp_path: Path, uri: str, gateway_form: bool, expected: int
) -> None:
    """RFC 2617 §3.2.2.5: a uri naming another resource is answered 400."""
    gw, mem = make_gateway(tmp_path, digest_uri_gateway_form=gateway_form)
    client = DigestClient("alice", password="s3cret")
    assert client.handle_challenge(401, challenge(gw, mem))
    auth = client.authorization("REGISTER", uri)
    assert auth is not None
    mem.inject(register(AGENT, 200, auth), AGENT)
    assert expected == to(mem, AGENT)[-1].status


async def test_sipp_form_accepted_for_an_invite_request_uri(tmp_path: Path) -> None:
    """SIPp hashes sip:<gateway ip>:<port> for an INVITE to sip:<number>@gateway: accepted
    with the gateway form on, refused (400) with it off."""
    from gateway.callpath.auth import digest_uri_matches
    from gateway.sip.uri import URI

    gw, _ = make_gateway(tmp_path)
    ruri = URI.parse("sip:13912345678@127.0.0.1:5070")
    assert digest_uri_matches(ruri, "sip:127.0.0.1:5070", local=gw.is_local)
    assert not digest_uri_matches(ruri, "sip:127.0.0.1:5070")


async def test_md5_answer_to_a_sha256_nonce_refused(tmp_path: Path) -> None:
    """With both algorithms offered, the SHA-256 challenge's nonce answered with MD5: 401 again."""
    gw, mem = make_gateway(tmp_path)
    gw.digest.algorithms = (Algorithm.SHA256, Algorithm.MD5)
    gw.auth.default_algorithms = gw.digest.algorithms
    for name in list(gw.auth._algorithms):
        gw.auth._algorithms[name] = gw.digest.algorithms
    sha = Challenge.parse(challenge(gw, mem)[0])
    assert Algorithm.SHA256 == sha.algorithm
    forged = Challenge(
        realm=sha.realm, nonce=sha.nonce, algorithm=Algorithm.MD5, opaque=sha.opaque, qop=sha.qop
    )
    creds = authorize(
        forged,
        username="alice",
        password="s3cret",
        method="REGISTER",
        uri="sip:127.0.0.1:5070",
        cnonce="c1",
    )
    mem.inject(register(AGENT, 300, ("Authorization", str(creds))), AGENT)
    assert 401 == to(mem, AGENT)[-1].status
