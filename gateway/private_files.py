"""Files that hold callee numbers, DNC lists and complaints are private to their owner.

Every file dialgate creates with such data — the SQLite database and its
``-wal``/``-shm``, the CDR spool, evidence packs, CSV exports — is created
``0600`` and every directory it creates for them ``0700``, whatever the umask
(an ``os.open`` mode, then ``fchmod``: the umask can only take bits away, and a
file that already existed keeps its old mode otherwise). A database or
journal found with group/other bits is tightened once, logged.
:func:`loose_directory` tells ``check-config`` when the store's directory lets
other local users in.

It must never loosen a mode, never change the mode of a directory it did not
create, and never follow the file's data: it only creates, opens and chmods.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

import structlog

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "loose_directory",
    "make_private_dirs",
    "open_private",
    "prepare_private_file",
    "write_private_text",
]

log = structlog.get_logger("gateway.private_files")

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents, each new one ``0700`` (existing ones untouched)."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(path, DIR_MODE)


def _tighten(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
        log.warning("file.permissions.tightened", path=str(path), was=oct(mode))


def prepare_private_file(path: Path, *, companions: tuple[str, ...] = ()) -> None:
    """Make sure ``path`` exists and is private before a library opens it.

    Missing: created empty with ``0600`` (SQLite takes an empty file as a new
    database, and gives the ``-wal``/``-shm`` it creates the database's mode).
    Present with group/other bits: tightened. ``companions`` are suffixes of
    files beside it (``-wal``, ``-shm``) tightened when present.
    """
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _tighten(path)
    else:
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
    for suffix in companions:
        _tighten(path.with_name(path.name + suffix))


def open_private(path: Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing ("w", "wb", "a", "ab"), the file ``0600`` whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    make_private_dirs(path.parent)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_private_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to a ``0600`` file."""
    with open_private(path, "w", encoding=encoding) as out:
        out.write(text)


def loose_directory(path: Path) -> tuple[Path, int] | None:
    """(directory, mode) when the directory that holds ``path`` lets group or others in.

    The directory checked is the nearest existing one (dialgate creates the
    missing ones ``0700``); None when it is private or nothing exists yet.
    """
    directory = path.parent
    while not directory.exists():
        if directory.parent == directory:
            return None
        directory = directory.parent
    if directory != path.parent:
        return None  # the store's own directory will be created 0700
    mode = stat.S_IMODE(directory.stat().st_mode)
    return (directory, mode) if mode & 0o077 else None
