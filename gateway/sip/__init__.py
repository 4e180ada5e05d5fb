"""``gateway.sip``: sans-IO SIP (RFC 3261) message handling.

Re-exports the public API of docs/sip-api.md. This package must never open
sockets, read clocks, start threads or touch asyncio.

Native build: ``make install`` compiles every module of this package but this
one with mypyc when a C compiler is present (``scripts/build_native.py``).
This file stays interpreted and picks the build at import: the compiled
modules are used only while ``_native_manifest.json`` lists the SHA-256 of
every source exactly as it is now. When a source changed since the build (or
the manifest is missing), one warning goes to stderr and every
``gateway.sip.*`` module is loaded from its ``.py`` instead — never stale
compiled code. ``DIALGATE_PURE_PYTHON=1`` forces the pure-Python modules
without a warning. :data:`NATIVE` says which build is in use.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
_MANIFEST = _HERE / "_native_manifest.json"
_SHARED_LIB = "_native__mypyc"


def _compiled_modules() -> set[str]:
    """Names of the modules with an extension file next to their source."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    try:
        names = [p.name for p in _HERE.iterdir() if p.name.endswith(suffixes)]
    except OSError:
        return set()
    return {n.split(".", 1)[0] for n in names} - {_SHARED_LIB}


def _stale_reason(compiled: set[str]) -> str | None:
    """Why the compiled modules must not be used, or None when they match their sources."""
    try:
        manifest = json.loads(_MANIFEST.read_text(encoding="utf-8"))
        recorded: dict[str, str] = manifest["sources"]
        python = manifest["python"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{_MANIFEST.name} is missing or unreadable"
    if python != sys.implementation.cache_tag:
        return f"the native build is for {python}, not {sys.implementation.cache_tag}"
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    if not any((_HERE / f"{_SHARED_LIB}{suffix}").is_file() for suffix in suffixes):
        return f"the shared library {_SHARED_LIB} of the native build is missing"
    for name in sorted(compiled):
        if f"{name}.py" not in recorded:
            return f"{name}.py is not in {_MANIFEST.name}"
    for name, want in sorted(recorded.items()):
        try:
            have = hashlib.sha256((_HERE / name).read_bytes()).hexdigest()
        except OSError:
            have = None
        if have != want:
            return f"gateway/sip/{name} changed since the native build"
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads ``gateway.sip.<module>`` from its ``.py`` even when an extension sits beside it."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__:
            return None
        source = _HERE / f"{name}.py"
        if not source.is_file():
            return None
        loader = importlib.machinery.SourceFileLoader(fullname, str(source))
        return importlib.util.spec_from_file_location(fullname, source, loader=loader)


def _use_sources() -> None:
    """Make every later ``gateway.sip.*`` import load the ``.py`` files."""
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def _choose_build() -> bool:
    compiled = _compiled_modules()
    if not compiled:
        return False
    if os.environ.get("DIALGATE_PURE_PYTHON", "") not in ("", "0"):
        _use_sources()
        return False
    reason = _stale_reason(compiled)
    if reason is not None:
        sys.stderr.write(
            f"dialgate: {reason}; using the pure-Python SIP core"
            " (run `make install` to rebuild the native one)\n"
        )
        _use_sources()
        return False
    return True


_NATIVE_CHOSEN = _choose_build()

# The submodules are imported only now, after the build was chosen (hence E402).
from .errors import (  # noqa: E402
    AuthError,
    BadExtension,
    MessageTooLarge,
    NotAcceptable,
    ParseError,
    SIPError,
    TooManyHops,
    TransactionError,
    UnsupportedURIScheme,
    VersionNotSupported,
)
from .headers import CSeq, Headers, NameAddr, Reason, RetryAfter, Via  # noqa: E402
from .message import (  # noqa: E402
    MAX_MESSAGE_SIZE,
    REASON_PHRASES,
    Request,
    Response,
    error_response,
    make_response,
    parse,
)
from .uri import URI  # noqa: E402
from .validate import check_request, check_response  # noqa: E402

NATIVE: bool = _NATIVE_CHOSEN and isinstance(
    getattr(sys.modules[f"{__name__}.message"], "__loader__", None),
    importlib.machinery.ExtensionFileLoader,
)
"""True when the mypyc-compiled modules are in use, False for the pure-Python ones."""


def build_name() -> str:
    """``"native (mypyc)"`` or ``"pure Python"``: for ``--version`` and the startup log."""
    return "native (mypyc)" if NATIVE else "pure Python"


__all__ = [
    "MAX_MESSAGE_SIZE",
    "NATIVE",
    "REASON_PHRASES",
    "URI",
    "AuthError",
    "BadExtension",
    "CSeq",
    "Headers",
    "MessageTooLarge",
    "NameAddr",
    "NotAcceptable",
    "ParseError",
    "Reason",
    "Request",
    "Response",
    "RetryAfter",
    "SIPError",
    "TooManyHops",
    "TransactionError",
    "UnsupportedURIScheme",
    "VersionNotSupported",
    "Via",
    "build_name",
    "check_request",
    "check_response",
    "error_response",
    "make_response",
    "parse",
]
