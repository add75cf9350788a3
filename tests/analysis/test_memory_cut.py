"""A trace longer than the analysis's memory (common.memory_budget): the frame keeps
the first events that fit, the rest is decoded for its counts only, and every
report says where the analysis stopped, instead of the OOM killer ending the run
with no report.  On the recorded runs of tests/data/traces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN, tiny_run_copy

from tracedep.analysis.trace import completeness, load_run
from tracedep.common import memory_budget as mb
from tracedep.common import run_manifest as manifest
from tracedep.errors import InputError
from tracedep.tracer.decode_stream import StreamDecoder

CLASSES_RUN = Path(__file__).parents[1] / "data" / "traces" / "classes" / "raw"


@pytest.mark.parametrize("run", [TINY_RUN, CLASSES_RUN], ids=["tiny", "classes"])
@pytest.mark.parametrize("batch", [1, 1024])
def test_a_cut_frame_is_the_first_rows_of_the_whole(run: Path, batch: int) -> None:
    whole = StreamDecoder(run, batch_pages=batch).whole()
    n = len(whole.events)
    for keep in (0, 1, n // 3, n - 1):
        cut = StreamDecoder(run, batch_pages=batch).whole(max_rows=keep)
        assert len(cut.events) == keep
        assert cut.cut is not None and cut.cut.kept == keep and cut.cut.dropped == n - keep
        for c in ("ts_ns", "cpu", "pid", "kind", "lock_addr", "ip", "value"):
            got, want = cut.events[c], whole.events[c].iloc[:keep]
            assert (got.astype(object).to_numpy() == want.astype(object).to_numpy()).all(), c
        # the counts of the whole trace, and every row accounted for per CPU
        assert cut.counts == whole.counts and cut.total == whole.total
        assert cut.rows_per_cpu() == whole.rows_per_cpu()
        t = whole.events["ts_ns"].to_numpy()
        assert cut.cut.at_ns == int(t[keep]) and cut.cut.end_ns == int(t.max())
    assert StreamDecoder(run, batch_pages=batch).whole(max_rows=n).cut is None


def test_a_cut_says_so_and_counts_nothing_as_missing() -> None:
    info = manifest.read(TINY_RUN)
    d = StreamDecoder(TINY_RUN, info).whole(max_rows=100)
    assert d.cut is not None
    d.cut.why = "0.01 GiB (a test)"
    words = completeness(info, d)
    note = [w for w in words if w.startswith("analysis cut short")]
    assert len(note) == 1 and f"the first {100:,} were analysed" in note[0]
    assert "0.01 GiB (a test)" in note[0]
    assert not [w for w in words if "missing" in w], words


def test_analyze_under_a_small_limit_reports_the_cut(tmp_path: Path) -> None:
    run = tiny_run_copy(tmp_path)
    n = len(load_run(TINY_RUN).events)
    keep = n // 2
    limit = mb.BASE_BYTES + keep * mb.BYTES_PER_EVENT
    env = {"TRACEDEP_MAX_MEMORY": str(limit), "PATH": "/usr/bin:/bin",
           "TRACEDEP_CACHE": str(tmp_path / "cache")}
    got = subprocess.run([sys.executable, "-m", "tracedep.cli", "analyze", "--no-dwarf",
                          str(run)], capture_output=True, text=True, env=env, timeout=600)
    assert got.returncode in (0, 1), got.stderr[-2000:]
    health = json.loads((run / "analysis.json").read_text())["health"]
    assert health["events"] == keep
    cut = [w for w in health["warnings"] if w.startswith("analysis cut short")]
    assert len(cut) == 1 and f"TRACEDEP_MAX_MEMORY={limit}" in cut[0], health["warnings"]
    assert f"the first {keep:,} were analysed" in cut[0]
    assert "analysis cut short" in (run / "report.txt").read_text()
    assert "analysis cut short" in (run / "index.html").read_text()


def test_sizes_parse_and_bad_ones_are_one_clear_error() -> None:
    assert mb.parse_size("1.5G") == int(1.5 * 2**30)
    assert mb.parse_size("800M") == 800 * 2**20
    assert mb.parse_size("2000000") == 2_000_000
    assert mb.parse_size("64kib") == 64 * 1024
    for bad in ("", "lots", "-1G", "0", "1e99"):
        with pytest.raises(InputError, match="TRACEDEP_MAX_MEMORY"):
            mb.parse_size(bad)


def test_the_limit_is_the_smaller_of_meminfo_and_the_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert mb.available_bytes(meminfo, cg) == 20000000 * 1024  # no cgroup files
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.current").write_text("1000\n")
    assert mb.available_bytes(meminfo, cg) == 20000000 * 1024  # unlimited
    (cg / "memory.max").write_text(f"{2 << 30}\n")
    (cg / "memory.current").write_text(f"{1 << 30}\n")
    assert mb.available_bytes(meminfo, cg) == 1 << 30
    assert mb.available_bytes(tmp_path / "none", tmp_path / "none") is None
    assert mb.max_events(None) is None
    assert mb.max_events(1) == 1 and mb.max_events(1, mb.MIN_EVENTS) == mb.MIN_EVENTS
    assert mb.max_events(mb.BASE_BYTES + 10**9) == 10**9 // mb.BYTES_PER_EVENT


def test_a_run_directory_holds_to_the_ceiling_unless_a_limit_is_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run can stream: with no TRACEDEP_MAX_MEMORY its whole frame holds no more than
    1.5 GiB allows, however much the machine has; a limit given is obeyed, above the
    ceiling too; a machine with less than the ceiling gets its own figure."""
    ceiling = mb.max_events(mb.RUN_CEILING)
    assert ceiling is not None and 5_000_000 < ceiling < 6_500_000
    monkeypatch.delenv(mb.ENV, raising=False)
    monkeypatch.setattr(mb, "available_bytes", lambda: 20 << 30)
    rows, why = mb.whole_rows()
    assert rows == ceiling and why.startswith("1.5 GiB")
    assert mb.analysis_rows()[0] == mb.max_events(int((20 << 30) * mb.SHARE))  # text: all
    monkeypatch.setattr(mb, "available_bytes", lambda: 1 << 30)
    assert mb.whole_rows() == mb.analysis_rows() and mb.whole_rows()[0] < ceiling
    monkeypatch.setenv(mb.ENV, "4G")
    assert mb.whole_rows() == mb.analysis_rows() == (mb.max_events(4 << 30),
                                                     f"4.00 GiB ({mb.ENV}=4G)")


def test_the_events_that_fit_are_what_the_analysis_holds() -> None:
    """The model against a measurement small enough for a test: analysing the
    classes run must peak under what the budget charges for its events."""
    code = ("import resource,sys; from pathlib import Path;"
            "from tracedep.analysis.trace import load_run;"
            "from tracedep.analysis.pipeline import analyze;"
            f"t=load_run(Path({str(CLASSES_RUN)!r})); analyze(t);"
            "print(len(t.events), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, check=True).stdout.split()
    events, peak = int(out[0]), int(out[1])
    assert peak < mb.BASE_BYTES + events * mb.BYTES_PER_EVENT, (events, peak)
