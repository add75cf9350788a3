"""The one declaration of the run options (common/run_options.py) and its users.

``to_argv()`` round-trips through the real parsers of ``tracedep run``, ``trace``
and ``bisect-run``; those commands (and ``fetch``, ``probes``) take the options
they took before the declaration (2095d7a), with the differences listed here;
the nightly and bisect start ``tracedep run`` with ``to_argv()`` and spell no run
option themselves.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracedep import cli
from tracedep.common import run_options
from tracedep.common.run_options import BISECT_RUN, RunOptions, add_arguments
from tracedep.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _subparser(name: str) -> argparse.ArgumentParser:
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices[name]
    return parser


def _parse(command: str, argv: list[str]) -> RunOptions:
    return RunOptions.from_namespace(cli.build_parser().parse_args([command, *argv]))


# --- round trip -------------------------------------------------------------------------------

texts = st.text(max_size=12)
paths = texts.map(Path)


@st.composite
def options(draw: st.DrawFn, *, out: bool, no_dwarf: bool = True) -> RunOptions:
    return RunOptions(
        arch=draw(st.sampled_from(["x86_64", "arm64"]) | texts),
        kernel_series=draw(st.none() | st.sampled_from(run_options.KERNEL_SERIES)),
        abi=draw(st.none() | texts),
        kernel=draw(st.none() | paths),
        kernel_modules=draw(st.none() | paths),
        kernel_build=draw(st.none() | paths),
        vmlinux=draw(st.none() | paths),
        module_src=tuple(draw(st.lists(paths, max_size=3))),
        kernel_module=tuple(draw(st.lists(texts, max_size=3))),
        no_modules=draw(st.booleans()),
        workload=draw(st.none() | paths),
        timeout=draw(st.floats(allow_nan=False)),
        progress=draw(st.floats(allow_nan=False)),
        transport=draw(st.sampled_from(run_options.TRANSPORTS)),
        smp=draw(st.integers()),
        memory=draw(st.integers()),
        accel=draw(st.sampled_from(run_options.ACCELS)),
        out=draw(paths) if out else None,
        no_dwarf=draw(st.booleans()) if no_dwarf else False,
        raw=draw(st.sampled_from(run_options.RAW_RETENTION)) if out and no_dwarf else "keep",
    )


def test_the_strategy_sets_every_field() -> None:
    assert run_options.NAMES == tuple(f.name for f in dataclasses.fields(RunOptions))
    assert len(run_options.NAMES) == 20  # a new option: add it to the strategy above


@SETTINGS
@given(options(out=True))
def test_run_round_trip(o: RunOptions) -> None:
    assert _parse("run", o.to_argv()) == o


@SETTINGS
@given(options(out=True, no_dwarf=False))
def test_trace_round_trip(o: RunOptions) -> None:
    assert _parse("trace", o.to_argv()) == o


@SETTINGS
@given(options(out=False))
def test_bisect_run_round_trip(o: RunOptions) -> None:
    assert _parse("bisect-run", ["--match", "recursive-locking", *o.to_argv(BISECT_RUN)]) == o


@SETTINGS
@given(options(out=False), st.lists(st.sampled_from(["--smp", "--arch", "--module-src",
                                                     "--no-modules", "--timeout"]), max_size=4))
def test_from_argv_is_the_command_line_after_the_base(o: RunOptions, flags: list[str]) -> None:
    values = {"--smp": "7", "--arch": "arm64", "--module-src": "d", "--timeout": "1.5"}
    more: list[str] = []
    for f in flags:
        more += [f, values[f]] if f in values else [f]
    want = _parse("run", [*o.to_argv(), *more, "--out", "x"])
    assert RunOptions.from_argv(more, base=o) == dataclasses.replace(want, out=None)


@pytest.mark.parametrize("o, argv", [
    (RunOptions(), []),
    (RunOptions(arch="arm64", smp=1), ["--arch", "arm64", "--smp", "1"]),
    (RunOptions(module_src=(Path("a"), Path("b")), kernel_module=("dummy",)),
     ["--module-src", "a", "--module-src", "b", "--kernel-module", "dummy"]),
    (RunOptions(timeout=99.0, no_dwarf=True, no_modules=True),
     ["--no-modules", "--timeout", "99.0", "--no-dwarf"]),
    # values that look like options are joined to their flag
    (RunOptions(smp=-1, abi="-x", module_src=(Path("-d"),)),
     ["--abi=-x", "--module-src=-d", "--smp=-1"]),
    (RunOptions(abi=""), ["--abi", ""]),
    (RunOptions(out=Path("o"), kernel=Path("bz"), kernel_build=Path("t")),
     ["--kernel", "bz", "--kernel-build", "t", "--out", "o"]),
])
def test_to_argv_table(o: RunOptions, argv: list[str]) -> None:
    assert o.to_argv() == argv
    assert _parse("run", [*argv, *([] if o.out else ["--out", "o"])]) == \
        dataclasses.replace(o, out=o.out or Path("o"))


def test_bisect_run_spelling() -> None:
    o = RunOptions(kernel=Path("bz"), kernel_build=Path("t"), kernel_modules=Path("m"))
    assert o.to_argv(BISECT_RUN) == ["--kernel-image", "bz", "--kernel-modules", "m",
                                     "--kernel-tree", "t"]
    with pytest.raises(ValueError, match="bisect-run has no option for out"):
        RunOptions(out=Path("o")).to_argv(BISECT_RUN)


def test_from_argv_adds_to_repeatable_options_and_refuses_others() -> None:
    base = RunOptions(arch="arm64", module_src=(Path("a"),), smp=4)
    got = RunOptions.from_argv(["--smp", "1", "--module-src", "b", "--no-dwarf"], base=base)
    assert got == dataclasses.replace(base, smp=1, module_src=(Path("a"), Path("b")),
                                      no_dwarf=True)
    assert base.module_src == (Path("a"),)  # not changed
    for bad, words in ((["--smp", "x"], "invalid int value"),
                       (["--out", "o"], "unrecognized arguments: --out"),
                       (["--kernel-mod", "x"], "unrecognized arguments"),  # no abbreviations
                       (["-h"], "unrecognized arguments"),
                       (["--transport", "pigeon"], "invalid choice")):
        with pytest.raises(InputError, match=words):
            RunOptions.from_argv(bad)


def test_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    o = RunOptions(kernel=Path("bz"), module_src=(Path("a"), Path("/b")), abi="x").absolute()
    assert o == RunOptions(kernel=tmp_path / "bz", module_src=(tmp_path / "a", Path("/b")),
                           abi="x")


def test_kernel_series_are_the_debian_ones() -> None:
    from tracedep.vm.debian_kernels import SERIES

    assert run_options.KERNEL_SERIES == SERIES


def test_add_arguments_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="no such run option: smpp"):
        add_arguments(argparse.ArgumentParser(), only=("smpp",))


# --- the commands take the options they took before (2095d7a) ---------------------------------

# (flag, action, default, type, choices, required, metavar, dest) at 2095d7a
RUN_AT_2095D7A: list[tuple[Any, ...]] = [
    ("--arch", "_StoreAction", "x86_64", None, None, False, None, "arch"),
    ("--kernel-series", "_StoreAction", None, None, ("6.1", "6.12"), False, None,
     "kernel_series"),
    ("--abi", "_StoreAction", None, None, None, False, None, "abi"),
    ("--kernel", "_StoreAction", None, "Path", None, False, None, "kernel"),
    ("--kernel-modules", "_StoreAction", None, "Path", None, False, None, "kernel_modules"),
    ("--kernel-build", "_StoreAction", None, "Path", None, False, None, "kernel_build"),
    ("--vmlinux", "_StoreAction", None, "Path", None, False, None, "vmlinux"),
    ("--module-src", "_AppendAction", [], "Path", None, False, None, "module_src"),
    ("--kernel-module", "_AppendAction", [], None, None, False, "NAME", "kernel_module"),
    ("--no-modules", "_StoreTrueAction", False, None, None, False, None, "no_modules"),
    ("--workload", "_StoreAction", None, "Path", None, False, None, "workload"),
    ("--timeout", "_StoreAction", 300.0, "float", None, False, None, "timeout"),
    # added since 2095d7a (issue 15): the progress line of a long run
    ("--progress", "_StoreAction", 30.0, "float", None, False, "SECONDS", "progress"),
    ("--transport", "_StoreAction", "socket", None, ("socket", "ringbuf"), False, None,
     "transport"),
    ("--smp", "_StoreAction", 2, "int", None, False, None, "smp"),
    ("--memory", "_StoreAction", 1024, "int", None, False, None, "memory"),
    ("--accel", "_StoreAction", "auto", None, ("auto", "tcg", "kvm"), False, None, "accel"),
    ("--out", "_StoreAction", None, "Path", None, True, None, "out"),
    ("--no-dwarf", "_StoreTrueAction", False, None, None, False, None, "no_dwarf"),
    # added since 2095d7a (issue 15): what to keep of the raw pages
    ("--raw", "_StoreAction", "keep", None, ("keep", "compress", "drop"), False, None, "raw"),
]
BY_FLAG = {row[0]: row for row in RUN_AT_2095D7A}
# run's own, not run options (issue 16): the exports, which a nightly cell is never given
RUN_EXPORTS = [
    ("--kcidb", "_StoreAction", None, "Path", None, False, "FILE", "kcidb"),
    ("--sarif", "_StoreAction", None, "Path", None, False, "FILE", "sarif"),
]


def _signature(command: str) -> list[tuple[Any, ...]]:
    return [(a.option_strings[0], type(a).__name__, a.default,
             getattr(a.type, "__name__", a.type), a.choices, a.required, a.metavar, a.dest)
            for a in _subparser(command)._actions if a.option_strings != ["-h", "--help"]]


# trace's own, not a run option (issue 15): the same guest with nothing armed
TRACE_UNTRACED = ("--untraced", "_StoreTrueAction", False, None, None, False, None, "untraced")


def test_run_and_trace_options_are_unchanged() -> None:
    assert _signature("run") == RUN_AT_2095D7A + RUN_EXPORTS
    # no --no-dwarf, no --raw
    assert _signature("trace") == [*RUN_AT_2095D7A[:-2], TRACE_UNTRACED]


def test_untraced_is_traces_alone() -> None:
    assert "untraced" not in run_options.NAMES
    assert cli.build_parser().parse_args(["trace", "--out", "o", "--untraced"]).untraced
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--out", "o", "--untraced"])


def test_fetch_and_probes_options_are_unchanged() -> None:
    assert _signature("fetch") == [BY_FLAG[f] for f in ("--arch", "--kernel-series", "--abi",
                                                        "--accel", "--no-dwarf")]
    assert _signature("probes") == [BY_FLAG[f] for f in ("--arch", "--kernel-series", "--abi")]


def test_bisect_run_options() -> None:
    """2095d7a's, with --kernel-build CMD renamed and --no-modules, --transport, --progress
    added."""
    at_2095d7a = {"--match", "--repeat", "--module-src", "--kernel-module", "--kernel-build",
                  "--kernel-image", "--kernel-repo", "--kernel-modules", "--kernel-tree",
                  "--vmlinux", "--arch", "--abi", "--kernel-series", "--workload", "--timeout",
                  "--smp", "--memory", "--accel", "--no-dwarf", "--keep"}
    p = _subparser("bisect-run")
    shown = {a.option_strings[0] for a in p._actions if a.help != argparse.SUPPRESS} - {"-h"}
    assert shown == at_2095d7a - {"--kernel-build"} | {"--kernel-build-cmd", "--no-modules",
                                                       "--transport", "--progress"}
    hidden = [a for a in p._actions if a.help == argparse.SUPPRESS]
    assert [(a.option_strings, a.dest) for a in hidden] == [(["--kernel-build"],
                                                             "kernel_build_cmd")]
    sig = {row[0]: row for row in _signature("bisect-run")}
    # the run options take what `tracedep run`'s take, under their bisect-run names
    for flag, run_flag in (("--kernel-image", "--kernel"), ("--kernel-tree", "--kernel-build")):
        assert sig[flag][1:6] == BY_FLAG[run_flag][1:6]
        assert sig[flag][6] == flag[2:].upper().replace("-", "_")  # metavar as before
    for flag in shown & set(BY_FLAG):
        assert sig[flag] == BY_FLAG[flag], flag


def test_help_lists_every_option() -> None:
    for command, want in (("run", {r[0] for r in RUN_AT_2095D7A}),
                          ("trace", {r[0] for r in RUN_AT_2095D7A} - {"--no-dwarf", "--raw"}
                           | {"--untraced"}),
                          ("bisect-run", {"--kernel-build-cmd", "--kernel-image",
                                          "--kernel-tree", "--match", "--keep"})):
        text = _subparser(command).format_help()
        assert all(f"{flag} " in text or f"{flag}\n" in text for flag in want), command
    assert "--kernel-build " not in _subparser("bisect-run").format_help()


# --- the nightly and bisect spell no run option -----------------------------------------------

RUN_FLAGS = {o.flag(s) for o in run_options._OPTIONS for s in ("run", BISECT_RUN)} - {None}
ALLOWED = {
    "nightly/night.py": {"--out"},  # each cell's own run directory
    "nightly/command.py": {"--out"},  # the nightly's own output folder
    "nightly/config.py": {"--out", "--out="},  # run_args may not choose one
    "nightly/gitbisect.py": {"--kernel-build"},  # the deprecated spelling of --kernel-build-cmd
}


@pytest.mark.parametrize("rel", sorted(p.relative_to(ROOT).as_posix()
                                       for p in (ROOT / "nightly").glob("*.py")))
def test_nightly_and_bisect_spell_no_run_option(rel: str) -> None:
    tree = ast.parse((ROOT / rel).read_text())
    module_doc = ast.get_docstring(tree)
    spelled = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str) and n.value != module_doc
               and n.value.split("=")[0] in RUN_FLAGS}
    assert spelled <= ALLOWED.get(rel, set())


# --- the nightly's cells ----------------------------------------------------------------------


def test_nightly_cell_is_run_options(tmp_path: Path) -> None:
    from tracedep.nightly.config import load_config

    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "bz").write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text('kernels = [{name = "mine", image = "bz", build = "d1"}, "6.1"]\n'
                   'timeout = 120\n'
                   'run_args = ["--smp", "1", "--arch", "arm64", "--module-src", "d2", '
                   '"--no-dwarf"]\n'
                   '[driver_sets]\nmine = ["d1", "kernel:dummy"]\n')
    mine, series = load_config(cfg).cells
    assert mine.options == RunOptions(
        arch="arm64", kernel=tmp_path / "bz", kernel_build=tmp_path / "d1",
        module_src=(tmp_path / "d1", Path("d2")), kernel_module=("dummy",), timeout=120.0,
        smp=1, no_dwarf=True)
    assert series.options.kernel_series == "6.1" and series.options.kernel is None
    for cell in (mine, series):  # what a night runs parses back to the cell's options
        got = _parse("run", [*cell.args, "--out", "r"])
        assert got == dataclasses.replace(cell.options, out=Path("r"))


@pytest.mark.parametrize("run_args, words", [
    ('["--smp", "many"]', "argument --smp: invalid int value"),
    ('["--colour"]', "unrecognized arguments: --colour"),
    ('["--out=x"]', "--out is chosen by the nightly"),
])
def test_nightly_checks_run_args_when_loading(tmp_path: Path, run_args: str, words: str) -> None:
    from tracedep.nightly.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_args = {run_args}\n[driver_sets]\nb = "bundled"\n')
    with pytest.raises(ConfigError, match=f"key 'run_args': {words}"):
        load_config(cfg)


def test_bisect_passes_every_run_option_on() -> None:
    from tracedep.nightly import gitbisect

    a = gitbisect._run_args(["--match", "recursive-locking", "--kernel-build-cmd", "make",
                             "--kernel-image", "/bz", "--kernel-tree", "/t", "--transport",
                             "ringbuf", "--no-modules", "--smp", "1"])
    want = RunOptions(kernel=Path("/bz"), kernel_build=Path("/t"), transport="ringbuf",
                      no_modules=True, smp=1)
    assert _parse("run", [*gitbisect.run_argv(a), "--out", "o"]) == \
        dataclasses.replace(want, out=Path("o"))


def test_raw_retention_modes_are_the_tracers() -> None:
    from tracedep.tracer.retention import MODES

    assert run_options.RAW_RETENTION == MODES
