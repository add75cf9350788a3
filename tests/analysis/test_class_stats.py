"""Class statistics a frame at a time (analysis.class_stats) against the whole table.

The acquisitions of each recorded trace's replay, cut into frames of any size and
order (as a stream drains them), give the statistics of the whole table.  With a tiny
``EXACT_VALUES`` every class is approximate: the counts, contexts, means, maxima and
histograms stay exact, and each percentile lies within one log-linear bucket of
np.percentile's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from recorded_traces import DATA, FIXTURES, RUNS, load_any

from tracedep.analysis import class_stats, pipeline, waits
from tracedep.analysis.class_stats import SUB_BUCKETS, StatsAcc, _fine_index, _fine_value
from tracedep.analysis.replay_types import Replay

TRACES = [DATA / "rules" / "td_abba_bug", DATA / "lockdep" / "rules" / "td_hardirq_bug", *RUNS]


def _replay(path: Path) -> tuple[Replay, list]:  # type: ignore[type-arg]
    seen: list[tuple[Replay, int]] = []
    real = waits.wait_graph

    def spy(ev, symbols, rep, base, namer=None):  # type: ignore[no-untyped-def]
        seen.append((rep, base))
        return real(ev, symbols, rep, base, namer)

    got: list = []  # type: ignore[type-arg]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(waits, "wait_graph", spy)
        m.setattr(pipeline, "StatsAcc", lambda table: got.append(table) or StatsAcc(table))
        pipeline.analyze(load_any(path))
    return seen[0][0], got[0]


def _in_pieces(acqs: pd.DataFrame, size: int, seed: int) -> list[pd.DataFrame]:
    a = acqs.assign(acq=np.arange(len(acqs), dtype=np.int64))
    rows = np.random.default_rng(seed).permutation(len(a))
    return [a.iloc[np.sort(rows[i:i + size])] for i in range(0, len(a), size)]


def test_the_traces_have_acquisitions() -> None:
    assert all(len(_replay(p)[0].acquisitions) > 40 for p in TRACES)
    assert len(FIXTURES) > 60


@pytest.mark.parametrize("path", TRACES, ids=[str(p.relative_to(DATA)) for p in TRACES])
@pytest.mark.parametrize("size", [1, 7, 100])
def test_frames_in_any_order_give_the_whole_tables_statistics(path: Path, size: int) -> None:
    rep, table = _replay(path)
    whole = class_stats.class_stats(rep.acquisitions, table, rep.usage)
    acc = StatsAcc(table)
    for part in _in_pieces(rep.acquisitions, size, size):
        acc.add(part)
    assert acc.finish(rep.usage) == whole and whole


@pytest.mark.parametrize("path", TRACES, ids=[str(p.relative_to(DATA)) for p in TRACES])
def test_past_the_exact_values_percentiles_stay_within_a_bucket(
        monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    rep, table = _replay(path)
    exact = class_stats.class_stats(rep.acquisitions, table, rep.usage)
    monkeypatch.setattr(class_stats, "EXACT_VALUES", 2)
    acc = StatsAcc(table)
    for part in _in_pieces(rep.acquisitions, 13, 1):
        acc.add(part)
    approx = acc.finish(rep.usage)
    assert acc.approximate() > 0
    assert len(approx) == len(exact)
    for a, e in zip(approx, exact, strict=True):
        assert (a.lock_class, a.lock_type, a.acquisitions, a.contexts, a.hold_hist,
                a.wait_hist) == (e.lock_class, e.lock_type, e.acquisitions, e.contexts,
                                 e.hold_hist, e.wait_hist)
        for got, want in ((a.hold_ns, e.hold_ns), (a.wait_ns, e.wait_ns)):
            assert got.keys() == want.keys()
            if not want:
                continue
            assert got["max"] == want["max"]
            assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)
            for q in ("p50", "p99"):
                assert abs(got[q] - want[q]) <= max(want[q], 1) / SUB_BUCKETS * 2 + 1, (q, got,
                                                                                    want)


def test_log_linear_buckets() -> None:
    """Every value lies in a bucket whose middle is within 1/SUB_BUCKETS of it, and the
    buckets keep the values' order."""
    rng = np.random.default_rng(7)
    v = np.unique(np.concatenate([np.arange(0, 5000), rng.integers(0, 1 << 62, 20000),
                                  (1 << np.arange(0, 62)), (1 << np.arange(1, 62)) - 1]))
    idx = _fine_index(v)
    assert np.all(np.diff(idx) >= 0)
    mid = np.array([_fine_value(int(i)) for i in idx])
    assert np.all(np.abs(mid - v) <= np.maximum(v, 1) / SUB_BUCKETS)
