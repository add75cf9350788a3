"""The held-lock replay's loop in C (analysis/native/replay.c), fed from Python.

:class:`heldlocks.Replayer` hands each chunk here when the C library could be built
(common.native); its Python loop stays the reference and the fallback.  Strings never
reach C: a chunk's text columns become codes into tables kept for the whole replay
(lock types, event names, the lock functions they name), and each code's properties
are computed here with the very expressions of the Python loop (``lt in SPIN_TYPES``,
``"nested" in flags``, ``LOCK_FUNCS.get(fn)`` …).  Every other column goes as a numpy
array.  The state between chunks lives in C; :meth:`NativeReplayer.finish` reads the
:class:`Replay` back, field for field what the Python loop gives
(tests/analysis/test_replay_native.py).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable, Hashable
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np
import pandas as pd

from tracedep.analysis.acquisitions import (
    COLUMN_DTYPES,
    CTX_NAMES,
    FORCED_REASONS,
    acq_frame,
)
from tracedep.analysis.replay_inputs import replay_rows
from tracedep.analysis.replay_types import (
    ENABLED_HARDIRQ,
    ENABLED_HARDIRQ_READ,
    ENABLED_SOFTIRQ,
    ENABLED_SOFTIRQ_READ,
    RECURSIVE_READ,
    SHARED_TYPES,
    SPIN_TYPES,
    USED_IN_HARDIRQ,
    USED_IN_HARDIRQ_READ,
    USED_IN_SOFTIRQ,
    USED_IN_SOFTIRQ_READ,
    EdgeAcc,
    Forced,
    HolderOnStack,
    Recursion,
    Replay,
    RowSet,
    SleepEvent,
)
from tracedep.common import native
from tracedep.tracer.probes import LOCK_FUNCS, SLEEPING_LOCK_TYPES

# replay.c's codes
KIND_CODE = {"gap": 0, "lock_acquire": 1, "lock_return": 2, "lock_release": 3,
             "sched_switch": 4, "marker": 5}  # anything else: 6, a may-sleep event
K_ACQUIRE = 1
USAGE_BITS = (USED_IN_HARDIRQ, USED_IN_HARDIRQ_READ, USED_IN_SOFTIRQ, USED_IN_SOFTIRQ_READ,
              ENABLED_HARDIRQ, ENABLED_HARDIRQ_READ, ENABLED_SOFTIRQ, ENABLED_SOFTIRQ_READ)
SLEEP_REASONS = ("hardirq", "softirq", "spinlock", "irqs-off", "bh-off", "preempt")
_ERRORS: dict[int, tuple[type[Exception], str]] = {
    -1: (MemoryError, "the native replay ran out of memory"),
    -2: (ValueError, "the native replay was given a code outside its tables"),
    -4: (OverflowError, "more than 127 lock types acquired (signed char is greater than "
                        "maximum)"),
    -5: (TypeError, "lock_flags of a lock event is not a string"),
    -6: (TypeError, "event of a lock event is not a string"),
    -7: (RuntimeError, "the native replay lost an open acquisition (a drain handed it out)"),
}
_HOLDER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Chunk(ctypes.Structure):
    """replay.c's struct td_chunk."""

    _fields_ = [("n", _I64), ("row", _P), ("task", _P), ("cpu", _P), ("ts", _P),
                ("value", _P), ("target", _P), ("depth", _P), ("cls", _P), ("addr", _P),
                ("kind", _P), ("irqs_off", _P), ("bh_off", _P), ("hard", _P), ("soft", _P),
                ("nmi", _P), ("flags", _P), ("suspect", _P), ("lt", _P), ("ev", _P),
                ("lt_props", _P), ("n_lt", _I64), ("ev_props", _P), ("ev_fn", _P),
                ("n_ev", _I64), ("holder", _HOLDER)]


def library() -> ctypes.CDLL | None:
    """The compiled replay.c, or None (no compiler, or ``TRACEDEP_NATIVE=0``)."""
    lib = native.load(Path(__file__).resolve().parent / "native" / "replay.c",
                      "held-lock replay")
    if lib is not None:
        lib.td_rp_new.restype = _P
        lib.td_rp_new.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, _I64, _P, _I64,
                                  _P, _I64]
        lib.td_rp_free.argtypes = [_P]
        lib.td_rp_feed.argtypes = [_P, ctypes.POINTER(_Chunk)]
        lib.td_rp_feed.restype = ctypes.c_int
        lib.td_rp_counts.argtypes = [_P, _P]
        lib.td_rp_select.argtypes = [_P, ctypes.c_int]
        lib.td_rp_select.restype = _I64
        lib.td_rp_take.argtypes = [_P, ctypes.POINTER(_P)]
        lib.td_rp_take.restype = ctypes.c_int
        lib.td_rp_types.argtypes = [_P, _P]
        lib.td_rp_acq_bytes.argtypes = [_P]
        lib.td_rp_acq_bytes.restype = _I64
        lib.td_rp_block_shift.argtypes = [_P, ctypes.c_int]
        lib.td_rp_block_shift.restype = ctypes.c_int
        lib.td_rp_get.argtypes = [_P] * 9
        lib.td_rp_get_from.argtypes = [_P] * 6
        lib.td_rp_get_from.restype = ctypes.c_int
        lib.td_rp_pending_rows.argtypes = [_P, _P]
        lib.td_rp_forget_sleeps.argtypes = [_P, _I64, _I64]
        lib.td_rp_forget_sleeps.restype = ctypes.c_int
        lib.td_rp_pending_suspect.argtypes = [_P, _P]
    return lib


def _lt_props(v: Hashable) -> int:
    return ((v in SPIN_TYPES) | (v in SHARED_TYPES) << 1 | (v in RECURSIVE_READ) << 2
            | (v in SLEEPING_LOCK_TYPES) << 3 | (v == "semaphore") << 4 | (not v) << 5)


def _flag_mask(v: object) -> int:
    try:
        return (("nested" in v) | ("irq" in v) << 1 | ("bh" in v) << 2  # type: ignore[operator]
                | ("trylock" in v) << 3)  # type: ignore[operator]
    except TypeError:
        return 128  # the Python loop raises where it reads them


_INTEGER_COLUMNS = ("pid", "cpu", "ts_ns", "lock_addr", "irqs_off", "bh_off", "in_hardirq",
                    "in_softirq", "in_nmi", "preempt_depth", "value", "target_pid")


def _ptr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


class NativeReplayer:
    """The state of one replay in C (see :class:`heldlocks.Replayer` for the arguments)."""

    def __init__(self, lib: ctypes.CDLL, kprobe_irqs_reliable: bool,
                 untraced: frozenset[int], spin_in_preempt: bool, depth_counts_spin: bool,
                 own_classes: frozenset[int], baseline: int) -> None:
        self.lib = lib
        self.baseline = baseline
        unt = np.asarray(sorted(untraced), np.int64)
        own = np.asarray(sorted(own_classes), np.int64)
        handle = lib.td_rp_new(int(kprobe_irqs_reliable), int(spin_in_preempt),
                               int(depth_counts_spin), baseline, _ptr(unt), len(unt),
                               _ptr(own), len(own))
        if not handle:
            raise MemoryError("the native replay could not start")
        self.handle: int = handle
        self._free = weakref.finalize(self, lib.td_rp_free, handle)
        self.fed = False
        self.drained = False  # finish() then gives column ``acq``
        # the tables the codes index, kept for the whole replay
        self.kinds: dict[Hashable, int] = {}
        self.lt_code: dict[Hashable, int] = {}
        self.lt_names: list[Hashable] = []
        self.lt_props: list[int] = []
        self.ev_code: dict[Hashable, int] = {}
        self.ev_props: list[int] = []
        self.ev_fn: list[int] = []
        self.fn_code: dict[str, int] = {}
        self.flags: dict[Hashable, int] = {}
        self._suspect_id: int | None = None  # id() of the suspect_rows of the last chunk
        self._raised: BaseException | None = None
        self._suspect: tuple[AbstractSet[int], RowSet] | None = None

    # -- encoding ----------------------------------------------------------------------

    def _add_lt(self, v: Hashable) -> int:
        c = self.lt_code.get(v)
        if c is None:
            c = self.lt_code[v] = len(self.lt_names)
            self.lt_props.append(_lt_props(v))
            self.lt_names.append(v)
        return c

    def _add_ev(self, v: Hashable) -> int:
        c = self.ev_code.get(v)
        if c is None:
            try:
                fn = v.partition("_")[2]  # type: ignore[attr-defined]
            except Exception:  # the Python loop raises where it reads it
                props, fc = 128, -1
            else:
                lf = LOCK_FUNCS.get(fn)
                props = 0 if lf is None else (
                    1 | bool(lf.success) << 1 | (lf.success == "nonzero") << 2
                    | ("trylock" in lf.flags) << 3)
                fc = self.fn_code.setdefault(fn, len(self.fn_code))
            c = self.ev_code[v] = len(self.ev_props)
            self.ev_props.append(props)
            self.ev_fn.append(fc)
        return c

    def _add_kind(self, v: Hashable) -> int:
        c = self.kinds.get(v)
        if c is None:
            c = self.kinds[v] = KIND_CODE.get(v, 6) if isinstance(v, str) else 6
        return c

    def _add_flags(self, v: Hashable) -> int:
        c = self.flags.get(v)
        if c is None:
            c = self.flags[v] = _flag_mask(v)
        return c

    @staticmethod
    def _encode(col: pd.Series, rows: np.ndarray, add: Callable[[Hashable], int],
                dtype: type) -> np.ndarray:
        """The codes ``add`` gives the values of ``col`` at ``rows``."""
        if isinstance(col.dtype, pd.CategoricalDtype):
            local = col.cat.codes.to_numpy()[rows].astype(np.int64) + 1  # 0: missing
            cats = col.cat.categories
            lut: np.ndarray = np.zeros(len(cats) + 1, dtype)
            for u in np.nonzero(np.bincount(local, minlength=len(cats) + 1))[0].tolist():
                lut[u] = add(np.nan if u == 0 else cats[u - 1])
            return lut[local]
        values = col.to_numpy()[rows]
        return np.fromiter(map(add, values.tolist()), dtype, len(values))

    # -- the replay ----------------------------------------------------------------------

    # long: one chunk's columns, one assignment each, then the call
    def feed(self, events: pd.DataFrame, classes: np.ndarray, row_offset: int,
             suspect_rows: AbstractSet[int], holder_on_stack: HolderOnStack | None,
             untraced: frozenset[int]) -> bool:
        """Replay the next chunk, whose lock classes are ``classes`` (one per row of
        ``events``, -1: none); False (nothing done) when its columns are not the
        schema's integers and nothing was fed yet (the caller then runs Python)."""
        dtypes = events.dtypes
        if any(dtypes[c].kind not in "iub" for c in _INTEGER_COLUMNS):
            if self.fed:
                raise TypeError("an events chunk with non-integer columns after native "
                                "chunks: " + ", ".join(
                                    f"{c} {events[c].dtype}" for c in _INTEGER_COLUMNS))
            return False
        if self.fed and self._suspect_id != id(suspect_rows):
            self._refresh_pending(suspect_rows)
        self._suspect_id = id(suspect_rows)
        self.fed = True
        rows = replay_rows(events, untraced)
        n = len(rows)

        def ints(name: str, dtype: type = np.int64) -> np.ndarray:
            return np.ascontiguousarray(events[name].to_numpy()[rows], dtype=dtype)

        def bools(name: str) -> np.ndarray:
            return events[name].to_numpy()[rows].astype(bool).view(np.uint8)

        row = rows.astype(np.int64) + row_offset
        pid, cpu = ints("pid"), ints("cpu")
        task = np.where(pid > 0, pid, -1 - cpu)
        kind = self._encode(events["kind"], rows, self._add_kind, np.int8)
        lt = self._encode(events["lock_type"], rows, self._add_lt, np.int32)
        ev = self._encode(events["event"], rows, self._add_ev, np.int32)
        flags = self._encode(events["lock_flags"], rows, self._add_flags, np.uint8)
        # a call whose return decides keeps the class it has here (replay.c's pending)
        cls = np.asarray(classes)[rows].astype(np.int64)
        suspect = np.zeros(n, np.uint8)
        at = np.nonzero(kind == K_ACQUIRE)[0]
        if len(at) and suspect_rows:
            suspect[at] = self._suspect_set(suspect_rows).contains(row[at])
        lt_props = np.asarray(self.lt_props, np.uint8)
        ev_props = np.asarray(self.ev_props, np.uint8)
        ev_fn = np.asarray(self.ev_fn, np.int32)
        cols = {"row": row, "task": task, "cpu": cpu, "ts": ints("ts_ns"),
                "value": ints("value"), "target": ints("target_pid"),
                "depth": ints("preempt_depth"), "cls": cls,
                "addr": ints("lock_addr", np.uint64), "kind": kind,
                "irqs_off": bools("irqs_off"), "bh_off": bools("bh_off"),
                "hard": bools("in_hardirq"), "soft": bools("in_softirq"),
                "nmi": bools("in_nmi"), "flags": flags, "suspect": suspect, "lt": lt,
                "ev": ev, "lt_props": lt_props, "ev_props": ev_props, "ev_fn": ev_fn}
        cols = {k: np.ascontiguousarray(v) for k, v in cols.items()}  # alive until the call
        # a local, alive until the call: kept on self, the callback (whose closure holds
        # self) would make a cycle that keeps the C state until a garbage collection
        holder = self._holder(holder_on_stack)
        ch = _Chunk(n=n, n_lt=len(lt_props), n_ev=len(ev_props), holder=holder,
                    **{k: _ptr(v) for k, v in cols.items()})
        self._raised = None
        rc = self.lib.td_rp_feed(self.handle, ctypes.byref(ch))
        del cols, ch, holder
        raised, self._raised = self._raised, None
        if rc == -3 and raised is not None:
            raise raised
        if rc:
            exc, text = _ERRORS.get(rc, (RuntimeError, f"native replay error {rc}"))
            raise exc(text)
        return True

    def _suspect_set(self, suspect_rows: AbstractSet[int]) -> RowSet:
        """``suspect_rows`` as a :class:`RowSet`, made once per set (a frozenset does
        not change; the set is kept, so its id stays its own)."""
        if isinstance(suspect_rows, RowSet):
            return suspect_rows
        if self._suspect is None or self._suspect[0] is not suspect_rows:
            self._suspect = (suspect_rows, RowSet(suspect_rows))
        return self._suspect[1]

    def _holder(self, holder_on_stack: HolderOnStack | None) -> object:
        if holder_on_stack is None:
            return _HOLDER()  # NULL

        def ask(acq_row: int, row: int) -> int:
            try:
                return 1 if holder_on_stack(acq_row, row) is True else 0
            except BaseException as e:  # raised again by feed(), as the Python loop would
                self._raised = e
                return -1

        return _HOLDER(ask)

    def _counts(self) -> list[int]:
        out = np.zeros(12, np.int64)
        self.lib.td_rp_counts(self.handle, _ptr(out))
        return [int(x) for x in out.tolist()]

    def _refresh_pending(self, suspect_rows: AbstractSet[int]) -> None:
        """Calls still pending from earlier chunks take their suspicion from the
        ``suspect_rows`` of the chunk that returns them, as the Python loop's do (its
        ``acquire`` asks ``suspect_rows`` then); their class stays the one they had at
        the call (the loop's pending entries carry it)."""
        n = self._counts()[11]
        if not n:
            return
        rows = np.zeros(n, np.int64)
        self.lib.td_rp_pending_rows(self.handle, _ptr(rows))
        sus = np.asarray([r in suspect_rows for r in rows.tolist()], np.uint8)
        self.lib.td_rp_pending_suspect(self.handle, _ptr(sus))

    def _check(self, rc: int) -> None:
        if rc < 0:
            exc, text = _ERRORS.get(rc, (RuntimeError, f"native replay error {rc}"))
            raise exc(text)

    def _acquisitions(self, drain: bool, with_acq: bool) -> pd.DataFrame:
        """A drain's acquisitions (``drain``), or every one not drained yet; with their
        global index as column ``acq`` if ``with_acq``."""
        n = self.lib.td_rp_select(self.handle, int(not drain))
        self._check(n)
        cols: dict[str, np.ndarray] = {name: np.zeros(n, dtype)
                                       for name, dtype in COLUMN_DTYPES.items()}
        acq = np.zeros(n, np.int64) if with_acq else None
        ptrs = (_P * 16)(*(_ptr(c) for c in cols.values()),
                         None if acq is None else _ptr(acq))
        self._check(self.lib.td_rp_take(self.handle, ptrs))
        types = np.zeros(self._counts()[10], np.int64)
        self.lib.td_rp_types(self.handle, _ptr(types))
        return acq_frame(cols, [self.lt_names[t] for t in types.tolist()],  # type: ignore
                         acq)

    def drain(self) -> pd.DataFrame:
        """The acquisitions settled since the last drain (heldlocks.Replayer.drain),
        their rows freed in C."""
        self.drained = True
        return self._acquisitions(True, True)

    def undrained(self) -> pd.DataFrame:
        """The acquisitions not drained yet, as they are now (after a drain: the open
        ones), with column ``acq``; nothing is handed out."""
        return self._acquisitions(False, True)

    def pending_rows(self) -> np.ndarray:
        """The call rows of the lock calls whose return is still to decide them."""
        n = self._counts()[11]
        rows = np.zeros(n, np.int64)
        if n:
            self.lib.td_rp_pending_rows(self.handle, _ptr(rows))
        return rows

    def since(self) -> tuple[list[SleepEvent], list[Forced], list[tuple[int, int]]]:
        """The sleeps, forced releases and IRQ-ended pairs added since the last call."""
        c = self._counts()
        now = np.array([c[4], c[5], c[6], c[7]], np.int64)
        was = getattr(self, "_read", np.zeros(4, np.int64))
        sleeps, ids, forced, ended = (np.zeros(s, np.int64) for s in (
            ((now[0] - was[0]) * 5,), (now[1] - was[1],), ((now[2] - was[2]) * 3,),
            ((now[3] - was[3]) * 2,)))
        self._check(self.lib.td_rp_get_from(self.handle, _ptr(was), *(_ptr(a) for a in (
            sleeps, ids, forced, ended))))
        self._read = now
        return (_sleeps(sleeps.reshape(-1, 5), ids),
                [Forced(a, r, FORCED_REASONS[why - 1]) for a, r, why in
                 forced.reshape(-1, 3).tolist()],
                [(a, r) for a, r in ended.reshape(-1, 2).tolist()])

    def forget_sleeps(self) -> None:
        """Drop the sleeps :meth:`since` handed out: the stream keeps them its own way
        (analysis.sleep_fold) and :meth:`finish` gives only those not read yet."""
        was = getattr(self, "_read", None)
        if was is None or not was[0]:
            return
        self._check(self.lib.td_rp_forget_sleeps(self.handle, int(was[0]), int(was[1])))
        self._read = np.array([0, 0, was[2], was[3]], np.int64)

    def acq_bytes(self) -> int:
        """Bytes the C state holds for acquisitions (blocks, rows kept past a drain)."""
        return int(self.lib.td_rp_acq_bytes(self.handle))

    def set_block_shift(self, shift: int) -> None:
        """Blocks of ``1 << shift`` acquisitions (4096 by default), before the first:
        tests make them a few rows, so that small traces free blocks and keep rows aside."""
        self._check(self.lib.td_rp_block_shift(self.handle, shift))

    def finish(self) -> Replay:
        """What the replay found so far, read back from C; its acquisitions are those not
        drained, with column ``acq`` once a drain was made (heldlocks.Replayer.finish)."""
        acqs = self._acquisitions(False, self.drained)
        (_, n_edges, n_usage, n_recs, n_sleeps, n_ids, n_forced, n_ended, unmatched,
         leaked, n_types, _) = self._counts()
        shapes = ((n_types,), (n_edges, 8), (n_usage, 3), (n_recs, 4), (n_sleeps, 5),
                  (n_ids,), (n_forced, 3), (n_ended, 2))
        types, edges, usage, recs, sleeps, ids, forced, ended = (
            np.zeros(s, np.int64) for s in shapes)
        self.lib.td_rp_get(self.handle, *(_ptr(a) for a in (
            types, edges, usage, recs, sleeps, ids, forced, ended)))
        edge_d: dict[tuple[int, int], list[EdgeAcc]] = {}
        for u, v, count, row, held_row, hs, rr, ctx in edges.tolist():
            edge_d.setdefault((u, v), []).append(
                EdgeAcc(count, row, held_row, bool(hs), bool(rr), CTX_NAMES[ctx]))
        usage_d: dict[int, dict[str, int]] = {}
        for c, bit, row in usage.tolist():
            usage_d.setdefault(c, {})[USAGE_BITS[bit]] = row
        sleep_l = _sleeps(sleeps.reshape(-1, 5), ids)
        rep = Replay(acqs, edge_d, usage_d,
                     [Recursion(r, h, bool(same), c) for r, h, c, same in recs.tolist()],
                     sleep_l, self.baseline, unmatched)
        rep.irq_leaked = leaked
        rep.irq_ended = [(a, r) for a, r in ended.tolist()]
        rep.forced = [Forced(a, r, FORCED_REASONS[why - 1]) for a, r, why in forced.tolist()]
        return rep


def _sleeps(sleeps: np.ndarray, ids: np.ndarray) -> list[SleepEvent]:
    """replay.c's sleep rows (row, reasons, extra, n_held, n_all) and their ids."""
    id_l = ids.tolist()
    out: list[SleepEvent] = []
    k = 0
    for row, reasons, extra, n_held, n_all in sleeps.tolist():
        out.append(SleepEvent(
            row, [w for b, w in enumerate(SLEEP_REASONS) if reasons >> b & 1],
            id_l[k:k + n_held], id_l[k + n_held:k + n_held + n_all], extra))
        k += n_held + n_all
    return out
