"""dialgate_policy_decision_seconds counts the policy decisions of calls through a running gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway import app
from gateway.callpath.element import Gateway
from tests.callpath.conftest import Agent, Carrier, gateway_settings
from tests.events.helpers import http_get, parse_exposition, value_of


async def _decisions(gateway: app.Gateway) -> tuple[float, float]:
    """(count, sum) of dialgate_policy_decision_seconds on the admin port's /metrics."""
    url = gateway.admin_url
    assert url is not None
    host, _, port = url.removeprefix("http://").rpartition(":")
    status, _headers, body = await http_get(host, int(port), "/metrics")
    assert 200 == status
    types, samples = parse_exposition(body.decode())
    assert "histogram" == types["dialgate_policy_decision_seconds"]
    return (
        value_of(samples, "dialgate_policy_decision_seconds_count"),
        value_of(samples, "dialgate_policy_decision_seconds_sum"),
    )


async def test_each_decided_call_is_timed_in_the_histogram(tmp_path: Path) -> None:
    """An answered call and a DNC-blocked call each add one observation; a call
    refused before the pipeline ran (unparseable number) adds none."""
    carrier = Carrier()
    await carrier.start()
    settings = gateway_settings(carrier.address, tmp_path / "gw.db")
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(app.serve(settings, ready=ready, stop=stop, on_ready=started.append))
    alice: Agent | None = None
    try:
        await asyncio.wait_for(ready.wait(), 10)
        gateway = started[-1]
        alice = Agent("alice", "s3cret", gateway.address("udp"))
        await alice.start()
        assert 200 == (await alice.register()).status
        assert (0, 0) == await _decisions(gateway)

        resp, invite = await alice.call("13912345678")
        assert 200 == resp.status
        assert 200 == (await alice.send_in_dialog(invite.call_id, "BYE")).status
        count, total = await _decisions(gateway)
        assert 1 == count
        assert 0 < total < 5

        assert gateway.store is not None
        gateway.store.add_dnc("+8613912340000", 0.0)
        resp, _ = await alice.call("13912340000")
        assert 403 == resp.status
        assert 2 == (await _decisions(gateway))[0]

        resp, _ = await alice.call("abc")
        assert 484 == resp.status
        assert 2 == (await _decisions(gateway))[0]
    finally:
        if alice is not None:
            await alice.close()
        stop.set()
        await asyncio.wait_for(task, 15)
        await carrier.close()
