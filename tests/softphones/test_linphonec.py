"""linphonec (Debian ``linphone-cli``) through ``dialgate run``: a real agent softphone.

One rig for the module (see conftest): the simulator carrier, the gateway with
alice bound to card c1, and linphonec as alice, headless (no sound card; its
console on stdin/stdout, ``-a`` auto-answer, ``-d 6`` log file = its SIP
trace). Each test reads what linphonec itself printed and logged.
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
    PASSWORD,
    Linphonec,
    Rig,
    requests,
    responses,
)

pytestmark = pytest.mark.integration

PHONE = Linphonec
INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh"


def test_linphonec_is_installed_by_the_install_script() -> None:
    assert "linphone-cli" in INSTALL_SCRIPT.read_text()
    assert shutil.which("linphonec") is not None, (
        "linphonec is missing: run scripts/install-system-deps.sh (Debian package linphone-cli)"
    )


def test_registers_through_dialgate_with_digest(idle: Rig) -> None:
    phone = idle.phone
    mark = phone.mark()
    phone.send("proxy list")
    phone.expect(r"registered: yes", since=mark)
    answers = [m.status for m in responses(phone.sip_trace(), "REGISTER")]
    assert [401, 200] == answers[:2]
    [challenge, *_] = responses(phone.sip_trace(), "REGISTER")
    assert any('realm="dialgate"' in c for c in challenge.headers["www-authenticate"])
    [_, authorized, *_] = requests(phone.sip_trace(), "REGISTER", "sent")
    assert 'username="alice"' in (authorized.header("Authorization") or "")
    ok = phone.wait_registered()
    assert "tag=" in (ok.header("To") or ""), "the REGISTER 200 OK has no To tag"


def call_up(rig: Rig, callee: str) -> str:
    """linphonec calls ``callee``; the carrier answers; the carrier's Call-ID of the B-leg."""
    phone = rig.phone
    mark = phone.mark()
    phone.dial(callee)
    call = phone.expect(rf"Call (\d+) to sip:{callee}@\S+ in progress\.", since=mark)
    phone.expect(rf"Call {call.group(1)} with sip:{callee}@\S+ connected\.", since=mark)
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
    phone.expect(rf"Call \d+ with sip:{CALLEE_PHONE_HANGS_UP}@\S+ ended \(No error\)\.", since=mark)
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
    phone.expect(
        rf"Call \d+ with sip:{CALLEE_CARRIER_HANGS_UP}@\S+ ended \(No error\)\.", since=mark
    )
    assert bye_before + 1 == len(requests(phone.sip_trace(), "BYE", "received"))


def test_call_refused_by_policy_shows_403_with_reason(idle: Rig) -> None:
    phone = idle.phone
    mark = phone.mark()
    phone.dial(DNC_CALLEE)
    phone.expect(rf"Call \d+ with sip:{DNC_CALLEE}@\S+ error\.", since=mark)
    # linphonec takes a 403 to an INVITE it authenticated for refused credentials and
    # asks for the password on its console: answer it, or the next command is eaten.
    prompt = phone.expect(r"Password for alice on dialgate: ", since=mark)
    phone.send(PASSWORD)
    phone.expect(r"linphonec> ", since=prompt.end())
    refusals = [m for m in responses(phone.sip_trace(), "INVITE") if m.status == 403]
    assert 1 == len(refusals)
    assert "SIP/2.0 403 Forbidden" == refusals[0].first_line
    assert 'SIP;cause=403;text="dnc"' == refusals[0].header("Reason")
    assert [] == [r for r in idle.carrier.invites() if DNC_CALLEE in str(r.uri)]
    [*_, blocked] = [e for e in idle.gateway.events("call.ended") if e["outcome"] == "blocked"]
    assert "dnc" == blocked["reason"]
    # The phone still works after the refusal (and the password prompt).
    mark = phone.mark()
    phone.send("proxy list")
    phone.expect(r"registered: yes", since=mark)


def test_inbound_call_rings_the_bound_phone_which_answers(idle: Rig) -> None:
    phone = idle.phone
    mark = phone.mark()
    response, _ = idle.carrier.invite(idle.address, CARD.number)
    assert 200 == response.status
    incoming = phone.expect(
        r"Receiving new incoming call from sip:\+8613987654321@\S+, assigned id (\d+)", since=mark
    )
    phone.expect(r"auto answering", since=mark)
    phone.expect(rf"Call {incoming.group(1)} with sip:\+8613987654321@\S+ connected\.", since=mark)
    [invite] = requests(phone.sip_trace(), "INVITE", "received")[-1:]
    assert re.match(r"INVITE sip:alice@127\.0\.0\.1:\d+", invite.first_line), invite.first_line
    [call_id] = idle.carrier.wait_dialogs(1)
    assert 200 == idle.carrier.bye(call_id).status
    phone.expect(rf"Call {incoming.group(1)} with \S+ ended \(No error\)\.", since=mark)
