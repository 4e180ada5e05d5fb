"""A small asyncio HTTP/1.1 server: the gateway's ``/metrics`` and ``/health``, the wallboard.

What this module is for:

* :class:`HttpServer`: routes ``(method, path)`` to async handlers returning a
  :class:`Response` or a :class:`StreamResponse` (Server-Sent Events); one
  request per connection (``Connection: close``), request head and body size
  bounded, a deadline on reading the request, ``HEAD`` served from ``GET``;
  malformed requests get 400, unknown paths 404, wrong methods 405 with ``Allow``;
* :func:`admin_server`: the gateway's HTTP endpoint on ``[admin] listen`` with
  ``GET /metrics`` (Prometheus text format 0.0.4) and ``GET /health`` (JSON,
  503 when unhealthy). The admin API will add its routes to the same server;
* :class:`GatewayTelemetry`: the one object ``gateway.app`` starts and stops —
  the event bus with its subscribers (call stats, derived alerts, metrics, the
  MQTT publisher when ``[mqtt]`` is configured) and this HTTP endpoint;
* :func:`mount_metrics`: the same ``/metrics`` on an ``aiohttp`` application
  (the admin API of ``gateway.operator.api`` listens on ``[admin] listen`` too; only
  one server can bind it, so the gateway either runs this module's server or
  mounts ``/metrics`` on the admin app and passes ``serve_http=False``).

What it must never do: let one bad request or failing handler stop the server
(a handler exception is logged and answered 500 without details), read an
unbounded request, or echo request headers (an ``Authorization`` value) into
logs or responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import structlog

from gateway import __version__
from gateway.telemetry.alerts import AlertWatch
from gateway.telemetry.events import CallStats, EventBus
from gateway.telemetry.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gateway.config import AdminSettings, Settings
    from gateway.telemetry.mqtt import MqttPublisher

__all__ = [
    "GatewayTelemetry",
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "StreamResponse",
    "admin_server",
    "json_response",
    "mount_metrics",
]

log = structlog.get_logger("gateway.operator.http")


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; header names are lower-case."""

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    peer: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A response whose body is produced over time (``text/event-stream`` for SSE).

    ``stream()`` is iterated until it ends, the client goes away or the server
    closes; each chunk is written and drained before the next is asked for.
    """

    stream: Callable[[], AsyncIterator[bytes]]
    status: int = 200
    content_type: str = "text/event-stream; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(
        default=(("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
    )


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as a JSON response."""
    return Response(status, json.dumps(data).encode(), "application/json")


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class HttpServer:
    """The server; ``route`` handlers, then ``await start()`` … ``await close()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "http",
        max_head_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        read_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self._routes: dict[str, dict[str, Handler]] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.requests = 0

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler`` (``GET`` also answers ``HEAD``)."""
        self._routes.setdefault(path, {})[method.upper()] = handler

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=self.max_head_bytes
        )
        log.info("http listening", server=self.name, host=self.address[0], port=self.address[1])

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket."""
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def close(self) -> None:
        """Stop accepting, end open streams, wait for connections to finish."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- one connection ------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            peer = writer.get_extra_info("peername")
            try:
                async with asyncio.timeout(self.read_timeout):
                    request = await self._read_request(reader, peer)
            except _BadRequest as exc:
                await self._write(writer, Response(exc.status, f"{exc}\n".encode()), head=False)
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            self.requests += 1
            await self._dispatch(request, reader, writer)
        except asyncio.CancelledError:
            pass
        except ConnectionError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader, peer: Any) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise _BadRequest(400, "bad request") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method, target, _version = parts
        if not method.isalpha() or not target.startswith("/"):
            raise _BadRequest(400, "bad request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "bad header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "transfer-encoding not supported")
        body = b""
        if "content-length" in headers:
            length_text = headers["content-length"]
            if not length_text.isdigit():
                raise _BadRequest(400, "bad content-length")
            length = int(length_text)
            if length > self.max_body_bytes:
                raise _BadRequest(413, "request body too large")
            body = await reader.readexactly(length)
        split = urlsplit(target)
        return Request(
            method=method.upper(),
            target=target,
            path=split.path,
            query=parse_qs(split.query),
            headers=headers,
            body=body,
            peer=tuple(peer[:2]) if isinstance(peer, tuple) else None,
        )

    async def _dispatch(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        methods = self._routes.get(request.path)
        head = request.method == "HEAD"
        if methods is None:
            await self._write(writer, Response(404, b"not found\n"), head=head)
            return
        handler = methods.get("GET" if head and "HEAD" not in methods else request.method)
        if handler is None:
            allow = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            await self._write(
                writer,
                Response(405, b"method not allowed\n", headers=(("Allow", ", ".join(allow)),)),
                head=head,
            )
            return
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http handler failed", server=self.name, path=request.path)
            await self._write(writer, Response(500, b"internal error\n"), head=head)
            return
        if isinstance(response, StreamResponse):
            await self._stream(reader, writer, response, head=head)
        else:
            await self._write(writer, response, head=head)

    @staticmethod
    def _head_bytes(
        status: int, content_type: str, headers: tuple[tuple[str, str], ...], length: int | None
    ) -> bytes:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {content_type}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines.append("Connection: close")
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _write(self, writer: asyncio.StreamWriter, response: Response, *, head: bool) -> None:
        writer.write(
            self._head_bytes(
                response.status, response.content_type, response.headers, len(response.body)
            )
        )
        if not head:
            writer.write(response.body)
        await writer.drain()

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response: StreamResponse,
        *,
        head: bool,
    ) -> None:
        writer.write(
            self._head_bytes(response.status, response.content_type, response.headers, None)
        )
        await writer.drain()
        if head:
            return
        chunks = response.stream()

        async def pump() -> None:
            async for chunk in chunks:
                writer.write(chunk)
                await writer.drain()

        # A client that goes away is noticed at once (EOF on its side), not at the
        # next write: the stream and its per-client queue are released right away.
        sender = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(reader.read(1024))
        try:
            while not sender.done():
                await asyncio.wait({sender, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    if gone.cancelled() or gone.exception() is not None or not gone.result():
                        break
                    gone = asyncio.ensure_future(reader.read(1024))  # ignore stray bytes
            if sender.done() and not sender.cancelled():
                sender.result()
        finally:
            for task in (sender, gone):
                task.cancel()
            for task in (sender, gone):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


def admin_server(
    settings: AdminSettings,
    *,
    metrics: GatewayMetrics,
    health: Callable[[], Mapping[str, Any]] | None = None,
) -> HttpServer:
    """The gateway's HTTP server on ``[admin] listen``: ``/metrics`` and ``/health``.

    ``health()`` returns a JSON-ready dict; a ``"status"`` other than ``"ok"``
    makes ``/health`` answer 503. Without it ``/health`` says ``{"status": "ok"}``.
    """
    from gateway.telemetry.metrics import CONTENT_TYPE

    server = HttpServer(settings.host, settings.port, name="admin")

    async def get_metrics(_request: Request) -> Response:
        return Response(200, metrics.render().encode(), CONTENT_TYPE)

    async def get_health(_request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok"}
        if health is not None:
            body = dict(health())
            body.setdefault("status", "ok")
        return json_response(body, 200 if body["status"] == "ok" else 503)

    server.route("GET", "/metrics", get_metrics)
    server.route("GET", "/health", get_health)
    return server


class GatewayTelemetry:
    """Bus, stats, alerts, metrics, MQTT publisher and the admin HTTP endpoint, as one unit.

    ``gateway.app`` builds it from the settings, starts it with the listeners,
    hands ``telemetry.bus`` to the call path and cards (``bus.publish(event)``,
    ``bus.publish_card_events(manager.drain_events())``) and stops it last.
    ``gateway_snapshot`` (``Gateway.snapshot``) adds the transport and request
    counters to ``/metrics``. Without ``[mqtt]`` nothing is published to a
    broker; with ``[admin] enabled = false`` or ``serve_http=False`` (``/metrics``
    mounted on the aiohttp admin app with :func:`mount_metrics`) no HTTP port is
    opened here. ``alert_watch=False`` leaves ``quota-near``/``card-at-risk`` to
    another part (``gateway.operator.service``'s alert assessment) so they are not raised twice.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        gateway_snapshot: Callable[[], Mapping[str, Any]] | None = None,
        version: str = __version__,
        serve_http: bool = True,
        alert_watch: bool = True,
    ) -> None:
        from gateway.telemetry.mqtt import MqttPublisher

        self.settings = settings
        self.version = version
        self.bus = EventBus()
        self.stats = CallStats(clock)
        self.metrics = GatewayMetrics(version=version)
        self.bus.subscribe(self.stats)
        self.bus.subscribe(self.metrics)
        if alert_watch:  # off when another part (gateway.operator.service) raises quota alerts
            self.bus.subscribe(AlertWatch(self.bus.publish))
        self.publisher: MqttPublisher | None = None
        if settings.mqtt is not None:
            self.publisher = MqttPublisher.from_settings(
                settings, stats_source=self.stats.snapshot, clock=clock, version=version
            )
            self.publisher.attach(self.bus)
            self.metrics.watch_mqtt(self.publisher)
        if gateway_snapshot is not None:
            self.metrics.watch_gateway(gateway_snapshot)
        self.store_status: Callable[[], dict[str, Any]] | None = None  # StoreGuard.status
        self.http: HttpServer | None = None
        if settings.admin.enabled and serve_http:
            self.http = admin_server(settings.admin, metrics=self.metrics, health=self.health)

    def health(self) -> dict[str, Any]:
        """``/health``: ok while the gateway runs (a broker outage never fails calls);
        degraded (503) while the store does not answer."""
        mqtt = "off"
        if self.publisher is not None:
            mqtt = "connected" if self.publisher.connected else "disconnected"
        store = self.store_status() if self.store_status is not None else {"state": "off"}
        return {
            "status": "degraded" if store["state"] == "unavailable" else "ok",
            "store": store,
            "version": self.version,
            "mqtt": mqtt,
            "active_calls": self.stats.active_calls,
            "cards": self.stats.cards_by_state(),
        }

    async def start(self) -> None:
        """Bind the HTTP port, then start publishing (MQTT connects in the background)."""
        if self.http is not None:
            await self.http.start()
        if self.publisher is not None:
            await self.publisher.start()

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the HTTP port; flush MQTT and publish ``offline`` (bounded by ``timeout``)."""
        if self.http is not None:
            await self.http.close()
        if self.publisher is not None:
            await self.publisher.stop(timeout)

    async def __aenter__(self) -> GatewayTelemetry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def mount_metrics(app: Any, metrics: GatewayMetrics, path: str = "/metrics") -> None:
    """Serve ``metrics`` at ``GET path`` on an ``aiohttp.web.Application`` (before it starts).

    The admin API's token middleware applies: Prometheus then scrapes with
    ``authorization: {credentials: <token>}`` unless the admin app lists the
    path as public.
    """
    from aiohttp import web

    from gateway.telemetry.metrics import CONTENT_TYPE

    async def get_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get(path, get_metrics)
