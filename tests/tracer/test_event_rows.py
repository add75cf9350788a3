"""tracer.event_rows' vectorised helpers against their plain definitions."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tracedep.tracer import ring_pages
from tracedep.tracer.event_rows import _gather, sorted_unique


@pytest.fixture(params=["c", "numpy"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both gathers: the C one (tracer/native/ringwalk.c) and numpy's, its fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(ring_pages, "gather", lambda *a: None)
    else:
        assert ring_pages._native() is not None, "the C walker did not build"
    return str(request.param)


FORMATS = {(1, False): "<B", (1, True): "<b", (2, False): "<H", (2, True): "<h",
           (4, False): "<I", (4, True): "<i", (8, False): "<Q", (8, True): "<q"}


@pytest.mark.parametrize(("size", "signed"), sorted(FORMATS))
@pytest.mark.parametrize("align", [1, 2, 4, 8])
def test_gather_reads_what_struct_reads_at_any_offset(size: int, signed: bool,
                                                      align: int, way: str) -> None:
    rng = np.random.default_rng(size * 16 + align + signed)
    buf = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    arr = np.frombuffer(buf, dtype=np.uint8)
    offs = rng.integers(0, (len(buf) - size) // align + 1, 700).astype(np.int64) * align
    offs = np.concatenate([offs, [0, len(buf) - size]])  # both ends of the buffer
    got = _gather(arr, offs, size, signed)
    want = [struct.unpack_from(FORMATS[(size, signed)], buf, int(o))[0] for o in offs]
    assert got.tolist() == want
    assert got.dtype.itemsize == size and got.dtype.kind == ("i" if signed else "u")


def test_gather_refuses_an_offset_past_the_end_and_odd_sizes(way: str) -> None:
    arr = np.zeros(64, dtype=np.uint8)
    with pytest.raises(IndexError):
        _gather(arr, np.array([60], dtype=np.int64), 8, False)
    with pytest.raises(IndexError):
        _gather(arr, np.array([0, 8, 57], dtype=np.int64), 8, True)
    with pytest.raises(IndexError):
        _gather(arr, np.array([64], dtype=np.int64), 1, False)
    with pytest.raises(ValueError, match="3-byte"):
        _gather(arr, np.array([0], dtype=np.int64), 3, False)


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_sorted_unique_is_numpy_unique(n: int) -> None:
    v = np.random.default_rng(n).integers(-5, 40, n).astype(np.int32)
    want_u, want_i = np.unique(v, return_inverse=True)
    got_u, got_i = sorted_unique(v)
    assert got_u.dtype == want_u.dtype
    assert got_u.tolist() == want_u.tolist() and got_i.tolist() == want_i.reshape(-1).tolist()
