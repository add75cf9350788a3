"""Where a stream's windows are cut: never inside a time stamp.

The class engines (analysis.class_stream) count an allocation at the very time stamp of
a lock event for it, whichever row comes first, so no time stamp may span two windows.
:class:`Recut` re-cuts a stream of windows that way as they come (``push`` each, then
``end``); :func:`whole_timestamps` does it for an iterable.  ``join_frames`` puts frames
end to end with their categorical columns kept categorical.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from tracedep.tracer.window import Window


class Recut:
    """Where a window begins at the time stamp the one before ends at, the earlier
    window's rows at it go out with the later one.  A window is held until the next one
    is seen, so windows that split nothing (the decoder's, mostly) pass unchanged."""

    def __init__(self) -> None:
        self.pend: Window | None = None

    def push(self, w: Window) -> list[Window]:
        """The windows ``w`` lets out (none, one or two)."""
        if not len(w.events):
            return []
        pend, self.pend = self.pend, w
        if pend is None:
            return []
        ts = pend.events["ts_ns"].to_numpy()
        if int(w.events["ts_ns"].to_numpy()[0]) != int(ts[-1]):
            return [pend]
        cut = int(np.searchsorted(ts, ts[-1], side="left"))
        self.pend = Window(join_frames([pend.events.iloc[cut:].reset_index(drop=True),
                                        w.events]), pend.row0 + cut)
        return [Window(pend.events.iloc[:cut].reset_index(drop=True), pend.row0)] if cut else []

    def end(self) -> list[Window]:
        pend, self.pend = self.pend, None
        return [pend] if pend is not None else []


def whole_timestamps(windows: Iterable[Window]) -> Iterator[Window]:
    """The same rows, re-cut so that no time stamp spans two windows (:class:`Recut`)."""
    r = Recut()
    for w in windows:
        yield from r.push(w)
    yield from r.end()


def join_frames(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames one after the other, their categorical columns kept categorical
    (each window has categories of its own: a plain concat would make them objects)."""
    cols = {}
    for c in parts[0].columns:
        xs = [p[c] for p in parts]
        if all(isinstance(x.dtype, pd.CategoricalDtype) for x in xs):
            cols[c] = pd.Series(union_categoricals([_objects(x) for x in xs],
                                                   ignore_order=True))
        else:
            cols[c] = pd.Series(np.concatenate([x.to_numpy() for x in xs]))
    return pd.DataFrame(cols)


def _objects(c: pd.Series) -> pd.Categorical:
    """``c`` with object categories (union_categoricals wants one dtype for them)."""
    cats = c.cat.categories
    return c.array if cats.dtype == object else c.cat.set_categories(cats.astype(object)).array
