"""Structured logging for dialgate: structlog set up once, privacy applied on the way out.

What this module is for:

* ``configure_logging`` sets structlog (and the standard ``logging`` root, so library
  messages from asyncio/aiomqtt come out the same way) to write JSON lines, or a
  console rendering when the stream is a TTY and ``json`` is false;
* exceptions are rendered as dicts with ``show_locals=False`` — local variables of
  a failing frame may hold passwords (TOOLS.md);
* ``mask_callee_numbers`` masks callee numbers in fields such as ``callee``,
  ``destination``, ``to`` (``+86138****5678``) unless the configuration turns that
  off; ``drop_secrets`` removes ``password``/``authorization``/token-like keys and
  any ``SecretStr`` value, and blanks ``Authorization:`` header lines inside
  logged SIP text;
* ``mask_number`` is exported for MQTT events and CDR exports.

What it must never do: let a secret or an unmasked callee number reach a log line,
or read configuration files itself (it is handed ``LoggingSettings``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import phonenumbers
import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.config import LoggingSettings

__all__ = [
    "CALLEE_KEYS",
    "SECRET_KEYS",
    "configure_logging",
    "drop_secrets",
    "get_logger",
    "mask_callee_numbers",
    "mask_number",
    "mask_numbers_in",
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

_KEEP_TAIL = 4
_KEEP_HEAD = 3
_MIN_HIDDEN = 3
_MIN_MASK_DIGITS = 7  # shorter strings are service/short codes (110, 10086), not people

# A run of digits that may be a phone number: optional "+", at least 7 characters,
# allowing the usual visual separators inside. No upper bound: an over-long run
# under a callee key is still masked rather than leaked.
_NUMBER_RE = re.compile(r"(?<![\d*])\+?\d[\d\- ().]{5,}\d(?![\d*])")
_AUTH_LINE_RE = re.compile(
    r"(?im)^((?:proxy-)?authorization|(?:proxy|www)-authenticate)[ \t]*:[^\r\n]*"
)


def mask_number(e164: str) -> str:
    """Mask a phone number for logs: country code + 3 digits and the last 4 stay.

    ``+8613812345678`` → ``+86138****5678``; ``+12025550123`` → ``+1202****0123``.
    At least three digits are always hidden (fewer head/tail digits are kept for
    short numbers); the mask is always four ``*`` so it does not leak the length.
    Strings with fewer than seven digits (short codes) are returned unchanged; text
    that is more than a number (a SIP URI) has every number inside it masked.
    """
    if not _NUMBER_RE.fullmatch(e164.strip()):
        return mask_numbers_in(e164)
    digits = "".join(ch for ch in e164 if ch.isdigit())
    if len(digits) < _MIN_MASK_DIGITS:
        return e164
    plus = e164.lstrip().startswith("+")
    cc = ""
    if plus:
        cc = _country_code(digits)
    national = digits[len(cc) :]
    head, tail = _KEEP_HEAD, _KEEP_TAIL
    while len(national) - head - tail < _MIN_HIDDEN and head > 0:
        head -= 1
    while len(national) - head - tail < _MIN_HIDDEN and tail > 2:
        tail -= 1
    if len(national) - head - tail < _MIN_HIDDEN:
        head, tail = 0, 0
    kept_tail = national[len(national) - tail :] if tail else ""
    return f"{'+' if plus else ''}{cc}{national[:head]}****{kept_tail}"


def _country_code(digits: str) -> str:
    """The ITU country calling code at the start of *digits* (1-3 digits) or ''."""
    for size in (1, 2, 3):
        code = digits[:size]
        if phonenumbers.region_code_for_country_code(int(code)) != "ZZ":
            return code
    return ""


def mask_numbers_in(text: str) -> str:
    """Mask every phone-number-looking run in *text* (e.g. inside a SIP URI)."""
    return _NUMBER_RE.sub(lambda m: mask_number(m.group(0)), text)


def _norm(key: object) -> str:
    return str(key).lower().replace("-", "_")


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
    for key in list(event_dict):
        value = event_dict[key]
        if _norm(key) in CALLEE_KEYS:
            event_dict[key] = _mask_value(value)
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _mask_tree(value)
    return event_dict


def _is_secret_key(key: object) -> bool:
    norm = _norm(key)
    return norm in SECRET_KEYS or norm.endswith(("_password", "_token", "_secret"))


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
    for key in list(event_dict):
        value = event_dict[key]
        if _is_secret_key(key) or isinstance(value, SecretStr | SecretBytes):
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
