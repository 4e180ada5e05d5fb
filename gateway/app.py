"""The running gateway core: listeners from the settings and the request handler.

``serve(settings, ready=, stop=)`` binds one transport per ``[sip] listen``
entry (port 0 means "any free port"; the real port is logged as a
``listening`` event and kept in :attr:`Gateway.addresses`), then answers
requests with the element behaviour of this stage of the product:

* every request passes ``gateway.sip.validate.check_request`` (registrar role
  for REGISTER, proxy role otherwise); a SIPError is answered with its status
  and extra headers — never for an ACK (RFC 3261 §17.1.1.3: no response to ACK);
* OPTIONS to us → 200 with Allow/Accept/Supported (RFC 3261 §11.2);
* INVITE → 407 and REGISTER → 401 digest challenges (RFC 3261 §22); the
  registrar and the B2BUA that accept authenticated ones come later, so until
  then valid credentials get 403;
* an unknown method addressed to us → 501 with Allow (§8.2.1); any other
  request not for us → 404 (nothing is routed yet); an out-of-dialog BYE/INFO
  or an unmatched CANCEL → 481 (§9.2, §15.1.2);
* responses arriving without a client transaction are dropped and counted.

Responses go back to the source address of the request (symmetric routing,
RFC 3581 behaviour for every request). Every response we generate carries a To tag (§8.2.6.2), derived from the
request so a retransmission gets the same tag. Every answered error is one
structured log line (up to REJECT_LOG_RATE per second; beyond that they are
counted and the next line says how many were suppressed), with the callee part of the Request-URI masked unless the
configuration says otherwise. Counters (gateway and per transport) are logged
as one ``gateway.stats`` line at shutdown.

This module must never let an exception from one message stop the gateway,
never answer an ACK or a response, and never log a secret or, when masking is
on, an unmasked callee number.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from gateway.config import PeerSettings, Settings, UserSettings
from gateway.logging import mask_number
from gateway.sip import Headers, Request, Response, SIPError, make_response
from gateway.sip.digest import Algorithm, DigestServer, Outcome, ha1
from gateway.sip.headers import canonical_name
from gateway.sip.uri import URI
from gateway.sip.validate import check_request
from gateway.transport import (
    Address,
    Message,
    TCPTransport,
    Transport,
    UDPTransport,
)
from gateway.transport.base import LogLimiter
from gateway.transport.via import strip_brackets

__all__ = [
    "ACCEPT",
    "ALLOW",
    "RUNNING",
    "SUPPORTED",
    "BoundAddress",
    "Gateway",
    "GatewayStats",
    "serve",
]

log = structlog.get_logger("gateway.app")

ALLOW: tuple[str, ...] = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO")
"""Methods the gateway handles (RFC 3261 §20.5); sent in Allow on OPTIONS and 501."""

ACCEPT = "application/sdp"
SUPPORTED: tuple[str, ...] = ()
"""Option tags we support: none yet, so every Require/Proxy-Require tag gets 420."""

REJECT_LOG_RATE = 200
"""Rejection log lines per second before further ones are only counted."""

RUNNING: list[Gateway] = []
"""Gateways currently started by :func:`serve` (tests look up bound addresses here)."""

# Headers RFC 3261 §8.2.6.2 copies from a request into a response.
_COPIED = ("via", "from", "to", "call-id", "cseq")
_IN_DIALOG_ONLY = frozenset({"BYE", "INFO"})


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """A listening transport and the address it really bound."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(slots=True)
class GatewayStats:
    """Counters of the request handler (transport counters live on each transport)."""

    requests: int = 0
    responses_received: int = 0
    answered: collections.Counter[int] = field(default_factory=collections.Counter)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    handler_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "requests": self.requests,
            "responses_received": self.responses_received,
            "answered": {str(k): v for k, v in sorted(self.answered.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "handler_errors": self.handler_errors,
        }


class Gateway:
    """Listeners plus the stage-2 request handler. Use ``async with Gateway(s) as gw``."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.transports: list[Transport] = []
        self.stats = GatewayStats()
        self.digest = DigestServer(key=os.urandom(32), realm=settings.sip.realm)
        self._tag_key = os.urandom(16)
        self._mask = settings.policy.mask_numbers
        self._domains = {d.lower().rstrip(".") for d in settings.sip.domains}
        self._local_hosts: set[str] = set()
        self._local_ports: set[int] = set()
        self._secrets = _credential_table(settings)
        # One line per rejected request, but a scan or flood must not become a
        # log flood: beyond REJECT_LOG_RATE lines/s they are counted, not logged.
        self._log_limit = LogLimiter(REJECT_LOG_RATE)
        # Symmetric response routing (RFC 3581 behaviour for every request, like
        # Kamailio's force_rport): softphones sit behind NAT, and a forged Via
        # port must not aim our responses at a third party. `[sip] force_rport
        # = false` restores plain RFC 3261 §18.2.2 routing.
        self.symmetric_responses: bool = settings.sip.force_rport

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener; on any failure close what was bound and re-raise."""
        sip = self.settings.sip
        try:
            for spec in sip.listen:
                transport: Transport
                if spec.transport.value == "udp":
                    transport = await UDPTransport.listen(
                        spec.ip, spec.port, self.handle, max_message_size=sip.max_message_size
                    )
                else:
                    transport = await TCPTransport.listen(
                        spec.ip, spec.port, self.handle, max_message_size=sip.max_message_size
                    )
                self.add_transport(transport)
                host, port = transport.local_address
                log.info("listening", transport=str(transport.name), host=host, port=port)
        except BaseException:
            await self.close(log_stats=False)
            raise

    def add_transport(self, transport: Transport) -> None:
        """Serve ``transport`` (already bound, with ``self.handle`` as its callback).

        ``start`` uses it for the configured listeners; tests attach a
        MemoryTransport. The transport's host and real port become "local"
        for Request-URI matching.
        """
        self.transports.append(transport)
        sip = self.settings.sip
        hosts = {strip_brackets(spec.ip).lower() for spec in sip.listen}
        hosts |= {t.local_address[0].lower() for t in self.transports}
        if sip.advertise:
            hosts.add(strip_brackets(sip.advertise).lower())
        if hosts & {"0.0.0.0", "::"}:
            # A wildcard listener: loopback is certainly ours; other interface
            # addresses are recognised only through `advertise` or `domains`.
            hosts |= {"127.0.0.1", "::1", "localhost"}
        self._local_hosts = hosts
        self._local_ports = {t.local_address[1] for t in self.transports}

    async def close(self, *, log_stats: bool = True) -> None:
        """Close every transport; log the final counters once."""
        transports, self.transports = self.transports, []
        for transport in transports:
            await transport.close()
        if log_stats and transports:
            log.info("gateway.stats", **self._snapshot(transports))

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def addresses(self) -> list[BoundAddress]:
        """Every bound listener, in ``[sip] listen`` order."""
        return [
            BoundAddress(str(t.name), t.local_address[0], t.local_address[1])
            for t in self.transports
        ]

    def address(self, transport: str) -> Address:
        """The first bound ``(host, port)`` of a transport name (``"udp"``/``"tcp"``)."""
        for t in self.transports:
            if t.name == transport:
                return t.local_address
        raise LookupError(f"no {transport} listener")

    def snapshot(self) -> dict[str, Any]:
        """Gateway and per-transport counters, JSON-ready."""
        return self._snapshot(self.transports)

    def _snapshot(self, transports: Iterable[Transport]) -> dict[str, Any]:
        per = {}
        for t in transports:
            host, port = t.local_address
            per[str(BoundAddress(str(t.name), host, port))] = t.stats.as_dict()
        return {"gateway": self.stats.as_dict(), "transports": per}

    # -- addressing ------------------------------------------------------------------

    def is_local(self, uri: URI) -> bool:
        """True when the Request-URI names this gateway (a domain, or a listen/advertise host).

        An IP host with a port must match one of our bound ports; a domain in
        ``[sip] domains`` matches on any port.
        """
        if uri.scheme not in ("sip", "sips"):
            return False
        host = strip_brackets(uri.host).lower().rstrip(".")
        if host in self._domains:
            return True
        if host not in self._local_hosts:
            return False
        return uri.port is None or uri.port in self._local_ports

    # -- message handling ------------------------------------------------------------

    def handle(self, message: Message, source: Address, transport: Transport) -> None:
        """The transport callback: answer requests, drop stray responses."""
        if isinstance(message, Response):
            # No client transactions exist yet: RFC 3261 §18.1.2 says a response
            # matching none is discarded (§16.7 for a proxy); RFC 4475 §3.3.10.
            self.stats.responses_received += 1
            self.stats.dropped["stray-response"] += 1
            log.debug("sip.response.dropped", status=message.status, source=_fmt(source))
            return
        self.stats.requests += 1
        try:
            self._on_request(message, source, transport)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("sip.request.failed", method=message.method, source=_fmt(source))
            if message.method != "ACK":
                self._reply(message, source, transport, 500, "Server Internal Error")

    def _on_request(self, req: Request, source: Address, transport: Transport) -> None:
        method = req.method
        role: Literal["registrar", "proxy"] = "registrar" if method == "REGISTER" else "proxy"
        try:
            check_request(req, role=role, supported=SUPPORTED, local_uri=self.is_local)
        except SIPError as err:
            if method == "ACK":
                self.stats.dropped["invalid-ack"] += 1
                return
            self._reply(
                req,
                source,
                transport,
                err.status_code,
                err.reason_phrase,
                err.extra_headers,
                detail=err.detail,
            )
            return
        if method == "ACK":
            # RFC 3261 §17.2.1: the ACK for a non-2xx final response we sent is
            # absorbed; with no dialogs yet, every ACK ends here.
            self.stats.dropped["ack"] += 1
            return
        if method == "INVITE":
            self._challenge(req, source, transport, proxy=True)
            return
        if method == "REGISTER":
            self._challenge(req, source, transport, proxy=False)
            return
        if method == "CANCEL":
            # RFC 3261 §9.2: no matching transaction → 481.
            self._reply(req, source, transport, 481, detail="no transaction to cancel")
            return
        if not self.is_local(req.uri):
            self._reply(req, source, transport, 404, detail="no route for this Request-URI")
            return
        if method == "OPTIONS":
            # RFC 3261 §11.2: the 200 lists Allow, Accept and Supported.
            self._reply(
                req,
                source,
                transport,
                200,
                extra=[
                    ("Allow", ", ".join(ALLOW)),
                    ("Accept", ACCEPT),
                    ("Supported", ", ".join(SUPPORTED)),
                ],
            )
            return
        if method in _IN_DIALOG_ONLY:
            # RFC 3261 §15.1.2: a BYE matching no dialog gets 481.
            self._reply(req, source, transport, 481, detail="no such dialog")
            return
        # RFC 3261 §8.2.1: a method we do not implement gets 501 with Allow.
        self._reply(
            req,
            source,
            transport,
            501,
            extra=[("Allow", ", ".join(ALLOW))],
            detail="unknown method",
        )

    def _challenge(
        self, req: Request, source: Address, transport: Transport, *, proxy: bool
    ) -> None:
        """401/407 with fresh digest challenges; 400 for malformed credentials."""
        now = self.clock()
        header = "Proxy-Authorization" if proxy else "Authorization"
        values = req.headers.get_all(header)
        verdict = self.digest.verify(req.method, values or None, self._ha1, now, body=req.body)
        if verdict.outcome is Outcome.OK:
            # Authenticated, but the registrar / B2BUA that would take it over do
            # not exist at this stage.
            self._reply(req, source, transport, 403, detail="authenticated; no service yet")
            return
        answer = self.digest.answer(verdict, now, proxy=proxy)
        if answer is None:  # unreachable for a non-OK verdict; keeps the type honest
            self._reply(req, source, transport, 500, detail="digest answered nothing")
            return
        self._reply(
            req,
            source,
            transport,
            answer.status,
            answer.reason,
            list(answer.headers),
            detail=f"digest {verdict.outcome.value}: {verdict.reason}",
        )

    def _ha1(self, username: str, algorithm: Algorithm) -> str | None:
        entry = self._secrets.get(username)
        if entry is None:
            return None
        password, ha1_md5, ha1_sha256 = entry
        if password is not None:
            return ha1(username, self.settings.sip.realm, password, algorithm)
        if algorithm is Algorithm.MD5:
            return ha1_md5
        if algorithm is Algorithm.SHA256:
            return ha1_sha256
        return None

    # -- responses -------------------------------------------------------------------

    def _reply(
        self,
        req: Request,
        source: Address,
        transport: Transport,
        status: int,
        reason: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        *,
        detail: str | None = None,
    ) -> None:
        response = self._response(req, status, reason, extra or [])
        transport.send_response(response, source, symmetric=self.symmetric_responses)
        self.stats.answered[status] += 1
        if status < 300:
            return
        suppressed = self._log_limit.take(time.monotonic())
        if suppressed is not None:
            log.info(
                "sip.request.rejected",
                method=req.method,
                status=status,
                reason=response.reason,
                detail=(detail or "")[:200],
                request_uri=self._masked_uri(req.uri),
                call_id=req.headers.get("Call-ID"),
                source=_fmt(source),
                transport=str(transport.name),
                suppressed=suppressed,
            )

    def _response(
        self, req: Request, status: int, reason: str | None, extra: list[tuple[str, str]]
    ) -> Response:
        """A stateless response: make_response when the request allows, else a best effort.

        RFC 4475 §3.3.1 (missing From/To/Call-ID) still deserves its 400: the
        fallback copies whichever of the §8.2.6.2 headers are present, verbatim.
        """
        tag = self._to_tag(req) if status > 100 else None
        try:
            return make_response(req, status, reason, to_tag=tag, headers=extra)
        except SIPError:
            pass
        items = [(n, v) for n, v in req.headers if canonical_name(n) in _COPIED]
        headers = Headers(items)
        for name, value in extra:
            headers.add(name, value)
        return Response(status, reason, headers)

    def _to_tag(self, req: Request) -> str:
        """A To tag that is the same for every retransmission of one request.

        RFC 3261 §8.2.6.2 needs a tag on every non-100 response; deriving it
        from Call-ID, From tag and the top Via branch keeps stateless answers
        to retransmissions identical, as a transaction would.
        """
        h = req.headers
        material = "\x00".join(
            (h.get("Call-ID") or "", h.get("From") or "", h.get("Via") or "", h.get("CSeq") or "")
        )
        # Header text holds undecodable octets as surrogates (the parser decodes
        # with surrogateescape); encode them back the same way.
        return hashlib.blake2s(
            material.encode("utf-8", "surrogateescape"), key=self._tag_key, digest_size=8
        ).hexdigest()

    def _masked_uri(self, uri: URI) -> str:
        if not self._mask or uri.user is None:
            return str(uri)
        return str(dataclasses.replace(uri, user=mask_number(uri.user)))


def _credential_table(settings: Settings) -> dict[str, tuple[str | None, str | None, str | None]]:
    """username → (password, ha1_md5, ha1_sha256), users and peers alike."""
    table: dict[str, tuple[str | None, str | None, str | None]] = {}
    entries: list[UserSettings | PeerSettings] = [*settings.users, *settings.peers]
    for entry in entries:
        table[entry.name] = (
            entry.password.get_secret_value() if entry.password else None,
            entry.ha1_md5.get_secret_value().lower() if entry.ha1_md5 else None,
            entry.ha1_sha256.get_secret_value().lower() if entry.ha1_sha256 else None,
        )
    return table


def _fmt(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the gateway until ``stop`` is set (or the task is cancelled).

    ``ready`` is set once every listener is bound; the bound addresses are then
    in ``RUNNING[-1].addresses`` and in the ``listening`` log lines.
    """
    gateway = Gateway(settings)
    await gateway.start()
    # TOOLS.md: full collections of start-up objects caused 0.6-1 s pauses in a
    # Python B2BUA under load; move them out of the collector's way.
    gc.collect()
    gc.freeze()
    RUNNING.append(gateway)
    try:
        if ready is not None:
            ready.set()
        if stop is None:
            await asyncio.Event().wait()  # until cancelled
        else:
            await stop.wait()
    finally:
        RUNNING.remove(gateway)
        await gateway.close()
