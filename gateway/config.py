"""dialgate configuration: the TOML file of DESIGN.md "Configuration" as typed settings.

What this module is for:

* one ``Settings`` object (pydantic-settings) holding every section of the TOML file:
  ``sip``, ``store``, ``mqtt``, ``policy``, ``users``, ``peers``, ``inbound``,
  ``carriers``, ``quota_profiles``, ``cards``, ``admin``, ``logging``;
* sources, strongest first: keyword arguments, ``DIALGATE_…`` environment variables
  (``__`` separates nesting levels, lists/tables as JSON), the TOML file, embedded
  defaults. ``Settings()`` with no file at all is valid and runnable;
* validation an operator can act on: unknown keys are errors (a typo must never be
  silently ignored), string mini-formats are parsed into values (``ListenSpec``,
  ``DailyWindows``, ``ServiceUrl``), names referenced across sections must exist, and
  ``explain_errors`` turns a ``ValidationError`` into one ``key.path[i].sub: message``
  line per problem.

What it must never do: echo a secret. Passwords, HA1 hashes, tokens and the password
part of broker/redis URLs are ``SecretStr``; models are built with
``hide_input_in_errors`` so a rejected value never appears in an error, and
``explain_errors`` never prints input values at all. It never opens sockets or files
other than the one TOML file it is asked to read and the TLS certificate, key and
CA files it names (to check them, never to show their content).
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import itertools
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeAlias
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import shortnumberinfo
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway import __version__
from gateway.private_files import loose_directory
from policies.consent import ConsentMode
from policies.quotas import QuotaProfile, SuspendReason

__all__ = [
    "DIGEST_ALGORITHMS",
    "AdminSettings",
    "AgentLimitSettings",
    "CardSettings",
    "CarrierRuleSettings",
    "CarrierSettings",
    "ConfigError",
    "DailyWindows",
    "Endpoint",
    "ExtraEmergency",
    "FrequencySettings",
    "InboundSettings",
    "ListenSpec",
    "LogLevel",
    "LoggingSettings",
    "MqttSettings",
    "PeerSettings",
    "PolicySettings",
    "QuotaProfileSettings",
    "ServerSettings",
    "ServiceUrl",
    "Settings",
    "SipSettings",
    "StoreSettings",
    "TimeWindow",
    "Transport",
    "UserSettings",
    "config_warnings",
    "explain_errors",
    "find_default_config",
    "format_loc",
    "load_settings",
    "summary",
]

DEFAULT_CONFIG_NAME = "dialgate.toml"
ENV_PREFIX = "DIALGATE_"

# ---------------------------------------------------------------------------
# Small value types parsed from strings
# ---------------------------------------------------------------------------


class Transport(StrEnum):
    """SIP transports the gateway speaks."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _check_host(host: str) -> str:
    """Return *host* normalized: an IPv4 literal, ``[v6]`` literal or a hostname."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unterminated IPv6 literal {host!r}")
        try:
            addr = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
        return f"[{addr.compressed}]"
    if ":" in host:
        # why: RFC 3261 §19.1.1 / §25.1 — an IPv6 host in a SIP hostport is an
        # IPv6reference, always bracketed, so the port separator stays unambiguous.
        raise ValueError(f"IPv6 address must be in brackets, e.g. [{host}]")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(host) or host.replace(".", "").isdigit():
        raise ValueError(f"invalid host {host!r}")
    return host.lower()


def _check_port(text: str, *, allow_zero: bool) -> int:
    if not text.isdigit():
        raise ValueError(f"port must be a number, got {text!r}")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} out of range {low}-65535")
    return port


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ``transport:host:port`` triple: a listening socket or a carrier trunk.

    ``host`` keeps IPv6 literals in brackets (``[::1]``); ``ip`` gives the bare form
    that socket APIs want.
    """

    transport: Transport
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, allow_port_zero: bool = True) -> Endpoint:
        """Parse ``"udp:127.0.0.1:5060"`` / ``"tcp:[::1]:5061"``; raise ValueError."""
        transport, sep, rest = text.strip().partition(":")
        if not sep:
            raise ValueError(f"expected 'transport:host:port', got {text!r}")
        try:
            proto = Transport(transport.lower())
        except ValueError:
            raise ValueError(
                f"unknown transport {transport!r} (expected one of: "
                f"{', '.join(t.value for t in Transport)})"
            ) from None
        host, sep, port = rest.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected 'transport:host:port', got {text!r}")
        return cls(proto, _check_host(host), _check_port(port, allow_zero=allow_port_zero))

    @property
    def ip(self) -> str:
        """The host without IPv6 brackets, as ``socket.bind`` wants it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def host_port(self) -> str:
        """``host:port`` as written in a Via sent-by or a URI."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport.value}:{self.host}:{self.port}"


ListenSpec: TypeAlias = Endpoint


def _validate_listen(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("listen_spec", "expected a 'transport:host:port' string")
    try:
        return Endpoint.parse(value, allow_port_zero=True)
    except ValueError as exc:
        raise PydanticCustomError("listen_spec", str(exc)) from None


def _validate_trunk(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("address", "expected a 'transport:host:port' string")
    try:
        return Endpoint.parse(value, allow_port_zero=False)
    except ValueError as exc:
        raise PydanticCustomError("address", str(exc)) from None


ListenField = Annotated[
    Endpoint, PlainValidator(_validate_listen), PlainSerializer(str, return_type=str)
]
TrunkField = Annotated[
    Endpoint, PlainValidator(_validate_trunk), PlainSerializer(str, return_type=str)
]


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Minutes of the day ``[start, end)``; ``end`` may be 1440 ("24:00")."""

    start: int
    end: int

    def contains(self, minute_of_day: float) -> bool:
        """True when *minute_of_day* (0 ≤ m < 1440) is inside the window."""
        return self.start <= minute_of_day < self.end


def _parse_hhmm(text: str) -> int:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match:
        raise ValueError(f"expected HH:MM, got {text.strip()!r}")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes != 0):
        raise ValueError(f"invalid time {text.strip()!r} (00:00-24:00)")
    return hours * 60 + minutes


def _fmt_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass(frozen=True, slots=True)
class DailyWindows:
    """Daily time windows parsed from ``"HH:MM-HH:MM[,HH:MM-HH:MM...]"``.

    A window whose end is earlier than its start runs over midnight
    (``"21:00-08:00"``) and is stored as two windows. ``"24:00"`` ends the day.
    """

    spec: str
    windows: tuple[TimeWindow, ...]

    @classmethod
    def parse(cls, text: str) -> DailyWindows:
        """Parse the window list; raise ValueError naming the bad part."""
        windows: list[TimeWindow] = []
        parts = text.split(",")
        if not text.strip():
            raise ValueError("empty time window list")
        for part in parts:
            start_text, sep, end_text = part.partition("-")
            if not sep:
                raise ValueError(f"expected HH:MM-HH:MM, got {part.strip()!r}")
            start, end = _parse_hhmm(start_text), _parse_hhmm(end_text)
            if start == 1440:
                raise ValueError(f"a window cannot start at 24:00 ({part.strip()!r})")
            if start == end:
                raise ValueError(f"empty window {part.strip()!r}")
            if start < end:
                windows.append(TimeWindow(start, end))
            else:
                windows.append(TimeWindow(start, 1440))
                if end:
                    windows.append(TimeWindow(0, end))
        windows.sort(key=lambda w: w.start)
        for before, after in itertools.pairwise(windows):
            if after.start < before.end:
                raise ValueError(
                    f"windows overlap: {_fmt_minute(before.start)}-{_fmt_minute(before.end)}"
                    f" and {_fmt_minute(after.start)}-{_fmt_minute(after.end)}"
                )
        spec = ",".join(p.strip() for p in parts)
        return cls(spec, tuple(windows))

    def contains(self, minute_of_day: float) -> bool:
        """True when *minute_of_day* (0 ≤ m < 1440) falls in any window."""
        return any(w.contains(minute_of_day) for w in self.windows)

    def seconds_until_open(self, second_of_day: float) -> float:
        """Seconds from *second_of_day* until a window is open (0 when open now).

        Meant for Retry-After on a ``calling-hours`` reject.
        """
        minute = second_of_day / 60.0
        if self.contains(minute):
            return 0.0
        starts = sorted(w.start * 60 for w in self.windows)
        later = [s for s in starts if s > second_of_day]
        nxt = later[0] if later else starts[0] + 86400
        return float(nxt - second_of_day)

    def __str__(self) -> str:
        return self.spec


def _validate_windows(value: Any) -> DailyWindows:
    if isinstance(value, DailyWindows):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("time_windows", "expected a 'HH:MM-HH:MM[,...]' string")
    try:
        return DailyWindows.parse(value)
    except ValueError as exc:
        raise PydanticCustomError("time_windows", str(exc)) from None


# NoDecode: an env value such as DIALGATE_POLICY__CALLING_HOURS=09:00-20:00 is the
# plain string, not JSON (pydantic-settings JSON-decodes dataclass-typed fields).
WindowsField = Annotated[
    DailyWindows,
    PlainValidator(_validate_windows),
    PlainSerializer(str, return_type=str),
    NoDecode,
]


@dataclass(frozen=True, slots=True, repr=False)
class ServiceUrl:
    """A broker/database URL whose password is kept as a ``SecretStr``.

    ``str()``/``repr()`` show ``scheme://user:***@host:port/path``; ``password``
    is only readable through ``SecretStr.get_secret_value()``.
    """

    scheme: str
    host: str
    port: int | None
    username: str | None
    password: SecretStr | None
    path: str

    @classmethod
    def parse(cls, text: str, *, schemes: Sequence[str]) -> ServiceUrl:
        """Parse *text*; the scheme must be one of *schemes*. Raise ValueError."""
        parts = urlsplit(text.strip())
        scheme = parts.scheme.lower()
        if scheme not in schemes:
            raise ValueError(f"URL scheme must be one of {', '.join(schemes)}, got {scheme!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("invalid port in URL") from None
        if not parts.hostname:
            raise ValueError("URL has no host")
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        return cls(
            scheme=scheme,
            host=_check_host(host),
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password else None,
            path=parts.path,
        )

    @property
    def ip(self) -> str:
        """The host without IPv6 brackets."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        auth = ""
        if self.username is not None or self.password is not None:
            auth = self.username or ""
            if self.password is not None:
                auth += ":***"
            auth += "@"
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{auth}{self.host}{port}{self.path}"

    def __repr__(self) -> str:
        return f"ServiceUrl({str(self)!r})"


def _url_validator(*schemes: str) -> Callable[[Any], ServiceUrl]:
    def validate(value: Any) -> ServiceUrl:
        if isinstance(value, ServiceUrl):
            return value
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise PydanticCustomError("url", "expected a URL string")
        try:
            return ServiceUrl.parse(value, schemes=schemes)
        except ValueError as exc:
            raise PydanticCustomError("url", str(exc)) from None

    return validate


MqttUrl = Annotated[
    ServiceUrl,
    PlainValidator(_url_validator("mqtt", "mqtts", "ws", "wss")),
    PlainSerializer(str, return_type=str),
    NoDecode,
]
RedisUrl = Annotated[
    ServiceUrl,
    PlainValidator(_url_validator("redis", "rediss", "unix")),
    PlainSerializer(str, return_type=str),
    NoDecode,
]

# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------

_SECTION = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True)

DigestAlgorithmName = Literal["MD5", "SHA-256"]

DIGEST_ALGORITHMS: tuple[DigestAlgorithmName, ...] = ("SHA-256", "MD5")
"""The digest algorithms a challenge may offer, strongest first.

why: RFC 8760 §2.3 — a UAS offering several algorithms lists its challenges
"in the order that it would prefer to see them used, starting with the most
preferred algorithm at the top"; a UAC answers the topmost one it supports
(§2.4). So ``digest_algorithms`` lists are kept in this order whatever order
the file gives.
"""


def _digest_algorithm_list(value: Any) -> Any:
    """``digest_algorithms``: names case-insensitively, no repeats, strongest first."""
    if not isinstance(value, list | tuple):
        return value
    names: list[Any] = []
    for item in value:
        if isinstance(item, str):
            item = next((a for a in DIGEST_ALGORITHMS if a.lower() == item.strip().lower()), item)
        if item in names:
            raise PydanticCustomError(
                "digest_algorithms", "'{name}' is listed twice", {"name": str(item)[:20]}
            )
        names.append(item)
    return sorted(names, key=lambda n: DIGEST_ALGORITHMS.index(n) if n in DIGEST_ALGORITHMS else 9)


def _default_digest() -> list[DigestAlgorithmName]:
    return ["MD5"]


DigestAlgorithms = Annotated[
    list[DigestAlgorithmName], BeforeValidator(_digest_algorithm_list), Field(min_length=1)
]

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")]


class SipSettings(BaseModel):
    """``[sip]``: sockets, identity and RFC 3261 timer values."""

    model_config = _SECTION

    listen: list[ListenField] = Field(
        default_factory=lambda: [
            Endpoint(Transport.UDP, "127.0.0.1", 5060),
            Endpoint(Transport.TCP, "127.0.0.1", 5060),
        ],
        min_length=1,
    )
    advertise: str | None = None
    domains: list[str] = Field(default_factory=list)
    realm: str = Field(default="dialgate", min_length=1)
    # why: RFC 3261 §17.1.1.1 — T1 (RTT estimate, default 500 ms), T2 (max
    # non-INVITE retransmit interval, 4 s) and T4 (max time a message stays in
    # the network, 5 s); §17.1.2.2 says T2 must not be below T1.
    t1: float = Field(default=0.5, gt=0, le=60)
    t2: float = Field(default=4.0, gt=0, le=600)
    t4: float = Field(default=5.0, gt=0, le=600)
    max_message_size: int = Field(default=65535, ge=1300, le=1 << 24)
    # why: RFC 3581 §4 — answer to the packet's source address and port (rport)
    # even when the client did not ask, as Kamailio's force_rport does: agents sit
    # behind NAT, and a forged Via must not aim responses at a third party.
    force_rport: bool = True
    user_agent: str = Field(default=f"dialgate/{__version__}", min_length=1)
    # why: many deployed softphones know only MD5 and some give up on a 401 that
    # carries a second, SHA-256 challenge (Debian's baresip 1.0: "Function not
    # implemented"); SHA-256 (RFC 8760) is opt-in. Offered strongest first.
    digest_algorithms: DigestAlgorithms = Field(default_factory=_default_digest)
    # TCP limits: connections in total and per source address (a
    # whole call center behind one NAT address shares the per-source count),
    # seconds for a complete message once its first octet arrived (slow
    # senders are closed), seconds without traffic before a connection closes.
    tcp_max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    tcp_max_per_source: int = Field(default=256, ge=1, le=1_000_000)
    tcp_head_timeout: float = Field(default=20.0, gt=0, le=3600)
    tcp_idle_timeout: float = Field(default=120.0, gt=0, le=86400)
    # Overload: once more than a quarter of this many KiB waits unread in the UDP
    # listeners' kernel receive queues (the gateway is behind its traffic: the next
    # retransmissions would only add work), a share of new outbound INVITEs, growing
    # with the backlog, gets 503 with Retry-After before authentication; at this
    # many KiB all of them (gateway/callpath/overload.py). 0: never.
    overload_queue_kb: int = Field(default=256, ge=0, le=1 << 20)
    # SIP over TLS (RFC 3261 §26.2): the certificate chain and key of every
    # `tls:` listener, also presented to a carrier that asks for a client
    # certificate. Paths are not secrets; the key's password is.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_key_password: SecretStr | None = None
    tls_handshake_timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [_check_host(v) for v in value]

    @model_validator(mode="after")
    def _timers(self) -> SipSettings:
        if self.t2 < self.t1:
            raise PydanticCustomError("timers", "t2 must not be smaller than t1")
        seen: set[str] = set()
        for spec in self.listen:
            if spec.port and str(spec) in seen:
                raise PydanticCustomError(
                    "listen_spec", "duplicate listener {spec}", {"spec": str(spec)}
                )
            seen.add(str(spec))
        return self


class StoreSettings(BaseModel):
    """``[store]``: the embedded SQLite file and optional shared Redis."""

    model_config = _SECTION

    path: Path = Path("var/dialgate.db")
    redis: RedisUrl | None = None
    # Where CDRs the store refused wait (``<db name>.cdr-spool.jsonl``): default beside
    # the database; put it on another disk so a full disk does not take both.
    spool_dir: Path | None = None


class MqttSettings(BaseModel):
    """``[mqtt]``: event publishing. Omit the table to run without MQTT."""

    model_config = _SECTION

    url: MqttUrl = Field(
        default_factory=lambda: ServiceUrl.parse("mqtt://127.0.0.1:1883", schemes=("mqtt",))
    )
    username: str | None = None
    password: SecretStr | None = None
    root: str = Field(default="dialgate", min_length=1, pattern=r"^[^#+\x00]+$")
    node: str = Field(default="gw1", min_length=1, pattern=r"^[^/#+\x00]+$")
    client_id: str | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    stats_interval: float = Field(default=5.0, gt=0, le=3600)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False

    @property
    def use_tls(self) -> bool:
        """TLS when asked for explicitly or implied by ``mqtts://`` / ``wss://``."""
        return self.tls or self.url.scheme in {"mqtts", "wss"}

    @property
    def port(self) -> int:
        """Broker port, defaulting by scheme (1883, 8883 with TLS)."""
        if self.url.port is not None:
            return self.url.port
        return 8883 if self.use_tls else 1883

    def credentials(self) -> tuple[str | None, SecretStr | None]:
        """(username, password): explicit keys win over those in the URL."""
        return (self.username or self.url.username, self.password or self.url.password)

    @model_validator(mode="after")
    def _tls_files(self) -> MqttSettings:
        if self.key_file is not None and self.cert_file is None:
            raise PydanticCustomError("tls", "key_file needs cert_file")
        return self


def _check_region(value: str) -> str:
    region = value.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {value!r} (ISO 3166 code such as 'CN', 'US')")
    return region


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def _duration(value: Any) -> Any:
    """``"7d"``, ``"24h"``, ``"30m"``, ``"90s"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 7d, 24h, 30m or seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError("expected a duration such as 7d, 24h, 30m or seconds")


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0, le=366 * 86400)]


class FrequencyRuleSettings(BaseModel):
    """Per-number limits of one campaign (``[policy.frequency.campaigns.NAME]``); unset keys
    keep the ``[policy.frequency]`` value."""

    model_config = _SECTION

    attempts: int | None = Field(default=None, ge=0)
    attempts_window: Duration | None = None
    answers: int | None = Field(default=None, ge=0)
    answers_window: Duration | None = None


class FrequencySettings(BaseModel):
    """``[policy.frequency]``: calls to one number, across every card and agent.

    At most ``attempts`` calls per ``attempts_window`` and ``answers`` answered
    calls per ``answers_window`` (rolling); ``campaigns.NAME`` overrides any of
    them for one campaign (the number's history is still every campaign's).
    """

    model_config = _SECTION

    attempts: int = Field(default=3, ge=0)
    attempts_window: Duration = 7 * 86400.0
    answers: int = Field(default=1, ge=0)
    answers_window: Duration = 86400.0
    campaigns: dict[str, FrequencyRuleSettings] = Field(default_factory=dict)

    def for_campaign(self, campaign: str | None) -> tuple[int, float, int, float]:
        """(attempts, attempts_window, answers, answers_window) in force for a campaign."""
        o = self.campaigns.get(campaign or "") if campaign else None
        if o is None:
            return (self.attempts, self.attempts_window, self.answers, self.answers_window)
        return (
            self.attempts if o.attempts is None else o.attempts,
            self.attempts_window if o.attempts_window is None else o.attempts_window,
            self.answers if o.answers is None else o.answers,
            self.answers_window if o.answers_window is None else o.answers_window,
        )


class AgentLimitSettings(BaseModel):
    """``[policy.agents]``: what restrains an agent (softphone user or dialer peer).

    ``complaints_per_day`` / ``complaints_per_week``: complaints tolerated in a
    rolling day / week; the next one pauses the agent (403 ``agent-limit`` with
    Retry-After = until the oldest counted complaint leaves the window, or until
    ``dialgate agents resume``). ``calls_per_day``: calls per rolling day (403
    ``agent-limit`` with Retry-After). Unset: no limit.
    """

    model_config = _SECTION

    complaints_per_day: int | None = Field(default=None, ge=0)
    complaints_per_week: int | None = Field(default=None, ge=0)
    calls_per_day: int | None = Field(default=None, ge=1)
    calls_per_hour: int | None = Field(default=None, ge=1)


class ExtraEmergency(BaseModel):
    """``[[policy.extra_emergency]]``: a number that is not an official emergency number of
    its region but must bypass every check anyway (a site's own rescue line), with why."""

    model_config = _SECTION

    region: str
    number: Annotated[str, Field(pattern=r"^[0-9*#]{2,15}$")]
    reason: str = Field(min_length=8)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _check_region(value)


class PolicySettings(BaseModel):
    """``[policy]``: consent mode, calling hours, regions, privacy, per-number and agent limits.

    ``consent`` has no default: a file that does not say ``"dnc-only"`` or
    ``"require-consent"`` is refused (``load_settings``). ``emergency_numbers``
    lists only numbers phonenumbers' short-number metadata knows as emergency
    numbers of that region; anything else goes under ``extra_emergency`` with
    a reason.
    """

    model_config = _SECTION

    default_region: str = "CN"
    # None only when the file left it out: load_settings refuses that (no silent fallback).
    consent: ConsentMode | None = None
    calling_hours: WindowsField = Field(default_factory=lambda: DailyWindows.parse("08:00-21:00"))
    # Emergency numbers per region (checked against phonenumbers' metadata).
    emergency_numbers: dict[str, list[Annotated[str, Field(pattern=r"^[0-9*#]{2,8}$")]]] = Field(
        default_factory=dict
    )
    extra_emergency: list[ExtraEmergency] = Field(default_factory=list)
    # Regions callees may be in (ISO codes); default: the default_region alone.
    allowed_regions: list[str] = Field(default_factory=list)
    campaign_header: str = Field(default="X-Campaign", pattern=r"^[A-Za-z0-9!%*_+`'~.-]+$")
    # The dialer's lead id header, kept in the CDR (lead_id) beside the campaign.
    lead_header: str = Field(default="X-Lead-Id", pattern=r"^[A-Za-z0-9!%*_+`'~.-]+$")
    mask_numbers: bool = True
    frequency: FrequencySettings = Field(default_factory=FrequencySettings)
    agents: AgentLimitSettings = Field(default_factory=AgentLimitSettings)
    # How far back a complaint without --card/--call looks for the call it is about.
    complaint_lookup_window: Duration = 30 * 86400.0

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _check_region(value)

    @field_validator("allowed_regions")
    @classmethod
    def _allowed(cls, value: list[str]) -> list[str]:
        return [_check_region(v) for v in value]

    @field_validator("emergency_numbers")
    @classmethod
    def _emergency_regions(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        out = {_check_region(k): v for k, v in value.items()}
        for region, numbers in out.items():
            for number in numbers:
                if not shortnumberinfo.is_emergency_number(number, region):
                    raise ValueError(
                        f"{number} is not an official emergency number of {region}"
                        " (phonenumbers' short-number metadata); list it under"
                        " [[policy.extra_emergency]] with region, number and reason"
                    )
        return out

    @property
    def home_regions(self) -> frozenset[str]:
        """Regions callees may be in: ``allowed_regions``, else the default region."""
        return frozenset(self.allowed_regions or [self.default_region])

    def emergency_extra(self) -> dict[str, list[str]]:
        """Every configured emergency number per region (official ones and the extra ones)."""
        out: dict[str, list[str]] = {k: list(v) for k, v in self.emergency_numbers.items()}
        for entry in self.extra_emergency:
            out.setdefault(entry.region, []).append(entry.number)
        return out


_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class _DigestCredentials(BaseModel):
    """Digest secret: exactly one of ``password``, ``ha1_md5``, ``ha1_sha256``."""

    model_config = _SECTION

    password: SecretStr | None = None
    ha1_md5: SecretStr | None = None
    ha1_sha256: SecretStr | None = None

    @field_validator("ha1_md5")
    @classmethod
    def _md5(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _HEX32.match(value.get_secret_value()):
            raise ValueError("ha1_md5 must be 32 hex digits")
        return value

    @field_validator("ha1_sha256")
    @classmethod
    def _sha256(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _HEX64.match(value.get_secret_value()):
            raise ValueError("ha1_sha256 must be 64 hex digits")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> _DigestCredentials:
        given = [
            k
            for k, v in (
                ("password", self.password),
                ("ha1_md5", self.ha1_md5),
                ("ha1_sha256", self.ha1_sha256),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise PydanticCustomError(
                "credentials",
                "exactly one of password, ha1_md5, ha1_sha256 is required (got {got})",
                {"got": ", ".join(given) or "none"},
            )
        return self


def _answerable(entry: _DigestCredentials) -> tuple[DigestAlgorithmName, ...]:
    """What a stored secret can answer: a password any algorithm, an HA1 only its own."""
    if entry.ha1_md5 is not None:
        return ("MD5",)
    if entry.ha1_sha256 is not None:
        return ("SHA-256",)
    return DIGEST_ALGORITHMS


class UserSettings(_DigestCredentials):
    """``[[users]]``: a softphone agent that REGISTERs with digest auth.

    ``digest_algorithms`` overrides ``[sip] digest_algorithms`` for this user
    (a user stored as ``ha1_sha256`` must be offered SHA-256 only).
    """

    name: Name
    card: str | None = None
    campaign: str | None = None
    digest_algorithms: DigestAlgorithms | None = None

    def answerable_algorithms(self) -> tuple[DigestAlgorithmName, ...]:
        """The algorithms this user's stored secret can answer, strongest first."""
        return _answerable(self)


class PeerSettings(_DigestCredentials):
    """``[[peers]]``: a trusted dialer: source address allow-list plus digest."""

    name: Name
    addresses: list[IPvAnyNetwork] = Field(min_length=1)
    campaign: str | None = None


class InboundSettings(BaseModel):
    """``[inbound]``: where callbacks to a card go when no agent is bound to it."""

    model_config = _SECTION

    fallback_user: str | None = None


class CarrierRuleSettings(BaseModel):
    """``[[carriers.rules]]`` as written: a carrier response that changes a card's state.

    The input model; the value the card manager applies is
    :class:`gateway.cards.classify.CarrierRule`, made from this one in one
    place (``gateway.cards.rules_from_settings``).
    """

    model_config = _SECTION

    status: int = Field(ge=100, le=699)
    match: re.Pattern[str] | None = None
    reason: SuspendReason

    @field_validator("match", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class CarrierSettings(BaseModel):
    """``[[carriers]]``: a SIP trunk and the rules that read its responses."""

    model_config = _SECTION

    name: Name
    address: TrunkField
    timezone: str = "UTC"
    rules: list[CarrierRuleSettings] = Field(default_factory=list)
    # "register" itself would shadow BaseModel.register (ABCMeta), hence the alias.
    register_enabled: bool = Field(default=False, alias="register")
    register_expires: int = Field(default=3600, ge=60, le=86400)
    options_interval: float | None = Field(default=30.0, ge=1, le=3600)
    # How its answers are judged (gateway.cards.classify; CARRIERS.md).
    suspect_after: int = Field(default=5, ge=1, le=1000)
    suspect_window: float = Field(default=600.0, ge=1, le=7 * 86400)
    rest_seconds: float = Field(default=30.0, ge=0, le=86400)
    dead_causes: list[Annotated[int, Field(ge=1, le=127)]] = Field(default_factory=list)
    # What a restore imposes (carriers restore appealed cards on reduced limits).
    probation_profile: str | None = None
    probation_days: float = Field(default=7.0, gt=0, le=365)
    # A `tls:` address: the CAs its certificate is verified against (PEM file;
    # unset: the system's) and the name it must carry (unset: the address host).
    tls_ca: Path | None = None
    tls_server_name: str | None = None

    @field_validator("tls_server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value).strip("[]")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r} (IANA name such as 'Asia/Shanghai')"
            ) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The carrier's timezone (its calendar day bounds daily quotas)."""
        return ZoneInfo(self.timezone)


class QuotaProfileSettings(BaseModel):
    """``[quota_profiles.NAME]`` as written: per-card limits; a missing key means no limit.

    The input model; :meth:`to_profile` makes the runtime value the quota
    policy evaluates (:class:`policies.quotas.QuotaProfile`), in this one place.
    """

    model_config = _SECTION

    calls_per_minute: int | None = Field(default=None, ge=0)
    calls_per_hour: int | None = Field(default=None, ge=0)
    calls_per_day: int | None = Field(default=None, ge=0)
    concurrent: int | None = Field(default=None, ge=0)
    min_gap_seconds: float | None = Field(default=None, ge=0)
    talk_minutes_per_day: float | None = Field(default=None, ge=0)
    distinct_callees_per_day: int | None = Field(default=None, ge=0)
    answer_rate_floor: float | None = Field(default=None, ge=0, le=1)
    short_call_ceiling: float | None = Field(default=None, ge=0, le=1)
    short_call_seconds: float | None = Field(default=None, gt=0)
    rate_window_calls: int | None = Field(default=None, ge=1)
    min_sample: int | None = Field(default=None, ge=1)
    consecutive_failures: int | None = Field(default=None, ge=1)
    cooldown_seconds: float | None = Field(default=None, ge=0)
    night_window: WindowsField | None = None
    probation: str | None = None

    def to_profile(self, name: str) -> QuotaProfile:
        """The runtime profile named ``name``.

        A missing limit stays None ("no limit"); tuning keys left out keep the
        policy's defaults (short call < 10 s, window of 50 calls, 20-call
        minimum sample, 15 min cooldown).
        """
        tuning: dict[str, Any] = {}
        if self.short_call_seconds is not None:
            tuning["short_call_seconds"] = self.short_call_seconds
        if self.rate_window_calls is not None:
            tuning["rate_window_calls"] = self.rate_window_calls
        if self.min_sample is not None:
            tuning["rate_min_sample"] = self.min_sample
        if self.cooldown_seconds is not None:
            tuning["cooldown_seconds"] = self.cooldown_seconds
        return QuotaProfile(
            name=name,
            calls_per_minute=self.calls_per_minute,
            calls_per_hour=self.calls_per_hour,
            calls_per_day=self.calls_per_day,
            concurrent=self.concurrent,
            min_gap_seconds=self.min_gap_seconds,
            talk_minutes_per_day=self.talk_minutes_per_day,
            distinct_callees_per_day=self.distinct_callees_per_day,
            answer_rate_floor=self.answer_rate_floor,
            short_call_ceiling=self.short_call_ceiling,
            consecutive_failures=self.consecutive_failures,
            night_window=None if self.night_window is None else self.night_window.spec,
            **tuning,
        )


# Used when the file defines no "default" profile: the DESIGN example's limits.
BUILTIN_DEFAULT_QUOTA = QuotaProfileSettings(
    calls_per_minute=5, calls_per_hour=60, calls_per_day=300, concurrent=1
)


class CardSettings(BaseModel):
    """``[[cards]]``: one outbound carrier line."""

    model_config = _SECTION

    id: Name
    carrier: str
    number: str
    username: str | None = None
    password: SecretStr | None = None
    pool: Name = "main"
    priority: int = Field(default=100, ge=0)
    quota: str = "default"
    # The GSM gateway / device the SIM sits in; cards sharing one (or, without it,
    # sharing a carrier address) share a trunk failure.
    device: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not value.startswith("+"):
            raise ValueError("must be in E.164 form with '+' and country code, e.g. +8613800000001")
        try:
            parsed = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException as exc:
            raise ValueError(f"not a phone number: {exc}") from None
        if not phonenumbers.is_valid_number(parsed):
            raise ValueError("not a valid E.164 number")
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    @property
    def auth_username(self) -> str:
        """Username for the carrier's digest challenge (defaults to the card id)."""
        return self.username or self.id


class PoolSettings(BaseModel):
    """``[pools.NAME]``: how a pool's cards stand in for each other."""

    model_config = _SECTION

    # A bound agent whose card cannot take a call now may use another card of
    # the pool. Off: carriers read frequent card switching as abnormal use.
    spill: bool = False


class AdminSettings(BaseModel):
    """``[admin]``: the admin HTTP endpoint."""

    model_config = _SECTION

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    token: SecretStr | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port, got {value!r}")
        return f"{_check_host(host)}:{_check_port(port, allow_zero=True)}"

    @property
    def host(self) -> str:
        """Bind address without IPv6 brackets."""
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        """Bind port (0 = pick a free one)."""
        return int(self.listen.rpartition(":")[2])

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminSettings:
        # An admin API reachable from the network without a token would let anyone
        # restore suspended cards or import consent: refuse to start like that.
        if self.enabled and self.token is None and not _is_loopback(self.host):
            raise PydanticCustomError(
                "admin_token", "a token is required when listening on a non-loopback address"
            )
        return self


class ServerSettings(BaseModel):
    """``[server]``: how many processes serve SIP (``dialgate run``)."""

    model_config = _SECTION

    # 1: one process, as always. "auto": one per core. N > 1: a supervisor and N
    # worker processes sharing the SIP listeners (SO_REUSEPORT), each with a private
    # port of its own for its dialogs (docs/workers.md). `dialgate run --workers N`
    # overrides this key.
    workers: int | Literal["auto"] = 1
    # Private ports of the workers: worker i listens on worker_port_base + i (every
    # transport of [sip] listen). Unset: free ports chosen once at start and kept
    # across a worker's restarts.
    worker_port_base: int | None = Field(default=None, ge=1, le=65535)
    # How calls spread over the workers (docs/workers.md). The kernel hands each UDP
    # datagram to a worker by a hash of its source: one dialer or PBX socket, one
    # worker. "load": the worker that received a new INVITE checks the caller's
    # digest, then hands the call to the worker its Call-ID hashes to while it is
    # busy (over half a core) and that one clearly less so (gateway/callpath/
    # steering.py). "call-id": every call to its Call-ID's worker. "kernel": no
    # hand-over (one source, one worker).
    worker_balance: Literal["load", "call-id", "kernel"] = "load"
    # "paced": the garbage collector runs on a clock from the event loop (young
    # generations every 50 ms, the full heap when quiet: gateway/collector.py), so no
    # collection pauses calls for tens of ms. "auto": Python's own triggers.
    gc: Literal["paced", "auto"] = "paced"

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f'expected a number of processes or "auto", got {value!r}')
        if not 1 <= value <= MAX_WORKERS:
            raise ValueError(f"must be between 1 and {MAX_WORKERS}, got {value}")
        return value

    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is the number of cores."""
        if self.workers == "auto":
            return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
        return int(self.workers)


MAX_WORKERS = 64
"""The most worker processes ``[server] workers`` / ``--workers`` accepts."""


class BanAnswer(StrEnum):
    """What a banned source gets for its requests."""

    DROP = "drop"  # nothing at all (cheapest; the scanner times out)
    FORBIDDEN = "403"  # a stateless 403 Forbidden


class SecuritySettings(BaseModel):
    """``[security]``: password-guessing and flood defence (as Kamailio pike and fail2ban do).

    Failed authentications are counted per source address and per user name
    over ``window`` seconds. From ``delay_after`` failures of a source its
    refusals are held back ``delay`` seconds (tarpit); at ``ban_after`` it is
    banned for ``ban_time`` seconds, doubled for each further ban within
    ``ban_memory`` up to ``ban_time_max``. A user name with
    ``user_delay_after`` failures from anywhere gets its *failed* attempts
    held back, never banned: a stranger cannot lock an agent out. More than
    ``flood_requests`` requests from one source within ``flood_window``
    seconds ban it the same way. Carriers' addresses and ``exempt`` networks
    are never counted; loopback is not exempt unless listed.
    """

    model_config = _SECTION

    enabled: bool = True
    window: float = Field(default=600.0, gt=0, le=7 * 86400)
    delay_after: int = Field(default=5, ge=1, le=100_000)
    delay: float = Field(default=2.0, ge=0, le=60)
    ban_after: int = Field(default=10, ge=1, le=100_000)
    ban_time: float = Field(default=600.0, gt=0, le=30 * 86400)
    ban_time_max: float = Field(default=86400.0, gt=0, le=365 * 86400)
    ban_memory: float = Field(default=86400.0, ge=0, le=365 * 86400)
    ban_answer: BanAnswer = BanAnswer.DROP
    user_delay_after: int = Field(default=20, ge=1, le=1_000_000)
    flood_requests: int = Field(default=1000, ge=1, le=10_000_000)
    flood_window: float = Field(default=2.0, gt=0, le=3600)
    exempt: list[IPvAnyNetwork] = Field(default_factory=list)
    # IPv6 sources are counted and banned per network of this prefix (a host
    # can change its address within its /64 at will); 128: per address.
    ipv6_prefix: int = Field(default=64, ge=32, le=128)
    max_sources: int = Field(default=100_000, ge=100, le=10_000_000)
    max_delayed: int = Field(default=10_000, ge=0, le=1_000_000)
    # Digest strictness: the credentials' uri must match the Request-URI; SIPp's
    # user-less `sip:<gateway ip>:<port>` is accepted while the second key is on.
    digest_uri_check: bool = True
    digest_uri_gateway_form: bool = True

    @model_validator(mode="after")
    def _order(self) -> SecuritySettings:
        if self.ban_time_max < self.ban_time:
            raise PydanticCustomError("ban_time_max", "ban_time_max must be at least ban_time")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LogLevel(StrEnum):
    """Log levels accepted in ``[logging] level``."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LoggingSettings(BaseModel):
    """``[logging]``: level and format (JSON lines, or console on a TTY)."""

    model_config = _SECTION

    level: LogLevel = LogLevel.INFO
    json_lines: bool = Field(default=False, alias="json")

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


# ---------------------------------------------------------------------------
# The root object
# ---------------------------------------------------------------------------

# The TOML file load_settings() was asked for (a ContextVar so concurrent loads in
# tests or threads never see each other's file).
_TOML_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "dialgate_toml_file", default=None
)


class Settings(BaseSettings):
    """The whole dialgate configuration (DESIGN.md "Configuration")."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        populate_by_name=True,
        validate_default=True,
    )

    sip: SipSettings = Field(default_factory=SipSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    mqtt: MqttSettings | None = None
    policy: PolicySettings = Field(default_factory=PolicySettings)
    users: list[UserSettings] = Field(default_factory=list)
    peers: list[PeerSettings] = Field(default_factory=list)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    carriers: list[CarrierSettings] = Field(default_factory=list)
    quota_profiles: dict[Name, QuotaProfileSettings] = Field(default_factory=dict)
    cards: list[CardSettings] = Field(default_factory=list)
    pool_options: dict[Name, PoolSettings] = Field(default_factory=dict, alias="pools")
    admin: AdminSettings = Field(default_factory=AdminSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    REFERENCE_ERROR: ClassVar[str] = "config_reference"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments > DIALGATE_ env > TOML file > defaults.

        why: pydantic-settings ignores ``toml_file=`` unless a
        ``TomlConfigSettingsSource`` is listed here (TOOLS.md).
        """
        toml_file = _TOML_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("quota_profiles")
    @classmethod
    def _default_profile(
        cls, value: dict[str, QuotaProfileSettings]
    ) -> dict[str, QuotaProfileSettings]:
        if "default" not in value:
            value = {"default": BUILTIN_DEFAULT_QUOTA, **value}
        return value

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems = list(self._reference_problems())
        if problems:
            raise PydanticCustomError(
                self.REFERENCE_ERROR,
                "{summary}",
                {"summary": "; ".join(f"{p}: {m}" for p, m in problems), "problems": problems},
            )
        return self

    def _reference_problems(self) -> Iterator[tuple[str, str]]:
        """Yield (key path, message) for every name that points nowhere."""
        yield from _duplicates("users", [u.name for u in self.users], "name")
        yield from _duplicates("peers", [p.name for p in self.peers], "name")
        yield from _duplicates("carriers", [c.name for c in self.carriers], "name")
        yield from _duplicates("cards", [c.id for c in self.cards], "id")
        carriers = {c.name for c in self.carriers}
        cards = {c.id for c in self.cards}
        users = {u.name for u in self.users}
        profiles = set(self.quota_profiles)
        for i, card in enumerate(self.cards):
            if card.carrier not in carriers:
                yield (
                    f"cards[{i}].carrier",
                    f"unknown carrier {card.carrier!r}{_hint(card.carrier, carriers)}",
                )
            if card.quota not in profiles:
                yield (
                    f"cards[{i}].quota",
                    f"unknown quota profile {card.quota!r}{_hint(card.quota, profiles)}",
                )
        for i, carrier in enumerate(self.carriers):
            name = carrier.probation_profile
            if name is not None and name not in profiles:
                yield (
                    f"carriers[{i}].probation_profile",
                    f"unknown quota profile {name!r}{_hint(name, profiles)}",
                )
        pools = {c.pool for c in self.cards}
        for name in self.pool_options:
            if name not in pools:
                yield f"pools.{name}", f"no card is in pool {name!r}{_hint(name, pools)}"
        for i, user in enumerate(self.users):
            if user.card is not None and user.card not in cards:
                yield f"users[{i}].card", f"unknown card {user.card!r}{_hint(user.card, cards)}"
        for name, profile in self.quota_profiles.items():
            if profile.probation is not None and profile.probation not in profiles:
                yield (
                    f"quota_profiles.{name}.probation",
                    f"unknown quota profile {profile.probation!r}{_hint(profile.probation, profiles)}",
                )
        fallback = self.inbound.fallback_user
        if fallback is not None and fallback not in users:
            yield "inbound.fallback_user", f"unknown user {fallback!r}{_hint(fallback, users)}"
        yield from self._digest_problems()
        yield from self._tls_problems()

    def _digest_problems(self) -> Iterator[tuple[str, str]]:
        """Users and peers that would be offered a digest algorithm their secret cannot answer."""
        offered = self.sip.digest_algorithms
        for i, user in enumerate(self.users):
            secret = "ha1_md5" if user.ha1_md5 is not None else "ha1_sha256"
            can = user.answerable_algorithms()
            if user.digest_algorithms is not None:
                cannot = [a for a in user.digest_algorithms if a not in can]
                if cannot:
                    yield (
                        f"users[{i}].digest_algorithms",
                        f"{secret} can only answer {can[0]}, not {', '.join(cannot)}"
                        " (give a password to offer both)",
                    )
            elif not any(a in can for a in offered):
                yield (
                    f"users[{i}].digest_algorithms",
                    f"{secret} can only answer {can[0]}, which [sip] digest_algorithms"
                    f' does not offer: set digest_algorithms = ["{can[0]}"] for this user',
                )
        for i, peer in enumerate(self.peers):
            can = _answerable(peer)
            if not any(a in can for a in offered):
                secret = "ha1_md5" if peer.ha1_md5 is not None else "ha1_sha256"
                yield (
                    "sip.digest_algorithms",
                    f"peers[{i}] ({peer.name!r}) has only {secret}, which needs"
                    f' "{can[0]}" in this list',
                )

    def _tls_problems(self) -> Iterator[tuple[str, str]]:
        """TLS listeners without a usable certificate/key, carriers with an unusable CA.

        The files are opened here (and only here) so ``check-config`` names the key
        of a missing file, an unreadable PEM or a key that does not match its
        certificate before the gateway starts; no file content is ever shown.
        """
        from gateway.transport.tls import TLSConfigError, client_context, server_context

        sip = self.sip
        listeners = [i for i, s in enumerate(sip.listen) if s.transport is Transport.TLS]
        if listeners:
            for key in ("tls_cert", "tls_key"):
                if getattr(sip, key) is None:
                    yield f"sip.{key}", f"required by the tls listener sip.listen[{listeners[0]}]"
        if sip.tls_cert is not None and sip.tls_key is not None:
            password = sip.tls_key_password
            try:
                server_context(
                    sip.tls_cert,
                    sip.tls_key,
                    None if password is None else password.get_secret_value(),
                )
            except TLSConfigError as exc:
                yield f"sip.{exc.key}", exc.message
        elif (sip.tls_cert is None) != (sip.tls_key is None) and not listeners:
            missing = "tls_key" if sip.tls_key is None else "tls_cert"
            yield f"sip.{missing}", "tls_cert and tls_key go together"
        for i, carrier in enumerate(self.carriers):
            is_tls = carrier.address.transport is Transport.TLS
            for key in ("tls_ca", "tls_server_name"):
                if getattr(carrier, key) is not None and not is_tls:
                    yield f"carriers[{i}].{key}", "only for a tls: address"
            if not is_tls:
                continue
            if not listeners:
                yield (
                    f"carriers[{i}].address",
                    "a tls: carrier needs a tls: listener in [sip] listen"
                    " (its in-dialog requests come back to it)",
                )
            if carrier.tls_ca is not None:
                try:
                    client_context(carrier.tls_ca)
                except TLSConfigError as exc:
                    yield f"carriers[{i}].{exc.key}", exc.message

    def digest_algorithms_for(self, name: str) -> tuple[DigestAlgorithmName, ...]:
        """The algorithms to offer user or peer ``name``, strongest first.

        A user's own ``digest_algorithms`` when set; otherwise ``[sip]
        digest_algorithms`` narrowed to what the stored secret can answer (a user
        kept as ``ha1_md5`` is never offered SHA-256). Unknown names get ``[sip]
        digest_algorithms``: they are challenged exactly like everyone else.
        """
        entry: _DigestCredentials | None = next((u for u in self.users if u.name == name), None)
        if entry is None:
            entry = next((p for p in self.peers if p.name == name), None)
        offered = tuple(self.sip.digest_algorithms)
        if entry is None:
            return offered
        if isinstance(entry, UserSettings) and entry.digest_algorithms is not None:
            return tuple(entry.digest_algorithms)
        can = _answerable(entry)
        return tuple(a for a in offered if a in can) or offered

    def digest_algorithms_accepted(self) -> tuple[DigestAlgorithmName, ...]:
        """Every algorithm offered to anyone (``[sip]`` plus the users' own), strongest first."""
        names = set(self.sip.digest_algorithms)
        for user in self.users:
            names.update(user.digest_algorithms or ())
        return tuple(a for a in DIGEST_ALGORITHMS if a in names)

    # -- convenience lookups for the rest of the gateway --------------------

    def carrier(self, name: str) -> CarrierSettings:
        """The carrier called *name* (KeyError if absent)."""
        for carrier in self.carriers:
            if carrier.name == name:
                return carrier
        raise KeyError(name)

    def card(self, card_id: str) -> CardSettings:
        """The card with id *card_id* (KeyError if absent)."""
        for card in self.cards:
            if card.id == card_id:
                return card
        raise KeyError(card_id)

    def user(self, name: str) -> UserSettings:
        """The user called *name* (KeyError if absent)."""
        for user in self.users:
            if user.name == name:
                return user
        raise KeyError(name)

    def pool(self, name: str) -> PoolSettings:
        """The ``[pools.NAME]`` settings of a pool (defaults when the table is absent)."""
        return self.pool_options.get(name) or PoolSettings()

    def pools(self) -> dict[str, list[CardSettings]]:
        """Cards grouped by pool, each pool ordered by priority then file order."""
        pools: dict[str, list[CardSettings]] = {}
        for card in self.cards:
            pools.setdefault(card.pool, []).append(card)
        return {name: sorted(cards, key=lambda c: c.priority) for name, cards in pools.items()}


def _duplicates(section: str, names: list[str], key: str) -> Iterator[tuple[str, str]]:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            yield (
                f"{section}[{i}].{key}",
                f"duplicate {key} {name!r} (also {section}[{seen[name]}])",
            )
        else:
            seen[name] = i


def _hint(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if not known:
        return " (none defined)"
    return f" (known: {', '.join(sorted(known))})"


# ---------------------------------------------------------------------------
# Loading and explaining
# ---------------------------------------------------------------------------


class ConfigError(Exception):
    """The configuration could not be loaded; ``messages`` has one line per problem."""

    def __init__(self, messages: list[str], *, source: Path | None = None) -> None:
        self.messages = messages
        self.source = source
        where = f"{source}: " if source is not None else ""
        super().__init__(where + "; ".join(messages))


def find_default_config(cwd: Path | None = None) -> Path | None:
    """``dialgate.toml`` in *cwd* (default: the working directory) if it exists."""
    candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_settings(path: Path | None, *, require_consent: bool = True) -> Settings:
    """Load *path* (None: embedded defaults) overlaid by ``DIALGATE_…`` variables.

    Raises ConfigError for an unreadable file, a TOML syntax error (with line and
    column) or failed validation (one ``key.path: message`` line per error), and
    when ``[policy] consent`` is not set (``require_consent``: every command that
    judges or places calls; the wallboard alone reads no policy).
    """
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                [f"cannot read config file: {exc.strerror or exc}"], source=path
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"config file is not UTF-8: {exc.reason}"], source=path) from exc
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message already reads "... (at line L, column C)".
            raise ConfigError([f"TOML syntax error: {exc}"], source=path) from exc
    token = _TOML_FILE.set(path)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(explain_errors(exc), source=path) from exc
    finally:
        _TOML_FILE.reset(token)
    if require_consent and settings.policy.consent is None:
        # No silent fallback: an operator must choose how consent is judged.
        raise ConfigError([CONSENT_MISSING], source=path)
    return settings


CONSENT_MISSING = (
    'policy.consent: required key is missing: set "dnc-only" (refuse only numbers on a'
    ' DNC list) or "require-consent" (a consent record for every call); there is no default'
)


def format_loc(loc: Sequence[int | str]) -> str:
    """``("cards", 1, "carrier")`` → ``cards[1].carrier``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES: dict[str, str] = {
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
}


def explain_errors(error: ValidationError) -> list[str]:
    """One ``key.path[index].sub: message`` line per error; input values never shown."""
    lines: list[str] = []
    for err in error.errors(include_input=False, include_url=False):
        ctx = err.get("ctx") or {}
        if err["type"] == Settings.REFERENCE_ERROR and "problems" in ctx:
            lines.extend(f"{path}: {msg}" for path, msg in ctx["problems"])
            continue
        loc = tuple(err["loc"])
        message = _MESSAGES.get(err["type"], err["msg"])
        if err["type"] == "extra_forbidden" and loc:
            message += _unknown_key_hint(loc)
        # "Value error, must be ..." → "must be ..."
        message = message.removeprefix("Value error, ")
        path = format_loc(loc)
        lines.append(f"{path}: {message}" if path else message)
    return lines


def _unknown_key_hint(loc: tuple[int | str, ...]) -> str:
    """Suggest the closest valid key for a typo at *loc*."""
    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = _model_fields(model).get(str(part))
        if field is None:
            # a dict key such as quota_profiles.<name>: _inner_model already
            # stepped from dict[str, X] to X, so the model stays as it is.
            continue
        model = _inner_model(field.annotation)
    if model is None:
        return ""
    known = list(_model_fields(model))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(known)})"


def _model_fields(model: Any) -> dict[str, Any]:
    fields = getattr(model, "model_fields", None)
    if not isinstance(fields, dict):
        return {}
    out: dict[str, Any] = {}
    for name, info in fields.items():
        out[info.alias or name] = info
    return out


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def summary(settings: Settings) -> str:
    """A one-line human summary of *settings* (used by ``check-config``)."""
    pools = settings.pools()
    parts = [
        "listen " + ", ".join(str(s) for s in settings.sip.listen),
        _count(len(settings.carriers), "carrier"),
        _count(len(settings.cards), "card") + f" in {_count(len(pools), 'pool')}",
        _count(len(settings.users), "user"),
        _count(len(settings.peers), "peer"),
        _count(len(settings.quota_profiles), "quota profile"),
        f"mqtt {settings.mqtt.url}" if settings.mqtt is not None else "mqtt off",
        f"store {settings.store.path}"
        + (f" + {settings.store.redis}" if settings.store.redis else ""),
    ]
    return "; ".join(parts)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------
# Warnings: valid but risky settings (check-config prints them; --strict refuses)
# ---------------------------------------------------------------------------

_COMMON_PASSWORDS = frozenset(
    {
        "password",
        "passw0rd",
        "12345678",
        "123456789",
        "secret",
        "s3cret",
        "changeme",
        "qwerty",
        "letmein",
        "welcome",
        "admin",
        "1234",
        "123456",
        "0000",
        "abc123",
    }
)
MIN_PASSWORD_LENGTH = 8


def _password_weakness(name: str, password: str) -> str | None:
    if password.lower() in _COMMON_PASSWORDS:
        return "is a common password"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    if name and name.lower() in password.lower():
        return "contains the user name"
    if len(set(password)) <= 2:
        return "repeats one or two characters"
    return None


def config_warnings(settings: Settings) -> list[str]:
    """``key.path: message`` for each valid but risky setting, in file order.

    All-day calling hours, quota profiles in use with neither ``calls_per_hour``
    nor ``calls_per_day`` (a card limited only by ``concurrent`` can be burnt in
    an afternoon), weak agent and dialer passwords.
    """
    out: list[str] = []
    hours = settings.policy.calling_hours
    if sum(w.end - w.start for w in hours.windows) >= 1440:
        out.append(
            f'policy.calling_hours: "{hours}" allows calls at any hour of the callee\'s day'
            " (night calls draw complaints and carrier suspensions)"
        )
    for name, profile in settings.quota_profiles.items():
        cards = [c.id for c in settings.cards if c.quota == name]
        if not cards:
            continue
        if profile.calls_per_hour is None and profile.calls_per_day is None:
            out.append(
                f"quota_profiles.{name}: no calls_per_hour or calls_per_day limit"
                f" (cards {', '.join(cards)} are limited only by"
                f" {', '.join(k for k, v in profile.model_dump().items() if v is not None) or 'nothing'})"
            )
    named: list[tuple[str, int, str, SecretStr | None]] = [
        ("users", i, u.name, u.password) for i, u in enumerate(settings.users)
    ] + [("peers", i, p.name, p.password) for i, p in enumerate(settings.peers)]
    for section, i, name, password in named:
        if password is None:
            continue
        weakness = _password_weakness(name, password.get_secret_value())
        if weakness is not None:
            out.append(f"{section}[{i}].password: weak password for {name!r}: {weakness}")
    loose = loose_directory(settings.store.path)
    if loose is not None:
        directory, mode = loose
        out.append(
            f"store.path: directory {directory} is open to other local users (mode"
            f" {mode:04o}); the database holds callee numbers, DNC and complaints:"
            f" chmod 700 {directory}"
        )
    spool_dir = settings.store.spool_dir
    loose = None if spool_dir is None else loose_directory(spool_dir / "spool")
    if loose is not None:
        directory, mode = loose
        out.append(
            f"store.spool_dir: directory {directory} is open to other local users (mode"
            f" {mode:04o}); the CDR spool holds callee numbers: chmod 700 {directory}"
        )
    key = settings.sip.tls_key
    if key is not None:
        try:
            mode = key.stat().st_mode & 0o777
        except OSError:
            mode = 0  # a missing key is an error of its own (sip.tls_key)
        if mode & 0o077:
            out.append(
                f"sip.tls_key: {key} is open to other local users (mode {mode:04o});"
                f" it is the gateway's TLS private key: chmod 600 {key}"
            )
    return out
