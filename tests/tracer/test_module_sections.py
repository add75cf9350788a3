"""The kernel's account of each module load's sections (tracer.module_sections).

The guest proof is tests/cli/test_faults.py ``test_module_whose_init_fails``: a module
freed by its failing init is symbolized from it, and for a module that loads the
account equals the guest's /sys/module report.
"""

from __future__ import annotations

from tracedep.tracer import module_sections as ms


def _row(ts: int, cpu: int, chunk: int, name: str, n: int, first: int) -> tuple[
        int, int, int, str, int, list[tuple[str, int]]]:
    secs = [(f".s{first + j}", 0x1000 * (first + j + 1)) for j in range(ms.CHUNK)]
    return ts, cpu, chunk, name, n, secs


def test_chunks_fire_newest_probe_first() -> None:
    """Several kprobes on one address run newest first: the last chunk's record comes
    first in time.  Two loads on two CPUs, interleaved, one of them on one CPU twice."""
    n = ms.CHUNK + 3
    rows = [_row(10, 0, 1, "a", n, ms.CHUNK), _row(11, 0, 0, "a", n, 0),
            _row(12, 1, 1, "b", n, ms.CHUNK), _row(13, 1, 0, "b", n, 0),
            _row(20, 0, 1, "a", n, ms.CHUNK), _row(21, 0, 0, "a", n, 0)]
    loads = ms.assemble(rows)
    assert [(ld.name, ld.cpu, ld.ts_ns, ld.chunks) for ld in loads] == [
        ("a", 0, 10, 2), ("b", 1, 12, 2), ("a", 0, 20, 2)]
    for ld in loads:
        assert ld.complete
        # sections past nsections are what the fetch read beyond the array: dropped
        assert sorted(ld.sections) == sorted(f".s{i}" for i in range(n))


def test_a_missing_chunk_is_incomplete_and_nameless_sections_are_dropped() -> None:
    n = ms.CHUNK + 3
    row = _row(11, 0, 0, "a", n, 0)
    row[5][0] = ("", 0x1234)  # a failed string fetch
    (ld,) = ms.assemble([row])
    assert not ld.complete and ld.chunks == 1
    assert ".s0" not in ld.sections and len(ld.sections) == ms.CHUNK - 1


def test_event_names() -> None:
    assert ms.parse_event("ms0_do_init_module") == 0
    assert ms.parse_event(f"ms{ms.CHUNKS - 1}_do_init_module") == ms.CHUNKS - 1
    assert ms.parse_event(f"ms{ms.CHUNKS}_do_init_module") is None
    assert ms.parse_event("msx_do_init_module") is None
    assert ms.parse_event("ms0_other") is None
    assert ms.parse_event("lk_ms0_do_init_module") is None
