"""The held-lock replay fed in chunks gives what it gives fed whole.

heldlocks.Replayer carries the replay's state from one chunk of events to the
next; the analysis streams through it.  On every recorded real trace (the rules
fixtures of both kernels, and the tiny run directory), the whole analysis with
chunks of 1 and 7 events must equal the analysis of the trace in one chunk:
findings (witnesses included), edges, class statistics and forced releases.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from recorded_fixture import load_fixture

from tracedep.analysis import pipeline
from tracedep.analysis.heldlocks import replay
from tracedep.analysis.trace import Trace, load_run

DATA = Path(__file__).parents[1] / "data" / "traces"
FIXTURES = sorted(p.parent for p in DATA.glob("rules/*/manifest.json")) + sorted(
    p.parent for p in DATA.glob("lockdep/rules/*/manifest.json"))
TINY = DATA / "tiny"


def _analysis(trace: Trace, chunk_rows: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(pipeline, "replay", functools.partial(replay, chunk_rows=chunk_rows))
    a = pipeline.analyze(trace)
    health = a.health.to_json()
    health.pop("analysis_s", None)
    return json.loads(json.dumps({
        "findings": [f.to_json() for f in a.findings],
        "edges": [e.to_json() for e in a.edges],
        "classes": [c.to_json() for c in a.classes],
        "health": health}, default=str))


def _check(trace: Trace, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _analysis(trace, 1 << 30, monkeypatch)
    for n in (1, 7):
        assert _analysis(trace, n, monkeypatch) == whole, f"chunks of {n}"


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: str(p.relative_to(DATA)))
def test_chunked_replay_equals_whole(fixture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(load_fixture(fixture), monkeypatch)


def test_chunked_replay_equals_whole_on_a_run_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    _check(load_run(TINY), monkeypatch)


def test_the_fixtures_exist() -> None:
    assert len(FIXTURES) >= 76 and TINY.is_dir()  # 38 drivers, two kernels
