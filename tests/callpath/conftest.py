"""Fixtures for the call path: a gateway on free loopback ports, the simulator's carrier, agent UAs.

The carrier is the product's simulated carrier (:class:`simulator.carrier.Carrier`,
the one with carrier accounts, digest and the anti-fraud model) in its
scripted mode: :class:`Carrier` here only gives it the cards of
:func:`gateway_settings` (c1, c2; no anti-fraud thresholds, no challenge by
default), a fixed SDP, request recording, and the names these tests use
(``plan``, ``invites()``, ``methods()``, ``send_in_dialog``, ``invite``). The
agents are small asyncio UACs built on :class:`gateway.transport.endpoint.SipEndpoint`
*in the test*, independent of the gateway's B2BUA code, that record every
request they see, so tests assert on what really crossed the wire. SIPp-based
tests (``test_sipp_calls.py``) use SIPp as both peers instead.

Everything binds 127.0.0.1 on port 0; every gateway, endpoint and socket made
here is closed in the fixture teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.callpath.element import Gateway
from gateway.config import Settings
from gateway.sip import Request, Response, parse
from gateway.sip.dialog import Dialog
from gateway.sip.digest import DigestClient
from gateway.sip.transaction import TimerConfig
from gateway.transport.endpoint import ServerRequest, SipEndpoint
from simulator.carrier import Carrier as SimCarrier
from simulator.carrier import ScriptedPlan, answer_all
from simulator.models import CarrierConfig, CarrierModel
from simulator.pytest_plugin import SimCard

SDP_A = (
    b"v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
)
SDP_C = (
    b"v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 50000 RTP/AVP 0\r\n"
)
FAST = TimerConfig(t1=0.1, t2=0.4, t4=0.5, timer_d=0.5)

#: What the carrier does with a new INVITE: ("answer",) | ("ring",) | (status, reason) | …
#: (every form of :data:`simulator.carrier.ScriptedPlan`).
Plan = ScriptedPlan

#: The cards of :func:`gateway_settings` as the carrier's accounts.
CARDS = (
    SimCard("c1", "+8613800000001", "c1", "card1-secret", priority=1),
    SimCard("c2", "+8613800000002", "c2", "card2-secret", priority=2),
)


class Carrier:
    """The simulator's carrier, scripted by ``plan``, recording every request it gets.

    ``auth`` (None, 401 or 407) and ``realm`` are the carrier's digest
    challenge of the gateway (card credentials: c1/card1-secret,
    c2/card2-secret); ``silent`` makes it record and answer nothing. The
    simulator carrier itself is :attr:`sim`.
    """

    def __init__(
        self,
        plan: Plan = answer_all,
        *,
        auth: int | None = None,
        realm: str = "carrier",
        silent: bool = False,
        register_expires: int = 3600,
    ) -> None:
        model = CarrierModel(CarrierConfig(timezone="Asia/Shanghai"), [c.account() for c in CARDS])
        self.sim = SimCarrier(
            model,
            auth=auth,
            realm=realm,
            numbers={c.number: c.id for c in CARDS},
            timers=FAST,
            plan=plan,
            record_requests=True,
            silent=silent,
            sdp=SDP_C,
            register_expires=register_expires,
        )

    @property
    def plan(self) -> Plan:
        """The scripted answer to each new INVITE."""
        assert self.sim.plan is not None
        return self.sim.plan

    @plan.setter
    def plan(self, plan: Plan) -> None:
        self.sim.plan = plan

    async def start(self) -> tuple[str, int]:
        """Listen on a free UDP port; return its address."""
        return await self.sim.start()

    @property
    def address(self) -> tuple[str, int]:
        """The carrier's bound address."""
        return self.sim.address

    @property
    def endpoint(self) -> SipEndpoint:
        """The carrier's SIP endpoint."""
        return self.sim.endpoint

    @property
    def requests(self) -> list[Request]:
        """Every request received, in order."""
        return self.sim.requests

    @property
    def dialogs(self) -> dict[str, Dialog]:
        """Dialogs of the carrier's calls that are up, by Call-ID."""
        return self.sim.dialogs()

    @property
    def datagrams_received(self) -> int:
        """Every datagram that reached the carrier's socket, parsed or not."""
        return self.sim.datagrams_received

    def methods(self) -> list[str]:
        """Methods of every request received, in order."""
        return self.sim.methods()

    def invites(self) -> list[Request]:
        """Initial INVITEs (no To tag) received."""
        return self.sim.received_invites()

    async def send_in_dialog(self, call_id: str, method: str) -> Response:
        """Send BYE (or another request) in the dialog of ``call_id`` back to the gateway."""
        return await asyncio.wait_for(self.sim.in_dialog(method, call_id=call_id), 5)

    async def invite(self, gateway: tuple[str, int], to_number: str) -> Response:
        """An inbound call: INVITE the gateway for ``to_number``; ACK a 2xx; return the final."""
        response, _ = await asyncio.wait_for(
            self.sim.invite(gateway, to_number, caller="+8613912345678"), 5
        )
        return response

    async def close(self) -> None:
        """Close the carrier."""
        await self.sim.close()


@dataclass
class Agent:
    """A softphone UA: REGISTERs, calls with digest, answers inbound calls and BYEs."""

    user: str
    password: str
    gateway: tuple[str, int]
    transport: str = "udp"
    endpoint: SipEndpoint | None = None
    #: For ``transport="tls"``: our server context and the client contexts
    #: (:meth:`SipEndpoint.listen`); ``scheme="sips"`` for SIPS Request-URIs.
    tls_server: ssl.SSLContext | None = None
    tls_client: Callable[[tuple[str, int]], tuple[ssl.SSLContext, str | None]] | None = None
    scheme: str = "sip"
    requests: list[Request] = field(default_factory=list)
    dialogs: dict[str, Dialog] = field(default_factory=dict)
    responses: list[Response] = field(default_factory=list)

    async def start(self) -> None:
        """Listen on a free port of ``transport``."""
        self.endpoint = SipEndpoint(self._on_request, timers=FAST)
        await self.endpoint.listen(
            self.transport,
            "127.0.0.1",
            0,
            tls_server=self.tls_server,
            tls_client=self.tls_client,
        )

    @property
    def contact(self) -> str:
        """This agent's Contact URI."""
        assert self.endpoint is not None
        return self.endpoint.contact_uri(self.endpoint.transports[0], self.user)

    def _on_request(self, sr: ServerRequest) -> None:
        req = sr.request
        self.requests.append(req)
        if sr.tx is None:
            return
        if req.method == "INVITE" and req.to.tag is None:
            tag = secrets.token_hex(4)
            sr.respond(180, to_tag=tag, headers=[("Contact", f"<{self.contact}>")])
            sr.respond(
                200,
                to_tag=tag,
                headers=[("Contact", f"<{self.contact}>"), ("Content-Type", "application/sdp")],
                body=SDP_A,
            )
            self.dialogs[req.call_id] = Dialog.from_uas(req, tag, self.contact)
            return
        dialog = self.dialogs.get(req.call_id)
        if dialog is not None:
            dialog.receive_request(req)
        sr.respond(200)

    def _base(self, method: str, ruri: str, call_id: str, cseq: int, tag: str) -> Request:
        return Request(
            method,
            ruri,
            [
                ("From", f"<sip:{self.user}@{self.gateway[0]}>;tag={tag}"),
                (
                    "To",
                    f"<sip:{self.user}@{self.gateway[0]}>" if method == "REGISTER" else f"<{ruri}>",
                ),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Contact", f"<{self.contact}>"),
            ],
        )

    async def register(self, expires: int = 600, password: str | None = None) -> Response:
        """REGISTER with digest; return the final response."""
        assert self.endpoint is not None
        ruri = f"{self.scheme}:{self.gateway[0]}:{self.gateway[1]}"
        call_id, tag = f"{secrets.token_hex(6)}@agent", secrets.token_hex(4)
        req = self._base("REGISTER", ruri, call_id, 1, tag)
        req.headers.add("Expires", str(expires))
        resp = await asyncio.wait_for(
            self.endpoint.request(req, self.gateway, transport=self.transport), 5
        )
        if resp.status != 401:
            return resp
        client = DigestClient(self.user, password or self.password)
        assert client.handle_challenge(401, resp.headers.get_all("WWW-Authenticate"))
        req = self._base("REGISTER", ruri, call_id, 2, tag)
        req.headers.add("Expires", str(expires))
        auth = client.authorization("REGISTER", ruri)
        assert auth is not None
        req.headers.add(*auth)
        return await asyncio.wait_for(
            self.endpoint.request(req, self.gateway, transport=self.transport), 5
        )

    async def call(
        self,
        number: str,
        *,
        password: str | None = None,
        credentials: bool = True,
        headers: list[tuple[str, str]] | None = None,
        cancel_after: float | None = None,
    ) -> tuple[Response, Request]:
        """INVITE ``number`` via the gateway (answering the 407); ACK a 2xx.

        With ``cancel_after`` the INVITE is cancelled that many seconds after the
        first provisional response. Returns (final response, the INVITE sent).
        """
        assert self.endpoint is not None
        ruri = f"{self.scheme}:{number}@{self.gateway[0]}:{self.gateway[1]}"
        call_id, tag = f"{secrets.token_hex(6)}@agent", secrets.token_hex(4)

        def build(cseq: int) -> Request:
            req = self._base("INVITE", ruri, call_id, cseq, tag)
            for name, value in headers or []:
                req.headers.add(name, value)
            req.headers.add("Content-Type", "application/sdp")
            req.body = SDP_A
            return req

        req = build(1)
        resp = await asyncio.wait_for(
            self.endpoint.request(req, self.gateway, transport=self.transport), 5
        )
        if resp.status == 407 and credentials:
            client = DigestClient(self.user, password or self.password)
            assert client.handle_challenge(407, resp.headers.get_all("Proxy-Authenticate"))
            req = build(2)
            auth = client.authorization("INVITE", ruri, SDP_A)
            assert auth is not None
            req.headers.add(*auth)
            provisional = asyncio.Event()

            def on_response(_h: object, r: Response) -> None:
                self.responses.append(r)
                if 100 < r.status < 200:
                    provisional.set()

            handle = self.endpoint.send_request(
                req, self.gateway, transport=self.transport, on_response=on_response
            )
            if cancel_after is not None:
                await asyncio.wait_for(provisional.wait(), 5)
                await asyncio.sleep(cancel_after)
                handle.cancel()
            resp = await asyncio.wait_for(handle.final, 10)
        if 200 <= resp.status < 300:
            dialog = Dialog.from_uac(req, resp)
            ack = dialog.create_request("ACK", cseq=req.cseq.seq)
            self.endpoint.send_stateless(ack, self.gateway, transport=self.transport)
            self.dialogs[call_id] = dialog
        return resp, req

    async def send_in_dialog(self, call_id: str, method: str, body: bytes = b"") -> Response:
        """A request in the dialog of ``call_id`` (BYE, re-INVITE…); ACKs a 2xx to INVITE."""
        assert self.endpoint is not None
        dialog = self.dialogs[call_id]
        headers = [("Content-Type", "application/sdp")] if body else []
        req = dialog.create_request(method, headers=headers, body=body)
        resp = await asyncio.wait_for(
            self.endpoint.request(req, self.gateway, transport=self.transport), 5
        )
        if method == "INVITE" and 200 <= resp.status < 300:
            ack = dialog.create_request("ACK", cseq=req.cseq.seq)
            self.endpoint.send_stateless(ack, self.gateway, transport=self.transport)
        return resp

    async def close(self) -> None:
        """Close the endpoint."""
        if self.endpoint is not None:
            await self.endpoint.close()


def gateway_settings(
    carrier: tuple[str, int],
    db: Path,
    *,
    rules: bool = True,
    extra: dict[str, Any] | None = None,
) -> Settings:
    """A gateway on a free UDP port with two cards (c1, c2) at ``carrier``."""
    data: dict[str, Any] = {
        "sip": {"listen": ["udp:127.0.0.1:0"], "realm": "dialgate", "t1": 0.1, "t2": 0.4},
        "store": {"path": str(db)},
        "admin": {"listen": "127.0.0.1:0"},
        "policy": {"default_region": "CN", "calling_hours": "00:00-24:00"},
        "users": [
            {"name": "alice", "password": "s3cret", "card": "c1"},
            {"name": "bob", "password": "bobpass"},
        ],
        "peers": [
            {
                "name": "dialer-1",
                "addresses": ["127.0.0.2/32"],
                "password": "dialer-secret",
                "campaign": "spring",
            }
        ],
        "inbound": {"fallback_user": "bob"},
        "carriers": [
            {
                "name": "carrier-a",
                "address": f"udp:{carrier[0]}:{carrier[1]}",
                "timezone": "Asia/Shanghai",
                "options_interval": None,
                "rules": (
                    [{"status": 403, "match": "(?i)suspend", "reason": "violation"}]
                    if rules
                    else []
                ),
            }
        ],
        "quota_profiles": {"open": {"calls_per_minute": 100000}},
        "cards": [
            {
                "id": "c1",
                "carrier": "carrier-a",
                "number": "+8613800000001",
                "username": "c1",
                "password": "card1-secret",
                "quota": "open",
                "priority": 1,
            },
            {
                "id": "c2",
                "carrier": "carrier-a",
                "number": "+8613800000002",
                "username": "c2",
                "password": "card2-secret",
                "quota": "open",
                "priority": 2,
            },
        ],
    }
    for key, value in (extra or {}).items():
        data[key] = value
    return Settings(**data)


@dataclass
class Rig:
    """A started gateway plus its carrier and an agent (alice)."""

    gateway: Gateway
    carrier: Carrier
    alice: Agent
    db: Path

    @property
    def address(self) -> tuple[str, int]:
        """The gateway's UDP address."""
        return self.gateway.address("udp")


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    """A started carrier UAS (answers every call by default)."""
    c = Carrier()
    await c.start()
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def started_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """A started gateway on ``settings``, closed on the way out."""
    gw = Gateway(settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


@pytest.fixture
async def rig(carrier: Carrier, tmp_path: Path) -> AsyncIterator[Rig]:
    """A gateway (SQLite in tmp_path) wired to ``carrier``, with alice registered."""
    db = tmp_path / "gw.db"
    async with started_gateway(gateway_settings(carrier.address, db)) as gw:
        alice = Agent("alice", "s3cret", gw.address("udp"))
        await alice.start()
        try:
            resp = await alice.register()
            assert 200 == resp.status
            yield Rig(gw, carrier, alice, db)
        finally:
            await alice.close()


class RawUA(asyncio.DatagramProtocol):
    """A UDP socket: send text, await the next datagram (parsed)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def exchange(self, data: bytes, to: tuple[str, int]) -> Response:
        """Send ``data``; the next final response (provisionals skipped)."""
        assert self.transport is not None
        self.transport.sendto(data, to)
        while True:
            msg = parse(await asyncio.wait_for(self.inbox.get(), 5))
            assert isinstance(msg, Response)
            if msg.status >= 200:
                return msg


@pytest.fixture
async def ua() -> AsyncIterator[RawUA]:
    """A raw UDP UA on a free loopback port."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(RawUA, local_addr=("127.0.0.1", 0))
    try:
        yield proto
    finally:
        transport.close()
