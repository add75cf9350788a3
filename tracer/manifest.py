"""``manifest.json``: everything about a run that is not an event.

Written when the run starts (``state: running``) and rewritten atomically as
it progresses, so a run killed at any point leaves a readable manifest that
says how far it got.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_VERSION = "1.0"


def write(run_dir: Path, data: dict[str, Any]) -> None:
    data = {"manifest_version": MANIFEST_VERSION, **data}
    tmp = run_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, run_dir / "manifest.json")


def read(run_dir: Path) -> dict[str, Any]:
    from tracedep.errors import InputError

    path = run_dir / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run_dir}: not a tracedep run directory (no manifest.json)") from None
    except ValueError as e:
        raise InputError(f"{path}: unreadable manifest: {e}") from None
    major = str(data.get("manifest_version", "0")).split(".")[0]
    if major != MANIFEST_VERSION.split(".")[0]:
        raise InputError(f"{path}: manifest version {data.get('manifest_version')} "
                         f"is not supported (this tracedep reads {MANIFEST_VERSION})")
    return data
