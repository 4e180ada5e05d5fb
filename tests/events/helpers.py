"""Test helpers for tests/events: MQTT collector, HTTP GET, exposition parser (polling: simulator.testkit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

import aiomqtt


@dataclass(frozen=True, slots=True)
class Received:
    """One message a collector saw."""

    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def json(self) -> Any:
        """The payload decoded as JSON (None for an empty payload)."""
        return json.loads(self.payload) if self.payload else None


class Collector:
    """A separate MQTT client that records every message on ``topic``."""

    def __init__(self, port: int, topic: str, *, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.topic = topic
        self.messages: list[Received] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._client = aiomqtt.Client(self.host, self.port, timeout=5)
        await self._client.__aenter__()
        await self._client.subscribe(self.topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._client is not None
        with contextlib.suppress(aiomqtt.MqttError):
            async for msg in self._client.messages:
                payload = (
                    msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                )
                self.messages.append(Received(str(msg.topic), payload, bool(msg.retain), msg.qos))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    def on(self, topic: str) -> list[Received]:
        """Messages received on exactly ``topic``, oldest first."""
        return [m for m in self.messages if m.topic == topic]

    def latest(self, topic: str) -> Any:
        """JSON of the newest message on ``topic`` (None when none yet)."""
        got = self.on(topic)
        return got[-1].json if got else None


async def http_get(
    host: str, port: int, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 client: status, lower-cased headers, body.

    Reads ``Content-Length`` bytes when the server sends it (Chromium's DevTools
    server keeps the connection open), else up to EOF.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
            }
            if method == "HEAD":
                body = b""
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
    finally:
        writer.close()
    return status, headers, body


SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9.]+(?:e[-+]?[0-9]+)?|Inf|NaN))$"
)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """Parse exposition format 0.0.4 line by line; assert each line is well-formed.

    Returns the TYPE of each family and every sample. A sample must belong to a
    family whose TYPE was declared before it.
    """
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):  # the format splits on \n only
        if line.startswith("# HELP "):
            assert re.match(r"^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$", line), line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            assert name not in types, f"family declared twice: {name}"
            types[name] = kind
            continue
        match = SAMPLE_RE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name = match["name"]
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in types:
                family = name[: -len(suffix)]
        assert family in types, f"sample before its TYPE: {line!r}"
        labels = dict(LABEL_RE.findall(match["labels"] or ""))
        value = match["value"]
        samples.append((name, labels, float(value.replace("Inf", "inf"))))
    return types, samples


def value_of(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The value of the one sample with this name and (a superset of) labels."""
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]
