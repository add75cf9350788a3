"""The error tree of tracedep: every class is defined here, and only here.

Hierarchy::

    TracedepError                 anything tracedep reports as one line
    ├── InputError                bad input from the user: exit 2
    │   ├── ModuleBuildError      a --module-src that is missing or does not build
    │   ├── TraceFormatError      a trace or run-directory file that cannot be read
    │   ├── ConfigError           a nightly configuration that is not valid
    │   ├── SymbolizerError       a vmlinux/.ko that contradicts the guest
    │   ├── DebugSymbolsError     the -dbg package cannot be had
    │   └── ImageFormatError      a kernel image (vmlinux, .ko) that cannot be read
    │       ├── ElfFormatError    not ELF, or ELF of a shape tracedep does not read
    │       ├── DwarfError        DWARF that cannot be used at all
    │       └── BtfError          not BTF, or BTF this reader does not understand
    └── RunError                  the run itself failed: exit 3
        ├── GuestError            the guest panicked, hung or died before tracing
        └── QemuError             QEMU could not start or its QMP failed

The readers of kernel images (``kimage``) raise the ``ImageFormatError`` family; the
stages that can go on without an image (names from kallsyms instead of DWARF) catch
it and say so in the report's warnings.

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


class ConfigError(InputError):
    pass


class SymbolizerError(InputError):
    """The symbols cannot be trusted at all (e.g. the KASLR offset does not match)."""


class DebugSymbolsError(InputError):
    """The -dbg package could not be downloaded or extracted."""


class ImageFormatError(InputError):
    """A kernel image (vmlinux, .ko) that cannot be read."""


class ElfFormatError(ImageFormatError):
    """Not an ELF file, or one of a shape this reader does not handle."""


class DwarfError(ImageFormatError):
    """DWARF that cannot be used at all (e.g. unsupported relocations)."""


class BtfError(ImageFormatError, ValueError):
    """Not BTF, or BTF this reader does not understand."""


class RunError(TracedepError):
    exit_code = 3


class GuestError(RunError):
    """``partial``: what the run kept of its trace (the tracer's decode of it), so the
    command line can still analyse it without decoding it again; None if nothing."""

    def __init__(self, message: str, partial: object | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class QemuError(RunError):
    pass
