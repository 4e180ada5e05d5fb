"""gateway.callpath.security.Guard and BanFile: counting, tarpit, bans, escalation, the shared ban file.

Sans-clock: every test passes ``now`` by hand; no sockets, no sleeping.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.callpath.security import Admission, Ban, BanFile, Guard, metric_families
from gateway.config import SecuritySettings
from gateway.telemetry.metrics import render_families

ATTACKER = "127.0.0.3"
AGENT = "127.0.0.1"
T0 = 1_800_000_000.0


def guard(**overrides: object) -> Guard:
    """A guard with the default settings, some overridden."""
    return Guard(SecuritySettings(**overrides), trusted=["192.0.2.10"])  # type: ignore[arg-type]


def test_defaults_are_on_and_loopback_not_exempt() -> None:
    """[security] is on by default: 5 failures delay, 10 ban for 10 min; loopback is counted."""
    s = SecuritySettings()
    expected = (True, 5, 10, 600.0, 86400.0, [])
    assert expected == (s.enabled, s.delay_after, s.ban_after, s.ban_time, s.ban_time_max, s.exempt)
    assert not guard().exempt("127.0.0.1")


def test_failures_delay_then_ban() -> None:
    """Failures 1-4 answered at once, 5-9 held back `delay` s, the 10th bans (None: answer nothing)."""
    g = guard()
    holds = [g.auth_failed(ATTACKER, "alice", T0 + i) for i in range(10)]
    expected = [0.0] * 4 + [2.0] * 5 + [None]
    assert expected == holds
    [ban] = g.drain_new_bans()
    assert (ATTACKER, "auth-failures", 10, 1, 600.0) == (
        ban.address,
        ban.reason,
        ban.count,
        ban.offence,
        ban.until - ban.since,
    )
    assert Admission.DROP == g.admit(ATTACKER, T0 + 20)
    assert 1 == g.stats.blocked


def test_routine_challenges_to_a_delayed_source_are_held_back() -> None:
    """A source past delay_after gets even its plain challenges late; a clean one never."""
    g = guard()
    for i in range(5):
        g.auth_failed(ATTACKER, "x", T0 + i)
    assert (2.0, 0.0) == (g.hold(ATTACKER, T0 + 6), g.hold(AGENT, T0 + 6))
    assert 0.0 == g.hold(ATTACKER, T0 + 5 + 601)  # the failures left the window


def test_failures_outside_the_window_are_forgotten() -> None:
    """Nine failures spread over more than `window` never ban."""
    g = guard(window=60.0)
    holds = [g.auth_failed(ATTACKER, "alice", T0 + i * 30) for i in range(30)]
    assert None not in holds
    assert [] == g.drain_new_bans()


def test_ban_escalates_doubling_up_to_the_maximum() -> None:
    """Each further ban within ban_memory doubles: 600, 1200, 2400 … capped at ban_time_max."""
    g = guard(ban_time_max=3000.0)
    now = T0
    lengths = []
    for _ in range(4):
        for _ in range(10):
            g.auth_failed(ATTACKER, "alice", now)
        [ban] = g.drain_new_bans()
        lengths.append((ban.offence, ban.until - ban.since))
        now = ban.until + 1
        assert Admission.ALLOW == g.admit(ATTACKER, now)  # the ban ended
    expected = [(1, 600.0), (2, 1200.0), (3, 2400.0), (4, 3000.0)]
    assert expected == lengths


def test_escalation_forgotten_after_ban_memory() -> None:
    """A source banned again a day and more after its last ban starts at ban_time again."""
    g = guard(ban_memory=3600.0)
    for _ in range(10):
        g.auth_failed(ATTACKER, "a", T0)
    [first] = g.drain_new_bans()
    later = first.until + 3601
    g.expire(later)
    for _ in range(10):
        g.auth_failed(ATTACKER, "a", later)
    [second] = g.drain_new_bans()
    assert (1, 600.0) == (second.offence, second.until - second.since)


def test_per_user_failures_slow_but_never_ban_the_user() -> None:
    """40 failures for alice from 40 addresses: her failed attempts are held back,
    no address is banned, and alice's right password from her own address passes."""
    g = guard()
    holds = [g.auth_failed(f"198.51.100.{i}", "alice", T0 + i) for i in range(40)]
    expected = [0.0] * 19 + [2.0] * 21
    assert expected == holds
    assert [] == g.drain_new_bans()
    # alice's own phone: its routine challenge is not held, it is not banned.
    assert (Admission.ALLOW, 0.0) == (g.admit(AGENT, T0 + 50), g.hold(AGENT, T0 + 50))


def test_unknown_names_are_counted_like_known_ones() -> None:
    """No enumeration: the per-user delay does not depend on whether the name exists."""
    g = guard(user_delay_after=3)
    for name in ("alice", "nobody-xyz"):
        holds = [g.auth_failed(f"198.51.100.{i}", name, T0) for i in range(4)]
        assert [0.0, 0.0, 2.0, 2.0] == holds


def test_an_attacker_ban_leaves_another_address_alone() -> None:
    """The attacker is banned; the agent's address is admitted and never delayed."""
    g = guard()
    for i in range(10):
        g.auth_failed(ATTACKER, "alice", T0 + i)
    assert Admission.DROP == g.admit(ATTACKER, T0 + 11)
    assert Admission.ALLOW == g.admit(AGENT, T0 + 11)
    assert 0.0 == g.auth_failed(AGENT, "alice", T0 + 11)  # a typo of its own: not delayed


def test_flood_bans_the_source() -> None:
    """More than flood_requests within flood_window: banned ("flood"), the rest dropped."""
    g = guard(flood_requests=100, flood_window=2.0)
    got = [g.admit(ATTACKER, T0 + i * 0.001) for i in range(150)]
    assert [Admission.ALLOW] * 100 + [Admission.DROP] * 50 == got
    [ban] = g.drain_new_bans()
    assert ("flood", 101) == (ban.reason, ban.count)
    assert (1, 1) == (g.stats.flood_bans, g.stats.bans)


def test_steady_traffic_under_the_flood_limit_passes() -> None:
    """90 requests every 2 s for a minute (45/s under a 50/s limit) are never banned."""
    g = guard(flood_requests=100, flood_window=2.0)
    results = {g.admit(AGENT, T0 + i * (2.0 / 90)) for i in range(90 * 30)}
    assert {Admission.ALLOW} == results


def test_exempt_networks_and_carriers_are_never_counted() -> None:
    """[security] exempt and the carriers' addresses: no flood ban, no failure count."""
    g = guard(exempt=["10.0.0.0/8"], flood_requests=10)
    for host in ("10.1.2.3", "192.0.2.10"):
        assert {Admission.ALLOW} == {g.admit(host, T0) for _ in range(100)}
        assert {0.0} == {g.auth_failed(host, "alice", T0) for _ in range(100)}
    assert [] == g.drain_new_bans()


def test_ban_answer_403_refuses() -> None:
    """ban_answer = "403": a banned source's requests are REFUSEd (answered 403)."""
    g = guard(ban_answer="403")
    for _ in range(10):
        g.auth_failed(ATTACKER, "alice", T0)
    assert Admission.REFUSE == g.admit(ATTACKER, T0 + 1)


def test_disabled_guard_does_nothing() -> None:
    """enabled = false: nothing is counted, delayed or banned."""
    g = guard(enabled=False, flood_requests=1)
    assert {0.0} == {g.auth_failed(ATTACKER, "alice", T0) for _ in range(50)}
    assert {Admission.ALLOW} == {g.admit(ATTACKER, T0) for _ in range(50)}


def test_unban_forgets_failures_and_offences() -> None:
    """A lifted ban starts the source afresh: the next failure is not a ban."""
    g = guard()
    for _ in range(10):
        g.auth_failed(ATTACKER, "alice", T0)
    g.drain_new_bans()
    assert g.unban(ATTACKER) is not None
    assert (Admission.ALLOW, 0.0) == (g.admit(ATTACKER, T0 + 1), g.auth_failed(ATTACKER, "a", T0))
    assert 1 == g.stats.cleared


def test_adopt_clears_and_adopts() -> None:
    """adopt(file): a ban missing from the file is lifted; a ban only in the file is taken."""
    g = guard()
    for _ in range(10):
        g.auth_failed(ATTACKER, "alice", T0)
    g.drain_new_bans()
    other = Ban("203.0.113.9", T0, T0 + 600, "flood", 5000)
    adopted, cleared = g.adopt({other.address: other}, T0 + 1)
    assert ([other.address], [ATTACKER]) == (
        [b.address for b in adopted],
        [b.address for b in cleared],
    )
    assert Admission.ALLOW == g.admit(ATTACKER, T0 + 2)
    assert Admission.DROP == g.admit(other.address, T0 + 2)


def test_source_memory_is_bounded() -> None:
    """A spray of source addresses never grows the table beyond max_sources."""
    g = guard(max_sources=100)
    for i in range(5000):
        g.auth_failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"u{i}", T0)
    assert 100 == len(g._sources)


def test_metric_families_count_bans() -> None:
    """/metrics: dialgate_security_bans_total and the banned-sources gauge."""
    g = guard()
    for _ in range(10):
        g.auth_failed(ATTACKER, "alice", T0)
    text = render_families(metric_families(g, T0 + 1))
    assert "dialgate_security_bans_total 1.0\n" in text
    assert "dialgate_security_banned_sources 1.0\n" in text


# --- BanFile ---------------------------------------------------------------------------


def test_ban_file_round_trip_private(tmp_path: Path) -> None:
    """update() writes 0600 JSON; load() reads the same bans; ended bans are pruned."""
    os.umask(0o022)
    f = BanFile(tmp_path / "db.sqlite.bans.json")
    live = Ban(ATTACKER, T0, T0 + 600, "auth-failures", 10)
    ended = Ban("203.0.113.1", T0 - 900, T0 - 300, "flood", 2000)

    def add(bans: dict[str, Ban]) -> None:
        bans[live.address] = live
        bans[ended.address] = ended

    f.update(add, T0)
    assert {ATTACKER: live} == BanFile(f.path).load()
    assert 0o600 == stat.S_IMODE(f.path.stat().st_mode)
    assert 0o600 == stat.S_IMODE(f.path.with_name(f.path.name + ".lock").stat().st_mode)


def test_ban_file_changed_sees_another_writer(tmp_path: Path) -> None:
    """A second BanFile object (the CLI) writing is seen by the first (the gateway)."""
    path = tmp_path / "bans.json"
    gateway_side, cli_side = BanFile(path), BanFile(path)
    assert not gateway_side.changed()  # no file yet
    gateway_side.update(lambda b: b.update({ATTACKER: Ban(ATTACKER, T0, T0 + 60, "x", 1)}), T0)
    assert not gateway_side.changed()
    cli_side.update(lambda b: b.clear(), T0)
    assert gateway_side.changed()
    assert {} == gateway_side.load()


@pytest.mark.parametrize("content", ["", "not json", '{"bans": [{"address": "nope"}]}', "[]"])
def test_ban_file_garbage_is_an_empty_list(tmp_path: Path, content: str) -> None:
    """A damaged ban file never raises: it reads as no bans."""
    path = tmp_path / "bans.json"
    path.write_text(content)
    assert {} == BanFile(path).load()


def test_peer_addresses_skip_flood_control_only() -> None:
    """A [[peers]] allow-list is not flood-counted, but its failed logins still ban."""
    import ipaddress

    g = Guard(
        SecuritySettings(flood_requests=10),
        flood_exempt=[ipaddress.ip_network("127.0.0.0/30")],
    )
    assert {Admission.ALLOW} == {g.admit(AGENT, T0) for _ in range(1000)}
    for _ in range(10):
        g.auth_failed(AGENT, "dialer-1", T0)
    assert Admission.DROP == g.admit(AGENT, T0 + 1)


def test_ipv6_counted_per_64() -> None:
    """Ten failures spread over ten addresses of one /64 ban the /64; another /64 is untouched."""
    g = guard()
    for i in range(10):
        g.auth_failed(f"2001:db8:1:2::{i + 1:x}", "alice", T0)
    [ban] = g.drain_new_bans()
    assert "2001:db8:1:2::/64" == ban.address
    assert Admission.DROP == g.admit("2001:db8:1:2:ffff::9", T0 + 1)
    assert Admission.ALLOW == g.admit("2001:db8:1:3::1", T0 + 1)
    assert g.unban("2001:db8:1:2::77") is not None  # an address of the network lifts it
    assert Admission.ALLOW == g.admit("2001:db8:1:2::1", T0 + 2)


def test_ipv6_prefix_128_is_per_address() -> None:
    """ipv6_prefix = 128: each IPv6 address on its own; IPv4 is always per address."""
    from gateway.callpath.security import source_key

    g = guard(ipv6_prefix=128)
    for i in range(10):
        g.auth_failed(f"2001:db8::{i + 1:x}", "alice", T0)
    assert [] == g.drain_new_bans()
    expected = ("2001:db8::/64", "2001:db8::1", "192.0.2.7", "::/64")
    assert expected == (
        source_key("2001:db8::1"),
        source_key("2001:db8::1", 128),
        source_key("192.0.2.7"),
        source_key("::1"),
    )
