"""Structured logging for dialgate: structlog set up once, privacy applied on the way out.

What this module is for:

* ``configure_logging`` sets structlog (and the standard ``logging`` root, so library
  messages from asyncio/aiomqtt come out the same way) to write JSON lines, or a
  console rendering when the stream is a TTY and ``json`` is false;
* exceptions are rendered as dicts with ``show_locals=False`` — local variables of
  a failing frame may hold passwords (TOOLS.md);
* ``mask_callee_numbers`` masks callee numbers in fields such as ``callee``,
  ``destination``, ``to`` (``+86138****5678``, the rule of ``policies.privacy``)
  unless the configuration turns that off; ``drop_secrets`` removes
  ``password``/``authorization``/token-like keys and any ``SecretStr`` value, and
  blanks ``Authorization:`` header lines inside logged SIP text;
* ``mask_number`` is re-exported from ``policies.privacy`` for older imports;
  new code imports it from there.

What it must never do: let a secret or an unmasked callee number reach a log line,
or read configuration files itself (it is handed ``LoggingSettings``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.config import LoggingSettings
from policies.privacy import mask_number, mask_numbers_in

__all__ = [
    "CALLEE_KEYS",
    "SECRET_KEYS",
    "configure_logging",
    "drop_secrets",
    "get_logger",
    "mask_callee_numbers",
    "mask_number",
]

# Keys whose values are (or contain) a callee's number. Matched case-insensitively,
# with "-" treated as "_".
CALLEE_KEYS = frozenset(
    {
        "callee",
        "callee_number",
        "called",
        "called_number",
        "destination",
        "dest",
        "number",
        "to",
        "to_number",
        "to_uri",
        "ruri",
        "request_uri",
        "target",
        "phone",
        "msisdn",
        "e164",
        "lead",
    }
)

# Keys whose values are dropped outright.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "proxy_authorization",
        "www_authenticate",
        "proxy_authenticate",
        "ha1",
        "ha1_md5",
        "ha1_sha256",
        "api_key",
        "cookie",
        "card_secret",
    }
)

_AUTH_LINE_RE = re.compile(
    r"(?im)^((?:proxy-)?authorization|(?:proxy|www)-authenticate)[ \t]*:[^\r\n]*"
)


def _norm(key: object) -> str:
    return str(key).lower().replace("-", "_")


# Log field names are few (the same dozens on every line): whether a name is a
# callee or a secret key is worked out once per name. Bounded, because nested
# mappings may carry keys from data.
_KEY_MEMO_MAX = 4096
_CALLEE_KEY: dict[object, bool] = {}
_SECRET_KEY: dict[object, bool] = {}

# Values that no processor here changes (besides ``str``, handled inline).
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def _is_callee_key(key: object) -> bool:
    hit = _CALLEE_KEY.get(key)
    if hit is None:
        hit = _norm(key) in CALLEE_KEYS
        if len(_CALLEE_KEY) < _KEY_MEMO_MAX:
            _CALLEE_KEY[key] = hit
    return hit


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_numbers_in(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return mask_numbers_in(str(value))
    if isinstance(value, Mapping):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return mask_numbers_in(str(value))


def _mask_tree(value: Any) -> Any:
    """Walk dicts/lists; mask values under callee-like keys."""
    if isinstance(value, Mapping):
        return {
            k: _mask_value(v) if _norm(k) in CALLEE_KEYS else _mask_tree(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_tree(v) for v in value]
    return value


def mask_callee_numbers(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask numbers under callee-like keys, at any depth."""
    plain = _PLAIN_TYPES
    for key, value in list(event_dict.items()):
        if _is_callee_key(key):
            event_dict[key] = _mask_value(value)
        elif type(value) is str or type(value) in plain:
            continue
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _mask_tree(value)
    return event_dict


def _is_secret_key(key: object) -> bool:
    hit = _SECRET_KEY.get(key)
    if hit is None:
        norm = _norm(key)
        hit = norm in SECRET_KEYS or norm.endswith(("_password", "_token", "_secret"))
        if len(_SECRET_KEY) < _KEY_MEMO_MAX:
            _SECRET_KEY[key] = hit
    return hit


def _scrub(value: Any) -> Any:
    """Return *value* without secret keys/values; blank auth header lines in text."""
    if isinstance(value, str):
        if ":" in value and _AUTH_LINE_RE.search(value):
            return _AUTH_LINE_RE.sub(r"\1: [redacted]", value)
        return value
    if isinstance(value, Mapping):
        return {
            k: _scrub(v)
            for k, v in value.items()
            if not _is_secret_key(k) and not isinstance(v, SecretStr | SecretBytes)
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value if not isinstance(v, SecretStr | SecretBytes)]
    return value


def drop_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret-keyed fields and SecretStr values, at any depth."""
    plain = _PLAIN_TYPES
    for key, value in list(event_dict.items()):
        if _is_secret_key(key):
            del event_dict[key]
        elif type(value) in plain:
            continue
        elif type(value) is str:
            if ":" in value and _AUTH_LINE_RE.search(value):
                event_dict[key] = _AUTH_LINE_RE.sub(r"\1: [redacted]", value)
        elif isinstance(value, SecretStr | SecretBytes):
            del event_dict[key]
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def _level_number(settings: LoggingSettings) -> int:
    return int(logging.getLevelNamesMapping()[settings.level.value.upper()])


def build_processors(
    *, mask_numbers: bool = True, json_lines: bool = True
) -> tuple[list[Processor], Processor, Processor]:
    """(shared pre-chain, exception processor, renderer) for structlog and stdlib."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if mask_numbers:
        shared.append(mask_callee_numbers)
    shared.append(drop_secrets)
    exceptions: Processor = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    renderer: Processor
    if json_lines:
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        # plain_traceback: a rich traceback would print frame locals (passwords).
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    return shared, exceptions, renderer


def configure_logging(
    settings: LoggingSettings | None = None,
    *,
    mask_numbers: bool = True,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger to write to *stream*.

    JSON lines unless ``settings.json`` is false *and* the stream is a TTY, in which
    case a console rendering is used. ``mask_numbers`` comes from
    ``policy.mask_numbers``. Calling it again reconfigures (tests rely on that).
    """
    settings = settings or LoggingSettings()
    out: TextIO = stream if stream is not None else sys.stderr
    is_tty = bool(getattr(out, "isatty", lambda: False)())
    json_lines = settings.json_lines or not is_tty
    shared, exceptions, renderer = build_processors(
        mask_numbers=mask_numbers, json_lines=json_lines
    )
    level = _level_number(settings)
    # Exceptions are turned into dicts only for JSON; the console renderer formats
    # exc_info itself (without locals, see build_processors).
    tail: list[Processor] = [exceptions, renderer] if json_lines else [renderer]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("dialgate")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "dialgate"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger bound to ``logger=name`` and *initial* values."""
    if name is not None:
        initial["logger"] = name
    return structlog.get_logger().bind(**initial)
