"""The test kit (simulator.testkit): ports, polling, event capture, config builder, SIPp readers."""

from __future__ import annotations

import socket
import time
import tomllib
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.telemetry.events import EventBus, GatewayStatus
from simulator.testkit import (
    calls_toml,
    capture_events,
    eventually,
    free_ports,
    gateway_toml,
    parse_trace,
    sipp_command,
    stat_row,
    wait_until,
)


def test_free_ports_are_distinct_and_bindable_for_tcp_and_udp() -> None:
    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))


async def test_eventually_returns_once_true_and_fails_after_the_timeout() -> None:
    start = time.monotonic()
    await eventually(lambda: time.monotonic() - start > 0.05, 2.0)
    with pytest.raises(AssertionError, match=r"never not met within 0\.1 s"):
        await eventually(lambda: False, 0.1, what="never")


def test_wait_until_fails_naming_what() -> None:
    wait_until(lambda: True, 0.1)
    with pytest.raises(AssertionError, match="the thing"):
        wait_until(lambda: False, 0.05, "the thing")


def test_capture_events_sees_what_the_bus_publishes_inside_the_block_only() -> None:
    bus = EventBus()
    event = GatewayStatus(node="gw1", online=True, version="t", started_at=0.0, at=1.0)
    with capture_events(bus) as seen:
        bus.publish(event)
    bus.publish(event)
    assert seen == [event]
    with capture_events(bus, kind=str) as none:
        bus.publish(event)
    assert none == []


def test_gateway_toml_is_a_valid_configuration_on_loopback(tmp_path: Path) -> None:
    text = gateway_toml(
        sip=5999, carrier=5998, mqtt=1999, admin=8999, store=tmp_path / "d.db", cards=("c1", "c2")
    )
    settings = Settings.model_validate(tomllib.loads(text))
    assert [str(c.number) for c in settings.cards] == ["+8613800000001", "+8613800000002"]
    assert settings.admin.port == 8999
    assert "127.0.0.1:5999" in text and "0.0.0.0" not in text
    part = calls_toml({"carrier-a": 5998, "carrier-b": 5997}, card_carriers=["carrier-b"])
    wire = Settings.model_validate(tomllib.loads('[sip]\nlisten = ["udp:127.0.0.1:5999"]\n' + part))
    assert [(c.id, c.carrier) for c in wire.cards] == [("c1", "carrier-b")]
    assert [u.name for u in wire.users] == ["alice"]


def test_sipp_readers(tmp_path: Path) -> None:
    (tmp_path / "stat.csv").write_text("A;SuccessfulCall(C);\n1;0;\n2;3;\n")
    assert stat_row(tmp_path / "stat.csv")["SuccessfulCall(C)"] == "3"
    (tmp_path / "messages.log").write_text(
        "----------------------------------------------- 2026-01-01\n"
        "UDP message received [300] bytes :\n\n"
        "SIP/2.0 407 Proxy Authentication Required\r\nCall-ID: x1\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    (msg,) = parse_trace(tmp_path / "messages.log")
    assert (msg.direction, msg.status, msg.header("call-id")) == ("received", 407, "x1")
    cmd = sipp_command("s.xml", port=5, target=("127.0.0.1", 6), workdir=tmp_path, binary="sipp")
    assert cmd[:4] == ["sipp", "127.0.0.1:6", "-sf", "s.xml"]
    assert "-buff_size" in cmd and str(tmp_path / "stat.csv") in cmd
