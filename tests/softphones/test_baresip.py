"""baresip (Debian ``baresip-core``) through ``dialgate run``: a real agent softphone.

One rig for the module (see conftest): the simulator carrier, the gateway with
alice bound to card c1, and baresip as alice, headless (``aubridge`` for audio,
no device; commands on stdin; ``answermode=auto``; ``-s`` prints its SIP trace
on stdout). Each test reads what baresip itself printed.

baresip 1.0 gives up on a 401 carrying two digest challenges (MD5 and
SHA-256), so the gateway offers MD5 alone here, as it does by default.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.softphones.conftest import (
    CALLEE_CARRIER_HANGS_UP,
    CALLEE_PHONE_HANGS_UP,
    CARD,
    DNC_CALLEE,
    Baresip,
    Rig,
    requests,
    responses,
)

pytestmark = pytest.mark.integration

PHONE = Baresip
SIP_EXTRA = 'digest_algorithms = ["MD5"]\n'
INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh"


def test_baresip_is_installed_by_the_install_script() -> None:
    assert "baresip-core" in INSTALL_SCRIPT.read_text()
    assert shutil.which("baresip") is not None, (
        "baresip is missing: run scripts/install-system-deps.sh (Debian package baresip-core)"
    )


def test_registers_through_dialgate_with_digest(idle: Rig) -> None:
    phone = idle.phone
    phone.expect(r"alice@127\.0\.0\.1: \{0/UDP/v4\} 200 OK \(\) \[1 binding\]")
    assert "Function not implemented" not in phone.output
    answers = responses(phone.sip_trace(), "REGISTER")
    assert [401, 200] == [m.status for m in answers][:2]
    # One challenge, MD5: baresip 1.0 gives up when SHA-256 is offered beside it.
    challenges = answers[0].headers["www-authenticate"]
    assert [["MD5"]] == [re.findall(r"algorithm=([\w-]+)", c) for c in challenges]
    [_, authorized, *_] = requests(phone.sip_trace(), "REGISTER", "sent")
    assert 'username="alice"' in (authorized.header("Authorization") or "")
    ok = phone.wait_registered()
    assert "tag=" in (ok.header("To") or ""), "the REGISTER 200 OK has no To tag"


def call_up(rig: Rig, callee: str) -> str:
    """baresip calls ``callee``; the carrier answers; the carrier's Call-ID of the B-leg."""
    phone = rig.phone
    mark = phone.mark()
    phone.dial(callee)
    phone.expect(rf"call: connecting to 'sip:{callee}@127\.0\.0\.1'", since=mark)
    phone.expect(rf"Call established: sip:{callee}@127\.0\.0\.1", since=mark)
    [call_id] = rig.carrier.wait_dialogs(1)
    # The carrier challenges the card (401), so the answered INVITE is the last of the two.
    invite = [r for r in rig.carrier.invites() if r.call_id == call_id][-1]
    assert f"+86{callee}" == invite.uri.user
    assert CARD.number == invite.from_.uri.user  # the card's number, not alice
    return call_id


def test_outbound_call_answered_then_phone_hangs_up(idle: Rig) -> None:
    phone, ended_before = idle.phone, len(idle.gateway.events("call.ended"))
    trace = phone.sip_trace()
    sent_before, answers_before = len(requests(trace, "BYE", "sent")), len(responses(trace, "BYE"))
    call_id = call_up(idle, CALLEE_PHONE_HANGS_UP)
    mark = phone.mark()
    phone.hang_up()
    phone.expect(rf"call: terminate call '\w+' with sip:{CALLEE_PHONE_HANGS_UP}@", since=mark)
    trace = phone.expect_sip(
        "200 to its BYE", lambda t: 200 in [m.status for m in responses(t, "BYE")[answers_before:]]
    )
    assert sent_before + 1 == len(requests(trace, "BYE", "sent"))
    idle.carrier.wait_dialogs(0)
    assert "BYE" in [r.method for r in idle.carrier.requests() if r.call_id == call_id]
    [ended] = idle.gateway.events("call.ended")[ended_before:]
    assert ("answered", 200, "c1") == (ended["outcome"], ended["code"], ended["cards"])


def test_outbound_call_answered_then_carrier_hangs_up(idle: Rig) -> None:
    phone = idle.phone
    bye_before = len(requests(phone.sip_trace(), "BYE", "received"))
    call_id = call_up(idle, CALLEE_CARRIER_HANGS_UP)
    mark = phone.mark()
    assert 200 == idle.carrier.bye(call_id).status
    # baresip's word for a BYE from the far end (its one-line summary "Call with …
    # terminated (duration: …)" is printed only for calls of a second or more).
    phone.expect(
        rf"sip:{CALLEE_CARRIER_HANGS_UP}@127\.0\.0\.1: session closed: Connection reset by peer",
        since=mark,
    )
    assert bye_before + 1 == len(requests(phone.sip_trace(), "BYE", "received"))


def test_call_refused_by_policy_shows_403_with_reason(idle: Rig) -> None:
    phone = idle.phone
    mark = phone.mark()
    phone.dial(DNC_CALLEE)
    phone.expect(rf"sip:{DNC_CALLEE}@127\.0\.0\.1: session closed: 403 Forbidden", since=mark)
    refusals = [m for m in responses(phone.sip_trace(), "INVITE") if m.status == 403]
    assert 1 == len(refusals)
    assert "SIP/2.0 403 Forbidden" == refusals[0].first_line
    assert 'SIP;cause=403;text="dnc"' == refusals[0].header("Reason")
    assert [] == [r for r in idle.carrier.invites() if DNC_CALLEE in str(r.uri)]
    [*_, blocked] = [e for e in idle.gateway.events("call.ended") if e["outcome"] == "blocked"]
    assert "dnc" == blocked["reason"]


def test_inbound_call_rings_the_bound_phone_which_answers(idle: Rig) -> None:
    phone = idle.phone
    mark = phone.mark()
    response, _ = idle.carrier.invite(idle.address, CARD.number)
    assert 200 == response.status
    phone.expect(
        r"call: answering call on line \d+ from sip:\+8613987654321@\S+ with 200", since=mark
    )
    phone.expect(r"Call established: sip:\+8613987654321@", since=mark)
    [invite] = requests(phone.sip_trace(), "INVITE", "received")[-1:]
    assert re.match(r"INVITE sip:alice-\w+@127\.0\.0\.1:\d+", invite.first_line), invite.first_line
    [call_id] = idle.carrier.wait_dialogs(1)
    assert 200 == idle.carrier.bye(call_id).status
    phone.expect(r"sip:\+8613987654321@\S+: session closed: Connection reset by peer", since=mark)
