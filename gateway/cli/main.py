"""The ``dialgate`` command line: one function per subcommand, one table of them all.

What this module is for: parse arguments, load the configuration (``--config FILE``,
else ``dialgate.toml`` in the working directory, else embedded defaults), set up
logging and hand over to the part of the gateway that does the work. Subcommands
are registered with ``@command("name", help=...)``; a name with a space
(``"dnc import"``) becomes a nested subcommand, so each later command (cards, dnc
import, consent import, complaint add, simulate, wallboard, bench) is one function.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

What it must never do: print a secret (configuration is shown only through
``explain_errors`` and SecretStr-masked dumps), or import the running gateway at
module import time — ``gateway.app`` is imported lazily inside ``run`` so the tool
works for configuration checks without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway import sip as sip_core
from gateway.cli import base
from gateway.cli.base import (
    COMMANDS,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    Handler,
    _add_config_option,
    _report_config_error,
    command,
    config_path,
    load_or_report,
)
from gateway.config import (
    ConfigError,
    Settings,
    config_warnings,
    load_settings,
    summary,
)

__all__ = ["COMMANDS", "Command", "build_parser", "command", "main"]


# ---------------------------------------------------------------------------
# check-config
# ---------------------------------------------------------------------------


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", nargs="?", type=Path, default=None, help="file to check (same as --config)"
    )
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the effective configuration as JSON (secrets masked)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (all-day calling hours, cards without hour/day limits,"
        " weak passwords) as errors: exit 2",
    )


@command(
    "check-config",
    help="validate a configuration file and explain each error with its key path",
    configure=_configure_check,
)
def cmd_check_config(args: argparse.Namespace) -> int:
    """Exit 0 with a one-line summary when valid, 2 with one line per error otherwise."""
    if args.file is not None:
        args.config = args.file
    path = config_path(args)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _report_config_error(exc, sys.stderr)
        print(f"{path or '(defaults)'}: {len(exc.messages)} error(s)", file=sys.stderr)
        return EXIT_USAGE
    warnings = config_warnings(settings)
    kind = "error" if args.strict else "warning"
    for line in warnings:
        print(f"{path or '(defaults)'}: {kind}: {line}", file=sys.stderr)
    if warnings and args.strict:
        print(
            f"{path or '(defaults)'}: {len(warnings)} warning(s), refused by --strict",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.show:
        print(settings.model_dump_json(indent=2, by_alias=True))
    print(f"{path or '(built-in defaults)'}: OK — {summary(settings)}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        metavar="N",
        help='worker processes sharing the SIP listeners: a number or "auto" (one per core);'
        " overrides [server] workers (default 1: one process)",
    )
    # Set by the supervisor of a --workers set on each worker's command line.
    parser.add_argument("--worker-role", default=None, help=argparse.SUPPRESS)


def _worker_count(text: str) -> int | str:
    from gateway.config import ServerSettings

    try:
        return ServerSettings(workers=text).workers  # type: ignore[arg-type]
    except ValueError as exc:
        reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise argparse.ArgumentTypeError(reason.removeprefix("Value error, ")) from None


@command(
    "run",
    help="run the gateway until SIGINT/SIGTERM (--workers N: N processes)",
    configure=_configure_run,
)
def cmd_run(args: argparse.Namespace) -> int:
    """Load config, set up logging, serve until a signal asks to stop.

    With more than one worker (``--workers``, else ``[server] workers``) this
    process supervises that many ``dialgate run`` workers (:mod:`gateway.cli.workers`).
    """
    settings = load_or_report(args)
    if settings is None:
        return EXIT_USAGE
    from gateway.telemetry.logging import configure_logging, get_logger
    from gateway.workers import WorkerRole

    configure_logging(settings.logging, mask_numbers=settings.policy.mask_numbers)
    log = get_logger("gateway.cli.main")
    role: WorkerRole | None = None
    if getattr(args, "worker_role", None):
        import structlog

        from gateway.cli.workers import die_with_parent

        die_with_parent()
        role = WorkerRole.from_json(args.worker_role)
        settings = _worker_settings(settings, role)
        # Every log line of this process says which worker wrote it.
        structlog.contextvars.bind_contextvars(worker=role.index)
    else:
        workers = getattr(args, "workers", None)
        if workers is not None:
            settings = settings.model_copy(
                update={"server": settings.server.model_copy(update={"workers": workers})}
            )
        count = settings.server.worker_count()
        if count > 1:
            if str(settings.store.path) == ":memory:":
                print(
                    "dialgate run: server.workers: several workers share the store through"
                    ' its file; store.path = ":memory:" allows one process only',
                    file=sys.stderr,
                )
                return EXIT_USAGE
            from gateway.cli.workers import supervise

            return supervise(settings, config_path(args), count, log)
    try:
        from gateway.app import serve
    except ImportError as exc:
        log.error("gateway.app unavailable", error=str(exc))
        print(f"dialgate run: the gateway is not available ({exc})", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return asyncio.run(_serve_until_signal(serve, settings, log, worker=role))
    except KeyboardInterrupt:  # a signal before the loop installed its handlers
        return EXIT_FAILURE


def _worker_settings(settings: Settings, role: Any) -> Settings:
    """A worker's view of the settings: workers other than 0 publish MQTT under their
    own node name (``<node>-w<i>``, its own status topic and last will)."""
    if settings.mqtt is None or role.index == 0:
        return settings
    mqtt = settings.mqtt.model_copy(update={"node": f"{settings.mqtt.node}-w{role.index}"})
    return settings.model_copy(update={"mqtt": mqtt})


async def _serve_until_signal(
    serve: Callable[..., Any], settings: Settings, log: Any, *, worker: Any = None
) -> int:
    """Run ``serve(settings, ready=, stop=)``; the first signal sets ``stop``,
    a second one cancels the server outright."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    stop = asyncio.Event()
    extra = {} if worker is None else {"worker": worker}
    task = asyncio.ensure_future(serve(settings, ready=ready, stop=stop, **extra))
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal, cancelling", signal=signal.Signals(signum).name)
            task.cancel()
        else:
            log.info("stopping", signal=signal.Signals(signum).name)
            stop.set()

    installed: list[int] = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)

    async def announce_ready() -> None:
        await ready.wait()
        fields = {} if worker is None else {"worker": worker.index}
        log.info(
            "ready",
            listen=[str(s) for s in settings.sip.listen],
            version=__version__,
            sip_core=sip_core.build_name(),
            **fields,
        )

    announcer = asyncio.ensure_future(announce_ready())
    try:
        await task
    except asyncio.CancelledError:
        return EXIT_FAILURE
    except Exception:
        log.exception("gateway failed")
        return EXIT_FAILURE
    finally:
        announcer.cancel()
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return EXIT_OK


# ---------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full parser, built from ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="dialgate",
        description="SIP gateway for outbound call centers.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dialgate {__version__} (SIP core: {sip_core.build_name()})",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    parsers: dict[str, argparse.ArgumentParser] = {}
    # Shorter names first, so a command that is also a group ("cards" beside
    # "cards show") exists before its children hang their parsers under it; such
    # a group runs its own handler when no subcommand is given.
    for cmd in sorted(base.COMMANDS.values(), key=lambda c: (len(c.name.split()), c.name)):
        words = cmd.name.split()
        container = top
        for depth, word in enumerate(words[:-1]):
            key = " ".join(words[: depth + 1])
            if key not in groups:
                group = parsers.get(key) or container.add_parser(word, help=f"{key} commands")
                parsers[key] = group
                groups[key] = group.add_subparsers(dest=f"sub_{depth}", metavar="COMMAND")
                groups[key].required = key not in base.COMMANDS
            container = groups[key]
        sub = container.add_parser(words[-1], help=cmd.help, description=cmd.help)
        parsers[cmd.name] = sub
        _add_config_option(sub)
        if cmd.configure is not None:
            cmd.configure(sub)
        sub.set_defaults(handler=cmd.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return handler(args)


# Subcommands that live in their own modules register themselves on import;
# they import ``command`` from here, so they are loaded after it is defined.
from gateway.cli import cluster as _cli_cluster  # noqa: E402,F401  ("cluster status")
from gateway.cli import leads as _cli_leads  # noqa: E402,F401  ("leads check")
from gateway.cli import operator as _cli_operator  # noqa: E402,F401  (cards, dnc, consent, complaint, cdrs, alerts)
from gateway.cli import security as _cli_security  # noqa: E402,F401  ("security bans")
from gateway.cli import simulate as _cli_simulate  # noqa: E402,F401  ("simulate")
from gateway.cli import up as _cli_up  # noqa: E402,F401  ("up": broker, carrier, gateway, wallboard)
from gateway.cli import wallboard as _cli_wallboard  # noqa: E402,F401  ("wallboard")
