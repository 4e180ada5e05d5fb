"""Who may use the gateway: agents, dialer peers and carriers (no open relay).

Every out-of-dialog INVITE and REGISTER is classified here before the
registrar or the B2BUA sees it:

* a request whose source is a carrier's signalling address is **inbound**
  (carrier → agent); it is never sent back out to a carrier;
* an agent (``[[users]]``) must answer a digest challenge (407 for INVITE,
  401 for REGISTER, RFC 3261 §22) and, to place calls, hold a live
  registration (an authenticated but unregistered agent gets 403);
* a dialer peer (``[[peers]]``) must come from an address in its allow-list
  *and* answer the digest challenge with its own name; the same credentials
  from another address are refused like wrong ones;
* anything else is challenged again: an unknown user, a wrong password, a
  replayed nonce and a peer's name from a foreign address all get the same
  answer, so names cannot be enumerated.

Which digest algorithms a challenge offers (``[sip] digest_algorithms``,
default MD5 only; ``[[users]] digest_algorithms`` per user) is decided per
request from the user name the request claims — the credentials' ``username``,
else the To user of a REGISTER (its AOR) or the From user of an INVITE —
strongest first (RFC 8760 §2.3). Credentials for an algorithm the user is not
offered are refused like a wrong password. Names that are not configured get
``[sip] digest_algorithms``, like everyone else.

:class:`ChallengeWatch` remembers the requests challenged per (source,
Call-ID) until an authenticated retry arrives; one that never comes (a phone
that cannot answer the challenge, e.g. baresip 1.0 facing two challenges)
becomes one ``sip.auth.abandoned`` log line.

Digest strictness: the credentials' ``uri`` must name the
Request-URI (:func:`digest_uri_matches`: compared as URIs, RFC 3261 §19.1.4
with equivalent spellings tolerated), else 400; the nonce must come from a
challenge of the credentials' algorithm and the opaque must be echoed
(:class:`~gateway.sip.digest.DigestServer`). With ``[security]
digest_uri_gateway_form`` (default on) a user-less ``uri`` naming this
gateway's own listener is accepted too: SIPp 3.6.1 hashes
``sip:<remote ip>:<port>`` whatever the Request-URI (TOOLS.md).

:attr:`AuthResult.guess` marks the refusals that count as a failed
authentication for :mod:`gateway.callpath.security` (password guessing defence).

What this module must never do: let a request without verified credentials
through to the call path, tell a caller *why* its credentials failed, or log
a password, HA1, nonce or Authorization header.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

from gateway.config import PeerSettings, Settings, UserSettings
from gateway.sip import Request
from gateway.sip.digest import (
    Algorithm,
    AuthAnswer,
    Credentials,
    DigestServer,
    Outcome,
    Verdict,
    ha1,
)
from gateway.sip.errors import AuthError, SIPError
from gateway.sip.uri import URI, unescape
from gateway.transport import Address

__all__ = [
    "AbandonedChallenge",
    "AuthResult",
    "Authenticator",
    "ChallengeWatch",
    "Identity",
    "IdentityKind",
    "digest_uri_matches",
    "server_algorithms",
]

_DEFAULT_PORTS = {"sip": 5060, "sips": 5061}
_NOT_GUESSES = frozenset({"no-credentials", "bad-nonce"})


def _host_key(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def digest_uri_matches(
    request_uri: URI,
    digest_uri: str,
    *,
    local: Callable[[URI], bool] | None = None,
) -> bool:
    """True when the digest ``uri`` names the Request-URI's resource.

    RFC 3261 §22.4 / RFC 2617 §3.2.2.5: the ``uri`` of the credentials must
    be the Request-URI. Compared as URIs (RFC 3261 §19.1.4), tolerating
    spellings that name the same resource: scheme and host case, escaped user
    characters, an explicit default port (5060/5061) against none, parameters
    present on one side only, URI headers. With ``local`` (the gateway's own
    addresses), a user-less ``uri`` naming this gateway is accepted too: the
    form SIPp 3.6.1 sends for every request.
    """
    if digest_uri == str(request_uri):
        return True
    try:
        theirs = URI.parse(digest_uri)
    except SIPError:
        return False
    ours = request_uri
    if not (theirs.is_sip and ours.is_sip):
        return theirs.scheme == ours.scheme and (theirs.opaque or "") == (ours.opaque or "")
    if local is not None and theirs.user is None and local(theirs):
        return True
    if theirs.scheme != ours.scheme:
        return False
    if unescape(theirs.user or "") != unescape(ours.user or ""):
        return False
    if _host_key(theirs.host) != _host_key(ours.host):
        return False
    default = _DEFAULT_PORTS[ours.scheme]
    if (theirs.port or default) != (ours.port or default):
        return False
    # §19.1.4: parameters in both URIs must agree; ones present on one side only
    # are tolerated (a phone that hashes the Request-URI without ;transport=).
    mine = {unescape(n).lower(): (v or "").lower() for n, v in ours.params}
    for name, value in theirs.params:
        key = unescape(name).lower()
        if key in mine and mine[key] != (value or "").lower():
            return False
    return True


def server_algorithms(settings: Settings) -> tuple[Algorithm, ...]:
    """Every algorithm the digest server must accept: ``[sip]`` plus users' own, strongest first."""
    return tuple(Algorithm.parse(name) for name in settings.digest_algorithms_accepted())


class IdentityKind(StrEnum):
    """What kind of party sent a request."""

    AGENT = "agent"
    DIALER = "dialer"
    CARRIER = "carrier"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or, for carriers, address-identified) party."""

    kind: IdentityKind
    name: str
    campaign: str | None = None
    card: str | None = None


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Either ``identity`` (accepted) or ``answer`` (send it: 400/401/407/403).

    ``routine`` marks the challenges of the normal call flow — a request
    without credentials, or credentials for a stale nonce — as opposed to a
    refusal (wrong password, unknown user, malformed credentials).
    """

    identity: Identity | None
    answer: AuthAnswer | None = None
    detail: str = ""
    routine: bool = False
    user: str = ""
    algorithms: tuple[Algorithm, ...] = ()
    guess: bool = False
    """True for a refusal that counts as a failed authentication (a possible
    password guess): not a request without credentials, not a stale nonce,
    not a nonce this process never issued (a phone after our restart)."""


class Authenticator:
    """Digest verification against ``[[users]]``/``[[peers]]`` plus the address rules."""

    def __init__(self, settings: Settings, digest: DigestServer) -> None:
        self.digest = digest
        self.realm = settings.sip.realm
        # Set by the gateway (its own listeners): SIPp's user-less digest uri.
        self.local_uri: Callable[[URI], bool] | None = None
        self.uri_gateway_form = settings.security.digest_uri_gateway_form
        self.strict_uri = settings.security.digest_uri_check
        self.users: dict[str, UserSettings] = {u.name: u for u in settings.users}
        self.peers: dict[str, PeerSettings] = {p.name: p for p in settings.peers}
        # Offered per user/peer (strongest first); anyone else gets the default.
        accepted = set(digest.algorithms)
        self.default_algorithms = tuple(
            a for a in (Algorithm.parse(n) for n in settings.sip.digest_algorithms) if a in accepted
        ) or tuple(digest.algorithms)
        self._algorithms: dict[str, tuple[Algorithm, ...]] = {}
        for name in [*self.users, *self.peers]:
            offer = tuple(
                a
                for a in (Algorithm.parse(n) for n in settings.digest_algorithms_for(name))
                if a in accepted
            )
            self._algorithms[name] = offer or self.default_algorithms
        # Everyone offered the same: no need to read the claimed name before verifying.
        self._uniform = all(o == self.default_algorithms for o in self._algorithms.values())
        self._carriers: dict[tuple[str, int], str] = {}
        self._carrier_hosts: dict[str, str] = {}
        for carrier in settings.carriers:
            addr = carrier.address
            self._carriers[(addr.ip, addr.port)] = carrier.name
            if addr.transport.value == "tcp":
                # A TCP carrier connects from an ephemeral port: match its host.
                self._carrier_hosts[addr.ip] = carrier.name

    def carrier_at(self, source: Address) -> str | None:
        """The carrier whose signalling address ``source`` is, if any."""
        name = self._carriers.get((source[0], source[1]))
        if name is None:
            name = self._carrier_hosts.get(source[0])
        return name

    def algorithms_for(self, name: str | None) -> tuple[Algorithm, ...]:
        """The algorithms offered to ``name`` (strongest first); the default for anyone else."""
        if name is None:
            return self.default_algorithms
        return self._algorithms.get(name, self.default_algorithms)

    def ha1_lookup(self, username: str, algorithm: Algorithm) -> str | None:
        """Stored HA1 of a user or peer (from ``password`` or ``ha1_md5``/``ha1_sha256``).

        None for an algorithm this user is not offered: such credentials fail
        like an unknown user's.
        """
        entry: UserSettings | PeerSettings | None = self.users.get(username) or self.peers.get(
            username
        )
        if entry is None or algorithm.base not in self.algorithms_for(username):
            return None
        if entry.password is not None:
            return ha1(username, self.realm, entry.password.get_secret_value(), algorithm)
        if algorithm is Algorithm.MD5 and entry.ha1_md5 is not None:
            return entry.ha1_md5.get_secret_value().lower()
        if algorithm is Algorithm.SHA256 and entry.ha1_sha256 is not None:
            return entry.ha1_sha256.get_secret_value().lower()
        return None

    def verify(self, req: Request, source: Address, now: float, *, proxy: bool) -> AuthResult:
        """Check the request's credentials; ``proxy`` selects 407/Proxy-Authorization."""
        header = "Proxy-Authorization" if proxy else "Authorization"
        values = req.headers.get_all(header)
        claimed: str | None = None
        offer = self.default_algorithms
        verdict: Verdict | None = None
        if not self._uniform:
            claimed, claimed_algorithm = self._claimed(req, values)
            offer = self.algorithms_for(claimed)
            if claimed_algorithm is not None and claimed_algorithm.base not in offer:
                # Credentials for an algorithm this user is not offered (an
                # ha1_md5 user answering SHA-256): refused, and challenged
                # again with what it is offered.
                verdict = Verdict(Outcome.FAILED, reason="algorithm-not-offered")
        if verdict is None:
            matches: Callable[[str], bool] | None = None
            if self.strict_uri:
                local = self.local_uri if self.uri_gateway_form else None
                matches = partial(digest_uri_matches, req.uri, local=local)
            verdict = self.digest.verify(
                req.method, values or None, self.ha1_lookup, now, body=req.body, uri_matches=matches
            )
        if verdict.outcome is Outcome.OK and verdict.username is not None:
            identity = self._identity(verdict.username, source)
            if identity is not None:
                return AuthResult(identity, detail="ok", user=verdict.username, algorithms=offer)
            # Right password, wrong place (a peer's name from outside its
            # allow-list): answered exactly like a wrong password.
            verdict = Verdict(Outcome.FAILED, reason="address-not-allowed")
        if claimed is None:
            claimed, _ = self._claimed(req, values)
        answer = self.digest.answer(verdict, now, proxy=proxy, algorithms=offer)
        routine = verdict.outcome is Outcome.STALE or (
            verdict.outcome is Outcome.FAILED and verdict.reason == "no-credentials"
        )
        return AuthResult(
            None,
            answer,
            detail=f"digest {verdict.outcome.value}: {verdict.reason}",
            routine=routine,
            user=claimed or "",
            algorithms=offer,
            guess=not routine and verdict.reason not in _NOT_GUESSES,
        )

    def _claimed(self, req: Request, values: Sequence[str]) -> tuple[str | None, Algorithm | None]:
        """The user name a request claims, and the algorithm of its credentials for our realm.

        From the credentials when they parse; else the To user of a REGISTER
        (the AOR being registered) or the From user of any other request.
        Never raises: a malformed header is the digest server's to answer.
        """
        for value in values:
            try:
                creds = Credentials.parse(value)
            except AuthError:
                continue
            if creds.realm == self.realm:
                return creds.username, creds.effective_algorithm
        try:
            uri = req.to.uri if req.method == "REGISTER" else req.from_.uri
        except SIPError:
            return None, None
        return uri.user, None

    def _identity(self, username: str, source: Address) -> Identity | None:
        user = self.users.get(username)
        if user is not None:
            return Identity(IdentityKind.AGENT, user.name, user.campaign, user.card)
        peer = self.peers.get(username)
        if peer is not None and _address_allowed(source[0], peer):
            return Identity(IdentityKind.DIALER, peer.name, peer.campaign, None)
        return None


def _address_allowed(host: str, peer: PeerSettings) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in peer.addresses)


# --------------------------------------------------------------------------
# Clients that give up after a challenge
# --------------------------------------------------------------------------

GIVE_UP_AFTER = 32.0
"""Seconds after its first challenge an unanswered (source, Call-ID) counts as abandoned.

why: 64·T1 (32 s with T1 = 500 ms) is how long RFC 3261 §17.1.1.2/§17.1.2.2
lets a client transaction live (Timer B/F); a phone that has not retried
with credentials by then has given up.
"""

MAX_WATCHED = 4096
"""Challenged (source, Call-ID) pairs remembered at once (oldest forgotten first)."""


@dataclass(frozen=True, slots=True)
class AbandonedChallenge:
    """A challenged request whose authenticated retry never came (for one log line).

    Holds nothing secret: no nonce, no credentials — the user name the request
    claimed, its User-Agent, the methods challenged, the algorithms offered and
    why the last attempt was refused (``no-credentials``, ``wrong-response``…).
    """

    source: Address
    transport: str
    call_id: str
    user: str
    user_agent: str
    methods: tuple[str, ...]
    algorithms: tuple[str, ...]
    challenges: int
    last: str
    first_at: float


@dataclass(slots=True)
class _Watched:
    user: str
    user_agent: str
    methods: list[str]
    algorithms: tuple[str, ...]
    challenges: int
    last: str
    first_at: float


def _watch_key(req: Request, source: Address, transport: str) -> tuple[str, str, int, str]:
    """A challenged request's entry: its transport, source and Call-ID."""
    return (transport, source[0], source[1], _short(req.headers.get("Call-ID") or "", 200))


@dataclass(slots=True)
class ChallengeWatch:
    """Challenged requests per (transport, source, Call-ID) until an authenticated retry.

    Sans-IO: the caller passes ``now`` (a monotonic clock) and logs what
    :meth:`expired` returns. Memory is bounded by ``max_entries``: beyond it
    the oldest entry is forgotten and counted in :attr:`forgotten`.
    """

    give_up_after: float = GIVE_UP_AFTER
    max_entries: int = MAX_WATCHED
    forgotten: int = 0
    abandoned: int = 0
    _entries: OrderedDict[tuple[str, str, int, str], _Watched] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    def challenged(
        self,
        req: Request,
        source: Address,
        transport: str,
        result: AuthResult,
        now: float,
    ) -> None:
        """A 401/407 (or 400) was sent for ``req``: remember it until the retry succeeds."""
        key = _watch_key(req, source, transport)
        entry = self._entries.get(key)
        reason = result.detail.rpartition(": ")[2] or result.detail
        if entry is None:
            entry = _Watched(
                user=_short(result.user, 64),
                user_agent=_short(req.headers.get("User-Agent") or "", 100),
                methods=[],
                algorithms=tuple(a.value for a in result.algorithms),
                challenges=0,
                last=reason,
                first_at=now,
            )
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.forgotten += 1
        entry.challenges += 1
        entry.last = reason
        if result.user and not entry.user:
            entry.user = _short(result.user, 64)
        if req.method not in entry.methods and len(entry.methods) < 8:
            entry.methods.append(req.method)

    def awaits(self, req: Request, source: Address, transport: str) -> bool:
        """Whether this (source, Call-ID) was challenged and has not authenticated yet."""
        if not self._entries:
            return False
        return _watch_key(req, source, transport) in self._entries

    def authenticated(self, req: Request, source: Address, transport: str) -> None:
        """The retry came with good credentials: this (source, Call-ID) did not give up."""
        if self._entries:
            self._entries.pop(_watch_key(req, source, transport), None)

    def expired(self, now: float) -> list[AbandonedChallenge]:
        """Entries challenged ``give_up_after`` seconds ago or more, removed and returned."""
        out: list[AbandonedChallenge] = []
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry.first_at < self.give_up_after:
                break
            del entries[key]
            transport, host, port, call_id = key
            out.append(
                AbandonedChallenge(
                    source=(host, port),
                    transport=transport,
                    call_id=call_id,
                    user=entry.user,
                    user_agent=entry.user_agent,
                    methods=tuple(entry.methods),
                    algorithms=entry.algorithms,
                    challenges=entry.challenges,
                    last=entry.last,
                    first_at=entry.first_at,
                )
            )
        self.abandoned += len(out)
        return out


def _short(text: str, limit: int) -> str:
    """At most ``limit`` printable characters (control characters replaced): safe to log."""
    head = text[:limit]
    if head.isprintable():  # nearly always: no copy made
        return head
    return "".join(ch if ch.isprintable() else "?" for ch in head)
