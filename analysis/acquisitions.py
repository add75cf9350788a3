"""The held-lock replay's acquisitions, stored compactly (analysis.heldlocks).

One row per successful acquisition, with its release; :meth:`AcqTable.frame`
gives them as the frame with the columns ``heldlocks.ACQ_COLUMNS``.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import pandas as pd

# why a held lock ended without its release being seen (heldlocks' module docstring)
FORCED_REASONS = ("preempted", "preempt-count", "user-space", "release-unseen", "re-acquired",
                  "gap")
FORCED_CODE = {r: i + 1 for i, r in enumerate(FORCED_REASONS)}  # AcqTable.forced; 0: released
CTX_NAMES = ("process", "softirq", "hardirq", "nmi")  # heldlocks.irq_context()
CTX_CODE = {c: i for i, c in enumerate(CTX_NAMES)}


class AcqTable:
    """The replay's acquisitions (columns :data:`ACQ_COLUMNS`), one typed array per
    column: a few dozen bytes per acquisition where a list of boxed values took
    hundreds.  Text columns are codes: lock types in the order first seen,
    :data:`CTX_NAMES`, and 0 or :data:`FORCED_CODE`."""

    def __init__(self) -> None:
        self.row, self.cls, self.addr = array("q"), array("q"), array("Q")
        self.lock_type, self.ctx, self.task = array("b"), array("b"), array("q")
        self.ts_acquire, self.ts_acquired = array("q"), array("q")
        self.ts_release, self.release_row = array("q"), array("q")
        self.trylock, self.irqs_off, self.bh_off = array("b"), array("b"), array("b")
        self.handed_off, self.forced = array("b"), array("b")
        self._types: dict[str, int] = {}
        self.type_names: list[str] = []

    def __len__(self) -> int:
        return len(self.row)

    def append(self, row: int, cls: int, addr: int, lock_type: str, ctx: str, task: int,
               ts: int, trylock: bool, irqs_off: bool, bh_off: bool) -> int:
        t = self._types.get(lock_type)
        if t is None:
            t = self._types[lock_type] = len(self.type_names)
            self.type_names.append(lock_type)
        self.row.append(row)
        self.cls.append(cls)
        self.addr.append(addr)
        self.lock_type.append(t)
        self.ctx.append(CTX_CODE[ctx])
        self.task.append(task)
        self.ts_acquire.append(ts)
        self.ts_acquired.append(ts)
        self.ts_release.append(-1)
        self.release_row.append(-1)
        self.trylock.append(bool(trylock))
        self.irqs_off.append(bool(irqs_off))
        self.bh_off.append(bool(bh_off))
        self.handed_off.append(False)
        self.forced.append(0)
        return len(self.row) - 1

    def frame(self, acqs: np.ndarray | None = None) -> pd.DataFrame:
        """The acquisitions as a frame (columns :data:`ACQ_COLUMNS`); only those at
        indices ``acqs`` if given, with their index as column ``acq``."""
        def col(a: Any, dtype: Any) -> np.ndarray:
            if acqs is not None:
                return np.frombuffer(a, dtype=dtype)[acqs] if len(a) else np.zeros(0, dtype)
            return np.frombuffer(a, dtype=dtype).copy() if len(a) else np.zeros(0, dtype)

        return acq_frame({name: col(getattr(self, name), dtype)
                          for name, dtype in COLUMN_DTYPES.items()}, self.type_names, acqs)


# the columns as stored (codes for the text columns), heldlocks.ACQ_COLUMNS order
COLUMN_DTYPES: dict[str, type] = {
    "row": np.int64, "cls": np.int64, "addr": np.uint64, "lock_type": np.int8,
    "ctx": np.int8, "task": np.int64, "ts_acquire": np.int64, "ts_acquired": np.int64,
    "ts_release": np.int64, "release_row": np.int64, "trylock": np.int8,
    "irqs_off": np.int8, "bh_off": np.int8, "handed_off": np.int8, "forced": np.int8}


def acq_frame(cols: dict[str, np.ndarray], type_names: list[str],
              acq: np.ndarray | None = None) -> pd.DataFrame:
    """The frame (columns ``heldlocks.ACQ_COLUMNS``) of stored columns
    (:data:`COLUMN_DTYPES`; ``lock_type`` codes index ``type_names``), and column
    ``acq`` (int64) if ``acq`` is given.  The text columns
    are categoricals over their codes: a busy trace has millions of acquisitions, and an
    object column costs a pointer a row and a string comparison per test."""
    def text(codes: np.ndarray, names: Any) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=pd.Index(list(names), dtype=object))

    out: dict[str, Any] = {}
    for name in COLUMN_DTYPES:
        c = cols[name]
        if name == "lock_type":
            out[name] = text(c, type_names or [""])
        elif name == "ctx":
            out[name] = text(c, CTX_NAMES)
        elif name == "forced":
            out[name] = text(c, ("", *FORCED_REASONS))
        elif c.dtype == np.int8:
            out[name] = c.astype(bool)
        else:
            out[name] = c
    if acq is not None:
        out["acq"] = np.asarray(acq, np.int64)
    return pd.DataFrame(out, copy=False)


def text_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(names, code per row) of a text column (the acquisitions', the events'): the
    categorical's own codes, or for a plain column ``np.unique``'s."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return (np.asarray(col.cat.categories, dtype=object),
                col.cat.codes.to_numpy().astype(np.intp))
    names, codes = np.unique(col.astype(str).to_numpy(), return_inverse=True)
    return names, codes.reshape(-1)


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Drained frames (``heldlocks.Replayer.drain``, and ``finish()``'s after a drain), in
    the order they were made, as one in ``acq`` order: the acquisitions table of the
    replay so far.  ``lock_type`` takes the categories of the latest frame that saw the
    most lock types (every other frame's are a prefix of them, but for the ``[""]`` of
    a frame made before the first acquisition); pd.concat would make it an object
    column."""
    if not frames:
        raise ValueError("no frames to join")
    types = max(((len(c), i, c) for i, c in enumerate(
        f["lock_type"].cat.categories for f in frames)), key=lambda t: t[:2])[2]
    out = pd.concat([f.assign(lock_type=f["lock_type"].cat.set_categories(types))
                     for f in frames], ignore_index=True)
    return out.sort_values("acq", kind="stable", ignore_index=True)
