"""Compile a C file of tracedep once into the cache and load it (ctypes).

The hot loops that are sequential by nature (tracer/native/ringwalk.c, the ring-buffer
page walk; analysis/native/replay.c, the held-lock replay) are C files shipped with the
package, compiled here on first use with the host's ``cc`` into
``cache_root()/native/<name>-<sha12>.so`` (the hash of the source: an edited file is
compiled again) and loaded with :mod:`ctypes`.  Where no compiler is at hand, or
``TRACEDEP_NATIVE=0`` is set, :func:`load` gives None and the caller runs its pure-Python
twin, which computes the same thing.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_output

log = logging.getLogger(__name__)

ENV = "TRACEDEP_NATIVE"  # "0": never load native code (the Python twins run)

_LOADED: dict[Path, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip() not in ("0", "no", "false", "off")


def load(src: Path, what: str) -> ctypes.CDLL | None:
    """The shared library of C file ``src``, compiled once into the cache; None (logged
    at info, with ``what`` it was for) when it cannot be built or loaded, or native code
    is switched off."""
    if not enabled():
        return None
    if src in _LOADED:  # before resolving: hot loops ask for their library per call
        return _LOADED[src]
    given, src = src, src.resolve()
    if src in _LOADED:
        _LOADED[given] = _LOADED[src]
        return _LOADED[src]
    lib: ctypes.CDLL | None = None
    try:
        key = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
        so = cache_root() / "native" / f"{src.stem}-{key}.so"
        if not so.is_file():
            so.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(so) as tmp:
                subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src)],
                               check=True, capture_output=True)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.decode(errors="replace")[-500:] if isinstance(
            e, subprocess.CalledProcessError) and e.stderr else str(e)
        log.info("native %s unavailable (%s); using Python", what, detail)
    _LOADED[src] = _LOADED[given] = lib
    return lib
