"""Exception root of tracedep.

Hierarchy::

    TracedepError                 anything tracedep reports as one line
    ├── InputError                bad input from the user: exit 2
    │   ├── ModuleBuildError      a --module-src that is missing or does not build
    │   ├── TraceFormatError      a trace file that cannot be read
    │   ├── SymbolizerError       a vmlinux/.ko that contradicts the guest (analysis.symbolizer)
    │   └── DebugSymbolsError     the -dbg package cannot be had (vm.debug_symbols)
    └── RunError                  the run itself failed: exit 3
        ├── GuestError            the guest panicked, hung or died before tracing
        └── QemuError             QEMU could not start or its QMP failed

Exit codes are chosen only in ``tracedep.cli.main``, from ``exit_code`` here; an
operating-system error (a full disk, a read-only folder) is exit 3 too, and any
other exception is a defect of tracedep: exit ``INTERNAL_ERROR`` with one line
naming a crash log that holds the traceback.
"""

from __future__ import annotations

INTERNAL_ERROR = 4  # a defect of tracedep (cli.main): never a result


class TracedepError(Exception):
    """Base of every error tracedep turns into one line and an exit code."""

    exit_code = 3


class InputError(TracedepError):
    exit_code = 2


class ModuleBuildError(InputError):
    pass


class TraceFormatError(InputError):
    pass


class RunError(TracedepError):
    exit_code = 3


class GuestError(RunError):
    pass


class QemuError(RunError):
    pass
