"""Write binary_reference_lock_init.json: the lock_init rows of a run's *binary* trace
in the time span of a text recording of the same run (record_text_lockinit.sh).

usage: .venv/bin/python tests/data/text/make_lock_init_reference.py RUN_DIR TEXT > OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tracedep.analysis.ftrace_text import load_text
from tracedep.analysis.trace import load

MARGIN_NS = 2_000_000  # each ftrace instance stamps its own copy: microseconds apart


def main() -> None:
    text = load_text(Path(sys.argv[2]))
    t0 = int(text.events["ts_ns"].min()) - MARGIN_NS
    t1 = int(text.events["ts_ns"].max()) + MARGIN_NS
    ev = load(Path(sys.argv[1])).events
    sel = ev[(ev["kind"] == "lock_init") & (ev["ts_ns"] >= t0) & (ev["ts_ns"] <= t1)]
    rows = [{"ts_ns": int(e.ts_ns), "cpu": int(e.cpu), "pid": int(e.pid), "func": str(e.func),
             "lock_addr": f"{int(e.lock_addr):#x}", "key_addr": f"{int(e.key_addr):#x}",
             "ip": f"{int(e.ip):#x}", "lock_name": str(e.lock_name), "value": int(e.value)}
            for e in sel.itertuples()]
    json.dump({"run": sys.argv[1], "events": rows}, sys.stdout, indent=0)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
