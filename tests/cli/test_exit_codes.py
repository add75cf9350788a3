"""Exit codes of the command line: 0 clean, 1 findings, 2 bad input, 3 run failed,
4 an internal error, which is one line naming a crash log (never a traceback)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tracedep import cli
from tracedep.errors import INTERNAL_ERROR, InputError


def _with_command(monkeypatch: pytest.MonkeyPatch, func: object) -> None:
    # build_parser() looks the command up when main() calls it
    monkeypatch.setattr(cli, "cmd_report", func)


def _raises(e: BaseException) -> object:
    def run(_: argparse.Namespace) -> int:
        raise e
    return run


def test_a_defect_is_exit_4_with_a_crash_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRACEDEP_CACHE", str(tmp_path))
    _with_command(monkeypatch, _raises(KeyError("no such column")))
    assert cli.main(["report", str(tmp_path)]) == INTERNAL_ERROR == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("tracedep: internal error (KeyError: 'no such column'); details in ")
    log = Path(err.strip().rsplit(" ", 1)[1])
    assert log.parent == tmp_path / "crashes"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "KeyError" in text
    assert text.startswith(f"tracedep report {tmp_path}\n")


def test_the_machine_refusing_is_one_line_exit_3(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _with_command(monkeypatch, _raises(OSError(28, "No space left on device", "/x/findings.json")))
    assert cli.main(["report", "/x"]) == 3
    err = capsys.readouterr().err
    assert err == "tracedep: error: No space left on device (/x/findings.json)\n"


def test_bad_input_stays_exit_2(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _with_command(monkeypatch, _raises(InputError("trace/cpu0.raw: not a trace")))
    assert cli.main(["report", "/x"]) == 2
    assert capsys.readouterr().err == "tracedep: error: trace/cpu0.raw: not a trace\n"
