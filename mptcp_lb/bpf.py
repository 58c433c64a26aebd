"""The one place the project talks to BPF: ctypes bindings to libbpf.so.1.

No bcc and no shelling out: objects are opened and loaded with libbpf, maps are
read and written through their fds, and programs are run on test packets with
BPF_PROG_TEST_RUN. libbpf >= 1.0 reports errors as negative errno (integer
calls) or NULL plus errno (pointer calls); both become BpfError.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

XDP_PASS = 2
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

# Per-CPU maps return one 8-byte-aligned value per possible CPU on lookup.
_PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

# Room in the output buffer for a program that grows the packet (bpf_xdp_adjust_tail/head).
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
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
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


class BpfMap:
    """One map of a loaded BpfObject, read and written with raw bytes."""

    def __init__(self, owner: BpfObject, ptr: int, name: str):
        lib = _lib()
        self._owner = owner  # the object owns the fd; keep it alive as long as the map
        self.name = name
        self.fd = _check("bpf_map__fd", lib.bpf_map__fd(ptr))
        self.key_size = lib.bpf_map__key_size(ptr)
        self.value_size = lib.bpf_map__value_size(ptr)
        self._lookup_size = self.value_size
        if lib.bpf_map__type(ptr) in _PERCPU_MAP_TYPES:
            self._lookup_size = (self.value_size + 7) // 8 * 8 * _check(
                "libbpf_num_possible_cpus", lib.libbpf_num_possible_cpus()
            )

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


class BpfObject:
    """A BPF object file, opened and loaded into the kernel; close() unloads what nothing else holds."""

    def __init__(self, path: str | os.PathLike):
        lib = _lib()
        self.path = Path(path)
        self._obj = _check_ptr("bpf_object__open_file", lib.bpf_object__open_file(os.fsencode(self.path), None))
        try:
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
        return BpfMap(self, ptr, name)

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
    """Run a program on one packet in the kernel (BPF_PROG_TEST_RUN). XDP needs >= 14 bytes."""
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


def _xdp_mode(generic: bool) -> int:
    return XDP_FLAGS_SKB_MODE if generic else XDP_FLAGS_DRV_MODE


def attach_xdp(ifindex: int, prog_fd: int, generic: bool = True) -> None:
    """Attach (or replace) the interface's XDP program; generic (skb) mode works on any device."""
    _check("bpf_xdp_attach", _lib().bpf_xdp_attach(ifindex, prog_fd, _xdp_mode(generic), None))


def detach_xdp(ifindex: int, generic: bool = True) -> None:
    """Detach the interface's XDP program of that mode (a veth has both, so the mode must match)."""
    _check("bpf_xdp_detach", _lib().bpf_xdp_detach(ifindex, _xdp_mode(generic), None))


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
