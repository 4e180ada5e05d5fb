"""The ``dialgate`` command table: ``@command`` registration, exit codes, config loading.

What it is for: every command group module (``gateway.cli.operator``, ``.security`` …)
registers its subcommands here; :mod:`gateway.cli.main` builds the parser from the table.
What it must never do: import a command group (groups import this, never the reverse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gateway.config import (
    ConfigError,
    Settings,
    find_default_config,
    load_settings,
)

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "command",
    "config_path",
    "load_or_report",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its words, help line, argument set-up and handler."""

    name: str
    help: str
    handler: Handler
    configure: Configure | None = None
    aliases: tuple[str, ...] = field(default=())


COMMANDS: dict[str, Command] = {}


def command(
    name: str, *, help: str, configure: Configure | None = None
) -> Callable[[Handler], Handler]:
    """Register *handler* as the subcommand *name* (``"dnc import"`` nests)."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"duplicate command {name!r}")
        COMMANDS[name] = Command(name, help, handler, configure)
        return handler

    return register


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        type=Path,
        default=None,
        help="configuration file (default: ./dialgate.toml if present, else built-in defaults)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """The file to load: ``--config``, else ``./dialgate.toml`` if present, else None."""
    explicit: Path | None = getattr(args, "config", None)
    return explicit if explicit is not None else find_default_config()


def _report_config_error(exc: ConfigError, err: TextIO) -> None:
    prefix = f"{exc.source}: " if exc.source is not None else ""
    for line in exc.messages:
        print(f"{prefix}{line}", file=err)


def load_or_report(
    args: argparse.Namespace, err: TextIO | None = None, *, require_consent: bool = True
) -> Settings | None:
    """Load the configuration for *args*; print each error and return None on failure."""
    try:
        return load_settings(config_path(args), require_consent=require_consent)
    except ConfigError as exc:
        _report_config_error(exc, err or sys.stderr)
        return None
