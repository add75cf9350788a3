"""Write binary_reference.json: the td_alloc_spin_bug events of a run's *binary* trace.

usage: .venv/bin/python tests/data/text/make_binary_reference.py RUN_DIR MODULE > OUT.json

The run directory is the one record_text.sh ran in (see README.md); its binary
ring-buffer pages are too large to keep, so the decoded events of the module
(call site in MODULE, and its module_load/module_free) are kept
instead, for tests/analysis/test_ftrace_text.py to compare the text parse with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tracedep.analysis.trace import load


def main() -> None:
    t = load(Path(sys.argv[1]))
    module = sys.argv[2]
    ev = t.events
    spans = [(m.lo, m.hi) for m in t.symbols.modules if m.name == module]
    ip_all = ev["ip"].to_numpy()
    near = np.zeros(len(ev), dtype=bool)
    for lo, hi in spans:
        near |= (ip_all >= lo) & (ip_all < hi)
    near |= ev["event"].astype(str).str.startswith("module/").to_numpy() & (
        ev["func"].astype(str) == module).to_numpy()
    rows = []
    for r in np.nonzero(near)[0].tolist():
        e = ev.iloc[r]
        ip, ts = int(e["ip"]), int(e["ts_ns"])
        ours = t.symbols.module_of(ip, ts) == module if ip else False
        if not ours and not (str(e["event"]).startswith("module/") and str(e["func"]) == module):
            continue
        sid = int(e["stack_id"])
        rows.append({
            "ts_ns": ts, "cpu": int(e["cpu"]), "pid": int(e["pid"]), "kind": str(e["kind"]),
            "event": str(e["event"]), "lock_addr": f"{int(e['lock_addr']):#x}",
            "lock_type": str(e["lock_type"]), "lock_flags": str(e["lock_flags"]),
            "ip": f"{ip:#x}", "gfp": int(e["gfp"]), "ptr": f"{int(e['ptr']):#x}",
            "bytes": int(e["bytes"]), "func": str(e["func"]), "value": int(e["value"]),
            "irqs_off": bool(e["irqs_off"]), "preempt_depth": int(e["preempt_depth"]),
            "in_hardirq": bool(e["in_hardirq"]), "in_softirq": bool(e["in_softirq"]),
            "stack": [f"{a:#x}" for a in t.stacks[sid]] if sid >= 0 else None,
        })
    json.dump({"run": sys.argv[1], "kernel": t.info.get("kernel", {}).get("release"),
               "module": module, "events": rows}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
