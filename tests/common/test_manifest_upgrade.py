"""The run manifest as a typed record: old run directories read through ``upgrade``.

Most manifests under tests/data were written by real runs of manifest version 1.0
(before the record was typed); they must read as they did, with the one fact 1.x
stored under two names now named once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tracedep.common import run_manifest as manifest
from tracedep.common.run_manifest import MANIFEST_VERSION, RunManifest, upgrade
from tracedep.errors import InputError

DATA = Path(__file__).parents[1] / "data" / "traces"
TINY = DATA / "tiny"
OLD = sorted({p.parent for p in DATA.rglob("manifest.json")})


def test_recorded_manifests_are_the_old_version() -> None:
    """Else the upgrade below is tested on nothing.  Fixtures recorded since (the wait
    drivers') are of the current version, and read and round-trip the same way."""
    versions = [json.loads((d / "manifest.json").read_text()).get("manifest_version")
                for d in OLD]
    assert OLD and versions.count("1.0") >= len(versions) // 2, versions
    assert set(versions) <= {"1.0", MANIFEST_VERSION}, versions


@pytest.mark.parametrize("run_dir", OLD, ids=lambda p: str(p.relative_to(DATA)))
def test_every_recorded_manifest_reads_and_round_trips(run_dir: Path) -> None:
    raw = json.loads((run_dir / "manifest.json").read_text())
    m = manifest.read(run_dir)
    assert m.arch == raw.get("arch", "x86_64")
    assert [x.name for x in m.modules] == [x["name"] for x in raw.get("modules", [])]
    again = RunManifest.from_json(json.loads(json.dumps(m.to_json(), default=str)))
    assert again == m
    # nothing of the old file is lost: what this version does not know is kept
    for k in raw:
        assert k in m.to_json() or k in ("kprobe_reports_irqs_off",
                                         "machine_kprobe_reports_irqs_off"), k


def test_the_twice_stored_fact_is_named_once() -> None:
    # after calibration, 1.x kept the machine's fact apart and overwrote the other
    calibrated = upgrade({"manifest_version": "1.0", "machine_kprobe_reports_irqs_off": True,
                          "kprobe_reports_irqs_off": False})
    assert calibrated["machine_kprobe_irqs_masked"] is True
    assert calibrated["kprobe_irqs_unknown"] is False
    # without calibration, the one key still meant the machine's fact
    plain = upgrade({"manifest_version": "1.0", "kprobe_reports_irqs_off": True})
    assert plain["machine_kprobe_irqs_masked"] is True and plain["kprobe_irqs_unknown"] is True
    for d in (calibrated, plain):
        assert d["manifest_version"] == MANIFEST_VERSION
        assert "kprobe_reports_irqs_off" not in d and "machine_kprobe_reports_irqs_off" not in d
    current = {"manifest_version": MANIFEST_VERSION, "kprobe_irqs_unknown": True}
    assert upgrade(current) == current


def test_write_then_read_is_the_same_record(tmp_path: Path) -> None:
    shutil.copy(TINY / "manifest.json", tmp_path / "manifest.json")
    m = manifest.read(tmp_path)
    m.lost.total = 7
    m.extra["from_a_newer_minor"] = {"kept": True}
    manifest.write(tmp_path, m)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["manifest_version"] == MANIFEST_VERSION
    assert on_disk["from_a_newer_minor"] == {"kept": True}
    assert manifest.read(tmp_path) == m


@pytest.mark.parametrize("version", ["0.9", "3.0", None])
def test_an_unknown_major_version_is_refused(tmp_path: Path, version: str | None) -> None:
    d = json.loads((TINY / "manifest.json").read_text())
    d["manifest_version"] = version
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="not supported"):
        manifest.read(tmp_path)
