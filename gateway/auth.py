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

What this module must never do: let a request without verified credentials
through to the call path, tell a caller *why* its credentials failed, or log
a password, HA1 or Authorization header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import PeerSettings, Settings, UserSettings
from gateway.sip import Request
from gateway.sip.digest import Algorithm, AuthAnswer, DigestServer, Outcome, Verdict, ha1
from gateway.transport import Address

__all__ = ["AuthResult", "Authenticator", "Identity", "IdentityKind"]


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


class Authenticator:
    """Digest verification against ``[[users]]``/``[[peers]]`` plus the address rules."""

    def __init__(self, settings: Settings, digest: DigestServer) -> None:
        self.digest = digest
        self.realm = settings.sip.realm
        self.users: dict[str, UserSettings] = {u.name: u for u in settings.users}
        self.peers: dict[str, PeerSettings] = {p.name: p for p in settings.peers}
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

    def ha1_lookup(self, username: str, algorithm: Algorithm) -> str | None:
        """Stored HA1 of a user or peer (from ``password`` or ``ha1_md5``/``ha1_sha256``)."""
        entry: UserSettings | PeerSettings | None = self.users.get(username) or self.peers.get(
            username
        )
        if entry is None:
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
        verdict = self.digest.verify(
            req.method, values or None, self.ha1_lookup, now, body=req.body
        )
        if verdict.outcome is Outcome.OK and verdict.username is not None:
            identity = self._identity(verdict.username, source)
            if identity is not None:
                return AuthResult(identity, detail="ok")
            # Right password, wrong place (a peer's name from outside its
            # allow-list): answered exactly like a wrong password.
            verdict = Verdict(Outcome.FAILED, reason="address-not-allowed")
        answer = self.digest.answer(verdict, now, proxy=proxy)
        routine = verdict.outcome is Outcome.STALE or (
            verdict.outcome is Outcome.FAILED and verdict.reason == "no-credentials"
        )
        return AuthResult(
            None,
            answer,
            detail=f"digest {verdict.outcome.value}: {verdict.reason}",
            routine=routine,
        )

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
