"""Issue 12: carrier answers judged right — fail over only when the card is proven dead
and the callee was never reached.

SIPp agent alice → ``dialgate run`` (subprocess) → scripted SIPp carrier, two
cards c1, c2 in pool ``main``. What reached the carrier is read from the
carrier's own SIPp trace, one attempt per Call-ID (a retransmission carries the
same Call-ID); card states through ``dialgate cards show --json``. The rules
under test are ../shared/CARRIERS.md "The rule this project follows" and
DESIGN.md call flow step 5:

- only a matching carrier rule or 402 (card-dead) moves the call to c2;
- a plain 403, 404, 500 and 503 are the callee's or ambiguous: relayed (a 503
  as 500, RFC 3261 §16.7), one INVITE per callee, c1 stays active;
- after a 180 the callee was reached: 408/480/503 are relayed, never retried;
- no response at all (Timer B) retries only on a card that does not share the
  trunk; c1 rests, it is not suspended;
- ambiguous refusals to ``suspect_after`` distinct callees make a card
  ``suspect`` (never ``suspended``); with every card suspect the agent gets
  503 ``no-card-available`` and a Warning naming each card's cause;
- an agent bound to a card over quota waits (503 + Retry-After), it is not
  moved to another card of a pool with ``spill = false``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.carrier_answers.conftest import (
    NUMBERS,
    Started,
    attempts,
    attempts_to,
    card,
    card_state,
    final_statuses,
    gateway_toml,
    run_calls,
    start_carrier,
    start_gateway,
)
from tests.policy_sipp.conftest import register_alice

pytestmark = pytest.mark.integration

NO_CARD = 'SIP;cause=503;text="no-card-available"'


def e164(number: str) -> str:
    """A CN mobile number dialled without +86, as the carrier sees it."""
    return "+86" + number


# (answer, 180 first, agent's final, INVITEs to the callee, card c1 after, c1's reason)
ANSWERS = [
    pytest.param("403", False, 403, 1, "active", None, id="403-no-rule"),
    pytest.param("403-suspended", False, 200, 2, "suspended", "violation", id="403-rule"),
    pytest.param("402", False, 200, 2, "suspended", "arrears", id="402"),
    pytest.param("404", False, 404, 1, "active", None, id="404"),
    pytest.param("408", True, 408, 1, "active", None, id="180-408"),
    pytest.param("480", True, 480, 1, "active", None, id="180-480"),
    pytest.param("503", True, 500, 1, "active", None, id="180-503"),
    pytest.param("503", False, 500, 1, "active", None, id="503"),
    pytest.param("500", False, 500, 1, "active", None, id="500"),
]


@pytest.mark.parametrize(("answer", "ring", "final", "invites", "state", "reason"), ANSWERS)
def test_first_answer_decides_failover(
    tmp_path: Path,
    processes: Started,
    answer: str,
    ring: bool,
    final: int,
    invites: int,
    state: str,
    reason: str | None,
) -> None:
    """c1's INVITE gets ``answer`` (c2's would get 200): the agent's answer, the INVITEs, c1's state.

    Only card-dead evidence (a matching rule, 402) sends a second INVITE to the
    same callee, from c2's number; everything else is relayed with exactly one.
    """
    carrier = start_carrier(tmp_path / "carrier", answer=answer, target="c1", ring=ring)
    processes.append(carrier)
    gw = start_gateway(tmp_path, gateway_toml({"carrier-a": carrier.port}))
    processes.append(gw)
    register_alice(gw.addresses["udp"], tmp_path / "register")

    callee = "13920000101"
    result = run_calls(gw.addresses["udp"], tmp_path / "agent", [callee])
    callers = [a.caller for a in attempts_to(carrier, e164(callee))]
    c1 = card(gw.config, "c1")
    observed = (final_statuses(result), callers, c1["state"], c1["reason"])
    print(f"{answer} ring={ring}: agent got, INVITEs from, c1 state, reason: {observed}")

    expected = ([final], [NUMBERS["c1"], NUMBERS["c2"]][:invites], state, reason)
    assert expected == observed
    assert {e164(callee)} == {a.callee for a in attempts(carrier)}


def test_no_response_on_a_shared_trunk_is_not_retried(tmp_path: Path, processes: Started) -> None:
    """The carrier never answers (Timer B = 64 × 0.05 s): 408, one INVITE, c1 rests but stays active.

    c2 sits behind the same carrier address, so it shares the failure: no
    second attempt.
    """
    carrier = start_carrier(tmp_path / "carrier", answer="silent", target="all")
    processes.append(carrier)
    gw = start_gateway(tmp_path, gateway_toml({"carrier-a": carrier.port}), sip_extra="t1 = 0.05\n")
    processes.append(gw)
    register_alice(gw.addresses["udp"], tmp_path / "register")

    callee = "13920000201"
    result = run_calls(gw.addresses["udp"], tmp_path / "agent", [callee], timeout=25)
    seen = attempts_to(carrier, e164(callee))
    print(f"agent got {final_statuses(result)}; INVITEs from {[a.caller for a in seen]}")

    observed = (final_statuses(result), [a.caller for a in seen], card(gw.config, "c1")["state"])
    assert ([408], [NUMBERS["c1"]], "active") == observed


def test_no_response_moves_the_call_to_a_card_on_another_trunk(
    tmp_path: Path, processes: Started
) -> None:
    """carrier-a never answers c1's INVITE; c2 is on carrier-b (answers 200): one INVITE at each.

    The callee was never reached on carrier-a, so the one retry on a card that
    does not share the trunk is allowed; c1 only rests (stays active).
    """
    silent = start_carrier(tmp_path / "carrier-a", answer="silent", target="all")
    processes.append(silent)
    answering = start_carrier(tmp_path / "carrier-b", target="none")
    processes.append(answering)
    gw = start_gateway(
        tmp_path,
        gateway_toml(
            {"carrier-a": silent.port, "carrier-b": answering.port},
            card_carriers=("carrier-a", "carrier-b"),
        ),
        sip_extra="t1 = 0.05\n",
    )
    processes.append(gw)
    register_alice(gw.addresses["udp"], tmp_path / "register")

    callee = "13920000301"
    result = run_calls(gw.addresses["udp"], tmp_path / "agent", [callee], timeout=25)
    at_a = attempts_to(silent, e164(callee))
    at_b = attempts_to(answering, e164(callee))
    print(f"agent got {final_statuses(result)}; carrier-a {at_a}; carrier-b {at_b}")

    observed = (
        final_statuses(result),
        [a.caller for a in at_a],
        [a.caller for a in at_b],
        card(gw.config, "c1")["state"],
    )
    assert ([200], [NUMBERS["c1"]], [NUMBERS["c2"]], "active") == observed


SUSPECT_AFTER = 5
CALLS = 50


def test_plain_403s_to_distinct_callees_make_cards_suspect_never_suspended(
    tmp_path: Path, processes: Started
) -> None:
    """Every INVITE gets a plain 403; 50 calls to 50 callees: each callee INVITEd at most once.

    Calls one at a time: refusals 1-4 leave c1 active, refusal 5 makes it
    suspect; the next 5 calls go out on c2 (which then turns suspect too); the
    other 40 (10 at a time) get 503 no-card-available with a Warning naming
    both cards' cause, and reach no carrier. Neither card is ever suspended.
    """
    carrier = start_carrier(tmp_path / "carrier", answer="403", target="all")
    processes.append(carrier)
    gw = start_gateway(
        tmp_path,
        gateway_toml(
            {"carrier-a": carrier.port},
            carrier_extra=f"suspect_after = {SUSPECT_AFTER}\nsuspect_window = 600",
        ),
    )
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")
    callees = [f"139200004{i:02d}" for i in range(CALLS)]

    first = run_calls(target, tmp_path / "agent_1_4", callees[: SUSPECT_AFTER - 1])
    c1 = card(gw.config, "c1")["state"]
    assert ([403] * (SUSPECT_AFTER - 1), "active") == (final_statuses(first), c1)

    fifth = run_calls(target, tmp_path / "agent_5", callees[SUSPECT_AFTER - 1 : SUSPECT_AFTER])
    c1 = card_state(gw.config, "c1", "suspect")
    assert ([403], "suspect") == (final_statuses(fifth), c1)

    on_c2 = run_calls(target, tmp_path / "agent_6_10", callees[SUSPECT_AFTER : 2 * SUSPECT_AFTER])
    c2 = card_state(gw.config, "c2", "suspect")
    assert ([403] * SUSPECT_AFTER, "suspect") == (final_statuses(on_c2), c2)

    # Every card is suspect now: the order of the remaining calls no longer matters.
    rest = run_calls(target, tmp_path / "agent_rest", callees[2 * SUSPECT_AFTER :], concurrent=10)
    refused = CALLS - 2 * SUSPECT_AFTER
    print(f"agent got {final_statuses(first)} {final_statuses(fifth)} {final_statuses(on_c2)}")
    print(f"then {final_statuses(rest)}")
    assert [503] * refused == final_statuses(rest)
    refusals = [m for m in rest.finals() if m.status == 503]
    assert [NO_CARD] * refused == [m.header("Reason") for m in refusals]
    warnings = {" | ".join(m.headers.get("warning", [])) for m in refusals}
    print(f"503 Warning: {warnings}")
    for warning in warnings:
        assert warning.startswith('399 dialgate "'), warning
        assert "c1" in warning and "c2" in warning and "suspect" in warning, warning

    seen = attempts(carrier)
    per_callee = Counter(a.callee for a in seen)
    assert {e164(n): 1 for n in callees[: 2 * SUSPECT_AFTER]} == dict(per_callee)
    assert [NUMBERS["c1"]] * SUSPECT_AFTER + [NUMBERS["c2"]] * SUSPECT_AFTER == [
        a.caller for a in seen
    ]
    for card_id in ("c1", "c2"):
        shown = card(gw.config, card_id)
        went = [t["to"] for t in shown["timeline"] if t.get("kind") == "transition"]
        print(f"{card_id}: {shown['state']}, transitions to {went}")
        assert ("suspect", False) == (shown["state"], "suspended" in went)


def test_bound_agent_over_quota_waits_instead_of_moving_to_another_card(
    tmp_path: Path, processes: Started
) -> None:
    """alice is bound to c1 (1 call a minute), pool ``main`` does not spill: call 2 gets 503.

    The first call leaves on c1; the second, within the minute, is answered
    503 no-card-available with a Retry-After (0 < s ≤ 60) and a Warning naming
    c1; the carrier never sees c2's number.
    """
    carrier = start_carrier(tmp_path / "carrier", target="none")
    processes.append(carrier)
    gw = start_gateway(
        tmp_path,
        gateway_toml(
            {"carrier-a": carrier.port},
            profiles={"one": {"calls_per_minute": 1}, "q": {"calls_per_minute": 100000}},
            card_profiles=("one", "q"),
            bound_card="c1",
            extra="\n[pools.main]\nspill = false\n",
        ),
    )
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")
    callees = ["13920000501", "13920000502"]

    result = run_calls(target, tmp_path / "agent", callees)
    finals = result.finals()
    print(f"agent got {final_statuses(result)}; INVITEs {attempts(carrier)}")
    assert [200, 503] == final_statuses(result)
    refused = next(m for m in finals if m.status == 503)
    assert NO_CARD == refused.header("Reason")
    retry = int(refused.header("Retry-After") or "-1")
    assert 0 < retry <= 60, retry
    warnings = " | ".join(refused.headers.get("warning", []))
    print(f"503 Retry-After {retry}, Warning: {warnings}")
    assert "c1" in warnings, warnings
    assert [(e164(callees[0]), NUMBERS["c1"])] == [(a.callee, a.caller) for a in attempts(carrier)]
