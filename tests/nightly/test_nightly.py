"""Nightly runs: configuration, classification, the history database and the site.

The guest tests boot twice (and start a third boot that is killed): night 1
runs a tiny driver with bug A; the driver then loses bug A and gains bug B, and
night 2 (two cells) is killed with SIGKILL once its first cell is recorded.
Classification, the pages, the kill and the clean-up are all checked on that.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tracedep.cli import main
from tracedep.errors import InputError
from tracedep.nightly.config import load_config
from tracedep.nightly.history import (
    SCHEMA_VERSION,
    CellKey,
    FindingRow,
    History,
    NightOfCell,
    Verdict,
    classify,
)
from tracedep.nightly.night import NightResult, exit_code
from tracedep.nightly.site import NightlySite
from tracedep.reports.serialize import load_run_outputs

DATA = Path(__file__).parents[1] / "data"
BUNDLED = DATA / "analysis" / "bundled"
BROKEN = DATA / "drivers" / "td_broken"

# --- configuration --------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_config_expands_the_matrix(tmp_path: Path) -> None:
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    _write(tmp_path / "w.sh", "echo hi\n")
    cfg = load_config(_write(tmp_path / "c.toml", """
        kernels = ["default", "6.1.0-56"]
        archs = ["x86_64", "arm64"]
        workloads = ["default", "w.sh"]
        repeat = 2
        run_args = ["--smp", "1"]
        [driver_sets]
        bundled = "bundled"
        mine = ["d1", "d2"]
        """))
    assert len(cfg.cells) == 2 * 2 * 2 * 2 and cfg.repeat == 2
    keys = {str(c.key) for c in cfg.cells}
    assert "6.1.0-56/arm64/mine/w" in keys and "default/x86_64/bundled/default" in keys
    cell = next(c for c in cfg.cells if str(c.key) == "6.1.0-56/arm64/mine/w")
    assert cell.args[cell.args.index("--abi") + 1] == "6.1.0-56"
    assert [cell.args[i + 1] for i, a in enumerate(cell.args) if a == "--module-src"] == [
        str(tmp_path / "d1"), str(tmp_path / "d2")]
    assert cell.args[cell.args.index("--workload") + 1] == str(tmp_path / "w.sh")
    assert cell.args[-2:] == ("--smp", "1")
    bundled = next(c for c in cfg.cells if c.key.driver_set == "bundled")
    assert "--module-src" not in bundled.args


@pytest.mark.parametrize("body, words", [
    ("[driver_sets]\nx = \"bundled\"\ncolour = 1\n", None),  # inside the table: a set
    ("colour = 1\n[driver_sets]\nx = \"bundled\"\n", ["'colour'", "unknown"]),
    ("archs = \"x86_64\"\n[driver_sets]\nx = \"bundled\"\n", ["'archs'", "list"]),
    ("archs = [\"mips\"]\n[driver_sets]\nx = \"bundled\"\n", ["'archs[0]'", "mips"]),
    ("repeat = 0\n[driver_sets]\nx = \"bundled\"\n", ["'repeat'"]),
    ("archs = [\"x86_64\"]\n", ["'driver_sets'", "required"]),
    ("[driver_sets]\nx = \"no/such/dir\"\n", ["'driver_sets.x'", "no such directory"]),
    ("kernels = [{name = \"k\"}]\n[driver_sets]\nx = \"bundled\"\n", ["'kernels[0]'"]),
    ("archs = [\n", ["not valid TOML"]),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           body: str, words: list[str] | None) -> None:
    cfg = _write(tmp_path / "c.toml", body)
    if words is None:  # `colour = 1` inside [driver_sets] is a driver set: wrong value
        words = ["'driver_sets.colour'"]
    rc = main(["nightly", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "out").exists()


def test_missing_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nightly", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "no such configuration file" in err and err.count("\n") == 1


# --- classification ---------------------------------------------------------------------


def _n(*sigs: str, ok: bool = True, partial: tuple[str, ...] = ()) -> NightOfCell:
    return NightOfCell(ok, frozenset(sigs), frozenset(partial))


def _f(*sigs: str) -> frozenset[str]:
    return frozenset(sigs)


def test_classify_new_still_fixed() -> None:
    assert classify([_f("a")], _f(), [], 7) == {"a": "new"}
    assert classify([_f("a", "b")], _f(), [_n("a")], 7) == {"a": "still present", "b": "new"}
    assert classify([_f("b")], _f(), [_n("a")], 7) == {"a": "fixed", "b": "new"}
    # the previous night is the previous *successful* night of the cell
    assert classify([_f()], _f(), [_n("a"), _n(ok=False)], 7) == {"a": "fixed"}


def test_failed_cell_fixes_nothing() -> None:
    assert classify([], _f(), [_n("a")], 7) == {}
    # what a crashed run did see is still classified
    assert classify([], _f("a", "c"), [_n("a")], 7) == {"a": "still present", "c": "new"}


def test_classify_flaky() -> None:
    # there, gone, back: flaky; and gone again: still flaky, not fixed
    assert classify([_f("a")], _f(), [_n("a"), _n()], 7) == {"a": "flaky"}
    assert classify([_f()], _f(), [_n("a"), _n(), _n("a")], 7) == {"a": "flaky"}
    # seen in only some of tonight's repeats
    assert classify([_f("a"), _f(), _f("a")], _f(), [_n("a")], 7) == {"a": "flaky"}
    assert classify([_f("a")], _f(), [_n("a", partial=("a",))], 7) == {"a": "flaky"}
    # new wins over flaky: a brand-new finding in 1 of 3 repeats is new
    assert classify([_f("a"), _f()], _f(), [], 7) == {"a": "new"}
    # once the window has moved past the flapping, a steady finding is steady again
    assert classify([_f("a")], _f(), [_n("a"), _n(), _n("a"), _n("a")], 3) == {
        "a": "still present"}


def test_fixed_bug_coming_back_after_the_window_is_new() -> None:
    assert classify([_f("a")], _f(), [_n("a"), _n(), _n(), _n()], 3) == {"a": "new"}


def test_exit_code_of_a_night() -> None:
    key = CellKey("k", "x86_64", "s", "default")
    v = Verdict("sig", "new", "sleep-in-atomic", "d", None, "m")
    assert exit_code(NightResult("n", 1, cells_ok=0, cells_failed=2)) == 3
    assert exit_code(NightResult("n", 1, [(key, v)], cells_ok=1)) == 1
    assert exit_code(NightResult("n", 1, [(key, Verdict(**{**v.__dict__, "cls": "fixed"}))],
                                 cells_ok=1)) == 0


# --- the database ---------------------------------------------------------------------------

KEY = CellKey("default", "x86_64", "mine", "default")


def _row(sig: str, driver: str = "td_x") -> FindingRow:
    return FindingRow(sig, "sleep-in-atomic", driver, f"fn_{sig}", f"message <{sig}>")


def _night(h: History, rows: list[FindingRow] | None, status: str = "ok") -> list[Verdict]:
    nid, _ = h.start_night("n", "cfg", "/nonexistent")
    rid = h.start_run(nid, KEY, 1, "/nonexistent/run")
    v = h.finish_run(rid, status, 1 if rows else 3, 1.0, None, rows or [], ["td_x"],
                     classify_cell=True, window=7)
    h.finish_night(nid)
    return v


def test_history_classifies_across_nights(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        assert h.schema_version() == SCHEMA_VERSION
        assert {v.signature: v.cls for v in _night(h, [_row("a")])} == {"a": "new"}
        assert _night(h, None, status="failed") == []  # a failed night fixes nothing
        got = _night(h, [_row("b")])
        assert {v.signature: v.cls for v in got} == {"a": "fixed", "b": "new"}
        fixed = next(v for v in got if v.cls == "fixed")
        assert fixed.message == "message <a>" and fixed.function == "fn_a"
        assert [n["name"] for n in h.nights()] == ["n-3", "n-2", "n"]
        assert h.integrity() == "ok"
    # opening again does not migrate again
    with History(tmp_path / "h.sqlite") as h:
        assert h.schema_version() == SCHEMA_VERSION and len(h.nights()) == 3


def test_a_damaged_database_is_refused_when_opened(tmp_path: Path) -> None:
    """A page-corrupt history opens fine in SQLite and fails only when a query reads the
    page: the check at open says so first, before any cell runs."""
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        for i in range(40):
            _night(h, [_row(f"sig{i}-" + "x" * 200)])
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 4
    data = bytearray(db.read_bytes())
    last = (pages - 1) * page  # a data page that opening the database does not read
    data[last + 8:last + 400] = b"\xa5" * 392
    db.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged database|malformed"):
        History(db)


@pytest.mark.parametrize("key", ["timeout", "cell_timeout"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0", "-5"])
def test_timeouts_are_finite_and_positive(tmp_path: Path, key: str, value: str) -> None:
    (tmp_path / "d").mkdir()
    cfg = _write(tmp_path / "c.toml", f"{key} = {value}\n[driver_sets]\nx = \"d\"\n")
    with pytest.raises(InputError, match=key):
        load_config(cfg)


def test_newer_schema_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    (tmp_path / "d").mkdir()
    cfg = _write(tmp_path / "c.toml", "[driver_sets]\nx = \"d\"\n")
    assert main(["nightly", str(cfg), "--db", str(db), "--out", str(tmp_path / "o")]) == 2
    assert "newer than this tracedep" in capsys.readouterr().err


WRITER = """
import sys
from tracedep.nightly.history import CellKey, FindingRow, History
from tracedep.reports.serialize import load_run_outputs
db, tag, nights = sys.argv[1], sys.argv[2], int(sys.argv[3])
findings = [FindingRow.of(f) for f in load_run_outputs(sys.argv[4]).findings]
for n in range(nights):
    with History(db) as h:  # a nightly opens the database once per night
        nid, _ = h.start_night(tag, "cfg", "/nonexistent")
        for c in range(3):
            key = CellKey("k", "x86_64", f"{tag}{c}", "default")
            rid = h.start_run(nid, key, 1, f"/nonexistent/{tag}/{n}/{c}")
            # drop a different finding each night so every class shows up
            rows = [f for i, f in enumerate(findings) if i % 5 != (n + c) % 5]
            h.finish_run(rid, "ok", 1, 0.1, None, rows, ["td_x"], True, 7)
        h.finish_night(nid)
"""


def test_two_writers_do_not_corrupt_the_database(tmp_path: Path) -> None:
    db, nights = tmp_path / "h.sqlite", 15
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), tag, str(nights),
                               str(BUNDLED)]) for tag in ("a", "b")]
    assert [p.wait(300) for p in procs] == [0, 0]
    nfind = len(load_run_outputs(BUNDLED).findings)
    with History(db) as h:
        assert h.integrity() == "ok"
        assert len(h.nights()) == 2 * nights
        runs = h.query("SELECT COUNT(*) AS n FROM runs WHERE status = 'ok'")[0]["n"]
        assert runs == 2 * nights * 3
        cells = h.query("SELECT COUNT(DISTINCT night_id || cell) AS n FROM verdicts")[0]["n"]
        assert cells == 2 * nights * 3
        classes = {r["class"] for r in h.query("SELECT DISTINCT class FROM verdicts")}
        assert {"new", "still present", "fixed", "flaky"} <= classes
        per_run = h.query("SELECT run_id, COUNT(*) AS n FROM findings GROUP BY run_id")
        assert all(nfind - (nfind + 4) // 5 <= r["n"] <= nfind for r in per_run)
        assert h.query("PRAGMA journal_mode")[0][0] == "wal"


def test_site_escapes_everything(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with History(tmp_path / "h.sqlite") as h:
        nid, _ = h.start_night("n", "<cfg>", str(out))
        rid = h.start_run(nid, KEY, 1, str(out / "n" / "run"))
        bad = FindingRow("sleep-in-atomic:0000", "sleep-in-atomic", "<script>x</script>",
                         "<img src=x onerror=alert(1)>", "a & <b>")
        h.finish_run(rid, "ok", 1, 1.0, None, [bad], ["<script>x</script>"], True, 7)
        h.finish_night(nid)
        written = NightlySite(h, out).render()
    text = "".join(p.read_text() for p in written)
    assert "<script>x" not in text and "<img src" not in text and "a & <b>" not in text
    assert "&lt;script&gt;x&lt;/script&gt;" in text and "a &amp; &lt;b&gt;" in text
    assert any(p.parent.name == "drivers" for p in written)


# --- real nights ------------------------------------------------------------------------------

DRIVER = """\
// SPDX-License-Identifier: GPL-2.0
/* tracedep test driver for nightly history: bug A and bug B switch on and off. */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

static DEFINE_SPINLOCK(td_nt_lock);
static void *td_nt_a, *td_nt_b;

static noinline void td_nt_fill_a(void)
{
	spin_lock(&td_nt_lock);
	td_nt_a = kmalloc(64, GFP_A);
	spin_unlock(&td_nt_lock);
}

static noinline void td_nt_fill_b(void)
{
	spin_lock(&td_nt_lock);
	td_nt_b = kmalloc(64, GFP_B);
	spin_unlock(&td_nt_lock);
}

static void td_nt_work_fn(struct work_struct *work)
{
	td_nt_fill_a();
	td_nt_fill_b();
}
static DECLARE_WORK(td_nt_work, td_nt_work_fn);

static int __init td_nt_init(void)
{
	schedule_work(&td_nt_work);
	flush_work(&td_nt_work);
	return 0;
}

static void __exit td_nt_exit(void)
{
	kfree(td_nt_a);
	kfree(td_nt_b);
}

module_init(td_nt_init);
module_exit(td_nt_exit);
MODULE_LICENSE("GPL");
"""


def _driver(d: Path, bug_a: bool, bug_b: bool) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "Kbuild").write_text("obj-m := td_nightly.o\n")
    src = DRIVER.replace("GFP_A", "GFP_KERNEL" if bug_a else "GFP_ATOMIC")
    (d / "td_nightly.c").write_text(src.replace("GFP_B", "GFP_KERNEL" if bug_b else "GFP_ATOMIC"))


def _nightly(cfg: Path, out: Path, **kw: Any) -> subprocess.Popen[str]:
    # the subprocess engine: these nights are killed, and their cells must stop with them
    return subprocess.Popen([sys.executable, "-m", "tracedep.cli", "nightly", str(cfg),
                             "--out", str(out), "--engine", "local"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _pids_mentioning(needle: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if needle.encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Night 1: bug A.  Then bug A out, bug B in; night 2 (2 cells) killed after cell 1."""
    root = tmp_path_factory.mktemp("nightly")
    drv, out = root / "drivers" / "td_nightly", root / "out"
    _driver(drv, bug_a=True, bug_b=False)
    cfg = _write(root / "nightly.toml", """
        run_args = ["--smp", "1"]
        [driver_sets]
        mine = "drivers/td_nightly"
        """)
    t0 = time.monotonic()
    p1 = _nightly(cfg, out)
    out1, _ = p1.communicate(timeout=900)
    res: dict[str, Any] = {"root": root, "out": out, "rc1": p1.returncode, "out1": out1,
                           "t1": time.monotonic() - t0}
    _driver(drv, bug_a=False, bug_b=True)
    cfg2 = _write(root / "nightly2.toml", """
        run_args = ["--smp", "1"]
        [driver_sets]
        mine = "drivers/td_nightly"
        again = "drivers/td_nightly"
        """)
    p2 = _nightly(cfg2, out)
    assert p2.stdout is not None
    lines = []
    deadline = time.monotonic() + 900
    for line in p2.stdout:  # the first cell is recorded once the second one starts
        lines.append(line)
        if "[2/2] start" in line or time.monotonic() > deadline:
            break
    night2 = sorted(d for d in out.iterdir() if d.is_dir() and d.name != "drivers")[-1]
    res["cell2"] = night2 / "default--x86_64--again--default"
    # kill the nightly while the second cell's guest is up, the worst moment
    boot_by = time.monotonic() + 180
    while not (res["cell2"] / "console.log").exists() and time.monotonic() < boot_by:
        time.sleep(0.2)
    res["guest_was_up"] = bool(_pids_mentioning(str(res["cell2"] / "initramfs")))
    os.kill(p2.pid, signal.SIGKILL)
    p2.wait(60)
    p2.stdout.close()
    res["out2"] = "".join(lines)
    # the killed night's cell was told to stop (SIGINT on its parent's death) and its
    # guest shut down: nothing of it may be left running
    stop_by = time.monotonic() + 90
    while _pids_mentioning(str(res["cell2"])) and time.monotonic() < stop_by:
        time.sleep(1)
    res["leftover"] = _pids_mentioning(str(res["cell2"]))
    for pid in res["leftover"]:
        os.kill(pid, signal.SIGKILL)
    return res


@pytest.mark.guest
def test_first_night_reports_new(two_nights: dict[str, Any]) -> None:
    assert two_nights["rc1"] == 1, two_nights["out1"]  # new findings: exit 1
    out1 = two_nights["out1"]
    assert "[1/1] start default/x86_64/mine/default" in out1
    assert "[1/1] done  default/x86_64/mine/default: 1 findings (1 new)" in out1
    assert "NEW  default/x86_64/mine/default  td_nightly:" in out1 and "td_nt_fill_a" in out1


@pytest.mark.guest
def test_second_night_new_and_fixed(two_nights: dict[str, Any]) -> None:
    out: Path = two_nights["out"]
    with History(out / "history.sqlite") as h:
        n2, n1 = h.nights()
        v1 = h.verdicts_of_night(n1["id"])
        assert [(v["class"], v["function"]) for v in v1] == [("new", "td_nt_fill_a")]
        v2 = {(v["class"], v["function"]) for v in h.verdicts_of_night(n2["id"])}
        assert v2 == {("new", "td_nt_fill_b"), ("fixed", "td_nt_fill_a")}
    page = (out / n2["name"] / "index.html").read_text()
    rows = page.split("<h2>Findings</h2>")[1]
    assert "c-new\">new</span>" in rows and "c-fixed\">fixed</span>" in rows
    new_row = next(r for r in rows.split("<tr>") if "c-new" in r)
    fixed_row = next(r for r in rows.split("<tr>") if "c-fixed" in r)
    assert "td_nt_fill_b" in new_row and "td_nt_fill_a" in fixed_row
    driver = (out / "drivers" / "td_nightly.html").read_text()
    assert "<svg" in driver and "td_nt_fill_a" in driver and "td_nt_fill_b" in driver
    assert driver.count("<circle") == 2  # one point per night
    assert f"../{n1['name']}/default--x86_64--mine--default/index.html" in driver
    index = (out / "index.html").read_text()
    assert n1["name"] in index and n2["name"] in index and "drivers/td_nightly.html" in index


@pytest.mark.guest
def test_killed_night_keeps_finished_cell(two_nights: dict[str, Any]) -> None:
    out: Path = two_nights["out"]
    assert "[1/2] done  default/x86_64/mine/default" in two_nights["out2"]
    assert two_nights["guest_was_up"], "the night was not killed while a guest ran"
    assert two_nights["leftover"] == [], "the killed night's cell kept running"
    db = out / "history.sqlite"
    with sqlite3.connect(db) as c:  # what any reader sees right after the kill
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    with History(db) as h:
        n2 = h.nights()[0]
        runs = {r["cell"]: r for r in h.runs_of_night(n2["id"])}
        assert runs["default/x86_64/mine/default"]["status"] == "ok"
        assert runs["default/x86_64/mine/default"]["nfindings"] == 1
        assert runs.get("default/x86_64/again/default", {"status": "running"})["status"] \
            == "running"
        h.mark_interrupted()  # the next nightly does this when it starts
        n2 = h.nights()[0]
        assert n2["status"] == "interrupted" and n2["finished"] is not None
        assert {r["status"] for r in h.runs_of_night(n2["id"])} <= {"ok", "interrupted"}
        NightlySite(h, out).render()
    page = (out / n2["name"] / "index.html").read_text()
    assert "did not finish" in page and "c-fixed" in page


@pytest.mark.guest
def test_junit_per_run(two_nights: dict[str, Any]) -> None:
    out: Path = two_nights["out"]
    night1 = sorted(d for d in out.iterdir() if d.is_dir() and d.name != "drivers")[0]
    suite = ET.parse(night1 / "default--x86_64--mine--default" / "junit.xml").getroot()[0]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["td_nightly"]
    failures = cases[0].findall("failure")
    assert len(failures) == 1 and failures[0].get("type") == "sleep-in-atomic"
    assert "td_nt_fill_a" in (failures[0].text or "")
    assert ET.parse(night1 / "junit.xml").getroot().get("failures") == "1"


def test_every_cell_failing_is_exit_3(tmp_path: Path) -> None:
    """Drivers that do not build: every cell fails (no guest boots), the night exits 3.

    Two cells, two attempts each, two at a time: the --jobs and repeat paths.
    """
    cfg = _write(tmp_path / "c.toml", f"""
        repeat = 2
        [driver_sets]
        broken = "{BROKEN}"
        broken2 = "{BROKEN}"
        """)
    p = subprocess.Popen([sys.executable, "-m", "tracedep.cli", "nightly", str(cfg), "--out",
                          str(tmp_path / "out"), "--jobs", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    text, _ = p.communicate(timeout=600)
    assert p.returncode == 3, text
    for n in (1, 2, 3, 4):
        assert f"[{n}/4] start" in text
    assert "FAILED  default/x86_64/broken/default #2" in text and "does not build" in text
    with History(tmp_path / "out" / "history.sqlite") as h:
        (night,) = h.nights()
        assert night["status"] == "complete" and night["cells"] == 2
        runs = h.runs_of_night(night["id"])
        assert [(r["cell"], r["attempt"], r["status"], r["exit_code"]) for r in runs] == [
            (f"default/x86_64/{s}/default", a, "error", 2) for s in ("broken", "broken2")
            for a in (1, 2)]
        assert Path(runs[0]["run_dir"]).name == "default--x86_64--broken--default-r1"
    suites = ET.parse(Path(runs[0]["run_dir"]).parent / "junit.xml").getroot()
    assert suites.get("errors") == "4" and len(suites) == 4
