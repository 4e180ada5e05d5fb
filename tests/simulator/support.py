"""Shared helpers for the simulator tests: a fixed business start time and a carrier builder."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from simulator.answer import AnswerProfile
from simulator.antifraud import AntiFraudThresholds
from simulator.models import (
    CardAccount,
    CarrierConfig,
    CarrierModel,
    MaintenanceWindow,
    ScheduledSuspension,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: Monday 2026-03-02 10:00 in the carrier's time zone: business hours, not night.
START = datetime(2026, 3, 2, 10, 0, tzinfo=SHANGHAI)
T0 = START.timestamp()


def build_carrier(
    *,
    cards: tuple[str, ...] = ("c1",),
    balance: float = float("inf"),
    rate_per_minute: float = 0.0,
    answer: AnswerProfile | None = None,
    maintenance: tuple[MaintenanceWindow, ...] = (),
    scheduled: tuple[ScheduledSuspension, ...] = (),
    consented: tuple[str, ...] = (),
    seed: int = 1,
    mask_callees: bool = True,
    **thresholds: Any,
) -> CarrierModel:
    """A carrier in Asia/Shanghai; extra keyword arguments are anti-fraud thresholds."""
    config = CarrierConfig(
        timezone="Asia/Shanghai",
        answer=answer or AnswerProfile(),
        thresholds=AntiFraudThresholds(**thresholds),
        rate_per_minute=rate_per_minute,
        maintenance=maintenance,
        scheduled_suspensions=scheduled,
    )
    return CarrierModel(
        config,
        [CardAccount(c, c, f"{c}-secret", balance) for c in cards],
        seed=seed,
        consented=consented,
        mask_callees=mask_callees,
    )


#: An answer profile where every call is answered (to control answer-rate tests).
ALWAYS_ANSWER = AnswerProfile(answer=1.0, busy=0.0, no_answer=0.0, decline=0.0)


def callee(i: int) -> str:
    """A distinct, valid Chinese mobile number for index ``i``."""
    return f"+86139{i:08d}"


#: The smallest valid scenario: one card, one agent, one consenting lead.
MINIMAL = """
name = "mini"
seed = 3

[clock]
start = 2026-03-02T09:00:00+08:00
speed = 60
duration = "2h"

[carrier]
timezone = "Asia/Shanghai"

[[cards]]
id = "c1"
number = "+8613800000001"
username = "c1"
password = "pw"

[[agents]]
name = "alice"
password = "pw"
card = "c1"

[[leads.numbers]]
number = "+8613912345678"
consent = true
"""
