"""The registrar of RFC 3261 §10.3: agents' bindings (AOR → contacts) with expiry.

The gateway's agents (``[[users]]``) REGISTER here after digest authentication
(done by :mod:`gateway.callpath.auth` before a request reaches this module). A binding
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

Persistence. The :class:`Registrar` keeps the bindings in memory and notes
which AORs changed (:meth:`Registrar.take_changed`); :class:`RegistrationSync`
writes each changed AOR's whole list to the stores it is given — the SQLite
``registrations`` table, and this node's Redis hash when ``[store] redis`` is
set — before the 200 goes out, and loads them back at start (expired ones
dropped), so a crash or ``kill -9`` loses no registration and no agent has to
re-register. A store that fails never costs the in-memory binding nor the
REGISTER: the failure is logged and counted, the AOR stays pending and is
written again on the next REGISTER or retry (``retry_interval``, backing off).
``Expires: 0`` and ``Contact: *`` write the shortened list (none: the rows go).

Flows after a restart. A UDP binding is used exactly as before: requests to
the agent leave our (same) UDP socket for the source address the REGISTER
came from, so a NAT binding that is still open keeps working. A TCP binding
is *kept* — the agent stays registered, so its outbound calls are accepted at
once over whatever new connection the phone opens — but its connection died
with the old process and a phone's ephemeral source port cannot be connected
to. Until the phone registers again, calls to it open a new connection to the
host and port of its Contact (RFC 3261 §18.2.2, what a registrar without
RFC 5626 flows does), which reaches phones that listen there; a phone behind
NAT is reached again once it re-registers over its new connection, which
softphones do as soon as they notice their connection is gone.

The :class:`Registrar` must never do I/O, read a clock (``now`` is passed in),
or log credentials; it never answers anything itself — it returns the answer.
:class:`RegistrationSync` does its I/O only through the store objects it is
given and never raises out of :meth:`RegistrationSync.flush`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from gateway.sip import Request
from gateway.sip.errors import SIPError
from gateway.sip.headers import NameAddr
from gateway.sip.uri import URI
from gateway.store.protocols import RegistrationStore
from gateway.store.records import StoredRegistration
from gateway.transport import Address

__all__ = [
    "Binding",
    "RegisterAnswer",
    "Registrar",
    "RegistrationStore",
    "RegistrationSync",
]

log = structlog.get_logger("gateway.callpath.registrar")

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
    # Restored from the store after a restart over a connection that is gone
    # (TCP): ``source`` is then the Contact's host and port (see the module doc).
    flow_lost: bool = False

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
    _changed: set[str] = field(default_factory=set)

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

    # -- persistence ---------------------------------------------------------------

    def take_changed(self) -> set[str]:
        """The AOR keys whose bindings changed since the last call (and forget them)."""
        changed, self._changed = self._changed, set()
        return changed

    def rows(self, key: str, now: float) -> list[StoredRegistration]:
        """The live bindings of AOR ``key`` as store rows, in registration order."""
        self._expire(key, now, note=False)
        return [
            StoredRegistration(
                aor=key,
                contact=str(b.contact),
                expires_at=b.expires_at,
                call_id=b.call_id,
                cseq=b.cseq,
                source_host=b.source[0],
                source_port=b.source[1],
                transport=b.transport,
                q=b.q,
                position=i,
            )
            for i, b in enumerate(self._bindings.get(key, []))
        ]

    def restore(self, rows: Iterable[StoredRegistration], now: float) -> tuple[int, int]:
        """Add stored bindings (after a restart); return (restored, skipped).

        Expired rows and rows whose Contact no longer parses are skipped. An
        AOR that already has bindings in memory (it registered while the store
        was read) keeps them: they are newer. A TCP binding's connection is
        gone: it is restored with ``flow_lost`` and the Contact's host and port
        as where to reach it (module doc, "Flows after a restart").
        """
        restored = skipped = 0
        loaded: dict[str, list[tuple[int, Binding]]] = {}
        for row in rows:
            key = row.aor.lower()
            binding = None if key in self._bindings else _stored_binding(row, now)
            if binding is None:
                skipped += 1
                continue
            loaded.setdefault(key, []).append((row.position, binding))
        for key, items in loaded.items():
            items.sort(key=lambda item: item[0])
            bindings = [b for _, b in items][-self.max_contacts :]
            self._bindings[key] = bindings
            restored += len(bindings)
        return restored, skipped

    def replace(self, key: str, rows: Iterable[StoredRegistration], now: float) -> None:
        """Make AOR ``key``'s bindings the stored ``rows`` (what another worker of the
        same gateway registered); not noted as a change to write back.

        A binding this process holds keeps its flow (a TCP connection accepted
        here); a row of another process's TCP flow is reached like after a restart.
        """
        mine = {str(b.contact): b for b in self._bindings.get(key, [])}
        bindings: list[Binding] = []
        for row in sorted(rows, key=lambda r: r.position):
            binding = _stored_binding(row, now)
            if binding is None:
                continue
            own = mine.get(row.contact)
            if own is not None and own.call_id == row.call_id and own.cseq == row.cseq:
                binding = own
            bindings.append(binding)
        self._store(key, bindings[-self.max_contacts :], note=False)

    def _ok(self, key: str, now: float) -> RegisterAnswer:
        # §10.3 step 8: "The response SHOULD include a Contact header field
        # value enumerating all current bindings", each with its expires.
        headers = [
            ("Contact", f"<{b.contact}>;expires={b.remaining(now)}")
            for b in self._bindings.get(key, [])
        ]
        return RegisterAnswer(200, "OK", tuple(headers))

    def _store(self, key: str, bindings: list[Binding], *, note: bool = True) -> None:
        if note and self._bindings.get(key, []) != bindings:
            self._changed.add(key)
        if bindings:
            self._bindings[key] = bindings
        else:
            self._bindings.pop(key, None)

    def _expire(self, key: str, now: float, *, note: bool = True) -> None:
        bindings = self._bindings.get(key)
        if bindings:
            live = [b for b in bindings if b.expires_at > now]
            if len(live) != len(bindings):
                self._store(key, live, note=note)


def _stored_binding(row: StoredRegistration, now: float) -> Binding | None:
    """A stored row as a binding (a lost stream flow: reached at its Contact); None when
    expired or unreadable."""
    if row.expires_at <= now:
        return None
    try:
        contact = URI.parse(row.contact)
    except SIPError:
        return None
    source: Address = (row.source_host, row.source_port)
    flow_lost = row.transport.lower() in ("tcp", "tls", "ws", "wss")
    if flow_lost:
        default_port = 5061 if contact.scheme == "sips" else 5060
        source = (contact.host.strip("[]"), contact.port or default_port)
    return Binding(
        contact=contact,
        expires_at=row.expires_at,
        call_id=row.call_id,
        cseq=row.cseq,
        source=source,
        transport=row.transport,
        q=row.q,
        flow_lost=flow_lost,
    )


def _same_uri(a: URI, b: URI) -> bool:
    """Contact equality for bindings (RFC 3261 §19.1.4, simplified: scheme, user, host, port)."""
    return (
        a.scheme == b.scheme
        and a.user == b.user
        and a.host.lower() == b.host.lower()
        and (a.port or 5060) == (b.port or 5060)
        and (a.param("transport") or "udp").lower() == (b.param("transport") or "udp").lower()
    )


# --------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------


RETRY_INTERVAL = 5.0
"""Seconds before a failed registration write is tried again (doubling up to MAX_RETRY_INTERVAL)."""

MAX_RETRY_INTERVAL = 60.0

FAILURE_LOG_INTERVAL = 60.0
"""While a store keeps failing, one warning line at most this often."""


@dataclass(slots=True, eq=False)
class _Target:
    name: str
    store: RegistrationStore
    node: str
    pending: set[str] = field(default_factory=set)
    retry_at: float = 0.0
    backoff: float = 0.0
    failing_since: float | None = None
    logged_at: float = float("-inf")


@dataclass(slots=True)
class RegistrationStats:
    """Counters of :class:`RegistrationSync` (JSON-ready through :meth:`as_dict`)."""

    loaded: int = 0
    writes: int = 0
    store_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return {
            "loaded": self.loaded,
            "writes": self.writes,
            "store_failures": self.store_failures,
        }


class RegistrationSync:
    """Keeps the stores' copies of a :class:`Registrar`'s bindings up to date.

    ``targets`` are ``(name, store, node)``, the preferred copy first (Redis,
    then SQLite): :meth:`load` takes each AOR from the first store that has
    it. :meth:`flush` writes the AORs changed since the last flush to every
    store; a store that fails keeps its pending AORs and is retried no sooner
    than ``retry_interval`` later (doubling to ``max_retry_interval``), so a
    hung Redis costs one timeout per retry, not one per REGISTER.
    """

    def __init__(
        self,
        registrar: Registrar,
        targets: Sequence[tuple[str, RegistrationStore, str]],
        *,
        retry_interval: float = RETRY_INTERVAL,
        max_retry_interval: float = MAX_RETRY_INTERVAL,
    ) -> None:
        self.registrar = registrar
        self.targets = [_Target(name, store, node) for name, store, node in targets]
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.stats = RegistrationStats()

    def pending(self) -> int:
        """AOR writes waiting for a store that failed (summed over the stores)."""
        return sum(len(t.pending) for t in self.targets)

    def load(self, now: float) -> int:
        """Restore the stored bindings into the registrar; return how many were restored.

        A store that cannot be read is logged and counted; the AORs found
        elsewhere are written to the copies that lack them (now, else once
        they answer), so the copies converge.
        """
        found: dict[str, list[StoredRegistration]] = {}
        read: list[tuple[_Target, set[str]]] = []
        for target in self.targets:
            try:
                rows = target.store.load_registrations(now, node=target.node)
            except Exception as exc:  # a store error must not stop the gateway
                self.stats.store_failures += 1
                self._failed(target, now, exc, op="load")
                read.append((target, set()))
                continue
            mine: dict[str, list[StoredRegistration]] = {}
            for row in rows:
                mine.setdefault(row.aor.lower(), []).append(row)
            read.append((target, set(mine)))
            for key, items in mine.items():
                found.setdefault(key, items)
        restored, skipped = self.registrar.restore(
            (row for items in found.values() for row in items), now
        )
        for target, had in read:
            # A copy that lacks an AOR (or could not be read) gets it written.
            target.pending |= set(found) - had
        self.stats.loaded += restored
        log.info(
            "registrar.loaded",
            bindings=restored,
            users=len(found),
            skipped=skipped,
            stores=[t.name for t in self.targets],
        )
        self.flush(now)
        return restored

    def refresh(self, key: str, now: float) -> bool:
        """Take AOR ``key``'s bindings from the first store that can list them (what the
        sibling workers of ``dialgate run --workers N`` registered); True when read.

        The in-memory bindings stay while a write of that AOR is pending (they are
        newer) or when no store answers.
        """
        if any(key in t.pending for t in self.targets):
            return False
        for target in self.targets:
            read = getattr(target.store, "registrations_of", None)
            if read is None:
                continue
            try:
                rows = read(key, now, node=target.node)
            except Exception as exc:  # a store error must not fail the request
                self.stats.store_failures += 1
                self._failed(target, now, exc, op="load")
                continue
            self.registrar.replace(key, rows, now)
            return True
        return False

    def flush(self, now: float, *, force: bool = False) -> int:
        """Write every changed AOR to every store whose retry time has come; never raises.

        ``force`` ignores the retry back-off (shutdown). Returns the number of
        AOR writes that failed this time.
        """
        changed = self.registrar.take_changed()
        failed = 0
        for target in self.targets:
            target.pending |= changed
            if not target.pending or (not force and now < target.retry_at):
                continue
            failed += self._write(target, now)
        return failed

    def _write(self, target: _Target, now: float) -> int:
        for key in sorted(target.pending):
            rows = self.registrar.rows(key, now)
            try:
                target.store.save_registrations(key, rows, now, node=target.node)
            except Exception as exc:  # a store error never fails a REGISTER
                self.stats.store_failures += 1
                target.backoff = min(
                    max(target.backoff * 2, self.retry_interval), self.max_retry_interval
                )
                target.retry_at = now + target.backoff
                self._failed(target, now, exc, op="save")
                return 1  # the rest waits: one timeout per retry, not per AOR
            self.stats.writes += 1
            target.pending.discard(key)
        if target.failing_since is not None:
            log.info(
                "registrar.store.recovered",
                store=target.name,
                failed_for=round(now - target.failing_since, 1),
            )
        target.failing_since = None
        target.backoff = 0.0
        target.retry_at = 0.0
        return 0

    def _failed(self, target: _Target, now: float, exc: Exception, *, op: str) -> None:
        if target.failing_since is None:
            target.failing_since = now
        if now - target.logged_at >= FAILURE_LOG_INTERVAL:
            target.logged_at = now
            log.warning(
                "registrar.store.failed",
                store=target.name,
                op=op,
                error=f"{type(exc).__name__}: {exc}"[:300],
                pending=len(target.pending),
                retry_in=round(target.backoff, 1),
            )
