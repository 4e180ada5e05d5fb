"""Tests for the scenario TOML schema: strict validation naming keys, examples, derived models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from simulator.models import EventKind
from simulator.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    loads_scenario,
    parse_duration,
)
from tests.simulator.support import MINIMAL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"


def problems(text: str) -> dict[str, str]:
    """Validate ``text`` expecting failure; return {key path: message}."""
    with pytest.raises(ScenarioError) as info:
        loads_scenario(text, "test.toml")
    return dict(info.value.problems)


def test_minimal_scenario_loads_with_defaults() -> None:
    """A small scenario validates and fills defaults (guarded gateway, default quota profile)."""
    scenario = loads_scenario(MINIMAL)
    assert ("mini", 3, 7200.0) == (scenario.name, scenario.seed, scenario.clock.duration)
    assert scenario.gateway.guarded
    assert "default" == scenario.cards[0].quota
    assert scenario.start_epoch + 7200 == scenario.end_epoch


@pytest.mark.parametrize("name", ["unguarded", "guarded", "suspension-storm", "ambiguous-carrier"])
def test_example_scenarios_load(name: str) -> None:
    """Every shipped example validates."""
    scenario = load_scenario(EXAMPLES / f"{name}.toml")
    assert name == scenario.name
    assert scenario.cards


def test_examples_differ_only_where_intended() -> None:
    """guarded.toml is unguarded.toml's traffic with the gateway's policies switched on."""
    unguarded = load_scenario(EXAMPLES / "unguarded.toml")
    guarded = load_scenario(EXAMPLES / "guarded.toml")
    assert not unguarded.gateway.guarded
    assert guarded.gateway.guarded
    assert "require-consent" == guarded.gateway.consent
    for section in ("seed", "clock", "carrier", "cards", "agents", "leads", "pacing"):
        assert getattr(unguarded, section) == getattr(guarded, section), section
    carrier_limit = guarded.carrier.antifraud.calls_per_hour
    quota = guarded.gateway.quota_profiles["default"].calls_per_hour
    assert carrier_limit is not None and quota is not None and quota < carrier_limit


def test_storm_schedules_every_card() -> None:
    """The storm scenario suspends every card of the pool at some point."""
    storm = load_scenario(EXAMPLES / "suspension-storm.toml")
    assert {c.id for c in storm.cards} == {s.card for s in storm.carrier.scheduled_suspensions}


def test_unknown_key_is_named() -> None:
    """extra = forbid: a typo is reported with its full key path."""
    found = problems(
        MINIMAL.replace(
            'timezone = "Asia/Shanghai"', 'timezone = "Asia/Shanghai"\ncalls_per_hour = 5'
        )
    )
    assert "carrier.calls_per_hour" in found
    assert "Extra inputs are not permitted" == found["carrier.calls_per_hour"]


def test_nested_array_error_names_index() -> None:
    """Errors inside arrays of tables name the index."""
    found = problems(MINIMAL.replace('number = "+8613800000001"', 'number = "12"'))
    assert ["cards[0].number"] == list(found)
    assert "E.164" in found["cards[0].number"]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('duration = "2h"', 'duration = "two hours"', "clock.duration"),
        ("speed = 60", "speed = 0", "clock.speed"),
        ("start = 2026-03-02T09:00:00+08:00", "start = 2026-03-02T09:00:00", "clock.start"),
        ('timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"', "carrier.timezone"),
        ('card = "c1"', 'card = "c9"', "agents[0].card"),
        (
            'password = "pw"\n\n[[agents]]',
            'password = "pw"\nquota = "vip"\n\n[[agents]]',
            "cards[0].quota",
        ),
        ("consent = true", 'consent = "maybe"', "leads.numbers[0].consent"),
    ],
)
def test_errors_name_their_key(old: str, new: str, key: str) -> None:
    """Each bad value is reported under the key that holds it."""
    assert old in MINIMAL
    assert key in problems(MINIMAL.replace(old, new, 1))


def test_answer_probabilities_must_sum_to_one() -> None:
    """The answer table is checked as a whole and named."""
    found = problems(MINIMAL + "\n[carrier.answer]\nanswer = 0.9\n")
    assert "carrier.answer" in found
    assert "must be 1" in found["carrier.answer"]


def test_night_ceiling_needs_night_window() -> None:
    """night_calls_max without a night window is refused under carrier.antifraud."""
    found = problems(MINIMAL + "\n[carrier.antifraud]\nnight_calls_max = 3\n")
    assert "night window" in found["carrier.antifraud"]


def test_scheduled_suspension_must_name_a_card() -> None:
    """Cross references name the offending entry."""
    extra = '\n[[carrier.scheduled_suspensions]]\ncard = "zz"\nat = 2026-03-02T10:00:00+08:00\n'
    found = problems(MINIMAL.replace("[[cards]]", extra + "\n[[cards]]", 1))
    assert "carrier.scheduled_suspensions[0].card" in found


def test_toml_syntax_error_reported() -> None:
    """Broken TOML is a ScenarioError too, not a crash."""
    found = problems("seed = ")
    assert "(toml)" in found


def test_missing_sections_reported() -> None:
    """Required tables are named when missing."""
    found = problems('name = "x"\n')
    assert {"clock", "cards", "leads"} <= set(found)


def test_error_message_lists_problems() -> None:
    """str(ScenarioError) starts with the source and lists each key."""
    with pytest.raises(ScenarioError) as info:
        loads_scenario(MINIMAL.replace("speed = 60", "speed = -1"), "bad.toml")
    text = str(info.value)
    assert text.startswith("bad.toml: invalid scenario")
    assert "clock.speed:" in text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("8h", 28800.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1d", 86400.0),
        (600, 600.0),
        ("2.5m", 150.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """Durations are seconds or d/h/m/s strings."""
    assert seconds == parse_duration(value)


@pytest.mark.parametrize("value", ["", "8x", "h", 0, -5, True, None])
def test_parse_duration_rejects(value: object) -> None:
    """Empty, unknown units, non-positive and non-numeric durations are refused."""
    with pytest.raises(ValueError):
        parse_duration(value)


def test_generated_leads_are_deterministic_and_shaped() -> None:
    """The generator gives count unique numbers with the prefix and length, same for a seed."""
    text = MINIMAL + '\n[leads.generate]\ncount = 500\nprefix = "+86137"\nconsent_share = 0.25\n'
    scenario = loads_scenario(text)
    leads = scenario.expand_leads()
    assert 501 == len(leads)
    assert "+8613912345678" == leads[0].number
    generated = leads[1:]
    assert 500 == len({lead.number for lead in generated})
    assert all(lead.number.startswith("+86137") and len(lead.number) == 14 for lead in generated)
    assert 0.25 == pytest.approx(sum(lead.consent for lead in generated) / 500, abs=0.06)
    assert leads == loads_scenario(text).expand_leads()
    other_seed = loads_scenario(text.replace("seed = 3", "seed = 4")).expand_leads()
    assert leads != other_seed


def test_generator_count_must_fit_prefix() -> None:
    """Asking for more numbers than the prefix leaves room for is refused."""
    text = MINIMAL + '\n[leads.generate]\ncount = 5000\nprefix = "+8613700000"\n'
    found = problems(text)
    assert "leads.generate" in found


def test_build_carrier_uses_scenario_settings() -> None:
    """The carrier model gets the accounts, balances, thresholds and consent set of the scenario."""
    scenario = load_scenario(EXAMPLES / "unguarded.toml")
    leads = scenario.expand_leads()
    carrier = scenario.build_carrier(leads)
    assert ("c1", "c2", "c3", "c4") == carrier.cards
    assert 200.0 == carrier.balance("c1")
    assert 50 == carrier.config.thresholds.calls_per_hour
    assert "card-secret-1" == carrier.account("c1").password
    storm = load_scenario(EXAMPLES / "suspension-storm.toml").build_carrier()
    assert math.isinf(storm.balance("c1"))
    assert 4 == len(storm.config.scheduled_suspensions)


def test_consent_set_drives_complaints() -> None:
    """Only non-consented leads can complain in the built carrier."""
    text = MINIMAL + "\n[carrier.antifraud]\ncomplaint_probability = 1.0\n"
    text = text.replace(
        "consent = true",
        'consent = true\n\n[[leads.numbers]]\nnumber = "+8613900000002"\nconsent = false',
    )
    scenario = loads_scenario(text)
    carrier = scenario.build_carrier()
    t = scenario.start_epoch
    carrier.record_call_end("c1", "+8613912345678", True, 30, t)
    carrier.record_call_end("c1", "+8613900000002", True, 30, t + 1)
    complaints = [e.callee for e in carrier.events if e.kind is EventKind.COMPLAINT]
    assert ["+86139****0002"] == complaints


def test_secrets_are_not_in_repr() -> None:
    """Card and agent passwords are SecretStr and do not leak into repr."""
    scenario = loads_scenario(MINIMAL.replace('password = "pw"', 'password = "hunter2"'))
    assert "hunter2" not in repr(scenario)
    assert isinstance(scenario, Scenario)


def test_build_clock_uses_start_and_speed() -> None:
    """The scenario's clock starts at clock.start and runs clock.speed times real time."""
    scenario = load_scenario(EXAMPLES / "unguarded.toml")
    ticks = iter([100.0, 101.0])
    clock = scenario.build_clock(lambda: next(ticks))
    assert scenario.start_epoch + 600.0 == clock.now()


def test_gateway_config_guarded_keeps_policies() -> None:
    """A guarded scenario hands the gateway its consent mode, hours, quotas, users and cards."""
    config = load_scenario(EXAMPLES / "guarded.toml").gateway_config("udp:127.0.0.1:5070")
    assert {
        "default_region": "CN",
        "consent": "require-consent",
        "calling_hours": "08:00-21:00",
        "mask_numbers": True,
        # [policy.frequency]: the gateway's defaults when the scenario sets none
        "frequency": {
            "attempts": 3,
            "attempts_window": 604800.0,
            "answers": 1,
            "answers_window": 86400.0,
        },
    } == config["policy"]
    assert 40 == config["quota_profiles"]["default"]["calls_per_hour"]
    assert "udp:127.0.0.1:5070" == config["carriers"][0]["address"]
    assert {"name": "alice", "password": "alice-pw", "card": "c1"} == config["users"][0]
    card = config["cards"][0]
    assert ("c1", "carrier-a", "card-secret-1", "default") == (
        card["id"],
        card["carrier"],
        card["password"],
        card["quota"],
    )
    rules = config["carriers"][0]["rules"]
    assert {"status": 402, "reason": "arrears"} in rules


def test_gateway_config_unguarded_turns_policies_off() -> None:
    """guarded = false: dnc-only consent, all-day hours, quota profiles with only concurrency."""
    config = load_scenario(EXAMPLES / "unguarded.toml").gateway_config("udp:127.0.0.1:5070")
    assert "dnc-only" == config["policy"]["consent"]
    assert "00:00-24:00" == config["policy"]["calling_hours"]
    assert {"default": {"concurrent": 1}} == config["quota_profiles"]


def test_gateway_config_lists_dialers_as_peers() -> None:
    """Dialers become trusted peers with their campaign."""
    config = load_scenario(EXAMPLES / "suspension-storm.toml").gateway_config("udp:127.0.0.1:5070")
    assert [
        {
            "name": "dialer-1",
            "addresses": ["127.0.0.1/32"],
            "password": "dialer-secret",
            "campaign": "spring-promo",
        }
    ] == config["peers"]


def test_probation_thresholds_reach_the_carrier() -> None:
    """[carrier.probation] becomes the thresholds of restored cards."""
    carrier = loads_scenario(
        MINIMAL + "\n[carrier.probation]\ncalls_per_hour = 10\n"
    ).build_carrier()
    assert carrier.config.probation is not None
    assert 10 == carrier.config.probation.calls_per_hour
    assert loads_scenario(MINIMAL).build_carrier().config.probation is None


def test_scenario_quota_keys_are_the_gateways() -> None:
    """Every key of a scenario quota profile is a key of the gateway's ``[quota_profiles.NAME]``."""
    from gateway.config import QuotaProfileSettings as GatewayQuotaProfile
    from simulator.scenario import QuotaProfileSection

    assert set(QuotaProfileSection.model_fields) <= set(GatewayQuotaProfile.model_fields)


@pytest.mark.parametrize("name", ["unguarded", "guarded", "suspension-storm", "ambiguous-carrier"])
def test_gateway_config_builds_settings_with_the_scenarios_quotas(
    name: str, tmp_path: Path
) -> None:
    """Each example's gateway_config validates as Settings and its quotas arrive as written."""
    from gateway.cards import quota_profiles_from_settings
    from gateway.config import Settings

    scenario = load_scenario(EXAMPLES / f"{name}.toml")
    config = scenario.gateway_config("udp:127.0.0.1:5070", store_path=str(tmp_path / "gw.db"))
    settings = Settings(**config)
    gw = scenario.gateway
    assert set(gw.quota_profiles) <= set(settings.quota_profiles)
    assert {c.id: c.quota for c in scenario.cards} == {c.id: c.quota for c in settings.cards}
    assert gw.mask_callees == settings.policy.mask_numbers
    policies = quota_profiles_from_settings(settings)
    short = scenario.carrier.antifraud.short_call_seconds
    for profile_name, wanted in gw.quota_profiles.items():
        got = settings.quota_profiles[profile_name]
        policy = policies[profile_name]
        assert wanted.concurrent == got.concurrent == policy.concurrent
        if not gw.guarded:
            # Quotas off: only the SIM's one call at a time is left.
            assert (None, None, None, None) == (
                got.calls_per_minute,
                got.calls_per_hour,
                got.calls_per_day,
                got.night_window,
            )
            continue
        for key, value in wanted.model_dump().items():
            arrived = getattr(got, key)
            if key == "night_window" and arrived is not None:
                arrived = arrived.spec
            if key == "short_call_seconds" and value is None:
                value = short  # the carrier's length when the profile names none
            assert value == arrived, key
        # ... and mean the same to the policies that enforce them.
        assert wanted.calls_per_hour == policy.calls_per_hour
        assert wanted.rate_window_calls == policy.rate_window_calls
        assert wanted.min_sample == policy.rate_min_sample
        assert wanted.short_seconds(short) == policy.short_call_seconds
        assert wanted.night_window == policy.night_window


def test_guarded_example_quotas_reach_the_gateway(tmp_path: Path) -> None:
    """guarded.toml's numbers, spelled out: window, sample, night, answer floor, short calls."""
    from gateway.config import Settings

    scenario = load_scenario(EXAMPLES / "guarded.toml")
    settings = Settings(
        **scenario.gateway_config("udp:127.0.0.1:5070", store_path=str(tmp_path / "gw.db"))
    )
    profile = settings.quota_profiles["default"]
    assert (2, 40, 250, 220) == (
        profile.calls_per_minute,
        profile.calls_per_hour,
        profile.calls_per_day,
        profile.distinct_callees_per_day,
    )
    assert (40, 30) == (profile.rate_window_calls, profile.min_sample)
    assert (0.18, 0.5, 10.0) == (
        profile.answer_rate_floor,
        profile.short_call_ceiling,
        profile.short_call_seconds,
    )
    assert profile.night_window is not None and "21:00-09:00" == profile.night_window.spec
    assert "require-consent" == str(settings.policy.consent)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("rolling_window", "rate_window_calls"),
        ("min_calls", "min_sample"),
        ("night", "night_window"),
    ],
)
def test_old_quota_key_names_say_their_new_name(old: str, new: str) -> None:
    """A scenario written with the earlier key names is refused with the gateway's name."""
    value = '"21:00-09:00"' if old == "night" else "30"
    found = problems(MINIMAL + f"\n[gateway.quota_profiles.default]\n{old} = {value}\n")
    key = f"gateway.quota_profiles.default.{old}"
    assert key in found, found
    assert new in found[key]


def test_probation_profile_must_exist() -> None:
    """quota_profiles.NAME.probation names another profile of the scenario."""
    found = problems(MINIMAL + '\n[gateway.quota_profiles.default]\nprobation = "strict"\n')
    assert "unknown quota profile" in found["gateway.quota_profiles.default.probation"]


def test_ambiguous_carrier_is_guarded_with_an_ambiguous_carrier() -> None:
    """ambiguous-carrier.toml is guarded.toml's traffic and gateway; only the carrier differs."""
    guarded = load_scenario(EXAMPLES / "guarded.toml")
    ambiguous = load_scenario(EXAMPLES / "ambiguous-carrier.toml")
    for section in ("seed", "clock", "cards", "gateway", "agents", "leads", "pacing"):
        assert getattr(guarded, section) == getattr(ambiguous, section), section
    answer = ambiguous.carrier.answer
    assert (0.1, 0.2, 0.05, 0.02) == (
        answer.refuse_403_share,
        answer.ring_then_408_share,
        answer.ring_then_503_share,
        answer.silent_share,
    )
    assert len(ambiguous.cards) >= 2 and ambiguous.gateway.guarded


def test_destination_shares_and_callee_thresholds_reach_the_carrier() -> None:
    """The new [carrier.answer] shares and [carrier.antifraud] callee keys build the model."""
    scenario = loads_scenario(
        MINIMAL
        + """
[carrier.answer]
refuse_403_share = 0.25
silent_share = 0.5
silent_seconds = 20

[carrier.antifraud]
max_calls_per_callee = 3
max_cards_per_callee = 2
callee_window = "30m"
"""
    )
    config = scenario.build_carrier().config
    assert (0.25, 0.0, 0.0, 0.5, 20.0) == (
        config.answer.refuse_403_share,
        config.answer.ring_then_408_share,
        config.answer.ring_then_503_share,
        config.answer.silent_share,
        config.answer.silent_seconds,
    )
    assert (3, 2, 1800.0) == (
        config.thresholds.max_calls_per_callee,
        config.thresholds.max_cards_per_callee,
        config.thresholds.callee_window,
    )
    defaults = loads_scenario(MINIMAL).build_carrier().config
    assert not defaults.answer.has_destination_outcomes
    assert not defaults.thresholds.watches_callees


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[carrier.answer]\nsilent_share = 1.5", "carrier.answer.silent_share"),
        ("[carrier.answer]\nrefuse_403_share = -0.1", "carrier.answer.refuse_403_share"),
        ("[carrier.answer]\nring_then_408_share = 2", "carrier.answer.ring_then_408_share"),
        ("[carrier.answer]\nring_then_503_share = 1.01", "carrier.answer.ring_then_503_share"),
        ("[carrier.answer]\nsilent_seconds = 0", "carrier.answer.silent_seconds"),
        ("[carrier.antifraud]\nmax_calls_per_callee = 0", "carrier.antifraud.max_calls_per_callee"),
        ("[carrier.antifraud]\nmax_cards_per_callee = 0", "carrier.antifraud.max_cards_per_callee"),
        ("[carrier.antifraud]\ncallee_window = 'soon'", "carrier.antifraud.callee_window"),
        ("[carrier.answer]\nsilence_share = 0.1", "carrier.answer.silence_share"),
    ],
)
def test_new_carrier_keys_name_their_key(table: str, key: str) -> None:
    """A bad destination share or per-callee threshold is reported under its own key."""
    assert key in problems(MINIMAL + "\n" + table + "\n")


def test_destination_shares_must_leave_room() -> None:
    """The four destination shares together cannot exceed 1; the message names them."""
    found = problems(
        MINIMAL + "\n[carrier.answer]\nring_then_408_share = 0.7\nsilent_share = 0.4\n"
    )
    assert "carrier.answer" in found
    assert "silent_share must be <= 1" in found["carrier.answer"]
