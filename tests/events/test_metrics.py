"""/metrics and /health on the gateway's HTTP server; the exposition text parsed back."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import AdminSettings, MqttSettings
from gateway.operator.http import HttpServer, Response, admin_server
from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CallEvent,
    CallEventKind,
    CardStatus,
    EventBus,
    Severity,
)
from gateway.telemetry.metrics import GatewayMetrics, Histogram, format_value
from gateway.telemetry.mqtt import MqttPublisher
from gateway.transport.base import TransportStats
from tests.events.helpers import http_get, parse_exposition, value_of


async def test_metrics_endpoint_serves_valid_exposition_text() -> None:
    """Events on the bus, MQTT and transport counters show up in a parseable /metrics."""
    bus = EventBus()
    metrics = GatewayMetrics()
    bus.subscribe(metrics)
    publisher = MqttPublisher(
        MqttSettings.model_validate({"url": "mqtt://127.0.0.1:1", "node": "gw1"}), queue_limit=2
    )
    metrics.watch_mqtt(publisher)
    udp = TransportStats(received=7, sent=5)
    udp.drop("parse-error")
    udp.by_status[404] += 2
    metrics.watch_gateway(
        lambda: {
            "gateway": {"requests": 9, "answered": {"407": 3}, "dropped": {}},
            "transports": {"udp:127.0.0.1:5060": udp},
        }
    )
    bus.publish(
        CallEvent(CallEventKind.ATTEMPT, "a", 1.0, callee="+8613812345678", decision_seconds=0.0004)
    )
    bus.publish(CallEvent(CallEventKind.ATTEMPT, "b", 1.0, decision_seconds=0.003))
    bus.publish(CallEvent(CallEventKind.BLOCKED, "c", 1.0, reason="dnc", decision_seconds=0.0002))
    bus.publish(CallEvent(CallEventKind.FAILOVER, "a", 1.1, from_card="c1", to_card="c2"))
    bus.publish(CallEvent(CallEventKind.ENDED, "a", 2.0, outcome="answered"))
    bus.publish(CardStatus("c1", "suspended", "violation", 1.0, "main", 1.0))
    bus.publish(CardStatus("c2", "active", None, 1.0, "main", 1.0))
    bus.publish(Alert(AlertKind.CARD_SUSPENDED, 1.0, Severity.CRITICAL, "c1 suspended", card="c1"))
    for i in range(5):  # overflow the publisher's queue of 2 (no broker): 3 drops
        publisher.offer(CallEvent(CallEventKind.RINGING, f"r{i}", 1.0))

    server = admin_server(AdminSettings(listen="127.0.0.1:0"), metrics=metrics)
    async with server:
        host, port = server.address
        status, headers, body = await http_get(host, port, "/metrics")
    assert 200 == status
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert str(len(body)) == headers["content-length"]
    types, samples = parse_exposition(body.decode())

    for name, kind in {
        "dialgate_calls_total": "counter",
        "dialgate_blocked_calls_total": "counter",
        "dialgate_cards": "gauge",
        "dialgate_active_calls": "gauge",
        "dialgate_policy_decision_seconds": "histogram",
        "dialgate_mqtt_queue_depth": "gauge",
        "dialgate_mqtt_dropped_total": "counter",
        "dialgate_transport_received_total": "counter",
        "dialgate_transport_dropped_by_reason_total": "counter",
        "dialgate_sip_requests_total": "counter",
    }.items():
        assert kind == types.get(name), name
    assert 1 == value_of(samples, "dialgate_calls_total", outcome="answered")
    assert 1 == value_of(samples, "dialgate_calls_total", outcome="blocked")
    assert 1 == value_of(samples, "dialgate_blocked_calls_total", reason="dnc")
    assert 1 == value_of(samples, "dialgate_cards", state="suspended")
    assert 1 == value_of(samples, "dialgate_cards", state="active")
    assert 0 == value_of(samples, "dialgate_cards", state="retired")
    assert 1 == value_of(samples, "dialgate_active_calls")  # b is still up
    assert 1 == value_of(samples, "dialgate_failovers_total")
    assert 3 == value_of(samples, "dialgate_mqtt_dropped_total", kind="calls")
    assert 0 == value_of(samples, "dialgate_mqtt_dropped_total", kind="alerts")
    assert publisher.queue_depth == value_of(samples, "dialgate_mqtt_queue_depth")
    assert 7 == value_of(
        samples, "dialgate_transport_received_total", transport="udp:127.0.0.1:5060"
    )
    assert 1 == value_of(
        samples,
        "dialgate_transport_dropped_by_reason_total",
        transport="udp:127.0.0.1:5060",
        reason="parse-error",
    )
    assert 2 == value_of(samples, "dialgate_transport_by_status_total", status="404")
    assert 3 == value_of(samples, "dialgate_sip_answered_total", status="407")
    # Histogram: cumulative buckets, +Inf == count == 3 observations.
    buckets = [
        (lab["le"], v) for n, lab, v in samples if n == "dialgate_policy_decision_seconds_bucket"
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert ("+Inf", 3.0) == buckets[-1]
    assert 3 == value_of(samples, "dialgate_policy_decision_seconds_count")
    assert abs(0.0036 - value_of(samples, "dialgate_policy_decision_seconds_sum")) < 1e-9
    assert 2 == value_of(samples, "dialgate_policy_decision_seconds_bucket", le="0.0005")
    assert 1 == value_of(samples, "dialgate_policy_decision_seconds_bucket", le="0.00025")
    # No callee number anywhere in the exposition.
    assert "8613812345678" not in body.decode()


async def test_health_and_routing_errors() -> None:
    """/health answers JSON (503 when unhealthy); unknown path 404; POST on /metrics 405; HEAD has no body."""
    state = {"status": "ok", "mqtt": "connected"}
    server = admin_server(
        AdminSettings(listen="127.0.0.1:0"), metrics=GatewayMetrics(), health=lambda: state
    )
    async with server:
        host, port = server.address
        status, headers, body = await http_get(host, port, "/health")
        assert (200, b'{"status": "ok", "mqtt": "connected"}') == (status, body)
        assert "application/json" == headers["content-type"]
        state["status"] = "degraded"
        assert 503 == (await http_get(host, port, "/health"))[0]
        assert 404 == (await http_get(host, port, "/nope"))[0]
        status, headers, _ = await http_get(host, port, "/metrics", method="POST")
        assert (405, "GET, HEAD") == (status, headers["allow"])
        status, headers, body = await http_get(host, port, "/metrics", method="HEAD")
        assert 200 == status and b"" == body and int(headers["content-length"]) > 0


async def test_bad_requests_are_answered_and_server_survives_a_failing_handler() -> None:
    """A garbage request line gets 400, an oversized head 431, a raising handler 500; the server keeps serving."""
    server = HttpServer("127.0.0.1", 0, max_head_bytes=1024)

    async def boom(_request: object) -> Response:
        raise RuntimeError("secret detail")

    async def ok(_request: object) -> Response:
        return Response(200, b"fine")

    server.route("GET", "/boom", boom)
    server.route("GET", "/ok", ok)
    async with server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"NOT HTTP\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /ok HTTP/1.1\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 431 ")
        writer.close()
        status, _, body = await http_get(host, port, "/boom")
        assert 500 == status and b"secret" not in body
        assert (200, b"fine") == (lambda r: (r[0], r[2]))(await http_get(host, port, "/ok"))


def test_format_value_and_histogram_bounds() -> None:
    """Values render as the exposition format expects; a value on a bound lands in that bucket."""
    assert ["1", "0.25", "+Inf", "-Inf", "NaN"] == [
        format_value(v) for v in (1.0, 0.25, float("inf"), float("-inf"), float("nan"))
    ]
    h = Histogram("x_seconds", "x", [0.1, 1.0])
    h.observe(0.1)
    h.observe(5.0)
    fam = h.collect()
    assert [
        ("_bucket", (("le", "0.1"),), 1.0),
        ("_bucket", (("le", "1"),), 1.0),
        ("_bucket", (("le", "+Inf"),), 2.0),
    ] == fam.samples[:3]


@given(st.text(max_size=40), st.floats(allow_nan=False, allow_infinity=False, min_value=0))
def test_label_values_round_trip_through_the_exposition_text(reason: str, amount: float) -> None:
    """Any label value (quotes, backslashes, newlines, unicode) is escaped so the line parses back."""
    metrics = GatewayMetrics()
    metrics.blocked.inc(amount, reason=reason)
    _, samples = parse_exposition(metrics.render())
    [(labels, value)] = [(lab, v) for n, lab, v in samples if n == "dialgate_blocked_calls_total"]
    unescaped = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], labels["reason"])
    assert (reason, float(format_value(amount))) == (unescaped, value)


async def test_metrics_mounted_on_an_aiohttp_app() -> None:
    """mount_metrics serves the same exposition text from an aiohttp application (the admin API)."""
    from aiohttp import web

    from gateway.config import Settings
    from gateway.operator.http import GatewayTelemetry, mount_metrics

    telemetry = GatewayTelemetry(
        Settings.model_validate({"admin": {"listen": "127.0.0.1:0"}}), serve_http=False
    )
    assert telemetry.http is None
    telemetry.bus.publish(CallEvent(CallEventKind.BLOCKED, "x", 0.0, reason="no-consent"))
    app = web.Application()
    mount_metrics(app, telemetry.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = int(runner.addresses[0][1])
        status, headers, body = await http_get("127.0.0.1", port, "/metrics")
    finally:
        await runner.cleanup()
    assert 200 == status
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    _, samples = parse_exposition(body.decode())
    assert 1 == value_of(samples, "dialgate_blocked_calls_total", reason="no-consent")
