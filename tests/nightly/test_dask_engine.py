"""The Dask engine of ``tracedep nightly``: cells as tasks, a dead worker's cell retried once.

The fast tests run a fake cell (a recorded run directory copied into place) on a
LocalCluster of 2 worker processes; the fake kills its own worker process the
first time (or every time) it runs a chosen cell.  The guest test runs a real
night of 2 planted-bug cells, kills the worker of one of them once its run
directory appears, and compares with the same night on the subprocess engine.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from tracedep.nightly import dask_engine
from tracedep.nightly.config import Cell, load_config
from tracedep.nightly.dask_engine import CellResult, DaskEngine, local_cluster
from tracedep.nightly.history import History
from tracedep.nightly.night import Night, NightResult, summary

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fake cell, on the workers

DATA = Path(__file__).parents[1] / "data"
RECORDED = DATA / "analysis" / "bundled"  # analysis.json + findings.json: a loadable run
DRIVERS = Path(__file__).parents[2] / "vm" / "drivers"


def fake_cell(cell: Cell, stem: str, scratch: str | None, night: str, ship: bool,
              cell_timeout: float, tag: str) -> CellResult:
    """A cell that copies a recorded run; its worker dies as the cell's config says."""
    dask_engine.cell_started(tag)
    marks = cell.options.module_src[0]  # the test's folder of marks
    die = cell.key.driver_set  # "ok" never, "once" the first time, "always" every time
    if die == "always" or (die == "once" and not (marks / stem).exists()):
        (marks / stem).touch()
        time.sleep(0.5)  # mid-cell: its start is known
        os.kill(os.getpid(), signal.SIGKILL)
    work = dask_engine.work_dir(scratch, night)
    shutil.copytree(RECORDED, work / stem)
    (work / f"{stem}.log").write_text("fake\n")
    archive, path = dask_engine.pack(work, ship)
    return CellResult(0, 0.1, dask_engine.whoami(), False, archive, path)


def _config(root: Path, sets: dict[str, str], body: str = "") -> Path:
    cfg = root / "nightly.toml"
    cfg.write_text(textwrap.dedent(body) + "[driver_sets]\n"
                   + "".join(f'{k} = "{v}"\n' for k, v in sets.items()))
    return cfg


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster(2) as c:
        yield c


def _night(root: Path, cluster: Any, sets: list[str], **kw: Any) -> tuple[NightResult, Path]:
    from distributed import Client

    root.mkdir(parents=True, exist_ok=True)
    (root / "marks").mkdir(exist_ok=True)
    cfg = load_config(_config(root, {s: str(root / "marks") for s in sets}))
    out = root / "out"
    with Client(cluster) as client, History(out / "history.sqlite") as h:
        kw.setdefault("scratch", None if kw.get("shared_out") else root / "scratch")
        engine = DaskEngine(client, cell_fn=fake_cell, **kw)
        return Night(cfg, h, out, 2, engine=engine).run(), out


def _runs(out: Path) -> list[dict[str, Any]]:
    with History(out / "history.sqlite") as h:
        (night,) = h.nights()
        assert night["status"] == "complete"
        return [dict(r) for r in h.runs_of_night(night["id"])]


def test_a_dead_workers_cell_is_retried_once_and_said(tmp_path: Path, cluster: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _night(tmp_path, cluster, ["ok", "once", "always"])
    runs = {r["cell"].split("/")[2]: r for r in _runs(out)}
    assert sorted(runs) == ["always", "ok", "once"]  # each cell recorded exactly once
    assert runs["ok"]["status"] == "ok" and runs["ok"]["retried"] is None
    assert runs["once"]["status"] == "ok" and runs["once"]["nfindings"] == 25
    assert "died mid-cell" in runs["once"]["retried"]
    assert runs["always"]["status"] == "failed"
    assert "after a retry" in runs["always"]["error"]
    assert runs["always"]["retried"].count("died mid-cell") == 1  # retried once, not twice
    assert runs["ok"]["worker"].startswith("tcp://")
    assert res.cells_ok == 2 and res.cells_failed == 1
    assert sorted(label.split("/")[2] for label, _ in res.retried) == ["always", "once"]
    text = "\n".join(summary(res, out))
    assert "RETRIED  default/x86_64/once/default: worker tcp://" in text
    page = (out / res.name / "index.html").read_text()
    assert page.count("retried: worker") == 2
    # the runs came back whole, into the night's folder; nothing left on the workers
    for cell in ("ok", "once"):
        run_dir = out / res.name / f"default--x86_64--{cell}--default"
        assert (run_dir / "analysis.json").is_file() and (run_dir / "junit.xml").is_file()
        assert run_dir.with_name(run_dir.name + ".log").read_text() == "fake\n"
    printed = capsys.readouterr().out
    assert "retry default/x86_64/once/default" in printed


def test_shared_out_leaves_no_scratch(tmp_path: Path, cluster: Any) -> None:
    res, out = _night(tmp_path, cluster, ["ok", "once"], shared_out=True)
    runs = _runs(out)
    assert [r["status"] for r in runs] == ["ok", "ok"]
    assert (out / res.name / "default--x86_64--ok--default" / "findings.json").is_file()
    assert list((out / res.name / ".cells").iterdir()) == []


def test_scheduler_in_config_and_engine_options(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {"b": "bundled"}, 'scheduler = "tcp://ci:8786"\n'))
    assert cfg.scheduler == "tcp://ci:8786"
    from tracedep.cli import main

    bad = _config(tmp_path, {"b": "bundled"}, 'scheduler = "ci"\n')
    assert main(["nightly", str(bad), "--out", str(tmp_path / "o")]) == 2
    good = _config(tmp_path, {"b": "bundled"})
    assert main(["nightly", str(good), "--out", str(tmp_path / "o"), "--engine", "local",
                 "--scheduler", "tcp://x:1"]) == 2


# --- the guest test: a real night, one worker killed mid-cell ------------------------------


def _killer(client: Any, scratch: Path, stop: threading.Event, got: dict[str, Any]) -> None:
    """Once a cell's run directory appears on a worker, kill that worker's process."""
    while not stop.is_set():
        for run_dir in scratch.glob("*/*--abba--*"):
            if (run_dir / "console.log").exists():  # the guest is booting
                for addr, keys in client.processing().items():
                    if any("abba" in str(k) for k in keys):
                        pid = client.run(os.getpid, workers=[addr])[addr]
                        os.kill(pid, signal.SIGKILL)
                        got.update(pid=pid, worker=addr, at=time.monotonic())
                        return
        time.sleep(0.5)


@pytest.mark.guest
def test_night_on_two_workers_survives_a_killed_worker(tmp_path: Path) -> None:
    from distributed import Client

    sets = {"spin": str(DRIVERS / "td_alloc_spin_bug"), "abba": str(DRIVERS / "td_abba_bug")}
    cfg_path = _config(tmp_path, sets, 'run_args = ["--smp", "1"]\n')
    got: dict[str, Any] = {}
    stop = threading.Event()
    t0 = time.monotonic()
    with local_cluster(2) as cluster, Client(cluster) as client, \
            History(tmp_path / "dask" / "history.sqlite") as h:
        engine = DaskEngine(client, scratch=tmp_path / "scratch")
        killer = threading.Thread(target=_killer,
                                  args=(client, tmp_path / "scratch", stop, got), daemon=True)
        killer.start()
        night = Night(load_config(cfg_path), h, tmp_path / "dask", 2, engine=engine)
        try:
            res = night.run()
        finally:
            stop.set()
        runs = [dict(r) for r in h.runs_of_night(res.night_id)]
    t_dask = time.monotonic() - t0
    assert got, "no worker was killed mid-cell"
    t0 = time.monotonic()
    with History(tmp_path / "local" / "history.sqlite") as h:
        ref = Night(load_config(cfg_path), h, tmp_path / "local", 2).run()
        ref_runs = [dict(r) for r in h.runs_of_night(ref.night_id)]
    t_local = time.monotonic() - t0
    print(f"dask night with a killed worker {t_dask:.0f}s, local night {t_local:.0f}s")
    assert sorted(r["cell"] for r in runs) == sorted(r["cell"] for r in ref_runs) == \
        ["default/x86_64/abba/default", "default/x86_64/spin/default"]  # each once
    assert [r["status"] for r in runs] == ["ok", "ok"]
    by = {r["cell"]: r for r in runs}
    assert f"worker {got['worker']}" in by["default/x86_64/abba/default"]["retried"]
    assert by["default/x86_64/spin/default"]["retried"] is None
    assert [label for label, _ in res.retried] == ["default/x86_64/abba/default"]

    def verdicts(r: NightResult) -> list[tuple[str, str, str, str]]:
        return sorted((str(c), v.cls, v.driver, v.signature) for c, v in r.verdicts)

    assert verdicts(res) == verdicts(ref) and len(verdicts(res)) == 2
    assert [r["nfindings"] for r in runs] == [r["nfindings"] for r in ref_runs]
    assert (tmp_path / "dask" / res.name / "default--x86_64--abba--default" / "index.html"
            ).is_file()
