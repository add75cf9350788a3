"""A window's columns as numpy arrays, each read once, and its text columns
(categorical or not) as small integer ids: the streaming analysis compares lock
types and lockdep names as numbers, without a Python step per row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class Cols:
    """``events``' columns: ``num(c)`` its values, ``codes(c)`` a text column's
    (codes, categories) with code -1 for a missing value."""

    def __init__(self, events: pd.DataFrame) -> None:
        self.events = events
        self.n = len(events)
        self._num: dict[str, np.ndarray] = {}
        self._cat: dict[str, tuple[np.ndarray, Any]] = {}

    def has(self, c: str) -> bool:
        return c in self.events.columns

    def num(self, c: str) -> np.ndarray:
        v = self._num.get(c)
        if v is None:
            v = self._num[c] = self.events[c].to_numpy()
        return v

    def codes(self, c: str) -> tuple[np.ndarray, Any]:
        got = self._cat.get(c)
        if got is None:
            arr = self.events[c].array
            if isinstance(arr, pd.Categorical):
                got = (np.asarray(arr.codes), arr.categories)
            else:  # a plain column: its distinct texts as the categories
                cats, codes = np.unique(np.asarray(arr).astype(str), return_inverse=True)
                got = (codes.astype(np.int64), pd.Index(cats))
            self._cat[c] = got
        return got

    def is_(self, c: str, value: str) -> np.ndarray:
        """``events[c] == value``, as a boolean array."""
        codes, cats = self.codes(c)
        hit = _code_of(cats, value)
        return codes == hit if hit is not None else np.zeros(self.n, dtype=bool)

    def texts(self, c: str, rows: np.ndarray) -> list[str]:
        """The rows' values as ``astype(str)`` gives them ("" without the column)."""
        if not self.has(c):
            return [""] * len(rows)
        codes, cats = self.codes(c)
        names = [str(x) for x in cats] + ["nan"]
        return [names[k] for k in codes[rows].tolist()]


_LAST: list[Any] = [None, {}]  # the categories last seen, and the code of each value


def _code_of(cats: Any, value: str) -> int | None:
    if _LAST[0] is not cats:  # a frame's windows share their categories
        _LAST[:] = [cats, {str(c): i for i, c in enumerate(cats)}]
    code: int | None = _LAST[1].get(value)
    return code


class TextIds:
    """``id(text)`` numbers texts as they come; ``of(cols, c, rows)``: each row's id
    of its value as ``astype(str)`` reads it (a missing value: "nan")."""

    def __init__(self, first: list[str] | None = None) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self._cats: tuple[Any, np.ndarray] | None = None
        for n in first or ():
            self.id(n)

    def id(self, text: str) -> int:
        i = self.ids.get(text)
        if i is None:
            i = self.ids[text] = len(self.names)
            self.names.append(text)
        return i

    def of(self, cols: Cols, c: str, rows: np.ndarray) -> np.ndarray:
        codes, cats = cols.codes(c)
        if self._cats is None or self._cats[0] is not cats:
            self._cats = (cats, np.array([self.id(str(x)) for x in cats] + [self.id("nan")],
                                         dtype=np.int64))
        return self._cats[1][codes[rows]]  # code -1: the last, "nan"
