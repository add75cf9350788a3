"""A tiny HTML/SVG builder that escapes by construction.

Every string that reaches a page came from the guest or the trace (function
names, comms, paths, lock and module names), so nothing is ever pasted into
markup as is: plain ``str`` is always escaped, and only :class:`Markup` — what
this module itself built — passes through untouched.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable

__all__ = ["Markup", "el", "esc", "join", "slug"]


class Markup(str):
    """A string that is already safe markup."""

    __slots__ = ()


def esc(value: object) -> Markup:
    """Escape any value for use as HTML/SVG text or attribute value."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def _render(child: object) -> str:
    if child is None or child is False:
        return ""
    if isinstance(child, Markup):
        return child
    if isinstance(child, str | int | float):
        return html.escape(str(child), quote=True)
    if isinstance(child, Iterable):
        return "".join(_render(c) for c in child)
    return html.escape(str(child), quote=True)


_ATTR_NAME = re.compile(r"^[a-zA-Z_:][-a-zA-Z0-9_:.]*$")
_VOID = frozenset({"br", "hr", "meta", "img", "input", "link", "col", "wbr"})


def el(tag: str, *children: object, **attrs: object) -> Markup:
    """``<tag attrs>children</tag>``; ``class_`` → ``class``, ``_`` → ``-`` in names.

    Attribute values and text children are escaped; ``None``/``False`` attributes
    are left out and ``True`` ones are written bare.
    """
    parts = [f"<{tag}"]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("__", ":").replace("_", "-")
        if not _ATTR_NAME.match(name):  # only ever our own keyword names
            raise ValueError(f"bad attribute name {name!r}")
        if value is True:
            parts.append(f" {name}")
        else:
            parts.append(f' {name}="{html.escape(str(value), quote=True)}"')
    if tag in _VOID and not children:
        return Markup("".join(parts) + ">")
    parts.append(">")
    parts.append(_render(children))
    parts.append(f"</{tag}>")
    return Markup("".join(parts))


def join(items: Iterable[object], sep: str = "") -> Markup:
    """Concatenate children (escaping plain strings), with a literal separator."""
    return Markup(html.escape(sep, quote=True).join(_render(i) for i in items))


_SLUG_MAX = 100  # file names stay far below NAME_MAX (255) with any suffix added


def slug(value: str) -> str:
    """A string safe as a file name, URL path segment or element id; a long one is cut
    and keeps a digest of the whole, so two long names stay two."""
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", value).lstrip(".")
    if len(s) > _SLUG_MAX:
        s = f"{s[:_SLUG_MAX - 13]}-{hashlib.sha256(value.encode()).hexdigest()[:12]}"
    return s or "_"
