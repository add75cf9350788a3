"""Faults, each provoked for real: what the user sees (one error line, no traceback),
the exit code docs/DESIGN.md promises ("Errors and exit codes"), and the partial run
directory that is kept.

Exit codes: 2 usage or input error; 3 the run itself failed.  Two tests boot a
guest to its end (a panic, a hang); the QEMU-failure tests start QEMU, which
dies at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_DRIVERS, Result, run_tracedep

TINY = TEST_DRIVERS / "td_tiny"  # a small clean module: cheap to build
UNIX_PATH_MAX = 107


def assert_one_error(res: Result, rc: int, *needles: str) -> str:
    """Exactly one ``tracedep: error:`` line, containing ``needles``; no traceback."""
    assert res.rc == rc, res.explain()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.explain()
    assert len(res.errors) == 1, res.explain()
    line = res.errors[0]
    for n in needles:
        assert n in line, (n, line)
    # every other stderr line is one of tracedep's own (warnings), never a raw log
    assert all(ln.startswith("tracedep: ") for ln in res.stderr.splitlines()), res.explain()
    return line


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


# --- input errors (exit 2) ------------------------------------------------------------------


def test_missing_module_source(tmp_path: Path) -> None:
    res = run_tracedep("run", "--module-src", tmp_path / "nope", "--out", tmp_path / "out")
    assert_one_error(res, 2, "--module-src", "no such directory")
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_module_that_does_not_build(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_tracedep("run", "--module-src", TEST_DRIVERS / "td_broken", "--out", out)
    line = assert_one_error(res, 2, "td_broken", "does not build")
    # the compiler's own words
    assert "td_broken_undeclared_symbol" in line and "undeclared" in line, line
    m = manifest(out)
    assert m["state"] == "failed" and "does not build" in m["error"]


def test_out_directory_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me\n")
    res = run_tracedep("run", "--module-src", TINY, "--out", out)
    assert_one_error(res, 2, "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_out_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("")
    assert_one_error(run_tracedep("run", "--out", out), 2, "not a directory")


def test_missing_kernel_file(tmp_path: Path) -> None:
    res = run_tracedep("run", "--kernel", tmp_path / "bzImage", "--out", tmp_path / "out")
    assert_one_error(res, 2, "--kernel", "no such file")


def test_missing_workload(tmp_path: Path) -> None:
    res = run_tracedep("trace", "--module-src", TINY, "--workload", tmp_path / "wl.sh",
                       "--out", tmp_path / "out")
    assert_one_error(res, 2, "--workload", "no such file")


def test_usage_error(tmp_path: Path) -> None:
    res = run_tracedep("run", "--no-such-option", "--out", tmp_path / "out")
    assert res.rc == 2 and "Traceback" not in res.stderr
    assert "usage:" in res.stderr


# --- QEMU cannot run (exit 3) -------------------------------------------------------------------


@pytest.mark.guest
def test_qemu_cannot_allocate_guest_memory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_tracedep("run", "--module-src", TINY, "--memory", "999999999", "--out", out)
    assert_one_error(res, 3, "QEMU exited", "cannot set up guest memory", "-m 999999999")
    m = manifest(out)
    assert m["state"] == "failed" and "QEMU exited" in m["error"]
    assert "cannot set up guest memory" in (out / "qemu.log").read_text()
    assert (out / "initramfs.cpio.gz").is_file()


@pytest.mark.guest
def test_kernel_that_is_not_a_kernel(tmp_path: Path) -> None:
    """A file given as --kernel that QEMU cannot boot: the discovery boot fails at once."""
    from tracedep.common.machines import machine_for
    from tracedep.vm.kernel import fetch_debian_kernel

    headers = fetch_debian_kernel(machine_for("x86_64"), None).build_dir
    assert headers is not None
    bogus = tmp_path / "bzImage"
    # fixed content: the discovery cache is keyed by the image's hash
    bogus.write_bytes(b"tracedep test: this is not a kernel\n" * 4096)
    out = tmp_path / "out"
    res = run_tracedep("run", "--kernel", bogus, "--kernel-build", headers, "--module-src", TINY,
                       "--out", out)
    assert_one_error(res, 3, "QEMU exited", str(bogus))
    assert manifest(out)["state"] == "failed"


def short_enough_tmpdir(tmp_path: Path, total: int) -> Path:
    """A directory whose path is ``total`` bytes long (for socket paths that do not fit)."""
    d = tmp_path / ("t" * max(1, total - len(str(tmp_path)) - 1))
    d.mkdir()
    assert len(str(d)) == total
    return d


@pytest.mark.guest
@pytest.mark.parametrize("what,tmpdir_len", [
    # the private socket directory is TMPDIR/tracedep-XXXXXXXX (17 bytes more)
    ("QMP", UNIX_PATH_MAX - 17 - len("/qmp.sock") + 1),
    # qmp.sock fits, the trace channel's tracedep.ctl.sock does not
    ("trace channel", UNIX_PATH_MAX - 17 - len("/tracedep.ctl.sock") + 1),
])
def test_socket_that_cannot_be_created(tmp_path: Path, what: str, tmpdir_len: int) -> None:
    """tracedep's sockets live in a fresh private (0700) directory, so no other process can
    hold their paths ("address in use" cannot happen); what can fail is the path itself: a
    unix socket path has at most 107 bytes, and TMPDIR decides its length."""
    tmpdir = short_enough_tmpdir(tmp_path, tmpdir_len)
    out = tmp_path / "out"
    res = run_tracedep("run", "--module-src", TINY, "--out", out, env={"TMPDIR": str(tmpdir)})
    assert_one_error(res, 3, f"cannot listen for {what}", "too long", "TMPDIR")
    assert manifest(out)["state"] == "failed"
    assert os.listdir(tmpdir) == []  # the private directory was cleaned up


# --- the guest dies or hangs (exit 3), partial trace kept ----------------------------------


@pytest.mark.guest
def test_module_that_panics_the_guest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # a second of ordinary guest activity first: the pumps ship the ring buffer every
    # 250 ms, so what happened before the panic has reached the host and must be kept
    workload = tmp_path / "panic.sh"
    workload.write_text("ls -R /sys/class > /dev/null\nsleep 1\n"
                        "td_insmod /lib/modules/tracedep/td_panic.ko\n")
    res = run_tracedep("run", "--module-src", TEST_DRIVERS / "td_panic", "--workload",
                       workload, "--out", out)
    assert_one_error(res, 3, "guest panic", "td_panic: planted panic", str(out))
    m = manifest(out)
    assert m["state"] == "failed" and m["ending"]["how"] == "panic"
    assert m["lost"]["truncated"] is True and m["trace_complete"] is False
    assert "Kernel panic - not syncing: td_panic: planted panic" in (
        out / "console.log").read_text()
    # what the guest sent before it died is there, decoded and reported as incomplete
    ctl = (out / "control.log").read_text()
    assert "@@TD start" in ctl and "@@TD done trace" not in ctl
    assert list((out / "trace").glob("cpu*.raw"))
    # the events of the last poll period before the panic (td_panic's own load among
    # them) may not arrive; the earlier ones do
    assert sum(m["event_counts"].values()) > 0
    report = (out / "report.txt").read_text()
    assert "INCOMPLETE" in report or "incomplete" in report


@pytest.mark.guest
def test_module_whose_init_fails(tmp_path: Path) -> None:
    """A driver that fails to initialise is not a clean driver: the run says so.  It is
    freed before insmod returns, so /sys/module never shows its sections; the kernel's
    own account at do_init_module (tracer.module_sections) places them, and what its
    init did is its own: td_initfail_bug's planted sleep under a spinlock is found in
    its file, at both its .init.text and its .text frames, and its twin td_initfail
    (the spinlock alone) has its lock events and no finding."""
    out = tmp_path / "out"
    res = run_tracedep("run", "--module-src", TEST_DRIVERS / "td_initfail",
                       "--module-src", TEST_DRIVERS / "td_initfail_bug",
                       "--module-src", TINY, "--out", out)
    assert res.rc == 1, res.explain()
    m = manifest(out)
    mods = {mm["name"]: mm for mm in m["modules"]}
    assert mods["td_tiny"]["insmod_rc"] == [0]
    for name in ("td_initfail", "td_initfail_bug"):
        (rc,) = mods[name]["insmod_rc"]
        assert rc != 0 and not mods[name]["loaded"] and mods[name]["loads"] == [], mods[name]
        warning = f"{name}: insmod failed (exit"
        assert warning in res.stderr
        assert warning in (out / "report.txt").read_text()
        assert warning in (out / "index.html").read_text()
    assert m["module_sections"]["probes"] > 0, m["module_sections"]
    assert "td_tiny: insmod failed" not in res.stderr
    findings = json.loads((out / "findings.json").read_text())
    assert [(f["kind"], f["driver"]) for f in findings] == [
        ("sleep-in-atomic", "td_initfail_bug")], [f["message"] for f in findings]
    assert findings[0]["locks"] == ["td_initfail_bug_lock"], findings[0]["locks"]
    frames = [fr for site in findings[0]["sites"] for fr in site["frames"]]
    where = {(fr.get("function"), str(fr.get("file") or "").rsplit("/", 1)[-1])
             for fr in frames}
    assert ("td_initfail_bug_read_config", "td_initfail_bug.c") in where, frames
    assert ("td_initfail_bug_init", "td_initfail_bug.c") in where, frames
    # the kernel's account agrees with the guest's report where both exist (td_tiny)
    from tracedep.tracer.decode_stream import decode_run

    told = {kl.name: kl for kl in decode_run(out).module_loads}
    assert set(told) >= {"td_tiny", "td_initfail", "td_initfail_bug"}, told
    assert told["td_tiny"].complete and told["td_initfail_bug"].complete
    assert told["td_tiny"].sections == mods["td_tiny"]["loads"][0]["sections"]
    an = json.loads((out / "analysis.json").read_text())
    cov = {mm["name"]: mm for mm in an["run"]["modules"]}
    # lock, unlock (and the spinlock's return probe where the kernel has one)
    assert cov["td_initfail"]["lock_events"] >= 2, cov["td_initfail"]


@pytest.mark.guest
def test_workload_that_never_ends(tmp_path: Path) -> None:
    wl = tmp_path / "hang.sh"
    wl.write_text("while :; do sleep 1; done\n")
    out = tmp_path / "out"
    res = run_tracedep("run", "--module-src", TINY, "--workload", wl, "--timeout", "40",
                       "--out", out)
    assert_one_error(res, 3, "guest timeout", "no power-off within 40 s", str(out))
    m = manifest(out)
    assert m["state"] == "failed" and m["ending"]["how"] == "timeout"
    assert m["trace_complete"] is False and m["lost"]["truncated"] is True
    assert (out / "console.log").is_file() and (out / "control.log").is_file()
    ctl = (out / "control.log").read_text()
    assert "@@TD hello" in ctl and "@@TD done trace" not in ctl
    assert res.wall_s < 40 + 240  # killed, not waited for


# --- a guest that dies before tracing starts is booted once more --------------------------

CONSOLE_OOPS = """\
[   14.669715] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   14.669726] Oops: 0002 [#1] PREEMPT SMP NOPTI
[   14.670565] Kernel panic - not syncing: Fatal exception
"""


def test_died_before_tracing_is_told_from_a_run_that_died(tmp_path: Path) -> None:
    from tracedep.tracer.session import _died_before_tracing

    (tmp_path / "control.log").write_text("@@TD hello\n@@TD end hello\n")
    assert _died_before_tracing(tmp_path, "panic")
    assert _died_before_tracing(tmp_path, "reset")
    assert not _died_before_tracing(tmp_path, "timeout")  # a hang: booting again costs as much
    (tmp_path / "control.log").write_text("@@TD start\nuptime=9\n@@TD end start\n")
    assert not _died_before_tracing(tmp_path, "panic")  # the drivers ran: a real result


def test_a_failed_boot_is_kept_aside(tmp_path: Path) -> None:
    from tracedep.tracer.session import _console_panic, _keep_attempt

    (tmp_path / "console.log").write_text(CONSOLE_OOPS)
    (tmp_path / "control.log").write_text("@@TD hello\n")
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "cpu0.raw").write_bytes(b"x" * 10)
    assert _console_panic(tmp_path / "console.log") == (
        "Kernel panic - not syncing: Fatal exception "
        "(BUG: kernel NULL pointer dereference, address: 0000000000000008)")
    kept = _keep_attempt(tmp_path, 1)
    assert sorted(kept) == ["console.log.attempt1", "control.log.attempt1", "trace.attempt1"]
    assert (tmp_path / "trace.attempt1" / "cpu0.raw").read_bytes() == b"x" * 10
    assert (tmp_path / "trace").is_dir() and not any((tmp_path / "trace").iterdir())
    assert not (tmp_path / "console.log").exists()
