"""Tests of RFC 3261 §12 dialogs: creation on both sides, route sets, in-dialog requests, CSeq.

Messages are wire bytes in the style of RFC 3261 §24 (Alice calls Bob through
two record-routing proxies) parsed the way the transport would.
"""

from __future__ import annotations

import pytest

from gateway.sip import URI, NameAddr, Request, Response, make_response, parse
from gateway.sip.dialog import Dialog, DialogError, DialogId, DialogState

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Length: 0\r\n\r\n"
)

# The INVITE as it reaches Bob after two proxies that record-routed (§16.6 step 4).
INVITE_AT_UAS = INVITE.replace(
    b"Max-Forwards: 70\r\n",
    b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1\r\n"
    b"Max-Forwards: 68\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n",
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def request(data: bytes) -> Request:
    """Parse request bytes."""
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def response(data: bytes) -> Response:
    """Parse response bytes."""
    msg = parse(data)
    assert isinstance(msg, Response)
    return msg


def uac_dialog() -> Dialog:
    """Alice's confirmed dialog after the 200 OK."""
    return Dialog.from_uac(request(INVITE), response(OK))


def uas_dialog() -> Dialog:
    """Bob's confirmed dialog, created from the record-routed INVITE."""
    return Dialog.from_uas(request(INVITE_AT_UAS), "a6c85cf", "sip:bob@192.0.2.4")


def uris(names: list[NameAddr] | tuple[NameAddr, ...]) -> list[str]:
    """The URIs of NameAddr values as text."""
    return [str(n.uri) for n in names]


# --------------------------------------------------------------------------- creation


def test_uac_dialog_from_2xx() -> None:
    """§12.1.2: id from From tag / To tag, route set = Record-Route reversed, target = Contact."""
    d = uac_dialog()
    assert DialogId("a84b4c76e66710", "1928301774", "a6c85cf") == d.id
    assert DialogState.CONFIRMED == d.state
    assert (314159, None) == (d.local_seq, d.remote_seq)
    assert ["sip:p1.example.com;lr", "sip:p2.example.com;lr"] == uris(d.route_set)
    assert "sip:bob@192.0.2.4" == str(d.remote_target)
    assert "sip:alice@atlanta.example.com" == str(d.local_uri.uri)
    assert "sip:bob@biloxi.example.com" == str(d.remote_uri.uri)
    assert d.local_uri.tag is None and d.remote_uri.tag is None
    assert d.secure is False
    assert DialogId.for_response(response(OK)) == d.id


def test_uac_early_dialog_from_180_with_tag() -> None:
    """A 1xx with a To tag creates an early dialog; one without a tag creates none."""
    ringing = response(OK.replace(b"200 OK", b"180 Ringing"))
    d = Dialog.from_uac(request(INVITE), ringing)
    assert d.is_early
    no_tag = response(OK.replace(b"200 OK", b"180 Ringing").replace(b";tag=a6c85cf", b""))
    with pytest.raises(DialogError):
        Dialog.from_uac(request(INVITE), no_tag)


@pytest.mark.parametrize("start_line", [b"SIP/2.0 100 Trying", b"SIP/2.0 486 Busy Here"])
def test_uac_no_dialog_from_100_or_failure(start_line: bytes) -> None:
    """100 Trying and failure responses never create a dialog (§12.1)."""
    with pytest.raises(DialogError) as info:
        Dialog.from_uac(request(INVITE), response(OK.replace(b"SIP/2.0 200 OK", start_line)))
    assert 500 == info.value.status_code


def test_uac_2xx_without_contact_is_refused() -> None:
    """A 2xx without Contact cannot give a remote target (§12.1.2): 400."""
    bad = response(OK.replace(b"Contact: <sip:bob@192.0.2.4>\r\n", b""))
    with pytest.raises(DialogError) as info:
        Dialog.from_uac(request(INVITE), bad)
    assert 400 == info.value.status_code


def test_uas_dialog_from_request() -> None:
    """§12.1.1: route set = Record-Route in order, remote seq = CSeq, local seq empty."""
    d = uas_dialog()
    assert DialogId("a84b4c76e66710", "a6c85cf", "1928301774") == d.id
    assert ["sip:p2.example.com;lr", "sip:p1.example.com;lr"] == uris(d.route_set)
    assert (None, 314159) == (d.local_seq, d.remote_seq)
    assert "sip:alice@pc33.atlanta.example.com" == str(d.remote_target)
    assert "sip:alice@atlanta.example.com" == str(d.remote_uri.uri)
    assert "sip:bob@biloxi.example.com" == str(d.local_uri.uri)
    assert URI.parse("sip:bob@192.0.2.4") == d.local_target
    assert DialogState.CONFIRMED == d.state


def test_uas_early_dialog_and_confirm() -> None:
    """A UAS dialog created by a 1xx is early until the UAS confirms it with its 2xx."""
    d = Dialog.from_uas(
        request(INVITE), "t", NameAddr(None, URI.parse("sip:bob@192.0.2.4")), early=True
    )
    assert d.is_early
    d.confirm()
    assert DialogState.CONFIRMED == d.state


def test_uas_request_without_contact_is_refused() -> None:
    """A dialog-creating request must have a Contact (§12.1.1): 400."""
    bad = request(INVITE.replace(b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n", b""))
    with pytest.raises(DialogError) as info:
        Dialog.from_uas(bad, "t", URI.parse("sip:bob@192.0.2.4"))
    assert 400 == info.value.status_code


def test_secure_flag_needs_sips_and_tls() -> None:
    """§12.1.1: secure only when the Request-URI is SIPS and the request went over TLS."""
    sips_tls = INVITE.replace(b"INVITE sip:", b"INVITE sips:").replace(b"UDP", b"TLS")
    assert Dialog.from_uas(request(sips_tls), "t", "sips:bob@192.0.2.4").secure is True
    sips_udp = INVITE.replace(b"INVITE sip:", b"INVITE sips:")
    assert Dialog.from_uas(request(sips_udp), "t", "sips:bob@192.0.2.4").secure is False


# --------------------------------------------------------------------------- in-dialog requests


def test_create_bye_loose_routing() -> None:
    """§12.2.1.1 loose route: Request-URI = remote target, Route = route set, CSeq + 1."""
    d = uac_dialog()
    bye = request(bytes(d.create_request("BYE", via="SIP/2.0/UDP pc33;branch=z9hG4bKb")))
    assert "BYE" == bye.method
    assert "sip:bob@192.0.2.4" == str(bye.uri)
    assert ["sip:p1.example.com;lr", "sip:p2.example.com;lr"] == uris(bye.route)
    assert (314160, "BYE") == (bye.cseq.seq, bye.cseq.method)
    assert ("1928301774", "a6c85cf") == (bye.from_.tag, bye.to.tag)
    assert "a84b4c76e66710" == bye.call_id
    assert "z9hG4bKb" == bye.via[0].branch
    assert [] == bye.contact  # BYE is not a target refresh
    assert 314160 == d.local_seq


def test_create_request_strict_routing() -> None:
    """§12.2.1.1 strict route: Request-URI = first route (params stripped), remote target last."""
    strict = OK.replace(
        b"Record-Route: <sip:p1.example.com;lr>",
        b"Record-Route: <sip:p1.example.com;method=INVITE?X-Foo=bar>",
    )
    d = Dialog.from_uac(request(INVITE), response(strict))
    reinvite = d.create_request("INVITE")
    assert "sip:p1.example.com" == str(reinvite.uri)
    assert ["sip:p2.example.com;lr", "sip:bob@192.0.2.4"] == uris(reinvite.route)
    assert ["sip:alice@pc33.atlanta.example.com"] == [str(c.uri) for c in reinvite.contact]


def test_create_request_without_route_set() -> None:
    """An empty route set: no Route header, Request-URI = remote target."""
    plain = OK.replace(b"Record-Route: <sip:p2.example.com;lr>\r\n", b"").replace(
        b"Record-Route: <sip:p1.example.com;lr>\r\n", b""
    )
    d = Dialog.from_uac(request(INVITE), response(plain))
    info = d.create_request("INFO", headers=[("Content-Type", "text/plain")], body=b"hi")
    assert [] == info.route
    assert "sip:bob@192.0.2.4" == str(info.uri)
    assert (b"hi", "text/plain") == (info.body, info.content_type)


def test_uas_first_request_uses_initial_seq_then_increments() -> None:
    """A UAS dialog's empty local sequence starts at initial_seq and then counts up."""
    d = Dialog.from_uas(request(INVITE_AT_UAS), "a6c85cf", "sip:bob@192.0.2.4", initial_seq=7)
    first = d.create_request("INFO")
    second = d.create_request("BYE")
    assert [7, 8] == [first.cseq.seq, second.cseq.seq]
    # UAS view: From is Bob (local) with his tag, To is Alice with hers.
    assert ("a6c85cf", "1928301774") == (first.from_.tag, first.to.tag)
    assert ["sip:p2.example.com;lr", "sip:p1.example.com;lr"] == uris(first.route)
    assert "sip:alice@pc33.atlanta.example.com" == str(first.uri)


def test_ack_uses_invite_cseq_without_incrementing() -> None:
    """ACK for a 2xx carries the INVITE's CSeq number and does not consume a number."""
    d = uac_dialog()
    ack = d.create_request("ACK", cseq=314159)
    assert (314159, "ACK") == (ack.cseq.seq, ack.cseq.method)
    assert 314159 == d.local_seq
    with pytest.raises(DialogError):
        d.create_request("ACK")


def test_explicit_cseq_must_increase() -> None:
    """An explicit CSeq for a new request must be above the local sequence number."""
    d = uac_dialog()
    with pytest.raises(DialogError):
        d.create_request("INFO", cseq=314159)
    assert 400000 == d.create_request("INFO", cseq=400000).cseq.seq


def test_terminated_dialog_refuses_new_requests() -> None:
    """After termination no request can be built (481)."""
    d = uac_dialog()
    d.terminate()
    with pytest.raises(DialogError) as info:
        d.create_request("BYE")
    assert 481 == info.value.status_code


# --------------------------------------------------------------------------- UAS processing


def test_uac_request_is_accepted_by_uas_dialog() -> None:
    """A request built by Alice's dialog matches Bob's dialog id and updates its remote seq."""
    alice, bob = uac_dialog(), uas_dialog()
    info = request(bytes(alice.create_request("INFO", via="SIP/2.0/UDP pc33;branch=z9hG4bK1")))
    assert bob.id == DialogId.for_incoming_request(info)
    bob.receive_request(info)
    assert 314160 == bob.remote_seq


def test_lower_cseq_is_rejected_with_500() -> None:
    """§12.2.2: a CSeq lower than the remote sequence number is answered 500."""
    alice, bob = uac_dialog(), uas_dialog()
    bob.receive_request(alice.create_request("INFO", cseq=314170))
    late = alice.create_request("INFO", cseq=314171)
    late.headers.set("CSeq", "314165 INFO")
    with pytest.raises(DialogError) as info:
        bob.receive_request(late)
    assert (500, "Server Internal Error") == (info.value.status_code, info.value.reason_phrase)
    assert 314170 == bob.remote_seq


def test_ack_and_cancel_are_not_ordered() -> None:
    """ACK and CANCEL carry the INVITE's CSeq: equal or lower numbers are not errors."""
    alice, bob = uac_dialog(), uas_dialog()
    bob.receive_request(alice.create_request("INFO"))
    bob.receive_request(alice.create_request("ACK", cseq=314159))
    assert 314160 == bob.remote_seq


def test_empty_remote_seq_is_set_by_first_request() -> None:
    """A UAC dialog has no remote sequence number until the peer sends a request."""
    alice = uac_dialog()
    bob = uas_dialog()
    bye = bob.create_request("BYE")
    alice.receive_request(bye)
    assert 1 == alice.remote_seq
    assert DialogState.TERMINATED == alice.state


def test_reinvite_refreshes_remote_target() -> None:
    """A re-INVITE's Contact replaces the remote target (§12.2.2 target refresh)."""
    alice, bob = uac_dialog(), uas_dialog()
    reinvite = alice.create_request("INVITE")
    reinvite.headers.set("Contact", "<sip:alice@198.51.100.9:5070>")
    bob.receive_request(reinvite)
    assert "sip:alice@198.51.100.9:5070" == str(bob.remote_target)
    info = alice.create_request("INFO")
    info.headers.set("Contact", "<sip:elsewhere@203.0.113.1>")
    bob.receive_request(info)
    assert "sip:alice@198.51.100.9:5070" == str(bob.remote_target)


def test_request_for_another_dialog_gets_481() -> None:
    """A request whose tags do not match the dialog is answered 481."""
    bob = uas_dialog()
    stray = request(
        INVITE.replace(b"INVITE", b"BYE").replace(
            b"Bob <sip:bob@biloxi.example.com>", b"<sip:bob@biloxi.example.com>;tag=other"
        )
    )
    with pytest.raises(DialogError) as info:
        bob.receive_request(stray)
    assert 481 == info.value.status_code


def test_bye_terminates_and_later_requests_get_481() -> None:
    """BYE ends the dialog; a later in-dialog request is answered 481."""
    alice, bob = uac_dialog(), uas_dialog()
    bob.receive_request(alice.create_request("BYE"))
    assert DialogState.TERMINATED == bob.state
    with pytest.raises(DialogError) as info:
        bob.receive_request(alice.create_request("INFO"))
    assert 481 == info.value.status_code


# --------------------------------------------------------------------------- UAC processing


def test_early_dialog_confirmed_by_2xx_recomputes_route_and_target() -> None:
    """§13.2.2.4: the 2xx confirms an early dialog and its route set and target replace the 1xx's."""
    ringing = response(
        OK.replace(b"200 OK", b"183 Session Progress")
        .replace(b"Record-Route: <sip:p2.example.com;lr>\r\n", b"")
        .replace(b"Contact: <sip:bob@192.0.2.4>", b"Contact: <sip:bob@192.0.2.99>")
    )
    d = Dialog.from_uac(request(INVITE), ringing)
    assert ["sip:p1.example.com;lr"] == uris(d.route_set)
    d.receive_response(response(OK))
    assert DialogState.CONFIRMED == d.state
    assert ["sip:p1.example.com;lr", "sip:p2.example.com;lr"] == uris(d.route_set)
    assert "sip:bob@192.0.2.4" == str(d.remote_target)


def test_early_dialog_provisional_updates_target() -> None:
    """A later 1xx in the early dialog may bring a new Contact."""
    ringing = response(OK.replace(b"200 OK", b"180 Ringing"))
    d = Dialog.from_uac(request(INVITE), ringing)
    d.receive_response(
        response(OK.replace(b"200 OK", b"183 Progress").replace(b"192.0.2.4", b"192.0.2.5"))
    )
    assert "sip:bob@192.0.2.5" == str(d.remote_target)
    assert d.is_early


def test_early_dialog_ends_on_failure() -> None:
    """A non-2xx final to the INVITE ends an early dialog (§12.3)."""
    d = Dialog.from_uac(request(INVITE), response(OK.replace(b"200 OK", b"180 Ringing")))
    d.receive_response(response(OK.replace(b"200 OK", b"486 Busy Here")))
    assert DialogState.TERMINATED == d.state


@pytest.mark.parametrize("status", [481, 408])
def test_481_or_408_to_in_dialog_request_ends_dialog(status: int) -> None:
    """§12.2.1.2: a 481 or 408 to an in-dialog request terminates the dialog."""
    d = uac_dialog()
    info = d.create_request("INFO", via="SIP/2.0/UDP pc33;branch=z9hG4bKi")
    d.receive_response(make_response(info, status))
    assert DialogState.TERMINATED == d.state


def test_2xx_to_reinvite_refreshes_target_but_not_to_info() -> None:
    """§12.2.1.2: the Contact of a 2xx to a target refresh replaces the remote target."""
    d = uac_dialog()
    reinvite = d.create_request("INVITE", via="SIP/2.0/UDP pc33;branch=z9hG4bKr")
    d.receive_response(make_response(reinvite, 200, headers=[("Contact", "<sip:bob@192.0.2.77>")]))
    assert "sip:bob@192.0.2.77" == str(d.remote_target)
    info = d.create_request("INFO", via="SIP/2.0/UDP pc33;branch=z9hG4bKs")
    d.receive_response(make_response(info, 200, headers=[("Contact", "<sip:bob@192.0.2.78>")]))
    assert "sip:bob@192.0.2.77" == str(d.remote_target)
    assert DialogState.CONFIRMED == d.state


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("make", [uac_dialog, uas_dialog], ids=["uac", "uas"])
def test_record_round_trip_rebuilds_the_same_dialog(make: object) -> None:
    """to_record → JSON → from_record gives an equal dialog that builds the same BYE."""
    import json

    assert callable(make)
    original: Dialog = make()
    original.remote_target = URI.parse("sip:bob@192.0.2.4:5070;transport=tcp")
    record = json.loads(json.dumps(original.to_record()))
    rebuilt = Dialog.from_record(record)
    assert original == rebuilt
    assert bytes(original.create_request("BYE")) == bytes(rebuilt.create_request("BYE"))


def test_record_keeps_display_names_tagless_uris_and_empty_seq() -> None:
    """A UAS dialog that never sent a request keeps local_seq empty and its initial_seq."""
    d = Dialog.from_uas(request(INVITE), "t1", "sip:gw@192.0.2.9", initial_seq=7)
    record = d.to_record()
    assert (None, 314159, 7) == (record["local_seq"], record["remote_seq"], record["initial_seq"])
    assert "tag=" not in record["remote_uri"]
    rebuilt = Dialog.from_record(record)
    assert ("Alice", "sip:alice@atlanta.example.com") == (
        rebuilt.remote_uri.display_name,
        str(rebuilt.remote_uri.uri),
    )
    assert 7 == rebuilt.create_request("BYE").cseq.seq
    assert (None, "t1", "1928301774") == (
        rebuilt.remote_uri.tag,
        rebuilt.local_tag,
        rebuilt.remote_tag,
    )


def test_damaged_record_raises_dialog_error() -> None:
    """A record missing a field or with an unknown state is refused, not half-built."""
    record = uac_dialog().to_record()
    broken = dict(record)
    del broken["remote_target"]
    with pytest.raises(DialogError):
        Dialog.from_record(broken)  # type: ignore[arg-type]
    with pytest.raises(DialogError):
        Dialog.from_record({**record, "state": "half-open"})
