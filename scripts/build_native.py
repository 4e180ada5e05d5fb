"""Compile the sans-IO SIP core (``gateway/sip``) in place with mypyc.

``make install`` runs this after the virtualenv is ready. With a C compiler,
the Python headers and mypyc (the ``test`` extra installs mypy) it builds one
extension per module of ``gateway/sip`` (all but ``__init__.py``, which stays
interpreted and decides at import which build to use) plus their shared
library ``gateway/sip/_native__mypyc*.so``, and writes
``gateway/sip/_native_manifest.json``: the SHA-256 of every compiled source.
``gateway/sip/__init__.py`` loads the compiled modules only while every hash
still matches, so an edited ``.py`` is never shadowed by a stale build.

Without a compiler, without mypyc, or with ``DIALGATE_NATIVE=0`` it removes any
earlier build, prints one line and exits 0: the package runs as pure Python.
A build that fails is reported and also leaves pure Python (exit 0, so
``make install`` still gives a working tree; ``tests/native`` fails on a box
with a compiler where nothing was compiled).

Usage: ``python scripts/build_native.py [--force | --clean | --check]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway" / "sip"
MANIFEST = PACKAGE / "_native_manifest.json"
GROUP = "gateway.sip._native"  # the shared library: gateway/sip/_native__mypyc.*.so
BUILD_DIR = ROOT / "build" / "native"


def sources() -> list[Path]:
    """The modules compiled: every ``gateway/sip/*.py`` but ``__init__.py``."""
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_files() -> list[Path]:
    """Every extension module of an earlier build inside the package."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(p for p in PACKAGE.iterdir() if p.name.endswith(suffixes))


def clean() -> None:
    for path in compiled_files():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def manifest_text() -> str:
    return (
        json.dumps(
            {
                "python": sys.implementation.cache_tag,
                "sources": {p.name: digest(p) for p in sources()},
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )


def up_to_date() -> bool:
    """The build in place matches the sources (same check as ``gateway/sip/__init__``)."""
    if not MANIFEST.is_file():
        return False
    try:
        recorded = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except ValueError:
        return False
    want = json.loads(manifest_text())
    if recorded != want:
        return False
    built = {p.name.split(".", 1)[0] for p in compiled_files()}
    return all(p.stem in built for p in sources())


def missing_toolchain() -> str | None:
    """Why nothing can be compiled here, or None."""
    cc = sysconfig.get_config_var("CC") or "cc"
    compiler = shlex.split(cc)[0] if cc.strip() else "cc"
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        return f"no Python headers ({include})"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    return None


def build() -> None:
    """Run mypyc + build_ext in a child process (setuptools owns sys.argv and cwd there)."""
    modules = [str(p.relative_to(ROOT)) for p in sources()]
    setup = (
        "import sys\n"
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        f"modules = {modules!r}\n"
        "setup(name='dialgate-native', packages=[], py_modules=[], script_args=sys.argv[1:],\n"
        f"      ext_modules=mypycify(modules, opt_level='3', group_name={GROUP!r},\n"
        f"                           target_dir={str(BUILD_DIR)!r}))\n"
    )
    with tempfile.TemporaryDirectory(prefix="dialgate-native-") as tmp:
        script = Path(tmp) / "setup_native.py"
        script.write_text(setup, encoding="utf-8")
        cmd = [
            sys.executable,
            str(script),
            "build_ext",
            "--inplace",
            "--build-temp",
            str(BUILD_DIR / "temp"),
            "--build-lib",
            str(BUILD_DIR / "lib"),
        ]
        env = dict(os.environ, MYPY_FORCE_COLOR="0")
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError(f"mypyc build failed (exit {done.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless the build in place is current"
    )
    args = parser.parse_args(argv)
    if args.check:
        ok = up_to_date()
        print(f"native SIP core: {'current' if ok else 'missing or stale'}")
        return 0 if ok else 1
    if args.clean:
        clean()
        print("native SIP core: removed (pure Python)")
        return 0
    if os.environ.get("DIALGATE_NATIVE", "1") == "0":
        clean()
        print("native SIP core: skipped (DIALGATE_NATIVE=0), gateway.sip runs as pure Python")
        return 0
    why = missing_toolchain()
    if why is not None:
        clean()
        print(f"native SIP core: skipped ({why}), gateway.sip runs as pure Python")
        return 0
    if not args.force and up_to_date():
        print("native SIP core: up to date")
        return 0
    clean()
    text = manifest_text()  # the sources as compiled, hashed before the build reads them
    try:
        build()
    except (RuntimeError, OSError) as exc:
        clean()
        print(f"native SIP core: {exc}; gateway.sip runs as pure Python", file=sys.stderr)
        return 0
    MANIFEST.write_text(text, encoding="utf-8")
    names = ", ".join(p.stem for p in sources())
    print(f"native SIP core: compiled {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
