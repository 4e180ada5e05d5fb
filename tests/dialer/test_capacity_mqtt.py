"""Pool capacity on a real mosquitto from the whole gateway (``gateway.app.serve``).

A late subscriber finds ``dg/pools/main/capacity`` retained; it is the same
document as the admin API's ``GET /pools/main/capacity``; when the carrier
suspends both cards (403 Card Suspended, a failover from c1 to c2) the
retained capacity drops to 0 with each card's cause.
"""

from __future__ import annotations

import json

from gateway.telemetry.mqtt import Topics
from simulator.testkit import Mosquitto, wait_for
from tests.events.helpers import Collector, http_get
from tests.events.test_gateway_mqtt import NODE, ROOT, Running, _call, running

__all__ = ["running"]

TOPICS = Topics(ROOT, NODE)
TOPIC = f"{ROOT}/pools/main/capacity"


async def _api(running: Running) -> dict:
    url = running.gateway.admin_url
    assert url is not None
    host, _, port = url.removeprefix("http://").rpartition(":")
    status, _headers, body = await http_get(host, int(port), "/pools/main/capacity")
    assert 200 == status, body
    return json.loads(body)


async def test_capacity_is_retained_and_drops_to_zero_when_the_pool_is_suspended(
    running: Running, mosquitto: Mosquitto
) -> None:
    assert TOPIC == TOPICS.pool_capacity("main")
    publisher = running.gateway.telemetry.publisher
    # "After the gateway started": status, 2 cards, stats and the pool are on the broker.
    assert await wait_for(lambda: publisher.published >= 5 and publisher.queue_depth == 0, 10)
    async with Collector(mosquitto.port, f"{ROOT}/pools/#") as sub:
        assert await wait_for(lambda: sub.latest(TOPIC) is not None, 10)
        assert sub.on(TOPIC)[0].retain
        first = sub.latest(TOPIC)
        assert (1, "main") == (first["v"], first["pool"])
        assert ["c1", "c2"] == [c["card"] for c in first["cards"]]
        assert first["now"] > 0 and first["next_minute"] > 0
        assert [None, None] == [c["cause"] for c in first["cards"]]
        api = await _api(running)
        assert (first["now"], first["next_minute"]) == (api["now"], api["next_minute"])

        def plan(req: object) -> tuple[object, ...]:
            return (403, "Card Suspended")

        running.carrier.plan = plan  # type: ignore[assignment]
        status = await _call(running.alice, "13912345679")
        assert status in (403, 503), status

        def exhausted() -> bool:
            latest = sub.latest(TOPIC) or {}
            return latest.get("now") == 0 and latest.get("next_minute") == 0

        assert await wait_for(exhausted, 10), sub.latest(TOPIC)
        last = sub.latest(TOPIC)
        assert ["suspended", "suspended"] == [c["state"] for c in last["cards"]]
        for card in last["cards"]:
            assert card["cause"].startswith(f"{card['card']} suspended"), card
        api = await _api(running)
        assert (0, 0) == (api["now"], api["next_minute"])


async def test_agent_state_follows_a_real_call(running: Running, mosquitto: Mosquitto) -> None:
    """alice (bound to c1) is published idle at start and idle again after a call, with
    the call and the answer counted."""
    topic = TOPICS.agent("alice")
    async with Collector(mosquitto.port, f"{ROOT}/agents/#") as sub:
        assert await wait_for(lambda: sub.latest(topic) is not None, 10)
        first = sub.latest(topic)
        assert ("idle", "c1", 0) == (first["state"], first["card"], first["calls_today"])
        assert 200 == await _call(running.alice, "13912345678")

        def counted() -> bool:
            latest = sub.latest(topic) or {}
            return latest.get("answered_today") == 1 and latest.get("state") == "idle"

        assert await wait_for(counted, 10), sub.latest(topic)
        # (Intermediate states of a short call may be coalesced: a retained topic sends
        # its latest state, not every step; the unit test follows each step.)
        assert 1 == sub.latest(topic)["calls_today"]
        assert b"13912345678" not in b"".join(m.payload for m in sub.messages)
