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

_LIBC: Any = None  # glibc, False when this is another libc (or no ctypes)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        try:
            name = ctypes.util.find_library("c")
            lib = ctypes.CDLL(name) if name else None
            if lib is not None and hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt"):
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                lib.mallopt.restype = ctypes.c_int
                _LIBC = lib
        except OSError:
            pass
    return _LIBC


def give_back() -> bool:
    """Return the free heap pages to the system; False when this libc cannot."""
    lib = _libc()
    if lib is False:
        return False
    lib.malloc_trim(0)
    return True


def reuse_windows(largest: int = 64 << 20) -> bool:
    """Keep freed memory for the next window instead of handing it back at once.

    A stream allocates the same few-MB arrays window after window.  By default glibc
    maps and unmaps them (or trims the heap's top), and every page of every new array
    is faulted in again: 4.2 M page faults, 15 % of the CPU time, for a 45 M-event
    trace.  From here on, blocks up to ``largest`` come from the heap and its top is
    kept; the peak is unchanged (what is kept was in use before), and ``give_back``
    still returns it between stages."""
    lib = _libc()
    if lib is False:
        return False
    return bool(lib.mallopt(_M_MMAP_THRESHOLD, largest)
                and lib.mallopt(_M_TRIM_THRESHOLD, 8 * largest))
