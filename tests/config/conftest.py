"""Fixtures for the configuration tests: a clean environment and a TOML writer."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# A valid configuration that error cases are derived from by small edits.
BASE_TOML = """\
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]

[policy]
default_region = "CN"
consent = "dnc-only"
calling_hours = "08:00-21:00"

[[users]]
name = "alice"
password = "alice-pw-123"
card = "c1"

[[peers]]
name = "dialer-1"
addresses = ["127.0.0.1/32"]
password = "dialer-pw-456"

[inbound]
fallback_user = "alice"

[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:5070"
timezone = "Asia/Shanghai"
  [[carriers.rules]]
  status = 403
  match = "(?i)suspend"
  reason = "violation"

[quota_profiles.default]
calls_per_minute = 5

[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
password = "card-pw-789"

[[cards]]
id = "c2"
carrier = "carrier-a"
number = "+8613800000002"
password = "card-pw-000"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DIALGATE_ variables leak in, and no ./dialgate.toml is picked up by accident."""
    for name in list(os.environ):
        if name.upper().startswith("DIALGATE_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def write_toml(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def write(text: str) -> Path:
        path = tmp_path / f"config-{next(counter)}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog and the stdlib root logger back as they were after the test."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    yield
    structlog.configure(**saved_config)
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
