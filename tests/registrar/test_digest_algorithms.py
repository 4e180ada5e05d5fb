"""``[sip] digest_algorithms`` and ``[[users]] digest_algorithms``: what a challenge offers.

Default: MD5 alone (one challenge — Debian's baresip 1.0 gives up on a 401
that also carries SHA-256). Both configured: SHA-256 first (RFC 8760 §2.3).
Per user: a user kept as ``ha1_sha256`` is offered SHA-256 only, one kept as
``ha1_md5`` MD5 only; credentials for an algorithm a user is not offered are
refused. check-config names the key of an impossible combination.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.callpath.element import Gateway
from gateway.config import ConfigError, Settings, load_settings
from gateway.sip import Request, Response
from gateway.sip.digest import (
    Algorithm,
    Challenge,
    DigestClient,
    DigestServer,
    Outcome,
    Verdict,
    ha1,
)
from tests.callpath.conftest import Agent, Carrier, gateway_settings
from tests.integration.conftest import dialgate_command

SIP = {"listen": ["udp:127.0.0.1:0"], "realm": "dialgate", "t1": 0.1, "t2": 0.4}
SHA_HA1 = ha1("carol", "dialgate", "carolpass", Algorithm.SHA256)
MD5_HA1 = ha1("dave", "dialgate", "davepass", Algorithm.MD5)
USERS: list[dict[str, Any]] = [
    {"name": "alice", "password": "s3cret", "card": "c1"},
    {"name": "bob", "password": "bobpass"},
    {"name": "carol", "ha1_sha256": SHA_HA1, "digest_algorithms": ["SHA-256"]},
    {"name": "dave", "ha1_md5": MD5_HA1},
    {"name": "erin", "password": "erinpass", "digest_algorithms": ["MD5"]},
]


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    """A carrier UAS (configured for the call path; no call reaches it here)."""
    c = Carrier()
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def started(carrier: Carrier, tmp_path: Path, algorithms: list[str] | None) -> Gateway:
    """A gateway with USERS and ``[sip] digest_algorithms`` (None: the default)."""
    sip = dict(SIP)
    if algorithms is not None:
        sip["digest_algorithms"] = algorithms
    gw = Gateway(
        gateway_settings(carrier.address, tmp_path / "gw.db", extra={"sip": sip, "users": USERS})
    )
    await gw.start()
    return gw


class Phone:
    """A bare UA on the gateway: sends REGISTER/INVITE with or without credentials."""

    def __init__(self, user: str, gateway: tuple[str, int]) -> None:
        self.agent = Agent(user, "unused", gateway)
        self.gateway = gateway

    async def __aenter__(self) -> Phone:
        await self.agent.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.agent.close()

    @property
    def ruri(self) -> str:
        return f"sip:{self.gateway[0]}:{self.gateway[1]}"

    async def send(self, method: str, cseq: int, auth: tuple[str, str] | None = None) -> Response:
        """One request (REGISTER to the gateway, INVITE to a number), final response."""
        assert self.agent.endpoint is not None
        ruri = self.ruri if method == "REGISTER" else f"sip:13912345678@{self.gateway[0]}"
        req: Request = self.agent._base(method, ruri, f"{self.agent.user}-{method}@t", cseq, "t1")
        if method == "REGISTER":
            req.headers.add("Expires", "600")
        if auth is not None:
            req.headers.add(*auth)
        return await asyncio.wait_for(self.agent.endpoint.request(req, self.gateway), 5)

    async def register_with(self, client: DigestClient) -> Response:
        """REGISTER, answer the 401 with ``client``, return the final response."""
        first = await self.send("REGISTER", 1)
        assert 401 == first.status
        assert client.handle_challenge(401, first.headers.get_all("WWW-Authenticate"))
        auth = client.authorization("REGISTER", self.ruri)
        assert auth is not None
        return await self.send("REGISTER", 2, auth)


def offered(resp: Response, header: str = "WWW-Authenticate") -> list[Algorithm]:
    """The algorithms of a 401/407's challenges, in order."""
    return [Challenge.parse(v).effective_algorithm for v in resp.headers.get_all(header)]


async def test_default_offers_md5_alone_on_401_and_407(carrier: Carrier, tmp_path: Path) -> None:
    """No setting: one challenge, MD5, for REGISTER (401) and INVITE (407)."""
    gw = await started(carrier, tmp_path, None)
    try:
        async with Phone("alice", gw.address("udp")) as phone:
            assert [Algorithm.MD5] == offered(await phone.send("REGISTER", 1))
            invite = await phone.send("INVITE", 1)
            assert (407, [Algorithm.MD5]) == (
                invite.status,
                offered(invite, "Proxy-Authenticate"),
            )
            # An unknown name gets exactly the same offer (no enumeration).
        async with Phone("nobody", gw.address("udp")) as phone:
            assert [Algorithm.MD5] == offered(await phone.send("REGISTER", 1))
    finally:
        await gw.close()


async def test_sha256_only_client_cannot_register_by_default(
    carrier: Carrier, tmp_path: Path
) -> None:
    """SHA-256 is opt-in: a client that only does SHA-256 finds nothing to answer."""
    gw = await started(carrier, tmp_path, None)
    try:
        async with Phone("bob", gw.address("udp")) as phone:
            first = await phone.send("REGISTER", 1)
            client = DigestClient(
                "bob", ha1={Algorithm.SHA256: ha1("bob", "dialgate", "bobpass", Algorithm.SHA256)}
            )
            assert not client.handle_challenge(401, first.headers.get_all("WWW-Authenticate"))
    finally:
        await gw.close()


async def test_both_offer_sha256_first_and_either_client_registers(
    carrier: Carrier, tmp_path: Path
) -> None:
    """["MD5", "SHA-256"] in any order: SHA-256 listed first; SHA-256 and MD5 clients register."""
    gw = await started(carrier, tmp_path, ["MD5", "SHA-256"])
    try:
        async with Phone("bob", gw.address("udp")) as phone:
            first = await phone.send("REGISTER", 1)
            assert [Algorithm.SHA256, Algorithm.MD5] == offered(first)
            sha = DigestClient(
                "bob", ha1={Algorithm.SHA256: ha1("bob", "dialgate", "bobpass", Algorithm.SHA256)}
            )
            assert 200 == (await phone.register_with(sha)).status
            md5 = DigestClient(
                "bob", ha1={Algorithm.MD5: ha1("bob", "dialgate", "bobpass", Algorithm.MD5)}
            )
            assert 200 == (await phone.register_with(md5)).status
            # A password client answers the topmost (RFC 8760 §2.4).
            pw = DigestClient("bob", "bobpass")
            first = await phone.send("REGISTER", 1)
            assert pw.handle_challenge(401, first.headers.get_all("WWW-Authenticate"))
            auth = pw.authorization("REGISTER", phone.ruri)
            assert auth is not None and "algorithm=SHA-256" in auth[1]
        async with Phone("alice", gw.address("udp")) as phone:
            resp = await phone.send("INVITE", 1)
            assert [Algorithm.SHA256, Algorithm.MD5] == offered(resp, "Proxy-Authenticate")
    finally:
        await gw.close()


async def test_per_user_offers(carrier: Carrier, tmp_path: Path) -> None:
    """ha1_sha256 user: SHA-256 only (and registers); ha1_md5 user: MD5 only even when both are on."""
    gw = await started(carrier, tmp_path, ["MD5", "SHA-256"])
    try:
        async with Phone("carol", gw.address("udp")) as phone:
            assert [Algorithm.SHA256] == offered(await phone.send("REGISTER", 1))
            carol = DigestClient("carol", ha1={Algorithm.SHA256: SHA_HA1})
            assert 200 == (await phone.register_with(carol)).status
        async with Phone("dave", gw.address("udp")) as phone:
            assert [Algorithm.MD5] == offered(await phone.send("REGISTER", 1))
            dave = DigestClient("dave", ha1={Algorithm.MD5: MD5_HA1})
            assert 200 == (await phone.register_with(dave)).status
        async with Phone("erin", gw.address("udp")) as phone:
            assert [Algorithm.MD5] == offered(await phone.send("REGISTER", 1))
        async with Phone("alice", gw.address("udp")) as phone:
            assert [Algorithm.SHA256, Algorithm.MD5] == offered(await phone.send("REGISTER", 1))
    finally:
        await gw.close()


async def test_credentials_for_an_algorithm_not_offered_to_the_user_are_refused(
    carrier: Carrier, tmp_path: Path
) -> None:
    """erin is offered MD5 only: a correct SHA-256 answer (from an older challenge) gets 401."""
    gw = await started(carrier, tmp_path, ["MD5", "SHA-256"])
    try:
        # A SHA-256 challenge the server really issued (e.g. to bob).
        async with Phone("bob", gw.address("udp")) as bob:
            sha_challenge = (await bob.send("REGISTER", 1)).headers.get_all("WWW-Authenticate")
        async with Phone("erin", gw.address("udp")) as phone:
            client = DigestClient("erin", "erinpass")
            assert client.handle_challenge(401, sha_challenge)
            auth = client.authorization("REGISTER", phone.ruri)
            assert auth is not None and "SHA-256" in auth[1]
            refused = await phone.send("REGISTER", 2, auth)
            assert (401, [Algorithm.MD5]) == (refused.status, offered(refused))
            assert not gw.registrar.is_registered("erin", gw.sip_clock())
    finally:
        await gw.close()


# --- the SIP library: DigestServer narrows its offer per request ----------------------


def test_digest_server_answer_narrows_the_offer() -> None:
    """``answer(..., algorithms=)`` offers those only, in that order; unknown ones are refused."""
    server = DigestServer(
        key=b"k" * 32, realm="dialgate", algorithms=(Algorithm.SHA256, Algorithm.MD5)
    )
    failed = Verdict(Outcome.FAILED, reason="no-credentials")
    answer = server.answer(failed, 0.0, algorithms=(Algorithm.SHA256,))
    assert answer is not None
    assert [Algorithm.SHA256] == [Challenge.parse(v).effective_algorithm for _, v in answer.headers]
    default = server.answer(failed, 0.0, proxy=True)
    assert default is not None and 407 == default.status
    assert [Algorithm.SHA256, Algorithm.MD5] == [
        Challenge.parse(v).effective_algorithm for _, v in default.headers
    ]
    md5_only = DigestServer(key=b"k" * 32, realm="dialgate")
    with pytest.raises(ValueError, match="not accepted"):
        md5_only.challenges(0.0, algorithms=(Algorithm.SHA256,))
    with pytest.raises(ValueError, match="at least one"):
        md5_only.challenges(0.0, algorithms=())


# --- configuration --------------------------------------------------------------------


def test_setting_default_normalization_and_errors() -> None:
    """Default ["MD5"]; names case-insensitive, kept strongest first; bad lists refused by key."""
    assert ["MD5"] == Settings().sip.digest_algorithms
    assert ["SHA-256", "MD5"] == Settings(
        sip={"digest_algorithms": ["md5", "sha-256"]}
    ).sip.digest_algorithms
    assert ("SHA-256",) == Settings(sip={"digest_algorithms": ["SHA-256"]}).digest_algorithms_for(
        "anyone"
    )


@pytest.fixture
def write(tmp_path: Path) -> Iterator[Any]:
    """Write a TOML file, return its path."""

    def _write(text: str) -> Path:
        path = tmp_path / "dialgate.toml"
        path.write_text('[policy]\nconsent = "dnc-only"\n' + text)
        return path

    yield _write


SHA = "a" * 64
MD5 = "b" * 32


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[sip]\ndigest_algorithms = ["MD5", "SHA-1"]\n',
            "sip.digest_algorithms[1]: Input should be 'MD5' or 'SHA-256'",
        ),
        (
            "[sip]\ndigest_algorithms = []\n",
            "sip.digest_algorithms: Value should have at least 1 item",
        ),
        (
            '[sip]\ndigest_algorithms = ["MD5", "md5"]\n',
            "sip.digest_algorithms: 'MD5' is listed twice",
        ),
        (
            f'[[users]]\nname = "carol"\nha1_sha256 = "{SHA}"\n',
            "users[0].digest_algorithms: ha1_sha256 can only answer SHA-256, which [sip]"
            ' digest_algorithms does not offer: set digest_algorithms = ["SHA-256"] for this user',
        ),
        (
            f'[[users]]\nname = "carol"\nha1_sha256 = "{SHA}"\ndigest_algorithms = ["SHA-256", "MD5"]\n',
            "users[0].digest_algorithms: ha1_sha256 can only answer SHA-256, not MD5",
        ),
        (
            f'[[users]]\nname = "dave"\nha1_md5 = "{MD5}"\ndigest_algorithms = ["SHA-256"]\n',
            "users[0].digest_algorithms: ha1_md5 can only answer MD5, not SHA-256",
        ),
        (
            '[[users]]\nname = "u"\npassword = "p"\ndigest_algorithms = ["SHA-3"]\n',
            "users[0].digest_algorithms[0]: Input should be 'MD5' or 'SHA-256'",
        ),
        (
            f'[[peers]]\nname = "d1"\naddresses = ["127.0.0.1/32"]\nha1_sha256 = "{SHA}"\n',
            "sip.digest_algorithms: peers[0] ('d1') has only ha1_sha256, which needs \"SHA-256\"",
        ),
    ],
)
def test_impossible_combinations_name_their_key(write: Any, toml: str, expected: str) -> None:
    """Each error line names the key to fix; the secret itself never appears."""
    path = write(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert any(m.startswith(expected) for m in err.value.messages), err.value.messages
    assert SHA not in str(err.value) and MD5 not in str(err.value)


def test_possible_combinations_load(write: Any) -> None:
    """SHA-256 users with their override, MD5 users under both, passwords anywhere: fine."""
    path = write(
        '[sip]\ndigest_algorithms = ["SHA-256", "MD5"]\n'
        f'[[users]]\nname = "carol"\nha1_sha256 = "{SHA}"\n'
        f'[[users]]\nname = "dave"\nha1_md5 = "{MD5}"\n'
        f'[[users]]\nname = "erin"\npassword = "p"\ndigest_algorithms = ["MD5"]\n'
    )
    settings = load_settings(path)
    assert (("SHA-256",), ("MD5",), ("MD5",), ("SHA-256", "MD5")) == tuple(
        settings.digest_algorithms_for(n) for n in ("carol", "dave", "erin", "zed")
    )


def test_check_config_exit_code_and_message(write: Any) -> None:
    """``dialgate check-config`` exits 2 with the keyed line (as for every config error)."""
    path = write(f'[[users]]\nname = "carol"\nha1_sha256 = "{SHA}"\n')
    result = subprocess.run(
        [*dialgate_command(), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 2 == result.returncode
    assert (
        f"{path}: users[0].digest_algorithms: ha1_sha256 can only answer SHA-256" in result.stderr
    )
    assert SHA not in result.stderr
