"""``tracedep nightly``'s command line: the configuration, the engine and the night.

The night itself is ``nightly/night.py``; its default engine ``nightly/dask_engine.py``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracedep.errors import InputError
from tracedep.nightly.config import load_config
from tracedep.nightly.history import History
from tracedep.nightly.night import Engine, Night, exit_code, summary
from tracedep.reports.exports import check_output


def cmd_nightly(a: argparse.Namespace) -> int:
    cfg = load_config(a.config)
    jobs = a.jobs if a.jobs is not None else cfg.jobs
    if jobs < 1:
        raise InputError("--jobs must be at least 1")
    out: Path = (a.out or cfg.out or Path("tracedep-nightly")).resolve()
    db: Path = (a.db or cfg.db or out / "history.sqlite").resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: {e.strerror}") from None
    exports = {k: None if v is None else v.absolute() for k, v in (("kcidb", a.kcidb),
                                                                  ("sarif", a.sarif))}
    for path in exports.values():
        if path is not None:
            check_output(path)
    scheduler = a.scheduler or cfg.scheduler
    if a.engine == "local" and (scheduler or a.shared_out):
        raise InputError("--scheduler and --shared-out are for --engine dask")
    with contextlib.ExitStack() as stack:
        h = stack.enter_context(History(db))  # a bad database is refused before any cluster
        engine: Engine | None = None
        if a.engine == "dask":
            from tracedep.nightly.dask_engine import DaskEngine

            engine = stack.enter_context(DaskEngine.connect(scheduler, jobs, a.shared_out))
        night = Night(cfg, h, out, jobs, exports["kcidb"], exports["sarif"], engine)
        res = night.run()
    for line in summary(res, out):
        print(line, flush=True)
    return exit_code(res)


def add_parser(sub: Any, add_exports: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``tracedep nightly`` on the CLI's subparsers (``add_exports``: the
    command line's ``--kcidb``/``--sarif``)."""
    p = sub.add_parser("nightly", help="run a matrix of runs, record history, classify findings "
                                       "(exit 1 when there are new findings)")
    p.add_argument("config", type=Path, help="the nightly configuration (TOML)")
    p.add_argument("--db", type=Path, default=None,
                   help="history database (default: the config's db, else OUT/history.sqlite)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the config's out, else ./tracedep-nightly)")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells run at a time (the embedded Dask cluster's workers)")
    p.add_argument("--engine", choices=("dask", "local"), default="dask",
                   help="dask (default): cells are Dask tasks, on an embedded cluster of --jobs "
                        "workers or on --scheduler's; local: subprocesses of this process")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="a Dask scheduler whose workers (with QEMU and tracedep) run the cells "
                        "(default: the config's scheduler, else an embedded cluster)")
    p.add_argument("--shared-out", action="store_true",
                   help="OUT is at the same path on every worker: runs are written there, "
                        "not sent back as archives")
    add_exports(p)
    p.set_defaults(func=cmd_nightly)
