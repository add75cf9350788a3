"""``--raw keep|compress|drop``: what a run keeps of its raw pages once analysed.

The run is the recorded real trace of tests/data/traces/tiny/ with its page
checksums written, as a run writes them when it ends.  A compressed run must
decode to exactly the same events; a dropped one to the events of the pages
kept around the witness times only, with every other page read as changed (a
gap), so that its re-analysis says so and reports nothing it did not see.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_RUN as TINY
from conftest import tiny_run_copy

from tracedep.analysis.pipeline import analyze
from tracedep.analysis.trace import load_run
from tracedep.cli import main
from tracedep.tracer import page_sums
from tracedep.tracer.decode_stream import decode_run
from tracedep.tracer.retention import MARGIN, apply, pages_to_keep, raw_files, retain_run

PAGE = 4096


@pytest.fixture
def run(tmp_path: Path) -> Path:
    d = tiny_run_copy(tmp_path)
    page_sums.write(d / "trace" / "cpu0.raw", PAGE)
    return d


def test_compress_decodes_to_the_same_events(run: Path) -> None:
    before = decode_run(run).events
    size = (run / "trace" / "cpu0.raw").stat().st_size
    rec = retain_run(run, "compress", [])
    assert rec is not None and rec.mode == "compress"
    assert not (run / "trace" / "cpu0.raw").exists()
    assert raw_files(run / "trace") == {0: run / "trace" / "cpu0.raw.gz"}
    assert gzip.decompress((run / "trace" / "cpu0.raw.gz").read_bytes()) == (
        TINY / "trace" / "cpu0.raw").read_bytes()
    assert 0 < rec.disk_bytes_after < rec.disk_bytes_before and size <= rec.disk_bytes_before
    pd.testing.assert_frame_equal(decode_run(run).events, before)
    info = json.loads((run / "manifest.json").read_text())
    assert info["retention"]["mode"] == "compress"
    assert info["retention"]["disk_bytes_after"] == rec.disk_bytes_after


def test_a_damaged_gz_is_read_up_to_the_damage(run: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    retain_run(run, "compress", [])
    gz = run / "trace" / "cpu0.raw.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    assert main(["analyze", str(run), "--no-dwarf", "--out", str(run / "again")]) == 0
    err = capsys.readouterr().err
    assert "incomplete" in err and "Traceback" not in err


def test_pages_to_keep() -> None:
    page_ts = np.array([0, 10, 20, 30, 40, 50, 60, 70], dtype=np.int64)
    assert pages_to_keep(page_ts, [35]).tolist() == list(range(3 - MARGIN, 3 + MARGIN + 1))
    assert pages_to_keep(page_ts, [0, 75]).tolist() == [0, 1, 2, 5, 6, 7]
    assert pages_to_keep(page_ts, []).tolist() == []


def test_drop_keeps_the_pages_around_the_witnesses(run: Path) -> None:
    raw = run / "trace" / "cpu0.raw"
    data = raw.read_bytes()
    n = len(data) // PAGE
    margin = 1  # the tiny trace has five pages
    assert n >= 2 * margin + 3
    page_ts = np.frombuffer(data, dtype="<u8")[:: PAGE // 8][:n].astype(np.int64)
    mid = n // 2
    witness = int(page_ts[mid]) + 1
    rec = apply(run / "trace", "drop", PAGE, [witness], margin)
    assert rec.pages == {"cpu0": {"kept_pages": 2 * margin + 1, "pages": n}}
    after = raw.read_bytes()
    assert len(after) == len(data)  # every page keeps its offset (a hole where dropped)
    for i in range(n):
        page = after[i * PAGE:(i + 1) * PAGE]
        kept = mid - margin <= i <= mid + margin
        assert page == (data[i * PAGE:(i + 1) * PAGE] if kept else bytes(PAGE)), i
    # a re-analysis reads only the kept pages: the others are changed pages (gaps)
    t = load_run(run)
    assert t.info.lost.decoder_damaged_pages == n - (2 * margin + 1)
    lo, hi = int(page_ts[mid - margin]), int(page_ts[mid + margin + 1])
    real = t.events[t.events["kind"] != "gap"]["ts_ns"]
    assert real.between(lo, hi).all() and len(real) > 0
    analyze(t)  # reads what is left, whatever it is


def test_a_dropped_run_says_so(run: Path) -> None:
    retain_run(run, "drop", [])
    t = load_run(run)
    assert any("--raw drop" in w for w in t.warnings)
    assert t.info.retention is not None and t.info.retention["mode"] == "drop"


def test_keep_does_nothing(run: Path) -> None:
    assert retain_run(run, "keep", []) is None
    assert (run / "trace" / "cpu0.raw").read_bytes() == (TINY / "trace" / "cpu0.raw").read_bytes()


def test_drop_after_compress_is_drop(run: Path, tmp_path: Path) -> None:
    """A compressed run dropped later is decompressed a piece at a time, then dropped:
    the same sparse file as dropping the raw pages."""
    data = (run / "trace" / "cpu0.raw").read_bytes()
    witness = int(np.frombuffer(data, dtype="<u8")[PAGE // 8 * 2]) + 1
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    apply(twin / "trace", "drop", PAGE, [witness], 1)
    apply(run / "trace", "compress", PAGE, [], 1)
    rec = apply(run / "trace", "drop", PAGE, [witness], 1)
    assert raw_files(run / "trace") == {0: run / "trace" / "cpu0.raw"}
    assert (run / "trace" / "cpu0.raw").read_bytes() == (twin / "trace" / "cpu0.raw").read_bytes()
    assert rec.pages["cpu0"]["pages"] == len(data) // PAGE
