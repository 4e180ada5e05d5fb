"""Test certificates made at test time with the ``openssl`` CLI (never committed).

:func:`make_ca` makes a self-signed CA in a directory; :func:`make_cert` a
certificate signed by it for a list of subjectAltNames (``IP:127.0.0.1``,
``DNS:carrier.test``). Keys are EC P-256 so generation takes milliseconds.
Everything goes into the directory given (a pytest ``tmp_path``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["CA", "Cert", "make_ca", "make_cert", "require_openssl"]


@dataclass(frozen=True)
class CA:
    """A test CA: its certificate and key files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Cert:
    """A leaf certificate and its key, signed by a :class:`CA`."""

    cert: Path
    key: Path


def require_openssl() -> str:
    """The openssl binary; FAIL (not skip) when missing: the install script provides it."""
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("openssl CLI missing: scripts/install-system-deps.sh installs Debian's openssl")
    return path


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str = "ca") -> CA:
    """A self-signed CA certificate ``{name}.pem`` with key ``{name}.key``."""
    openssl = require_openssl()
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _run(openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    _run(
        openssl,
        "req",
        "-new",
        "-x509",
        "-key",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN=dialgate test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return CA(cert, key)


def make_cert(
    directory: Path, ca: CA, name: str, sans: tuple[str, ...] = ("IP:127.0.0.1",)
) -> Cert:
    """A server/client certificate ``{name}.pem`` + ``{name}.key`` for ``sans``, signed by ``ca``."""
    openssl = require_openssl()
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={','.join(sans)}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyAgreement\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _run(openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    _run(openssl, "req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _run(
        openssl,
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return Cert(cert, key)
