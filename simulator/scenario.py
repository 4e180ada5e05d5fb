"""The scenario file: one TOML document describing a campaign rehearsal.

A scenario names the seed, the business clock (start, speed, duration), the
carrier (timezone, answer model, arrears, maintenance windows, anti-fraud
thresholds, scheduled suspensions), the cards, the gateway policy settings to
apply (mirroring the gateway config keys: consent mode, calling hours, quota
profiles; ``guarded = false`` turns quotas and consent off), agents, dialers,
leads (listed or generated) and pacing.

Validation is strict (``extra = "forbid"``) and every error names its key
path, e.g. ``carrier.antifraud.calls_per_hour``. Besides the schema this module
builds the pure carrier model (:meth:`Scenario.build_carrier`) and expands the
lead list (:meth:`Scenario.expand_leads`). It must never open sockets or read
a clock.
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from simulator.answer import AnswerProfile
from simulator.antifraud import AntiFraudThresholds, TimeWindow
from simulator.clock import ScaledClock
from simulator.models import (
    CardAccount,
    CarrierConfig,
    CarrierModel,
    MaintenanceWindow,
    ScheduledSuspension,
)

__all__ = [
    "Lead",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "loads_scenario",
    "parse_duration",
    "parse_scenario",
]

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$"
)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"1d"``, ``"8h"``, ``"1h30m"``, ``"90s"``."""
    if isinstance(value, bool):
        raise ValueError("duration must be a number of seconds or a string like '8h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not value.strip() or match is None or not any(match.groups()):
            raise ValueError(f"duration must look like '8h', '1h30m', '90s' or '1d', got {value!r}")
        d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + s
    else:
        raise ValueError("duration must be a number of seconds or a string like '8h'")
    if seconds <= 0:
        raise ValueError("duration must be > 0")
    return seconds


def _check_tz(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _check_windows(value: str) -> str:
    for part in value.split(","):
        TimeWindow.parse(part)
    return value


def _check_e164(value: str) -> str:
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{value!r} is not an E.164 number (+<country><number>)") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError(f"{value!r} is not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _check_aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetime needs a UTC offset, e.g. 2026-03-02T09:00:00+08:00")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
TimeZoneName = Annotated[str, AfterValidator(_check_tz)]
Windows = Annotated[str, AfterValidator(_check_windows)]
E164 = Annotated[str, AfterValidator(_check_e164)]
AwareDatetime = Annotated[datetime, AfterValidator(_check_aware)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClockSection(_Strict):
    """Business clock: when the rehearsal starts, how fast it runs, how long it lasts."""

    start: AwareDatetime
    speed: float = Field(default=1.0, gt=0)
    duration: Duration


class AnswerSection(_Strict):
    """Callee behaviour (see :class:`simulator.answer.AnswerProfile`).

    ``answer``, ``busy``, ``no_answer`` and ``decline`` sum to 1. The
    ``*_share`` keys are shares of destinations that answer the same way on
    every call (plain 403, ring then 408, ring then 503, silence); together at
    most 1, all 0 by default.
    """

    answer: Probability = 0.45
    busy: Probability = 0.15
    no_answer: Probability = 0.3
    decline: Probability = 0.1
    ring_min: float = Field(default=2.0, ge=0)
    ring_max: float = Field(default=15.0, ge=0)
    busy_ring: float = Field(default=0.5, ge=0)
    no_answer_seconds: float = Field(default=30.0, gt=0)
    talk_mean: float = Field(default=60.0, gt=0)
    talk_sigma: float = Field(default=1.0, ge=0)
    talk_min: float = Field(default=1.0, gt=0)
    talk_max: float = Field(default=1800.0, gt=0)
    refuse_403_share: Probability = 0.0
    ring_then_408_share: Probability = 0.0
    ring_then_503_share: Probability = 0.0
    silent_share: Probability = 0.0
    silent_seconds: float = Field(default=32.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        total = self.answer + self.busy + self.no_answer + self.decline
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"answer + busy + no_answer + decline must be 1, got {total:g}")
        shares = (
            self.refuse_403_share
            + self.ring_then_408_share
            + self.ring_then_503_share
            + self.silent_share
        )
        if shares > 1.0 + 1e-9:
            raise ValueError(
                "refuse_403_share + ring_then_408_share + ring_then_503_share + silent_share"
                f" must be <= 1, got {shares:g}"
            )
        if self.ring_min > self.ring_max:
            raise ValueError("ring_min must be <= ring_max")
        if self.talk_min > self.talk_max:
            raise ValueError("talk_min must be <= talk_max")
        return self

    def build(self) -> AnswerProfile:
        """The pure model's profile."""
        return AnswerProfile(**self.model_dump())


class AntiFraudSection(_Strict):
    """The carrier's own thresholds per card; omitted keys are not checked.

    ``max_calls_per_callee`` / ``max_cards_per_callee`` count the calls to one
    callee from every card within ``callee_window`` (seconds or ``"1h"``).
    """

    calls_per_hour: int | None = Field(default=None, ge=1)
    calls_per_day: int | None = Field(default=None, ge=1)
    distinct_callees_per_day: int | None = Field(default=None, ge=1)
    answer_rate_floor: Probability | None = None
    answer_rate_window: int = Field(default=30, ge=1)
    answer_rate_min_calls: int = Field(default=20, ge=1)
    short_call_seconds: float = Field(default=10.0, gt=0)
    short_call_share_max: Probability | None = None
    short_call_window: int = Field(default=20, ge=1)
    short_call_min_calls: int = Field(default=10, ge=1)
    night: Windows | None = None
    night_calls_max: int | None = Field(default=None, ge=0)
    complaint_probability: Probability = 0.0
    complaints_max: int | None = Field(default=None, ge=0)
    max_calls_per_callee: int | None = Field(default=None, ge=1)
    max_cards_per_callee: int | None = Field(default=None, ge=1)
    callee_window: Duration = 3600.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.answer_rate_min_calls > self.answer_rate_window:
            raise ValueError("answer_rate_min_calls must be <= answer_rate_window")
        if self.short_call_min_calls > self.short_call_window:
            raise ValueError("short_call_min_calls must be <= short_call_window")
        if self.night_calls_max is not None and self.night is None:
            raise ValueError("night_calls_max needs a night window, e.g. night = '22:00-08:00'")
        if self.night is not None and "," in self.night:
            raise ValueError("night must be a single window 'HH:MM-HH:MM'")
        return self

    def build(self) -> AntiFraudThresholds:
        """The pure model's thresholds."""
        data = self.model_dump()
        night = data.pop("night")
        return AntiFraudThresholds(night=TimeWindow.parse(night) if night else None, **data)


class MaintenanceSection(_Strict):
    """A carrier outage; ``cards`` empty means every card."""

    start: AwareDatetime
    end: AwareDatetime
    cards: list[str] = []

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ScheduledSuspensionSection(_Strict):
    """A suspension the carrier applies at a given business time, whatever the traffic."""

    card: str
    at: AwareDatetime
    reason: str = "violation"
    cause: str = "scheduled by scenario"


class CarrierSection(_Strict):
    """The simulated carrier."""

    name: str = "carrier-a"
    timezone: TimeZoneName = "UTC"
    rate_per_minute: float = Field(default=0.0, ge=0)
    answer: AnswerSection = AnswerSection()
    antifraud: AntiFraudSection = AntiFraudSection()
    probation: AntiFraudSection | None = None
    maintenance: list[MaintenanceSection] = []
    scheduled_suspensions: list[ScheduledSuspensionSection] = []


class CardSection(_Strict):
    """One card: caller number, carrier credentials, pool and quota profile."""

    id: str = Field(min_length=1)
    number: E164
    username: str = Field(min_length=1)
    password: SecretStr
    pool: str = "main"
    priority: int = 1
    quota: str = "default"
    balance: float | None = None


class ConsentMode(StrEnum):
    """Gateway consent policy (DESIGN.md ``policy.consent``)."""

    DNC_ONLY = "dnc-only"
    REQUIRE_CONSENT = "require-consent"


#: Quota keys an earlier scenario format used → the gateway's key of the same meaning.
RENAMED_QUOTA_KEYS = {
    "rolling_window": "rate_window_calls",
    "min_calls": "min_sample",
    "night": "night_window",
}


class QuotaProfileSection(_Strict):
    """A gateway quota profile: the keys and meaning of ``[quota_profiles.NAME]`` in dialgate.toml.

    Omitted limits are not checked. The tuning keys have the gateway's
    defaults (a rolling window of 50 finished calls, checked from 20 on);
    ``short_call_seconds`` left out means the carrier's own short-call length
    (``carrier.antifraud.short_call_seconds``), so both count the same calls
    as short. ``concurrent`` defaults to 1: a SIM carries one call.
    """

    calls_per_minute: int | None = Field(default=None, ge=1)
    calls_per_hour: int | None = Field(default=None, ge=1)
    calls_per_day: int | None = Field(default=None, ge=1)
    concurrent: int = Field(default=1, ge=1)
    min_gap_seconds: float | None = Field(default=None, ge=0)
    talk_minutes_per_day: float | None = Field(default=None, gt=0)
    distinct_callees_per_day: int | None = Field(default=None, ge=1)
    answer_rate_floor: Probability | None = None
    short_call_ceiling: Probability | None = None
    short_call_seconds: float | None = Field(default=None, gt=0)
    rate_window_calls: int = Field(default=50, ge=1)
    min_sample: int = Field(default=20, ge=1)
    consecutive_failures: int | None = Field(default=None, ge=1)
    cooldown_seconds: float | None = Field(default=None, ge=0)
    night_window: Windows | None = None
    probation: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in RENAMED_QUOTA_KEYS.items():
                if old in data:
                    raise ValueError(f"{old}: renamed to {new!r} (the gateway's key)")
        return data

    def gateway_profile(self, short_call_seconds: float) -> dict[str, Any]:
        """This profile as a gateway ``[quota_profiles.NAME]`` table (limits left out stay off).

        ``short_call_seconds`` is the carrier's short-call length, used when the
        profile does not set its own.
        """
        table = self.model_dump(exclude_none=True)
        table.setdefault("short_call_seconds", short_call_seconds)
        return table

    def short_seconds(self, carrier_default: float) -> float:
        """Talk seconds under which an answered call counts as short for this profile."""
        return carrier_default if self.short_call_seconds is None else self.short_call_seconds


class FrequencySection(_Strict):
    """Per-number limits: the keys and meaning of dialgate.toml's ``[policy.frequency]``.

    At most ``attempts`` calls to one number per ``attempts_window`` and
    ``answers`` answered calls per ``answers_window`` (rolling, across every
    card and agent). The defaults are the gateway's.
    """

    attempts: int = Field(default=3, ge=0)
    attempts_window: Duration = 7 * 86400.0
    answers: int = Field(default=1, ge=0)
    answers_window: Duration = 86400.0


class GatewaySection(_Strict):
    """Gateway policy settings applied during the rehearsal (DESIGN.md "Configuration").

    ``frequency`` is ``[policy.frequency]`` (the gateway's defaults when left
    out); ``guarded = false`` switches it off with the quotas and consent.
    """

    guarded: bool = True
    default_region: str = "CN"
    consent: ConsentMode = ConsentMode.DNC_ONLY
    calling_hours: Windows = "08:00-21:00"
    quota_profiles: dict[str, QuotaProfileSection] = {"default": QuotaProfileSection()}
    frequency: FrequencySection = FrequencySection()
    mask_callees: bool = True

    def frequency_in_force(self) -> FrequencySection | None:
        """The per-number limits the gateway applies (None: off, an unguarded run)."""
        return self.frequency if self.guarded else None


class AgentSection(_Strict):
    """A softphone agent."""

    name: str = Field(min_length=1)
    password: SecretStr
    card: str | None = None


class DialerSection(_Strict):
    """A trusted dialer peer placing calls for a campaign over several channels."""

    name: str = Field(min_length=1)
    password: SecretStr
    addresses: list[str] = ["127.0.0.1/32"]
    campaign: str | None = None
    channels: int = Field(default=1, ge=1)


class LeadSection(_Strict):
    """One listed lead; ``repeat`` puts it ``repeat`` times in a row into the lead list.

    A repeated lead is how a scenario dials one callee again (a redial, a
    callback list with duplicates): lead *i* goes to worker *i* mod *n*, so with
    one agent the copies are dialled one after another from the same card, with
    two agents bound to two cards from both cards.
    """

    number: E164
    consent: bool = False
    repeat: int = Field(default=1, ge=1, le=100)
    timezone: TimeZoneName | None = None
    country: str | None = None


class LeadGeneratorSection(_Strict):
    """Generated leads: ``count`` numbers ``prefix`` + random digits up to ``length`` digits."""

    count: int = Field(ge=1, le=1_000_000)
    prefix: str = Field(pattern=r"^\+[1-9]\d{1,10}$")
    length: int = Field(default=13, ge=8, le=15)
    consent_share: Probability = 0.5
    timezone: TimeZoneName | None = None
    country: str | None = None

    @model_validator(mode="after")
    def _room(self) -> Self:
        room = self.length - (len(self.prefix) - 1)
        if room < 3:
            raise ValueError("prefix leaves fewer than 3 random digits within length")
        if self.count > 10**room:
            raise ValueError(f"count {self.count} exceeds the {10**room} numbers the prefix allows")
        return self


class LeadsSection(_Strict):
    """Leads to dial: an explicit list, a generator, or both (list first)."""

    numbers: list[LeadSection] = []
    generate: LeadGeneratorSection | None = None

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.numbers and self.generate is None:
            raise ValueError("give leads.numbers entries or a leads.generate table")
        return self


class PacingSection(_Strict):
    """How fast agents and dialer channels place calls."""

    calls_per_minute_per_agent: float = Field(default=1.0, gt=0)
    think_seconds: float = Field(default=5.0, ge=0)
    #: ``blind``: dial at the rate and learn "no card" from 503s; ``capacity``: dialer
    #: channels first wait until the pool's capacity (GET /pools/{pool}/capacity) has room.
    pace: str = Field(default="blind", pattern="^(blind|capacity)$")


class Lead(BaseModel):
    """An expanded lead (listed or generated)."""

    model_config = ConfigDict(frozen=True)

    number: str
    consent: bool
    timezone: str | None = None
    country: str | None = None


class Scenario(_Strict):
    """A whole rehearsal."""

    name: str = "scenario"
    description: str = ""
    seed: int = 0
    clock: ClockSection
    carrier: CarrierSection = CarrierSection()
    cards: list[CardSection] = Field(min_length=1)
    gateway: GatewaySection = GatewaySection()
    agents: list[AgentSection] = []
    dialers: list[DialerSection] = []
    leads: LeadsSection
    pacing: PacingSection = PacingSection()

    @field_validator("cards")
    @classmethod
    def _unique_cards(cls, cards: list[CardSection]) -> list[CardSection]:
        ids = [c.id for c in cards]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate card id(s): {', '.join(dupes)}")
        return cards

    @model_validator(mode="after")
    def _references(self) -> Self:
        card_ids = {c.id for c in self.cards}
        if not self.agents and not self.dialers:
            raise ValueError("a scenario needs at least one agent or dialer")
        for i, agent in enumerate(self.agents):
            if agent.card is not None and agent.card not in card_ids:
                raise ValueError(f"agents[{i}].card: unknown card {agent.card!r}")
        for i, card in enumerate(self.cards):
            if card.quota not in self.gateway.quota_profiles:
                raise ValueError(f"cards[{i}].quota: unknown quota profile {card.quota!r}")
        for name, profile in self.gateway.quota_profiles.items():
            if (
                profile.probation is not None
                and profile.probation not in self.gateway.quota_profiles
            ):
                raise ValueError(
                    f"gateway.quota_profiles.{name}.probation: unknown quota profile"
                    f" {profile.probation!r}"
                )
        for i, s in enumerate(self.carrier.scheduled_suspensions):
            if s.card not in card_ids:
                raise ValueError(
                    f"carrier.scheduled_suspensions[{i}].card: unknown card {s.card!r}"
                )
        for i, m in enumerate(self.carrier.maintenance):
            for card_id in m.cards:
                if card_id not in card_ids:
                    raise ValueError(f"carrier.maintenance[{i}].cards: unknown card {card_id!r}")
        return self

    # -- derived --------------------------------------------------------------
    @property
    def start_epoch(self) -> float:
        """Business start time as epoch seconds."""
        return self.clock.start.timestamp()

    @property
    def end_epoch(self) -> float:
        """Business end time as epoch seconds."""
        return self.start_epoch + self.clock.duration

    def calling_hours(self) -> tuple[TimeWindow, ...]:
        """Parsed gateway calling-hours windows."""
        return tuple(TimeWindow.parse(p) for p in self.gateway.calling_hours.split(","))

    def expand_leads(self) -> list[Lead]:
        """Listed leads (each ``repeat`` times), then generated ones not listed, deterministic."""
        leads: list[Lead] = [
            Lead(number=x.number, consent=x.consent, timezone=x.timezone, country=x.country)
            for x in self.leads.numbers
            for _ in range(x.repeat)
        ]
        seen = {lead.number for lead in leads}
        gen = self.leads.generate
        if gen is not None:
            rng = random.Random(f"{self.seed}:leads")
            room = gen.length - (len(gen.prefix) - 1)
            made = 0
            while made < gen.count:
                number = f"{gen.prefix}{rng.randrange(10**room):0{room}d}"
                if number in seen:
                    continue
                seen.add(number)
                consent = rng.random() < gen.consent_share
                leads.append(
                    Lead(number=number, consent=consent, timezone=gen.timezone, country=gen.country)
                )
                made += 1
        return leads

    def build_clock(self, monotonic: Callable[[], float] | None = None) -> ScaledClock:
        """A scaled business clock starting at ``clock.start`` running at ``clock.speed``."""
        if monotonic is None:
            return ScaledClock(self.clock.start, self.clock.speed)
        return ScaledClock(self.clock.start, self.clock.speed, monotonic)

    def gateway_config(
        self,
        carrier_address: str,
        *,
        listen: Sequence[str] = ("udp:127.0.0.1:5060",),
        store_path: str = "var/dialgate.db",
    ) -> dict[str, Any]:
        """The gateway configuration this scenario asks for, keyed as DESIGN.md "Configuration".

        ``guarded = false`` turns consent and quotas off: consent becomes
        ``dnc-only``, calling hours the whole day, the per-number frequency cap
        off, and each quota profile keeps only ``concurrent`` (a SIM still
        carries one call). Quota profiles use the
        gateway's own keys (see :class:`QuotaProfileSection`), so the result
        validates as :class:`gateway.config.Settings`. Carrier rules map the
        simulated carrier's answers to card states (403 suspension → its reason,
        402 → arrears, 503 → maintenance). Secrets are returned in clear text
        because the result *is* the gateway's config; never log it.
        """
        gw = self.gateway
        short = self.carrier.antifraud.short_call_seconds
        profiles: dict[str, dict[str, Any]] = {}
        for name, profile in gw.quota_profiles.items():
            if gw.guarded:
                profiles[name] = profile.gateway_profile(short)
            else:
                profiles[name] = {"concurrent": profile.concurrent}
        rules: list[dict[str, Any]] = [
            {"status": 403, "match": f"(?i)suspended: {reason}", "reason": reason}
            for reason in ("abnormal-use", "violation", "arrears", "manual")
        ]
        rules += [
            {"status": 403, "match": "(?i)suspend|blocked", "reason": "unknown"},
            {"status": 402, "reason": "arrears"},
            {"status": 503, "match": "(?i)maintenance", "reason": "maintenance"},
        ]
        return {
            "sip": {"listen": list(listen)},
            "store": {"path": store_path},
            "policy": {
                "default_region": gw.default_region,
                "consent": str(gw.consent if gw.guarded else ConsentMode.DNC_ONLY),
                "calling_hours": gw.calling_hours if gw.guarded else "00:00-24:00",
                "mask_numbers": gw.mask_callees,
                "frequency": (
                    gw.frequency.model_dump()
                    if gw.guarded
                    # Off: more calls than any run can place, in the shortest window.
                    else {"attempts": 1_000_000, "attempts_window": 1.0, "answers": 1_000_000}
                ),
            },
            "users": [
                {"name": a.name, "password": a.password.get_secret_value()}
                | ({"card": a.card} if a.card is not None else {})
                for a in self.agents
            ],
            "peers": [
                {
                    "name": d.name,
                    "addresses": list(d.addresses),
                    "password": d.password.get_secret_value(),
                }
                | ({"campaign": d.campaign} if d.campaign is not None else {})
                for d in self.dialers
            ],
            "carriers": [
                {
                    "name": self.carrier.name,
                    "address": carrier_address,
                    "timezone": self.carrier.timezone,
                    "rules": rules,
                }
            ],
            "quota_profiles": profiles,
            "cards": [
                {
                    "id": c.id,
                    "carrier": self.carrier.name,
                    "number": c.number,
                    "username": c.username,
                    "password": c.password.get_secret_value(),
                    "pool": c.pool,
                    "priority": c.priority,
                    "quota": c.quota,
                }
                for c in self.cards
            ],
        }

    def build_carrier(self, leads: list[Lead] | None = None) -> CarrierModel:
        """The pure carrier model for this scenario, seeded from :attr:`seed`."""
        c = self.carrier
        config = CarrierConfig(
            timezone=c.timezone,
            answer=c.answer.build(),
            thresholds=c.antifraud.build(),
            probation=None if c.probation is None else c.probation.build(),
            rate_per_minute=c.rate_per_minute,
            maintenance=tuple(
                MaintenanceWindow(m.start.timestamp(), m.end.timestamp(), frozenset(m.cards))
                for m in c.maintenance
            ),
            scheduled_suspensions=tuple(
                ScheduledSuspension(s.card, s.at.timestamp(), s.reason, s.cause)
                for s in c.scheduled_suspensions
            ),
        )
        accounts = [
            CardAccount(
                card=card.id,
                username=card.username,
                password=card.password.get_secret_value(),
                balance=float("inf") if card.balance is None else card.balance,
            )
            for card in self.cards
        ]
        leads = self.expand_leads() if leads is None else leads
        return CarrierModel(
            config,
            accounts,
            seed=self.seed,
            consented=[lead.number for lead in leads if lead.consent],
            mask_callees=self.gateway.mask_callees,
        )


class ScenarioError(ValueError):
    """A scenario file that does not validate; ``problems`` pairs key paths with messages."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {key}: {msg}" for key, msg in problems)
        super().__init__(f"{source}: invalid scenario\n{lines}")


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before")):
            continue  # pydantic validator frames, not keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_NAMED_KEY = re.compile(
    r"^(?P<key>[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): (?P<msg>.+)$", re.S
)


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        key = _key_path(tuple(err["loc"]))
        # Cross-reference checks run on the whole model and name their key in the message.
        named = _NAMED_KEY.match(msg)
        if named is not None:
            inner = named["key"]
            key = inner if key == "(top level)" else f"{key}.{inner}"
            msg = named["msg"]
        problems.append((key, msg))
    return problems


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed TOML document."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, _problems(exc)) from None


def loads_scenario(text: str, source: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, [("(toml)", str(exc))]) from None
    return parse_scenario(data, source)


def load_scenario(path: str | Path) -> Scenario:
    """Read, parse and validate a scenario TOML file."""
    p = Path(path)
    return loads_scenario(p.read_text(encoding="utf-8"), str(p))
