"""The B2BUA's timers run on the endpoint's one timer; a refused state move is contained."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from gateway.callpath.calls import LEGAL_TRANSITIONS, CallState
from gateway.transport.endpoint import Scheduled
from simulator.testkit import eventually
from tests.callpath.conftest import Rig


async def test_no_answer_timer_is_on_the_endpoint_and_cancelled_at_the_end(rig: Rig) -> None:
    """An answered call holds its Timer C on the endpoint's schedule; the BYE cancels it."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    b2bua = rig.gateway.b2bua
    assert b2bua is not None
    [call] = b2bua.calls.values()
    timer = call.no_answer_timer
    assert isinstance(timer, Scheduled) and not timer.cancelled
    endpoint = rig.gateway.endpoint
    assert any(entry[2] is timer for entry in endpoint._scheduled)
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: not b2bua.calls)
    assert timer.cancelled


async def test_an_illegal_state_move_is_logged_and_the_gateway_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move the table refuses raises inside the handler, which logs it; the next call
    is relayed as usual (the exception never reaches the endpoint)."""
    for state in (CallState.DIALING, CallState.EARLY):
        monkeypatch.setitem(
            LEGAL_TRANSITIONS, state, LEGAL_TRANSITIONS[state] - {CallState.ANSWERED}
        )
    with capture_logs() as logs:
        first = asyncio.ensure_future(rig.alice.call("13912345670"))
        await eventually(lambda: any(e["event"] == "call.b_response.failed" for e in logs))
    first.cancel()
    [failed] = [e for e in logs if e["event"] == "call.b_response.failed"]
    assert 200 == failed["status"]
    monkeypatch.undo()
    resp, invite = await rig.alice.call("13912345671")
    assert 200 == resp.status
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
