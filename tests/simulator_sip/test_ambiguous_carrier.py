"""Ambiguous carrier answers over SIP: the guarded gateway must neither burn cards nor re-dial.

``examples/scenarios/ambiguous-carrier.toml`` is guarded.toml's traffic against a
carrier whose destinations sometimes answer a plain 403, ring and then fail with
408 or 503, or stay silent. None of that says anything about the card, so at the
end of the run no card may be out of service at the gateway without the carrier
having refused it (``cards_wrongly_out``), and no callee may have been put
through from two cards within a call attempt (``callees_redialled``).

These run in-process on the event clock (seed-determined, a few seconds each). A
silent destination costs real time: the gateway's Timer B, shortened by the
runner to 64 x 25 ms, per silent INVITE.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from simulator.carrier import Carrier
from simulator.runner import SipRunResult, run_scenario
from simulator.scenario import Scenario, loads_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"

#: The carrier's names of the destination-level answers (InviteLogEntry.outcome).
DESTINATION_ANSWERS = {"refuse_403", "ring_then_408", "ring_then_503", "silent"}


def _shortened(duration: str, leads: int) -> Scenario:
    """ambiguous-carrier.toml cut down to ``duration`` and ``leads`` (same carrier and gateway)."""
    text = (EXAMPLES / "ambiguous-carrier.toml").read_text(encoding="utf-8")
    text = text.replace('duration = "8h"', f'duration = "{duration}"', 1)
    text = text.replace("count = 3000", f"count = {leads}", 1)
    assert f'duration = "{duration}"' in text and f"count = {leads}" in text
    return loads_scenario(text, "ambiguous-carrier.toml")


async def _run(scenario: Scenario) -> tuple[SipRunResult, Carrier]:
    seen: list[Carrier] = []
    result = await run_scenario(scenario, on_ready=lambda c, _gw: seen.append(c))
    [carrier] = seen
    return result, carrier


async def test_guarded_gateway_takes_no_card_out_and_dials_nobody_twice() -> None:
    """Through the guarded gateway: 0 cards wrongly out of service, 0 callees redialled.

    Needs the gateway's outcome classification (DESIGN.md call flow step 5): ambiguous
    refusals relayed and only counted toward ``suspect`` (N to N distinct callees in a
    window), anything after ringing the callee's, no response → 408 and failover only to
    a card on another carrier address (there is none here).
    """
    result, carrier = await _run(_shortened("2h", 300))
    answers = Counter(e.outcome for e in carrier.invites)
    # The check has teeth: every kind of ambiguous answer reached the gateway.
    assert DESTINATION_ANSWERS <= set(answers), answers
    report = result.report()
    data = json.loads(report.to_json())
    assert "sip/in-process" == data["run"]["mode"] and data["run"]["seed_determined"]
    assert data["gateway_cards"] is not None, "the gateway's card states were not read"
    assert 0 == data["totals"]["callees_redialled"], data["totals"]
    assert 0 == data["totals"]["cards_wrongly_out"], data["gateway_cards"]
    assert data["totals"]["placed"] > 100


def _plain_403_kills_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the in-process gateway a carrier rule that calls any 403 card-dead (a bad config)."""
    original = Scenario.gateway_config

    def with_rule(self: Scenario, *args: Any, **kwargs: Any) -> dict[str, Any]:
        config = original(self, *args, **kwargs)
        config["carriers"][0]["rules"].insert(0, {"status": 403, "reason": "unknown"})
        return config

    monkeypatch.setattr(Scenario, "gateway_config", with_rule)


async def test_the_report_catches_a_gateway_that_fails_over_on_a_plain_403(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks have teeth: a gateway told that every 403 means a dead card marks the card
    and retries the callee on the next one — both counts go up, from the run's own records."""
    _plain_403_kills_the_card(monkeypatch)
    text = SILENT_AND_REFUSED.replace("silent_share = 0.5", "refuse_403_share = 1.0")
    result, carrier = await _run(loads_scenario(text, "refusing.toml"))
    data = result.report().to_dict()
    assert data["totals"]["cards_wrongly_out"] == 2, data["gateway_cards"]
    assert data["totals"]["callees_redialled"] >= 1
    assert data["totals"]["callees_invited_more_than_once"] >= 1
    assert {"refuse_403"} == {e.outcome for e in carrier.dialled()}
    assert result.carrier.suspension("c1") is None and result.carrier.suspension("c2") is None


SILENT_AND_REFUSED = """
name = "silent"
seed = 5

[clock]
start = 2026-03-02T10:00:00+08:00
duration = "1h"

[carrier]
timezone = "Asia/Shanghai"

[carrier.answer]
answer = 0.5
busy = 0.5
no_answer = 0.0
decline = 0.0
ring_min = 2.0
ring_max = 4.0
talk_mean = 20.0
talk_sigma = 0.0
talk_min = 20.0
talk_max = 20.0
silent_share = 0.5

[[cards]]
id = "c1"
number = "+8613800000001"
username = "c1"
password = "card-secret-1"

[[cards]]
id = "c2"
number = "+8613800000002"
username = "c2"
password = "card-secret-2"

[gateway]
guarded = false

[[agents]]
name = "alice"
password = "alice-pw"
card = "c1"

[[agents]]
name = "bob"
password = "bob-pw"
card = "c2"

[leads.generate]
count = 5
prefix = "+86139"
consent_share = 1.0

[pacing]
calls_per_minute_per_agent = 6.0
think_seconds = 1.0
"""


async def test_silent_destinations_end_with_408_and_repeat_their_report() -> None:
    """Silent destinations over SIP on the event clock: the carrier sends nothing, the agent
    gets the gateway's 408 after its Timer B, at the INVITE's business instant, and the same
    seed gives the same report twice."""
    scenario = loads_scenario(SILENT_AND_REFUSED, "silent.toml")
    first, carrier = await _run(scenario)
    second, _ = await _run(scenario)
    assert first.report().to_json() == second.report().to_json()
    assert first.calls == second.calls
    silent = {e.callee for e in carrier.invites if e.outcome == "silent"}
    assert silent, "the seed gave no silent destination"
    for e in carrier.invites:
        if e.outcome == "silent":
            assert (0, None) == (e.decided, e.final)
    for _source, r in first.results:
        if r.callee in silent and r.reason_text != "no-card-available":
            # (A card resting after no response makes the gateway answer a later attempt
            # 503 no-card-available: that one never reached the carrier.)
            assert 408 == r.status
            assert 180 not in r.provisional
    assert 0 == first.leads_left
