"""GatewayTelemetry wired the way gateway.app uses it: settings in, MQTT out, and /metrics +
/health on the monitoring application."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from gateway.cards import CardDef, CardManager
from gateway.config import Settings
from gateway.operator.api import build_monitoring_app, start_admin
from gateway.telemetry.events import CallEvent, CallEventKind, CardStatus, LimitUsage
from gateway.telemetry.hub import GatewayTelemetry
from gateway.telemetry.mqtt import Topics
from gateway.transport import UDPTransport
from simulator.testkit import Mosquitto, wait_for
from tests.events.helpers import Collector, http_get, parse_exposition, value_of

ROOT = "wire"
NODE = "gw-wire"


def _options(port: int) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKwire;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:t@test>;tag=1\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: wire@test\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_telemetry_from_settings_publishes_serves_metrics_and_says_goodbye(
    mosquitto: Mosquitto,
) -> None:
    """One GatewayTelemetry: card states and derived alerts on MQTT, masked call events,
    transport counters and MQTT state in /metrics, /health, and `offline` after stop()."""
    settings = Settings.model_validate(
        {
            "sip": {"listen": ["udp:127.0.0.1:0"]},
            "mqtt": {"url": mosquitto.url, "root": ROOT, "node": NODE, "stats_interval": 0.2},
            "admin": {"listen": "127.0.0.1:0"},
        }
    )
    topics = Topics(ROOT, NODE)
    requests: list[Any] = []
    udp = await UDPTransport.listen("127.0.0.1", 0, lambda message, *_: requests.append(message))
    transport_name = f"udp:127.0.0.1:{udp.local_address[1]}"

    def snapshot() -> dict[str, Any]:
        """Shaped like gateway.callpath.element.Gateway.snapshot()."""
        return {
            "gateway": {"requests": len(requests), "answered": {}},
            "transports": {transport_name: udp.stats.as_dict()},
        }

    telemetry = GatewayTelemetry(settings, gateway_snapshot=snapshot)
    http = await start_admin(build_monitoring_app(settings, telemetry), settings.admin.listen)
    try:
        async with Collector(mosquitto.port, f"{ROOT}/#") as sub, telemetry:
            assert telemetry.publisher is not None
            assert await telemetry.publisher.wait_connected(10)
            bus = telemetry.bus
            manager = CardManager()
            manager.load([CardDef("c1", "carrier-a", "+8613800000001")], time.time())
            near = (LimitUsage("calls_per_hour", 55, 60),)
            bus.publish(
                CardStatus("c1", "active", None, time.time(), "main", time.time(), usage=near)
            )
            bus.publish(
                CallEvent(
                    CallEventKind.ATTEMPT,
                    "k1",
                    time.time(),
                    callee="+8613812345678",
                    card="c1",
                    decision_seconds=0.002,
                )
            )
            manager.suspend("c1", now=time.time(), note="complaint")
            bus.publish_card_events(manager.drain_events())
            udp_port = udp.local_address[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(_options(udp_port), ("127.0.0.1", udp_port))

            def arrived() -> bool:
                alerts = {m.json["alert"] for m in sub.on(topics.alerts)}
                state = sub.latest(topics.card("c1"))
                stats = sub.latest(topics.stats)
                return (
                    {"quota-near", "card-suspended"} <= alerts
                    and state is not None
                    and state["state"] == "suspended"
                    and stats is not None
                    and stats["attempts"] == 1
                    and bool(sub.on(topics.calls("attempt")))
                )

            assert await wait_for(arrived, 5)
            assert "+86138****5678" == sub.latest(topics.calls("attempt"))["callee"]
            # usage survives the state change (the bus remembers the last card state)
            assert {"calls_per_hour": {"used": 55, "limit": 60}} == sub.latest(topics.card("c1"))[
                "usage"
            ]
            assert await wait_for(lambda: len(requests) >= 1, 5)

            host, port = http.address
            status, _, body = await http_get(host, port, "/metrics")
            assert 200 == status
            _, samples = parse_exposition(body.decode())
            received = value_of(
                samples, "dialgate_transport_received_total", transport=transport_name
            )
            assert received >= 1
            assert value_of(samples, "dialgate_sip_requests_total") >= 1
            assert 1 == value_of(samples, "dialgate_mqtt_connected")
            assert 1 == value_of(samples, "dialgate_alerts_total", alert="quota-near")
            assert 1 == value_of(samples, "dialgate_cards", state="suspended")
            assert 1 == value_of(samples, "dialgate_policy_decision_seconds_count")
            status, _, body = await http_get(host, port, "/health")
            health = json.loads(body)
            assert (200, "ok", "connected", {"suspended": 1}) == (
                status,
                health["status"],
                health["mqtt"],
                health["cards"],
            )
            await telemetry.stop()  # stop() again on exit is a no-op
            assert await wait_for(
                lambda: (sub.latest(topics.status) or {}).get("status") == "offline", 5
            )
    finally:
        await http.stop()
        await udp.close()


def test_telemetry_without_mqtt_publishes_nothing() -> None:
    """No [mqtt] table: no publisher, the bus still works; /health says mqtt off."""
    settings = Settings.model_validate({"admin": {"enabled": False}})
    telemetry = GatewayTelemetry(settings)
    assert telemetry.publisher is None
    telemetry.bus.publish(CallEvent(CallEventKind.ATTEMPT, "x", 0.0))
    assert 1 == telemetry.stats.active_calls
    assert ("off", 1) == (
        telemetry.health_fields()["mqtt"],
        telemetry.health_fields()["active_calls"],
    )


def test_telemetry_alert_watch_can_be_left_to_another_part() -> None:
    """alert_watch=False: a card near its quota raises no quota-near from the telemetry itself."""
    settings = Settings.model_validate({"admin": {"enabled": False}})
    near = CardStatus(
        "c1", "active", None, 0.0, "main", 0.0, usage=(LimitUsage("calls_per_day", 299, 300),)
    )
    for watch, expected in ((True, 1), (False, 0)):
        telemetry = GatewayTelemetry(settings, alert_watch=watch)
        telemetry.bus.publish(near)
        assert expected == telemetry.stats.alerts["quota-near"]
