"""The survey's windows kept on disk for the later passes (tracer.window_spill).

A window read back must be the window the decoder gave: columns, dtypes, categories
with their dtype, values.  A spill that cannot be written (no room, a full disk) must
leave the analysis as it was: each pass decodes the pages again, same findings.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pytest
from recorded_traces import DATA, RUNS

from tracedep.analysis import stream_pipeline
from tracedep.common import run_manifest
from tracedep.reports.serialize import analysis_to_json
from tracedep.tracer import window_spill
from tracedep.tracer.ftrace_binary import Decoded
from tracedep.tracer.window_spill import WindowSpill


def _windows(path: Path, batch: int | None) -> list[stream_pipeline.Window]:
    _, wins = stream_pipeline.windows(path, run_manifest.read(path),
                                      stream_pipeline.How(batch))
    return list(wins)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for c in a.columns:
        if isinstance(a[c].dtype, pd.CategoricalDtype):
            assert a[c].cat.categories.dtype == b[c].cat.categories.dtype, c


@pytest.mark.parametrize("batch", [1, None], ids=["1-page", "default"])
@pytest.mark.parametrize("path", RUNS, ids=[str(p.relative_to(DATA)) for p in RUNS])
def test_windows_come_back_as_the_decoder_gave_them(path: Path, batch: int | None,
                                                    tmp_path: Path) -> None:
    wins = _windows(path, batch)
    spill = WindowSpill(tmp_path)
    for w in wins:
        spill.add(w)
    spill.close_writing()
    assert spill.usable and spill.events == sum(len(w.events) for w in wins)
    for _ in range(2):  # read as often as the passes need
        back = list(spill.windows())
        assert [w.row0 for w in back] == [w.row0 for w in wins]
        for a, b in zip(wins, back, strict=True):
            _same(a.events, b.events)
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing is left behind
    spill.close()


def test_sparse_and_bit_columns_keep_every_value(tmp_path: Path) -> None:
    """The encodings' edges: a column all fill, one other value, -1 fills, bools whose
    count is not a multiple of 8, a categorical with a missing code."""
    n = 1001
    ev = pd.DataFrame({
        "zeros": np.zeros(n, np.uint64),
        "one": np.where(np.arange(n) == 500, np.uint64(1 << 63), np.uint64(0)),
        "minus": np.where(np.arange(n) % 97 == 0, 7, -1).astype(np.int32),
        "dense": np.arange(n, dtype=np.int64) - 3,
        "flag": np.arange(n) % 3 == 0,
        "cat": pd.Categorical.from_codes(np.where(np.arange(n) % 5 == 0, -1, np.arange(n) % 2),
                                         categories=pd.Index(["a", "b"], dtype=object)),
    })
    spill = WindowSpill(tmp_path)
    spill.add(stream_pipeline.Window(ev, 10))
    spill.close_writing()
    (back,) = spill.windows()
    assert back.row0 == 10
    _same(ev, back.events)
    spill.close()


def test_only_the_windows_holding_the_rows_asked_for_are_read(tmp_path: Path) -> None:
    wins = _windows(DATA / "classes" / "raw", 1)
    spill = WindowSpill(tmp_path)
    for w in wins:
        spill.add(w)
    spill.close_writing()
    last = wins[-1]
    got = list(spill.windows(np.array([last.row0 + len(last.events) - 1])))
    assert [w.row0 for w in got] == [last.row0]
    spill.close()


def _comparable(path: Path, how: stream_pipeline.How) -> dict[str, object]:
    a, _ = stream_pipeline.analyze_run(path, run_manifest.read(path), None, how)
    out = analysis_to_json(a)
    out["health"].pop("analysis_s")
    out["findings"] = [f.__dict__ for f in a.findings]
    return out


def test_a_full_disk_leaves_the_analysis_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write fails as on a full disk (/dev/full): the passes decode again, the
    analysis is the one without a spill, and the progress lines say why."""
    path = DATA / "classes" / "raw"
    want = _comparable(path, stream_pipeline.How(4, spill=False))

    def full(**_: object) -> IO[bytes]:
        return open("/dev/full", "r+b")  # noqa: SIM115 (the spill closes it)

    monkeypatch.setattr(window_spill.tempfile, "TemporaryFile", full)
    said: list[str] = []
    assert _comparable(path, stream_pipeline.How(4, say=said.append)) == want
    assert any("No space left on device" in s and "decode the pages again" in s
               for s in said), said


def test_no_room_on_disk_means_no_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    path = DATA / "classes" / "raw"
    monkeypatch.setattr(window_spill, "_MARGIN", 1 << 62)
    said: list[str] = []
    s = stream_pipeline.survey(path, run_manifest.read(path),
                               stream_pipeline.How(4, say=said.append))
    assert s.spill is None
    assert any("no room on disk" in line for line in said)
    assert sum(len(w.events) for w in s.windows("again")) == s.events


def test_arrays_come_back_in_order(tmp_path: Path) -> None:
    spill = window_spill.ArraySpill(tmp_path)
    sent = [[np.arange(5, dtype=np.int64), np.zeros(0, np.int32)],
            [np.array([2**63 - 1], np.int64), np.array([-1, 7], np.int32)]]
    for arrays in sent:
        spill.add(arrays)
    spill.close_writing()
    got = list(spill.read())
    assert len(got) == 2
    for a, b in zip(sent, got, strict=True):
        assert all(x.dtype == y.dtype and (x == y).all() for x, y in zip(a, b, strict=True))
    assert list(tmp_path.iterdir()) == []
    spill.close()


def test_a_full_disk_for_the_class_ids_runs_the_engines_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The windows are kept but the first pass's class ids cannot be: pass 3 classifies
    with the plan again, and the analysis is the same."""
    path = DATA / "classes" / "raw"
    want = _comparable(path, stream_pipeline.How(4, spill=False))
    real = window_spill.tempfile.TemporaryFile

    def arrays_full(**kw: object) -> IO[bytes]:
        if kw.get("prefix") == "arrays-":
            return open("/dev/full", "r+b")  # noqa: SIM115 (the spill closes it)
        return real(**kw)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(window_spill.tempfile, "TemporaryFile", arrays_full)
    used: list[bool] = []
    first = stream_pipeline._first_pass_ids

    def watch(plans: stream_pipeline.Plans) -> object:
        got = first(plans)
        used.append(got is not None)
        return got

    monkeypatch.setattr(stream_pipeline, "_first_pass_ids", watch)
    assert _comparable(path, stream_pipeline.How(4)) == want
    assert used == [False]


def test_the_run_s_decode_keeps_its_windows_when_the_stream_will_read_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's own decode (tracer.run_record) keeps its windows for ``tracedep run``'s
    analysis when the frame is cut for memory, and they are the windows a stream
    decodes; not for ``tracedep trace``, nor when the trace fits."""
    import shutil

    from tracedep.common.machines import machine_for
    from tracedep.tracer import control, run_record

    run = tmp_path / "run"
    shutil.copytree(DATA / "classes" / "raw", run)
    ctl = control.load(run / "control.log")

    def decode(rows: int | None, for_analysis: bool) -> Decoded:
        monkeypatch.setattr(run_record, "whole_rows", lambda: (rows, "a test's limit"))
        got = run_record._decode(run, run_manifest.read(run), ctl, machine_for("x86_64"),
                                 for_analysis)
        assert got is not None
        return got

    d = decode(100, True)
    assert d.cut is not None and d.windows is not None and d.windows.usable
    back = list(d.windows.windows())
    fresh = _windows(run, None)
    assert [w.row0 for w in back] == [w.row0 for w in fresh]
    for a, b in zip(fresh, back, strict=True):
        _same(a.events, b.events)
    d.windows.close()
    assert decode(100, False).windows is None  # tracedep trace: no analysis follows
    assert decode(None, True).windows is None  # the whole frame holds it
