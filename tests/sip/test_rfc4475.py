"""The RFC 4475 torture-test corpus, driven by its MANIFEST.tsv.

* ``valid`` rows parse, survive full typed access and are exposed faithfully;
* ``invalid`` rows raise SIPError from ``parse`` or ``check_request``/``check_response``
  (rows marked ``lenient_ok=yes`` may also be accepted);
* ``semantic`` rows parse (mcl01 may fail framing) and the check yields the
  MANIFEST status for role proxy (REGISTER: registrar);
* sipmessage is a differential oracle on the valid rows it can parse.

test.dat is not an RFC 4475 case: it is excluded from the counts but must raise.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass

import pytest
import sipmessage

from gateway.sip import ParseError, Request, Response, SIPError, parse
from gateway.sip.uri import unescape
from gateway.sip.validate import check_request, check_response
from tests.conformance import RFC4475, SHARED, VENDORED

CORPUS = RFC4475


@dataclass(frozen=True, slots=True)
class Row:
    """One MANIFEST.tsv row."""

    file: str
    expectation: str
    expected_response: str
    lenient_ok: bool
    size: int
    sha256: str

    def data(self) -> bytes:
        """The file's bytes (binary: the corpus is byte-exact)."""
        with open(CORPUS / self.file, "rb") as fh:
            return fh.read()


def _rows() -> list[Row]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with open(manifest, newline="", encoding="utf-8") as fh:
        return [
            Row(
                r["file"],
                r["expectation"],
                r["expected_response"],
                r["lenient_ok"] == "yes",
                int(r["bytes"]),
                r["sha256"],
            )
            for r in csv.DictReader(fh, delimiter="\t")
        ]


ROWS = _rows()
RFC_ROWS = [r for r in ROWS if r.file != "test.dat"]


def _by(expectation: str) -> list[Row]:
    return [r for r in RFC_ROWS if r.expectation == expectation]


def _ids(rows: list[Row]) -> list[str]:
    return [r.file for r in rows]


def _without_cl(msg: Request | Response) -> list[tuple[str, str]]:
    return [(n, v) for n, v in msg.headers if n.lower() not in ("content-length", "l")]


def _check(msg: Request | Response) -> None:
    if isinstance(msg, Request):
        role = "registrar" if msg.method == "REGISTER" else "proxy"
        check_request(msg, role=role)
    else:
        check_response(msg, role="proxy")


def _full_access(msg: Request | Response) -> None:
    _ = msg.via, msg.from_, msg.to, msg.call_id, msg.cseq, msg.max_forwards
    _ = msg.contact, msg.contact_star, msg.route, msg.record_route
    _ = msg.content_length, msg.content_type, msg.expires, msg.retry_after


def test_manifest_counts_and_bytes() -> None:
    """The corpus has 49 RFC cases plus test.dat, every file byte-exact per its SHA-256."""
    assert 49 == len(RFC_ROWS)
    assert 1 == len(ROWS) - len(RFC_ROWS)
    for row in ROWS:
        data = row.data()
        assert (row.file, row.size, row.sha256) == (
            row.file,
            len(data),
            hashlib.sha256(data).hexdigest(),
        )


@pytest.mark.parametrize("row", _by("valid"), ids=_ids(_by("valid")))
def test_valid_rows_parse_and_round_trip(row: Row) -> None:
    """Every valid message parses, survives full typed access and re-parses equal."""
    msg = parse(row.data())
    _full_access(msg)
    again = parse(bytes(msg))
    # bytes() always writes Content-Length (inv2543 has none), so compare the rest.
    assert (msg.body, _without_cl(msg)) == (again.body, _without_cl(again))
    assert again == parse(bytes(again))


@pytest.mark.parametrize("row", _by("invalid"), ids=_ids(_by("invalid")))
def test_invalid_rows_raise(row: Row) -> None:
    """Every invalid message raises SIPError at parse or check time (unless lenient_ok)."""
    try:
        msg = parse(row.data())
        _check(msg)
    except SIPError as exc:
        assert 400 <= exc.status_code <= 599
        return
    assert row.lenient_ok, f"{row.file} was accepted but is not lenient_ok"


def _expected_status(row: Row, role: str) -> set[int] | None:
    """Statuses the MANIFEST allows for ``role``; None means 'accept/forward/drop-free'."""
    spec = dict(part.split("=", 1) for part in row.expected_response.split(";"))
    value = spec.get(role, spec.get("any"))
    if value is None or value in ("forward", "accept"):
        return None
    if value in ("drop", "error"):
        return set(range(400, 600))
    return {int(v) for v in value.split("|")}


@pytest.mark.parametrize("row", _by("semantic"), ids=_ids(_by("semantic")))
def test_semantic_rows(row: Row) -> None:
    """Semantic rows parse; the check answers with the MANIFEST status for proxy/registrar."""
    data = row.data()
    if row.file == "mcl01.dat":
        # Conflicting Content-Length values: the framing itself is ambiguous.
        with pytest.raises(ParseError):
            parse(data)
        return
    msg = parse(data)
    role = "registrar" if isinstance(msg, Request) and msg.method == "REGISTER" else "proxy"
    expected = _expected_status(row, role)
    if expected is None:
        _check(msg)
        return
    if any(code < 300 for code in expected):
        # e.g. regaut01 "registrar=401|200": accepting is one of the allowed outcomes.
        try:
            _check(msg)
        except SIPError as exc:
            assert exc.status_code in expected
        return
    with pytest.raises(SIPError) as info:
        _check(msg)
    assert info.value.status_code in expected


def test_test_dat_raises() -> None:
    """The extra archive file test.dat (no SIP-Version, header without colon) is rejected."""
    (row,) = [r for r in ROWS if r.file == "test.dat"]
    with pytest.raises(ParseError):
        parse(row.data())


def _load(name: str) -> Request | Response:
    with open(CORPUS / name, "rb") as fh:
        return parse(fh.read())


def test_wsinv_folding_and_scalars() -> None:
    """wsinv: folded values unfold to single SP; Max-Forwards 0068 is 68 and CSeq 0009 is 9."""
    msg = _load("wsinv.dat")
    assert 68 == msg.max_forwards
    assert (9, "INVITE") == (msg.cseq.seq, msg.cseq.method)
    assert 'J Rosenberg \\"' == msg.from_.display_name
    assert 3 == len(msg.via)
    assert "" == msg.headers.get("Subject")
    assert 'Quoted string ""' == msg.contact[0].display_name
    assert "newfangled value continued newfangled value" == msg.headers.get("NewFangledHeader")
    assert 150 == len(msg.body)


def test_esc01_no_recursive_unescaping() -> None:
    """esc01: %-escapes stay as on the wire; the Contact uri-param is value%41, not valueA."""
    msg = _load("esc01.dat")
    assert isinstance(msg, Request)
    assert "sips%3Auser%40example.com" == msg.uri.user
    contact_uri = msg.contact[0].uri
    # On the wire: ;n%61me=v%61lue%25%34%31 — unescaped once it is value%41, never valueA.
    assert "v%61lue%25%34%31" == contact_uri.param("name")
    assert "value%41" == unescape(contact_uri.param("name") or "")
    assert "" == contact_uri.param("lr")
    assert "caller" == unescape(contact_uri.user or "")


def test_semiuri_user_part() -> None:
    """semiuri: the Request-URI user is 'user;par=u%40example.net' and the host example.com."""
    msg = _load("semiuri.dat")
    assert isinstance(msg, Request)
    assert ("user;par=u%40example.net", "example.com") == (msg.uri.user, msg.uri.host)
    assert () == msg.uri.params


def test_escnull_two_distinct_contacts() -> None:
    """escnull: %00 stays escaped and the two Contacts remain distinct."""
    msg = _load("escnull.dat")
    users = [c.uri.user for c in msg.contact]
    assert 2 == len(users)
    assert 2 == len(set(users))
    assert all(u is not None and "%00" in u for u in users)


def test_longreq_many_vias_and_long_values() -> None:
    """longreq: many Via values and very long display names/params are kept whole."""
    msg = _load("longreq.dat")
    assert 34 == len(msg.via)
    assert msg.to.display_name is not None
    assert 90 < len(msg.to.display_name)
    assert msg.from_.tag is not None
    assert 100 < len(msg.from_.tag)


def test_dblreq_trailing_octets_ignored() -> None:
    """dblreq: the REGISTER is handled and the INVITE-looking trailing octets are ignored."""
    with open(CORPUS / "dblreq.dat", "rb") as fh:
        data = fh.read()
    msg = parse(data)
    assert isinstance(msg, Request)
    assert "REGISTER" == msg.method
    assert b"" == msg.body
    assert b"INVITE" not in bytes(msg)


def test_inv2543_body_is_rest_of_datagram() -> None:
    """inv2543: no Content-Length, so the body is everything after the empty line."""
    with open(CORPUS / "inv2543.dat", "rb") as fh:
        data = fh.read()
    msg = parse(data)
    assert data[data.index(b"\r\n\r\n") + 4 :] == msg.body
    assert None is msg.content_length
    assert None is msg.max_forwards
    assert None is msg.via[0].branch


def test_mpart01_binary_body_intact() -> None:
    """mpart01: the multipart body (NULs, bare CR/LF) is framed by Content-Length, byte-exact."""
    with open(CORPUS / "mpart01.dat", "rb") as fh:
        data = fh.read()
    msg = parse(data)
    assert 553 == len(msg.body)
    assert data[-553:] == msg.body
    assert b"\x00" in msg.body
    assert data == bytes(msg)


def test_reason_phrases_empty_and_utf8() -> None:
    """noreason has an empty phrase; unreason's UTF-8 phrase decodes and round-trips."""
    noreason = _load("noreason.dat")
    assert isinstance(noreason, Response)
    assert (100, "") == (noreason.status, noreason.reason)
    with open(CORPUS / "unreason.dat", "rb") as fh:
        data = fh.read()
    unreason = parse(data)
    assert isinstance(unreason, Response)
    first_line = data.split(b"\r\n", 1)[0]
    assert first_line.split(b" ", 2)[2].decode("utf-8") == unreason.reason
    assert any(ord(c) > 127 for c in unreason.reason)
    unreason.headers.add("X-Touched", "1")  # force a fresh serialization
    assert first_line == bytes(unreason).split(b"\r\n", 1)[0]


def test_cparam_contact_vs_uri_params() -> None:
    """cparam01: unknownparam is a contact param; cparam02: it is a URI param inside <>."""
    c1 = _load("cparam01.dat").contact[0]
    c2 = _load("cparam02.dat").contact[0]
    assert (None, "") == (c1.uri.param("unknownparam"), c1.param("unknownparam"))
    assert ("", None) == (c2.uri.param("unknownparam"), c2.param("unknownparam"))


def test_regescrt_escaped_route_stays_in_contact_uri() -> None:
    """regescrt: the Contact URI keeps its escaped Route header as a URI header."""
    contact = _load("regescrt.dat").contact[0]
    assert ["route"] == [n.lower() for n, _ in contact.uri.headers]


def test_unknown_scheme_uris_kept_opaque() -> None:
    """unksm2: isbn:/http:/name: URIs parse as opaque and a proxy accepts the request."""
    msg = _load("unksm2.dat")
    assert ("isbn", "2983792873") == (msg.to.uri.scheme, msg.to.uri.opaque)
    assert "http" == msg.from_.uri.scheme
    assert "name" == msg.contact[0].uri.scheme


def test_bext01_unsupported_lists_tokens_per_role() -> None:
    """bext01: 420's Unsupported lists Proxy-Require tokens for a proxy, Require for a UAS."""
    msg = _load("bext01.dat")
    assert isinstance(msg, Request)
    with pytest.raises(SIPError) as proxy:
        check_request(msg, role="proxy")
    assert [("Unsupported", "noProxiesSupportThis, norDoAnyProxiesSupportThis")] == (
        proxy.value.extra_headers
    )
    with pytest.raises(SIPError) as uas:
        check_request(msg, role="uas")
    assert [("Unsupported", "nothingSupportsThis, nothingSupportsThisEither")] == (
        uas.value.extra_headers
    )
    check_request(
        msg,
        role="proxy",
        supported=["noProxiesSupportThis", "norDoAnyProxiesSupportThis"],
    )


def test_zeromf_proxy_483_uas_accepts() -> None:
    """zeromf: Max-Forwards 0 gives 483 at a proxy, unless the request is for us; a UAS accepts."""
    msg = _load("zeromf.dat")
    assert isinstance(msg, Request)
    with pytest.raises(SIPError) as info:
        check_request(msg, role="proxy")
    assert 483 == info.value.status_code
    check_request(msg, role="uas")
    check_request(msg, role="proxy", local_uri=lambda uri: True)


def _oracle(data: bytes) -> sipmessage.Request | sipmessage.Response | None:
    try:
        return sipmessage.Message.parse(data)
    except Exception:  # the oracle is allowed to give up on torture tests
        return None


@pytest.mark.parametrize("row", _by("valid"), ids=_ids(_by("valid")))
def test_sipmessage_differential(row: Row) -> None:
    """Where sipmessage can parse a valid row, method/status, Call-ID and CSeq agree."""
    data = row.data()
    other = _oracle(data)
    if other is None:
        pytest.skip("sipmessage cannot parse this torture test")
    ours = parse(data)
    if isinstance(other, sipmessage.Request):
        assert isinstance(ours, Request)
        assert other.method == ours.method
    else:
        assert isinstance(ours, Response)
        assert other.code == ours.status
    try:
        their_call_id, their_cseq = other.call_id, other.cseq
    except Exception:
        pytest.skip("sipmessage cannot read Call-ID/CSeq of this message")
    assert their_call_id == ours.call_id
    assert (their_cseq.sequence, their_cseq.method) == (ours.cseq.seq, ours.cseq.method)


def test_sipmessage_oracle_covers_most_valid_rows() -> None:
    """The differential test is meaningful: sipmessage parses most valid rows."""
    parsed = [r.file for r in _by("valid") if _oracle(r.data()) is not None]
    assert len(parsed) >= len(_by("valid")) // 2, parsed


def test_intmeth_unusual_method_and_raw_controls_in_display_name() -> None:
    """intmeth: the odd method token survives, and quoted-pairs yield raw BEL/NUL/DEL."""
    msg = _load("intmeth.dat")
    assert isinstance(msg, Request)
    assert "!interesting-Method0123456789_*+`.%indeed'~" == msg.method
    assert msg.method == msg.cseq.method
    display = msg.to.display_name
    assert display is not None
    assert {"\x07", "\x00", "\x7f"} <= set(display)
    assert "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{" == msg.call_id


def test_esc02_escaped_method_is_not_register() -> None:
    """esc02: RE%47IST%45R is its own (unknown) method and C%6Fntact is not a Contact."""
    msg = _load("esc02.dat")
    assert isinstance(msg, Request)
    assert "RE%47IST%45R" == msg.method
    assert ["alias1", "alias3"] == [c.uri.user for c in msg.contact]
    assert "%Z%45" == msg.to.display_name


def test_vendored_corpus_is_byte_exact() -> None:
    """The copy in tests/conformance matches its SHA256SUMS and, when present, the shared original."""
    sums = (VENDORED / "SHA256SUMS").read_text().split("\n")
    checked = 0
    for line in filter(None, sums):
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        assert digest == hashlib.sha256((VENDORED / name).read_bytes()).hexdigest(), name
        checked += 1
    assert checked >= 40
    if SHARED.is_dir():
        for path in SHARED.iterdir():
            assert path.read_bytes() == (VENDORED / path.name).read_bytes(), path.name
