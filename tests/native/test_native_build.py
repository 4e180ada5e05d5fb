"""The mypyc build of ``gateway/sip``: in use after ``make install``, never stale, same behaviour.

``scripts/build_native.py`` (run by ``make install``) compiles every module of
``gateway/sip`` but ``__init__.py`` when a C compiler is present; the package's
``__init__`` loads the compiled modules only while ``_native_manifest.json``
matches the sources, else (or with ``DIALGATE_PURE_PYTHON=1``) the ``.py`` files.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.sip

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "gateway" / "sip"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")

sys.path.insert(0, str(REPO / "scripts"))
import build_native  # noqa: E402  (scripts/ is not a package)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    env.update(extra)
    return env


def _native_expected() -> bool:
    """Whether this box should run the compiled modules (``make install`` built them)."""
    return (
        build_native.missing_toolchain() is None
        and os.environ.get("DIALGATE_NATIVE", "1") != "0"
        and os.environ.get("DIALGATE_PURE_PYTHON", "") in ("", "0")
    )


def test_the_build_in_use_is_the_one_this_box_can_make() -> None:
    """With a C compiler (and no opt-out) every gateway.sip module is a compiled extension,
    loaded by the extension loader; without one, every module is its ``.py``."""
    loaded = {name: importlib.import_module(f"gateway.sip.{name}") for name in MODULES}
    if _native_expected():
        assert gateway.sip.NATIVE, "compiled modules not in use: run `make install`"
        assert {
            name: isinstance(mod.__loader__, importlib.machinery.ExtensionFileLoader)
            for name, mod in loaded.items()
        } == dict.fromkeys(MODULES, True)
        assert all(str(mod.__file__).endswith(SUFFIX) for mod in loaded.values())
        assert "native (mypyc)" == gateway.sip.build_name()
    else:
        assert not gateway.sip.NATIVE
        assert all(str(mod.__file__).endswith(".py") for mod in loaded.values())
        assert "pure Python" == gateway.sip.build_name()


def test_pure_python_passes_the_parser_and_conformance_tests() -> None:
    """``DIALGATE_PURE_PYTHON=1``: the sip unit tests and the RFC 4475 corpus pass on the
    ``.py`` modules too (the fallback of a box without a compiler)."""
    check = "import gateway.sip as s, gateway.sip.message as m; print(s.NATIVE, m.__file__)"
    probe = subprocess.run(
        [sys.executable, "-c", check],
        cwd=REPO,
        env=_env(DIALGATE_PURE_PYTHON="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (0, "") == (probe.returncode, probe.stderr)
    native, source = probe.stdout.split()
    assert ("False", True) == (native, source.endswith("message.py"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/sip",
            "tests/conformance",
            "--ignore=tests/sip/test_digest_sipp.py",  # external peers: covered by the main run
            "--ignore=tests/sip/test_digest_sipvicious.py",
        ],
        cwd=REPO,
        env=_env(DIALGATE_PURE_PYTHON="1"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert 0 == run.returncode, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


def _copy_package(tmp_path: Path) -> Path:
    """``gateway/sip`` (sources, extensions, manifest) under ``tmp_path/gateway``."""
    root = tmp_path / "tree"
    (root / "gateway").mkdir(parents=True)
    (root / "gateway" / "__init__.py").write_text('__version__ = "test"\n', encoding="utf-8")
    shutil.copytree(PACKAGE, root / "gateway" / "sip", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _fake_build(sip: Path) -> None:
    """Extensions that crash if loaded, and a manifest that matches the sources: stands in
    for a real build on a box without a compiler."""
    for name in [*MODULES, "_native__mypyc"]:
        (sip / f"{name}{SUFFIX}").write_bytes(b"not an extension module")
    sources = {f"{name}.py": build_native.digest(sip / f"{name}.py") for name in MODULES}
    manifest = {"python": sys.implementation.cache_tag, "sources": sources}
    (sip / "_native_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _import(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import gateway.sip as s, gateway.sip.message as m, gateway.sip.transaction as t\n"
        "print(s.NATIVE, m.__file__, t.__file__)\n"
        "assert s.parse(b'OPTIONS sip:a@b SIP/2.0\\r\\nContent-Length: 0\\r\\n\\r\\n').method"
        " == 'OPTIONS'\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=_env(PYTHONPATH=str(root), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def built_copy(tmp_path: Path) -> Path:
    """A copy of the package with a build that matches its sources (real or stand-in)."""
    root = _copy_package(tmp_path)
    if not gateway.sip.NATIVE:
        _fake_build(root / "gateway" / "sip")
    return root


def test_an_unchanged_copy_uses_its_build(built_copy: Path) -> None:
    """The manifest check accepts a build that matches its sources (real build only)."""
    done = _import(built_copy)
    if not gateway.sip.NATIVE:
        # The stand-in extensions cannot load: the import fails loudly, never silently.
        assert 0 != done.returncode
        return
    assert (0, "") == (done.returncode, done.stderr)
    native, message, transaction = done.stdout.split()
    assert ("True", True, True) == (native, message.endswith(SUFFIX), transaction.endswith(SUFFIX))


def test_an_edited_source_falls_back_to_python_with_one_warning(built_copy: Path) -> None:
    """A ``.py`` changed after the build: every gateway.sip module loads from source (never
    the stale extension) and stderr carries one warning naming the file."""
    headers = built_copy / "gateway" / "sip" / "headers.py"
    headers.write_text(headers.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    done = _import(built_copy)
    assert 0 == done.returncode, done.stderr
    native, message, transaction = done.stdout.split()
    assert ("False", True, True) == (
        native,
        message.endswith("message.py"),
        transaction.endswith("transaction.py"),
    )
    warnings = done.stderr.strip().splitlines()
    assert 1 == len(warnings), done.stderr
    assert "gateway/sip/headers.py changed since the native build" in warnings[0]
    assert "pure-Python" in warnings[0]


def test_a_missing_manifest_falls_back_with_a_warning(built_copy: Path) -> None:
    """Extensions without their manifest are never trusted."""
    (built_copy / "gateway" / "sip" / "_native_manifest.json").unlink()
    done = _import(built_copy)
    assert 0 == done.returncode, done.stderr
    assert done.stdout.startswith("False ")
    assert 1 == len(done.stderr.strip().splitlines())
    assert "_native_manifest.json is missing" in done.stderr


def test_pure_python_on_request_says_nothing(built_copy: Path) -> None:
    """``DIALGATE_PURE_PYTHON=1`` loads the sources beside a valid build, without a warning."""
    done = _import(built_copy, DIALGATE_PURE_PYTHON="1")
    assert (0, "") == (done.returncode, done.stderr)
    native, message, _ = done.stdout.split()
    assert ("False", True) == (native, message.endswith("message.py"))


def test_build_script_notes_and_skips_without_a_compiler_or_when_disabled(tmp_path: Path) -> None:
    """No compiler (CC pointing nowhere) or ``DIALGATE_NATIVE=0``: one line on stdout, exit 0,
    nothing compiled into the package copy."""
    root = _copy_package(tmp_path)
    shutil.copytree(REPO / "scripts", root / "scripts")
    for name in os.listdir(root / "gateway" / "sip"):
        if name.endswith(SUFFIX) or name == "_native_manifest.json":
            (root / "gateway" / "sip" / name).unlink()
    script = root / "scripts" / "build_native.py"
    for env in ({"DIALGATE_NATIVE": "0"}, {"PATH": str(tmp_path / "empty")}):
        (tmp_path / "empty").mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=root,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert 1 == len(done.stdout.strip().splitlines()), done.stdout
        assert "pure Python" in done.stdout
        assert not [p for p in (root / "gateway" / "sip").iterdir() if p.name.endswith(SUFFIX)]
