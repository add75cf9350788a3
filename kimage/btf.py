"""Struct layouts from a kernel's BTF (the ``.BTF`` section of Debian's -dbg vmlinux).

Probe generation needs a few member offsets (``struct inode.i_rwsem``,
``struct super_block.s_type``) to place fetch-args; BTF has every struct of the
kernel in a few MB and reads in a fraction of a second, where the vmlinux DWARF
is 300+ MB.  Format: Documentation/bpf/btf.rst (header, type section, string
section); only what member lookup needs is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tracedep.errors import BtfError

BTF_MAGIC = 0xEB9F
# kind -> bytes of kind-specific data after the 12-byte btf_type, per vlen item or fixed
_PER_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # struct, union, enum, proto, sec, enum64
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # int, array, var, decl_tag
KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 4, 5, 8, 9, 10, 11
KIND_TYPE_TAG = 18


@dataclass(frozen=True)
class _Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: tuple[_Member, ...] = ()


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("too short for a BTF header")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian kernels are not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        tbase, sbase = hdr_len + type_off, hdr_len + str_off
        if tbase + type_len > len(data) or sbase + str_len > len(data):
            raise BtfError("BTF sections run past the data")
        strings = data[sbase:sbase + str_len]

        def s(off: int) -> str:
            if off >= len(strings):
                raise BtfError(f"string offset {off} out of range")
            return strings[off:strings.index(b"\0", off)].decode("utf-8", "replace")

        self.types: list[_Type] = [_Type(0, "void", 0)]  # type id 0 is void
        self.by_name: dict[tuple[int, str], int] = {}
        pos, end = tbase, tbase + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members: tuple[_Member, ...] = ()
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for i in range(vlen):
                    mname, mtype, moff = struct.unpack_from("<III", data, pos + 12 * i)
                    # kind_flag: the offset word holds bitfield size << 24 | bit offset
                    ms.append(_Member(s(mname), mtype, moff & 0xFFFFFF if kflag else moff))
                members = tuple(ms)
            if kind in _PER_VLEN:
                pos += _PER_VLEN[kind] * vlen
            else:
                pos += _FIXED.get(kind, 0)
            tid = len(self.types)
            t = _Type(kind, s(name_off), size_or_type, members)
            self.types.append(t)
            if t.name and kind in (KIND_STRUCT, KIND_UNION):
                self.by_name.setdefault((kind, t.name), tid)

    def _resolve(self, tid: int) -> _Type:
        for _ in range(32):  # typedef/const/volatile chains are short; cycles are not BTF
            t = self.types[tid]
            if t.kind not in (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT,
                              KIND_TYPE_TAG):
                return t
            tid = t.size_or_type
        raise BtfError(f"type chain too long at id {tid}")

    def struct_size(self, name: str) -> int | None:
        tid = self.by_name.get((KIND_STRUCT, name))
        return self.types[tid].size_or_type if tid is not None else None

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of ``member`` in ``struct struct_name`` (anonymous unions and
        structs searched through, as C does), or None."""
        tid = self.by_name.get((KIND_STRUCT, struct_name))
        if tid is None:
            return None
        return self._find(self.types[tid], member, 0)

    def _find(self, t: _Type, member: str, base_bits: int) -> int | None:
        for m in t.members:
            if m.name == member:
                return (base_bits + m.bit_offset) // 8
        for m in t.members:
            if not m.name:
                inner = self._resolve(m.type_id)
                if inner.kind in (KIND_STRUCT, KIND_UNION):
                    got = self._find(inner, member, base_bits + m.bit_offset)
                    if got is not None:
                        return got
        return None

    def members_at(self, struct_name: str) -> list[tuple[int, str, int]]:
        """(byte offset, member path, byte size) of every named leaf-level member of a
        struct: ``i_rwsem`` for struct inode; nested struct members flattened as
        ``a.b``.  Used to name a heap lock ``struct type.member``."""
        tid = self.by_name.get((KIND_STRUCT, struct_name))
        out: list[tuple[int, str, int]] = []
        if tid is not None:
            self._flatten(self.types[tid], "", 0, out, 0)
        return out

    def _flatten(self, t: _Type, prefix: str, base_bits: int,
                 out: list[tuple[int, str, int]], depth: int) -> None:
        for m in t.members:
            inner = self._resolve(m.type_id)
            off = base_bits + m.bit_offset
            path = f"{prefix}.{m.name}" if prefix and m.name else (m.name or prefix)
            size = inner.size_or_type if inner.kind in (1, 4, 5, 6, 19) else 0
            out.append((off // 8, path, size))
            if inner.kind in (KIND_STRUCT, KIND_UNION) and depth < 4:
                self._flatten(inner, path, off, out, depth + 1)


def read_btf(vmlinux: Path) -> Btf:
    """The BTF of a vmlinux ELF file (its ``.BTF`` section)."""
    from elftools.elf.elffile import ELFFile

    with vmlinux.open("rb") as fh:
        elf = ELFFile(fh)
        sec = elf.get_section_by_name(".BTF")
        if sec is None:
            raise BtfError(f"{vmlinux}: no .BTF section (kernel built without DEBUG_INFO_BTF)")
        return Btf(sec.data())
