"""The B2BUA's own timers run on the endpoint's one timer, not on loose loop timers."""

from __future__ import annotations

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
