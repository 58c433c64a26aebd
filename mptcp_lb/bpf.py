"""The one place the project talks to BPF: ctypes bindings to libbpf.so.1.

No bcc and no shelling out: objects are opened and loaded with libbpf, maps are
read and written through their fds (also the maps of a program some other
process loaded and attached, found by the program's id), and programs are run
on test packets with BPF_PROG_TEST_RUN. libbpf >= 1.0 reports errors as
negative errno (integer calls) or NULL plus errno (pointer calls); both become
BpfError.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
XDP_DROP = 1
XDP_REDIRECT = 4

# Per-CPU maps return one 8-byte-aligned value per possible CPU on lookup.
_PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

# Room in the output buffer for a program that grows the packet.
_TEST_RUN_SLACK = 256


class BpfError(OSError):
    """A libbpf call failed; `call` names it and `errno` says why."""

    def __init__(self, call: str, err: int):
        super().__init__(err, f"{call}: {os.strerror(err)}")
        self.call = call


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts as of libbpf 1.1 (bpf.h); libbpf reads `sz` to know the layout."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@cache
def _lib() -> ctypes.CDLL:
    """libbpf, loaded on first use so importing this module needs no libbpf."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    vp, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    signatures = {
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_program__fd": (i, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__type": (i, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__set_max_entries": (i, [vp, u32]),
        "bpf_map__max_entries": (u32, [vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_map_get_fd_by_id": (i, [u32]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _check(call: str, ret: int) -> int:
    """Raise for libbpf's negative-errno convention, else pass the result through."""
    if ret < 0:
        raise BpfError(call, -ret)
    return ret


def _check_ptr(call: str, ptr: int | None) -> int:
    """Raise for libbpf's NULL-plus-errno convention, else pass the pointer through."""
    if not ptr:
        raise BpfError(call, ctypes.get_errno() or errno.ENOENT)  # a lookup may leave errno unset
    return ptr


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (uapi linux/bpf.h), up to the map ids; the kernel fills what fits."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (uapi linux/bpf.h)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _info(fd: int, info: ctypes.Structure) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check("bpf_obj_get_info_by_fd", _lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))


class BpfMap:
    """One map, read and written with raw bytes: of a loaded BpfObject, or found by id (``program_maps``)."""

    def __init__(self, fd: int, name: str, key_size: int, value_size: int, map_type: int,
                 owner: object = None, owns_fd: bool = False, max_entries: int = 0):
        self._owner = owner  # an object that owns the fd; keep it alive as long as the map
        self._owns_fd = owns_fd
        self.fd = fd
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self._lookup_size = value_size
        if map_type in _PERCPU_MAP_TYPES:
            self._lookup_size = (value_size + 7) // 8 * 8 * _check(
                "libbpf_num_possible_cpus", _lib().libbpf_num_possible_cpus())

    @classmethod
    def _of_object(cls, owner: BpfObject, ptr: int, name: str) -> BpfMap:
        lib = _lib()
        return cls(_check("bpf_map__fd", lib.bpf_map__fd(ptr)), name, lib.bpf_map__key_size(ptr),
                   lib.bpf_map__value_size(ptr), lib.bpf_map__type(ptr), owner=owner,
                   max_entries=lib.bpf_map__max_entries(ptr))

    def close(self) -> None:
        """Close the fd of a map found by id; a BpfObject's maps close with the object."""
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: bytes) -> bytes:
        # The kernel reads key_size bytes whatever we pass: a short buffer would be over-read.
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(key)} bytes, expected {self.key_size}")
        return key

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"map {self.name}: value is {len(value)} bytes, expected {self.value_size}")
        _check("bpf_map_update_elem", _lib().bpf_map_update_elem(self.fd, self._key(key), value, flags))

    def lookup(self, key: bytes) -> bytes | None:
        """The value, or None when the key is absent. Per-CPU maps give every CPU's value, concatenated."""
        value = ctypes.create_string_buffer(self._lookup_size)
        ret = _lib().bpf_map_lookup_elem(self.fd, self._key(key), value)
        if ret == -errno.ENOENT:
            return None
        _check("bpf_map_lookup_elem", ret)
        return value.raw

    def delete(self, key: bytes) -> None:
        _check("bpf_map_delete_elem", _lib().bpf_map_delete_elem(self.fd, self._key(key)))

    def keys(self) -> Iterator[bytes]:
        """The keys the map holds (a hash map's entries; walks them, so not per packet)."""
        lib = _lib()
        key, nxt = None, ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, key, nxt)
            if ret == -errno.ENOENT:
                return
            _check("bpf_map_get_next_key", ret)
            yield nxt.raw
            key = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def count(self) -> int:
        """How many keys the map holds now."""
        return sum(1 for _ in self.keys())


_U64 = struct.Struct("=Q")


def read_counters(stats_map: BpfMap, names: Sequence[str]) -> dict[str, int]:
    """A per-CPU array of __u64 counters, each summed over CPUs, by name (``names[i]`` is key ``i``)."""
    out = {}
    for i, name in enumerate(names):
        raw = stats_map.lookup(struct.pack("=I", i)) or b""
        out[name] = sum(v for (v,) in _U64.iter_unpack(raw))
    return out


class StructLayout:
    """A C struct of a map value as ``struct.Struct`` (native order, no implicit padding), members named.

    ``members`` are (C member name, struct format) pairs in order, padding
    included (``"5x"`` for ``__u8 reserved[5]``); the names let a test check
    each offset against the object's BTF.
    """

    def __init__(self, c_name: str, members: Sequence[tuple[str, str]]):
        self.c_name = c_name
        self.members = tuple(members)
        self._struct = struct.Struct("=" + "".join(fmt for _, fmt in self.members))
        self.size = self._struct.size

    def offsets(self) -> dict[str, int]:
        """Each member's offset in bytes."""
        out, before = {}, "="
        for name, fmt in self.members:
            out[name] = struct.calcsize(before)
            before += fmt
        return out

    def pack(self, *values) -> bytes:
        return self._struct.pack(*values)

    def unpack(self, raw: bytes) -> tuple:
        return self._struct.unpack_from(raw)


class BpfObject:
    """A BPF object file, opened and loaded into the kernel; close() unloads what nothing else holds.

    ``max_entries`` resizes maps (by name) before the load, as a program's
    own sizes are only its defaults.
    """

    def __init__(self, path: str | os.PathLike, max_entries: dict[str, int] | None = None):
        lib = _lib()
        self.path = Path(path)
        self._obj = _check_ptr("bpf_object__open_file", lib.bpf_object__open_file(os.fsencode(self.path), None))
        try:
            for name, entries in (max_entries or {}).items():
                ptr = _check_ptr("bpf_object__find_map_by_name",
                                 lib.bpf_object__find_map_by_name(self._obj, name.encode()))
                _check("bpf_map__set_max_entries", lib.bpf_map__set_max_entries(ptr, entries))
            _check("bpf_object__load", lib.bpf_object__load(self._obj))
        except BpfError:
            self.close()
            raise

    def _live(self) -> int:
        if not self._obj:
            raise ValueError(f"{self.path} is closed")
        return self._obj

    def prog_fd(self, name: str) -> int:
        """The fd of the program whose C function is `name`."""
        lib = _lib()
        prog = _check_ptr(
            "bpf_object__find_program_by_name", lib.bpf_object__find_program_by_name(self._live(), name.encode())
        )
        return _check("bpf_program__fd", lib.bpf_program__fd(prog))

    def map(self, name: str) -> BpfMap:
        lib = _lib()
        ptr = _check_ptr("bpf_object__find_map_by_name", lib.bpf_object__find_map_by_name(self._live(), name.encode()))
        return BpfMap._of_object(self, ptr, name)

    def close(self) -> None:
        if self._obj:
            _lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TestRun:
    """What BPF_PROG_TEST_RUN reports: the program's return code, the packet after it, ns per run."""

    __test__ = False  # not a pytest test class despite the name

    retval: int
    data_out: bytes
    duration_ns: int


def test_run(prog_fd: int, data: bytes, repeat: int = 1) -> TestRun:
    """Run a program on one packet in the kernel (BPF_PROG_TEST_RUN).

    For a tc program the kernel wants an Ethernet header and, when the
    ethertype says IPv4 or IPv6, a whole IP header (EINVAL otherwise).
    """
    out = ctypes.create_string_buffer(len(data) + _TEST_RUN_SLACK)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p),
        data_out=ctypes.cast(out, ctypes.c_void_p),
        data_size_in=len(data),
        data_size_out=len(out),
        repeat=repeat,
    )
    _check("bpf_prog_test_run_opts", _lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)))
    return TestRun(opts.retval, out.raw[: opts.data_size_out], opts.duration)


test_run.__test__ = False  # a library function, not a pytest test


def program_fd_by_id(prog_id: int) -> int:
    """A new fd for the loaded program with this id (as tc or IFLA_XDP report it); close it after use."""
    return _check("bpf_prog_get_fd_by_id", _lib().bpf_prog_get_fd_by_id(prog_id))


def program_name(prog_fd: int) -> str:
    """The program's name as the kernel keeps it (its first 15 characters)."""
    info = _ProgInfo()
    _info(prog_fd, info)
    return info.name.decode()


def program_maps(prog_id: int) -> dict[str, BpfMap]:
    """The maps of a loaded program, by name, found from its id (as tc reports it). Close them after use."""
    lib = _lib()
    prog_fd = program_fd_by_id(prog_id)
    try:
        info = _ProgInfo()
        _info(prog_fd, info)
        ids = (ctypes.c_uint32 * info.nr_map_ids)()
        info = _ProgInfo(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
        _info(prog_fd, info)
    finally:
        os.close(prog_fd)
    maps: dict[str, BpfMap] = {}
    try:
        for map_id in ids[: info.nr_map_ids]:
            fd = _check("bpf_map_get_fd_by_id", lib.bpf_map_get_fd_by_id(map_id))
            minfo = _MapInfo()
            try:
                _info(fd, minfo)
            except BpfError:
                os.close(fd)
                raise
            name = minfo.name.decode()
            maps[name] = BpfMap(fd, name, minfo.key_size, minfo.value_size, minfo.type, owns_fd=True,
                                max_entries=minfo.max_entries)
    except BaseException:
        for m in maps.values():
            m.close()
        raise
    return maps


def program_counters(prog_id: int, map_name: str, names: Sequence[str], where: str) -> dict[str, int]:
    """The per-CPU counters map ``map_name`` of a loaded program (found by id, attached at ``where``), summed.

    LookupError when the program has no such map: it is not the one expected.
    """
    maps = program_maps(prog_id)
    try:
        if map_name not in maps:
            raise LookupError(f"the program on {where} has no {map_name} map (maps: {sorted(maps)})")
        return read_counters(maps[map_name], names)
    finally:
        for m in maps.values():
            m.close()


BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"


def built_object(name: str) -> Path:
    """``bpf/<name>``, built by ``make bpf`` and newer than its sources; never built here.

    Building at run time would mean running make as root inside the checkout,
    and a concurrent build could hand the loader a half-written object.
    """
    obj = BPF_DIR / name
    sources = [obj.with_suffix(".c"), BPF_DIR / "Makefile", *BPF_DIR.glob("*.h")]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
    if not obj.exists() or obj.stat().st_mtime < newest:
        raise FileNotFoundError(f"{obj} is missing or older than its sources: run `make bpf`")
    return obj
