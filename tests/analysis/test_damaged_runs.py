"""A run directory damaged after the run is never reported as a complete trace.

The run is the recorded real trace of tests/data/traces/tiny/, with what the run
itself decoded when it ended written into its manifest (``lost.decoded_events``,
``lost.decoded_per_cpu``), as tracer.session writes them.  Emptying, cutting or
corrupting ``trace/cpu0.raw`` afterwards must make every report say
"incomplete", with the events it could not read counted as lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_run_copy

from tracedep.analysis.trace import load
from tracedep.cli import main

PAGE = 4096


@pytest.fixture
def run(tmp_path: Path) -> Path:
    d = tiny_run_copy(tmp_path)
    t = load(d)
    assert t.warnings == [] or not any("incomplete" in w for w in t.warnings)
    info = json.loads((d / "manifest.json").read_text())
    info["lost"] = {"total": 0, "decoder_torn_pages": 0, "decoded_events": len(t.events),
                    "decoded_per_cpu": {str(c): int(n) for c, n in
                                        t.events["cpu"].value_counts().items()}}
    (d / "manifest.json").write_text(json.dumps(info))
    return d


def _raw(run: Path) -> Path:
    return run / "trace" / "cpu0.raw"


def test_the_undamaged_run_is_complete(run: Path) -> None:
    t = load(run)
    assert not [w for w in t.warnings if "incomplete" in w]
    assert t.info.lost.total == 0


@pytest.mark.parametrize("damage", ["empty", "whole_pages", "mid_page", "deleted"])
def test_a_cut_trace_says_incomplete(run: Path, damage: str) -> None:
    raw = _raw(run)
    data = raw.read_bytes()
    if damage == "empty":
        raw.write_bytes(b"")
    elif damage == "whole_pages":
        raw.write_bytes(data[:2 * PAGE])
    elif damage == "mid_page":
        raw.write_bytes(data[:2 * PAGE + 1000])
    else:
        raw.unlink()
    t = load(run)
    said = [w for w in t.warnings if w.startswith("incomplete:")]
    assert said and "cpu0" in said[0], t.warnings
    assert t.info.lost.unreadable_events > 0
    assert t.info.lost.total >= t.info.lost.unreadable_events
    if damage == "mid_page":
        assert t.info.lost.decoder_torn_pages == 1


def test_every_report_says_so(run: Path, tmp_path: Path) -> None:
    raw = _raw(run)
    raw.write_bytes(raw.read_bytes()[:PAGE])
    out = tmp_path / "out"
    rc = main(["analyze", str(run), "--no-dwarf", "--out", str(out)])
    assert rc in (0, 1)
    assert "INCOMPLETE" in (out / "report.txt").read_text()
    assert "Trace incomplete" in (out / "index.html").read_text()
    health = json.loads((out / "analysis.json").read_text())["health"]
    assert any(w.startswith("incomplete:") for w in health["warnings"])


@pytest.mark.parametrize("content", ["truncated", "random", "plain_garbage", "huge_address"])
def test_a_damaged_kallsyms_is_one_clear_line(run: Path, tmp_path: Path, content: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import gzip
    import random

    good = gzip.compress(b"ffffffff81000000 T _stext\nffffffff81000100 T start_kernel\n")
    data = {"truncated": good[:len(good) // 2],
            "random": b"\x1f\x8b" + random.Random(3).randbytes(400),
            "plain_garbage": "\u00e9t\u00e9 \x00\xff".encode("latin-1") * 50,
            "huge_address": gzip.compress(b"1" * 40 + b" T _stext\n")}[content]
    (run / "kallsyms.gz").write_bytes(data)
    rc = main(["analyze", str(run), "--no-dwarf", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("tracedep: error: ") and "kallsyms" in err and err.count("\n") == 1


def test_a_lost_release_is_a_gap_not_a_lock_held_for_ever(run: Path) -> None:
    """Every spin_unlock record of the run made unreadable (its format now claims a
    field past the record's end): the unlocks are lost.  Each rejected record is a
    gap, where the replay ends what it believed held (forced reason ``gap``) rather
    than keep td_tiny's spinlock held for the rest of the task; no finding, and the
    run says why."""
    from tracedep.analysis.pipeline import analyze

    ctl = run / "control.log"
    text = ctl.read_text()
    i = text.index("name: ul__raw_spin_unlock\n")
    j = text.index("field:u64 lock;\toffset:16;", i)
    ctl.write_text(text[:j] + "field:u64 lock;\toffset:4000;" + text[j + len(
        "field:u64 lock;\toffset:16;"):])
    t = load(run)
    assert t.info.lost.decoder_rejected_records > 0
    assert any(w.startswith("rejected records:") for w in t.warnings), t.warnings
    a = analyze(t)
    assert [f.kind for f in a.findings] == []
    assert a.health.forced_releases.by_reason.get("gap", 0) > 0, a.health.forced_releases


@pytest.mark.parametrize("damage", ["cut", "more_than_read"])
def test_the_files_are_held_to_what_the_guest_read(run: Path, damage: str) -> None:
    """The guest's per-CPU ``read events`` (its ring buffer's count, sent after tracing
    stopped) equals the records in the files, stacks included (measured equal on
    x86_64 6.12 and 6.1 and arm64 runs).  A run whose manifest has only that count (no
    decode of its own) still says a cut page, or files holding more than was read (a
    page appended in time order; one out of order is dropped as such)."""
    from tracedep.tracer.decode_stream import decode_run

    records = decode_run(run).records_per_cpu
    info = json.loads((run / "manifest.json").read_text())
    info["lost"] = {"total": 0, "per_cpu": {f"cpu{c}": {"read_events": float(n)}
                                            for c, n in records.items()}}
    (run / "manifest.json").write_text(json.dumps(info))
    assert not [w for w in load(run).warnings if "incomplete" in w]
    if damage == "cut":
        raw = _raw(run)
        raw.write_bytes(raw.read_bytes()[:-PAGE])
    else:
        info["lost"]["per_cpu"]["cpu0"]["read_events"] -= 5
        (run / "manifest.json").write_text(json.dumps(info))
    t = load(run)
    said = [w for w in t.warnings if w.startswith("incomplete:") and "cpu0" in w]
    if damage == "cut":
        assert any("not in the trace files" in w for w in said), t.warnings
        assert t.info.lost.undelivered_events > 0
    else:
        assert any("5 more events on cpu0 than the guest read" in w for w in said), t.warnings
        assert t.info.lost.foreign_events == 5
    assert t.info.lost.total > 0
