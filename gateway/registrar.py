"""The registrar of RFC 3261 §10.3: agents' bindings (AOR → contacts) with expiry.

The gateway's agents (``[[users]]``) REGISTER here after digest authentication
(done by :mod:`gateway.auth` before a request reaches this module). A binding
keeps, besides the Contact URI, the *flow* the REGISTER arrived on — source
address and transport — so calls to an agent behind NAT are sent to the
address its packets come from (RFC 3581 ``rport``/``received`` behaviour; the
Contact's host may be a private address the gateway cannot reach).

Rules applied (RFC 3261 §10.3, numbered as there):

* step 5: the To header must be a sip/sips AOR (``check_request(role=
  "registrar")`` already answers 400 otherwise); the AOR's user must be the
  authenticated user (403 otherwise: one agent cannot register another);
* step 6: ``Contact: *`` is allowed only with ``Expires: 0`` and as the only
  Contact (400 otherwise); it removes every binding of the AOR whose Call-ID
  differs or whose CSeq is lower;
* step 7: per contact, the expiry is the ``expires`` param, else the Expires
  header, else the default; below :attr:`Registrar.min_expires` (and not 0)
  → 423 Interval Too Brief with Min-Expires; above the maximum it is reduced;
  a REGISTER of an existing binding with the same Call-ID and a CSeq not
  higher than the stored one is out of order and ignored (500 per the RFC
  would confuse softphones, so the binding is just left as it is);
* step 8: the 200 lists every current binding with its remaining expiry.

Bindings live in memory only. Persisting them across a restart was considered
and left out: softphones refresh their registration well within an hour and
re-register at once after an unanswered refresh, so a restart costs at most
one refresh interval for *inbound* calls; outbound calls need no binding to
be found (only a valid registration, re-established by the next refresh).

This module must never do I/O, read a clock (``now`` is passed in), or log
credentials; it never answers anything itself — it returns the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sip import Request
from gateway.sip.errors import SIPError
from gateway.sip.headers import NameAddr
from gateway.sip.uri import URI
from gateway.transport import Address

__all__ = ["Binding", "RegisterAnswer", "Registrar"]

DEFAULT_EXPIRES = 3600
MIN_EXPIRES = 60
MAX_EXPIRES = 7200
MAX_CONTACTS = 10


@dataclass(slots=True)
class Binding:
    """One contact of an AOR, with the flow it registered from."""

    contact: URI
    expires_at: float
    call_id: str
    cseq: int
    source: Address
    transport: str
    q: str | None = None

    def remaining(self, now: float) -> int:
        """Whole seconds left (never negative)."""
        return max(int(self.expires_at - now + 0.5), 0)


@dataclass(frozen=True, slots=True)
class RegisterAnswer:
    """The response the registrar wants sent: status, reason and extra headers."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Registrar:
    """Bindings of every AOR (keyed by the user part, lower-cased)."""

    min_expires: int = MIN_EXPIRES
    max_expires: int = MAX_EXPIRES
    default_expires: int = DEFAULT_EXPIRES
    max_contacts: int = MAX_CONTACTS
    _bindings: dict[str, list[Binding]] = field(default_factory=dict)

    def register(
        self, req: Request, user: str, source: Address, transport: str, now: float
    ) -> RegisterAnswer:
        """Apply one authenticated REGISTER from ``user``; return the answer to send."""
        try:
            aor = req.to.uri
        except SIPError as err:
            return RegisterAnswer(400, None, (("Warning", f'399 dialgate "{err.detail}"'),))
        if aor.scheme not in ("sip", "sips") or not aor.user:
            return RegisterAnswer(400, "Bad AOR")
        if aor.user.lower() != user.lower():
            # §10.3 step 3/5: the authenticated identity must own the AOR.
            return RegisterAnswer(403, "Not Your AOR")
        key = user.lower()
        self._expire(key, now)
        call_id = req.call_id
        cseq = req.cseq.seq
        try:
            header_expires = req.expires
            contacts = req.contact
            star = req.contact_star
        except SIPError as err:
            return RegisterAnswer(400, None, (("Warning", f'399 dialgate "{err.detail}"'),))
        if star:
            # §10.3 step 6: "*" only with Expires: 0 and no other Contact.
            if header_expires != 0 or len(req.headers.values("Contact")) != 1:
                return RegisterAnswer(400, "Invalid Contact *")
            kept = [
                b for b in self._bindings.get(key, []) if b.call_id == call_id and b.cseq >= cseq
            ]
            self._store(key, kept)
            return self._ok(key, now)
        wanted: list[tuple[NameAddr, int]] = []
        for contact in contacts:
            expires = contact.expires
            if expires is None:
                expires = header_expires if header_expires is not None else self.default_expires
            if 0 < expires < self.min_expires:
                # §10.3 step 7: 423 with Min-Expires.
                return RegisterAnswer(
                    423, "Interval Too Brief", (("Min-Expires", str(self.min_expires)),)
                )
            wanted.append((contact, min(expires, self.max_expires)))
        current = list(self._bindings.get(key, []))
        for contact, expires in wanted:
            existing = next((b for b in current if _same_uri(b.contact, contact.uri)), None)
            if existing is not None and existing.call_id == call_id and existing.cseq >= cseq:
                continue  # §10.3 step 7: out-of-order request for this binding
            if existing is not None:
                current.remove(existing)
            if expires == 0:
                continue
            current.append(
                Binding(
                    contact=contact.uri,
                    expires_at=now + expires,
                    call_id=call_id,
                    cseq=cseq,
                    source=source,
                    transport=transport,
                    q=contact.param("q"),
                )
            )
        if len(current) > self.max_contacts:
            return RegisterAnswer(403, "Too Many Contacts")
        self._store(key, current)
        return self._ok(key, now)

    def lookup(self, user: str, now: float) -> list[Binding]:
        """The current bindings of ``user``, most recently registered first."""
        key = user.lower()
        self._expire(key, now)
        return list(reversed(self._bindings.get(key, [])))

    def is_registered(self, user: str, now: float) -> bool:
        """True when ``user`` has at least one live binding."""
        return bool(self.lookup(user, now))

    def count(self) -> int:
        """How many bindings exist (expired ones included until looked at)."""
        return sum(len(v) for v in self._bindings.values())

    def _ok(self, key: str, now: float) -> RegisterAnswer:
        # §10.3 step 8: "The response SHOULD include a Contact header field
        # value enumerating all current bindings", each with its expires.
        headers = [
            ("Contact", f"<{b.contact}>;expires={b.remaining(now)}")
            for b in self._bindings.get(key, [])
        ]
        return RegisterAnswer(200, "OK", tuple(headers))

    def _store(self, key: str, bindings: list[Binding]) -> None:
        if bindings:
            self._bindings[key] = bindings
        else:
            self._bindings.pop(key, None)

    def _expire(self, key: str, now: float) -> None:
        bindings = self._bindings.get(key)
        if bindings:
            self._store(key, [b for b in bindings if b.expires_at > now])


def _same_uri(a: URI, b: URI) -> bool:
    """Contact equality for bindings (RFC 3261 §19.1.4, simplified: scheme, user, host, port)."""
    return (
        a.scheme == b.scheme
        and a.user == b.user
        and a.host.lower() == b.host.lower()
        and (a.port or 5060) == (b.port or 5060)
        and (a.param("transport") or "udp").lower() == (b.param("transport") or "udp").lower()
    )
