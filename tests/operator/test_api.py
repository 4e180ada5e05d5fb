"""The admin HTTP API over a real socket: token auth, lifecycle, DNC/consent/complaints, CDRs."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.config import Settings
from gateway.operator.api import AdminServer, build_admin_app, start_admin
from gateway.operator.service import operator_from_settings
from gateway.store import SQLiteStore
from gateway.telemetry.events import CardStatus, EventBus

from .conftest import T0, TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    """A settable clock for the API (the operator never reads one itself)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """Starts at T0."""
    return Clock(T0)


@pytest.fixture
async def server(
    settings: Settings, store: SQLiteStore, bus: EventBus, clock: Clock
) -> AsyncIterator[AdminServer]:
    """The admin API on a free loopback port."""
    op = operator_from_settings(settings, now=T0, store=store, bus=bus)
    app = build_admin_app(settings, store, operator=op, clock=clock)
    running = await start_admin(app, settings.admin.listen)
    yield running
    await running.stop()
    op.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def test_requests_without_a_valid_token_get_401(
    server: AdminServer, http: aiohttp.ClientSession
) -> None:
    """No header, a wrong token, a wrong scheme: 401 each; the right token: 200."""
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        async with http.get(f"{server.url}/cards", headers=headers) as resp:
            assert 401 == resp.status
            body = await resp.text()
            assert TOKEN not in body
        async with http.post(
            f"{server.url}/cards/c1/suspend", json={"reason": "manual"}, headers=headers
        ) as resp:
            assert 401 == resp.status
    async with http.get(f"{server.url}/cards", headers=AUTH) as resp:
        assert 200 == resp.status
        cards = (await resp.json())["cards"]
    assert ["c1", "c2"] == [c["id"] for c in cards]
    assert {"calls_per_minute", "calls_per_hour", "calls_per_day", "concurrent"} <= set(
        cards[0]["usage"]
    )
    async with http.get(f"{server.url}/health") as resp:
        assert 200 == resp.status
    async with http.get(f"{server.url}/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")


async def test_lifecycle_over_http_is_audited_with_the_api_actor(
    server: AdminServer, http: aiohttp.ClientSession, clock: Clock, published: list[object]
) -> None:
    """Suspend, appeal, probation over HTTP; the timeline names the API actor; 409 and 404 mapped."""
    headers = {**AUTH, "X-Dialgate-Actor": "dana"}
    async with http.post(
        f"{server.url}/cards/c1/suspend",
        json={"reason": "violation", "note": "carrier SMS"},
        headers=headers,
    ) as resp:
        assert 200 == resp.status
        assert "suspended" == (await resp.json())["state"]
    clock.now = T0 + 3600
    async with http.post(
        f"{server.url}/cards/c1/appeal",
        json={"reference": "APL-9", "channel": "shop", "submitted_at": "2026-11-02T00:30:00Z"},
        headers=headers,
    ) as resp:
        assert 200 == resp.status
    clock.now = T0 + 7200
    async with http.post(
        f"{server.url}/cards/c1/probation", json={"duration": "14d"}, headers=AUTH
    ) as resp:
        shown = await resp.json()
        assert 200 == resp.status, shown
    assert ("probation", "careful") == (shown["state"], shown["profile_in_force"])
    transitions = [t for t in shown["timeline"] if t["kind"] == "transition"]
    assert [("suspended", "api:dana"), ("appealing", "api:dana"), ("probation", "api")] == [
        (t["to"], t["actor"]) for t in transitions
    ]
    assert "granted" == shown["appeals"][0]["status"]
    assert ["suspended", "appealing", "probation"] == [
        e.state for e in published if isinstance(e, CardStatus)
    ]

    async with http.post(f"{server.url}/cards/c2/appeal", json={}, headers=AUTH) as resp:
        assert 409 == resp.status
        assert "cannot go to appealing" in (await resp.json())["error"]
    async with http.get(f"{server.url}/cards/zz", headers=AUTH) as resp:
        assert 404 == resp.status
    async with http.post(f"{server.url}/cards/c2/suspend", data=b"{not json", headers=AUTH) as resp:
        assert 400 == resp.status
    async with http.patch(
        f"{server.url}/cards/c2/record",
        json={"holder": "Wang Fang", "registered_number": "+8613555550000"},
        headers=AUTH,
    ) as resp:
        record = await resp.json()
    assert ("Wang Fang", "+86135****0000") == (record["holder"], record["registered_number"])


async def test_complaint_dnc_consent_and_cdrs(
    server: AdminServer, http: aiohttp.ClientSession, store: SQLiteStore
) -> None:
    """A complaint DNCs the number; imports report bad lines; CDR queries filter and mask."""
    store.add_cdr(
        CallRecord(
            call_id="k1",
            attempt_at=T0 - 60,
            destination="+8613912345678",
            outcome=Outcome.ANSWERED,
            final_code=200,
            origin="alice",
            campaign="spring",
            cards=("c1",),
            answer_at=T0 - 55,
            end_at=T0 - 50,
        )
    )
    async with http.post(
        f"{server.url}/complaints", json={"number": "13912345678", "call_id": "k1"}, headers=AUTH
    ) as resp:
        complaint = await resp.json()
        assert 200 == resp.status, complaint
    assert ("c1", "alice", "+86139****5678") == (
        complaint["card"],
        complaint["agent"],
        complaint["number"],
    )
    async with http.get(f"{server.url}/numbers/+8613912345678", headers=AUTH) as resp:
        looked = await resp.json()
    assert ("complaint", 1) == (looked["dnc"]["source"], looked["complaints"])

    async with http.post(
        f"{server.url}/dnc/import",
        data="+8613800001111\nnot-a-number\n13800002222\n",
        headers={**AUTH, "Content-Type": "text/plain"},
    ) as resp:
        result = await resp.json()
    assert (2, [2]) == (result["added"], [e["line"] for e in result["errors"]])
    async with http.delete(f"{server.url}/dnc/+8613800002222", headers=AUTH) as resp:
        assert {"number": "+86138****2222", "removed": True} == await resp.json()

    csv_text = "number,campaign,granted_at,expires_at,source,evidence\n+8613700003333,spring,2026-11-01T00:00:00+00:00,,web,f-1\nbad,spring,2026-11-01T00:00:00+00:00,,web,f-2\n"
    async with http.post(
        f"{server.url}/consent/import", data=csv_text, headers={**AUTH, "Content-Type": "text/csv"}
    ) as resp:
        result = await resp.json()
    assert (1, [3]) == (result["added"], [e["line"] for e in result["errors"]])
    async with http.get(
        f"{server.url}/numbers/+8613700003333?campaign=spring", headers=AUTH
    ) as resp:
        assert "granted" == (await resp.json())["consent"]["status"]

    async with http.get(f"{server.url}/cdrs?card=c1&agent=alice", headers=AUTH) as resp:
        data = await resp.json()
    assert [("k1", "+86139****5678")] == [(r["call_id"], r["destination"]) for r in data["cdrs"]]
    async with http.get(f"{server.url}/cdrs?card=c2", headers=AUTH) as resp:
        assert 0 == (await resp.json())["count"]
    async with http.get(f"{server.url}/cdrs.csv?campaign=spring", headers=AUTH) as resp:
        text = await resp.text()
    assert "+8613912345678" not in text and "k1" in text
    async with http.get(f"{server.url}/cdrs?since=yesterday", headers=AUTH) as resp:
        assert 400 == resp.status

    async with http.get(f"{server.url}/cards/c1/evidence?since=2026-11-01", headers=AUTH) as resp:
        assert 200 == resp.status
        assert "application/zip" == resp.content_type
        payload = await resp.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert "summary.html" in archive.namelist()


async def test_every_api_write_is_audited_with_its_actor(
    server: AdminServer, http: aiohttp.ClientSession, store: SQLiteStore
) -> None:
    """Each write route leaves one audit entry naming the API actor; numbers in it are masked."""
    writes: list[tuple[str, str, object]] = [
        ("POST", "/dnc", {"number": "+8613800004444"}),
        ("DELETE", "/dnc/+8613800004444", None),
        ("POST", "/consent", {"number": "+8613800005555", "campaign": "spring"}),
        ("POST", "/consent/revoke", {"number": "+8613800005555"}),
        ("POST", "/complaints", {"number": "+8613800006666", "agent": "bob", "card": "c2"}),
        ("PATCH", "/cards/c2/record", {"holder": "Zhao"}),
        ("POST", "/cards/c2/suspend", {"reason": "manual"}),
        ("POST", "/cards/c2/restore", {}),
        ("POST", "/agents/bob/resume", None),
    ]
    for method, path, body in writes:
        async with http.request(method, f"{server.url}{path}", json=body, headers=AUTH) as resp:
            assert 200 == resp.status, (path, await resp.text())
    entries = store.operator.audit_entries()
    assert [
        "dnc.add",
        "dnc.remove",
        "consent.add",
        "consent.revoke",
        "complaint.add",
        "card.record",
        "card.suspend",
        "card.probation",
        "agent.resume",
    ] == [e.action for e in entries]
    assert {"api"} == {e.actor for e in entries}
    assert "8613800004444" not in str(entries) and "8613800006666" not in str(entries)


async def test_cluster_is_404_without_redis(
    server: AdminServer, http: aiohttp.ClientSession
) -> None:
    """``GET /cluster`` lists the nodes of a Redis cluster; a gateway without one has none."""
    async with http.get(f"{server.url}/cluster", headers=AUTH) as resp:
        assert 404 == resp.status
        assert "redis" in (await resp.text())
    async with http.get(f"{server.url}/openapi.json") as resp:
        assert "/cluster" in (await resp.json())["paths"]
