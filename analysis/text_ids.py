"""Text columns of a window (categorical or not) as small integer ids, without a
Python step per row: the streaming analysis compares lock types and lockdep names
as numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd


class TextIds:
    """``id(text)`` numbers texts as they come; ``of(col, rows)``: each row's id of
    its value as ``astype(str)`` reads it (a missing value: "nan")."""

    def __init__(self, first: list[str] | None = None) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self._cats: tuple[object, np.ndarray] | None = None
        for n in first or ():
            self.id(n)

    def id(self, text: str) -> int:
        i = self.ids.get(text)
        if i is None:
            i = self.ids[text] = len(self.names)
            self.names.append(text)
        return i

    def of(self, col: pd.Series, rows: np.ndarray) -> np.ndarray:
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = col.cat.categories
            if self._cats is None or self._cats[0] is not cats:  # a frame's windows share them
                self._cats = (cats, np.array([self.id(str(c)) for c in cats] + [self.id("nan")],
                                             dtype=np.int64))
            return self._cats[1][col.cat.codes.to_numpy()[rows]]  # code -1: the last
        vals, inv = np.unique(col.to_numpy()[rows].astype(str), return_inverse=True)
        return np.array([self.id(str(v)) for v in vals], dtype=np.int64)[inv]


def texts(col: pd.Series, rows: np.ndarray) -> list[str]:
    """The rows' values as ``astype(str)`` gives them."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories] + ["nan"]
        return [cats[c] for c in col.cat.codes.to_numpy()[rows].tolist()]
    return [str(x) for x in col.to_numpy()[rows]]


_LAST: list[object] = [None, {}]  # the categories last seen, and their codes by value


def matches(col: pd.Series, value: str) -> np.ndarray:
    """``col == value`` over a window, without turning categories into objects."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories
        if _LAST[0] is not cats:  # a frame's windows share them
            _LAST[:] = [cats, {str(c): i for i, c in enumerate(cats)}]
        codes = col.cat.codes.to_numpy()
        code = _LAST[1].get(value)  # type: ignore[attr-defined]
        return codes == code if code is not None else np.zeros(len(codes), dtype=bool)
    return np.asarray(col.to_numpy() == value)
