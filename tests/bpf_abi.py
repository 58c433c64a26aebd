"""What the BPF side says about its ABI, read for tests: header constants and enums, and structs from BTF.

``header_defines`` and ``header_enum`` read the integer #defines and the
enumerators of bpf/*.h as text (the headers keep them plain for this).
``BtfObject`` reads the .BTF section of a compiled object through libbpf
(btf__parse_elf, no kernel needed): a struct's size and member offsets, and
the value and key struct of each map, as the compiler laid them out.
"""

from __future__ import annotations

import ast
import ctypes
import operator
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_DEFINE = re.compile(r"^\s*#define\s+([A-Z_][A-Z0-9_]*)\s+(.+?)\s*$")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift,
        ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.Invert: operator.inv,
        ast.USub: operator.neg}


def _evaluate(expr: str, known: dict[str, int]) -> int | None:
    """A C integer expression of literals, known names and + - * << >> | & ~, or None if it is not one."""
    try:
        tree = ast.parse(_INT_SUFFIX.sub(r"\1", expr), mode="eval").body
    except SyntaxError:
        return None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError(ast.dump(node))

    try:
        return value(tree)
    except ValueError:
        return None


def header_defines(path: Path, known: dict[str, int] | None = None) -> dict[str, int]:
    """The #defines of ``path`` whose value is an integer expression (of literals and earlier or ``known`` names)."""
    known = dict(known or {})
    out = {}
    for line in _COMMENT.sub("", path.read_text()).splitlines():
        m = _DEFINE.match(line)
        if m and (value := _evaluate(m.group(2), {**known, **out})) is not None:
            out[m.group(1)] = value
    return out


def header_enum(path: Path, name: str) -> list[str]:
    """The enumerators of ``enum name`` in ``path``, in order (none may set its own value)."""
    m = re.search(rf"\benum\s+{name}\s*\{{(.*?)\}}", _COMMENT.sub("", path.read_text()), re.S)
    if m is None:
        raise LookupError(f"no enum {name} in {path}")
    names = [n.strip() for n in m.group(1).split(",") if n.strip()]
    if any("=" in n for n in names):
        raise ValueError(f"enum {name} in {path} sets values: {names}")
    return names


# ------------------------------------------------------------------ BTF

_KIND_PTR, _KIND_STRUCT, _KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_VAR = 2, 4, 8, 9, 10, 14


class _BtfType(ctypes.Structure):
    """struct btf_type (uapi linux/btf.h); `size_or_type` is a size for structs, a type id for pointers and vars."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    """struct btf_member, following a struct's btf_type; offset in bits (bitfields pack a size above bit 24)."""

    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


@cache
def _libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    vp = ctypes.c_void_p
    for name, restype, argtypes in (
        ("btf__parse_elf", vp, [ctypes.c_char_p, vp]),
        ("btf__free", None, [vp]),
        ("btf__find_by_name_kind", ctypes.c_int32, [vp, ctypes.c_char_p, ctypes.c_uint32]),
        ("btf__type_by_id", ctypes.POINTER(_BtfType), [vp, ctypes.c_uint32]),
        ("btf__name_by_offset", ctypes.c_char_p, [vp, ctypes.c_uint32]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


@dataclass(frozen=True)
class BtfStruct:
    """A struct as BTF describes it: its name, size in bytes, and each member's byte offset."""

    name: str
    size: int
    offsets: dict[str, int]


class BtfObject:
    """The BTF of a compiled BPF object file, opened with libbpf; ``close()`` frees it."""

    def __init__(self, path: Path):
        self._btf = _libbpf().btf__parse_elf(str(path).encode(), None)
        if not self._btf:
            raise OSError(ctypes.get_errno(), f"btf__parse_elf: no BTF in {path}")

    def close(self) -> None:
        if self._btf:
            _libbpf().btf__free(self._btf)
            self._btf = None

    def _type(self, type_id: int) -> tuple[int, _BtfType]:
        t = _libbpf().btf__type_by_id(self._btf, type_id)
        if not t:
            raise LookupError(f"no BTF type {type_id}")
        return (t.contents.info >> 24) & 0x1F, t.contents

    def _name(self, offset: int) -> str:
        return _libbpf().btf__name_by_offset(self._btf, offset).decode()

    def _find(self, name: str, kind: int) -> int:
        type_id = _libbpf().btf__find_by_name_kind(self._btf, name.encode(), kind)
        if type_id < 0:
            raise LookupError(f"no BTF type {name!r} of kind {kind}")
        return type_id

    def _members(self, type_id: int) -> list[_BtfMember]:
        t = _libbpf().btf__type_by_id(self._btf, type_id)
        first = ctypes.cast(ctypes.addressof(t.contents) + ctypes.sizeof(_BtfType), ctypes.POINTER(_BtfMember))
        return [first[i] for i in range(t.contents.info & 0xFFFF)]

    def _struct(self, type_id: int) -> BtfStruct:
        kind, t = self._type(type_id)
        if kind != _KIND_STRUCT:
            raise LookupError(f"BTF type {type_id} is of kind {kind}, not a struct")
        bitfields = t.info >> 31  # kflag: offsets carry a bitfield size in their top 8 bits
        offsets = {}
        for m in self._members(type_id):
            bits = m.offset & 0xFFFFFF if bitfields else m.offset
            offsets[self._name(m.name_off)] = bits // 8
        return BtfStruct(self._name(t.name_off), t.size_or_type, offsets)

    def struct(self, name: str) -> BtfStruct:
        """``struct name``."""
        return self._struct(self._find(name, _KIND_STRUCT))

    def map_struct(self, map_name: str, field: str = "value") -> BtfStruct:
        """The struct a map declares as its ``value`` (or ``key``) with ``__type()``."""
        kind, var = self._type(self._find(map_name, _KIND_VAR))
        definition = self._skip_modifiers(var.size_or_type)
        for m in self._members(definition):
            if self._name(m.name_off) == field:
                kind, ptr = self._type(m.type)
                if kind != _KIND_PTR:
                    raise LookupError(f"map {map_name}'s {field} is not declared with __type()")
                return self._struct(self._skip_modifiers(ptr.size_or_type))
        raise LookupError(f"map {map_name} declares no {field}")

    def _skip_modifiers(self, type_id: int) -> int:
        kind, t = self._type(type_id)
        while kind in (_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST):
            type_id = t.size_or_type
            kind, t = self._type(type_id)
        return type_id
