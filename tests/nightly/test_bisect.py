"""Bisecting a finding: the matcher, the exit codes, and a real ``git bisect run``.

The guest test makes a throwaway git repository of a tiny driver with seven
commits, the fourth of which allocates with GFP_KERNEL under a spinlock, and
asks ``tracedep bisect`` (git bisect start/run/reset around ``tracedep
bisect-run``) for the first bad commit.  Git tests two commits to find it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tracedep.analysis.findings import Finding
from tracedep.cli import main
from tracedep.errors import InputError
from tracedep.nightly.gitbisect import Match, _run_args, bisect_run_argv, functions
from tracedep.reports.serialize import load_run_outputs

DATA = Path(__file__).parents[1] / "data"
BUNDLED = DATA / "analysis" / "bundled"
BROKEN = DATA / "drivers" / "td_broken"


# --- matching -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    return load_run_outputs(BUNDLED).findings


def test_match_by_signature_kind_and_function(findings: list[Finding]) -> None:
    f = next(f for f in findings if f.driver == "td_alloc_spin_bug")
    assert Match.parse(f.signature).matches(f)
    assert Match.parse("sleep-in-atomic").matches(f)
    assert not Match.parse("lock-order-inversion").matches(f)
    # the rule's function, the first frame's, and an inlined frame further down
    assert f.details["function"] in functions(f)
    assert Match.parse(f"sleep-in-atomic:{f.details['function']}").matches(f)
    assert Match.parse(f"sleep-in-atomic:{f.sites[0].frames[0].function}").matches(f)
    assert Match.parse("sleep-in-atomic:td_ring_add_entry").matches(f)
    assert not Match.parse("sleep-in-atomic:td_no_such_function").matches(f)
    assert not Match.parse("lock-order-inversion:td_ring_add_entry").matches(f)
    others = [g for g in findings if g is not f]
    assert not any(Match.parse(f.signature).matches(g) for g in others)


def test_match_rejects_unknown_kind() -> None:
    with pytest.raises(InputError, match="unknown finding kind 'sleep-in-atomc'"):
        Match.parse("sleep-in-atomc:foo")


def test_helper_passes_every_argument_on(tmp_path: Path) -> None:
    """What `tracedep bisect` hands to git bisect run parses back to the same request."""
    (tmp_path / "w.sh").write_text("true\n")
    argv = ["--match", "sleep-in-atomic:f", "--repeat", "3", "--kernel-build-cmd",
            "make -j8 bzImage", "--kernel-image", "arch/x86/boot/bzImage", "--kernel-tree", ".",
            "--module-src", "drv", "--vmlinux", "vmlinux", "--workload", str(tmp_path / "w.sh"),
            "--arch", "arm64", "--abi", "6.1.0-56", "--timeout", "99", "--smp", "1", "--memory",
            "512", "--accel", "tcg", "--no-dwarf", "--keep", "k", "--transport", "ringbuf",
            "--no-modules"]
    a = _run_args(argv)
    again = _run_args(bisect_run_argv(a))
    for k, v in vars(a).items():
        w = getattr(again, k)
        if isinstance(v, Path):
            assert w == v.absolute(), k
        elif k == "module_src":
            assert w == [p.absolute() for p in v]
        else:
            assert w == v, k


# --- exit codes without a guest --------------------------------------------------------------


def test_module_that_does_not_build_is_skip(tmp_path: Path) -> None:
    rc = main(["bisect-run", "--module-src", str(BROKEN), "--match", "sleep-in-atomic",
               "--keep", str(tmp_path)])
    assert rc == 125
    (verdict,) = tmp_path.glob("*.json")
    assert '"verdict": "skip"' in verdict.read_text()


def test_failed_kernel_build_is_skip(tmp_path: Path) -> None:
    rc = main(["bisect-run", "--kernel-build-cmd", "exit 1", "--kernel-image",
               str(tmp_path / "bzImage"), "--match", "sleep-in-atomic"])
    assert rc == 125


def test_old_kernel_build_spelling_still_works(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """bisect-run's --kernel-build CMD is --kernel-build-cmd now; the old spelling warns."""
    rc = main(["bisect-run", "--kernel-build", "exit 1", "--kernel-image",
               str(tmp_path / "bzImage"), "--match", "sleep-in-atomic"])
    assert rc == 125
    err = capsys.readouterr().err
    assert "--kernel-build CMD is now --kernel-build-cmd CMD" in err
    a = _run_args(["--kernel-build", "make", "--kernel-image", "bzImage", "--match",
                   "recursive-locking"])
    assert a.kernel_build_cmd == "make" and a.kernel_build is None  # not the build tree
    assert "--kernel-build-cmd" in bisect_run_argv(a)
    assert "--kernel-build" not in bisect_run_argv(a)


@pytest.mark.parametrize("argv, words", [
    (["bisect-run", "--module-src", "x", "--match", "nonsense"], "unknown finding kind"),
    (["bisect-run", "--kernel-build-cmd", "make", "--match", "sleep-in-atomic"],
     "needs --kernel-image"),
    (["bisect-run", "--match", "sleep-in-atomic"], "give --module-src"),
])
def test_bad_bisect_run_arguments(argv: list[str], words: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_helper_refuses_a_directory_outside_git(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "drv").mkdir()
    rc = main(["bisect", "HEAD~1", "HEAD", "--", "--module-src", str(tmp_path / "drv"),
               "--match", "sleep-in-atomic"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not in a git repository" in err and err.count("\n") == 1


def test_helper_checks_arguments_before_bisecting(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    repo = _repo(tmp_path / "repo", bug_at=None, commits=2)
    assert main(["bisect", "HEAD~1", "HEAD", "--", "--module-src", str(repo),
                 "--match", "sleep-in-atomc"]) == 2
    assert main(["bisect", "HEAD~1", "no-such-rev", "--", "--module-src", str(repo),
                 "--match", "sleep-in-atomic"]) == 2
    err = capsys.readouterr().err
    assert "unknown finding kind" in err and "no-such-rev: no such commit" in err
    assert not (repo / ".git" / "BISECT_START").exists()


def test_helper_with_every_commit_skipped_is_exit_3(tmp_path: Path) -> None:
    """The whole helper around a real `git bisect run`, no guest: every build fails."""
    repo = _repo(tmp_path / "repo", bug_at=None, commits=4)
    revs = _git(repo, "rev-list", "--reverse", "HEAD").split()
    proc = subprocess.run(
        [sys.executable, "-m", "tracedep.cli", "bisect", "--repo", str(repo), "--keep",
         str(tmp_path / "runs"), revs[0], revs[-1], "--", "--kernel-build-cmd", "exit 1",
         "--kernel-image", str(tmp_path / "bzImage"), "--match", "sleep-in-atomic"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "kernel build failed" in proc.stdout and "skip" in proc.stdout
    assert "no single first bad commit" in proc.stderr
    assert _git(repo, "rev-parse", "HEAD") == revs[-1]
    assert not (repo / ".git" / "BISECT_START").exists()


# --- a real bisection ---------------------------------------------------------------------------

DRIVER = """\
// SPDX-License-Identifier: GPL-2.0
/* td_bisect: a pool refilled under a spinlock (tracedep bisect test). */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>
{param}
static DEFINE_SPINLOCK(td_bs_lock);
static void *td_bs_pool[4];
static unsigned int td_bs_{count};

static noinline void td_bs_refill(unsigned int i)
{{
	spin_lock(&td_bs_lock);
	td_bs_pool[i] = kmalloc(128, {gfp});
	td_bs_{count}++;
	spin_unlock(&td_bs_lock);
}}

static void td_bs_work_fn(struct work_struct *work)
{{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(td_bs_pool); i++)
		td_bs_refill(i);
}}
static DECLARE_WORK(td_bs_work, td_bs_work_fn);

static int __init td_bs_init(void)
{{
	schedule_work(&td_bs_work);
	flush_work(&td_bs_work);
	return 0;
}}

static void __exit td_bs_exit(void)
{{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(td_bs_pool); i++)
		kfree(td_bs_pool[i]);
}}

module_init(td_bs_init);
module_exit(td_bs_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("{desc}");
"""

# (subject, what the driver looks like after it); the 4th brings the bug
HISTORY = [
    ("td_bisect: a refill pool", {}),
    ("td_bisect: describe the module", {"desc": "tracedep bisect test pool"}),
    ("td_bisect: count refills", {"count": "refills"}),
    ("td_bisect: refill with GFP_KERNEL", {"gfp": "GFP_KERNEL"}),
    ("td_bisect: pool size parameter", {"param": "static int td_bs_size = 4;\n"
                                                 "module_param(td_bs_size, int, 0444);\n"}),
    ("td_bisect: reword the description", {"desc": "tracedep bisect test: refill pool"}),
    ("td_bisect: rename the counter", {"count": "nr_refills"}),
]


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def _repo(repo: Path, bug_at: int | None, commits: int = len(HISTORY)) -> Path:
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    state = {"param": "", "count": "refills_unused", "gfp": "GFP_ATOMIC",
             "desc": "tracedep bisect test"}
    (repo / "Kbuild").write_text("obj-m := td_bisect.o\n")
    for i, (subject, change) in enumerate(HISTORY[:commits]):
        state.update(change)
        if bug_at is None or i < bug_at:
            state["gfp"] = "GFP_ATOMIC"
        (repo / "td_bisect.c").write_text(DRIVER.format(**state))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", subject)
    return repo


@pytest.mark.guest
def test_bisect_names_the_commit_that_brought_the_bug(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "td_bisect", bug_at=3)
    revs = _git(repo, "rev-list", "--reverse", "HEAD").split()
    assert len(revs) == 7
    culprit = revs[3]
    assert "GFP_KERNEL" in _git(repo, "show", culprit, "--", "td_bisect.c")
    proc = subprocess.run(
        [sys.executable, "-m", "tracedep.cli", "bisect", "--keep", str(tmp_path / "runs"),
         revs[0], revs[-1], "--", "--module-src", str(repo),
         "--match", "sleep-in-atomic:td_bs_refill", "--smp", "1"],
        capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"first bad commit: {culprit}  {culprit[:7]} td_bisect: refill with GFP_KERNEL" \
        in out, out
    assert "finding: sleep-in-atomic in td_bisect: kmalloc(GFP_KERNEL)" in out
    assert "td_bs_refill" in out
    # git bisect run really ran tracedep bisect-run, and the repository is left as it was
    assert "bisect-run" in out and "is the first bad commit" in out
    assert _git(repo, "rev-parse", "HEAD") == revs[-1]
    assert _git(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / "BISECT_START").exists()
    tested = sorted(p.stem for p in (tmp_path / "runs").glob("*.json"))
    assert culprit in tested and len(tested) <= 3, textwrap.shorten(out, 4000)
