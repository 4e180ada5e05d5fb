"""Golden tests of ``dialgate check-config``'s warnings and refusals (issue 13 item 3).

Warnings (stderr, exit 0; ``--strict``: exit 2): all-day calling hours, quota profiles in
use with no calls_per_hour / calls_per_day, weak agent and dialer passwords. Refusals
(exit 2): no consent mode, an emergency entry that is not an official emergency number of
its region (phonenumbers' short-number metadata) unless under ``[[policy.extra_emergency]]``
with a reason, an allowed region that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Settings, config_warnings, load_settings

from .conftest import BASE_TOML
from .test_cli import dialgate

# BASE_TOML with hour/day limits on its profile: no warning at all.
# (alice's "alice-pw-123" contains her name: a weak password.)
CLEAN = BASE_TOML.replace(
    "calls_per_minute = 5\n", "calls_per_minute = 5\ncalls_per_hour = 60\ncalls_per_day = 300\n"
).replace('password = "alice-pw-123"', 'password = "pw-7731-kq"')


def _check(path: Path, *flags: str) -> tuple[int, list[str], list[str]]:
    result = dialgate("check-config", *flags, str(path))
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


def test_clean_config_has_no_warning(write_toml: Callable[[str], Path]) -> None:
    """The baseline: exit 0, one OK line, nothing on stderr, also with --strict."""
    path = write_toml(CLEAN)
    code, out, err = _check(path)
    assert (0, []) == (code, err)
    assert out[0].startswith(f"{path}: OK")
    assert (0, []) == _check(path, "--strict")[::2]


@pytest.mark.parametrize(
    ("edit", "golden"),
    [
        (
            ('calling_hours = "08:00-21:00"', 'calling_hours = "00:00-24:00"'),
            'warning: policy.calling_hours: "00:00-24:00" allows calls at any hour of the'
            " callee's day (night calls draw complaints and carrier suspensions)",
        ),
        (
            ("calls_per_hour = 60\ncalls_per_day = 300\n", "concurrent = 1\n"),
            "warning: quota_profiles.default: no calls_per_hour or calls_per_day limit"
            " (cards c1, c2 are limited only by calls_per_minute, concurrent)",
        ),
        (
            ('password = "pw-7731-kq"', 'password = "s3cret"'),
            "warning: users[0].password: weak password for 'alice': is a common password",
        ),
        (
            ('password = "pw-7731-kq"', 'password = "x7!q2"'),
            "warning: users[0].password: weak password for 'alice': is shorter than 8 characters",
        ),
        (
            ('password = "pw-7731-kq"', 'password = "alice2026!"'),
            "warning: users[0].password: weak password for 'alice': contains the user name",
        ),
        (
            ('password = "dialer-pw-456"', 'password = "aaaaaaaaaaaa"'),
            "warning: peers[0].password: weak password for 'dialer-1':"
            " repeats one or two characters",
        ),
    ],
)
def test_each_warning_golden(
    write_toml: Callable[[str], Path], edit: tuple[str, str], golden: str
) -> None:
    """One risky setting → exactly its warning on stderr, exit 0; --strict → exit 2."""
    assert edit[0] in CLEAN
    path = write_toml(CLEAN.replace(edit[0], edit[1]))
    code, out, err = _check(path)
    assert (0, [f"{path}: {golden}"]) == (code, err)
    assert out[0].startswith(f"{path}: OK")
    code, out, err = _check(path, "--strict")
    assert 2 == code
    assert [] == out
    assert [
        f"{path}: {golden.replace('warning: ', 'error: ', 1)}",
        f"{path}: 1 warning(s), refused by --strict",
    ] == err


@pytest.mark.parametrize(
    ("policy", "tables", "golden"),
    [
        (
            "",  # the consent line removed
            "",
            'policy.consent: required key is missing: set "dnc-only" (refuse only numbers on'
            ' a DNC list) or "require-consent" (a consent record for every call);'
            " there is no default",
        ),
        (
            'consent = "dnc-only"',
            '[policy.emergency_numbers]\nCN = ["110", "10086"]',
            "policy.emergency_numbers: 10086 is not an official emergency number of CN"
            " (phonenumbers' short-number metadata); list it under"
            " [[policy.extra_emergency]] with region, number and reason",
        ),
        (
            'consent = "dnc-only"',
            '[policy.emergency_numbers]\nCN = ["95588"]',
            "policy.emergency_numbers: 95588 is not an official emergency number of CN"
            " (phonenumbers' short-number metadata); list it under"
            " [[policy.extra_emergency]] with region, number and reason",
        ),
        (
            'consent = "dnc-only"',
            '[[policy.extra_emergency]]\nregion = "CN"\nnumber = "12395"',
            "policy.extra_emergency[0].reason: required key is missing",
        ),
        (
            'consent = "dnc-only"\nallowed_regions = ["CN", "XX"]',
            "",
            "policy.allowed_regions: unknown region 'XX' (ISO 3166 code such as 'CN', 'US')",
        ),
    ],
)
def test_each_refusal_golden(
    write_toml: Callable[[str], Path], policy: str, tables: str, golden: str
) -> None:
    """A refused setting: exit 2, its key and why on stderr, nothing on stdout."""
    text = CLEAN.replace('consent = "dnc-only"', policy) + "\n" + tables + "\n"
    path = write_toml(text)
    code, out, err = _check(path)
    assert (2, []) == (code, out)
    assert [f"{path}: {golden}", f"{path}: 1 error(s)"] == err


def test_extra_emergency_with_reason_is_accepted(write_toml: Callable[[str], Path]) -> None:
    """A non-official number with a reason is accepted and dialled as an emergency number."""
    text = (
        CLEAN + '\n[policy.emergency_numbers]\nCN = ["110", "119", "120"]\n'
        '[[policy.extra_emergency]]\nregion = "CN"\nnumber = "12395"\n'
        'reason = "maritime search and rescue for the harbour site"\n'
    )
    settings = load_settings(write_toml(text))
    from gateway.policy_config import emergency_numbers

    numbers = emergency_numbers(settings.policy)
    assert "CN" == numbers.region_of("12395")
    assert "CN" == numbers.region_of("110")
    assert numbers.region_of("10086") is None
    assert [] == config_warnings(settings)


def test_warnings_in_code() -> None:
    """config_warnings on a Settings built in code: all-day hours and an unlimited profile."""
    settings = Settings(
        policy={"consent": "dnc-only", "calling_hours": "00:00-24:00"},
        carriers=[{"name": "k", "address": "udp:127.0.0.1:5070"}],
        quota_profiles={"q": {"concurrent": 1}},
        cards=[{"id": "c1", "carrier": "k", "number": "+8613800000001", "quota": "q"}],
    )
    assert [
        'policy.calling_hours: "00:00-24:00" allows calls at any hour of the callee\'s day'
        " (night calls draw complaints and carrier suspensions)",
        "quota_profiles.q: no calls_per_hour or calls_per_day limit"
        " (cards c1 are limited only by concurrent)",
    ] == config_warnings(settings)
