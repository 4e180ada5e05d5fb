"""The asyncio SIP endpoint over real loopback UDP and TCP sockets."""

from __future__ import annotations

import asyncio

import pytest

from gateway.sip import Request, Response
from gateway.sip.transaction import TimerConfig
from gateway.transport.endpoint import ClientRequest, ServerRequest, SipEndpoint


def _request(method: str, target: str, *, call_id: str = "c1@test") -> Request:
    return Request(
        method,
        target,
        [
            ("From", "<sip:alice@127.0.0.1>;tag=a1"),
            ("To", "<sip:bob@127.0.0.1>"),
            ("Call-ID", call_id),
            ("CSeq", f"1 {method}"),
        ],
    )


async def _pair(handler, transport: str = "udp", timers: TimerConfig | None = None):
    server = SipEndpoint(handler, timers=timers)
    client = SipEndpoint(lambda req: req.respond(500) if req.tx else None, timers=timers)
    await server.listen(transport, "127.0.0.1", 0)
    await client.listen(transport, "127.0.0.1", 0)
    return server, client


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_options_round_trip(transport: str) -> None:
    """A non-INVITE request gets its final response through both transaction machines."""
    seen: list[str] = []

    def handler(req: ServerRequest) -> None:
        seen.append(req.request.method)
        req.respond(200, headers=[("Allow", "OPTIONS")])

    server, client = await _pair(handler, transport)
    try:
        dest = server.transports[0].local_address
        response = await asyncio.wait_for(
            client.request(
                _request("OPTIONS", f"sip:{dest[0]}:{dest[1]}"), dest, transport=transport
            ),
            5,
        )
        assert 200 == response.status
        assert ["OPTIONS"] == seen
        assert "rport" in response.headers.get("Via")
    finally:
        await client.close()
        await server.close()


async def test_invite_provisional_final_and_ack() -> None:
    """INVITE gets 180 then 200; the handle sees both; the ACK reaches the server TU."""
    acks: asyncio.Queue[Request] = asyncio.Queue()

    def handler(req: ServerRequest) -> None:
        if req.request.method == "ACK":
            acks.put_nowait(req.request)
            return
        req.respond(180, to_tag="b1")
        req.respond(200, to_tag="b1", headers=[("Contact", "<sip:bob@127.0.0.1>")])

    server, client = await _pair(handler)
    statuses: list[int] = []
    try:
        dest = server.transports[0].local_address
        invite = _request("INVITE", f"sip:bob@{dest[0]}:{dest[1]}")
        handle = client.send_request(
            invite, dest, on_response=lambda h, r: statuses.append(r.status)
        )
        final = await asyncio.wait_for(handle.final, 5)
        assert 200 == final.status
        assert [180, 200] == statuses[:2]
        ack = Request(
            "ACK",
            f"sip:bob@{dest[0]}:{dest[1]}",
            [
                ("From", invite.headers.get("From") or ""),
                ("To", final.headers.get("To") or ""),
                ("Call-ID", invite.call_id),
                ("CSeq", "1 ACK"),
                ("Max-Forwards", "70"),
            ],
        )
        client.send_stateless(ack, dest)
        got = await asyncio.wait_for(acks.get(), 5)
        assert "ACK" == got.method
    finally:
        await client.close()
        await server.close()


async def test_timeout_reported_as_local_408() -> None:
    """Timer F fires when nobody answers: the TU gets a locally made 408."""
    silent = SipEndpoint(lambda req: None)
    await silent.listen("udp", "127.0.0.1", 0)
    client = SipEndpoint(lambda req: None, timers=TimerConfig(t1=0.01, t2=0.04, t4=0.05))
    await client.listen("udp", "127.0.0.1", 0)
    try:
        dest = silent.transports[0].local_address
        handle = client.send_request(_request("OPTIONS", "sip:x@127.0.0.1"), dest)
        final = await asyncio.wait_for(handle.final, 5)
        assert 408 == final.status
        assert handle.local is True
    finally:
        await client.close()
        await silent.close()


async def test_cancel_waits_for_provisional_then_487() -> None:
    """CANCEL asked before any provisional goes out after the 180; the INVITE ends 487."""
    pending: list[ServerRequest] = []
    release = asyncio.Event()

    def handler(req: ServerRequest) -> None:
        if req.request.method == "INVITE":
            pending.append(req)
            release.set()
        elif req.request.method == "CANCEL":
            req.respond(200)
            invite = pending[0]
            invite.respond(487, to_tag="b2")

    server = SipEndpoint(handler, timers=TimerConfig(trying_delay=10.0))
    await server.listen("udp", "127.0.0.1", 0)
    client = SipEndpoint(lambda req: None)
    await client.listen("udp", "127.0.0.1", 0)
    try:
        dest = server.transports[0].local_address
        handle: ClientRequest = client.send_request(
            _request("INVITE", "sip:bob@127.0.0.1", call_id="c2"), dest
        )
        handle.cancel()
        await asyncio.wait_for(release.wait(), 5)
        assert handle.cancel_sent is False  # §9.1: no provisional yet, no CANCEL
        pending[0].respond(180, to_tag="b2")
        final: Response = await asyncio.wait_for(handle.final, 5)
        assert 487 == final.status
        assert handle.cancel_sent is True
    finally:
        await client.close()
        await server.close()


async def test_finished_call_is_freed_without_the_garbage_collector() -> None:
    """After Timer M the handle forgets the TU's callback: a call object that holds
    its handle (call → handle → callback → call) is freed by reference counting."""
    import gc
    import weakref

    class Call:
        handle: ClientRequest | None = None

    def handler(req: ServerRequest) -> None:
        if req.request.method != "ACK":
            req.respond(200, to_tag="b1", headers=[("Contact", "<sip:bob@127.0.0.1>")])

    timers = TimerConfig(t1=0.01, t2=0.04, t4=0.05)
    server, client = await _pair(handler, timers=timers)
    gc.disable()
    try:
        dest = server.transports[0].local_address

        def place() -> tuple[weakref.ref[Call], ClientRequest]:
            call = Call()
            call.handle = client.send_request(
                _request("INVITE", f"sip:bob@{dest[0]}:{dest[1]}", call_id="freed@test"),
                dest,
                on_response=lambda h, r: call.__class__,  # the TU's callback holds the call
            )
            return weakref.ref(call), call.handle

        alive, handle = place()
        assert 200 == (await asyncio.wait_for(handle.final, 5)).status
        for _ in range(100):  # Timer M is 64*T1 = 0.64 s here
            if handle.on_response is None:
                break
            await asyncio.sleep(0.02)
        assert handle.on_response is None
        assert alive() is None
    finally:
        gc.enable()
        await client.close()
        await server.close()


async def test_deliver_hands_the_context_to_the_tu_once() -> None:
    """``deliver(context=)`` rides on the ServerRequest; a retransmission reaches no one."""
    from gateway.sip import parse
    from gateway.transport.memory import MemoryTransport

    seen: list[tuple[str, object]] = []

    def handler(req: ServerRequest) -> None:
        seen.append((req.request.method, req.context))
        req.respond(200)

    endpoint = SipEndpoint(handler)
    transport = MemoryTransport(lambda *args: None)
    endpoint.add_transport(transport)
    raw = (
        b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ctx-1\r\n"
        b"From: <sip:a@192.0.2.1>;tag=a1\r\nTo: <sip:gw@127.0.0.1>\r\n"
        b"Call-ID: ctx-1@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    source = ("192.0.2.1", 5060)
    try:
        endpoint.deliver(parse(raw), source, transport, context="alice")
        endpoint.deliver(parse(raw), source, transport, context="mallory")  # retransmission
        transport.inject(raw, source)  # the transport's own path: no context
        assert [("OPTIONS", "alice")] == seen
        assert 3 == len(transport.sent)  # the 200, resent for each retransmission
    finally:
        await endpoint.close()


async def test_awaits_only_responses_of_its_client_transactions() -> None:
    """``awaits`` says whether a response matches one of our client transactions."""
    from gateway.sip import make_response
    from gateway.transport.memory import MemoryTransport

    endpoint = SipEndpoint(lambda req: None)
    transport = MemoryTransport(lambda *args: None)
    endpoint.add_transport(transport)
    try:
        handle = endpoint.send_request(
            _request("OPTIONS", "sip:peer@192.0.2.9"), ("192.0.2.9", 5060)
        )
        ours = make_response(handle.request, 200)
        stranger = make_response(_request("OPTIONS", "sip:peer@192.0.2.9", call_id="x@t"), 200)
        stranger.headers.set("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-not-ours")
        assert (True, False) == (endpoint.awaits(ours), endpoint.awaits(stranger))
    finally:
        await endpoint.close()
