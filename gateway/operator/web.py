"""Serving an aiohttp application on one TCP address: the gateway's only HTTP stack.

:class:`WebServer` binds an ``aiohttp.web.Application`` (the admin API with
``/metrics`` and ``/health``, or the wallboard), reports the address it really
bound (port 0 picks a free one) and stops it; :func:`parse_listen` reads
``host:port`` / ``[v6]:port``.

What it must never do: hold a route or behaviour of its own (handlers live in
``gateway.operator.api`` and ``gateway.operator.wallboard``), or leave a bound
port behind when starting fails.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["WebServer", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → ``(host, port)``; raise ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class WebServer:
    """One application on one address: ``await start()``, ``url``/``address``, ``await stop()``.

    ``handler_cancellation`` cancels a handler whose client went away (for
    long-lived streams such as Server-Sent Events); ``shutdown_timeout`` bounds
    how long ``stop()`` waits for handlers still running.
    """

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler_cancellation: bool = False,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=handler_cancellation,
            shutdown_timeout=shutdown_timeout,
        )
        self._started = False

    async def start(self) -> WebServer:
        """Bind and serve; return self (``port`` is then the bound port)."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            raise
        for address in self.runner.addresses:  # the real port when 0 was asked for
            self.port = int(address[1])
            break
        self._started = True
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if not self._started:
            raise RuntimeError("server not started")
        return self.host, self.port

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting requests and close the application (a second call is a no-op)."""
        if self._started:
            self._started = False
            await self.runner.cleanup()

    async def __aenter__(self) -> WebServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
