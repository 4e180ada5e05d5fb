"""TLS settings: `tls:` listeners need a usable certificate and key, tls carriers a usable CA.

Each error names its key (``sip.tls_cert``, ``sip.tls_key``, ``carriers[0].tls_ca``…)
and never shows file contents or the key password. Certificates are made in
``tmp_path`` with the openssl CLI.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings, config_warnings, load_settings
from tests.tls_certs import Cert, make_ca, make_cert

POLICY = '[policy]\nconsent = "dnc-only"\n'
CARRIER = {
    "name": "carrier-a",
    "address": "tls:127.0.0.1:5071",
    "timezone": "UTC",
}


@pytest.fixture
def cert(tmp_path: Path) -> Cert:
    """A server certificate signed by a fresh test CA."""
    return make_cert(tmp_path, make_ca(tmp_path), "gw")


def _problems(tmp_path: Path, sip: str, carriers: str = "") -> list[str]:
    path = tmp_path / "dialgate.toml"
    path.write_text(f"[sip]\n{sip}\n{POLICY}{carriers}")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.messages


def test_valid_tls_listener_and_carrier(cert: Cert, tmp_path: Path) -> None:
    """A tls listener with a matching cert/key and a tls carrier with a CA file load."""
    data: dict[str, Any] = {
        "sip": {
            "listen": ["udp:127.0.0.1:0", "tls:127.0.0.1:0"],
            "tls_cert": str(cert.cert),
            "tls_key": str(cert.key),
        },
        "carriers": [{**CARRIER, "tls_ca": str(tmp_path / "ca.pem"), "tls_server_name": "gw.test"}],
    }
    settings = Settings(**data)
    assert "tls" == settings.sip.listen[1].transport.value
    assert "tls" == settings.carriers[0].address.transport.value
    assert "gw.test" == settings.carriers[0].tls_server_name


def test_tls_listener_without_certificate_names_both_keys(tmp_path: Path) -> None:
    """A tls listener with no tls_cert/tls_key: one line per missing key."""
    problems = _problems(tmp_path, 'listen = ["tls:127.0.0.1:5061"]')
    assert [
        "sip.tls_cert: required by the tls listener sip.listen[0]",
        "sip.tls_key: required by the tls listener sip.listen[0]",
    ] == problems


def test_missing_certificate_file_names_the_key(tmp_path: Path, cert: Cert) -> None:
    """A tls_cert path that does not exist is reported under sip.tls_cert with the path."""
    missing = tmp_path / "nope.pem"
    problems = _problems(
        tmp_path,
        f'listen = ["tls:127.0.0.1:5061"]\ntls_cert = "{missing}"\ntls_key = "{cert.key}"',
    )
    assert [f"sip.tls_cert: no such file: {missing}"] == problems


def test_missing_key_file_names_the_key(tmp_path: Path, cert: Cert) -> None:
    """A tls_key path that does not exist is reported under sip.tls_key."""
    missing = tmp_path / "nope.key"
    problems = _problems(
        tmp_path,
        f'listen = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert.cert}"\ntls_key = "{missing}"',
    )
    assert [f"sip.tls_key: no such file: {missing}"] == problems


def test_key_that_does_not_match_the_certificate(tmp_path: Path, cert: Cert) -> None:
    """Another certificate's key: sip.tls_key 'does not match', and no key material shown."""
    other = make_cert(tmp_path, make_ca(tmp_path, "ca2"), "other")
    problems = _problems(
        tmp_path,
        f'listen = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert.cert}"\ntls_key = "{other.key}"',
    )
    assert [f"sip.tls_key: the key does not match the certificate {cert.cert}"] == problems
    assert "PRIVATE KEY" not in " ".join(problems)


def test_certificate_file_that_is_not_a_certificate(tmp_path: Path, cert: Cert) -> None:
    """A tls_cert pointing at the key (a common slip) is reported under sip.tls_cert."""
    problems = _problems(
        tmp_path,
        f'listen = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert.key}"\ntls_key = "{cert.key}"',
    )
    assert [f"sip.tls_cert: {cert.key} holds no PEM certificate"] == problems
    assert "BEGIN" not in " ".join(problems)


def test_encrypted_key_needs_its_password_which_is_never_shown(tmp_path: Path, cert: Cert) -> None:
    """An encrypted key without tls_key_password fails under sip.tls_key; with it, it loads."""
    encrypted = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "ec", "-in", str(cert.key), "-out", str(encrypted), "-aes256",
         "-passout", "pass:key-pass-789"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    sip = f'listen = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert.cert}"\ntls_key = "{encrypted}"'
    problems = _problems(tmp_path, sip)
    assert 1 == len(problems)
    assert problems[0].startswith("sip.tls_key: ")
    assert "tls_key_password" in problems[0]
    problems = _problems(tmp_path, sip + '\ntls_key_password = "wrong-pass-000"')
    assert problems[0].startswith("sip.tls_key: ")
    assert "wrong-pass-000" not in " ".join(problems)
    path = tmp_path / "ok.toml"
    path.write_text(f'[sip]\n{sip}\ntls_key_password = "key-pass-789"\n{POLICY}')
    settings = load_settings(path)
    assert settings.sip.tls_key_password is not None
    assert "key-pass-789" not in repr(settings.sip)


def test_tls_carrier_needs_a_tls_listener_and_a_readable_ca(tmp_path: Path) -> None:
    """A tls carrier without a tls listener, and one whose tls_ca is missing, name their keys."""
    carriers = (
        '[[carriers]]\nname = "carrier-a"\naddress = "tls:127.0.0.1:5071"\n'
        f'tls_ca = "{tmp_path / "missing-ca.pem"}"\n'
    )
    problems = _problems(tmp_path, 'listen = ["udp:127.0.0.1:0"]', carriers)
    assert [
        "carriers[0].address: a tls: carrier needs a tls: listener in [sip] listen"
        " (its in-dialog requests come back to it)",
        f"carriers[0].tls_ca: no such file: {tmp_path / 'missing-ca.pem'}",
    ] == problems


def test_tls_keys_on_a_udp_carrier_are_refused(tmp_path: Path) -> None:
    """tls_ca / tls_server_name on a udp: carrier are errors, not silently ignored."""
    carriers = (
        '[[carriers]]\nname = "carrier-a"\naddress = "udp:127.0.0.1:5071"\n'
        'tls_server_name = "carrier.test"\n'
    )
    problems = _problems(tmp_path, 'listen = ["udp:127.0.0.1:0"]', carriers)
    assert ["carriers[0].tls_server_name: only for a tls: address"] == problems


def test_check_config_warns_about_a_key_other_users_can_read(tmp_path: Path, cert: Cert) -> None:
    """A TLS key readable by group/others is a check-config warning naming sip.tls_key."""
    settings = Settings(
        sip={  # type: ignore[arg-type]
            "listen": ["tls:127.0.0.1:0"],
            "tls_cert": str(cert.cert),
            "tls_key": str(cert.key),
        },
    )
    cert.key.chmod(0o644)
    assert [
        f"sip.tls_key: {cert.key} is open to other local users (mode 0644);"
        f" it is the gateway's TLS private key: chmod 600 {cert.key}"
    ] == [w for w in config_warnings(settings) if w.startswith("sip.tls_key")]
    cert.key.chmod(0o600)
    assert [] == [w for w in config_warnings(settings) if w.startswith("sip.tls_key")]
