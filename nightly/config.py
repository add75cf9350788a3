"""A nightly configuration (TOML), read into a matrix of cells (``nightly.night`` runs them).

The keys and their meaning are in ``nightly.night``'s docstring; every value is checked
here, when the file is read, and a bad one is one line naming its key (exit 2).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracedep.common.run_options import RunOptions
from tracedep.errors import ConfigError, InputError
from tracedep.nightly.history import CellKey
from tracedep.vm.debian_kernels import SERIES

KNOWN_KEYS = ("kernels", "archs", "workloads", "driver_sets", "repeat", "flaky_window",
              "timeout", "cell_timeout", "jobs", "run_args", "out", "db", "scheduler")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
DEFAULT = "default"
BUNDLED = "bundled"
KERNEL_MODULE = "kernel:"  # a driver-set entry naming a module of the kernel package


@dataclass(frozen=True)
class KernelChoice:
    name: str
    series: str | None = None  # a Debian series, or
    abi: str | None = None  # an exact Debian ABI, or
    image: Path | None = None  # a kernel of the user's (--kernel), with:
    modules: Path | None = None
    build: Path | None = None
    vmlinux: Path | None = None


@dataclass(frozen=True)
class DriverSet:
    name: str
    module_src: tuple[Path, ...]  # none: the bundled drivers (unless kernel_module)
    kernel_module: tuple[str, ...]  # the kernel package's own modules


@dataclass(frozen=True)
class Workload:
    name: str
    script: Path | None


@dataclass(frozen=True)
class Cell:
    key: CellKey
    options: RunOptions  # of the cell's `tracedep run`, without --out

    @property
    def args(self) -> tuple[str, ...]:
        """The cell's `tracedep run` arguments, without --out."""
        return tuple(self.options.to_argv())

    @property
    def dirname(self) -> str:
        k = self.key
        return "--".join(re.sub(r"[^A-Za-z0-9._+-]", "-", p)
                        for p in (k.kernel, k.arch, k.driver_set, k.workload))


@dataclass
class Config:
    path: Path
    cells: list[Cell]
    repeat: int = 1
    flaky_window: int = 7
    jobs: int = 1
    cell_timeout: float = 3600.0
    out: Path | None = None
    db: Path | None = None
    scheduler: str | None = None  # a Dask scheduler's address (--scheduler)


def _fail(path: Path, key: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: key '{key}': {what}")


def _int(path: Path, raw: dict[str, Any], key: str, default: int, low: int = 1) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _fail(path, key, f"must be an integer ≥ {low}, not {v!r}")
    return v


def _list(path: Path, raw: dict[str, Any], key: str, default: list[Any]) -> list[Any]:
    v = raw.get(key, default)
    if not isinstance(v, list) or not v:
        raise _fail(path, key, f"must be a non-empty list, not {v!r}")
    return v


def _name(path: Path, key: str, v: Any) -> str:
    if not isinstance(v, str) or not NAME.match(v):
        raise _fail(path, key, f"{v!r} is not a name (letters, digits, '.', '_', '+', '-')")
    return v


def _path(base: Path, path: Path, key: str, v: Any, want_dir: bool) -> Path:
    if not isinstance(v, str) or not v:
        raise _fail(path, key, f"must be a path, not {v!r}")
    p = (base / v).resolve()
    if want_dir and not p.is_dir():
        raise _fail(path, key, f"{p}: no such directory")
    if not want_dir and not p.is_file():
        raise _fail(path, key, f"{p}: no such file")
    return p


def _kernels(path: Path, raw: dict[str, Any]) -> list[KernelChoice]:
    base = path.parent
    out = []
    for i, k in enumerate(_list(path, raw, "kernels", [DEFAULT])):
        key = f"kernels[{i}]"
        if isinstance(k, str):
            name = _name(path, key, k)
            if name == DEFAULT:
                out.append(KernelChoice(name))
            else:
                out.append(KernelChoice(name, series=name) if name in SERIES else
                           KernelChoice(name, abi=name))
            continue
        if not isinstance(k, dict):
            raise _fail(path, key, "must be an ABI string or a table {name, image, …}")
        unknown = set(k) - {"name", "image", "modules", "build", "vmlinux"}
        if unknown:
            raise _fail(path, f"{key}.{sorted(unknown)[0]}",
                        "unknown (known: name, image, modules, build, vmlinux)")
        if "name" not in k or "image" not in k:
            raise _fail(path, key, "a kernel table needs 'name' and 'image'")
        image, modules, build, vmlinux = (
            _path(base, path, f"{key}.{opt}", k[opt], is_dir) if opt in k else None
            for opt, is_dir in (("image", False), ("modules", True), ("build", True),
                                ("vmlinux", False)))
        out.append(KernelChoice(_name(path, f"{key}.name", k["name"]), image=image, modules=modules,
                          build=build, vmlinux=vmlinux))
    return out


def _workloads(path: Path, raw: dict[str, Any]) -> list[Workload]:
    out = []
    for i, w in enumerate(_list(path, raw, "workloads", [DEFAULT])):
        key = f"workloads[{i}]"
        if w == DEFAULT:
            out.append(Workload(DEFAULT, None))
        elif isinstance(w, str):
            script = _path(path.parent, path, key, w, False)
            out.append(Workload(_name(path, key, script.stem), script))
        elif isinstance(w, dict) and set(w) == {"name", "script"}:
            out.append(Workload(_name(path, f"{key}.name", w["name"]),
                                _path(path.parent, path, f"{key}.script", w["script"], False)))
        else:
            raise _fail(path, key, "must be \"default\", a script path or {name, script}")
    return out


def _driver_sets(path: Path, raw: dict[str, Any]) -> list[DriverSet]:
    sets = raw.get("driver_sets")
    if not isinstance(sets, dict) or not sets:
        raise _fail(path, "driver_sets", "required: a table of name = \"bundled\" | dirs")
    out: list[DriverSet] = []
    for name, v in sets.items():
        key = f"driver_sets.{name}"
        _name(path, key, name)
        if v == BUNDLED:
            out.append(DriverSet(name, (), ()))  # a run without --module-src: the bundled set
            continue
        dirs = [v] if isinstance(v, str) else v
        if not isinstance(dirs, list) or not dirs:
            raise _fail(path, key, "must be \"bundled\", a directory or a list of directories "
                                   "and kernel:NAME modules")
        srcs: list[Path] = []
        kernel_modules: list[str] = []
        for d in dirs:
            if isinstance(d, str) and d.startswith(KERNEL_MODULE):
                # the kernel package's own module (`tracedep run --kernel-module`)
                if not d[len(KERNEL_MODULE):]:
                    raise _fail(path, key, "kernel: needs a module name (kernel:null_blk)")
                kernel_modules.append(d[len(KERNEL_MODULE):])
                continue
            srcs.append(_path(path.parent, path, key, d, True))
        out.append(DriverSet(name, tuple(srcs), tuple(kernel_modules)))
    return out


def load_config(path: Path) -> Config:
    """Parse and check a nightly configuration; raise ``ConfigError`` naming the bad key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    path = path.resolve()
    for key in raw:
        if key not in KNOWN_KEYS:
            raise _fail(path, key, f"unknown (known: {', '.join(KNOWN_KEYS)})")
    from tracedep.common.machines import MACHINES

    archs = [_name(path, f"archs[{i}]", a) for i, a in
             enumerate(_list(path, raw, "archs", ["x86_64"]))]
    for i, a in enumerate(archs):
        if a not in MACHINES:
            raise _fail(path, f"archs[{i}]", f"unknown arch {a!r} (known: {', '.join(MACHINES)})")
    run_args = raw.get("run_args", [])
    if not isinstance(run_args, list) or not all(isinstance(a, str) for a in run_args):
        raise _fail(path, "run_args", "must be a list of strings")
    if any(a == "--out" or a.startswith("--out=") for a in run_args):
        raise _fail(path, "run_args", "--out is chosen by the nightly")
    timeout = raw.get("timeout", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
            not math.isfinite(timeout) or timeout <= 0:
        raise _fail(path, "timeout", f"must be a number of seconds, not {timeout!r}")
    cell_timeout = raw.get("cell_timeout", 3600)
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int | float) \
            or not math.isfinite(cell_timeout) or cell_timeout <= 0:
        raise _fail(path, "cell_timeout", f"must be a number of seconds, not {cell_timeout!r}")
    kernels, workloads, sets = _kernels(path, raw), _workloads(path, raw), _driver_sets(path, raw)
    cells = []
    for k in kernels:
        for a in archs:
            for ds in sets:
                for w in workloads:
                    opts = RunOptions(
                        arch=a, kernel_series=k.series, abi=k.abi, kernel=k.image,
                        kernel_modules=k.modules, kernel_build=k.build, vmlinux=k.vmlinux,
                        module_src=ds.module_src, kernel_module=ds.kernel_module,
                        workload=w.script, timeout=float(timeout))
                    try:  # run_args last: a value there overrides the cell's, as on a command line
                        opts = RunOptions.from_argv(run_args, base=opts)
                    except InputError as e:
                        raise _fail(path, "run_args", str(e)) from None
                    cells.append(Cell(CellKey(k.name, a, ds.name, w.name), opts))
    names = [str(c.key) for c in cells]
    if len(set(names)) != len(names):
        raise _fail(path, "workloads", "two cells have the same name (duplicate entries?)")
    cfg = Config(path=path, cells=cells, repeat=_int(path, raw, "repeat", 1),
                 flaky_window=_int(path, raw, "flaky_window", 7, low=2),
                 jobs=_int(path, raw, "jobs", 1), cell_timeout=float(cell_timeout))
    if "scheduler" in raw:
        if not isinstance(raw["scheduler"], str) or "://" not in raw["scheduler"]:
            raise _fail(path, "scheduler", "must be an address like tcp://HOST:8786")
        cfg.scheduler = raw["scheduler"]
    for key in ("out", "db"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise _fail(path, key, "must be a path")
            setattr(cfg, key, (path.parent / raw[key]).resolve())
    return cfg
