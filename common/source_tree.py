"""Where a source folder came from: the git work tree it lies in, and its commit.

The exports a CI system reads (KCIDB's checkout, SARIF's source root) name the
driver tree's commit and make paths relative to its top.  Git is asked with an
argument list (never a shell string: a path is the user's, or the guest's, and
may hold any character) and a time limit; a folder that is not in a work tree, a
``git`` that is missing, slow or refuses (a repository owned by another user)
all answer None: the export then says less, it does not fail.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 10.0
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class SourceTree:
    """A git work tree: its top folder, the commit checked out, and (where known) the
    branch and the ``origin`` remote's URL."""

    root: Path
    commit: str  # 40 hex digits
    branch: str | None = None
    url: str | None = None


def _git(where: Path, *args: str) -> str | None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        p = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                           timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    out = p.stdout.strip()
    return out if p.returncode == 0 and out else None


@functools.lru_cache(maxsize=256)
def _tree(folder: str) -> SourceTree | None:
    where = Path(folder)
    if not where.is_dir():
        return None
    top = _git(where, "rev-parse", "--show-toplevel")
    commit = _git(where, "rev-parse", "HEAD")
    if top is None or commit is None or not _COMMIT.match(commit):
        return None
    branch = _git(where, "symbolic-ref", "--quiet", "--short", "HEAD")
    url = _git(where, "config", "--get", "remote.origin.url")
    return SourceTree(Path(top), commit, branch, url)


def git_tree(folder: Path | str | None) -> SourceTree | None:
    """The git work tree ``folder`` lies in, or None (no folder, no git, no work tree)."""
    if folder is None or str(folder) == "":
        return None
    return _tree(str(Path(folder).absolute()))
