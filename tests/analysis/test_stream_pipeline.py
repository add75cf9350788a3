"""The analysis a window at a time (analysis.stream_pipeline) against the whole frame's.

The recorded run directories are decoded in batches of 1 and 4 pages per CPU (many
windows: every carry across windows is crossed) and of the default size; the stream's
findings, edges, class statistics, health and run summary must be the whole frame's
(``pipeline.analyze`` of ``trace.load_run``), but for the time the analysis took.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from recorded_traces import DATA, RUNS

from tracedep.analysis import pipeline, stream_pipeline
from tracedep.analysis.findings import Analysis
from tracedep.analysis.trace import load_run
from tracedep.common import run_manifest
from tracedep.reports.serialize import analysis_to_json


def _comparable(a: Analysis) -> dict[str, object]:
    out = analysis_to_json(a)
    out["health"].pop("analysis_s")
    out["findings"] = [f.__dict__ for f in a.findings]
    return out


def _streamed(path: Path, batch: int | None) -> Analysis:
    a, _ = stream_pipeline.analyze_run(path, run_manifest.read(path), None,
                                       stream_pipeline.How(batch))
    return a


@pytest.mark.parametrize("batch", [1, 4, None], ids=["1-page", "4-pages", "default"])
@pytest.mark.parametrize("path", RUNS, ids=[str(p.relative_to(DATA)) for p in RUNS])
def test_stream_gives_the_whole_frames_analysis(path: Path, batch: int | None) -> None:
    whole = pipeline.analyze(load_run(path))
    assert _comparable(_streamed(path, batch)) == _comparable(whole)


@pytest.mark.parametrize("path", RUNS, ids=[str(p.relative_to(DATA)) for p in RUNS])
def test_without_room_for_its_windows_the_stream_decodes_each_pass(path: Path) -> None:
    """With no spill (tracer.window_spill) every pass decodes the pages again: the
    same analysis."""
    a, _ = stream_pipeline.analyze_run(path, run_manifest.read(path), None,
                                       stream_pipeline.How(4, spill=False))
    assert _comparable(a) == _comparable(pipeline.analyze(load_run(path)))


def test_the_runs_say_something() -> None:
    """The runs have findings, edges and classes to compare."""
    got = [pipeline.analyze(load_run(p)) for p in RUNS]
    assert any(a.findings for a in got) and all(a.edges and a.classes for a in got)


def test_analyze_stream_writes_the_same_findings(tmp_path: Path) -> None:
    """``tracedep analyze --stream`` writes the findings.json and analysis.json the
    whole frame gives (but for the time taken)."""
    run = DATA / "classes" / "raw"
    outs, more = {}, {}
    for how in ("whole", "stream"):
        out = tmp_path / how
        cmd = [sys.executable, "-m", "tracedep.cli", "analyze", str(run), "--no-dwarf",
               "--out", str(out)] + (["--stream"] if how == "stream" else [])
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert p.returncode in (0, 1), p.stderr
        outs[how] = json.loads((out / "findings.json").read_text())
        more[how] = json.loads((out / "analysis.json").read_text())
        more[how]["health"].pop("analysis_s")
    assert outs["whole"] == outs["stream"] and outs["whole"]
    assert more["whole"] == more["stream"]


@pytest.mark.parametrize("path", RUNS, ids=[str(p.relative_to(DATA)) for p in RUNS])
def test_the_survey_counts_what_the_whole_decode_holds(path: Path) -> None:
    """Rows per CPU (what a trace changed since its run is checked against), events,
    stacks and the scheduler's own depth: the survey's, from windows it does not keep,
    are the whole frame's."""
    from tracedep.analysis.replay_inputs import switch_baseline
    from tracedep.tracer.decode_stream import decode_run

    whole = decode_run(path, run_manifest.read(path))
    s = stream_pipeline.survey(path, run_manifest.read(path), stream_pipeline.How(1))
    assert s.events == len(whole.events) and s.trace.stacks == whole.stacks
    assert s.per_cpu == whole.rows_per_cpu()
    assert s.baseline == switch_baseline(whole.events)


def test_a_run_without_a_trace_is_one_clear_error(tmp_path: Path) -> None:
    """A run directory whose guest never started tracing: the whole frame's error, and
    exit 2, when it is streamed too."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text((DATA / "tiny" / "manifest.json").read_text())
    p = subprocess.run([sys.executable, "-m", "tracedep.cli", "analyze", str(run), "--stream",
                        "--no-dwarf"], capture_output=True, text=True, check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"tracedep: error: {run}: no control.log; the guest never started tracing"]


def test_a_cut_decode_s_windows_are_streamed_without_decoding_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tracedep run`` keeps the windows of its own decode when it is cut for memory
    (tracer.window_spill.spill_while_decoding): the analysis reads them, decodes no
    page, and writes what the whole frame gives."""
    from tracedep import cli
    from tracedep.tracer import decode_stream
    from tracedep.tracer.window_spill import spill_while_decoding

    run = DATA / "classes" / "raw"
    spill, windows, done = spill_while_decoding(run, 100)
    assert spill is not None and windows is not None
    decoded = decode_stream.decode_run(run, run_manifest.read(run), 100, windows)
    done()
    assert decoded.cut is not None and spill.usable
    decoded.windows = spill
    made: list[Path] = []
    real = decode_stream.StreamDecoder.__init__

    def counted(self: decode_stream.StreamDecoder, run_dir: Path, *a: object, **k: object
                ) -> None:
        made.append(run_dir)
        real(self, run_dir, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_stream.StreamDecoder, "__init__", counted)
    got = cli._analyze_and_report(run, tmp_path / "run", None, False, decoded=decoded)
    assert made == []  # no decode: the run's windows were read
    assert spill.f is None  # and closed once read
    assert not [w for w in got.health.warnings if "cut short" in w]
    monkeypatch.undo()
    assert _comparable(got) == _comparable(pipeline.analyze(load_run(run)))


def test_a_run_whose_decode_was_cut_is_streamed_whole(tmp_path: Path) -> None:
    """``tracedep run`` hands its own decode to the analysis (cli._analyze_and_report):
    when that decode was cut for memory, the run is streamed, every event, and its
    reports are the whole frame's, with no "cut short"."""
    from tracedep import cli
    from tracedep.tracer.decode_stream import decode_run

    run = DATA / "classes" / "raw"
    decoded = decode_run(run, run_manifest.read(run), max_rows=100)
    assert decoded.cut is not None and len(decoded.events) == 100
    got = cli._analyze_and_report(run, tmp_path / "run", None, False, decoded=decoded)
    assert not decoded.events.shape[0]  # the cut frame was let go before the stream
    assert not [w for w in got.health.warnings if "cut short" in w]
    assert _comparable(got) == _comparable(pipeline.analyze(load_run(run)))
    written = json.loads((tmp_path / "run" / "analysis.json").read_text())
    assert written["health"]["events"] == got.health.events > 100
