"""Calls over TLS on both legs: agent → gateway (`tls:` listener), gateway → carrier (`tls:` trunk).

The agent is the test kit's SipEndpoint UA on a TLSTransport; the carrier is
the simulator's carrier with a TLS listener added, presenting a certificate
for ``carrier.test`` signed by a test CA that only the carrier's ``tls_ca``
trusts. Certificates are made in ``tmp_path`` with the openssl CLI.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.callpath.element import Gateway
from gateway.transport.tls import client_context, server_context
from simulator.testkit import eventually
from tests.callpath.conftest import SDP_C, Agent, Carrier, gateway_settings
from tests.tls_certs import CA, make_ca, make_cert


@dataclass
class TLSRig:
    """A gateway with a tls listener, a carrier on TLS, alice on TLS (registered)."""

    gateway: Gateway
    carrier: Carrier
    carrier_tls: tuple[str, int]
    alice: Agent
    ca: CA


def _settings(
    tmp_path: Path, ca: CA, carrier: tuple[str, int], *, server_name: str, tls_ca: Path
) -> Any:
    gw = make_cert(tmp_path, ca, "gateway", ("IP:127.0.0.1",))
    return gateway_settings(
        carrier,
        tmp_path / "gw.db",
        extra={
            "sip": {
                "listen": ["udp:127.0.0.1:0", "tls:127.0.0.1:0"],
                "realm": "dialgate",
                "t1": 0.1,
                "t2": 0.4,
                "tls_cert": str(gw.cert),
                "tls_key": str(gw.key),
                "tls_handshake_timeout": 2.0,
            },
            "carriers": [
                {
                    "name": "carrier-a",
                    "address": f"tls:{carrier[0]}:{carrier[1]}",
                    "timezone": "Asia/Shanghai",
                    "options_interval": None,
                    "tls_ca": str(tls_ca),
                    "tls_server_name": server_name,
                }
            ],
        },
    )


async def _tls_carrier(tmp_path: Path, ca: CA) -> tuple[Carrier, tuple[str, int]]:
    carrier = Carrier()
    await carrier.start()
    cert = make_cert(tmp_path, ca, "carrier", ("DNS:carrier.test",))
    transport = await carrier.endpoint.listen(
        "tls", "127.0.0.1", 0, tls_server=server_context(cert.cert, cert.key)
    )
    return carrier, transport.local_address


async def _tls_agent(gateway: Gateway, ca: CA) -> Agent:
    ctx = client_context(ca.cert)
    # The agent's own listener needs a certificate too; it is never used here.
    alice = Agent(
        "alice",
        "s3cret",
        gateway.address("tls"),
        transport="tls",
        tls_server=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        tls_client=lambda addr: (ctx, None),
        scheme="sips",
    )
    await alice.start()
    return alice


@pytest.fixture
async def tls_rig(tmp_path: Path) -> AsyncIterator[TLSRig]:
    """Gateway, TLS carrier and a registered TLS agent; all closed at teardown."""
    ca = make_ca(tmp_path)
    carrier, carrier_tls = await _tls_carrier(tmp_path, ca)
    gw = Gateway(_settings(tmp_path, ca, carrier_tls, server_name="carrier.test", tls_ca=ca.cert))
    alice: Agent | None = None
    try:
        await gw.start()
        alice = await _tls_agent(gw, ca)
        resp = await alice.register()
        assert 200 == resp.status
        yield TLSRig(gw, carrier, carrier_tls, alice, ca)
    finally:
        if alice is not None:
            await alice.close()
        await gw.close()
        await carrier.close()


async def test_call_over_tls_on_both_legs(tls_rig: TLSRig) -> None:
    """REGISTER, INVITE (407 then 200), ACK and BYE over TLS on both legs.

    alice calls a SIPS Request-URI, so our Contact to her is SIPS (RFC 3261
    §8.1.1.8); the carrier gets sip: URIs with transport=tls (TLS on that hop).
    """
    rig = tls_rig
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status, bytes(resp)
    assert SDP_C == resp.body
    contact = resp.headers.get("Contact") or ""
    tls_port = rig.gateway.address("tls")[1]
    assert f"<sips:dialgate@127.0.0.1:{tls_port}>" == contact
    [b_invite] = rig.carrier.invites()
    assert "sip" == b_invite.uri.scheme
    assert "tls" == b_invite.uri.param("transport")
    assert "+8613912345678" == b_invite.uri.user
    assert "TLS" == b_invite.via[0].transport.upper()
    assert f"<sip:dialgate@127.0.0.1:{tls_port};transport=tls>" == b_invite.headers.get("Contact")
    await eventually(lambda: "ACK" in rig.carrier.methods())
    bye = await rig.alice.send_in_dialog(invite.call_id, "BYE")
    assert 200 == bye.status
    await eventually(lambda: "BYE" in rig.carrier.methods())
    tls = next(t for t in rig.gateway.transports if t.name == "tls")
    assert 2 <= tls.stats.tls_handshakes  # alice in, the carrier out
    assert 0 == tls.stats.tls_handshake_failures
    # Nothing of the agent's call went over UDP.
    udp = next(t for t in rig.gateway.transports if t.name == "udp")
    assert 0 == udp.stats.received


async def test_carrier_hangs_up_over_tls(tls_rig: TLSRig) -> None:
    """The carrier's BYE comes back on its TLS connection and reaches the agent over TLS."""
    rig = tls_rig
    resp, _ = await rig.alice.call("13912345678")
    assert 200 == resp.status
    [b_invite] = rig.carrier.invites()
    await eventually(lambda: "ACK" in rig.carrier.methods())
    bye = await rig.carrier.send_in_dialog(b_invite.call_id, "BYE")
    assert 200 == bye.status
    await eventually(lambda: "BYE" in [r.method for r in rig.alice.requests])


@pytest.mark.parametrize("case", ["untrusted", "name-mismatch"])
async def test_carrier_with_wrong_certificate_is_refused(tmp_path: Path, case: str) -> None:
    """A carrier certificate from an untrusted CA or for another name: no INVITE reaches it.

    The handshake failure is logged (transport.tls.handshake_failed, direction out)
    and counted; the agent gets 503 trunk-unreachable at once; the gateway keeps running.
    """
    ca = make_ca(tmp_path)
    carrier, carrier_tls = await _tls_carrier(tmp_path, ca)
    trusted = make_ca(tmp_path, "other").cert if case == "untrusted" else ca.cert
    name = "wrong.test" if case == "name-mismatch" else "carrier.test"
    gw = Gateway(_settings(tmp_path, ca, carrier_tls, server_name=name, tls_ca=trusted))
    alice: Agent | None = None
    try:
        await gw.start()
        alice = await _tls_agent(gw, ca)
        assert 200 == (await alice.register()).status
        started = asyncio.get_running_loop().time()
        with structlog.testing.capture_logs() as logs:
            resp, _ = await alice.call("13912345678")
        # The refused handshake is a transport error at once (RFC 3261 §8.1.3.1),
        # not a Timer B timeout: the trunk is unreachable for this call.
        assert 503 == resp.status
        assert 'SIP;cause=503;text="trunk-unreachable"' == resp.headers.get("Reason")
        assert asyncio.get_running_loop().time() - started < 64 * 0.1
        assert [] == carrier.invites()
        failed = [
            e
            for e in logs
            if e["event"] == "transport.tls.handshake_failed" and e["direction"] == "out"
        ]
        assert failed
        assert case == failed[0]["reason"]
        tls = next(t for t in gw.transports if t.name == "tls")
        assert tls.stats.tls_failures_by_reason[case] >= 1
        # Still serving: alice re-registers over TLS.
        assert 200 == (await alice.register()).status
    finally:
        if alice is not None:
            await alice.close()
        await gw.close()
        await carrier.close()
