"""Telemetry: the event bus, alerts, MQTT publishing, Prometheus metrics, logging."""
