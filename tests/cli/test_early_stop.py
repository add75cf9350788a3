"""A run stopped before its workload ends (tracer.early_stop), for real: ``tracedep run``
of a workload that never ends, then SIGINT (a terminal's Ctrl-C) or SIGTERM (a CI
job's time limit) to the tracedep process, as a user or a CI runner sends it.

One signal: the guest ends its workload and the run ends as any run does (tracing
off, the ring buffers sent whole, power-off), then analyses and reports the trace so
far; the report says the workload was stopped.  A second signal: the guest is
stopped at once, and the partial trace is reported as a hang's is (exit 3).  And
``kill -9``: QEMU dies with tracedep, and ``tracedep analyze`` completes the run's
manifest from what reached the disk.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TEST_DRIVERS, run_tracedep

pytestmark = pytest.mark.guest

TINY = TEST_DRIVERS / "td_tiny"
# the module's lock events first, then a workload that would run until the timeout
ENDLESS = ("td_insmod /lib/modules/tracedep/td_tiny.ko\n"
           "while :; do ls /sys/class > /dev/null; sleep 0.2; done\n")


def _start(tmp_path: Path, workload: str = ENDLESS) -> tuple[subprocess.Popen[str], Path]:
    wl = tmp_path / "endless.sh"
    wl.write_text(workload)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracedep.cli", "run", "--module-src", str(TINY),
         "--workload", str(wl), "--timeout", "600", "--progress", "2", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


def _wait_for_workload(proc: subprocess.Popen[str], out: Path, live: bool = False) -> None:
    """Until the guest has started the workload and its trace is reaching the host
    (``live``: and an analysis made while it runs has written its result)."""
    end = time.monotonic() + 600
    ctl, raw = out / "control.log", out / "trace" / "cpu0.raw"
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if (ctl.is_file() and "@@TD start" in ctl.read_text(errors="replace")
                and raw.is_file() and raw.stat().st_size > 0
                and (not live or (out / "live" / "live.json").is_file())):
            time.sleep(3)  # some seconds of the workload
            return
        time.sleep(0.5)
    proc.kill()
    pytest.fail("the guest never started its workload")


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_ends_the_workload_and_the_trace_so_far_is_reported(
        tmp_path: Path, sig: signal.Signals) -> None:
    proc, out = _start(tmp_path)
    _wait_for_workload(proc, out, live=True)
    t0 = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=600)
    why = f"exit {proc.returncode}\n--- stderr\n{stderr[-6000:]}"
    assert proc.returncode == 0, why  # td_tiny is clean: a complete run, no finding
    assert "Traceback" not in stderr and "tracedep: error" not in stderr, why
    assert f"tracedep: {sig.name}: asking the guest to end its workload" in stderr, why
    assert time.monotonic() - t0 < 300, why  # ended on the signal, not at the timeout
    m = _manifest(out)
    assert m["ending"]["how"] == "poweroff", m["ending"]
    assert m["state"] == "complete" and m["trace_complete"] is True
    assert m["lost"]["truncated"] is False and m["lost"]["total"] == 0, m["lost"]
    wl = m["workload"]
    assert wl["stopped_by"] == sig.name and wl["rc"] != 0, wl
    assert wl["end_uptime_s"] > wl["start_uptime_s"], wl
    (mod,) = m["modules"]
    assert mod["name"] == "td_tiny" and mod["loaded"], mod
    assert "@@TD done trace" in (out / "control.log").read_text(errors="replace")
    # the report says so; the trace so far is analysed, the module's locks in it
    note = f"the workload was stopped before its end ({sig.name}, "
    report = (out / "report.txt").read_text()
    assert note in report, report
    health = json.loads((out / "analysis.json").read_text())["health"]
    assert any(w.startswith(note) for w in health["warnings"]), health["warnings"]
    assert health["events"] > 0 and not health["truncated"]
    assert "td_tiny_lock" in report or "td_tiny_lock" in (out / "analysis.json").read_text()
    # while the guest ran, the trace so far was analysed (tracer.live): td_tiny is clean
    live = json.loads((out / "live" / "live.json").read_text())
    assert live["findings"] == 0 and 0 < live["until_ns"], live
    assert " findings=0 findings_uptime_s=" in stderr, why


def test_a_second_signal_stops_the_guest_at_once(tmp_path: Path) -> None:
    # a workload deaf to SIGTERM: the guest takes two seconds to KILL it
    proc, out = _start(tmp_path, "trap '' TERM\n" + ENDLESS)
    _wait_for_workload(proc, out)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    why = f"exit {proc.returncode}\n--- stderr\n{stderr[-6000:]}"
    assert proc.returncode == 3, why  # the run did not end as a run ends
    assert "Traceback" not in stderr, why
    errors = [ln for ln in stderr.splitlines() if ln.startswith("tracedep: error:")]
    assert len(errors) == 1 and "guest interrupted" in errors[0], why
    assert "second signal (SIGTERM)" in errors[0], why
    m = _manifest(out)
    assert m["ending"]["how"] == "interrupted" and m["trace_complete"] is False, m["ending"]
    assert m["lost"]["truncated"] is True
    # what reached the host is kept, analysed and reported as incomplete
    report = (out / "report.txt").read_text()
    assert "interrupted" in report, report
    assert json.loads((out / "analysis.json").read_text())["health"]["events"] > 0


def test_a_run_whose_tracedep_was_killed_is_recovered_by_analyze(tmp_path: Path) -> None:
    """``kill -9`` of tracedep while the guest runs: QEMU goes with it, and ``tracedep
    analyze`` completes the manifest from what reached the disk (tracer.run_record)."""
    proc, out = _start(tmp_path)
    _wait_for_workload(proc, out)
    qemu = _qemu_of(out)
    assert qemu, "no QEMU of this run found"
    proc.kill()
    proc.communicate(timeout=60)
    end = time.monotonic() + 30
    while time.monotonic() < end and _alive(qemu):
        time.sleep(0.5)
    assert not _alive(qemu), "QEMU outlived the tracedep that ran it"
    assert _manifest(out)["state"] == "running"
    res = run_tracedep("analyze", out, "--no-dwarf")
    assert res.rc == 0, res.explain()
    assert "the tracedep that ran it died while the guest ran" in res.stderr, res.explain()
    m = _manifest(out)
    assert m["state"] == "incomplete" and m["ending"]["how"] == "host-died", m["ending"]
    assert m["lost"]["truncated"] is True and m["trace_complete"] is False
    (mod,) = m["modules"]
    assert mod["loaded"] and mod["loads"], mod  # from the guest's words, as a run's end
    assert (out / "kallsyms.gz").is_file()
    report = (out / "report.txt").read_text()
    assert "host-died" in report and "td_tiny" in report, report
    # a second analyze reads the completed run as it is
    again = run_tracedep("analyze", out, "--no-dwarf")
    assert again.rc == 0 and "died while the guest ran" not in again.stderr, again.explain()


def _qemu_of(out: Path) -> int | None:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"qemu-system" in cmd[0] and any(str(out).encode() in a for a in cmd):
            return int(p.name)
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
