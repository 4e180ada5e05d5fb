"""Wallboard server: MQTT ``{root}/#`` in, a web page and a Server-Sent Events stream out.

What this module is for:

* :class:`WallboardState`: the retained state seen on the broker — every card's
  ``cards/{card}/state``, each ``agents/{agent}/state``, ``stats``, each
  ``gateway/{node}/status`` — and the
  latest alerts; :meth:`WallboardState.snapshot` is what a browser gets when it
  connects (so a reloaded page rebuilds from the retained topics alone), and
  every later message becomes one small update pushed to each browser;
* :class:`WallboardServer`: the MQTT subscriber (aiomqtt 2.x; it does not
  reconnect by itself, so this loop does, with capped jittered backoff) plus the
  HTTP side, an aiohttp application: ``/`` (the page), ``/wallboard.css``,
  ``/wallboard.js``, ``/events`` (SSE on a ``web.StreamResponse``: ``snapshot``
  then ``update`` events, a comment ping every 15 s; a browser that goes away
  is let go at once), ``/state`` (the snapshot as JSON) and ``/health`` (503
  while the broker is away);
* :func:`serve_wallboard`: run both until ``stop`` is set (used by
  ``dialgate wallboard``).

What it must never do: publish anything to the broker, let a slow browser grow
memory without bound (each browser has a bounded queue; on overflow it gets a
fresh snapshot instead of the missed updates), keep a stream open after
``close()``, or log the broker password.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
from collections.abc import AsyncGenerator
from importlib import resources
from typing import Any

import aiomqtt
import structlog
from aiohttp import web

from gateway.config import ServiceUrl
from gateway.operator.wallboard.trend import Trend
from gateway.operator.web import WebServer

__all__ = ["MQTT_SCHEMES", "WallboardServer", "WallboardState", "serve_wallboard"]

log = structlog.get_logger("gateway.operator.wallboard")

MQTT_SCHEMES = ("mqtt", "mqtts", "ws", "wss")

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/wallboard.css": ("wallboard.css", "text/css; charset=utf-8"),
    "/wallboard.js": ("wallboard.js", "text/javascript; charset=utf-8"),
}


class _Listener:
    """One connected browser: a bounded queue of updates, or a resync flag."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(limit)
        self.resync = False
        self.wake = asyncio.Event()

    def push(self, update: dict[str, Any]) -> None:
        if self.resync:
            return
        try:
            self.queue.put_nowait(update)
        except asyncio.QueueFull:
            # Too slow to keep up: forget the backlog and send a fresh snapshot.
            self.resync = True
            while not self.queue.empty():
                self.queue.get_nowait()
        self.wake.set()


class WallboardState:
    """What the wallboard knows, built only from MQTT messages under ``root``."""

    def __init__(self, root: str = "dialgate", *, max_alerts: int = 20, listener_limit: int = 500):
        self.root = root.rstrip("/")
        self.max_alerts = max_alerts
        self.listener_limit = listener_limit
        self.cards: dict[str, Any] = {}
        self.agents: dict[str, Any] = {}
        self.trend = Trend()  # calls/min and ASR per minute, last hour (from stats)
        self.gateways: dict[str, Any] = {}
        self.stats: Any = None
        self.alerts: collections.deque[Any] = collections.deque(maxlen=max_alerts)
        self.broker_connected = False
        self.messages = 0
        self.bad_messages = 0
        self._listeners: set[_Listener] = set()

    def snapshot(self) -> dict[str, Any]:
        """Everything a freshly loaded page needs."""
        return {
            "root": self.root,
            "broker": {"connected": self.broker_connected},
            "cards": dict(self.cards),
            "agents": dict(self.agents),
            "trend": self.trend.points(),
            "gateways": dict(self.gateways),
            "stats": self.stats,
            "alerts": list(self.alerts),
        }

    def on_message(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """Apply one MQTT message; return the update sent to browsers (None: ignored).

        An empty payload on a retained topic clears it (``cards/{card}/state`` removes the card).
        """
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        data: Any = None
        if payload:
            try:
                data = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                self.bad_messages += 1
                return None
            if not isinstance(data, dict):
                self.bad_messages += 1
                return None
        self.messages += 1
        update: dict[str, Any] | None = None
        if len(parts) == 3 and parts[0] == "cards" and parts[2] == "state":
            card = parts[1]
            if data is None:
                self.cards.pop(card, None)
                update = {"type": "card-removed", "card": card}
            else:
                self.cards[card] = data
                update = {"type": "card", "card": card, "data": data}
        elif len(parts) == 3 and parts[0] == "agents" and parts[2] == "state":
            agent = parts[1]
            if data is None:
                self.agents.pop(agent, None)
            else:
                self.agents[agent] = data
            update = {"type": "agent", "agent": agent, "data": data}
        elif parts == ["stats"]:
            self.stats = data
            update = {"type": "stats", "data": data}
            if data is not None and self.trend.add(data):
                self._broadcast({"type": "trend", "data": self.trend.points()})
        elif len(parts) == 3 and parts[0] == "gateway" and parts[2] == "status":
            node = parts[1]
            if data is None:
                self.gateways.pop(node, None)
            else:
                self.gateways[node] = data
            update = {"type": "gateway", "node": node, "data": data}
        elif parts == ["alerts"] and data is not None:
            self.alerts.appendleft(data)
            update = {"type": "alert", "data": data}
        if update is not None:
            self._broadcast(update)
        return update

    def set_broker(self, connected: bool) -> None:
        """Record (and push) whether the wallboard is connected to the broker."""
        if connected != self.broker_connected:
            self.broker_connected = connected
            self._broadcast({"type": "broker", "connected": connected})

    def _broadcast(self, update: dict[str, Any]) -> None:
        for listener in tuple(self._listeners):
            listener.push(update)

    @property
    def listeners(self) -> int:
        """Browsers connected to ``/events``."""
        return len(self._listeners)

    async def stream(self, ping_interval: float = 15.0) -> AsyncGenerator[bytes]:
        """SSE bytes for one browser: a snapshot, then updates (and pings) until cancelled."""
        listener = _Listener(self.listener_limit)
        self._listeners.add(listener)
        try:
            yield b"retry: 2000\n" + _sse("snapshot", self.snapshot())
            while True:
                if listener.resync:
                    listener.resync = False
                    yield _sse("snapshot", self.snapshot())
                    continue
                if not listener.queue.empty():
                    yield _sse("update", listener.queue.get_nowait())
                    continue
                listener.wake.clear()
                try:
                    async with asyncio.timeout(ping_interval):
                        await listener.wake.wait()
                except TimeoutError:
                    yield b": ping\n\n"
        finally:
            self._listeners.discard(listener)


def _sse(event: str, data: Any) -> bytes:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {body}\n\n".encode()


def _static(name: str) -> bytes:
    return resources.files("gateway.operator.wallboard").joinpath("static", name).read_bytes()


class WallboardServer:
    """The MQTT subscriber and the HTTP server of the wallboard."""

    def __init__(
        self,
        mqtt_url: str | ServiceUrl,
        *,
        root: str = "dialgate",
        host: str = "127.0.0.1",
        port: int = 8080,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        ping_interval: float = 15.0,
    ) -> None:
        self.url = (
            mqtt_url
            if isinstance(mqtt_url, ServiceUrl)
            else ServiceUrl.parse(mqtt_url, schemes=MQTT_SCHEMES)
        )
        self.username = username or self.url.username
        self._password = password or (
            self.url.password.get_secret_value() if self.url.password else None
        )
        self.ca_file = ca_file
        self.state = WallboardState(root)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        app = web.Application()
        for path, (name, ctype) in _STATIC.items():
            app.router.add_get(path, self._static_handler(name, ctype))
        app.router.add_get("/events", self._events)
        app.router.add_get("/state", self._state)
        app.router.add_get("/health", self._health)
        # handler_cancellation: a browser that closes its /events stream ends its handler.
        self.http = WebServer(app, host, port, handler_cancellation=True)
        self._task: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._subscribed = asyncio.Event()

    @staticmethod
    def _static_handler(name: str, ctype: str) -> Any:
        async def handler(_request: web.Request) -> web.Response:
            return web.Response(
                body=_static(name), headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
            )

        return handler

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        chunks = self.state.stream(self.ping_interval)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except ConnectionError:
            pass  # the browser went away between two writes
        finally:
            if task is not None:
                self._streams.discard(task)
            await chunks.aclose()
        return response

    async def _state(self, _request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    async def _health(self, _request: web.Request) -> web.Response:
        ok = self.state.broker_connected
        return web.json_response(
            {"status": "ok" if ok else "degraded", "broker": ok, "browsers": self.state.listeners},
            status=200 if ok else 503,
        )

    async def start(self) -> None:
        """Bind the HTTP port and start following the broker (in the background)."""
        await self.http.start()
        log.info("http listening", server="wallboard", host=self.http.host, port=self.http.port)
        self._task = asyncio.create_task(self._follow(), name="wallboard-mqtt")

    async def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Wait until the first subscription to ``{root}/#`` is in place."""
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop following the broker and close the HTTP server (ending every stream)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for stream in list(self._streams):  # open /events streams end with the server
            stream.cancel()
        await self.http.stop()

    async def __aenter__(self) -> WallboardServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> aiomqtt.Client:
        tls = self.url.scheme in ("mqtts", "wss")
        websockets = self.url.scheme in ("ws", "wss")
        port = self.url.port or (8883 if tls else 1883)
        return aiomqtt.Client(
            self.url.ip,
            port,
            username=self.username,
            password=self._password,
            identifier=f"dialgate-wallboard-{os.getpid()}-{random.randrange(1 << 30):x}",
            keepalive=30,
            tls_params=aiomqtt.TLSParameters(ca_certs=self.ca_file) if tls else None,
            transport="websockets" if websockets else "tcp",
            websocket_path=(self.url.path or "/mqtt") if websockets else None,
            logger=logging.getLogger("gateway.operator.wallboard.client"),
        )

    async def _follow(self) -> None:
        delay = self.backoff_initial
        url = str(self.url)  # password masked
        topic = f"{self.state.root}/#"
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(topic, qos=1)
                    self.state.set_broker(True)
                    self._subscribed.set()
                    delay = self.backoff_initial
                    log.info("wallboard subscribed", url=url, topic=topic)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, str):
                            payload = payload.encode()
                        elif not isinstance(payload, bytes | bytearray):
                            payload = b"" if payload is None else str(payload).encode()
                        self.state.on_message(str(message.topic), bytes(payload))
            except aiomqtt.MqttError as exc:
                if self.state.broker_connected:
                    log.warning("wallboard lost the broker", url=url, error=str(exc))
            self.state.set_broker(False)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.backoff_max)


async def serve_wallboard(
    mqtt_url: str | ServiceUrl,
    *,
    root: str = "dialgate",
    host: str = "127.0.0.1",
    port: int = 8080,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> WallboardServer:
    """Run a wallboard until ``stop`` is set (or the task is cancelled); return it closed."""
    server = WallboardServer(
        mqtt_url,
        root=root,
        host=host,
        port=port,
        username=username,
        password=password,
        ca_file=ca_file,
    )
    await server.start()
    try:
        log.info("wallboard ready", url=server.http.url, mqtt=str(server.url), root=root)
        if ready is not None:
            ready.set()
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await server.close()
    return server
