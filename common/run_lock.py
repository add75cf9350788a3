"""Whether a run directory is still being written: the ``tracedep`` process that runs
it holds an exclusive ``flock`` on the directory until its manifest is final
(tracer.session).  The kernel drops the lock with the process, however it ends
(``kill -9``, the OOM killer), so a manifest left at ``state: running`` with no
holder is a run whose tracedep died under it (tracer.run_record.recover).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the ``with`` block."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def in_use(run_dir: Path) -> bool:
    """Does a live process hold the run directory's lock?"""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
