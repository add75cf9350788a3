"""The one cache root: downloads, builds and symbol caches live under it, never in the repository.

``~/.cache/tracedep`` unless ``TRACEDEP_CACHE`` names another folder.  Every cache of
tracedep is a sub-folder of it (``kernels/``, ``debs/``, ``dbg/``, ``symbols/``,
``native/``, ``crashes/`` …), so one variable moves or empties them all.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TRACEDEP_CACHE") or Path.home() / ".cache" / "tracedep")


def cache_dir(name: str) -> Path:
    """A named sub-folder of the cache root (not created here)."""
    return cache_root() / name
