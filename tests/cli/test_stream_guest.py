"""The bundled drivers' real run, analysed a window at a time (analysis.stream_pipeline).

No boot of its own: the session's ``tracedep run`` of the bundled drivers (with
DWARF).  ``tracedep analyze --stream`` of its run directory, and ``tracedep analyze``
with a memory limit the trace does not fit in (which must stream rather than cut),
write the findings and analysis the run itself wrote from the whole frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import BundledRun, run_tracedep

pytestmark = pytest.mark.guest


def _outputs(d: Path) -> tuple[Any, Any]:
    analysis = json.loads((d / "analysis.json").read_text())
    analysis["health"].pop("analysis_s")
    return json.loads((d / "findings.json").read_text()), analysis


@pytest.mark.parametrize("how", ["--stream", "limit"])
def test_streamed_analysis_writes_what_the_run_wrote(bundled_run: BundledRun, how: str,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["analyze", bundled_run.run_dir, "--out", out]
    env = None
    if how == "--stream":
        args.append("--stream")
    else:
        # room for half its events (common.memory_budget: 200 bytes an event above 400 MB)
        half = bundled_run.manifest["lost"]["decoded_events"] // 2
        assert half > 100_000
        env = {"TRACEDEP_MAX_MEMORY": str((400 << 20) + 200 * half)}
    res = run_tracedep(*args, env=env)
    assert res.rc == 1, res.explain()  # findings: the bug drivers have them
    assert "cut short" not in res.stderr
    findings, analysis = _outputs(out)
    want_f, want_a = _outputs(bundled_run.run_dir)
    assert findings == want_f and findings
    assert analysis == want_a


def test_a_run_too_long_for_memory_streams_its_own_decode(tmp_path: Path) -> None:
    """``tracedep run`` whose trace does not fit the whole frame: its one decode keeps
    the windows, the analysis streams them without decoding the pages again, and writes
    what a stream decoding the pages writes (``tracedep analyze --stream``)."""
    run = tmp_path / "run"
    # room for 50,000 events (common.memory_budget: 200 bytes an event above 400 MB);
    # the bundled drivers' run has several hundred thousand
    env = {"TRACEDEP_MAX_MEMORY": str((400 << 20) + 200 * 50_000)}
    res = run_tracedep("run", "--out", run, env=env)
    assert res.rc == 1, res.explain()  # findings: the bug drivers have them
    assert "pass 1/4 (survey, the run's decode): done" in res.stderr, res.explain()
    assert "cut short" not in res.stderr
    out = tmp_path / "again"
    again = run_tracedep("analyze", run, "--stream", "--out", out)
    assert again.rc == 1, again.explain()
    assert "pass 1/4 (survey): done" in again.stderr
    findings, analysis = _outputs(out)
    want_f, want_a = _outputs(run)
    assert findings == want_f and findings
    assert analysis == want_a
