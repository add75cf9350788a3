"""tracer.page_sums: the sidecar of a raw file is the CRC-32 of each whole page,
written reading the file a piece at a time (a 30-minute trace is gigabytes a CPU:
reading it whole took 3.7 GB of RSS at the end of a run)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN

from tracedep.tracer import page_sums

PAGE = 4096


@pytest.mark.parametrize("read_pages", [1, 3, 4096])
@pytest.mark.parametrize("extra", [0, 100])  # a torn last page is not summed
def test_sums_read_in_pieces_are_the_whole_files(tmp_path: Path, read_pages: int, extra: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = (TINY_RUN / "trace" / "cpu0.raw").read_bytes()
    data = (data * 4)[: 10 * PAGE + extra]
    raw = tmp_path / "cpu0.raw"
    raw.write_bytes(data)
    monkeypatch.setattr(page_sums, "READ_PAGES", read_pages)
    side = page_sums.write(raw, PAGE)
    want = [zlib.crc32(data[i * PAGE:(i + 1) * PAGE]) for i in range(len(data) // PAGE)]
    assert np.fromfile(side, dtype="<u4").tolist() == want
    assert page_sums.recorded_pages(raw) == 10
    assert not page_sums.damaged(raw, data, PAGE).any()


def test_an_empty_file_has_no_sums(tmp_path: Path) -> None:
    raw = tmp_path / "cpu1.raw"
    raw.write_bytes(b"")
    assert page_sums.write(raw, PAGE).stat().st_size == 0
