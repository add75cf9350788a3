"""Reports: golden files from a real run, escaping, and the JSON round trip.

Golden files live in tests/data/golden/ and are rendered from the analysis of
a real run of the bundled example drivers (tests/data/analysis/bundled/).
Regenerate them after an intended change with::

    TRACEDEP_RENDER=1 .venv/bin/python -m pytest -q tests/reports/test_reports.py

then read the diff before committing it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tracedep.analysis.findings import (
    Analysis,
    ClassStats,
    Edge,
    Finding,
    Frame,
    Site,
    SiteContext,
    WitnessKind,
)
from tracedep.analysis.health import Ending, Health
from tracedep.analysis.run_summary import ModuleSummary, RunSummary
from tracedep.common.run_records import KernelRecord as Kernel
from tracedep.common.run_records import TimingRecord as Timing
from tracedep.errors import InputError
from tracedep.reports import html, model, svg, text
from tracedep.reports.serialize import (
    analysis_from_json,
    analysis_to_json,
    load_run_outputs,
    write_run_outputs,
)

DATA = Path(__file__).parents[1] / "data"
BUNDLED = DATA / "analysis" / "bundled"
GOLDEN = DATA / "golden"
RENDER = os.environ.get("TRACEDEP_RENDER") == "1"
# The driver page kept as a golden file: the AB/BA example has a cycle to draw.
GOLDEN_DRIVER = "td_abba_bug"


def normalise(s: str, tmp: Path | None = None) -> str:
    """Blank out what changes from one rendering to the next."""
    if tmp is not None:
        s = s.replace(str(tmp), "<TMP>")
    s = re.sub(r"generated\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "generated <DATE>", s)
    # driver sources as the checkout that made the run had them
    s = re.sub(r"/[^\s\"'<>:\[\]]*?/vm/drivers/", "<SRC>/vm/drivers/", s)
    return re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+", "<TMP>", s)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if RENDER:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"{path} missing: run with TRACEDEP_RENDER=1 to create it")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), f"golden/{name}", "rendered"))[:80])
        pytest.fail(f"{name} differs from its golden file (TRACEDEP_RENDER=1 to accept):\n{diff}")


# ---------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def bundled() -> Analysis:
    if not (BUNDLED / "analysis.json").exists() or not (BUNDLED / "findings.json").exists():
        pytest.skip(f"no real-run analysis in {BUNDLED} (analysis.json + findings.json)")
    return load_run_outputs(BUNDLED)


@pytest.fixture(scope="module")
def rendered(bundled: Analysis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    write_run_outputs(out, bundled)
    return out


def golden_driver(a: Analysis) -> str:
    drivers = model.drivers(a)
    if GOLDEN_DRIVER in drivers:
        return GOLDEN_DRIVER
    cyc = sorted(f.driver for f in a.findings if f.kind == "lock-order-inversion")
    return cyc[0] if cyc else drivers[0]


def test_golden_report_txt(rendered: Path) -> None:
    check_golden("report.txt", normalise((rendered / "report.txt").read_text(), rendered))


def test_golden_index_html(rendered: Path) -> None:
    check_golden("index.html", normalise((rendered / "index.html").read_text(), rendered))


def test_golden_driver_html(bundled: Analysis, rendered: Path) -> None:
    d = golden_driver(bundled)
    page = model.page_names(model.drivers(bundled))[d]
    check_golden(f"driver-{page}", normalise((rendered / "drivers" / page).read_text(), rendered))


def test_bundled_every_finding_reported(bundled: Analysis, rendered: Path) -> None:
    report = (rendered / "report.txt").read_text()
    index = (rendered / "index.html").read_text()
    pages = model.page_names(model.drivers(bundled))
    for f in bundled.findings:
        assert f.signature in report
        assert f.signature in index
        assert f.signature in (rendered / "drivers" / pages[f.driver]).read_text()
    assert report.count("tracedep finding ") == len(bundled.findings)


def test_bundled_round_trip(bundled: Analysis) -> None:
    assert analysis_from_json(json.loads(json.dumps(analysis_to_json(bundled)))) == bundled
    on_disk = json.loads((BUNDLED / "findings.json").read_text())
    assert json.loads(json.dumps([f.to_json() for f in bundled.findings])) == on_disk


# ---------------------------------------------------------------------------- sample

M = "td_sample"
SRC = "drivers/td/td_sample.c"


def frame(fn: str, off: int = 0, size: int = 0, mod: str = M, line: int | None = None,
          inlined: bool = False, file: str | None = SRC) -> Frame:
    return Frame(fn, off, size, mod, file, line, inlined, 0xFFFFFFFFC0000000 + off)


def stack(*top: Frame) -> tuple[Frame, ...]:
    return (*top, frame("process_one_work", 0x1c7, 0x380, "vmlinux", 2289,
                        file="kernel/workqueue.c"))


def site(kind: WitnessKind, role: str, lock: str | None, ts: int, *top: Frame,
         comm: str = "kworker/0:1", ctx: SiteContext | None = None) -> Site:
    return Site(role, stack(*top), lock, ts, 42, comm, ctx or SiteContext(), kind)


ACQUIRE, HELD = WitnessKind.ACQUIRE, WitnessKind.HELD


def sample(name: str = "td_a_lock", comm: str = "kworker/0:1", fn: str = "td_submit",
           driver: str = M, message: str = "") -> Analysis:
    """A small analysis with one finding of each main kind (hand-made: unit tests only)."""
    a_, b_ = name, "td_b_lock"
    spin = frame("_raw_spin_lock", 0, 0x30, "vmlinux", 153, file="kernel/locking/spinlock.c")
    ab = site(ACQUIRE, "acquire", b_, 1100, spin, frame(fn, 0x20, 0x80, driver, 40),
              comm=comm, ctx=SiteContext(1))
    ab_h = site(HELD, "held", a_, 1000, spin, frame(fn, 0x10, 0x80, driver, 38), comm=comm)
    ba = site(ACQUIRE, "acquire", a_, 2100, spin,
              frame("td_complete", 0x24, 0x90, driver, 70), ctx=SiteContext(1))
    ba_h = site(HELD, "held", b_, 2000, spin, frame("td_complete", 0x14, 0x90, driver, 68))
    sleep = site(WitnessKind.SLEEP, "sleep", None, 3100,
                 frame("mutex_lock", 0, 0x40, "vmlinux", 281, file="kernel/locking/mutex.c"),
                 frame("td_inner", 0, 0, driver, 55, inlined=True),
                 frame(fn, 0x2a, 0x90, driver, 71), comm=comm, ctx=SiteContext(1))
    held = site(HELD, "held", a_, 3000, spin, frame(fn, 0x1d, 0x90, driver, 54), comm=comm)
    irq = site(WitnessKind.IN_HARDIRQ, "irq-context", b_, 4000, spin,
               frame("td_irq", 0x1a, 0x60, driver, 48), comm="swapper/0",
               ctx=SiteContext(1, irqs_off=True, in_hardirq=True))
    on = site(WitnessKind.HARDIRQS_ON, "irqs-on", b_, 4100, spin,
              frame("td_read", 0x17, 0x50, driver, 60))

    def stats(lock: str, ctxs: list[str]) -> ClassStats:
        return ClassStats(lock, "spinlock", driver, 10,
                          {"mean": 350.0, "p50": 300.0, "p99": 900.0, "max": 2100.0},
                          {"<1us": 8, "1-2us": 1, "2-4us": 1}, {}, {}, ctxs)

    findings = [
        Finding("lock-order-inversion", driver, [a_, b_], [ab, ab_h, ba, ba_h],
                message or f"{a_} -> {b_} and {b_} -> {a_}", 2100, 3, (a_, b_, fn)),
        Finding("sleep-in-atomic", driver, [a_], [sleep, held],
                message or f"mutex_lock() with {a_} held", 3100, 2, (a_, "mutex_lock", fn),
                {"api": "mutex_lock()"}),
        Finding("irq-lock-inversion", driver, [b_], [irq, on],
                message or f"{b_} in hardirq and with irqs on", 4100, 1, (b_, "hardirq")),
    ]
    edges = [Edge(a_, b_, 3, [driver], ab, ab_h), Edge(b_, a_, 4, [driver], ba, ba_h),
             Edge(b_, "td_c_lock", 1, [driver], ab, None, trylock=True)]
    return Analysis(findings, [stats(a_, ["process"]), stats(b_, ["process", "hardirq"])],
                    edges,
                    health=Health(events=1234, ending=Ending("poweroff")),
                    run=RunSummary(arch="x86_64", kernel=Kernel(release="6.1.0-56-cloud-amd64"),
                                   timing=Timing(wall_s=5.5),
                                   modules=[ModuleSummary(driver), ModuleSummary("td_clean")]))


def test_round_trip_exact(tmp_path: Path) -> None:
    a = sample()
    assert analysis_from_json(json.loads(json.dumps(analysis_to_json(a)))) == a
    write_run_outputs(tmp_path, a)
    assert load_run_outputs(tmp_path) == a
    on_disk = json.loads((tmp_path / "findings.json").read_text())
    assert on_disk == json.loads(json.dumps([f.to_json() for f in a.findings]))
    assert "findings" not in json.loads((tmp_path / "analysis.json").read_text())
    # histogram buckets are ordered by insertion: the file must keep that order
    assert list(load_run_outputs(tmp_path).classes[0].hold_hist) == ["<1us", "1-2us", "2-4us"]


def test_histogram_axis_in_bucket_order() -> None:
    svg_text = svg.histogram({"8us-16us": 1, "1.024ms-2.048ms": 5, "<1us": 3, "2us-4us": 2},
                             "hold")
    titles = re.findall(r"<title>([^<:]+):", svg_text)
    assert titles == ["&lt;1us", "2us-4us", "8us-16us", "1.024ms-2.048ms"]


def test_outputs_written_whole(tmp_path: Path) -> None:
    """The set of outputs and its ledger; a page tracedep did not write is not its to
    delete (tests/reports/test_output_folder.py has the rest of that contract)."""
    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "not_ours.html").write_text("the user's")
    write_run_outputs(tmp_path, sample())
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert names == ["analysis.json", "drivers", "drivers/not_ours.html",
                     "drivers/td_clean.html", "drivers/td_sample.html", "findings.json",
                     "index.html", "outputs.json", "report.txt"]
    assert json.loads((tmp_path / "outputs.json").read_text())["files"] == [
        "analysis.json", "drivers/td_clean.html", "drivers/td_sample.html", "findings.json",
        "index.html", "report.txt"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="findings.json"):
        load_run_outputs(tmp_path)
    (tmp_path / "findings.json").write_text("[]")
    (tmp_path / "analysis.json").write_text('{"analysis_version": "9.0"}')
    with pytest.raises(InputError, match="version"):
        load_run_outputs(tmp_path)


def test_text_lockdep_shapes() -> None:
    report = text.render_text(sample())
    assert "BUG: sleeping function called from invalid context at kernel/locking/mutex.c:281" \
        in report
    assert "in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 42, name: kworker/0:1" in report
    assert " #0: (td_a_lock){+.+.}, at: td_submit+0x1d/0x90 [td_sample] " \
           "drivers/td/td_sample.c:54" in report
    assert " td_inner drivers/td/td_sample.c:55 [inline]\n" \
           " td_submit+0x2a/0x90 [td_sample] drivers/td/td_sample.c:71\n" in report
    assert "WARNING: possible circular locking dependency detected" in report
    # b -> a was seen last: lockdep would fire there, holding b, acquiring a.
    chain = report.index("-> #1 (td_b_lock)")
    assert chain < report.index("-> #0 (td_a_lock)")
    table = ("       CPU0                    CPU1\n"
             "       ----                    ----\n"
             "  lock(td_b_lock);\n"
             "                               lock(td_a_lock);\n"
             "                               lock(td_b_lock);\n"
             "  lock(td_a_lock);\n")
    assert table in report
    assert "inconsistent {IN-HARDIRQ-W} -> {HARDIRQ-ON-W} usage." in report
    assert report.count("tracedep finding ") == 3


def test_trace_problems_said_first() -> None:
    a = sample()
    a.health = Health(events=10, lost=1234, ending=Ending("panic", "Kernel panic - not syncing"))
    report = text.render_text(a)
    head = report[: report.index("Findings per driver")]
    assert "TRACE INCOMPLETE" in head
    assert "1,234 events LOST: findings may be missing" in head
    assert "guest did not end cleanly: panic: Kernel panic - not syncing" in head
    index = html.render_index(a)
    assert 'class="banner bad"' in index and "1,234 events LOST" in index


def test_degenerate_findings_render() -> None:
    """Findings with missing witnesses still render, whatever their kind."""
    kinds = ["sleep-in-atomic", "lock-order-inversion", "irq-lock-inversion",
             "recursive-locking", "same-class-nesting", "some-new-kind"]
    bare = [Site("?", (), None)]  # no kind, no context
    findings = [Finding(k, M, locks, sites, "m", 0)
                for k in kinds for locks in ([], ["x"], ["x", "y"], ["x", "y", "z"])
                for sites in ([], bare)]
    a = Analysis(findings, [], [], Health(), RunSummary())
    report = text.render_text(a)
    assert report.count("tracedep finding ") == len(findings)
    assert "unknown kernel" in report
    pages = html.render_site(a)
    assert set(pages) == {"index.html", f"drivers/{M}.html"}


# ---------------------------------------------------------------------------- escaping

EVIL = "<script>alert(1)</script>"
ATTR = '" onload="x'


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def test_guest_strings_escaped(tmp_path: Path) -> None:
    a = sample(name=f"lock{EVIL}{ATTR}", comm=f"{EVIL}{ATTR}", fn=f"fn{EVIL}{ATTR}",
               driver=f"../{EVIL}{ATTR}", message=f"msg {EVIL}{ATTR}")
    a.classes[0].contexts.append(EVIL)
    a.classes[0].hold_hist[EVIL] = 3
    a.health.warnings = [f"warn {EVIL}{ATTR}"]
    a.run.kernel = Kernel(release=f"6.1{EVIL}{ATTR}")
    write_run_outputs(tmp_path, a)
    pages = [tmp_path / "index.html", *sorted((tmp_path / "drivers").glob("*.html"))]
    # The driver's name never chooses where its page goes.
    assert all(p.resolve().parent in (tmp_path.resolve(), (tmp_path / "drivers").resolve())
               for p in tmp_path.rglob("*"))
    assert len(pages) == 3
    for page in pages:
        doc = page.read_text()
        assert "<script" not in doc.lower()
        assert 'onload="x' not in doc
        audit = _Audit()
        audit.feed(doc)
        assert "script" not in audit.tags
        assert not [k for k, _ in audit.attrs if k.startswith("on")]
        # The hostile strings are still there, shown as text.
        assert any(EVIL in d for d in audit.data), page.name
    driver_page = next(p for p in pages if p.parent.name == "drivers" and "td_clean" not in p.name)
    doc = driver_page.read_text()
    esc = "&lt;script&gt;alert(1)&lt;/script&gt;&quot; onload=&quot;x"
    assert re.search(r'<text [^>]*class="nl"[^>]*>lock' + re.escape(esc), doc), "svg node label"
    # edge labels are cut at 32 characters, escaping must survive the cut
    assert re.search(r'<text [^>]*class="el"[^>]*>fn&lt;script&gt;alert\(1\)&lt;/script&gt;&quot;',
                     doc), "svg edge label"
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt;: 3</title>" in doc  # histogram bucket
    assert EVIL in (tmp_path / "report.txt").read_text()  # plain text keeps it verbatim
