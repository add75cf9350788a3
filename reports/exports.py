"""Writing the exports (``--kcidb FILE``, ``--sarif FILE``) of one run or many.

Each file is written whole or not at all (``common.files.atomic_write``); ``-`` is
standard output.  JSON only: every string a guest or a file gave goes through
``json.dumps``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tracedep.common.files import atomic_write
from tracedep.common.jsonvalue import JSONObject
from tracedep.errors import InputError
from tracedep.reports.export_runs import ExportRun
from tracedep.reports.kcidb import kcidb_document
from tracedep.reports.sarif import sarif_document

FORMATS = ("kcidb", "sarif")


def check_output(path: Path) -> None:
    """Refuse, before any work, a file that cannot be written there."""
    if str(path) == "-":
        return
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file to write")
    if not path.absolute().parent.is_dir():
        raise InputError(f"{path.absolute().parent}: no such directory")


def write_json(path: Path, doc: JSONObject) -> None:
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    check_output(path)
    atomic_write(path, text)


def document(fmt: str, runs: Sequence[ExportRun]) -> JSONObject:
    if fmt == "kcidb":
        return kcidb_document(runs)
    if fmt == "sarif":
        return sarif_document(runs)
    raise ValueError(f"no export format {fmt!r}")


def write_exports(runs: Sequence[ExportRun], kcidb: Path | None = None,
                  sarif: Path | None = None) -> None:
    """Write the KCIDB and/or SARIF document of ``runs`` where asked."""
    if kcidb is not None:
        write_json(kcidb, kcidb_document(runs))
    if sarif is not None:
        write_json(sarif, sarif_document(runs))
