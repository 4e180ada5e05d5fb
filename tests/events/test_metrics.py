"""/metrics and /health on the gateway's one HTTP server (aiohttp); the exposition text parsed back."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import app
from gateway.callpath.element import Gateway
from gateway.config import MqttSettings, Settings
from gateway.operator.api import build_monitoring_app, start_admin
from gateway.telemetry.events import (
    Alert,
    AlertKind,
    CallEvent,
    CallEventKind,
    CardStatus,
    Severity,
)
from gateway.telemetry.hub import GatewayTelemetry
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.mqtt import MqttPublisher
from gateway.transport.base import TransportStats
from tests.events.helpers import http_get, parse_exposition, value_of

TOKEN = "metrics-token-0123456789"


def _settings(token: str | None = None) -> Settings:
    admin: dict[str, object] = {"listen": "127.0.0.1:0"}
    if token is not None:
        admin["token"] = token
    return Settings.model_validate({"admin": admin})


async def _get(
    url: str, path: str, token: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request with aiohttp's client (headers lower-cased)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url + path, headers=headers) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def test_metrics_endpoint_serves_valid_exposition_text() -> None:
    """Events on the bus, MQTT and transport counters show up in a parseable /metrics."""
    telemetry = GatewayTelemetry(_settings(), alert_watch=False)
    bus, metrics = telemetry.bus, telemetry.metrics
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

    server = await start_admin(build_monitoring_app(_settings(), telemetry), "127.0.0.1:0")
    try:
        host, port = server.address
        status, headers, body = await http_get(host, port, "/metrics")
    finally:
        await server.stop()
    assert 200 == status
    assert CONTENT_TYPE_LATEST == headers["content-type"]
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


async def test_health_and_metrics_auth_and_routing_errors() -> None:
    """/health needs no token, /metrics needs the admin token when one is set (401 without);
    health is 503 while the store does not answer; unknown path 404; POST on /metrics 405;
    HEAD has no body."""

    class Guard:
        name = "sqlite"
        state = "ok"

        def status(self) -> dict[str, str]:
            return {"state": self.state}

    guard = Guard()
    telemetry = GatewayTelemetry(_settings(TOKEN))
    app = build_monitoring_app(_settings(TOKEN), telemetry, store_guards=[guard])
    server = await start_admin(app, "127.0.0.1:0")
    try:
        status, headers, body = await _get(server.url, "/health")
        assert 200 == status and "application/json" in headers["content-type"]
        health = json.loads(body)
        assert ("ok", "off", {"state": "ok"}, 0) == (
            health["status"],
            health["mqtt"],
            health["store"],
            health["active_calls"],
        )
        guard.state = "unavailable"
        status, _, body = await _get(server.url, "/health")
        assert (503, "degraded") == (status, json.loads(body)["status"])
        status, _, body = await _get(server.url, "/metrics")
        assert 401 == status and TOKEN.encode() not in body
        assert 401 == (await _get(server.url, "/metrics", "wrong-token-0123456789"))[0]
        status, _, body = await _get(server.url, "/metrics", TOKEN)
        assert 200 == status and b"dialgate_info" in body
        assert 404 == (await _get(server.url, "/nope", TOKEN))[0]
        status, headers, _ = await _get(server.url, "/metrics", TOKEN, method="POST")
        assert 405 == status
        assert {"GET", "HEAD"} == {m.strip() for m in headers["allow"].split(",")}
        status, headers, body = await _get(server.url, "/metrics", TOKEN, method="HEAD")
        assert 200 == status and b"" == body
    finally:
        await server.stop()


def test_histogram_bounds_are_inclusive() -> None:
    """A value on a bucket bound lands in that bucket (le is "less than or equal")."""
    metrics = GatewayMetrics()
    metrics.observe_decision(0.001)
    metrics.observe_decision(5.0)
    _, samples = parse_exposition(metrics.render())
    assert 0 == value_of(samples, "dialgate_policy_decision_seconds_bucket", le="0.0005")
    assert 1 == value_of(samples, "dialgate_policy_decision_seconds_bucket", le="0.001")
    assert 1 == value_of(samples, "dialgate_policy_decision_seconds_bucket", le="1.0")
    assert 2 == value_of(samples, "dialgate_policy_decision_seconds_bucket", le="+Inf")


def test_each_gateway_has_its_own_registry() -> None:
    """Two gateways in one process count apart (no process-global registry), and no
    ``_created`` series is exposed."""
    one, two = GatewayMetrics(), GatewayMetrics()
    one(CallEvent(CallEventKind.BLOCKED, "x", 0.0, reason="dnc"))
    _, samples_one = parse_exposition(one.render())
    _, samples_two = parse_exposition(two.render())
    assert 1 == value_of(samples_one, "dialgate_blocked_calls_total", reason="dnc")
    assert not [n for n, _, _ in samples_two if n == "dialgate_blocked_calls_total"]
    assert not [n for n, _, _ in samples_one if n.endswith("_created")]


def test_a_failing_source_is_skipped_not_the_scrape() -> None:
    """A scrape-time source that raises is left out; the others are still exposed."""
    metrics = GatewayMetrics()

    def broken() -> list[object]:
        raise RuntimeError("gone")

    metrics.add_source(broken)  # type: ignore[arg-type]
    _, samples = parse_exposition(metrics.render())
    assert 0 == value_of(samples, "dialgate_active_calls")


@given(st.text(max_size=40), st.floats(allow_nan=False, allow_infinity=False, min_value=0))
def test_label_values_round_trip_through_the_exposition_text(reason: str, amount: float) -> None:
    """Any label value (quotes, backslashes, newlines, unicode) is escaped so the line parses back."""
    metrics = GatewayMetrics()
    metrics.blocked.labels(reason=reason).inc(amount)
    _, samples = parse_exposition(metrics.render())
    [(labels, value)] = [(lab, v) for n, lab, v in samples if n == "dialgate_blocked_calls_total"]
    unescaped = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], labels["reason"])
    assert (reason, amount) == (unescaped, value)


async def test_metrics_on_the_admin_app_with_its_token(tmp_path: Path) -> None:
    """The admin API's application serves the same /metrics as the bare one, behind the
    admin token; /health there carries the telemetry's fields too."""
    from gateway.operator.api import build_admin_app
    from gateway.store import SQLiteStore

    settings = _settings(TOKEN)
    telemetry = GatewayTelemetry(settings)
    telemetry.bus.publish(CallEvent(CallEventKind.BLOCKED, "x", 0.0, reason="no-consent"))
    store = SQLiteStore(tmp_path / "gw.db")
    try:
        app = build_admin_app(settings, store, telemetry=telemetry)
        server = await start_admin(app, "127.0.0.1:0")
        try:
            assert 401 == (await _get(server.url, "/metrics"))[0]
            status, headers, body = await _get(server.url, "/metrics", TOKEN)
            health = json.loads((await _get(server.url, "/health"))[2])
            document = json.loads((await _get(server.url, "/openapi.json"))[2])
        finally:
            await server.stop()
    finally:
        store.close()
    assert 200 == status
    assert CONTENT_TYPE_LATEST == headers["content-type"]
    _, samples = parse_exposition(body.decode())
    assert 1 == value_of(samples, "dialgate_blocked_calls_total", reason="no-consent")
    assert ("ok", "off", "ok") == (health["status"], health["mqtt"], health["store"]["state"])
    assert [{"bearer": []}] == document["paths"]["/metrics"]["get"]["security"]


async def test_a_gateway_without_a_call_path_serves_metrics_and_health() -> None:
    """dialgate run with listeners only (no users, peers or cards): the same aiohttp server on
    [admin] listen answers /metrics (transport counters) and /health, and no admin route."""
    settings = Settings.model_validate(
        {"sip": {"listen": ["udp:127.0.0.1:0"]}, "admin": {"listen": "127.0.0.1:0"}}
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(app.serve(settings, ready=ready, stop=stop, on_ready=started.append))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        url = started[-1].admin_url
        assert url is not None
        status, headers, body = await _get(url, "/metrics")
        assert (200, CONTENT_TYPE_LATEST) == (status, headers["content-type"])
        types, _ = parse_exposition(body.decode())
        assert "counter" == types["dialgate_transport_received_total"]
        status, _, body = await _get(url, "/health")
        assert (200, "ok", "off") == (status, json.loads(body)["status"], json.loads(body)["mqtt"])
        assert 404 == (await _get(url, "/cards"))[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
