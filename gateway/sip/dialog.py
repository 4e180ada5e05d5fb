"""Dialog state of RFC 3261 §12: creation, in-dialog requests, CSeq ordering, termination.

What this module is for
-----------------------
A dialog is the peer-to-peer relationship that an INVITE (or SUBSCRIBE...)
creates between two user agents (§12). A :class:`Dialog` holds its state —
the dialog id (Call-ID, local tag, remote tag), local and remote CSeq
numbers, local and remote URIs, the remote target, the route set, the secure
flag, and whether it is early or confirmed — and applies the §12 rules:

* :meth:`Dialog.from_uac` — a UAC's dialog from its request and a 1xx-with-tag
  or 2xx response (§12.1.2): route set = Record-Route *reversed*;
* :meth:`Dialog.from_uas` — a UAS's dialog from the request it answers
  (§12.1.1): route set = Record-Route *as received*;
* :meth:`Dialog.create_request` — an in-dialog request (§12.2.1.1): CSeq one
  above the last, Request-URI and Route from the remote target and route set,
  loose or strict routing;
* :meth:`Dialog.receive_request` — CSeq ordering (a lower CSeq is answered
  500, §12.2.2), target refresh, BYE ends the dialog;
* :meth:`Dialog.receive_response` — early → confirmed on 2xx, target refresh,
  termination on a non-2xx final to the initial INVITE or on 481/408.

What it must never do
---------------------
No I/O, no clock, no randomness: tags and initial sequence numbers come from
the caller. It never sends anything and never builds responses; it raises
:class:`DialogError` (a :class:`~gateway.sip.errors.SIPError` carrying the
status to answer with) when a request must be refused, and the layer that
catches it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, TypedDict

from mypy_extensions import mypyc_attr

from .errors import SIPError
from .headers import NameAddr
from .message import Request, Response
from .uri import URI

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogRecord",
    "DialogState",
]

#: Methods whose request and 2xx carry a Contact that replaces the remote target
#: (RFC 3261 §12.2: re-INVITE; RFC 3311 UPDATE; RFC 6665 SUBSCRIBE/NOTIFY; RFC 3515 REFER).
TARGET_REFRESH_METHODS: Final = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

_SECURE_TRANSPORTS: Final = frozenset({"TLS", "WSS", "TLS-SCTP"})


@mypyc_attr(native_class=False)
class DialogError(SIPError):
    """An in-dialog request the dialog refuses; ``status_code`` is the answer (500, 481...)."""

    status_code = 500
    reason_phrase = "Server Internal Error"


class DialogState(StrEnum):
    """§12: a dialog is early (1xx with tag), confirmed (2xx), then terminated."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID, local tag and remote tag (``None`` when an RFC 2543 peer sent none)."""

    call_id: str
    local_tag: str | None
    remote_tag: str | None

    def __init__(self, call_id: str, local_tag: str | None, remote_tag: str | None) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "local_tag", local_tag)
        object.__setattr__(self, "remote_tag", remote_tag)

    @classmethod
    def for_incoming_request(cls, request: Request) -> DialogId:
        """The id, as the UAS sees it, of the dialog a received request belongs to.

        §12.2.2: "the local tag is the To tag and the remote tag is the From tag".
        """
        return cls(request.call_id, request.to.tag, request.from_.tag)

    @classmethod
    def for_response(cls, response: Response) -> DialogId:
        """The id, as the UAC sees it, of the dialog a received response belongs to (§12.1.2)."""
        return cls(response.call_id, response.from_.tag, response.to.tag)


def _is_secure(request: Request) -> bool:
    """§12.1.1/§12.1.2: SIPS Request-URI and the request went over TLS."""
    if request.uri.scheme != "sips":
        return False
    vias = request._vias()
    return bool(vias) and vias[0].transport in _SECURE_TRANSPORTS


def _contact_uri(message: Request | Response) -> URI | None:
    contacts = message.contact
    return contacts[0].uri if contacts else None


def _request_uri_from(route: NameAddr) -> URI:
    """A Route URI made fit for a Request-URI (§12.2.1.1 strict routing).

    "stripping any parameters that are not allowed in a Request-URI": the
    header params live on the NameAddr, not the URI; a URI's ``?headers``
    and the ``method`` parameter are not allowed in a Request-URI (§19.1.1,
    Table 1).
    """
    uri = route.uri
    params = tuple((n, v) for n, v in uri.params if n.lower() != "method")
    return replace(uri, params=params, headers=())


class DialogRecord(TypedDict):
    """A :class:`Dialog` as plain JSON-able values (:meth:`Dialog.to_record`).

    URIs and name-addrs are kept in their wire form, so a record written by one
    process rebuilds the same dialog in another (dialog persistence across a
    restart: the gateway can still send the in-dialog BYE).
    """

    call_id: str
    local_tag: str | None
    remote_tag: str | None
    local_seq: int | None
    remote_seq: int | None
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    secure: bool
    state: str
    local_target: str | None
    initial_seq: int


@dataclass(slots=True)
class Dialog:
    """One dialog's state (RFC 3261 §12.1)."""

    call_id: str
    local_tag: str | None
    remote_tag: str | None
    local_seq: int | None
    remote_seq: int | None
    local_uri: NameAddr
    remote_uri: NameAddr
    remote_target: URI
    route_set: tuple[NameAddr, ...]
    secure: bool
    state: DialogState
    local_target: URI | None = None
    #: CSeq to use when the local sequence number is empty (§12.2.1.1: a UAS
    #: dialog has none until it sends its first request).
    initial_seq: int = 1

    def __init__(
        self,
        call_id: str,
        local_tag: str | None,
        remote_tag: str | None,
        local_seq: int | None,
        remote_seq: int | None,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: URI,
        route_set: tuple[NameAddr, ...],
        secure: bool,
        state: DialogState,
        local_target: URI | None = None,
        initial_seq: int = 1,
    ) -> None:
        # Written out (a @dataclass __init__ stays interpreted under mypyc).
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.secure = secure
        self.state = state
        self.local_target = local_target
        self.initial_seq = initial_seq

    @property
    def id(self) -> DialogId:
        """The dialog id (Call-ID, local tag, remote tag)."""
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @property
    def is_early(self) -> bool:
        """True while the dialog is early (§12.1: created by a 1xx with a To tag)."""
        return self.state is DialogState.EARLY

    # ------------------------------------------------------------------ creation

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """A UAC's dialog from the request it sent and a dialog-creating response (§12.1.2).

        The response must be 2xx, or 101-199 with a To tag (an early dialog).
        "The route set MUST be set to the list of URIs in the Record-Route
        header field from the response, taken in reverse order ... The remote
        target MUST be set to the URI from the Contact header field of the
        response."
        """
        status = response.status
        if not (101 <= status <= 199 or 200 <= status <= 299):
            raise DialogError(f"a {status} response does not create a dialog")
        if status < 200 and response.to.tag is None:
            raise DialogError("a provisional response without To tag creates no dialog")
        if response.cseq.method != request.method or response.call_id != request.call_id:
            raise DialogError("response does not belong to the request")
        target = _contact_uri(response)
        if target is None:
            # §12.1.2 requires the Contact; an early 18x without it keeps the
            # Request-URI until the 2xx brings one (§13.2.2.4 recomputes).
            if status >= 200:
                raise DialogError("2xx without Contact", status_code=400)
            target = request.uri
        return cls(
            call_id=request.call_id,
            local_tag=request.from_.tag,
            remote_tag=response.to.tag,
            local_seq=request.cseq.seq,
            remote_seq=None,
            local_uri=_without_tag(request.from_),
            remote_uri=_without_tag(response.to),
            remote_target=target,
            route_set=tuple(reversed(response.record_route)),
            secure=_is_secure(request),
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
            local_target=_contact_uri(request),
        )

    @classmethod
    def from_uas(
        cls,
        request: Request,
        local_tag: str,
        local_contact: URI | NameAddr | str,
        *,
        early: bool = False,
        initial_seq: int = 1,
    ) -> Dialog:
        """A UAS's dialog from the request it answers with a 1xx/2xx carrying ``local_tag``.

        §12.1.1: "The route set MUST be set to the list of URIs in the
        Record-Route header field from the request, taken in order ... The
        remote target MUST be set to the URI from the Contact header field of
        the request." The remote sequence number is the request's CSeq, the
        local one is empty. ``early`` for a dialog created by a 1xx.
        """
        target = _contact_uri(request)
        if target is None:
            raise DialogError("dialog-creating request without Contact", status_code=400)
        if isinstance(local_contact, NameAddr):
            local_target = local_contact.uri
        elif isinstance(local_contact, URI):
            local_target = local_contact
        else:
            local_target = URI.parse(local_contact)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag,
            local_seq=None,
            remote_seq=request.cseq.seq,
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(request.from_),
            remote_target=target,
            route_set=tuple(request.record_route),
            secure=_is_secure(request),
            state=DialogState.EARLY if early else DialogState.CONFIRMED,
            local_target=local_target,
            initial_seq=initial_seq,
        )

    # ------------------------------------------------------------------ persistence

    def to_record(self) -> DialogRecord:
        """Every field as plain values (wire-form URIs); :meth:`from_record` inverts it."""
        return DialogRecord(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=self.remote_tag,
            local_seq=self.local_seq,
            remote_seq=self.remote_seq,
            local_uri=str(self.local_uri),
            remote_uri=str(self.remote_uri),
            remote_target=str(self.remote_target),
            route_set=[str(route) for route in self.route_set],
            secure=self.secure,
            state=self.state.value,
            local_target=None if self.local_target is None else str(self.local_target),
            initial_seq=self.initial_seq,
        )

    @classmethod
    def from_record(cls, record: DialogRecord) -> Dialog:
        """The dialog a :meth:`to_record` result describes.

        Raises :class:`~gateway.sip.errors.SIPError` (a parse error) or
        :class:`DialogError` when the record is not one: a stored record may be
        damaged, and the caller decides what to do with it.
        """
        try:
            state = DialogState(record["state"])
            local_target = record["local_target"]
            return cls(
                call_id=record["call_id"],
                local_tag=record["local_tag"],
                remote_tag=record["remote_tag"],
                local_seq=record["local_seq"],
                remote_seq=record["remote_seq"],
                local_uri=NameAddr.parse(record["local_uri"]),
                remote_uri=NameAddr.parse(record["remote_uri"]),
                remote_target=URI.parse(record["remote_target"]),
                route_set=tuple(NameAddr.parse(route) for route in record["route_set"]),
                secure=bool(record["secure"]),
                state=state,
                local_target=None if local_target is None else URI.parse(local_target),
                initial_seq=int(record["initial_seq"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DialogError(f"not a dialog record: {exc!r}") from exc

    # ------------------------------------------------------------------ UAC side

    def next_seq(self) -> int:
        """Advance and return the local CSeq number (§12.2.1.1)."""
        # "the CSeq header field value MUST be ... the local sequence number
        # incremented by one ... If the local sequence number is empty, an
        # initial value MUST be chosen".
        self.local_seq = self.initial_seq if self.local_seq is None else self.local_seq + 1
        return self.local_seq

    def create_request(
        self,
        method: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        via: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        """Build an in-dialog request (RFC 3261 §12.2.1.1).

        To = remote URI + remote tag, From = local URI + local tag, Call-ID,
        CSeq = local sequence number + 1 (for ACK and CANCEL pass ``cseq``: the
        number of the INVITE, §13.2.2.4 / §9.1; it is not incremented). The
        Request-URI and Route follow the route set: empty → Request-URI =
        remote target; first route ``;lr`` (loose) → Request-URI = remote
        target, Route = route set; otherwise (strict, RFC 2543) → Request-URI =
        first route, Route = the rest plus the remote target. A target-refresh
        request carries the local Contact. ``via``, when given, becomes the
        top Via (the transport knows the sent-by and the layer the branch).
        """
        if self.state is DialogState.TERMINATED:
            raise DialogError("dialog terminated", status_code=481)
        if method in ("ACK", "CANCEL"):
            if cseq is None:
                raise DialogError(f"{method} needs the CSeq number of the INVITE")
            seq = cseq
        else:
            seq = self.next_seq() if cseq is None else self._take_seq(cseq)
        request_uri, routes = self._route()
        out: list[tuple[str, str]] = []
        if via is not None:
            out.append(("Via", via))
        out += [("Route", str(r)) for r in routes]
        out.append(("Max-Forwards", "70"))
        local = (
            self.local_uri if self.local_tag is None else self.local_uri.with_tag(self.local_tag)
        )
        remote = (
            self.remote_uri
            if self.remote_tag is None
            else self.remote_uri.with_tag(self.remote_tag)
        )
        out.append(("From", str(local)))
        out.append(("To", str(remote)))
        out.append(("Call-ID", self.call_id))
        out.append(("CSeq", f"{seq} {method}"))
        if method in TARGET_REFRESH_METHODS and self.local_target is not None:
            out.append(("Contact", f"<{self.local_target}>"))
        out += headers or []
        return Request(method, request_uri, out, body)

    def _take_seq(self, seq: int) -> int:
        if self.local_seq is not None and seq <= self.local_seq:
            raise DialogError("CSeq must increase within a dialog (§12.2.1.1)")
        self.local_seq = seq
        return seq

    def _route(self) -> tuple[URI, list[NameAddr]]:
        """Request-URI and Route values for a new request (§12.2.1.1)."""
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        if first.uri.param("lr") is not None:
            return self.remote_target, list(self.route_set)
        # Strict router: "the UAC MUST place the first URI from the route set
        # into the Request-URI ... [and] MUST add the remote target URI to the
        # Route header field as the last value".
        return _request_uri_from(first), [
            *self.route_set[1:],
            NameAddr(None, self.remote_target),
        ]

    def receive_response(self, response: Response) -> None:
        """Update the dialog with a response to a request the UAC sent in it.

        * 2xx to the initial INVITE in an early dialog: confirmed, route set
          and remote target recomputed from the 2xx (§13.2.2.4);
        * 2xx to a target refresh: remote target = the response's Contact
          (§12.2.1.2);
        * non-2xx final to the INVITE while early: the early dialog ends (§12.3);
        * 481 or 408 to any in-dialog request: the dialog ends (§12.2.1.2).
        """
        if self.state is DialogState.TERMINATED:
            return
        status = response.status
        method = response.cseq.method
        if 200 <= status <= 299:
            target = _contact_uri(response)
            if self.state is DialogState.EARLY and method == "INVITE":
                self.state = DialogState.CONFIRMED
                self.route_set = tuple(reversed(response.record_route))
            if target is not None and method in TARGET_REFRESH_METHODS:
                self.remote_target = target
        elif status in (481, 408) or (
            status >= 300 and self.state is DialogState.EARLY and method == "INVITE"
        ):
            self.state = DialogState.TERMINATED
        elif status < 200 and self.state is DialogState.EARLY and method == "INVITE":
            # §12.1.2: later 1xx of an early dialog may carry a new Contact.
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target

    # ------------------------------------------------------------------ UAS side

    def receive_request(self, request: Request) -> None:
        """Apply the §12.2.2 rules to a request received within this dialog.

        Raises :class:`DialogError` with 481 when the request is not for this
        dialog and 500 when its CSeq is lower than the remote sequence number
        ("the UAS SHOULD reject the request with a 500 (Server Internal
        Error) response"). ACK and CANCEL are not ordered: they carry the
        INVITE's number. A target-refresh request with a Contact replaces the
        remote target; BYE terminates the dialog.
        """
        if DialogId.for_incoming_request(request) != self.id:
            raise DialogError("request does not match this dialog", status_code=481)
        if self.state is DialogState.TERMINATED and request.method != "ACK":
            raise DialogError("dialog terminated", status_code=481)
        method = request.method
        seq = request.cseq.seq
        if method not in ("ACK", "CANCEL"):
            # §12.2.2: "If the remote sequence number is empty, it MUST be set
            # to the value of the sequence number in the CSeq header field ...
            # If the remote sequence number was not empty, but the sequence
            # number of the request is lower than the remote sequence number,
            # the request is out of order and MUST be rejected with a 500".
            if self.remote_seq is not None and seq < self.remote_seq:
                raise DialogError(
                    f"CSeq {seq} lower than remote sequence number {self.remote_seq}",
                    status_code=500,
                )
            self.remote_seq = seq
        if method in TARGET_REFRESH_METHODS:
            target = _contact_uri(request)
            if target is not None:
                self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED

    def confirm(self) -> None:
        """Mark an early UAS dialog confirmed (the UAS sent its 2xx)."""
        if self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        """End the dialog (BYE sent, non-2xx final sent for an early dialog, ...)."""
        self.state = DialogState.TERMINATED


def _without_tag(addr: NameAddr) -> NameAddr:
    """The URI part of From/To kept for the dialog; the tags live in the dialog id."""
    return NameAddr(
        addr.display_name, addr.uri, tuple((n, v) for n, v in addr.params if n.lower() != "tag")
    )
