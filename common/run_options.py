"""The options of a run, declared once: what ``tracedep run`` and ``trace`` take.

:class:`RunOptions` is the declaration.  Each field is one option: its flag is the
field's name with ``-`` for ``_`` (``kernel_module`` is ``--kernel-module``), its
type the field's annotation (``bool``: a switch; ``tuple[X, ...]``: repeatable;
``X | None``: an optional value), its default the field's default, its help text
in the field's metadata.  From there:

* :func:`add_arguments` declares the options on an argparse parser;
* :meth:`RunOptions.from_namespace` reads them back from the parsed arguments;
* :meth:`RunOptions.to_argv` writes options as the arguments that parse back to
  them: ``RunOptions.from_namespace(parser.parse_args(o.to_argv())) == o``;
* :meth:`RunOptions.from_argv` parses arguments on top of given options (the
  nightly's ``run_args``).

The nightly and ``tracedep bisect-run`` start ``tracedep run`` with ``to_argv()``;
no other module spells a run option.

``tracedep bisect-run`` takes the same options under the :data:`BISECT_RUN`
spelling, which differs for two of them, as it always has: the kernel image is
``--kernel-image`` and its build tree ``--kernel-tree`` (``--kernel-build-cmd`` is
bisect-run's own: the shell command that builds that kernel); ``--out`` is not
there (bisect-run chooses the run directories).

Layer 0: nothing here imports another tracedep layer but ``errors``.  The kernel
series are ``vm.debian_kernels.SERIES`` (a test keeps the two the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from tracedep.errors import InputError

Spelling = Literal["run", "bisect-run"]
RUN: Spelling = "run"
BISECT_RUN: Spelling = "bisect-run"

KERNEL_SERIES = ("6.1", "6.12")  # vm.debian_kernels.SERIES
TRANSPORTS = ("socket", "ringbuf")
ACCELS = ("auto", "tcg", "kvm")
RAW_RETENTION = ("keep", "compress", "drop")  # tracer.retention.MODES (a test keeps them equal)


@dataclass(frozen=True)
class _Opt:
    """How one field is a command-line option."""

    help: str | None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    required: bool = False  # where it is declared, it must be given (--out)
    bisect_flag: str | None = None  # its flag in bisect-run when not the same as in run
    bisect_help: str | None = None  # its help in bisect-run when not the same as in run
    in_bisect_run: bool = True


def _opt(default: Any, help: str | None, **kw: Any) -> Any:
    return field(default=default, metadata={"opt": _Opt(help, **kw)})


@dataclass(frozen=True)
class RunOptions:
    """Every option of ``tracedep run`` (``trace``: all but ``no_dwarf``), in --help order."""

    arch: str = _opt("x86_64", "x86_64 (default) or arm64")
    kernel_series: str | None = _opt(
        None, "Debian kernel series; the newest cloud kernel of it that apt can download is "
              "used (default 6.12, or TRACEDEP_KERNEL_SERIES)", choices=KERNEL_SERIES)
    abi: str | None = _opt(
        None, "an exact Debian kernel ABI: 6.1.0-57 or 6.12.118+deb12 (or TRACEDEP_KERNEL_ABI)")
    kernel: Path | None = _opt(
        None, "boot this kernel image (bzImage/Image) instead of Debian's",
        bisect_flag="--kernel-image",
        bisect_help="the image --kernel-build-cmd makes (bzImage/Image), booted instead of "
                    "Debian's")
    kernel_modules: Path | None = _opt(
        None, "with --kernel: its lib/modules/<release> directory",
        bisect_help="the built kernel's lib/modules/<release> directory")
    kernel_build: Path | None = _opt(
        None, "with --kernel: its build tree, to build --module-src against",
        bisect_flag="--kernel-tree",
        bisect_help="the built kernel's build tree, to build --module-src against")
    vmlinux: Path | None = _opt(None, "vmlinux with DWARF")
    module_src: tuple[Path, ...] = _opt(
        (), "a kbuild directory of driver modules to test (repeatable; default: the bundled "
            "example drivers)",
        bisect_help="driver kbuild directory, checked out by git bisect (repeatable)")
    kernel_module: tuple[str, ...] = _opt(
        (), "a module of the kernel package itself (null_blk, zram, dummy …) to test: it and "
            "its dependencies go into the guest under /lib/modules/<release>/ with a "
            "modules.dep, so a workload can `modprobe NAME params`; the default workload "
            "loads it (repeatable; without --module-src, the bundled drivers are then not "
            "loaded)",
        metavar="NAME",
        bisect_help="a module of the kernel package to test (repeatable; see tracedep run)")
    no_modules: bool = _opt(
        False, "trace the kernel alone: no driver modules (not even the bundled ones)")
    workload: Path | None = _opt(
        None, "shell script run in the guest instead of load/settle/unload")
    timeout: float = _opt(
        300.0, "seconds before a guest that has not powered off is killed")
    progress: float = _opt(
        30.0, "seconds between progress lines on stderr while the guest runs (guest uptime, "
              "records, records/s, trace MB, lost); 0: none", metavar="SECONDS")
    transport: str = _opt("socket", None, choices=TRANSPORTS)
    smp: int = _opt(2, None)
    memory: int = _opt(1024, "guest memory, MiB")
    accel: str = _opt("auto", None, choices=ACCELS)
    out: Path | None = _opt(None, "run directory (new or empty)", required=True,
                            in_bisect_run=False)
    no_dwarf: bool = _opt(
        False, "do not fetch the debug vmlinux; frames get function+offset only")
    raw: str = _opt(
        "keep", "what to keep of the raw trace pages once analysed: keep them, compress them "
                "(trace/cpuN.raw.gz), or drop all but the pages around each finding (what it "
                "cost: manifest.json retention)", choices=RAW_RETENTION, in_bisect_run=False)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> RunOptions:
        """The options in parsed arguments; an option the parser did not declare: its default."""
        kw: dict[str, Any] = {}
        for o in _OPTIONS:
            if hasattr(ns, o.name):
                v = getattr(ns, o.name)
                kw[o.name] = tuple(v) if o.kind == "append" else v
        return cls(**kw)

    @classmethod
    def from_argv(cls, argv: Sequence[str], *, base: RunOptions | None = None,
                  spelling: Spelling = RUN, exclude: Iterable[str] = ("out",)) -> RunOptions:
        """``argv`` parsed on top of ``base``, as ``tracedep run BASE-ARGV ARGV`` would be.

        A value of ``argv`` replaces the base's, a repeatable option adds to it.
        Raises ``InputError`` (the parser's message) for arguments it does not take.
        """
        p = _RaisingParser(prog=f"tracedep {spelling}", add_help=False, allow_abbrev=False)
        add_arguments(p, spelling=spelling, exclude=exclude, required=False)
        if base is not None:
            p.set_defaults(**{o.name: list(getattr(base, o.name)) if o.kind == "append"
                              else getattr(base, o.name) for o in _OPTIONS})
        return cls.from_namespace(p.parse_args(list(argv)))

    def to_argv(self, spelling: Spelling = RUN) -> list[str]:
        """These options as arguments (in declaration order; defaults left out)."""
        argv: list[str] = []
        for o in _OPTIONS:
            v = getattr(self, o.name)
            if v == o.default:
                continue
            flag = o.flag(spelling)
            if flag is None:
                raise ValueError(f"{spelling} has no option for {o.name}={v!r}")
            if o.kind == "flag":
                argv.append(flag)
                continue
            for one in (v if o.kind == "append" else (v,)):
                s = repr(one) if isinstance(one, float) else str(one)
                # a value that looks like an option goes in the same word as its flag
                argv += [f"{flag}={s}"] if s.startswith("-") else [flag, s]
        return argv

    def absolute(self) -> RunOptions:
        """The same options with every path made absolute (from the current directory)."""
        kw: dict[str, Any] = {}
        for o in _OPTIONS:
            if o.type is Path:
                v = getattr(self, o.name)
                if o.kind == "append":
                    kw[o.name] = tuple(p.absolute() for p in v)
                elif v is not None:
                    kw[o.name] = v.absolute()
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class _Option:
    """A field of RunOptions, read as an option."""

    name: str
    kind: Literal["flag", "append", "store"]
    type: Callable[[str], Any]
    default: Any
    opt: _Opt

    def flag(self, spelling: Spelling) -> str | None:
        if spelling == BISECT_RUN:
            if not self.opt.in_bisect_run:
                return None
            if self.opt.bisect_flag:
                return self.opt.bisect_flag
        return "--" + self.name.replace("_", "-")

    def help(self, spelling: Spelling) -> str | None:
        return (self.opt.bisect_help if spelling == BISECT_RUN and self.opt.bisect_help
                else self.opt.help)


def _declared() -> tuple[_Option, ...]:
    hints = typing.get_type_hints(RunOptions)
    out = []
    for f in dataclasses.fields(RunOptions):
        hint = hints[f.name]
        args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        kind: Literal["flag", "append", "store"]
        if hint is bool:
            kind, typ = "flag", bool
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            kind, typ = "append", args[0]
        elif origin in (typing.Union, types.UnionType) and len(args) == 2 \
                and type(None) in args:
            kind, typ = "store", next(a for a in args if a is not type(None))
        else:
            kind, typ = "store", hint
        if typ not in (str, int, float, Path, bool):
            raise TypeError(f"RunOptions.{f.name}: {hint} is not an option type")
        out.append(_Option(f.name, kind, typ, f.default, f.metadata["opt"]))
    return tuple(out)


_OPTIONS = _declared()
NAMES = tuple(o.name for o in _OPTIONS)


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def add_arguments(parser: argparse._ActionsContainer, *, spelling: Spelling = RUN,
                  only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                  required: bool = True) -> None:
    """Declare the run options on ``parser`` (or an argument group), in declaration order.

    ``only``/``exclude`` choose options by field name (``trace`` has no ``no_dwarf``);
    the destinations are the field names, whatever the spelling.  ``required=False``
    makes ``--out`` optional.
    """
    chosen, left_out = set(NAMES if only is None else only), set(exclude)
    unknown = (chosen | left_out) - set(NAMES)
    if unknown:
        raise ValueError(f"no such run option: {', '.join(sorted(unknown))}")
    for o in _OPTIONS:
        flag = o.flag(spelling)
        if o.name not in chosen - left_out or flag is None:
            continue
        kw: dict[str, Any] = {"dest": o.name, "help": o.help(spelling)}
        if o.kind == "flag":
            parser.add_argument(flag, action="store_true", **kw)
            continue
        if o.type is not str:
            kw["type"] = o.type
        if o.opt.choices is not None:
            kw["choices"] = o.opt.choices
        if o.opt.metavar is not None:
            kw["metavar"] = o.opt.metavar
        elif o.opt.choices is None and flag[2:].replace("-", "_") != o.name:
            # argparse would name the value after the field; name it after the flag
            kw["metavar"] = flag[2:].upper().replace("-", "_")
        if o.kind == "append":
            kw.update(action="append", default=[])
        else:
            kw.update(default=o.default, required=o.opt.required and required)
        parser.add_argument(flag, **kw)
