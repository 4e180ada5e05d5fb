"""A circuit breaker in front of a store: a stalled store never stalls the event loop.

The store's operations are synchronous and run on the event loop. SQLite
bounds how long one of them waits for a lock (``busy_timeout``), but while
another process holds the database (a stuck backup, an operator's long
transaction) or the disk is full, every call, CDR and registration write would
pay that wait again, one after the other: the loop stops answering even the
requests that never touch the store (digest challenges, retransmissions, BYE).

:class:`StoreGuard` is the one mechanism every guarded store operation goes
through:

- ``check()`` before the operation: while the guard is *open* it raises the
  store's unavailable error at once (``StoreUnavailable`` → 503
  ``store-unavailable`` + Retry-After), without touching the store.
- ``trip(detail)`` when an operation failed for a reason of the store itself
  (locked, busy, disk full, I/O error): the guard opens and a probe starts.
- The probe runs in its own thread (never on the event loop), with its own
  connection: every ``interval`` seconds it tries a cheap real write. When it
  succeeds the guard closes by itself and the ``on_recover`` callbacks run on
  the event loop that registered them (the gateway flushes what the outage
  held back: reservation finishes, spooled CDRs, registrations).

Nothing is dropped by the guard: callers keep what they could not write (the
B2BUA's pending finishes, the CDR spool, the registrar's retry queue) exactly
as they do for any other ``StoreUnavailable``.

``status()`` is what ``/health`` reports.

It must never run the probe on the event loop, retry or drop a caller's
write, or know which store it guards beyond the probe and error it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["StoreGuard"]

log = structlog.get_logger("gateway.store.guard")


class StoreGuard:
    """Open (refusing) after a store failure, closed again once ``probe`` succeeds.

    ``probe`` is called in a worker thread and must raise when the store still
    cannot take a write; it must use its own connection (the event loop's one
    is not thread-safe). ``error(detail, retry_after)`` builds the exception
    ``check`` raises. ``retry_after`` is the Retry-After (seconds) refused calls
    get. ``name`` labels logs and ``/health``.
    """

    def __init__(
        self,
        probe: Callable[[], object],
        error: Callable[[str, int], Exception],
        *,
        name: str = "store",
        interval: float = 0.5,
        retry_after: int = 5,
    ) -> None:
        self.name = name
        self.interval = interval
        self.retry_after = retry_after
        self._probe = probe
        self._error = error
        self._lock = threading.Lock()
        self._open_since: float | None = None  # wall clock, for /health
        self._detail = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listeners: list[tuple[asyncio.AbstractEventLoop | None, Callable[[], object]]] = []
        self.trips = 0
        self.refused = 0
        self.probes = 0

    @property
    def healthy(self) -> bool:
        """Whether the guard is closed (the store answered its last operation or probe)."""
        return self._open_since is None

    def check(self) -> None:
        """Raise the store's unavailable error at once while the guard is open."""
        if self._open_since is not None:
            self.refused += 1
            raise self._error(f"{self.name} unavailable: {self._detail}", self.retry_after)

    def trip(self, detail: str) -> None:
        """An operation failed for a reason of the store: open and start probing."""
        with self._lock:
            if self._stop.is_set():
                return
            if self._open_since is None:
                self._open_since = time.time()
                self._detail = detail[:200]
                self.trips += 1
                log.error("store.degraded", store=self.name, detail=self._detail)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"{self.name}-guard-probe", daemon=True
                )
                self._thread.start()

    def on_recover(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` when the guard closes (on the running event loop, if any)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._listeners.append((loop, callback))

    def status(self) -> dict[str, Any]:
        """``{"state": "ok"}`` or ``{"state": "unavailable", "since", "detail"}`` (+ counters)."""
        since = self._open_since
        body: dict[str, Any] = {"state": "ok" if since is None else "unavailable"}
        if since is not None:
            body["since"] = round(since, 3)
            body["detail"] = self._detail
        body["trips"] = self.trips
        return body

    def stop(self) -> None:
        """Stop probing (the store is closing); waits briefly for the probe thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.probes += 1
            try:
                self._probe()
            except Exception as exc:  # still down: keep probing
                self._detail = f"{type(exc).__name__}: {exc}"[:200]
                continue
            with self._lock:
                since = self._open_since
                self._open_since = None
                self._thread = None
            log.warning(
                "store.recovered",
                store=self.name,
                after=round(time.time() - since, 3) if since is not None else 0.0,
            )
            self._notify()
            return

    def _notify(self) -> None:
        for loop, callback in list(self._listeners):
            if loop is None:
                self._call(callback)
            else:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._call, callback)

    @staticmethod
    def _call(callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception:
            log.exception("store.recover_callback_failed")
