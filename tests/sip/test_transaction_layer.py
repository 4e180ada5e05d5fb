"""Tests of :class:`TransactionLayer`: two layers talking over an in-memory lossy network.

Alice (UAC) and Bob (UAS) each own a layer; a tiny network object carries the
bytes of every ``Send`` between them, can drop chosen datagrams, and advances
one fake clock from timer deadline to timer deadline. Whatever the layers hand
to their TU is recorded per side, so each test checks what a TU would see.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from gateway.sip import Request, TransactionError, make_response, parse
from gateway.sip.transaction import (
    Action,
    ClientKey,
    Deliver,
    Send,
    ServerTransaction,
    Terminated,
    Timeout,
    Timer,
    TransactionLayer,
    build_cancel,
)


class Net:
    """Two transaction layers joined by an in-memory datagram network on a fake clock."""

    def __init__(self, transport: str = "UDP") -> None:
        counter = itertools.count(1)
        self.transport = transport
        self.now = 0.0
        self.layers = {
            "alice": TransactionLayer(lambda: f"a{next(counter)}"),
            "bob": TransactionLayer(lambda: f"b{next(counter)}"),
        }
        self.tu: dict[str, list[Action]] = {"alice": [], "bob": []}
        self.wire: list[tuple[str, bytes]] = []  # (receiver, datagram) in send order
        self.drop: Callable[[str, bytes], bool] = lambda dest, data: False
        self._queue: list[tuple[str, str, bytes]] = []

    def carry(self, me: str, actions: list[Action]) -> None:
        """Carry out actions of ``me``'s layer: sends go on the wire, the rest to the TU."""
        for action in actions:
            if isinstance(action, Send):
                dest = str(action.peer)
                data = action.data
                self.wire.append((dest, data))
                if not self.drop(dest, data):
                    self._queue.append((dest, me, data))
            else:
                self.tu[me].append(action)
        self.pump()

    def pump(self) -> None:
        """Deliver queued datagrams until the network is quiet."""
        while self._queue:
            dest, src, data = self._queue.pop(0)
            msg = parse(data)
            layer = self.layers[dest]
            if isinstance(msg, Request):
                self.carry(dest, layer.receive_request(msg, self.now, peer=src))
            else:
                self.carry(dest, layer.receive_response(msg, self.now))

    def advance(self, until: float) -> None:
        """Run every timer of both layers up to ``until``, in deadline order."""
        while True:
            deadlines = [
                (t, name) for name, lay in self.layers.items() if (t := lay.get_timer()) is not None
            ]
            if not deadlines or min(deadlines)[0] > until:
                break
            t, name = min(deadlines)
            self.now = t
            self.carry(name, self.layers[name].handle_timer(t))
        self.now = until

    def invite(self, branch: str = "z9hG4bKalice1", method: str = "INVITE") -> Request:
        """Alice's request with her top Via (the transport's job in real life)."""
        msg = parse(
            (
                f"{method} sip:bob@bob.example SIP/2.0\r\n"
                f"Via: SIP/2.0/{self.transport} alice.example:5062;branch={branch}\r\n"
                "Max-Forwards: 70\r\n"
                "From: <sip:alice@alice.example>;tag=af\r\n"
                "To: <sip:bob@bob.example>\r\n"
                "Call-ID: call-1@alice.example\r\n"
                f"CSeq: 1 {method}\r\n"
                "Contact: <sip:alice@alice.example:5062>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        assert isinstance(msg, Request)
        return msg

    def send(self, request: Request) -> None:
        """Alice's TU starts a client transaction towards Bob."""
        _, actions = self.layers["alice"].send_request(request, self.now, peer="bob")
        self.carry("alice", actions)

    def bob_tx(self, method: str = "INVITE") -> tuple[ServerTransaction, Request]:
        """The (only) server transaction Bob's TU was handed for ``method``."""
        for action in self.tu["bob"]:
            if (
                isinstance(action, Deliver)
                and isinstance(action.message, Request)
                and action.message.method == method
                and action.key is not None
            ):
                tx = self.layers["bob"].server.get(action.key)  # type: ignore[arg-type]
                assert tx is not None
                return tx, action.message
        raise AssertionError(f"Bob got no {method}")

    def answer(self, method: str, status: int, tag: str = "bt") -> None:
        """Bob's TU answers the pending ``method`` request."""
        tx, request = self.bob_tx(method)
        response = make_response(request, status, to_tag=tag)
        self.carry("bob", self.layers["bob"].send_response(tx, response, self.now))


def delivered(actions: list[Action]) -> list[object]:
    """What reached a TU: methods/statuses of Deliver, timer of Timeout (keyless marked)."""
    out: list[object] = []
    for a in actions:
        if isinstance(a, Deliver):
            m = a.message
            what: object = m.method if isinstance(m, Request) else m.status
            out.append(what if a.key is not None else ("stray", what))
        elif isinstance(a, Timeout):
            out.append(("timeout", a.timer))
    return out


def lines(wire: list[tuple[str, bytes]]) -> list[str]:
    """Start lines of the datagrams sent, in order."""
    return [data.split(b"\r\n", 1)[0].decode() for _, data in wire]


def test_lost_invite_is_retransmitted_and_486_acked() -> None:
    """The first INVITE is lost; Timer A resends it; Bob's 486 is ACKed by Alice's transaction."""
    net = Net()
    first = {"done": False}

    def drop_first(dest: str, data: bytes) -> bool:
        if dest == "bob" and not first["done"]:
            first["done"] = True
            return True
        return False

    net.drop = drop_first
    net.send(net.invite())
    assert [] == delivered(net.tu["bob"])
    net.advance(0.5)
    assert ["INVITE"] == delivered(net.tu["bob"])
    net.advance(0.7)
    net.answer("INVITE", 486)
    assert ["INVITE"] == delivered(net.tu["bob"])  # the ACK stays in Bob's transaction
    assert [100, 486] == delivered(net.tu["alice"])  # 100 Trying sent by Bob's 200 ms timer
    assert [
        "INVITE sip:bob@bob.example SIP/2.0",
        "INVITE sip:bob@bob.example SIP/2.0",
        "SIP/2.0 100 Trying",
        "SIP/2.0 486 Busy Here",
        "ACK sip:bob@bob.example SIP/2.0",
    ] == lines(net.wire)
    net.advance(100.0)
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))
    assert 5 == len(net.wire)  # nothing retransmitted after the ACK


def test_lost_486_is_retransmitted_by_timer_g() -> None:
    """Bob's first 486 is lost; Timer G resends it, and the ACK stops further resends."""
    net = Net()
    net.send(net.invite())
    net.drop = lambda dest, data: dest == "alice" and b"486" in data and net.now < 0.3
    net.answer("INVITE", 486)
    assert [] == delivered(net.tu["alice"])
    net.advance(1.0)
    assert [486] == delivered(net.tu["alice"])
    net.advance(60.0)
    assert 2 == sum(1 for line in lines(net.wire) if line.startswith("SIP/2.0 486"))
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))


def test_200_goes_to_tu_and_2xx_ack_is_a_stray_request() -> None:
    """A 200 reaches Alice's TU; her ACK (new branch) matches no transaction at Bob."""
    net = Net()
    invite = net.invite()
    net.send(invite)
    net.answer("INVITE", 200)
    assert [200] == delivered(net.tu["alice"])
    ack = parse(
        bytes(net.invite(branch="z9hG4bKack", method="ACK")).replace(
            b"To: <sip:bob@bob.example>", b"To: <sip:bob@bob.example>;tag=bt"
        )
    )
    assert isinstance(ack, Request)
    net.carry("bob", net.layers["bob"].receive_request(ack, net.now, peer="alice"))
    assert ["INVITE", ("stray", "ACK")] == delivered(net.tu["bob"])
    net.advance(100.0)
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))
    terminated = [a for a in net.tu["alice"] + net.tu["bob"] if isinstance(a, Terminated)]
    assert 2 == len(terminated)


def test_options_with_lost_200_absorbed_by_server_transaction() -> None:
    """A lost 200 to OPTIONS: Alice's Timer E resends, Bob's transaction answers from memory."""
    net = Net()
    net.send(net.invite(method="OPTIONS"))
    net.drop = lambda dest, data: dest == "alice" and net.now < 0.1
    net.answer("OPTIONS", 200)
    net.advance(0.5)
    assert [200] == delivered(net.tu["alice"])
    assert ["OPTIONS"] == delivered(net.tu["bob"])  # the retransmission never reached the TU
    net.advance(100.0)
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))


def test_cancel_flow_200_and_487_then_ack() -> None:
    """CANCEL after 180: Bob answers 200 to it and 487 to the INVITE, Alice ACKs the 487."""
    net = Net()
    invite = net.invite()
    net.send(invite)
    net.answer("INVITE", 180, tag="bt")
    client = net.layers["alice"].client[ClientKey("z9hG4bKalice1", "INVITE")]
    assert client.can_cancel  # type: ignore[union-attr]
    net.send(build_cancel(invite))
    cancel_tx, cancel = net.bob_tx("CANCEL")
    answer, actions = net.layers["bob"].handle_cancel(cancel, net.now, to_tag="bt")
    net.carry("bob", actions)
    net.carry("bob", net.layers["bob"].send_response(cancel_tx, answer, net.now))
    assert [180, 487, 200] == delivered(net.tu["alice"])
    assert "ACK sip:bob@bob.example SIP/2.0" == lines(net.wire)[-2]
    net.advance(100.0)
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))


def test_cancel_for_unknown_invite_gets_481() -> None:
    """A CANCEL that matches no INVITE transaction is answered 481 (§9.2)."""
    net = Net()
    cancel = build_cancel(net.invite())
    answer, actions = net.layers["bob"].handle_cancel(cancel, 0.0)
    assert (481, []) == (answer.status, actions)


def test_unanswered_invite_times_out_with_timer_b() -> None:
    """Bob never answers (all datagrams lost): Alice's TU gets Timer B at 32 s."""
    net = Net()
    net.drop = lambda dest, data: True
    net.send(net.invite())
    net.advance(40.0)
    assert [("timeout", Timer.B)] == delivered(net.tu["alice"])
    assert 7 == len(net.wire)  # the INVITE and six Timer A retransmissions
    assert 0 == len(net.layers["alice"])


def test_tcp_no_retransmissions_and_immediate_cleanup() -> None:
    """Over TCP nothing is retransmitted and Timers D/I are zero: tables empty at once."""
    net = Net(transport="TCP")
    net.send(net.invite())
    net.answer("INVITE", 603)
    assert [603] == delivered(net.tu["alice"])
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))
    assert net.layers["alice"].get_timer() is None


def test_stray_response_goes_to_tu_core() -> None:
    """A response matching no client transaction is delivered with key None (§18.1.2)."""
    net = Net()
    resp = make_response(net.invite(), 200, to_tag="x")
    assert [("stray", 200)] == delivered(net.layers["alice"].receive_response(resp, 0.0))


def test_new_branch_and_duplicate_transaction() -> None:
    """Branches are the magic cookie plus the injected token; a duplicate client key is refused."""
    layer = TransactionLayer(lambda: "tok")
    assert "z9hG4bKtok" == layer.new_branch()
    net = Net()
    net.send(net.invite())
    with pytest.raises(TransactionError):
        net.layers["alice"].send_request(net.invite(), 0.0, peer="bob")


def test_layer_timer_heap_tracks_earliest_deadline() -> None:
    """get_timer is the earliest deadline over every machine and moves as they change."""
    net = Net()
    layer = net.layers["alice"]
    assert layer.get_timer() is None
    layer.send_request(net.invite(), 0.0, peer="bob")
    layer.send_request(net.invite(branch="z9hG4bKo", method="OPTIONS"), 0.2, peer="bob")
    assert 0.5 == layer.get_timer()
    layer.handle_timer(0.5)
    assert pytest.approx(0.7) == layer.get_timer()
    ringing = make_response(net.invite(), 180, to_tag="t")
    layer.receive_response(ringing, 0.6)
    assert pytest.approx(0.7) == layer.get_timer()  # only the OPTIONS is still retransmitting


def test_rfc2543_peer_matched_without_magic_cookie() -> None:
    """A legacy branch (no z9hG4bK): the retransmission and the ACK still find Bob's transaction."""
    net = Net()
    first = {"done": False}

    def drop_first_response(dest: str, data: bytes) -> bool:
        if dest == "alice" and b"486" in data and not first["done"]:
            first["done"] = True
            return True
        return False

    net.drop = drop_first_response
    net.send(net.invite(branch="legacy-1"))
    net.answer("INVITE", 486)
    net.advance(1.0)  # Timer G resends the lost 486; Alice ACKs with the same top Via
    assert [486] == delivered(net.tu["alice"])
    assert ["INVITE"] == delivered(net.tu["bob"])
    tx, _ = net.bob_tx()
    assert "confirmed" == tx.state
    net.advance(100.0)
    assert (0, 0) == (len(net.layers["alice"]), len(net.layers["bob"]))


def test_response_without_branch_is_dropped() -> None:
    """A response whose top Via has no branch cannot answer anything we sent: it is dropped."""
    net = Net()
    resp = make_response(net.invite(branch="x"), 200, to_tag="x")
    resp.headers.set("Via", "SIP/2.0/UDP alice.example:5062")
    assert [] == net.layers["alice"].receive_response(resp, 0.0)
