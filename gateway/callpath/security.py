"""Password-guessing and flood defence, in one place (after Kamailio's pike and fail2ban).

:class:`Guard` is sans-clock bookkeeping: every call takes ``now`` (wall-clock
seconds, so bans can be stored and read by another process) and returns what
the caller should do; the SIP element (:mod:`gateway.callpath.element`) does
the sending, the holding back and the publishing.

* **Failed authentications** (:meth:`Guard.auth_failed`) are counted per
  source address and per user name over ``[security] window``. From
  ``delay_after`` failures of a source every refusal it gets is held back
  ``delay`` seconds (a tarpit: the caller schedules the answer, it never
  blocks); at ``ban_after`` the source is banned.
* **Per user** failures from every source only ever *slow* the failed
  attempts for that name (``user_delay_after``): a stranger guessing an
  agent's password from elsewhere cannot lock the agent out — its right
  password from its own address is answered at once. Every name is counted
  alike, configured or not, so the delay tells nothing about which names exist.
* **Flood control** (:meth:`Guard.admit`, called for every request): more
  than ``flood_requests`` requests within ``flood_window`` seconds from one
  source ban it too (not for the addresses of a ``[[peers]]`` allow-list: a
  trusted dialer's call rate is its job).
* **IPv6** sources are counted and banned per ``/ipv6_prefix`` (64 by
  default, :func:`source_key`): a host can change address within its /64 at will.
* **Bans** last ``ban_time`` seconds, doubled for every further ban of the
  same source within ``ban_memory``, up to ``ban_time_max``. A banned source
  gets nothing (``ban_answer = "drop"``) or a 403; its requests are counted.
  New bans are queued for the caller (:meth:`Guard.drain_new_bans`: an alert,
  a log line, the ban file).
* **The ban list** is shared with the CLI through :class:`BanFile`, a small
  JSON file next to the SQLite database (``<database>.bans.json``, 0600,
  written under an ``flock``): the gateway writes every new ban there and
  adopts the file when it changes (:meth:`Guard.adopt`), so ``dialgate
  security bans --clear ADDR`` takes effect in a running gateway within a
  second, and bans survive a restart.

Exempt: the ``[security] exempt`` networks (``trusted`` hosts given to the
guard) and, decided by the gateway, the carriers' signalling addresses (a
carrier never authenticates, and a busy trunk must never be banned as a
flood). Loopback is *not* exempt by default.

What this module must never do: block or sleep, grow without bound (sources,
user names and bans are capped), count a request twice, or hold a secret —
it sees addresses, user names and counts only.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import math
import os
import tempfile
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.config import BanAnswer, SecuritySettings, Settings

__all__ = [
    "Admission",
    "Ban",
    "BanFile",
    "Guard",
    "SecurityStats",
    "ban_file_path",
    "guard_from_settings",
    "metric_families",
    "normalize_address",
    "source_key",
]

MAX_USERS = 10_000
"""User names whose failures are remembered at once (oldest forgotten first)."""

MAX_BANS = 100_000
"""Bans kept at once; beyond it the one that ends soonest is dropped."""

MAX_OFFENCES = 2 * MAX_BANS
"""Past offences remembered at once (for the doubling ban time); oldest forgotten first.

:meth:`Guard.expire` forgets them after ``ban_memory``; this bounds them in between
(addresses that each got one ban, e.g. a scan over many IPv6 networks)."""


class Admission(StrEnum):
    """What to do with a request, decided before anything else looks at it."""

    ALLOW = "allow"
    DROP = "drop"  # banned: answer nothing
    REFUSE = "refuse"  # banned: answer 403 (``ban_answer = "403"``)


@dataclass(frozen=True, slots=True)
class Ban:
    """One banned source address, until ``until`` (epoch seconds)."""

    address: str
    since: float
    until: float
    reason: str  # "auth-failures" | "flood"
    count: int  # failures or requests that led to it
    offence: int = 1  # the how-many-th ban of this address (escalation)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the ban file's and the admin API's shape, times as epoch seconds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ban:
        """From :meth:`as_dict`; ValueError/KeyError/TypeError on anything else."""
        return cls(
            address=normalize_address(str(data["address"])),
            since=float(data["since"]),
            until=float(data["until"]),
            reason=str(data.get("reason", "")),
            count=int(data.get("count", 0)),
            offence=int(data.get("offence", 1)),
        )


@dataclass(slots=True)
class SecurityStats:
    """Counters for ``/metrics`` and the ``gateway.stats`` line."""

    auth_failures: int = 0
    delayed: int = 0
    bans: int = 0
    flood_bans: int = 0
    blocked: int = 0
    cleared: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready snapshot."""
        return {
            "auth_failures": self.auth_failures,
            "delayed": self.delayed,
            "bans": self.bans,
            "flood_bans": self.flood_bans,
            "blocked": self.blocked,
            "cleared": self.cleared,
        }


@dataclass(slots=True)
class _Source:
    failures: deque[float] = field(default_factory=deque)
    flood_start: float = -math.inf
    flood_count: int = 0


def normalize_address(text: str) -> str:
    """The canonical text of an IP address (``[::1]`` → ``::1``) or network
    (``2001:db8::/64``); ValueError if neither."""
    text = text.strip()
    if "/" in text:
        return str(ipaddress.ip_network(text, strict=False))
    return str(ipaddress.ip_address(text.strip("[]")))


def source_key(host: str, ipv6_prefix: int = 64) -> str:
    """What a source is counted and banned as: an IPv4 address, or its IPv6 /``ipv6_prefix``.

    why: an IPv6 host usually holds a whole /64 and can change address at will,
    so per-address counting would let it guess forever (fail2ban's advice too).
    A host that is not an IP address is its own key.
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if ip.version == 6 and ipv6_prefix < 128:
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip)


class Guard:
    """The counting and banning state of one gateway process (see the module docstring)."""

    def __init__(
        self,
        settings: SecuritySettings,
        *,
        trusted: Iterable[str] = (),
        flood_exempt: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self.settings = settings
        self.stats = SecurityStats()
        self._exempt_nets = list(settings.exempt)
        self._flood_nets = list(flood_exempt)
        self._flood_cache: dict[str, bool] = {}
        self._trusted = set()
        for host in trusted:
            with contextlib.suppress(ValueError):
                self._trusted.add(normalize_address(host))
        self._exempt_cache: dict[str, bool] = {}
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._users: OrderedDict[str, deque[float]] = OrderedDict()
        self._bans: dict[str, Ban] = {}
        self._offences: dict[str, tuple[int, float]] = {}  # address -> (bans so far, last until)
        self._new: list[Ban] = []
        self._keys: dict[str, str] = {}

    def key(self, host: str) -> str:
        """The counting and banning key of ``host`` (:func:`source_key`, cached)."""
        found = self._keys.get(host)
        if found is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            found = self._keys[host] = source_key(host, self.settings.ipv6_prefix)
        return found

    # -- questions -------------------------------------------------------------------

    def exempt(self, host: str) -> bool:
        """True for a carrier's address or one in ``[security] exempt``."""
        cached = self._exempt_cache.get(host)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            result = False
        else:
            result = str(ip) in self._trusted or any(ip in net for net in self._exempt_nets)
        if len(self._exempt_cache) > 4096:
            self._exempt_cache.clear()
        self._exempt_cache[host] = result
        return result

    def flood_exempt(self, host: str) -> bool:
        """True for an address of a ``[[peers]]`` allow-list: a dialer's rate is its job."""
        if not self._flood_nets:
            return False
        cached = self._flood_cache.get(host)
        if cached is None:
            try:
                ip = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                cached = False
            else:
                cached = any(ip in net for net in self._flood_nets)
            if len(self._flood_cache) > 4096:
                self._flood_cache.clear()
            self._flood_cache[host] = cached
        return cached

    def banned(self, host: str, now: float) -> Ban | None:
        """The ban in force for ``host`` (or its IPv6 network), if any."""
        ban = self._bans.get(self.key(host))
        if ban is None or ban.until > now:
            return ban
        return None

    @property
    def pending(self) -> bool:
        """True when bans wait in :meth:`drain_new_bans`."""
        return bool(self._new)

    def drain_new_bans(self) -> list[Ban]:
        """Bans made since the last call (for the alert, the log line and the ban file)."""
        out, self._new = self._new, []
        return out

    def active(self, now: float) -> list[Ban]:
        """Every ban in force, soonest to end first."""
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: b.until)

    # -- per request -----------------------------------------------------------------

    def admit(self, host: str, now: float) -> Admission:
        """Every request passes here first: banned → DROP/REFUSE (counted); count for flood control."""
        if not self.settings.enabled:
            return Admission.ALLOW
        ip = host
        host = self.key(ip)
        ban = self._bans.get(host)
        if ban is not None:
            if ban.until > now:
                self.stats.blocked += 1
                return (
                    Admission.REFUSE
                    if self.settings.ban_answer is BanAnswer.FORBIDDEN
                    else Admission.DROP
                )
            del self._bans[host]
        if self.exempt(ip) or self.flood_exempt(ip):
            return Admission.ALLOW
        src = self._source(host)
        s = self.settings
        if now - src.flood_start >= s.flood_window:
            src.flood_start = now
            src.flood_count = 0
        src.flood_count += 1
        if src.flood_count > s.flood_requests:
            self._ban(host, now, "flood", src.flood_count)
            self.stats.flood_bans += 1
            self.stats.blocked += 1
            return Admission.DROP
        return Admission.ALLOW

    def auth_failed(self, host: str, user: str, now: float) -> float | None:
        """A failed authentication from ``host`` claiming ``user``.

        Returns the seconds to hold the refusal back (0.0: answer at once), or
        None when this failure banned the source (answer nothing).
        """
        s = self.settings
        if not s.enabled or self.exempt(host):
            return 0.0
        self.stats.auth_failures += 1
        host = self.key(host)
        src = self._source(host)
        failures = _count(src.failures, now, s.window, s.ban_after)
        user_failures = 0
        if user:
            times = self._users.get(user)
            if times is None:
                times = self._users[user] = deque()
                while len(self._users) > MAX_USERS:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(user)
            user_failures = _count(times, now, s.window, s.user_delay_after)
        if failures >= s.ban_after:
            self._ban(host, now, "auth-failures", failures)
            return None
        if failures >= s.delay_after or user_failures >= s.user_delay_after:
            self.stats.delayed += 1
            return s.delay
        return 0.0

    def hold(self, host: str, now: float) -> float:
        """Seconds to hold back a routine challenge to ``host`` (a source past ``delay_after``)."""
        s = self.settings
        if not s.enabled:
            return 0.0
        src = self._sources.get(self.key(host))
        if src is None or not src.failures:
            return 0.0
        while src.failures and now - src.failures[0] > s.window:
            src.failures.popleft()
        if len(src.failures) >= s.delay_after:
            self.stats.delayed += 1
            return s.delay
        return 0.0

    # -- the ban list ----------------------------------------------------------------

    def unban(self, host: str) -> Ban | None:
        """Lift the ban of ``host`` (an address, or its IPv6 network) and forget its failures and
        past bans; the ban, if any."""
        if host not in self._bans:
            host = self.key(host)
        ban = self._bans.pop(host, None)
        self._sources.pop(host, None)
        self._offences.pop(host, None)
        if ban is not None:
            self.stats.cleared += 1
        return ban

    def unban_all(self) -> int:
        """Lift every ban; how many were in force (expired ones are not counted)."""
        hosts = list(self._bans)
        n = 0
        for host in hosts:
            if self.unban(host) is not None:
                n += 1
        return n

    def adopt(self, bans: Mapping[str, Ban], now: float) -> tuple[list[Ban], list[Ban]]:
        """Make the ban list what the ban file says: (adopted, cleared).

        A ban we hold that the file no longer has was cleared by an operator
        (CLI); one the file has that we do not (written before a restart, or
        by another process) is adopted.
        """
        cleared = [b for host, b in list(self._bans.items()) if host not in bans and b.until > now]
        for ban in cleared:
            self.unban(ban.address)
        adopted: list[Ban] = []
        for host, ban in bans.items():
            if ban.until <= now:
                continue
            mine = self._bans.get(host)
            if mine is None or mine.until < ban.until:
                self._bans[host] = ban
                self._offences[host] = (max(ban.offence, 1), ban.until)
                if mine is None:
                    adopted.append(ban)
        self._cap_bans(now)
        return adopted, cleared

    def expire(self, now: float) -> list[Ban]:
        """Drop ended bans and forgotten offences; the bans that ended."""
        ended = [b for b in self._bans.values() if b.until <= now]
        for ban in ended:
            del self._bans[ban.address]
        memory = self.settings.ban_memory
        for host, (_, until) in list(self._offences.items()):
            if now - until > memory and host not in self._bans:
                del self._offences[host]
        return ended

    # -- internals -------------------------------------------------------------------

    def _source(self, host: str) -> _Source:
        src = self._sources.get(host)
        if src is None:
            src = self._sources[host] = _Source()
            while len(self._sources) > self.settings.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(host)
        return src

    def _ban(self, host: str, now: float, reason: str, count: int) -> Ban:
        s = self.settings
        offence = 1
        previous = self._offences.get(host)
        if previous is not None and now - previous[1] <= s.ban_memory:
            offence = previous[0] + 1
        duration = min(s.ban_time * 2 ** min(offence - 1, 40), s.ban_time_max)
        ban = Ban(host, now, now + duration, reason, count, offence)
        self._bans[host] = ban
        self._offences.pop(host, None)  # re-inserted last: the dict is oldest first
        self._offences[host] = (offence, ban.until)
        while len(self._offences) > MAX_OFFENCES:
            del self._offences[next(iter(self._offences))]
        self._sources.pop(host, None)  # counting starts afresh after the ban
        self._new.append(ban)
        self.stats.bans += 1
        self._cap_bans(now)
        return ban

    def _cap_bans(self, now: float) -> None:
        if len(self._bans) <= MAX_BANS:
            return
        self.expire(now)
        for ban in sorted(self._bans.values(), key=lambda b: b.until)[: len(self._bans) - MAX_BANS]:
            del self._bans[ban.address]


def _count(times: deque[float], now: float, window: float, keep: int) -> int:
    """Add ``now`` to ``times``, drop entries older than ``window``; how many remain.

    At most ``keep`` entries are kept: only "at least N" is ever asked.
    """
    times.append(now)
    while times and now - times[0] > window:
        times.popleft()
    while len(times) > keep:
        times.popleft()
    return len(times)


# --------------------------------------------------------------------------
# The ban file: shared by the gateway, the CLI and a restart
# --------------------------------------------------------------------------


def ban_file_path(settings: Settings) -> Path:
    """``<database>.bans.json`` next to the SQLite database."""
    db = settings.store.path
    return db.with_name(db.name + ".bans.json")


class BanFile:
    """The ban list on disk (JSON, 0600), read-modify-written under an ``flock``.

    ``{"v": 1, "bans": [Ban.as_dict(), ...]}``. A missing or unreadable file
    is an empty list (logged by the caller); writes go to a temporary file
    renamed over the old one, so a reader never sees half a list.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        """True when the file differs from what this object last read or wrote."""
        return self._stat() != self._seen

    def load(self) -> dict[str, Ban]:
        """Every ban in the file (ended ones included), by address; {} with no file."""
        if not self.path.exists():
            self._seen = None
            return {}
        with self._locked():
            bans = self._read()
            self._seen = self._stat()
        return bans

    def update(self, change: Callable[[dict[str, Ban]], object], now: float) -> dict[str, Ban]:
        """Read, apply ``change`` (in place), drop ended bans, write back; the new list."""
        with self._locked():
            bans = self._read()
            change(bans)
            bans = {k: b for k, b in bans.items() if b.until > now}
            self._write(bans)
            self._seen = self._stat()
        return bans

    @contextlib.contextmanager
    def _locked(self) -> Any:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Ban]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        out: dict[str, Ban] = {}
        for item in data.get("bans", []) if isinstance(data, dict) else []:
            try:
                ban = Ban.from_dict(item)
            except (KeyError, TypeError, ValueError):
                continue
            out[ban.address] = ban
        return out

    def _write(self, bans: Mapping[str, Ban]) -> None:
        body = json.dumps(
            {"v": 1, "bans": [b.as_dict() for b in sorted(bans.values(), key=lambda b: b.until)]},
            indent=1,
        )
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


_METRICS = (
    ("dialgate_security_bans_total", "Sources banned (guessing or flood)", "bans"),
    ("dialgate_security_flood_bans_total", "Sources banned for a flood", "flood_bans"),
    (
        "dialgate_security_blocked_requests_total",
        "Requests from banned sources, answered with nothing or 403",
        "blocked",
    ),
    (
        "dialgate_security_auth_failures_total",
        "Failed authentications counted for the guessing defence",
        "auth_failures",
    ),
    (
        "dialgate_security_delayed_answers_total",
        "Answers held back by the guessing tarpit",
        "delayed",
    ),
    ("dialgate_security_unbans_total", "Bans lifted by an operator", "cleared"),
)


def metric_families(guard: Guard, now: float) -> list[Metric]:
    """The ``dialgate_security_*`` families for ``/metrics`` (counters and the ban gauge)."""
    stats = guard.stats.as_dict()
    out: list[Metric] = []
    for name, text, key in _METRICS:
        out.append(CounterMetricFamily(name, text, value=float(stats[key])))
    out.append(
        GaugeMetricFamily(
            "dialgate_security_banned_sources",
            "Sources banned right now",
            value=float(len(guard.active(now))),
        )
    )
    return out


def guard_from_settings(settings: Settings) -> Guard:
    """The guard for a gateway, from ``[security]``.

    Carriers are exempted by the gateway itself, by their signalling address
    (host *and* port for UDP, like :meth:`gateway.callpath.auth.Authenticator.carrier_at`):
    trusting a carrier's whole host would exempt every phone on it too. The
    ``[[peers]]`` allow-lists are exempt from flood control only (a dialer
    sends many calls by design); their failed authentications still count.
    """
    peers = [net for peer in settings.peers for net in peer.addresses]
    return Guard(settings.security, flood_exempt=peers)
