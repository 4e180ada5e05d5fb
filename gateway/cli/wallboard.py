"""``dialgate wallboard``: serve the kiosk wall display that follows the gateway over MQTT.

Registers itself in ``gateway.cli.main.COMMANDS`` when imported. Options: ``--mqtt URL``
(default: ``[mqtt] url`` of the configuration, with its credentials), ``--listen
HOST:PORT`` (default ``127.0.0.1:8080``), ``--root`` (default ``[mqtt] root``),
``--ca-file`` (default ``[mqtt] ca_file``) for ``mqtts://``.

What it must never do: print or log the broker password (URLs are shown through
``ServiceUrl``, which masks it), or import the gateway core (it only reads MQTT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command, load_or_report
from gateway.config import ServiceUrl

__all__ = ["cmd_wallboard"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt", metavar="URL", default=None, help="broker URL (mqtt://, mqtts://)"
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", default="127.0.0.1:8080", help="HTTP address to serve on"
    )
    parser.add_argument("--root", default=None, help="MQTT root topic (default: [mqtt] root)")
    parser.add_argument(
        "--ca-file", default=None, help="CA certificate for mqtts:// (default: [mqtt] ca_file)"
    )


@command("wallboard", help="serve the wall display (MQTT → web page)", configure=_configure)
def cmd_wallboard(args: argparse.Namespace) -> int:
    """Run the wallboard until SIGINT/SIGTERM."""
    # The wall display judges no call: a file without [policy] consent serves it too.
    settings = load_or_report(args, require_consent=False)
    if settings is None:
        return EXIT_USAGE
    from gateway.operator.wallboard.server import MQTT_SCHEMES, serve_wallboard
    from gateway.operator.web import parse_listen
    from gateway.telemetry.logging import configure_logging, get_logger

    configure_logging(settings.logging, mask_numbers=settings.policy.mask_numbers)
    log = get_logger("gateway.cli.main")
    mqtt = settings.mqtt
    username: str | None = None
    password: str | None = None
    try:
        if args.mqtt is not None:
            url = ServiceUrl.parse(args.mqtt, schemes=MQTT_SCHEMES)
        elif mqtt is not None:
            url = mqtt.url
            user, secret = mqtt.credentials()
            username = user
            password = secret.get_secret_value() if secret is not None else None
        else:
            url = ServiceUrl.parse("mqtt://127.0.0.1:1883", schemes=MQTT_SCHEMES)
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"dialgate wallboard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    root = args.root or (mqtt.root if mqtt is not None else "dialgate")
    ca_file = args.ca_file
    if ca_file is None and mqtt is not None and mqtt.ca_file is not None:
        ca_file = str(mqtt.ca_file)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            await serve_wallboard(
                url,
                root=root,
                host=host,
                port=port,
                username=username,
                password=password,
                ca_file=ca_file,
                stop=stop,
            )
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("wallboard failed", error=str(exc))
        print(f"dialgate wallboard: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return EXIT_OK
