"""Prometheus metrics of one gateway, through ``prometheus_client``.

What this module is for:

* :class:`GatewayMetrics`: a bus subscriber holding the gateway's own
  ``CollectorRegistry`` (never the process-global one: one process may run many
  gateways, as the tests do). Counters and the decision histogram are updated
  as events happen; a :class:`ScrapeCollector` reads at scrape time what lives
  elsewhere (active calls and cards by state, the MQTT publisher's counters,
  the transports' and request handler's counters of ``Gateway.snapshot()``,
  the security guard's families); :meth:`GatewayMetrics.render` is the
  ``/metrics`` body, served with :data:`CONTENT_TYPE` by ``gateway.operator.api``.

Metric names (all prefixed ``dialgate_``): ``calls_total{outcome}``,
``call_events_total{event}``, ``blocked_calls_total{reason}``, ``failovers_total``,
``alerts_total{alert}``, ``active_calls``, ``cards{state}``,
``policy_decision_seconds`` (histogram), ``mqtt_connected``, ``mqtt_queue_depth``,
``mqtt_published_total``, ``mqtt_reconnects_total``, ``mqtt_connect_failures_total``,
``mqtt_dropped_total{kind}`` (events dropped from the full queue, by topic kind),
``mqtt_coalesced_total{kind}`` (retained updates replaced by a newer one before
they were sent), ``transport_<counter>_total{transport}`` (plus ``status``/``reason``
labels), ``sip_<counter>_total`` for the request handler (``sip_requests_total``,
``sip_answered_total{status}``…), ``security_*`` (``gateway.callpath.security``),
``info{version}``.

What it must never do: put a callee number or a secret into a label (labels are
outcomes, reasons, states, transports — never numbers or users), block the
caller, or fail a scrape because one scrape-time source failed (the failure is
logged and that source skipped).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.telemetry.events import Alert, CallEvent, CallEventKind, CardStatus, Event

__all__ = [
    "CONTENT_TYPE",
    "GatewayMetrics",
    "ScrapeCollector",
    "Source",
    "render_families",
]

log = structlog.get_logger("gateway.telemetry.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

# No ``*_created`` series: they would double every counter's series in the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: A scrape-time source: called on every scrape, yields metric families.
Source = Callable[[], Iterable[Metric]]

_CARD_STATES = ("active", "suspended", "appealing", "probation", "retired")
_DECISION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class ScrapeCollector(Collector):
    """Families read at scrape time from the sources added with :meth:`add`.

    A source that raises is logged and skipped; a family name already given by
    an earlier source is skipped too (one family per name in the exposition).
    """

    def __init__(self) -> None:
        self._sources: list[Source] = []

    def add(self, source: Source) -> None:
        """Read ``source`` on every scrape."""
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        """Every source's families, in the order the sources were added."""
        seen: set[str] = set()
        for source in self._sources:
            try:
                families = list(source())
            except Exception:
                log.exception("metrics source failed")
                continue
            for family in families:
                if family.name not in seen:
                    seen.add(family.name)
                    yield family


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render_families(families: Iterable[Metric]) -> str:
    """``families`` alone in the exposition text (what ``/metrics`` shows of them)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


class GatewayMetrics:
    """The gateway's ``/metrics``: a bus subscriber plus scrape-time sources.

    Wire it with ``bus.subscribe(metrics)``; ``watch_mqtt(publisher)``,
    ``watch_gateway(gateway.snapshot)`` and ``add_source(fn)`` add scrape-time
    values. The call path reports a policy decision's time as ``decision_seconds``
    on its attempt/blocked call events (or through ``observe_decision``).
    """

    def __init__(self, *, version: str = __version__, max_active: int = 100_000) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.calls = Counter(
            "dialgate_calls_total",
            "Calls by final outcome (blocked included)",
            ["outcome"],
            registry=r,
        )
        self.call_events = Counter(
            "dialgate_call_events_total", "Call events published, by event", ["event"], registry=r
        )
        self.blocked = Counter(
            "dialgate_blocked_calls_total",
            "Calls refused by policy, by reason",
            ["reason"],
            registry=r,
        )
        self.failovers = Counter(
            "dialgate_failovers_total", "Calls moved to another card", registry=r
        )
        self.alerts = Counter(
            "dialgate_alerts_total", "Alerts raised, by kind", ["alert"], registry=r
        )
        self.decision = Histogram(
            "dialgate_policy_decision_seconds",
            "Time the policy pipeline took to decide one call attempt",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.scrape = ScrapeCollector()
        r.register(self.scrape)
        self.max_active = max_active
        # The labelled children seen so far (``labels()`` checks and locks on every call;
        # a child, once made, is the same object for the life of the metric).
        self._children: dict[tuple[Counter, str], Any] = {}
        self.card_states: dict[str, str] = {}
        self._active: set[str] = set()
        self._version = version
        self.scrape.add(self._own_gauges)

    # --- bus subscriber -------------------------------------------------------------

    def _child(self, metric: Counter, value: str) -> Any:
        """``metric.labels(value)`` (one label), made once per value."""
        key = (metric, value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(value)
        return child

    def __call__(self, event: Event) -> None:
        """Observe one bus event."""
        if isinstance(event, CallEvent):
            kind = event.kind
            self._child(self.call_events, kind.value).inc()
            if event.decision_seconds is not None:
                self.decision.observe(event.decision_seconds)
            if kind is CallEventKind.ATTEMPT:
                if len(self._active) < self.max_active:
                    self._active.add(event.call_id)
            elif kind is CallEventKind.BLOCKED:
                self._child(self.blocked, event.reason or "unknown").inc()
                self._child(self.calls, "blocked").inc()
                self._active.discard(event.call_id)
            elif kind is CallEventKind.ENDED:
                self._child(self.calls, event.outcome or "unknown").inc()
                self._active.discard(event.call_id)
            elif kind is CallEventKind.FAILOVER:
                self.failovers.inc()
        elif isinstance(event, CardStatus):
            self.card_states[event.card] = event.state
        elif isinstance(event, Alert):
            self._child(self.alerts, event.kind.value).inc()

    def observe_decision(self, seconds: float) -> None:
        """Record one policy decision's latency."""
        self.decision.observe(seconds)

    @property
    def active_calls(self) -> int:
        """Calls attempted and not yet ended or blocked."""
        return len(self._active)

    def _own_gauges(self) -> Iterable[Metric]:
        active = GaugeMetricFamily("dialgate_active_calls", "Calls in progress")
        active.add_metric([], len(self._active))
        cards = GaugeMetricFamily("dialgate_cards", "Cards by state", labels=["state"])
        counts = dict.fromkeys(_CARD_STATES, 0)
        for state in self.card_states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            cards.add_metric([state], n)
        info = GaugeMetricFamily("dialgate_info", "Gateway version", labels=["version"])
        info.add_metric([self._version], 1)
        return [active, cards, info]

    # --- scrape-time sources from other parts ---------------------------------------

    def add_source(self, source: Source) -> None:
        """Read ``source`` (families of ``prometheus_client.core``) on every scrape."""
        self.scrape.add(source)

    def watch_mqtt(self, publisher: Any) -> None:
        """Read ``publisher.counters()`` (a ``gateway.telemetry.mqtt.MqttPublisher``) on each scrape."""

        def collect() -> Iterable[Metric]:
            c = publisher.counters()
            out: list[Metric] = []
            for name, text, key in (
                ("dialgate_mqtt_connected", "1 while connected to the broker", "connected"),
                ("dialgate_mqtt_queue_depth", "Messages waiting for the broker", "queued"),
            ):
                out.append(GaugeMetricFamily(name, text, value=float(c.get(key, 0))))
            for name, text, key in (
                ("dialgate_mqtt_published_total", "Messages published", "published"),
                ("dialgate_mqtt_reconnects_total", "Connections lost", "reconnects"),
                (
                    "dialgate_mqtt_connect_failures_total",
                    "Failed connection attempts",
                    "connect_failures",
                ),
            ):
                out.append(CounterMetricFamily(name, text, value=float(c.get(key, 0))))
            for name, text, key in (
                (
                    "dialgate_mqtt_dropped_total",
                    "Events dropped while the broker was slow or away (queue full), by topic kind",
                    "dropped_by_kind",
                ),
                (
                    "dialgate_mqtt_coalesced_total",
                    "Retained updates replaced by a newer one before they were sent, by topic kind",
                    "coalesced_by_kind",
                ),
            ):
                fam = CounterMetricFamily(name, text, labels=["kind"])
                for topic_kind, n in sorted(dict(c.get(key) or {}).items()):
                    fam.add_metric([str(topic_kind)], float(n))
                out.append(fam)
            return out

        self.add_source(collect)

    def watch_gateway(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """Read ``Gateway.snapshot()``-shaped dicts on each scrape.

        ``{"gateway": {...}, "transports": {"udp:127.0.0.1:5060": TransportStats.as_dict()}}``:
        every integer transport counter becomes ``dialgate_transport_<name>_total``
        with a ``transport`` label; dict counters (``by_status``,
        ``dropped_by_reason``) get a ``status``/``reason`` label.
        """

        def collect() -> Iterable[Metric]:
            snap = snapshot()
            families: dict[str, CounterMetricFamily] = {}

            def add(name: str, text: str, labels: dict[str, str], value: float) -> None:
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = CounterMetricFamily(name, text, labels=list(labels))
                elif fam._labelnames != tuple(labels):  # one label set per family
                    return
                fam.add_metric(list(labels.values()), value)

            for transport, stats in sorted(dict(snap.get("transports", {})).items()):
                values = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats)
                for key, value in values.items():
                    name = f"dialgate_transport_{_metric_part(key)}_total"
                    text = f"Transport counter {key}"
                    if isinstance(value, Mapping):
                        label = "status" if key.endswith("status") else "reason"
                        for sub, n in sorted(value.items()):
                            add(name, text, {"transport": transport, label: str(sub)}, n)
                    elif isinstance(value, int | float) and not isinstance(value, bool):
                        add(name, text, {"transport": transport}, value)
            gw = snap.get("gateway")
            if isinstance(gw, Mapping):
                for key, value in gw.items():
                    name = f"dialgate_sip_{_metric_part(key)}_total"
                    text = f"Request handler counter {key}"
                    if isinstance(value, Mapping):
                        label = "status" if key == "answered" else "reason"
                        for sub, n in sorted(value.items()):
                            add(name, text, {label: str(sub)}, n)
                    elif isinstance(value, int | float) and not isinstance(value, bool):
                        add(name, text, {}, value)
            return list(families.values())

        self.add_source(collect)

    def render(self) -> str:
        """The ``/metrics`` body (exposition text, :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry).decode()


def _metric_part(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_") or "value"
