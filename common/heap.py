"""Give the C heap's free pages back to the system between the stages of a big job.

glibc's malloc serves the arrays of one decoder window (a few hundred kB each) from
its heap once a large ``free`` has raised its mmap threshold, and the heap keeps
what they leave behind: putting a 21.9 M-event trace's windows together into one
frame (tracer.decode_stream) left 1.8 GB of free heap pages resident beside the
1.8 GB frame, and the analysis started from 3.7 GB instead of 1.9 GB.
``malloc_trim(0)`` hands every whole free page back (``madvise``), in well under a
second; it changes no data.  Elsewhere (another libc, no ctypes) it does nothing.
Layer 0: nothing here imports another layer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_TRIM: Any = None  # the libc function, False when there is none


def give_back() -> bool:
    """Return the free heap pages to the system; False when this libc cannot."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        try:
            name = ctypes.util.find_library("c")
            fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
            if fn is not None:
                fn.argtypes = [ctypes.c_size_t]
                fn.restype = ctypes.c_int
                _TRIM = fn
        except OSError:
            pass
    if _TRIM is False:
        return False
    _TRIM(0)
    return True
