"""One root cause, one finding: cycles that one lock class closes are grouped (issue 11,
item 6).

The input is real: two fixtures of tests/data/traces/rules (td_abba_bug's AB-BA and
td_lock_cycle_bug's 3-lock cycle), both cut from ONE run of the bundled drivers
(rules/SOURCE), put back together as the larger slice of that run they came from.
The root cause the issue describes, one class standing for locks lockdep keys
apart (every inode's i_rwsem as one heap class), is then made by keying two of
their locks as one class, as a class key that is too coarse does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from recorded_fixture import _read_events, _write_events, load_fixture

from tracedep.analysis import classes as lock_classes
from tracedep.analysis import pipeline
from tracedep.analysis.pipeline import analyze
from tracedep.reports import serialize
from tracedep.tracer import schema

RULES = Path(__file__).parents[1] / "data" / "traces" / "rules"
PARTS = ("td_abba_bug", "td_lock_cycle_bug")


def _merge(dirs: list[Path], out: Path) -> Path:
    """Fixtures of one run as one fixture: events (each once), stacks, symbols, loads."""
    out.mkdir(parents=True, exist_ok=True)
    frames, stacks, syms = [], [], set()
    info: dict[str, Any] = {}
    for d in dirs:
        ev = _read_events(d / "events.csv.gz")
        sid = ev["stack_id"].to_numpy().copy()
        sid[sid >= 0] += len(stacks)
        ev["stack_id"] = sid
        frames.append(ev)
        stacks += json.loads((d / "stacks.json").read_text())
        syms |= {ln for ln in (d / "kallsyms").read_text().splitlines() if ln}
        m = json.loads((d / "manifest.json").read_text())
        if not info:
            info = m
            continue
        fx, mfx = info["fixture"], m["fixture"]
        fx["modules"] = sorted(set(fx["modules"]) | set(mfx["modules"]))
        fx["module_loads"].update(mfx["module_loads"])
        fx.setdefault("source", {}).update(mfx.get("source") or {})
        names = {x["name"] for x in info["modules"]}
        info["modules"] += [x for x in m["modules"] if x["name"] not in names]
    ev = pd.concat(frames, ignore_index=True)
    # an event both slices kept (a switch, a shared lock) happened once
    ev = ev.drop_duplicates(subset=[c for c in schema.COLUMNS if c != "stack_id"])
    ev = ev.sort_values("ts_ns", kind="stable")
    _write_events(schema.conform(ev), out / "events.csv.gz")
    (out / "stacks.json").write_text(json.dumps(stacks))
    (out / "kallsyms").write_text("\n".join(sorted(syms, key=lambda s: int(s.split()[0], 16)))
                                  + "\n")
    (out / "manifest.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _merge([RULES / m for m in PARTS], tmp_path_factory.mktemp("merged"))


def _one_class(monkeypatch: pytest.MonkeyPatch, a: str, b: str) -> None:
    """Key lock class ``b`` as ``a`` (a class key too coarse to tell them apart)."""
    real = lock_classes.assign

    def assign(*args: Any, **kw: Any) -> Any:
        ids, table = real(*args, **kw)
        names = [c.name for c in table]
        ia, ib = names.index(a), names.index(b)
        return np.where(ids == ib, ia, ids), table

    monkeypatch.setattr(lock_classes, "assign", assign)
    assert pipeline.lock_classes.assign is assign


def _cycles(a: Any) -> list[Any]:
    return [f for f in a.findings if f.kind == "lock-order-inversion"]


def test_separate_causes_stay_separate(merged: Path) -> None:
    """Two cycles with no class in common: two findings, each with the signature it
    has alone (a group of one is the plain cycle)."""
    alone = {f.signature for m in PARTS for f in _cycles(analyze(load_fixture(RULES / m)))}
    got = _cycles(analyze(load_fixture(merged)))
    assert len(got) == 2 and {f.signature for f in got} == alone, [f.message for f in got]
    assert all("paths" not in f.details for f in got)


def test_cycles_through_one_class_are_one_finding(merged: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _one_class(monkeypatch, "td_xfer_queue_lock", "td_bus_mutex")
    a = analyze(load_fixture(merged))
    got = _cycles(a)
    assert len(got) == 1, [f.message for f in got]
    f = got[0]
    assert f.details["through"] == "td_xfer_queue_lock"
    paths = sorted(tuple(p) for p in f.details["paths"])
    assert sorted(len(p) for p in paths) == [2, 3], paths
    assert all("td_xfer_queue_lock" in p for p in paths)
    assert {"td_port_mutex", "td_fw_mutex", "td_xfer_stats_lock"} <= set(f.locks)
    # keyed by the class alone: the same whatever cycles it closes, and across loads
    assert f.key == ("through", f.key[1]) and f.key[1].endswith("td_xfer_queue_lock")
    again = _cycles(analyze(load_fixture(merged)))[0]
    assert again.signature == f.signature
    # every path's own dependencies are witnessed
    roles = {s.role for s in f.sites}
    for p in paths:
        for x, y in zip(p, p[1:] + p[:1], strict=True):
            assert f"{y} acquired while holding {x}" in roles, (x, y, roles)
    # each report format shows each path
    files = serialize.render_all(a, generated="test")
    html = "\n".join(v for k, v in files.items() if k.endswith(".html"))
    for p in paths:
        chain = " -&gt; ".join([*p, p[0]])
        assert any(" -> ".join(r) in files[serialize.REPORT_FILE] for r in _rotations(p)), p
        assert any(" -&gt; ".join(r) in html for r in _rotations(p)), (p, chain)
    back = json.loads(files[serialize.FINDINGS_FILE])
    assert [g["details"].get("paths") for g in back if g["kind"] == "lock-order-inversion"
            ] == [f.details["paths"]]


def _rotations(p: tuple[str, ...]) -> list[list[str]]:
    """A cycle ``a -> b -> a`` written from any of its locks."""
    return [[*p[i:], *p[:i], p[i]] for i in range(len(p))]
