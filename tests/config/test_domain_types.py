"""Types the configuration shares with the domain: one definition each, one conversion each.

``ConsentMode`` and ``SuspendReason`` are the policies' enums (the configuration
validates into them); ``[quota_profiles.*]`` and ``[[carriers.rules]]`` are input
models converted to the runtime values in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import config
from gateway.cards import quota_profiles_from_settings, rules_from_settings
from gateway.cards.classify import CarrierRule
from gateway.cards.classify import SuspendReason as ClassifiedReason
from gateway.config import ConfigError, QuotaProfileSettings, Settings, load_settings
from policies import consent, quotas

from .conftest import BASE_TOML


def test_enums_are_defined_once_in_the_domain() -> None:
    assert config.ConsentMode is consent.ConsentMode
    assert config.SuspendReason is quotas.SuspendReason
    assert ClassifiedReason is quotas.SuspendReason
    assert not hasattr(config, "CardReason")


def test_toml_values_validate_into_the_domain_enums(
    write_toml: Callable[[str], Path],
) -> None:
    settings = load_settings(write_toml(BASE_TOML))
    assert settings.policy.consent is consent.ConsentMode.DNC_ONLY
    [rule] = settings.carriers[0].rules
    assert rule.reason is quotas.SuspendReason.VIOLATION


@pytest.mark.parametrize(
    ("old", "new", "key", "values"),
    [
        ('consent = "dnc-only"', 'consent = "maybe"', "policy.consent", "'dnc-only' or"),
        ('reason = "violation"', 'reason = "angry"', "carriers[0].rules[0].reason", "'arrears'"),
    ],
)
def test_a_bad_enum_value_names_its_key(
    write_toml: Callable[[str], Path], old: str, new: str, key: str, values: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write_toml(BASE_TOML.replace(old, new)))
    text = str(err.value)
    assert key in text and values in text


def test_quota_profile_settings_become_the_runtime_profile() -> None:
    """Missing limits stay "no limit"; missing tuning keys keep the policy's defaults."""
    defaults = quotas.QuotaProfile()
    written = QuotaProfileSettings(calls_per_minute=5, min_sample=7, night_window="21:00-08:00")
    profile = written.to_profile("careful")
    assert isinstance(profile, quotas.QuotaProfile)
    assert ("careful", 5, None, None) == (
        profile.name,
        profile.calls_per_minute,
        profile.calls_per_day,
        profile.concurrent,
    )
    assert 7 == profile.rate_min_sample
    assert defaults.short_call_seconds == profile.short_call_seconds
    assert defaults.cooldown_seconds == profile.cooldown_seconds
    assert "21:00-08:00" == profile.night_window
    settings = Settings(quota_profiles={"default": {"concurrent": 2}, "careful": written})
    assert {
        "default": QuotaProfileSettings(concurrent=2).to_profile("default"),
        "careful": profile,
    } == quota_profiles_from_settings(settings)


def test_carrier_rule_settings_become_the_classifiers_rule(
    write_toml: Callable[[str], Path],
) -> None:
    settings = load_settings(write_toml(BASE_TOML))
    [rule] = rules_from_settings(settings)["carrier-a"]
    assert isinstance(rule, CarrierRule)
    assert (403, quotas.SuspendReason.VIOLATION) == (rule.status, rule.reason)
    assert rule.matches(403, "Forbidden", "card suspended")
    assert not rule.matches(403, "Forbidden", None)
