"""gateway.telemetry.logging: JSON lines, callee masking, secret dropping, no frame locals."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.config import LoggingSettings, LogLevel
from gateway.telemetry.logging import configure_logging, get_logger

pytestmark = pytest.mark.usefixtures("restore_logging")


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_mask_callees_and_drop_secrets() -> None:
    """Callee-like fields are masked at any depth; secret keys and SecretStr values vanish."""
    out = io.StringIO()
    configure_logging(LoggingSettings(json=True), stream=out)
    get_logger("test").info(
        "call attempt",
        callee="+8613812345678",
        card="c1",
        password="pw-111",
        auth_token="tok-222",
        card_secret=SecretStr("sec-333"),
        extra={"to": "sip:+8613812345678@h", "Authorization": "Digest x", "ok": 1},
        destinations=[{"number": "+8613912345678"}],
    )
    [line] = _lines(out)
    assert "+86138****5678" == line["callee"]
    assert "c1" == line["card"]
    assert {"to": "sip:+86138****5678@h", "ok": 1} == line["extra"]
    assert [{"number": "+86139****5678"}] == line["destinations"]
    for gone in ("password", "auth_token", "card_secret"):
        assert gone not in line
    raw = out.getvalue()
    for secret in ("pw-111", "tok-222", "sec-333", "Digest x", "8613812345678"):
        assert secret not in raw


def test_authorization_lines_in_sip_text_are_blanked() -> None:
    """A logged SIP message keeps its shape but not its credentials."""
    out = io.StringIO()
    configure_logging(LoggingSettings(json=True), stream=out)
    message = (
        "REGISTER sip:gw SIP/2.0\r\n"
        'Authorization: Digest username="alice", response="6629fae49393a05397450978507c4ef1"\r\n'
        "Proxy-Authorization: Digest username=alice\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    get_logger().debug("rx", raw=message)
    get_logger().warning("rx", raw=message)
    [line] = _lines(out)
    assert (
        "REGISTER sip:gw SIP/2.0\r\nAuthorization: [redacted]\r\n"
        "Proxy-Authorization: [redacted]\r\nContent-Length: 0\r\n\r\n"
    ) == line["raw"]


def test_masking_can_be_turned_off() -> None:
    """policy.mask_numbers = false keeps numbers, but secrets are still dropped."""
    out = io.StringIO()
    configure_logging(LoggingSettings(json=True), mask_numbers=False, stream=out)
    get_logger().info("call", callee="+8613812345678", password="pw-111")
    [line] = _lines(out)
    assert "+8613812345678" == line["callee"]
    assert "password" not in line


def test_exceptions_are_dicts_without_locals() -> None:
    """Tracebacks are structured and never carry frame locals (which may be passwords)."""
    out = io.StringIO()
    configure_logging(LoggingSettings(json=True), stream=out)

    def fail(password: str) -> None:
        secret_local = password * 2
        raise RuntimeError(f"failed after {len(secret_local)} chars")

    try:
        fail("pw-444")
    except RuntimeError:
        get_logger().exception("boom")
    [line] = _lines(out)
    assert "RuntimeError" == line["exception"][0]["exc_type"]
    assert "pw-444" not in out.getvalue()
    assert all("locals" not in frame for frame in line["exception"][0]["frames"])


def test_level_filters_and_stdlib_records_share_the_format() -> None:
    """Below-level events are dropped; stdlib logging comes out as masked JSON too."""
    out = io.StringIO()
    configure_logging(LoggingSettings(level=LogLevel.WARNING, json=True), stream=out)
    get_logger().info("quiet")
    logging.getLogger("aiomqtt").info("quiet too")
    logging.getLogger("aiomqtt").error("broker down")
    lines = _lines(out)
    assert [("broker down", "aiomqtt", "error")] == [
        (e["event"], e["logger"], e["level"]) for e in lines
    ]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_on_tty_unless_json_forced() -> None:
    """json=false on a TTY renders for humans; json=true stays JSON lines even on a TTY."""
    console = _Tty()
    configure_logging(LoggingSettings(json=False), stream=console)
    get_logger().info("hello", callee="+8613812345678")
    text = console.getvalue()
    assert "hello" in text
    assert "+86138****5678" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

    forced = _Tty()
    configure_logging(LoggingSettings(json=True), stream=forced)
    get_logger().info("hello")
    assert "hello" == _lines(forced)[0]["event"]


def test_json_false_off_tty_is_still_json() -> None:
    """Piped output (not a TTY) is JSON lines whatever json says."""
    out = io.StringIO()
    configure_logging(LoggingSettings(json=False), stream=out)
    get_logger("x", node="gw1").info("hello")
    [line] = _lines(out)
    assert {"event": "hello", "logger": "x", "node": "gw1", "level": "info"} == {
        k: line[k] for k in ("event", "logger", "node", "level")
    }
    assert line["timestamp"].endswith("Z")
