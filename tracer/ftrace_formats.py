"""tracefs ``format`` files: event ids, field offsets and sizes.

Parsed from the text the guest sent (``events/*/*/format``, ``header_page``);
nothing here is hard-coded for one kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELD = re.compile(
    r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);(?:\s*signed:(?P<signed>\d+);)?"
)


@dataclass(frozen=True)
class Field:
    name: str
    decl: str
    offset: int
    size: int
    signed: bool

    @property
    def is_data_loc(self) -> bool:
        return "__data_loc" in self.decl

    @property
    def is_array(self) -> bool:
        return "[" in self.decl


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field]

    @property
    def full_name(self) -> str:
        return f"{self.system}/{self.name}"


def _field_name(decl: str) -> str:
    decl = re.sub(r"\[.*?\]", "", decl).strip()
    return re.split(r"[\s*]+", decl)[-1]


def parse_format(full_name: str, text: str) -> EventFormat | None:
    m = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not m:
        return None
    fields: dict[str, Field] = {}
    for fm in _FIELD.finditer(text):
        decl = fm.group("decl").strip()
        name = _field_name(decl)
        fields[name] = Field(name, decl, int(fm.group("off")), int(fm.group("size")),
                             fm.group("signed") == "1")
    system, _, name = full_name.partition("/")
    return EventFormat(system, name, int(m.group(1)), fields)


@dataclass(frozen=True)
class PageHeader:
    timestamp_size: int
    commit_offset: int
    commit_size: int
    data_offset: int
    data_size: int

    @property
    def page_size(self) -> int:
        return self.data_offset + self.data_size


def parse_header_page(text: str) -> PageHeader:
    fields = {_field_name(m.group("decl")): m for m in _FIELD.finditer(text)}
    try:
        ts, commit, data = fields["timestamp"], fields["commit"], fields["data"]
    except KeyError as e:
        raise ValueError(f"header_page lacks field {e}") from None
    return PageHeader(int(ts.group("size")), int(commit.group("off")),
                      int(commit.group("size")), int(data.group("off")),
                      int(data.group("size")))
