"""The example cluster's files are valid as shipped: both node configurations pass
``dialgate check-config`` and Kamailio accepts its configuration with the dispatcher list."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.conftest import dialgate_command

from .conftest import KAMAILIO_CFG, ROOT, kamailio_binary, kamailio_modules

EXAMPLES = ROOT / "examples" / "cluster"


def test_node_configurations_pass_check_config() -> None:
    """node1.toml and node2.toml: valid, distinct node names and listeners, same Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    seen = []
    for name in ("node1.toml", "node2.toml"):
        out = subprocess.run(
            [*dialgate_command(), "check-config", str(EXAMPLES / name)],
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert 0 == out.returncode, out.stderr.decode(errors="replace")
        seen.append(out.stdout.decode())
    assert "127.0.0.2:5060" in seen[0] and "127.0.0.3:5060" in seen[1]
    text = [(EXAMPLES / n).read_text() for n in ("node1.toml", "node2.toml")]
    assert 'node = "gw1"' in text[0] and 'node = "gw2"' in text[1]


def test_kamailio_accepts_the_configuration(tmp_path: Path) -> None:
    """``kamailio -c`` with the shipped dispatcher list: the modules load, the routes parse."""
    out = subprocess.run(
        [
            kamailio_binary(),
            "-c",
            "-f",
            str(KAMAILIO_CFG),
            "-L",
            kamailio_modules(),
            "-Y",
            str(tmp_path),
            "-A",
            "LB_LISTEN=udp:127.0.0.1:5060",
            "-A",
            f'LB_NODES="{EXAMPLES / "nodes.list"}"',
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    log = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    assert 0 == out.returncode, log
    assert "config file ok" in log.lower(), log
