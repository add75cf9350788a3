"""``tracedep analyze --live`` (tracer.live, tracer.live_prefix) on the bundled drivers'
real two-CPU run, as it stood while it was still being written.

No boot of its own: the session's ``tracedep run`` of the bundled drivers.  A copy of
its run directory is put back as the guest left it mid-run: the manifest at ``state:
running`` and each CPU's file cut after a different share of its pages (half a page
more, as a live stream leaves it).  The prefix must decode to the whole trace's
events up to its time, and its analysis must find only what the whole trace's
finds; the whole files read live must find all of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import BundledRun, mid_run, run_tracedep

from tracedep.common import run_manifest
from tracedep.tracer.decode_stream import StreamDecoder, decode_run
from tracedep.tracer.live_prefix import readable_prefix

pytestmark = pytest.mark.guest

COLS = ["ts_ns", "cpu", "pid", "kind", "event", "lock_addr", "ip", "preempt_depth"]


def _signatures(d: Path) -> set[str]:
    found: list[dict[str, Any]] = json.loads((d / "findings.json").read_text())
    return {f["signature"] for f in found}


@pytest.fixture(scope="module")
def no_dwarf(bundled_run: BundledRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole run analysed as the live analyses read it: without DWARF."""
    out = tmp_path_factory.mktemp("nodwarf")
    res = run_tracedep("analyze", bundled_run.run_dir, "--no-dwarf", "--out", out)
    assert res.rc == 1, res.explain()
    return out


def test_the_prefix_is_the_whole_trace_up_to_its_time(bundled_run: BundledRun,
                                                      tmp_path: Path) -> None:
    run = bundled_run.run_dir
    assert len(list((run / "trace").glob("cpu*.raw"))) == 2
    mid = mid_run(run, tmp_path / "mid", {0: 0.5, 1: 0.3})
    pre = readable_prefix(mid)
    assert pre is not None and set(pre.limits) == {0, 1}
    info = run_manifest.read(run)
    whole = decode_run(run, info).events
    want = whole.loc[whole["ts_ns"] <= pre.until_ns, COLS].astype(
        {"kind": str, "event": str}).reset_index(drop=True)
    assert 0 < len(want) < len(whole)
    got = pd.concat([w.events[COLS].astype({"kind": str, "event": str})
                     for w in StreamDecoder(mid, info, prefix=pre).windows()],
                    ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@pytest.mark.parametrize("shares", [{0: 0.5, 1: 0.3}, {0: 1.0, 1: 1.0}])
def test_a_live_analysis_finds_what_the_whole_trace_finds(
        bundled_run: BundledRun, no_dwarf: Path, tmp_path: Path,
        shares: dict[int, float]) -> None:
    mid = mid_run(bundled_run.run_dir, tmp_path / "mid", shares)
    res = run_tracedep("analyze", mid, "--live")
    assert res.rc in (0, 1), res.explain()
    live = mid / "live"
    result = json.loads((live / "live.json").read_text())
    pre = readable_prefix(mid)
    assert pre is not None and result["until_ns"] == pre.until_ns
    found = _signatures(live)
    assert result["findings"] == len(found)
    assert res.rc == (1 if found else 0)
    want = _signatures(no_dwarf)
    if shares[0] < 1:
        assert found <= want, found - want  # nothing the whole trace does not find
    else:
        assert found == want and len(found) > 5
    report = (live / "report.txt").read_text()
    assert "analysed while the run went on" in report
    # the run directory itself is the run's: its manifest is as it was
    assert json.loads((mid / "manifest.json").read_text())["state"] == "running"


def test_live_is_refused_for_a_run_that_has_ended(bundled_run: BundledRun) -> None:
    res = run_tracedep("analyze", bundled_run.run_dir, "--live")
    assert res.rc == 2 and "is not a run in progress (state: complete)" in res.stderr, \
        res.explain()
