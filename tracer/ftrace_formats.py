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


# ring-buffer pages are a few pages of the guest's memory (4 KiB on x86_64 and on
# Debian's arm64; 64 KiB at most on any architecture)
_MAX_PAGE = 1 << 16


def parse_header_page(text: str) -> PageHeader:
    """The page layout the guest sent (``events/header_page``), checked: every later
    read of a page goes through these offsets, so none may point outside a page."""
    fields = {_field_name(m.group("decl")): m for m in _FIELD.finditer(text)}
    try:
        ts, commit, data = fields["timestamp"], fields["commit"], fields["data"]
    except KeyError as e:
        raise ValueError(f"header_page lacks field {e}") from None
    hp = PageHeader(int(ts.group("size")), int(commit.group("off")),
                    int(commit.group("size")), int(data.group("off")),
                    int(data.group("size")))
    ts_off = int(ts.group("off"))
    problems = []
    if ts_off != 0 or hp.timestamp_size != 8:
        problems.append(f"timestamp at {ts_off}, size {hp.timestamp_size} (not 0, 8)")
    if hp.commit_size not in (4, 8) or hp.commit_offset < 8 or \
            hp.commit_offset + hp.commit_size > hp.data_offset:
        problems.append(f"commit at {hp.commit_offset}, size {hp.commit_size}")
    if not 0 < hp.data_offset <= 64 or hp.data_size <= 0:
        problems.append(f"data at {hp.data_offset}, size {hp.data_size}")
    ps = hp.page_size
    if ps > _MAX_PAGE or ps & (ps - 1):
        problems.append(f"a page of {ps} bytes (not a power of two up to {_MAX_PAGE})")
    if problems:
        raise ValueError("header_page describes no ring-buffer page: " + "; ".join(problems))
    return hp
