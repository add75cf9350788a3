"""A manifest of the wrong shape is bad input (exit 2, one line), never a crash.

Every field of a recorded real run's manifest (tests/data/traces/tiny), and the
fields of its first module, are replaced in turn by values of other types; the
run is then analysed as ``tracedep analyze`` does.  The manifest also comes in
as a list, or as no JSON at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracedep.cli import main
from tracedep.common.run_manifest import check

TINY = Path(__file__).parents[1] / "data" / "traces" / "tiny"
VALUES: list[Any] = [[], {}, "x", 1.5, None, True, -1, 2**70, [1], {"a": 1}]


def _paths(d: dict[str, Any], prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict) and not prefix:
            yield from _paths(v, (k,))
        if isinstance(v, list) and v and isinstance(v[0], dict) and not prefix:
            yield from _paths(v[0], (k, 0))


def _analyze(run: Path, out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["analyze", str(run), "--no-dwarf", "--out", str(out)])
    return rc, err.getvalue()


def test_the_recorded_manifest_passes_the_check() -> None:
    assert check(json.loads((TINY / "manifest.json").read_text())) == ""


def test_wrong_types_are_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEDEP_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(TINY, run)
    base = json.loads((TINY / "manifest.json").read_text())
    bad = []
    cases = 0
    for path in _paths(base):
        for val in VALUES:
            m = json.loads(json.dumps(base))
            d = m
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = val
            (run / "manifest.json").write_text(json.dumps(m))
            rc, err = _analyze(run, tmp_path / f"out{cases % 2}")
            cases += 1
            if rc not in (0, 1, 2) or "Traceback" in err or (rc == 2 and err.count("\n") != 1):
                bad.append((path, val, rc, err[:200]))
    assert cases > 300
    assert not bad, bad[:10]


@pytest.mark.parametrize("text", ["[]", "42", '"manifest"', "{", ""])
def test_a_manifest_that_is_not_an_object(tmp_path: Path, text: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(TINY, run)
    (run / "manifest.json").write_text(text)
    rc, err = _analyze(run, tmp_path / "out")
    assert rc == 2 and err.startswith("tracedep: error: ") and err.count("\n") == 1, err
