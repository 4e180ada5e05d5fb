"""Fixtures for the SIP simulator tests: the simulator's own pytest plugin.

``pytest_plugins = ["simulator.pytest_plugin"]`` is refused by pytest outside
the root conftest (collection error when the whole ``tests`` tree runs), so
the plugin's fixtures are imported by name instead.
"""

from simulator.pytest_plugin import (  # noqa: F401
    carrier,
    dialer,
    fake_clock,
    gateway,
    gateway_address,
    sim_answer,
    sim_cards,
    sim_clock,
    sim_kit,
    sim_peers,
    sim_speed,
    sim_start,
    sim_users,
    softphone,
)
