"""Which Debian kernel a run uses (vm/debian_kernels.py), and the series other than the default.

The resolver tests feed a fake apt (what ``apt-cache`` printed on a Debian 12 host on
2026-12-03, reduced); the guest test boots the other series' newest kernel, so CI
runs both series on x86_64 (the default series on arm64 is in test_arm64.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import check_expected, expectations, run_tracedep

from tracedep.errors import InputError
from tracedep.vm.debian_kernels import (
    DEFAULT_SERIES,
    SERIES,
    Apt,
    KernelPackages,
    resolve,
    series_of,
)

EXPECT = expectations()
BUG_MODULES = sorted(m for m, e in EXPECT.items() if e["findings"])


class FakeApt(Apt):
    """Candidates and Depends as apt-cache would give them for these packages."""

    def __init__(self, cand: dict[str, str], depends: dict[str, str]) -> None:
        self.cand = cand
        self.deps = depends

    def names(self, prefix: str) -> list[str]:
        return sorted({n.split(":")[0] for n in self.cand if n.startswith(prefix)})

    def candidates(self, names: list[str]) -> dict[str, str]:
        return {n: self.cand[n] for n in names if n in self.cand}

    def depends(self, name: str, version: str) -> str:
        return self.deps.get(name, "")


def _abi(abi: str, version: str, arch: str = "amd64", dbg: bool = True) -> dict[str, str]:
    r = f"{abi}-cloud-{arch}"
    out = {f"linux-image-{r}-unsigned": version, f"linux-headers-{r}": version,
           f"linux-headers-{abi}-common": version}
    if dbg:
        out[f"linux-image-{r}-dbg"] = version
    return out


def archive() -> FakeApt:
    cand = {**_abi("6.1.0-56", "6.1.192-2"), **_abi("6.1.0-57", "6.1.192-3"),
            **_abi("6.12.117+deb12", "6.12.117-1~deb12u1"),
            **_abi("6.12.118+deb12", "6.12.118-1~deb12u1", dbg=False),
            # only the newest 6.1 kbuild is left in the archive
            "linux-kbuild-6.1": "6.1.192-3",
            "linux-kbuild-6.12.117+deb12": "6.12.117-1~deb12u1",
            "linux-kbuild-6.12.118+deb12": "6.12.118-1~deb12u1"}
    deps = {"linux-headers-6.1.0-56-cloud-amd64":
            "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2)",
            "linux-headers-6.1.0-57-cloud-amd64":
            "linux-headers-6.1.0-57-common (= 6.1.192-3), linux-kbuild-6.1 (>= 6.1.192-3)",
            "linux-headers-6.12.117+deb12-cloud-amd64":
            "linux-base (>= 4.12~), linux-kbuild-6.12.117+deb12, gcc-12",
            "linux-headers-6.12.118+deb12-cloud-amd64":
            "linux-base (>= 4.12~), linux-kbuild-6.12.118+deb12, gcc-12"}
    return FakeApt(cand, deps)


def test_newest_complete_kernel_of_the_series_is_chosen() -> None:
    pk = resolve("cloud-amd64", "amd64", "amd64", series="6.1", apt=archive())
    assert (pk.abi, pk.release, pk.image.version) == ("6.1.0-57", "6.1.0-57-cloud-amd64",
                                                      "6.1.192-3")
    assert pk.kbuild == pk.kbuild.__class__("linux-kbuild-6.1", "6.1.192-3", "amd64")
    assert pk.notes == ()


def test_a_newer_abi_without_its_dbg_package_is_skipped_and_said_so() -> None:
    pk = resolve("cloud-amd64", "amd64", "amd64", series="6.12", apt=archive())
    assert pk.abi == "6.12.117+deb12"
    assert any("6.12.118+deb12: no linux-image-6.12.118+deb12-cloud-amd64-dbg" in n
               for n in pk.notes), pk.notes


def test_an_older_abi_takes_the_newer_kbuild_of_the_same_upstream_and_says_so() -> None:
    pk = resolve("cloud-amd64", "amd64", "amd64", abi="6.1.0-56", apt=archive())
    assert (pk.headers.version, pk.kbuild.version) == ("6.1.192-2", "6.1.192-3")
    assert any("another Debian revision" in n for n in pk.notes)


def test_a_kbuild_of_another_upstream_is_refused() -> None:
    apt = archive()
    apt.cand["linux-kbuild-6.1"] = "6.1.193-1"
    with pytest.raises(InputError) as e:
        resolve("cloud-amd64", "amd64", "amd64", series="6.1", apt=apt)
    assert "built for another kernel" in str(e.value) and "6.12: 6.12" in str(e.value)


def test_a_kernel_that_cannot_be_had_names_what_can() -> None:
    with pytest.raises(InputError) as e:
        resolve("cloud-amd64", "amd64", "amd64", abi="6.1.0-55", apt=archive())
    msg = str(e.value)
    assert "\n" not in msg and "6.1.0-55" in msg and "6.1.0-57, 6.1.0-56" in msg


def test_foreign_architecture_packages_are_qualified() -> None:
    apt = FakeApt({f"{k}:arm64" if "arm64" in k else k: v
                   for k, v in _abi("6.12.118+deb12", "6.12.118-1~deb12u1", "arm64").items()}
                  | {"linux-kbuild-6.12.118+deb12": "6.12.118-1~deb12u1"},
                  {"linux-headers-6.12.118+deb12-cloud-arm64": "linux-kbuild-6.12.118+deb12"})
    pk = resolve("cloud-arm64", "arm64", "amd64", series="6.12", apt=apt)
    assert pk.image.spec == ("linux-image-6.12.118+deb12-cloud-arm64-unsigned:arm64="
                             "6.12.118-1~deb12u1")
    assert pk.headers_common.spec == "linux-headers-6.12.118+deb12-common=6.12.118-1~deb12u1"
    # kbuild's tools run on the host
    assert pk.kbuild.spec == "linux-kbuild-6.12.118+deb12:amd64=6.12.118-1~deb12u1"
    assert KernelPackages.from_json(json.loads(json.dumps(pk.to_json()))) == pk


@pytest.mark.parametrize("abi,series", [("6.1.0-57", "6.1"), ("6.12.118+deb12", "6.12")])
def test_both_abi_forms(abi: str, series: str) -> None:
    assert series_of(abi) == series


@pytest.mark.parametrize("bad", ["6.1.0", "6.12.118", "6.1.0-57-cloud-amd64", "x; rm -rf /"])
def test_bad_abi_is_one_clear_error(bad: str) -> None:
    with pytest.raises(InputError):
        series_of(bad)


def test_the_host_can_resolve_both_series() -> None:
    """This host's real apt lists (make test runs host-setup first) have both series."""
    for s in SERIES:
        pk = resolve("cloud-amd64", "amd64", "amd64", series=s)
        assert pk.series == s and pk.dbg is not None


# --- the other series, booted -----------------------------------------------------------------

OTHER_SERIES = next(s for s in SERIES if s != DEFAULT_SERIES)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("series") / "run"
    res = run_tracedep("run", "--kernel-series", OTHER_SERIES, "--out", out)
    assert res.rc == 1, res.explain()
    return out, json.loads((out / "findings.json").read_text())


@pytest.mark.guest
def test_other_series_records_its_packages(other_run: tuple[Path, list[dict]]) -> None:
    m = json.loads((other_run[0] / "manifest.json").read_text())
    pk = KernelPackages.from_json(m["kernel"]["packages"])
    assert pk.series == OTHER_SERIES and m["kernel"]["release"] == pk.release
    assert m["state"] == "complete"


@pytest.mark.guest
@pytest.mark.parametrize("module", sorted(EXPECT))
def test_other_series_expected_findings(other_run: tuple[Path, list[dict]], module: str) -> None:
    problems = check_expected(other_run[1], module, heap_names=True)
    assert not problems, "\n".join(problems)


@pytest.mark.guest
def test_other_series_nothing_outside_the_bug_drivers(other_run: tuple[Path, list[dict]]) -> None:
    others = [f"{f['driver']}: {f['kind']}: {f['message']}" for f in other_run[1]
              if f["driver"] not in BUG_MODULES]
    assert not others, "\n".join(others)
