"""``tracedep trace --untraced``: the same guest and workload with nothing armed.

One real boot of the benchmark driver for 2 s: the guest loads the module and runs
the workload (its ``rounds=`` line reaches the console), writes no trace, enables no
event, and its initramfs is a traced run's but for the mode word.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import REPO, run_tracedep

pytestmark = pytest.mark.guest

BENCH = REPO / "bench"


def _cpio_files(path: Path) -> dict[str, bytes]:
    """name -> data of a newc archive (vm.initramfs.Cpio's)."""
    buf = gzip.decompress(path.read_bytes())
    out, pos = {}, 0
    while True:
        h = buf[pos:pos + 110]
        size, nlen = int(h[54:62], 16), int(h[94:102], 16)
        name = buf[pos + 110:pos + 110 + nlen - 1].decode()
        pos += 110 + nlen
        pos += (4 - pos % 4) % 4
        if name == "TRAILER!!!":
            return out
        out[name] = buf[pos:pos + size]
        pos += size
        pos += (4 - pos % 4) % 4


def test_untraced_run_arms_nothing_and_runs_the_workload(tmp_path: Path) -> None:
    workload = tmp_path / "saturate-2s.sh"
    workload.write_text("TD_BENCH_SECONDS=2\n" + (BENCH / "workloads" / "saturate.sh").read_text())
    out = tmp_path / "run"
    r = run_tracedep("trace", "--untraced", "--module-src", BENCH / "drivers" / "td_bench_load",
                     "--workload", workload, "--out", out)
    assert r.rc == 0, r.explain()
    assert "untraced run" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["untraced"] is True and m["state"] == "complete", m
    assert not m.get("trace_complete") and not m.get("events_enabled")
    assert m["untraced_pids"] == []  # no pump ran
    wl = m["workload"]
    assert wl["rc"] == 0 and wl["end_uptime_s"] > wl["start_uptime_s"] >= 0
    [mod] = m["modules"]
    assert mod["name"] == "td_bench_load" and mod["loaded"] and mod["insmod_rc"] == [0]
    assert m["timing"]["bytes"]["tracedep.cpu0"] == 0 and m["timing"]["bytes"][
        "tracedep.cpu1"] == 0
    assert not (out / "trace").exists()
    assert "td_bench_load: rounds=" in (out / "console.log").read_text(errors="replace")
    ctl = (out / "control.log").read_text(errors="replace")
    for armed in ("@@TD probes", "@@TD events", "@@TD formats", "@@TD stats", "@@TD done trace",
                  "kprobe_profile"):
        assert armed not in ctl
    assert "@@TD done untraced" in ctl
    # the initramfs a traced run would boot, but for its mode
    files = _cpio_files(out / "initramfs.cpio.gz")
    assert b"TD_MODE=untraced\n" in files["etc/tracedep/config"]
    assert files["etc/tracedep/kprobes"].count(b"\n") == m["probes"]["defined"] > 100
    r = run_tracedep("analyze", out, "--no-dwarf")
    assert r.rc == 2 and "has no trace to analyze" in r.stderr, r.explain()
