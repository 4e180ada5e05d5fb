"""gateway.config: loading, validation with key paths, env overrides, secret hygiene."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from gateway.cards import rules_from_settings
from gateway.config import (
    CONSENT_MISSING,
    ConfigError,
    Endpoint,
    ServiceUrl,
    Settings,
    Transport,
    explain_errors,
    find_default_config,
    format_loc,
    load_settings,
)
from policies.consent import ConsentMode
from policies.quotas import SuspendReason

from .conftest import BASE_TOML, EXAMPLES

SECRETS = ("alice-pw-123", "dialer-pw-456", "card-pw-789", "card-pw-000")


def test_defaults_need_only_the_consent_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """No file: refused until the consent mode is chosen (issue 13: no silent fallback),
    then valid and runnable on the embedded defaults."""
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert [CONSENT_MISSING] == info.value.messages
    assert info.value.messages[0].startswith("policy.consent: required key is missing")
    monkeypatch.setenv("DIALGATE_POLICY__CONSENT", "dnc-only")
    settings = load_settings(None)
    assert [
        Endpoint(Transport.UDP, "127.0.0.1", 5060),
        Endpoint(Transport.TCP, "127.0.0.1", 5060),
    ] == settings.sip.listen
    assert settings.mqtt is None
    assert "default" in settings.quota_profiles
    assert ConsentMode.DNC_ONLY == settings.policy.consent
    assert settings.policy.mask_numbers is True


@pytest.mark.parametrize("name", ["dialgate.toml", "minimal.toml"])
def test_example_files_load(name: str) -> None:
    """Both shipped example files validate."""
    settings = load_settings(EXAMPLES / name)
    assert settings.cards, "examples define at least one card"
    assert settings.carrier(settings.cards[0].carrier).name == settings.cards[0].carrier


def test_full_example_contents() -> None:
    """The full example has what the assignment lists: c1, c2 in pool main, alice, bob, a dialer."""
    settings = load_settings(EXAMPLES / "dialgate.toml")
    assert ["c1", "c2"] == [c.id for c in settings.pools()["main"]]
    assert ["alice", "bob"] == [u.name for u in settings.users]
    assert ["dialer-1"] == [p.name for p in settings.peers]
    assert {"default", "probation"} == set(settings.quota_profiles)
    assert "probation" == settings.quota_profiles["default"].probation
    assert Endpoint(Transport.UDP, "127.0.0.1", 5070) == settings.carriers[0].address
    assert settings.mqtt is not None
    assert 1883 == settings.mqtt.port
    assert SuspendReason.ARREARS == settings.carriers[0].rules[0].reason


def test_base_config_parses_values(write_toml: Callable[[str], Path]) -> None:
    """Mini-formats become values: listen specs, windows, compiled rules, E.164."""
    settings = load_settings(write_toml(BASE_TOML))
    assert ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"] == [str(s) for s in settings.sip.listen]
    rule = rules_from_settings(settings)[settings.carriers[0].name][0]
    assert rule.matches(403, "Card SUSPENDED", None)
    assert not rule.matches(403, "Forbidden", None)
    assert "Asia/Shanghai" == settings.carriers[0].tz.key
    assert "c1" == settings.user("alice").card
    assert "c1" == settings.card("c1").auth_username


def _edit(old: str, new: str) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert old in text, f"test bug: {old!r} not in base config"
        return text.replace(old, new, 1)

    return apply


def _append(extra: str) -> Callable[[str], str]:
    return lambda text: text + "\n" + extra


ERROR_CASES: list[tuple[str, Callable[[str], str], str, str]] = [
    (
        "bad transport",
        _edit('"udp:127.0.0.1:0", ', '"sctp:127.0.0.1:0", '),
        "sip.listen[0]",
        "unknown transport 'sctp'",
    ),
    (
        "listen without port",
        _edit('"tcp:127.0.0.1:0"', '"tcp:127.0.0.1"'),
        "sip.listen[1]",
        "expected 'transport:host:port'",
    ),
    (
        "listen port out of range",
        _edit('"tcp:127.0.0.1:0"', '"tcp:127.0.0.1:65536"'),
        "sip.listen[1]",
        "port 65536 out of range",
    ),
    (
        "unbracketed IPv6",
        _edit('"tcp:127.0.0.1:0"', '"tcp:::1:5060"'),
        "sip.listen[1]",
        "IPv6 address must be in brackets",
    ),
    (
        "unknown key typo",
        _edit("listen = [", "lisen = []\nlisten = ["),
        "sip.lisen",
        "unknown key (did you mean 'listen'?)",
    ),
    (
        "unknown key in a quota profile",
        _edit("calls_per_minute = 5", "calls_per_minte = 5"),
        "quota_profiles.default.calls_per_minte",
        "did you mean 'calls_per_minute'?",
    ),
    (
        "unknown top-level section",
        _append("[polcy]\nconsent = 'dnc-only'\n"),
        "polcy",
        "did you mean 'policy'?",
    ),
    (
        "bad regex",
        _edit('match = "(?i)suspend"', 'match = "(suspend"'),
        "carriers[0].rules[0].match",
        "invalid regular expression",
    ),
    (
        "rule status out of range",
        _edit("status = 403", "status = 99"),
        "carriers[0].rules[0].status",
        "greater than or equal to 100",
    ),
    (
        "unknown rule reason",
        _edit('reason = "violation"', 'reason = "fraud"'),
        "carriers[0].rules[0].reason",
        "abnormal-use",
    ),
    (
        "unknown carrier reference",
        _edit('id = "c2"\ncarrier = "carrier-a"', 'id = "c2"\ncarrier = "x"'),
        "cards[1].carrier",
        "unknown carrier 'x'",
    ),
    (
        "unknown quota profile reference",
        _append(
            '[[cards]]\nid = "c3"\ncarrier = "carrier-a"\nnumber = "+8613800000003"\nquota = "fast"\n'
        ),
        "cards[2].quota",
        "unknown quota profile 'fast'",
    ),
    (
        "user bound to unknown card",
        _edit('card = "c1"', 'card = "c9"'),
        "users[0].card",
        "unknown card 'c9'",
    ),
    (
        "unknown fallback user",
        _edit('fallback_user = "alice"', 'fallback_user = "alicia"'),
        "inbound.fallback_user",
        "unknown user 'alicia' (did you mean 'alice'?)",
    ),
    (
        "unknown probation profile",
        _edit("calls_per_minute = 5", 'calls_per_minute = 5\nprobation = "slow"'),
        "quota_profiles.default.probation",
        "unknown quota profile 'slow'",
    ),
    (
        "duplicate card id",
        _edit('id = "c2"', 'id = "c1"'),
        "cards[1].id",
        "duplicate id 'c1'",
    ),
    (
        "bad timezone",
        _edit('timezone = "Asia/Shanghai"', 'timezone = "Asia/Atlantis"'),
        "carriers[0].timezone",
        "unknown timezone 'Asia/Atlantis'",
    ),
    (
        "carrier port zero",
        _edit('address = "udp:127.0.0.1:5070"', 'address = "udp:127.0.0.1:0"'),
        "carriers[0].address",
        "port 0 out of range 1-65535",
    ),
    (
        "bad E.164 number",
        _edit('number = "+8613800000002"', 'number = "+86123"'),
        "cards[1].number",
        "not a valid E.164 number",
    ),
    (
        "number without plus",
        _edit('number = "+8613800000002"', 'number = "13800000002"'),
        "cards[1].number",
        "E.164 form",
    ),
    (
        "both password and ha1",
        _edit(
            'password = "alice-pw-123"', 'password = "alice-pw-123"\nha1_md5 = "' + "a" * 32 + '"'
        ),
        "users[0]",
        "exactly one of password, ha1_md5, ha1_sha256 is required (got password, ha1_md5)",
    ),
    (
        "no credentials at all",
        _edit('password = "alice-pw-123"\n', ""),
        "users[0]",
        "(got none)",
    ),
    (
        "ha1 of the wrong size",
        _edit('password = "dialer-pw-456"', 'ha1_sha256 = "abc"'),
        "peers[0].ha1_sha256",
        "64 hex digits",
    ),
    (
        "bad peer network",
        _edit('addresses = ["127.0.0.1/32"]', 'addresses = ["127.0.0.300/32"]'),
        "peers[0].addresses[0]",
        "IPv4 or IPv6 network",
    ),
    (
        "calling hours 25:00",
        _edit('calling_hours = "08:00-21:00"', 'calling_hours = "25:00-08:00"'),
        "policy.calling_hours",
        "invalid time '25:00'",
    ),
    (
        "calling hours overlap",
        _edit('calling_hours = "08:00-21:00"', 'calling_hours = "08:00-12:00,11:00-13:00"'),
        "policy.calling_hours",
        "windows overlap",
    ),
    (
        "mqtt url scheme",
        _append('[mqtt]\nurl = "http://127.0.0.1:1883"\n'),
        "mqtt.url",
        "URL scheme must be one of mqtt, mqtts, ws, wss",
    ),
    (
        "unknown region",
        _edit('default_region = "CN"', 'default_region = "XX"'),
        "policy.default_region",
        "unknown region 'XX'",
    ),
    (
        "admin off loopback without token",
        _append('[admin]\nlisten = "0.0.0.0:8080"\n'),
        "admin",
        "a token is required",
    ),
    (
        "t2 below t1",
        _edit("[sip]\n", "[sip]\nt1 = 2.0\nt2 = 1.0\n"),
        "sip",
        "t2 must not be smaller than t1",
    ),
]


@pytest.mark.parametrize(
    ("edit", "path", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_names_its_key_path(
    write_toml: Callable[[str], Path],
    edit: Callable[[str], str],
    path: str,
    fragment: str,
) -> None:
    """Each kind of mistake produces a line starting with its key path."""
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(edit(BASE_TOML)))
    lines = info.value.messages
    matching = [line for line in lines if line.startswith(f"{path}: ")]
    assert matching, f"no line for {path!r} in {lines}"
    assert any(fragment in line for line in matching), lines


@pytest.mark.parametrize(
    ("edit", "path", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_never_echo_secrets(
    write_toml: Callable[[str], Path],
    edit: Callable[[str], str],
    path: str,
    fragment: str,
) -> None:
    """No error message or exception text contains a configured password."""
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(edit(BASE_TOML)))
    text = "\n".join(info.value.messages) + str(info.value) + repr(info.value.__cause__)
    for secret in SECRETS:
        assert secret not in text


def test_wrongly_typed_secret_is_not_echoed(write_toml: Callable[[str], Path]) -> None:
    """A password of the wrong type is reported without its value, even in the raw error."""
    text = BASE_TOML.replace('password = "card-pw-000"', "password = 987654321")
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(text))
    assert ["cards[1].password: Input should be a valid string"] == info.value.messages
    assert "987654321" not in str(info.value.__cause__)


def test_several_reference_errors_each_get_a_line(write_toml: Callable[[str], Path]) -> None:
    """Cross-reference problems are reported one per line, not merged."""
    text = BASE_TOML.replace('card = "c1"', 'card = "zz"').replace(
        'fallback_user = "alice"', 'fallback_user = "nobody"'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(text))
    assert [
        "users[0].card: unknown card 'zz' (known: c1, c2)",
        "inbound.fallback_user: unknown user 'nobody' (known: alice)",
    ] == info.value.messages


def test_toml_syntax_error_has_line_and_column(write_toml: Callable[[str], Path]) -> None:
    """A TOML syntax error is a ConfigError that says where it is."""
    path = write_toml('[sip]\nlisten = ["udp:127.0.0.1:0"\nadvertise = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert 1 == len(info.value.messages)
    assert "TOML syntax error" in info.value.messages[0]
    assert "line 3" in info.value.messages[0]
    assert path == info.value.source


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """An explicitly named file that does not exist is an error, not silent defaults."""
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "absent.toml")
    assert ["cannot read config file: No such file or directory"] == info.value.messages


def test_explain_errors_formats_direct_validation_errors() -> None:
    """explain_errors works on a ValidationError from Settings(...) itself."""
    with pytest.raises(ValidationError) as info:
        Settings(sip={"listen": ["udp:127.0.0.1:0", "sctp:127.0.0.1:5061"]})  # type: ignore[arg-type]
    assert [
        "sip.listen[1]: unknown transport 'sctp' (expected one of: udp, tcp, tls)"
    ] == explain_errors(info.value)


def test_format_loc() -> None:
    """Locations render as dotted keys with [index] for list positions."""
    assert "cards[1].carrier" == format_loc(("cards", 1, "carrier"))
    assert "quota_profiles.default.night_window" == format_loc(
        ("quota_profiles", "default", "night_window")
    )
    assert "" == format_loc(())


def test_env_overrides_file_with_nesting(
    write_toml: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIALGATE_SECTION__KEY overrides the file; untouched keys keep file values."""
    monkeypatch.setenv("DIALGATE_POLICY__CALLING_HOURS", "09:00-20:00")
    monkeypatch.setenv("DIALGATE_SIP__LISTEN", '["udp:127.0.0.1:15060"]')
    monkeypatch.setenv("DIALGATE_LOGGING__LEVEL", "DEBUG")
    settings = load_settings(write_toml(BASE_TOML))
    assert "09:00-20:00" == str(settings.policy.calling_hours)
    assert "CN" == settings.policy.default_region
    assert ["udp:127.0.0.1:15060"] == [str(s) for s in settings.sip.listen]
    assert "debug" == settings.logging.level
    assert ["c1", "c2"] == [c.id for c in settings.cards]


def test_env_secret_for_mqtt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker password can come from the environment and stays secret."""
    monkeypatch.setenv("DIALGATE_MQTT__URL", "mqtts://gw@broker.example:8883")
    monkeypatch.setenv("DIALGATE_MQTT__PASSWORD", "broker-pw-321")
    monkeypatch.setenv("DIALGATE_POLICY__CONSENT", "dnc-only")
    settings = load_settings(None)
    assert settings.mqtt is not None
    assert ("gw", SecretStr("broker-pw-321")) == settings.mqtt.credentials()
    assert settings.mqtt.use_tls
    assert "broker-pw-321" not in repr(settings) + str(settings) + settings.model_dump_json()


def test_env_error_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad environment value is reported with the same key path as in the file."""
    monkeypatch.setenv("DIALGATE_POLICY__CONSENT", "always")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert 1 == len(info.value.messages)
    assert info.value.messages[0].startswith("policy.consent: ")


def test_secrets_absent_from_repr_str_and_dumps(write_toml: Callable[[str], Path]) -> None:
    """repr, str and JSON dumps of the settings never contain a secret."""
    text = (
        BASE_TOML
        + '\n[mqtt]\nurl = "mqtt://gw:mqtt-pw-654@127.0.0.1:1883"\n[admin]\ntoken = "admin-tok-987"\n'
    )
    settings = load_settings(write_toml(text))
    rendered = "\n".join(
        [
            repr(settings),
            str(settings),
            settings.model_dump_json(),
            str(settings.model_dump()),
            repr(settings.mqtt),
        ]
    )
    for secret in (*SECRETS, "mqtt-pw-654", "admin-tok-987"):
        assert secret not in rendered
    assert settings.mqtt is not None
    assert "mqtt-pw-654" == settings.mqtt.credentials()[1].get_secret_value()  # type: ignore[union-attr]
    assert "mqtt://gw:***@127.0.0.1:1883" == str(settings.mqtt.url)


def test_service_url_parsing() -> None:
    """Service URLs keep the password secret and IPv6 hosts in brackets."""
    url = ServiceUrl.parse("redis://:p%40ss@[::1]:6379/0", schemes=("redis",))
    assert "[::1]" == url.host
    assert "::1" == url.ip
    assert 6379 == url.port
    assert "p@ss" == url.password.get_secret_value()  # type: ignore[union-attr]
    assert "redis://:***@[::1]:6379/0" == str(url)
    with pytest.raises(ValueError, match="scheme"):
        ServiceUrl.parse("http://x", schemes=("redis",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:5060", Endpoint(Transport.UDP, "127.0.0.1", 5060)),
        ("TCP:[::1]:5061", Endpoint(Transport.TCP, "[::1]", 5061)),
        ("tcp:[2001:db8:0:0::1]:0", Endpoint(Transport.TCP, "[2001:db8::1]", 0)),
        ("udp:Carrier.Example.com:5070", Endpoint(Transport.UDP, "carrier.example.com", 5070)),
    ],
)
def test_listen_spec_parse(text: str, expected: Endpoint) -> None:
    """Listen specs parse transport, host (IPv6 in brackets) and port."""
    assert expected == Endpoint.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "udp:127.0.0.1",
        "udp::5060",
        "udp:[::1:5060",
        "udp:[zz::1]:5060",
        "udp:1.2.3.4:-1",
        "127.0.0.1:5060",
    ],
)
def test_listen_spec_rejects(text: str) -> None:
    """Malformed listen specs raise ValueError."""
    with pytest.raises(ValueError):
        Endpoint.parse(text)


def test_endpoint_ip_strips_brackets() -> None:
    """Endpoint.ip is what socket.bind wants; host_port is what Via wants."""
    spec = Endpoint.parse("udp:[::1]:5070")
    assert "::1" == spec.ip
    assert "[::1]:5070" == spec.host_port
    assert "udp:[::1]:5070" == str(spec)


def test_find_default_config(tmp_path: Path) -> None:
    """./dialgate.toml is used only when it exists."""
    assert find_default_config(tmp_path) is None
    (tmp_path / "dialgate.toml").write_text("", encoding="utf-8")
    assert tmp_path / "dialgate.toml" == find_default_config(tmp_path)


def test_settings_are_frozen() -> None:
    """Loaded settings cannot be changed by accident at run time."""
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.sip.t1 = 1.0


def test_missing_default_profile_gets_builtin_limits(write_toml: Callable[[str], Path]) -> None:
    """Cards may say quota = "default" even when the file defines no such profile."""
    text = BASE_TOML.replace("[quota_profiles.default]\ncalls_per_minute = 5\n", "")
    settings = load_settings(write_toml(text))
    assert 1 == settings.quota_profiles["default"].concurrent
