"""common.run_lock: a run directory held by its tracedep, free once that lets go (or
dies: the kernel drops a flock with its process, shown by a child that exits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tracedep.common import run_lock


def test_a_held_run_directory_is_in_use_until_released(tmp_path: Path) -> None:
    assert not run_lock.in_use(tmp_path)
    with run_lock.held(tmp_path):
        assert run_lock.in_use(tmp_path)
    assert not run_lock.in_use(tmp_path)


def test_the_lock_goes_with_a_process_that_dies(tmp_path: Path) -> None:
    code = ("import os, sys; from pathlib import Path; from tracedep.common import run_lock\n"
            "with run_lock.held(Path(sys.argv[1])):\n"
            "    print('held', flush=True); sys.stdin.readline(); os._exit(9)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "held"
    assert run_lock.in_use(tmp_path)
    child.kill()  # no clean-up runs
    child.wait()
    assert not run_lock.in_use(tmp_path)
