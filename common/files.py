"""The one way tracedep publishes a file or a folder: whole or not at all.

A reader (a later run, a concurrent one, a user after a crash or a full disk) sees
the old content or the new, never a half-written file: everything is written under
a temporary name in the same folder and renamed over the destination.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_write(path: Path, data: str | bytes, fsync: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    tmp = _tmp_name(path)
    # Not mkstemp: its 0600 would survive the rename; 0666 here is cut by the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a tool to write (``cc -o``, ``np.savez``):
    renamed to ``path`` when the block ends normally, removed when it raises."""
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path, keep_existing: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside ``path`` to fill, published as ``path`` when the
    block ends normally and removed when it raises.

    An earlier ``path`` is replaced; with ``keep_existing``, one that another process
    published meanwhile is kept instead (it may be in use: nothing is removed from
    under its readers) and this block's folder is dropped.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if keep_existing:
            try:
                tmp.rename(path)
            except OSError:
                if not path.is_dir():
                    raise
        else:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
