"""One call id everywhere (issue 14 item 6), with the whole gateway on a real mosquitto.

An agent calls through ``gateway.app.serve`` to the call-path test carrier; the
SIP Call-ID of the agent's INVITE (the A-leg) must be the ``call_id`` of every
``dialgate/calls/*`` event (``answered`` included), of the CDR, of the admin
API's ``/cdrs?call_id=`` and of every log line of the call; the carrier's
Call-ID (the B-leg) is the events' and the B-leg log lines' ``b_call_id``.
Callee numbers stay masked in events and logs unless ``mask_numbers = false``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway import app
from gateway.callpath.element import Gateway
from gateway.telemetry.mqtt import Topics
from simulator.testkit import Mosquitto, wait_for
from tests.callpath.conftest import Agent, Carrier, gateway_settings
from tests.events.helpers import Collector, http_get

ROOT = "dg"
NODE = "gw-ids"
TOPICS = Topics(ROOT, NODE)
CALLEE = "13912345678"
E164 = "+8613912345678"


@dataclass
class Running:
    """serve() running in a task, with its carrier and a registered agent."""

    gateway: Gateway
    carrier: Carrier
    alice: Agent


async def _serve(mosquitto: Mosquitto, tmp_path: Path, *, mask: bool) -> AsyncIterator[Running]:
    carrier = Carrier()
    await carrier.start()
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={
            "mqtt": {"url": mosquitto.url, "root": ROOT, "node": NODE},
            "policy": {
                "default_region": "CN",
                "calling_hours": "00:00-24:00",
                "mask_numbers": mask,
            },
        },
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(app.serve(settings, ready=ready, stop=stop, on_ready=started.append))
    await asyncio.wait_for(ready.wait(), 10)
    gateway = started[-1]
    alice = Agent("alice", "s3cret", gateway.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        publisher = gateway.telemetry.publisher
        assert publisher is not None
        assert await publisher.wait_connected(10)
        yield Running(gateway, carrier, alice)
    finally:
        await alice.close()
        stop.set()
        await asyncio.wait_for(task, 15)
        await carrier.close()


@pytest.fixture
async def running(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Running]:
    async for r in _serve(mosquitto, tmp_path, mask=True):
        yield r


@pytest.fixture
async def running_clear(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Running]:
    async for r in _serve(mosquitto, tmp_path, mask=False):
        yield r


async def _answered_call(
    running: Running, mosquitto: Mosquitto
) -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
    """One answered call hung up by the agent: (A Call-ID, B Call-ID, events by kind, logs)."""
    kinds = ("attempt", "ringing", "answered", "ended")
    async with Collector(mosquitto.port, f"{ROOT}/calls/#") as sub:
        await asyncio.sleep(0.2)  # the subscription is in place before the call
        with structlog.testing.capture_logs() as logs:
            resp, invite = await running.alice.call(CALLEE)
            assert 200 == resp.status
            assert 200 == (await running.alice.send_in_dialog(invite.call_id, "BYE")).status
            assert await wait_for(lambda: all(sub.on(TOPICS.calls(k)) for k in kinds), 10), [
                m.topic for m in sub.messages
            ]
        events = {k: sub.on(TOPICS.calls(k))[0].json for k in kinds}
    [b_invite] = running.carrier.invites()
    return invite.call_id, b_invite.call_id, events, logs


async def test_a_leg_call_id_in_events_cdr_api_and_logs(
    running: Running, mosquitto: Mosquitto
) -> None:
    """answered is published; A-leg Call-ID everywhere, B-leg Call-ID where it belongs."""
    a_id, b_id, events, logs = await _answered_call(running, mosquitto)
    assert a_id != b_id
    assert {k: a_id for k in events} == {k: e["call_id"] for k, e in events.items()}
    assert {"attempt": None, "ringing": b_id, "answered": b_id, "ended": b_id} == {
        k: e.get("b_call_id") for k, e in events.items()
    }
    answered = events["answered"]
    assert (200, "c1", "alice", "+86139****5678") == (
        answered["status"],
        answered["card"],
        answered["agent"],
        answered["callee"],
    )
    assert "answered" == events["ended"]["outcome"]

    # The CDR and the admin API: the same id, ISO times.
    store = running.gateway.store
    assert store is not None
    assert [a_id] == [c.call_id for c in store.cdrs()]
    url = running.gateway.admin_url
    assert url is not None
    host, _, port = url.removeprefix("http://").rpartition(":")
    query = urllib.parse.urlencode({"call_id": a_id})
    status, _, body = await http_get(host, int(port), f"/cdrs?{query}")
    assert 200 == status, body
    [record] = json.loads(body)["cdrs"]
    assert (a_id, "answered") == (record["call_id"], record["outcome"])
    assert record["answer_at"].endswith("Z")
    status, _, body = await http_get(host, int(port), "/cdrs?call_id=nobody%40nowhere")
    assert (200, 0) == (status, json.loads(body)["count"])
    status, _, body = await http_get(host, int(port), f"/cdrs.csv?{query}")
    rows = body.decode().splitlines()
    assert 2 == len(rows) and rows[1].startswith(f"{a_id},")

    # Log lines of the call: call_id is the A-leg's, never the internal key as `call`.
    mine = [e for e in logs if e.get("call_id") == a_id]
    # One INFO line per call, its summary at the end; its steps are DEBUG lines.
    [summary] = [e for e in mine if e["log_level"] == "info"]
    assert "call.ended" == summary["event"]
    assert [] == [e for e in logs if "call" in e]
    assert (b_id, "answered", 200, "c1", "c1", "alice") == (
        summary["b_call_ids"],
        summary["outcome"],
        summary["code"],
        summary["card"],
        summary["cards"],
        summary["agent"],
    )
    assert "+86139****5678" == summary["destination"]
    assert 0 <= summary["ring"] <= summary["answer"] <= summary["duration"]
    assert summary["talk"] >= 0 and summary["decision_ms"] > 0
    # (capture_logs sees lines before the masking processor: the B2BUA masks its own.)
    call_lines = repr([e for e in logs if e["event"].startswith("call.")])
    assert E164 not in call_lines and CALLEE not in call_lines


async def test_numbers_in_clear_when_masking_is_off(
    running_clear: Running, mosquitto: Mosquitto
) -> None:
    """``[policy] mask_numbers = false``: events and log lines carry the E.164 callee."""
    a_id, _, events, logs = await _answered_call(running_clear, mosquitto)
    assert {E164} == {e["callee"] for e in events.values()}
    [summary] = [e for e in logs if e["event"] == "call.ended"]
    assert (a_id, E164) == (summary["call_id"], summary["destination"])
