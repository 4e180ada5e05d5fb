"""The registrar's binding rules (RFC 3261 §10.3), as a pure object and over the wire."""

from __future__ import annotations

from gateway.callpath.registrar import Registrar
from gateway.sip import Request
from tests.callpath.conftest import Rig

SRC = ("192.0.2.10", 40000)


def register(
    contacts: list[str], *, expires: int | None = None, call_id: str = "r1", cseq: int = 1
) -> Request:
    """A REGISTER for alice with the given Contact values."""
    headers = [
        ("Via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKr"),
        ("From", "<sip:alice@gw>;tag=1"),
        ("To", "<sip:alice@gw>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
    ]
    headers += [("Contact", c) for c in contacts]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    return Request("REGISTER", "sip:gw", headers)


def test_binding_expiry_refresh_and_removal() -> None:
    """Add, list with remaining expiry, refresh, expire by time, remove with expires=0."""
    reg = Registrar()
    answer = reg.register(register(["<sip:alice@10.0.0.5>"], expires=600), "alice", SRC, "udp", 0.0)
    assert 200 == answer.status
    assert [("Contact", "<sip:alice@10.0.0.5>;expires=600")] == list(answer.headers)
    [binding] = reg.lookup("alice", 100.0)
    assert (SRC, "udp", 500) == (binding.source, binding.transport, binding.remaining(100.0))
    reg.register(
        register(["<sip:alice@10.0.0.5>"], expires=600, cseq=2), "alice", SRC, "udp", 300.0
    )
    assert 1 == len(reg.lookup("alice", 800.0))
    assert [] == reg.lookup("alice", 901.0)
    reg.register(
        register(["<sip:alice@10.0.0.5>"], expires=600, cseq=3), "alice", SRC, "udp", 1000.0
    )
    answer = reg.register(
        register(["<sip:alice@10.0.0.5>;expires=0"], cseq=4), "alice", SRC, "udp", 1001.0
    )
    assert (200, ()) == (answer.status, answer.headers)
    assert not reg.is_registered("alice", 1001.0)


def test_too_brief_interval_gets_423_with_min_expires() -> None:
    """§10.3 step 7: an expiry below the minimum → 423 Interval Too Brief + Min-Expires."""
    reg = Registrar(min_expires=60)
    answer = reg.register(register(["<sip:alice@10.0.0.5>"], expires=10), "alice", SRC, "udp", 0.0)
    assert 423 == answer.status
    assert ("Min-Expires", "60") in answer.headers


def test_several_contacts_and_star() -> None:
    """Two contacts are both bound; Contact: * with Expires: 0 removes all; * without 0 → 400."""
    reg = Registrar()
    answer = reg.register(
        register(["<sip:alice@10.0.0.5>", "<sip:alice@10.0.0.6>;expires=120"], expires=600),
        "alice",
        SRC,
        "udp",
        0.0,
    )
    assert 2 == len(answer.headers)
    assert 400 == reg.register(register(["*"], expires=60, cseq=2), "alice", SRC, "udp", 1.0).status
    assert 200 == reg.register(register(["*"], expires=0, cseq=3), "alice", SRC, "udp", 1.0).status
    assert [] == reg.lookup("alice", 2.0)


def test_max_expires_is_capped_and_aor_must_match_user() -> None:
    """Expiry above the maximum is reduced; registering someone else's AOR → 403."""
    reg = Registrar(max_expires=3600)
    answer = reg.register(
        register(["<sip:alice@10.0.0.5>"], expires=99999), "alice", SRC, "udp", 0.0
    )
    assert [("Contact", "<sip:alice@10.0.0.5>;expires=3600")] == list(answer.headers)
    assert 403 == reg.register(register(["<sip:a@10.0.0.5>"]), "bob", SRC, "udp", 0.0).status


async def test_wrong_password_and_unknown_user_same_answer(rig: Rig) -> None:
    """Over the wire: a wrong password is re-challenged (401) exactly like an unknown user."""
    from tests.callpath.conftest import Agent

    wrong = Agent("alice", "nope", rig.address)
    unknown = Agent("zed", "nope", rig.address)
    await wrong.start()
    await unknown.start()
    try:
        a = await wrong.register()
        b = await unknown.register()
        assert (401, 401) == (a.status, b.status)
        assert a.reason == b.reason
    finally:
        await wrong.close()
        await unknown.close()


async def test_default_challenge_is_md5_alone(rig: Rig) -> None:
    """The default 401 carries one MD5 challenge: a SHA-256-only client has nothing to answer.

    SHA-256 (RFC 8760) is opt-in through ``[sip] digest_algorithms`` and then
    offered first (tests/registrar/test_digest_algorithms.py).
    """
    import asyncio

    from gateway.sip.digest import Algorithm, DigestClient, ha1
    from tests.callpath.conftest import Agent

    agent = Agent("bob", "bobpass", rig.address)
    await agent.start()
    try:
        assert agent.endpoint is not None
        ruri = f"sip:{rig.address[0]}:{rig.address[1]}"
        req = agent._base("REGISTER", ruri, "sha@test", 1, "t1")
        first = await asyncio.wait_for(agent.endpoint.request(req, rig.address), 5)
        values = first.headers.get_all("WWW-Authenticate")
        assert ["MD5"] == ["SHA-256" if "SHA-256" in v else "MD5" for v in values]
        client = DigestClient(
            "bob", ha1={Algorithm.SHA256: ha1("bob", "dialgate", "bobpass", Algorithm.SHA256)}
        )
        assert not client.handle_challenge(401, values)
        assert 200 == (await agent.register()).status  # an MD5 client registers
    finally:
        await agent.close()
