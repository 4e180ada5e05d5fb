"""What one worker of ``dialgate run --workers N`` is: its index, its ports, its rows.

The supervisor (:mod:`gateway.cli.workers`) starts N processes of
``dialgate run`` and hands each a :class:`WorkerRole` on its command line
(``--worker-role JSON``). Every worker binds the configured SIP listeners with
``SO_REUSEPORT`` (new requests spread over the workers by the kernel) and a
private port of its own on the same addresses (``home``): every request a
worker originates leaves from there and its Via and Contacts name it, so the
answers and in-dialog requests of its calls come back to it, whatever the
kernel's hash does (docs/workers.md).

Rows it writes in the store carry its ``owner`` (``w0``, ``w1`` …); a worker
restarted beside live siblings recovers only its own; worker 0 at the first
start of a set also sweeps the rows of owners that are not in the set any more
(a previous run with more workers, or a single process: owner ``''``).

This module must never import the rest of the gateway: the configuration,
the store and the transports take the plain values it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["WorkerRole"]


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """One worker of a set of ``count``: where it listens and which rows are its own."""

    index: int
    count: int
    #: The shared ports of ``[sip] listen``, in order (a port 0 resolved by the supervisor).
    ports: tuple[int, ...]
    #: This worker's private port for each listener, in the same order.
    home: tuple[int, ...]
    #: True at the first start of the set (not a restart beside live workers).
    initial: bool = True
    #: The supervisor's private directory (0700) of the workers' hand-over sockets
    #: (gateway.callpath.steering); '' when calls are not steered by Call-ID.
    steer: str = ""

    @property
    def owner(self) -> str:
        """The owner written on this worker's reservations and calls in progress."""
        return f"w{self.index}"

    @property
    def primary(self) -> bool:
        """Worker 0 serves the admin API and publishes card and pool statuses."""
        return self.index == 0

    @property
    def siblings(self) -> tuple[str, ...]:
        """The owners of the other workers of the set."""
        return tuple(f"w{i}" for i in range(self.count) if i != self.index)

    @property
    def sweep(self) -> bool:
        """Recover every row but the live siblings' (worker 0 at the first start), or
        only this worker's own (any other start)."""
        return self.primary and self.initial

    def to_json(self) -> str:
        """The form passed on the worker's command line."""
        return json.dumps(
            {
                "index": self.index,
                "count": self.count,
                "ports": list(self.ports),
                "home": list(self.home),
                "initial": self.initial,
                "steer": self.steer,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerRole:
        """Parse :meth:`to_json`'s output; ValueError when it is not one."""
        try:
            data = json.loads(text)
            role = cls(
                index=int(data["index"]),
                count=int(data["count"]),
                ports=tuple(int(p) for p in data["ports"]),
                home=tuple(int(p) for p in data["home"]),
                initial=bool(data.get("initial", True)),
                steer=str(data.get("steer", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a worker role: {text!r}") from exc
        if not 0 <= role.index < role.count or len(role.ports) != len(role.home):
            raise ValueError(f"not a worker role: {text!r}")
        return role
