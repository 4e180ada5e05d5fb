"""Issue 13: an agent paused by a complaint ceiling is announced on ``{root}/alerts``.

The complaint comes from ``dialgate complaint add`` in another process (its own file
with ``[policy.agents] complaints_per_day = 0``, the gateway's database); the running
gateway (``serve()`` on a real mosquitto) refuses alice's next call 403 ``agent-limit``
with Retry-After and its alert round publishes ``agent-paused``; ``dialgate agents
resume`` lifts the pause and ``agent-resumed`` follows.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from simulator.testkit import Mosquitto, wait_for
from tests.events.helpers import Collector
from tests.events.test_gateway_mqtt import ROOT, TOPICS, Running, running  # noqa: F401
from tests.integration.conftest import dialgate_command


async def test_cli_complaint_pauses_the_agent_and_the_gateway_publishes_it(
    running: Running,  # noqa: F811
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    config = tmp_path / "cli.toml"
    db = running.gateway.settings.store.path
    config.write_text(
        f'[store]\npath = "{db}"\n'
        '[policy]\nconsent = "dnc-only"\n'
        "[policy.agents]\ncomplaints_per_day = 0\n"
        '[[carriers]]\nname = "carrier-a"\naddress = "udp:127.0.0.1:9"\n'
        'timezone = "Asia/Shanghai"\n'
        '[[cards]]\nid = "c1"\ncarrier = "carrier-a"\nnumber = "+8613800000001"\n'
        '[[cards]]\nid = "c2"\ncarrier = "carrier-a"\nnumber = "+8613800000002"\n'
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*dialgate_command(), *args, "--config", str(config), "--actor", "ops"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr.decode()
        return done.stdout.decode()

    async with Collector(mosquitto.port, f"{ROOT}/#") as sub:

        def alerts(kind: str) -> list[dict[str, object]]:
            return [m.json for m in sub.on(TOPICS.alerts) if m.json.get("alert") == kind]

        out = await asyncio.to_thread(
            cli, "complaint", "add", "13912345678", "--agent", "alice", "--card", "c1"
        )
        assert "agent alice paused: over complaint ceiling: 1 complaints per day > 0" in out
        assert await wait_for(lambda: bool(alerts("agent-paused")), 10)
        [paused] = alerts("agent-paused")
        assert "alice" == paused["detail"]["agent"]  # type: ignore[index]

        final, _ = await running.alice.call("13912340000")
        assert 403 == final.status
        assert 'SIP;cause=403;text="agent-limit"' == final.headers.get("Reason")
        assert 0 < int(final.headers.get("Retry-After") or 0) <= 86400

        await asyncio.to_thread(cli, "agents", "resume", "alice")
        assert await wait_for(lambda: bool(alerts("agent-resumed")), 10)
        final, _ = await running.alice.call("13912340001")
        assert 200 == final.status
        assert 1 == len(alerts("agent-paused")), "the pause was announced more than once"
