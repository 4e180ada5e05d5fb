"""Prometheus metrics of the gateway, rendered as text exposition format 0.0.4.

What this module is for:

* a tiny registry written here (no ``prometheus_client``): counters, gauges and
  histograms with labels, plus *collectors* — callables sampled at scrape time
  for numbers that live elsewhere (MQTT publisher counters, transport and
  request-handler counters);
* :class:`GatewayMetrics`: a bus subscriber that counts calls by outcome,
  blocked calls by reason, failovers, alerts, active calls and cards by state,
  and the policy decision latency histogram; ``render()`` is the ``/metrics``
  body (served by ``gateway.operator.http``).

Metric names (all prefixed ``dialgate_``): ``calls_total{outcome}``,
``call_events_total{event}``, ``blocked_calls_total{reason}``, ``failovers_total``,
``alerts_total{alert}``, ``active_calls``, ``cards{state}``,
``policy_decision_seconds`` (histogram), ``mqtt_connected``, ``mqtt_queue_depth``,
``mqtt_dropped_total{kind}`` (events dropped from the full queue, by topic kind:
``status``, ``cards``, ``stats``, ``calls``, ``alerts``), ``mqtt_coalesced_total{kind}``
(retained updates replaced by a newer one before they were sent),
``mqtt_published_total``, ``mqtt_reconnects_total``,
``transport_<counter>_total{transport}`` (plus ``status``/``reason`` labels),
``sip_<counter>_total`` for the request handler (``sip_requests_total``,
``sip_answered_total{status}``…), ``info{version}``.

What it must never do: put a callee number or a secret into a label (labels are
outcomes, reasons, states, transports — never numbers or users), block the
caller, or raise out of ``render`` because one collector failed (the failure is
logged and that collector skipped).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from gateway import __version__
from gateway.telemetry.events import Alert, CallEvent, CallEventKind, CardStatus, Event

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "MetricFamily",
    "Registry",
    "format_value",
]

log = structlog.get_logger("gateway.telemetry.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Labels = tuple[tuple[str, str], ...]


def format_value(value: float) -> str:
    """A sample value as the exposition format writes it (``+Inf``, ``NaN``, ints bare)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


@dataclass(slots=True)
class MetricFamily:
    """One metric family at scrape time: ``# HELP``, ``# TYPE`` and its samples."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Mapping[str, str] | None = None, suffix: str = "") -> None:
        """Append one sample (``suffix`` for histogram ``_bucket``/``_sum``/``_count``)."""
        self.samples.append((suffix, tuple((labels or {}).items()), float(value)))

    def render(self) -> str:
        """The family's lines in exposition format."""
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for suffix, labels, value in self.samples:
            lines.append(f"{self.name}{suffix}{_labels_text(labels)} {format_value(value)}")
        return "\n".join(lines) + "\n"


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)

    def _key(self, labels: Mapping[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.labelnames)}")
        return tuple((name, str(labels[name])) for name in self.labelnames)

    def collect(self) -> MetricFamily:  # pragma: no cover - overridden
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    type = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[Labels, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (≥ 0) to the count of ``labels``."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current count of ``labels`` (0 when never incremented)."""
        return self._values.get(self._key(labels), 0.0)

    def collect(self) -> MetricFamily:
        """Samples for rendering."""
        fam = MetricFamily(self.name, self.type, self.help)
        for key in sorted(self._values):
            fam.samples.append(("", key, self._values[key]))
        return fam


class Gauge(Counter):
    """A value that goes up and down per label set."""

    type = "gauge"

    def set(self, value: float, **labels: str) -> None:
        """Set the value of ``labels``."""
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (may be negative)."""
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Histogram(_Metric):
    """Cumulative buckets, sum and count of observations (no labels)."""

    type = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(math.isinf(b) or math.isnan(b) for b in bounds):
            raise ValueError("histogram buckets must be finite numbers")
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # last: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def collect(self) -> MetricFamily:
        """``_bucket{le=…}`` cumulative counts, ``_sum`` and ``_count``."""
        fam = MetricFamily(self.name, self.type, self.help)
        running = 0
        for bound, n in zip(self.bounds, self._counts, strict=False):
            running += n
            fam.add(running, {"le": format_value(bound)}, "_bucket")
        fam.add(self.count, {"le": "+Inf"}, "_bucket")
        fam.add(self.sum, suffix="_sum")
        fam.add(self.count, suffix="_count")
        return fam


Collector = Callable[[], Iterable[MetricFamily]]
_M = TypeVar("_M", bound=_Metric)


class Registry:
    """Metrics and scrape-time collectors, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._collectors: list[Collector] = []

    def register(self, metric: _M) -> _M:
        """Add ``metric``; return it."""
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"duplicate metric {metric.name}")
        self._metrics.append(metric)
        return metric

    def add_collector(self, collector: Collector) -> None:
        """Sample ``collector`` on every scrape."""
        self._collectors.append(collector)

    def collect(self) -> list[MetricFamily]:
        """Every family, collectors included (a failing collector is logged and skipped)."""
        families = [m.collect() for m in self._metrics]
        seen = {f.name for f in families}
        for collector in self._collectors:
            try:
                produced = list(collector())
            except Exception:
                log.exception("metrics collector failed")
                continue
            for fam in produced:
                if fam.name in seen:
                    continue
                seen.add(fam.name)
                families.append(fam)
        return families

    def render(self) -> str:
        """The whole exposition text."""
        return "".join(f.render() for f in self.collect())


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


class GatewayMetrics:
    """The gateway's ``/metrics``: a bus subscriber plus scrape-time collectors.

    Wire it with ``bus.subscribe(metrics)``; ``watch_mqtt(publisher)`` and
    ``watch_gateway(gateway.snapshot)`` add the publisher's and the transports'
    counters; the policy pipeline reports ``observe_decision(seconds)`` (or puts
    ``decision_seconds`` on its attempt/blocked call events).
    """

    def __init__(self, *, version: str = __version__, max_active: int = 100_000) -> None:
        r = self.registry = Registry()
        self.calls = r.register(
            Counter(
                "dialgate_calls_total", "Calls by final outcome (blocked included)", ["outcome"]
            )
        )
        self.call_events = r.register(
            Counter("dialgate_call_events_total", "Call events published, by event", ["event"])
        )
        self.blocked = r.register(
            Counter(
                "dialgate_blocked_calls_total", "Calls refused by policy, by reason", ["reason"]
            )
        )
        self.failovers = r.register(
            Counter("dialgate_failovers_total", "Calls moved to another card")
        )
        self.alerts = r.register(
            Counter("dialgate_alerts_total", "Alerts raised, by kind", ["alert"])
        )
        self.decision = r.register(
            Histogram(
                "dialgate_policy_decision_seconds",
                "Time the policy pipeline took to decide one call attempt",
                _DECISION_BUCKETS,
            )
        )
        self.max_active = max_active
        self.card_states: dict[str, str] = {}
        self._active: set[str] = set()
        self._version = version
        r.add_collector(self._own_gauges)

    # --- bus subscriber -------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Observe one bus event."""
        if isinstance(event, CallEvent):
            self.call_events.inc(event=event.kind.value)
            if event.decision_seconds is not None:
                self.decision.observe(event.decision_seconds)
            kind = event.kind
            if kind is CallEventKind.ATTEMPT:
                if len(self._active) < self.max_active:
                    self._active.add(event.call_id)
            elif kind is CallEventKind.BLOCKED:
                self.blocked.inc(reason=event.reason or "unknown")
                self.calls.inc(outcome="blocked")
                self._active.discard(event.call_id)
            elif kind is CallEventKind.ENDED:
                self.calls.inc(outcome=event.outcome or "unknown")
                self._active.discard(event.call_id)
            elif kind is CallEventKind.FAILOVER:
                self.failovers.inc()
        elif isinstance(event, CardStatus):
            self.card_states[event.card] = event.state
        elif isinstance(event, Alert):
            self.alerts.inc(alert=event.kind.value)

    def observe_decision(self, seconds: float) -> None:
        """Record one policy decision's latency."""
        self.decision.observe(seconds)

    @property
    def active_calls(self) -> int:
        """Calls attempted and not yet ended or blocked."""
        return len(self._active)

    def _own_gauges(self) -> Iterable[MetricFamily]:
        active = MetricFamily("dialgate_active_calls", "gauge", "Calls in progress")
        active.add(len(self._active))
        cards = MetricFamily("dialgate_cards", "gauge", "Cards by state")
        counts = {state: 0 for state in _CARD_STATES}
        for state in self.card_states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            cards.add(n, {"state": state})
        info = MetricFamily("dialgate_info", "gauge", "Gateway version")
        info.add(1, {"version": self._version})
        return [active, cards, info]

    # --- collectors from other parts ------------------------------------------------

    def watch_mqtt(self, publisher: Any) -> None:
        """Sample ``publisher.counters()`` (a ``gateway.telemetry.mqtt.MqttPublisher``) on each scrape."""

        def collect() -> Iterable[MetricFamily]:
            c = publisher.counters()
            rows = [
                (
                    "dialgate_mqtt_connected",
                    "gauge",
                    "1 while connected to the broker",
                    "connected",
                ),
                ("dialgate_mqtt_queue_depth", "gauge", "Messages waiting for the broker", "queued"),
                ("dialgate_mqtt_published_total", "counter", "Messages published", "published"),
                ("dialgate_mqtt_reconnects_total", "counter", "Connections lost", "reconnects"),
                (
                    "dialgate_mqtt_connect_failures_total",
                    "counter",
                    "Failed connection attempts",
                    "connect_failures",
                ),
            ]
            out = []
            for name, kind, text, key in rows:
                fam = MetricFamily(name, kind, text)
                fam.add(float(c.get(key, 0)))
                out.append(fam)
            per_kind = (
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
            )
            for name, text, key in per_kind:
                fam = MetricFamily(name, "counter", text)
                for topic_kind, n in sorted(dict(c.get(key) or {}).items()):
                    fam.add(float(n), {"kind": str(topic_kind)})
                out.append(fam)
            return out

        self.registry.add_collector(collect)

    def watch_gateway(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """Sample ``gateway.app.Gateway.snapshot()``-shaped dicts on each scrape.

        ``{"gateway": {...}, "transports": {"udp:127.0.0.1:5060": TransportStats.as_dict()}}``:
        every integer transport counter becomes ``dialgate_transport_<name>_total``
        with a ``transport`` label; dict counters (``by_status``,
        ``dropped_by_reason``) get a ``status``/``reason`` label.
        """

        def collect() -> Iterable[MetricFamily]:
            snap = snapshot()
            families: dict[str, MetricFamily] = {}

            def fam(name: str, text: str) -> MetricFamily:
                if name not in families:
                    families[name] = MetricFamily(name, "counter", text)
                return families[name]

            for transport, stats in sorted(dict(snap.get("transports", {})).items()):
                values = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats)
                for key, value in values.items():
                    name = f"dialgate_transport_{_metric_part(key)}_total"
                    text = f"Transport counter {key}"
                    if isinstance(value, Mapping):
                        label = "status" if key.endswith("status") else "reason"
                        for sub, n in sorted(value.items()):
                            fam(name, text).add(n, {"transport": transport, label: str(sub)})
                    elif isinstance(value, int | float) and not isinstance(value, bool):
                        fam(name, text).add(value, {"transport": transport})
            gw = snap.get("gateway")
            if isinstance(gw, Mapping):
                for key, value in gw.items():
                    name = f"dialgate_sip_{_metric_part(key)}_total"
                    text = f"Request handler counter {key}"
                    if isinstance(value, Mapping):
                        label = "status" if key == "answered" else "reason"
                        for sub, n in sorted(value.items()):
                            fam(name, text).add(n, {label: str(sub)})
                    elif isinstance(value, int | float) and not isinstance(value, bool):
                        fam(name, text).add(value)
            return list(families.values())

        self.registry.add_collector(collect)

    def render(self) -> str:
        """The ``/metrics`` body."""
        return self.registry.render()


def _metric_part(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_") or "value"
