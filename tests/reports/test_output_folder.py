"""Writing a run's reports never destroys what the user had (reports.serialize).

The analysis is the recorded real run of the bundled drivers
(tests/data/analysis/bundled).  tracedep replaces and deletes only the files its
ledger (outputs.json) says it wrote; anything else in the way is an error; no
path through a symbolic link is written; a failure while writing leaves the
previous set of reports as it was.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tracedep.analysis.findings import Analysis
from tracedep.errors import InputError
from tracedep.reports import serialize
from tracedep.reports.htmlkit import slug
from tracedep.reports.serialize import OUTPUTS_FILE, load_run_outputs, write_run_outputs

BUNDLED = Path(__file__).parents[1] / "data" / "analysis" / "bundled"


@pytest.fixture(scope="module")
def bundled() -> Analysis:
    return load_run_outputs(BUNDLED)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_file_of_the_users_in_the_way_is_refused(bundled: Analysis, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("my own page")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="in the way"):
        write_run_outputs(tmp_path, bundled)
    assert _snapshot(tmp_path) == {"index.html": b"my own page", "notes.txt": b"mine"}


def test_only_its_own_files_are_replaced_or_removed(bundled: Analysis, tmp_path: Path) -> None:
    write_run_outputs(tmp_path, bundled)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "drivers" / "mine.html").write_text("my page")
    # a driver page of an earlier rendering that this one does not have
    ledger = tmp_path / OUTPUTS_FILE
    ledger.write_text(ledger.read_text().replace('"files": [', '"files": [\n"drivers/gone.html",'))
    (tmp_path / "drivers" / "gone.html").write_text("old page")
    write_run_outputs(tmp_path, bundled)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "drivers" / "mine.html").read_text() == "my page"
    assert not (tmp_path / "drivers" / "gone.html").exists()
    assert "gone.html" not in ledger.read_text()


def test_a_ledger_cannot_name_files_outside_the_outputs(bundled: Analysis, tmp_path: Path
                                                         ) -> None:
    write_run_outputs(tmp_path, bundled)
    victim = tmp_path / "manifest.json"
    victim.write_text("{}")
    ledger = tmp_path / OUTPUTS_FILE
    ledger.write_text(ledger.read_text().replace(
        '"files": [', '"files": [\n"manifest.json", "drivers/../manifest.json", "/etc/passwd",'))
    write_run_outputs(tmp_path, bundled)
    assert victim.read_text() == "{}"


def test_symbolic_links_are_not_followed(bundled: Analysis, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.html").write_text("not tracedep's")
    out = tmp_path / "out"
    out.mkdir()
    (out / "drivers").symlink_to(elsewhere)
    with pytest.raises(InputError, match="symbolic link"):
        write_run_outputs(out, bundled)
    assert _snapshot(elsewhere) == {"keep.html": b"not tracedep's"}
    (out / "drivers").unlink()
    (out / "report.txt").symlink_to(elsewhere / "keep.html")
    with pytest.raises(InputError, match="in the way"):
        write_run_outputs(out, bundled)
    assert (elsewhere / "keep.html").read_text() == "not tracedep's"


def test_a_failed_write_leaves_the_previous_set(bundled: Analysis, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_run_outputs(tmp_path, bundled, generated="first")
    before = _snapshot(tmp_path)
    real = serialize.atomic_write
    calls = []

    def full_disk(path: Path, text: str) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(serialize, "atomic_write", full_disk)
    with pytest.raises(OSError):
        write_run_outputs(tmp_path, bundled, generated="second")
    assert _snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tracedep-new")]


def test_an_out_that_is_a_file_is_refused(bundled: Analysis, tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_run_outputs(f, bundled)


def test_long_module_names_make_short_distinct_file_names(bundled: Analysis, tmp_path: Path
                                                          ) -> None:
    a, b = "m" * 300 + "a", "m" * 300 + "b"
    assert len(slug(a)) <= 100 and slug(a) != slug(b)
    assert slug("td_abba_bug") == "td_abba_bug"
    long_finding = replace(bundled.findings[0], driver=a)
    write_run_outputs(tmp_path, replace(bundled, findings=[long_finding, *bundled.findings[1:]]))
    assert max(len(p.name) for p in (tmp_path / "drivers").iterdir()) <= 106
