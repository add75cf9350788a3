"""JSON with types: what a file tracedep wrote holds, read back field by field.

``json.loads`` answers ``Any``.  A reader that trusted it would carry a string
where a number belongs into a report, or crash deep inside one, on a file edited
by hand or written by another version.  :class:`Fields` reads one object's fields
each as the type its schema says, and raises ``KeyError``/``TypeError`` naming the
field otherwise; the caller turns that into its own input error.

The ``*_or_none`` functions are the lenient kind, for open records tracedep copies
from elsewhere (the run manifest): a value of another type there is not known.
"""

from __future__ import annotations

from typing import TypeGuard, Union

# Union, not |: the alias is evaluated at run time and refers to itself.
JSON = Union[str, int, float, bool, None, list["JSON"], dict[str, "JSON"]]  # noqa: UP007
JSONObject = dict[str, JSON]


def _type(v: object) -> str:
    return "null" if v is None else type(v).__name__


def is_int(v: object) -> TypeGuard[int]:
    """A JSON integer (``True`` is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def json_value(v: object, where: str) -> JSON:
    """``v`` checked to be JSON data (as ``json.loads`` gives it)."""
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, list):
        return [json_value(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {k: json_value(x, f"{where}.{k}") for k, x in v.items()}
    raise TypeError(f"{where}: not JSON data ({_type(v)})")


class Fields:
    """The fields of one JSON object, each read as one type."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {_type(value)}")
        self._d: dict[str, object] = value
        self.where = where

    def has(self, key: str) -> bool:
        return key in self._d

    def _get(self, key: str) -> object:
        if key not in self._d:
            raise KeyError(f"{self.where}.{key}")
        return self._d[key]

    def _bad(self, key: str, want: str) -> TypeError:
        return TypeError(f"{self.where}.{key}: expected {want}, got {_type(self._d[key])}")

    def integer(self, key: str) -> int:
        v = self._get(key)
        if not is_int(v):
            raise self._bad(key, "an integer")
        return v

    def opt_integer(self, key: str) -> int | None:
        return None if self._get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        v = self._get(key)
        if not is_number(v):
            raise self._bad(key, "a number")
        return float(v)

    def opt_number(self, key: str) -> float | None:
        return None if self._get(key) is None else self.number(key)

    def boolean(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false")
        return v

    def opt_boolean(self, key: str) -> bool | None:
        return None if self._get(key) is None else self.boolean(key)

    def text(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str):
            raise self._bad(key, "a string")
        return v

    def opt_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def texts(self, key: str) -> list[str]:
        v = self._get(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a list of strings")
        return [str(x) for x in v]

    def integers(self, key: str) -> list[int]:
        v = self._get(key)
        if not isinstance(v, list) or not all(is_int(x) for x in v):
            raise self._bad(key, "a list of integers")
        return [int(x) for x in v]

    def obj(self, key: str) -> Fields:
        return Fields(self._get(key), f"{self.where}.{key}")

    def opt_obj(self, key: str) -> Fields | None:
        return None if self._get(key) is None else self.obj(key)

    def objs(self, key: str) -> list[Fields]:
        v = self._get(key)
        if not isinstance(v, list):
            raise self._bad(key, "a list")
        return [Fields(x, f"{self.where}.{key}[{i}]") for i, x in enumerate(v)]

    def int_map(self, key: str) -> dict[str, int]:
        m = self.obj(key)
        return {k: m.integer(k) for k in m._d}

    def number_map(self, key: str) -> dict[str, float]:
        m = self.obj(key)
        return {k: m.number(k) for k in m._d}

    def value(self, key: str) -> JSON:
        return json_value(self._get(key), f"{self.where}.{key}")

    def raw(self) -> dict[str, object]:
        """The object itself, for a reader that takes it whole."""
        return self._d


def str_or_none(v: object) -> str | None:
    return v if isinstance(v, str) else None


def int_or_none(v: object) -> int | None:
    return v if is_int(v) else None


def float_or_none(v: object) -> float | None:
    return float(v) if is_number(v) else None


def bool_or_none(v: object) -> bool | None:
    return v if isinstance(v, bool) else None


def dict_or_empty(v: object) -> dict[str, object]:
    return v if isinstance(v, dict) else {}


def list_or_empty(v: object) -> list[object]:
    return v if isinstance(v, list) else []
