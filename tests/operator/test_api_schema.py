"""Property test: schemathesis drives every operation of /openapi.json; no answer is a 5xx.

The admin API runs on its own event loop in a thread (schemathesis calls it
synchronously with ``requests``) on a free loopback port. Examples per
operation are bounded so the whole run stays within a few seconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.config import Settings
from gateway.operator.api import AdminServer, build_admin_app, start_admin
from gateway.operator.service import operator_from_settings
from gateway.store import SQLiteStore

from .conftest import T0, TOKEN

EXAMPLES_PER_OPERATION = 12


class _Background:
    """An admin server served by an event loop in a daemon thread."""

    def __init__(self, settings: Settings, store: SQLiteStore) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: AdminServer | None = None
        self.settings = settings
        self.store = store
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()

        async def boot() -> AdminServer:
            op = operator_from_settings(self.settings, now=T0, store=self.store)
            app = build_admin_app(self.settings, self.store, operator=op, clock=lambda: T0 + 10)
            return await start_admin(app, "127.0.0.1:0")

        self.server = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def base_url(settings: Settings, store: SQLiteStore) -> Iterator[str]:
    """URL of an admin API with a little data (a CDR, a suspended card)."""
    store.add_cdr(
        CallRecord(
            call_id="p1",
            attempt_at=T0 - 30,
            destination="+8613912345678",
            outcome=Outcome.ANSWERED,
            final_code=200,
            origin="alice",
            cards=("c1",),
            answer_at=T0 - 25,
            end_at=T0 - 5,
        )
    )
    background = _Background(settings, store)
    url = background.start()
    yield url
    background.stop()


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_no_operation_answers_5xx(base_url: str, mode: schemathesis.GenerationMode) -> None:
    """Generated requests, valid and invalid per the schema, never get a 5xx from any operation."""
    document: dict[str, Any] = requests.get(f"{base_url}/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    seen: list[str] = []
    exercised: list[str] = []
    failures: list[str] = []
    statuses: set[int] = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        seen.append(operation.label)

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")
            assert response.status_code < 500

        try:
            check()
        except Unsatisfiable:
            # Negative mode: an operation without parameters or body has nothing to break.
            assert schemathesis.GenerationMode.NEGATIVE == mode
            continue
        exercised.append(operation.label)
        if mode is schemathesis.GenerationMode.POSITIVE and "{card}" in operation.path:
            # Random card ids are mostly 404s: run the lifecycle on the real cards too.
            for card in ("c1", "c2"):
                strategy = operation.as_strategy(path_parameters={"card": card})

                @settings(
                    max_examples=EXAMPLES_PER_OPERATION,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def check_card(case: Any) -> None:
                    response = case.call(
                        base_url=base_url, session=session, headers=headers, timeout=10
                    )
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path}: 5xx")
                    statuses.add(response.status_code)
                    assert response.status_code < 500

                check_card()
    assert len(seen) >= 20
    assert len(exercised) >= 15
    assert [] == failures
    if mode is schemathesis.GenerationMode.POSITIVE:
        assert 200 in statuses  # some generated lifecycle requests were accepted
