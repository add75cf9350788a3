"""The kernel package's own modules under test (``--kernel-module``), and how modules load.

Host-side tests read the suite's real Debian kernel tree (``fetch_debian_kernel``:
the default series, or ``TRACEDEP_KERNEL_SERIES``).  Two guest tests boot it:

* a workload that ``modprobe``s null_blk (with a parameter, pulling in configfs)
  and dummy, does I/O on /dev/nullb0, and loads a module whose init fails;
* the default workload with a kernel module (vfat, whose dependency fat comes
  along) and two --module-src modules where the one sorted first needs the other's
  symbol (tests/data/drivers/td_deps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_DRIVERS, run_tracedep

from tracedep import cli
from tracedep.common.machines import machine_for
from tracedep.errors import InputError
from tracedep.vm import kmodules
from tracedep.vm.kernel import Kernel, fetch_debian_kernel
from tracedep.vm.modules import BuiltModule


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return fetch_debian_kernel(machine_for("x86_64"))


# --- the command line -------------------------------------------------------------------------


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [p]
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for sub in act.choices.values():
                out += _parsers(sub)
    return out


def test_no_parser_takes_abbreviations() -> None:
    parsers = _parsers(cli.build_parser())
    assert len(parsers) > 8  # run, trace, analyze, … nightly, bisect-run, bisect
    assert [p.prog for p in parsers if p.allow_abbrev] == []


def test_kernel_module_is_not_kernel_modules() -> None:
    a = cli.build_parser().parse_args(["run", "--kernel-module", "dummy", "--kernel-module",
                                       "null_blk", "--out", "x"])
    assert a.kernel_module == ["dummy", "null_blk"] and a.kernel_modules is None
    a = cli.build_parser().parse_args(["trace", "--kernel-modules", "/m", "--out", "x"])
    assert a.kernel_module == [] and a.kernel_modules == Path("/m")


@pytest.mark.parametrize("argv", [
    ["run", "--kernel-mod", "dummy", "--out", "x"],  # a prefix of both
    ["run", "--out", "x", "--no-dw"],
    ["-v", "fetch", "--no-dw"],
])
def test_prefixes_are_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_bisect_passes_kernel_modules_on() -> None:
    from tracedep.nightly import gitbisect

    p = argparse.ArgumentParser(allow_abbrev=False)
    gitbisect.add_run_args(p)
    a = p.parse_args(["--match", "sleep-in-atomic", "--module-src", "/d",
                      "--kernel-module", "dummy"])
    argv = gitbisect.run_argv(a)
    assert argv[argv.index("--kernel-module") + 1] == "dummy"
    again = gitbisect.bisect_run_argv(a)
    assert again[again.index("--kernel-module") + 1] == "dummy"


def test_nightly_driver_set_names_kernel_modules(tmp_path: Path) -> None:
    from tracedep.errors import InputError as Err
    from tracedep.nightly.config import load_config

    (tmp_path / "d1").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[driver_sets]\ndeb = ["kernel:null_blk", "d1", "kernel:dummy"]\n')
    (cell,) = load_config(cfg).cells
    assert [cell.args[i + 1] for i, a in enumerate(cell.args) if a == "--kernel-module"] == [
        "null_blk", "dummy"]
    assert cell.args[cell.args.index("--module-src") + 1] == str(tmp_path / "d1")
    cfg.write_text('[driver_sets]\ndeb = ["kernel:"]\n')
    with pytest.raises(Err, match="'driver_sets.deb'.*module name"):
        load_config(cfg)


def test_unknown_kernel_module_fails_before_any_boot(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_tracedep("run", "--kernel-module", "dummy", "--kernel-module", "no_such_mod",
                       "--out", out)
    assert res.rc == 2, res.explain()
    assert len(res.errors) == 1 and "--kernel-module no_such_mod: no such module" in \
        res.errors[0], res.stderr
    assert not (out / "console.log").exists()  # nothing booted
    assert "Traceback" not in res.stderr


# --- resolving names in the kernel's module tree ------------------------------------------------


def test_resolve_with_dependencies(kernel: Kernel) -> None:
    km = kmodules.resolve(kernel, ["null_blk", "dummy", "vfat", "null-blk"])
    assert km.under_test == ["null_blk", "dummy", "vfat"]
    # null_blk needs configfs and vfat needs fat (both modular in Debian's cloud kernels)
    assert km.modules["null_blk"].depends == ("configfs",)
    assert km.modules["vfat"].depends == ("fat",)
    assert sorted(km.dependencies) == ["configfs", "fat"]
    for m in km.modules.values():
        assert m.ko.read_bytes()[:4] == b"\x7fELF" and m.rel.endswith(".ko")
        assert m.src.name.startswith(m.rel.rsplit("/", 1)[1])  # 6.12: .ko.xz beside
        # a decompressed copy keeps the tree's path: the -dbg twin is found by it
        assert str(m.ko).endswith(f"/lib/modules/{kernel.release}/{m.rel}")
    dep = kmodules.modules_dep(km).splitlines()
    assert f"{km.modules['null_blk'].rel}: {km.modules['configfs'].rel}" in dep
    assert f"{km.modules['dummy'].rel}:" in dep
    assert "alias fs-vfat vfat" in kmodules.modules_alias(km).splitlines()


def test_builtin_and_unknown(kernel: Kernel) -> None:
    km = kmodules.resolve(kernel, ["dummy", "ext4", "ext2"])
    # Debian builds ext4 in, and ext4 serves ext2 (an alias of the built-in module)
    assert km.builtin == {"ext4": "ext4", "ext2": "ext4"}
    assert km.under_test == ["dummy"] and list(km.modules) == ["dummy"]
    with pytest.raises(InputError, match="no_such_mod, other_mod: no such module"):
        kmodules.resolve(kernel, ["no_such_mod", "dummy", "other_mod"])


def test_zram_dependency_closure_is_ordered(kernel: Kernel) -> None:
    km = kmodules.resolve(kernel, ["zram"])
    line = next(ln for ln in kmodules.modules_dep(km).splitlines()
                if ln.startswith(km.modules["zram"].rel + ":"))
    listed = [Path(p).name[:-3] for p in line.split(":", 1)[1].split()]
    assert sorted(listed) == sorted(km.modules["zram"].depends)
    order = [s.name for s in kmodules.load_order([], km, {})]
    assert order[-1] == "zram" and sorted(order[:-1]) == sorted(listed)


def test_kernel_modules_under_test_get_their_dwarf_twins(kernel: Kernel) -> None:
    """Their inlined locks are found in the -dbg package's .ko (the stripped one has no
    DWARF); dependencies are not under test and get none."""
    from tracedep.tracer.inline_locks import discover_module

    km = kmodules.resolve(kernel, ["null_blk"])
    found, missing = kmodules.with_dwarf(kernel, km)
    assert missing == [] and [m.name for m in found] == ["null_blk"]
    ko = found[0].ko
    assert str(ko).endswith(f"/usr/lib/debug/lib/modules/{kernel.release}/"
                            f"{km.modules['null_blk'].rel}")
    d = discover_module(ko, "null_blk")  # raises on a .ko without DWARF
    assert d.sites or d.out_of_line  # x86_64 calls its spinlocks, arm64 inlines them


def _built(name: str) -> BuiltModule:
    p = Path("/nonexistent") / f"{name}.ko"
    return BuiltModule(name, p, p.parent, p.parent)


def test_load_order_follows_depends(kernel: Kernel) -> None:
    km = kmodules.resolve(kernel, ["vfat", "null_blk"], ["configfs"])
    built = [_built("td_a"), _built("td_b"), _built("td_c")]
    # td_a needs td_c and configfs (the kernel's); td_c needs td_b
    deps = {"td_a": ["td_c", "configfs"], "td_b": [], "td_c": ["td_b"]}
    steps = kmodules.load_order(built, km, deps)
    assert [(s.role, s.name) for s in steps] == [
        ("dep", "fat"), ("test", "vfat"), ("dep", "configfs"), ("test", "null_blk"),
        ("test", "td_b"), ("test", "td_c"), ("test", "td_a")]
    assert steps[-1].path == "/lib/modules/tracedep/td_a.ko"
    assert steps[0].path == f"/lib/modules/{kernel.release}/{km.modules['fat'].rel}"
    with pytest.raises(InputError, match="cycle: td_a -> td_b -> td_a"):
        kmodules.load_order([_built("td_a"), _built("td_b")], km,
                            {"td_a": ["td_b"], "td_b": ["td_a"]})


def test_modinfo_of_a_built_module(kernel: Kernel) -> None:
    from tracedep.vm.modules import build_modules

    built = build_modules([TEST_DRIVERS / "td_deps"], kernel, machine_for("x86_64"))
    assert kmodules.module_src_depends(built) == {"td_needs": ["td_provides"],
                                                  "td_provides": []}


def test_modinfo_rejects_what_is_not_a_module(tmp_path: Path) -> None:
    from tracedep.errors import ModuleBuildError

    p = tmp_path / "x.ko"
    p.write_bytes(b"\x7fELF\x02\x01" + b"\0" * 20)
    with pytest.raises(ModuleBuildError, match="truncated"):
        kmodules.modinfo(p)
    p.write_bytes(b"not elf")
    with pytest.raises(ModuleBuildError, match="ELF64"):
        kmodules.modinfo(p)


# --- real guests ------------------------------------------------------------------------------

MODPROBE_WORKLOAD = """\
modprobe null_blk nr_devices=1 || exit 10
modprobe dummy || exit 11
[ -b /dev/nullb0 ] || exit 12
dd if=/dev/zero of=/dev/nullb0 bs=4096 count=256 2>/dev/null || exit 13
dd if=/dev/nullb0 of=/dev/null bs=65536 count=16 2>/dev/null || exit 14
ip link set dummy0 up || exit 15
# a module whose init fails: loaded once, its failure recorded
insmod /lib/modules/tracedep/td_initfail.ko
rmmod dummy
rmmod null_blk
"""


def _table_row(report: str, name: str) -> list[str]:
    head = report.index("Findings per driver:")
    for ln in report[head:].splitlines()[2:]:
        words = ln.split()
        if words and words[0] == name:
            return words
    raise AssertionError(f"{name} has no row in the driver table:\n{report[head:head + 3000]}")


def _mods(out: Path) -> dict[str, dict[str, Any]]:
    an = json.loads((out / "analysis.json").read_text())
    return {m["name"]: m for m in an["run"]["modules"]}


@pytest.mark.guest
def test_modprobe_kernel_modules(tmp_path: Path) -> None:
    wl = tmp_path / "workload.sh"
    wl.write_text(MODPROBE_WORKLOAD)
    out = tmp_path / "run"
    res = run_tracedep("run", "--kernel-module", "null_blk", "--kernel-module", "dummy",
                       "--module-src", TEST_DRIVERS / "td_initfail", "--workload", wl,
                       "--no-dwarf", "--smp", "1", "--out", out)
    assert res.rc in (0, 1), res.explain()
    man = json.loads((out / "manifest.json").read_text())
    assert man["workload"]["rc"] == 0, res.explain()
    assert man["kernel_modules"]["dependencies"] == ["configfs"]
    mods = _mods(out)
    assert set(mods) == {"null_blk", "dummy", "td_initfail"}  # configfs: a dependency only
    for name in ("null_blk", "dummy"):
        m = mods[name]
        assert m["origin"] == "kernel" and m["insmod_rc"] == [0] and m["loaded"], m
        assert m["lock_events"] > 0, m
    assert mods["null_blk"]["lock_classes"] > 0
    # finit_module once: the -ENODEV of the init, as its errno
    assert mods["td_initfail"]["insmod_rc"] == [19], mods["td_initfail"]
    from tracedep.analysis.trace import load

    ev = load(out).events
    loads = ev[(ev["kind"] == "module_load")]["func"].astype(str).tolist()
    assert loads.count("td_initfail") == 1, loads  # busybox insmod would load it twice
    assert loads.count("null_blk") == 1 and loads.count("configfs") == 1, loads
    report = (out / "report.txt").read_text()
    for name in ("null_blk", "dummy"):
        row = _table_row(report, name)
        assert row[-3:] == ["ok", "(kernel's", "module)"], row
        assert int(row[-4]) == mods[name]["lock_events"]
    assert _table_row(report, "td_initfail")[-2:] == ["ENODEV", "(19)"]
    assert "td_initfail: insmod failed (exit 19, ENODEV)" in report
    html = (out / "index.html").read_text()
    assert ">null_blk</a> (kernel&#x27;s)" in html or ">null_blk</a> (kernel's)" in html


@pytest.mark.guest
def test_default_workload_loads_in_dependency_order(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_tracedep("run", "--kernel-module", "vfat", "--module-src", TEST_DRIVERS / "td_deps",
                       "--no-dwarf", "--smp", "1", "--out", out)
    assert res.rc in (0, 1), res.explain()
    man = json.loads((out / "manifest.json").read_text())
    assert [(s["role"], s["name"]) for s in man["load_order"]] == [
        ("dep", "fat"), ("test", "vfat"), ("test", "td_provides"), ("test", "td_needs")]
    mods = _mods(out)
    assert set(mods) == {"vfat", "td_provides", "td_needs"}
    for name, m in mods.items():
        assert m["insmod_rc"] == [0] and m["loaded"], (name, m)
    # td_needs owns no lock and takes none: it still has its row
    assert mods["td_needs"]["lock_classes"] == 0 and mods["td_needs"]["lock_events"] == 0
    assert mods["td_provides"]["lock_classes"] == 1 and mods["td_provides"]["lock_events"] >= 1
    report = (out / "report.txt").read_text()
    assert _table_row(report, "td_needs")[-1] == "ok"
    assert _table_row(report, "vfat")[-3:] == ["ok", "(kernel's", "module)"]
    ctl = (out / "control.log").read_text()
    assert "@@TD insmod fat" not in ctl  # a dependency, not a module under test
