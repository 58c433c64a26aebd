"""The DIP side of token-based steering on a stock kernel: bpf/dip_tc.o on tc, and its key pool.

``DipTokenSetup`` loads ``bpf/dip_tc.o`` (building it with ``make -C bpf``
when it is missing or older than its sources), writes the configuration map,
attaches ``dip_ingress`` / ``dip_egress`` with clsact (direct action) on the
DIP's fabric interface(s), and sets ``net.ipv4.tcp_syncookies=2`` in the
current network namespace, so that the listener adopts the MPTCP key the tc
egress program writes into its SYN/ACK (docs/token-steering.md §5). In pool
mode a ``KeyPool`` thread keeps the pool map full of fresh keys in the DIP's
slices. ``undo()`` detaches, stops and restores everything ``apply()`` did.

Keys are secrets (whoever knows one can forge MP_JOINs for its connection):
nothing here logs or prints one, and ``FlowState`` leaves its key out of repr.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from mptcp_lb import tc
from mptcp_lb.bpf import BPF_DIR, BpfMap, BpfObject, built_object
from mptcp_lb.mptcp_codec import KEY_LEN, make_key

from .sysctl import change_sysctl, restore_sysctls
from .undo import Undo, rollback_on_failure

log = logging.getLogger(__name__)

OBJECT_PATH = BPF_DIR / "dip_tc.o"

KEY_MODE_NONE = 0
KEY_MODE_SEED = 1
KEY_MODE_POOL = 2
KEY_MODES = {"none": KEY_MODE_NONE, "seed": KEY_MODE_SEED, "pool": KEY_MODE_POOL}

POOL_SIZE = 1024  # POOL_SIZE in bpf/dip_tc.c
SERVER_ID_MASK = 0xFFF
INVALID_SEQ = (1 << 64) - 1  # a pool slot being rewritten: matches no pool index

# enum dip_stat in bpf/dip_tc.c, in order.
STAT_NAMES = ("synack_key_set", "synack_no_key", "pool_empty", "carrier_stored", "ts_stamped",
              "tsecr_exact", "tsecr_restored", "tsecr_unmatched", "malformed", "no_state")

SYNCOOKIES = "net/ipv4/tcp_syncookies"

# struct dip_config, flow_key, flow_state, pool_entry, pool_state (native byte order, as the C structs).
_CONFIG_TAIL = struct.Struct("=HII")  # server_id, key_mode, reserved (after vip and port, both big-endian)
_FLOW_STATE = struct.Struct("=8sIIIIBBB5xQ")
_POOL_ENTRY = struct.Struct("=8sQ")
_POOL_STATE = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_MAX_VALID = 1 << 32

__all__ = ["DipTokenSetup", "KeyPool", "FlowState", "KEY_MODES", "KEY_MODE_NONE", "KEY_MODE_SEED",
           "KEY_MODE_POOL", "POOL_SIZE", "OBJECT_PATH", "STAT_NAMES", "dip_object", "pack_config",
           "pack_flow_key"]


# ------------------------------------------------------------------ pure


def _ipv4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _check_port(port: int, what: str, allow_zero: bool = False) -> None:
    if not isinstance(port, int) or not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"{what} {port!r} is not in {0 if allow_zero else 1}..65535")


def key_mode(mode: int | str) -> int:
    """A key mode by name ("none", "seed", "pool") or number (0, 1, 2)."""
    if isinstance(mode, str):
        if mode not in KEY_MODES:
            raise ValueError(f"key mode {mode!r} is not one of {sorted(KEY_MODES)}")
        return KEY_MODES[mode]
    if mode not in KEY_MODES.values():
        raise ValueError(f"key mode {mode!r} is not one of {sorted(KEY_MODES.values())}")
    return mode


def pack_config(vip: str, port: int, server_id: int, mode: int | str) -> bytes:
    """struct dip_config: VIP and port in network order; port 0 matches every port."""
    _check_port(port, "port", allow_zero=True)
    if not isinstance(server_id, int) or not 0 <= server_id <= SERVER_ID_MASK:
        raise ValueError(f"server_id {server_id!r} does not fit 12 bits")
    return _ipv4(vip) + port.to_bytes(2, "big") + _CONFIG_TAIL.pack(server_id, key_mode(mode), 0)


def pack_flow_key(client_ip: str, client_port: int, vip: str, vip_port: int) -> bytes:
    """struct flow_key: client address, VIP, client port, VIP port, all in network order."""
    _check_port(client_port, "client_port")
    _check_port(vip_port, "vip_port")
    return _ipv4(client_ip) + _ipv4(vip) + client_port.to_bytes(2, "big") + vip_port.to_bytes(2, "big")


@dataclass(frozen=True)
class FlowState:
    """struct flow_state, decoded. ``key`` is a secret: it is not part of repr."""

    key: bytes = field(repr=False)
    key_isn: int
    conn_isn: int
    synack_tsval: int
    synack_stamped: int
    has_key: int  # 0 none, 1 for the SYN with ISN key_isn, 2 seeded from userspace for the next SYN/ACK
    has_conn: bool
    ack_pending: bool
    max_tsval: int | None  # the largest original TSval sent, None before any

    @classmethod
    def unpack(cls, raw: bytes) -> FlowState:
        (key, key_isn, conn_isn, synack_tsval, synack_stamped, has_key, has_conn, ack_pending,
         max_tsval) = _FLOW_STATE.unpack_from(raw)
        return cls(key, key_isn, conn_isn, synack_tsval, synack_stamped, has_key, bool(has_conn),
                   bool(ack_pending), max_tsval & 0xFFFFFFFF if max_tsval & _MAX_VALID else None)


# ------------------------------------------------------------------ build


def dip_object(obj: Path = OBJECT_PATH) -> Path:
    """The DIP programs' object: ``bpf/dip_tc.o`` as ``make bpf`` built it, or a given path."""
    obj = Path(obj)
    if obj == OBJECT_PATH:
        return built_object(obj.name)
    if not obj.exists():
        raise FileNotFoundError(f"{obj} does not exist")
    return obj


# ------------------------------------------------------------------ key pool


class KeyPool:
    """Keeps ``dip_pool`` full of fresh keys in the DIP's slices.

    The program takes pool index ``i`` with an atomic add on
    ``dip_pool_state.next`` and uses slot ``i % size`` only if that slot's
    seq is ``i + 1`` (a never-filled slot has seq 0); otherwise it finds the pool empty and leaves the SYN/ACK's
    key alone. Each key is written for exactly one index, so no key is ever
    handed out twice. A consumed slot is refilled (for index ``i + size``)
    one poll after its index was seen taken, so no program can still be
    reading it; the write goes in two steps (new key with an invalid seq,
    then the valid seq) so a reader never pairs a valid seq with a torn key.
    """

    def __init__(self, pool_map: BpfMap, state_map: BpfMap, slices: Iterable[int], slice_bits: int,
                 *, size: int = POOL_SIZE, interval: float = 0.02):
        self.slices = frozenset(slices)
        self.slice_bits = slice_bits
        make_key(self.slices, slice_bits)  # validates slices and slice_bits now, not in the thread
        if size <= 0 or size & (size - 1):
            raise ValueError(f"pool size {size} is not a power of two")
        self.size = size
        self.interval = interval
        self._pool = pool_map
        self._state = state_map
        self._done = 0  # indices below this are refilled (or were never filled)
        self._seen = 0  # `next` as read at the previous poll
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refilled = 0

    def next_index(self) -> int:
        """How many pool indices the program has taken so far."""
        return _POOL_STATE.unpack(self._state.lookup(_U32.pack(0)))[0]

    def _write(self, index: int) -> None:
        slot = _U32.pack(index % self.size)
        key = make_key(self.slices, self.slice_bits)
        self._pool.update(slot, _POOL_ENTRY.pack(key, INVALID_SEQ))
        self._pool.update(slot, _POOL_ENTRY.pack(key, index + 1))  # seq 0: a slot never filled

    def fill(self) -> None:
        """Fill every slot with a fresh key for the next ``size`` indices."""
        with self._lock:
            start = self.next_index()
            for index in range(start, start + self.size):
                self._write(index)
            self._done = self._seen = start
        log.info("key pool: %d keys in slices %s of %d bits", self.size, sorted(self.slices),
                 self.slice_bits)

    def poll_once(self) -> int:
        """Refill the slots taken before the previous poll; return how many were refilled."""
        with self._lock:
            current = self.next_index()
            safe, self._seen = self._seen, current
            if safe <= self._done:
                return 0
            first = max(self._done, safe - self.size)  # older ones were overtaken and rewritten below
            for taken in range(first, safe):
                index = taken + self.size
                if index < current:  # the program already ran past it and found the pool empty
                    index += (current - index + self.size - 1) // self.size * self.size
                self._write(index)
            self._done = safe
            self.refilled += safe - first
            if current - safe >= self.size // 2:
                log.warning("key pool: %d keys taken in one poll interval of %.3fs; pool size %d",
                            current - safe, self.interval, self.size)
            return safe - first

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("KeyPool already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dip-key-pool", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # a transient map error must not end refilling for good
                log.exception("key pool refill failed")

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None


# ------------------------------------------------------------------ setup


class DipTokenSetup:
    """Token steering on this namespace's DIP: tc programs, maps, key pool and syncookies.

    ``ifname`` is the fabric interface, or a list of them (all share one
    object, so one flow table and one pool). ``mode`` is "none", "seed" or
    "pool" (or 0, 1, 2); pool mode needs ``slices`` and ``slice_bits``.
    ``syncookies`` is the value ``apply()`` gives net.ipv4.tcp_syncookies
    (2: always answer with a cookie, which key adoption needs; None leaves
    it alone).
    """

    def __init__(self, ifname: str | Sequence[str], vip: str, port: int, server_id: int,
                 mode: int | str, slices: Iterable[int] | None = None, slice_bits: int | None = None,
                 *, syncookies: int | None = 2, object_path: str | os.PathLike | None = None,
                 pool_size: int = POOL_SIZE, poll_interval: float = 0.02):
        self.ifnames = [ifname] if isinstance(ifname, str) else list(ifname)
        if not self.ifnames:
            raise ValueError("no interface given")
        self.vip = str(ipaddress.IPv4Address(vip))
        _check_port(port, "port", allow_zero=True)
        self.port = port
        self.server_id = server_id
        self.mode = key_mode(mode)
        self._config = pack_config(self.vip, port, server_id, self.mode)  # validates server_id
        self.slices = frozenset(slices) if slices is not None else None
        self.slice_bits = slice_bits
        if self.mode == KEY_MODE_POOL:
            if not self.slices or slice_bits is None:
                raise ValueError("pool mode needs slices and slice_bits")
            make_key(self.slices, slice_bits)  # validate now
        if syncookies is not None and syncookies not in (0, 1, 2):
            raise ValueError(f"syncookies {syncookies!r} is not 0, 1 or 2")
        self.syncookies = syncookies
        self.object_path = Path(object_path) if object_path is not None else OBJECT_PATH
        self.pool_size = pool_size
        self.poll_interval = poll_interval
        self.obj: BpfObject | None = None
        self.pool: KeyPool | None = None
        self._saved_sysctls: dict[str, str] = {}  # the values found before the first apply()
        self._attached: list[tuple[int, str]] = []  # (ifindex, hook) of each filter we added
        self._own_clsact: list[int] = []  # ifindexes where we created clsact

    # -------------------------------------------------------------- apply

    def apply(self) -> None:
        """Load, configure, fill, attach; on failure roll back what was done and re-raise."""
        if self.obj is not None:
            return
        with rollback_on_failure(self.undo, log, "token steering setup on %s for %s:%d",
                                 ",".join(self.ifnames), self.vip, self.port):
            self.obj = BpfObject(dip_object(self.object_path))
            self.obj.map("dip_config").update(_U32.pack(0), self._config)
            if self.mode == KEY_MODE_POOL:
                self.pool = KeyPool(self.obj.map("dip_pool"), self.obj.map("dip_pool_state"),
                                    self.slices, self.slice_bits, size=self.pool_size,
                                    interval=self.poll_interval)
                self.pool.fill()
                self.pool.start()
            self._apply_syncookies()
            self._attach()
        log.info("token steering on %s: VIP %s port %d, server id %d, key mode %s",
                 ",".join(self.ifnames), self.vip, self.port, self.server_id,
                 {v: k for k, v in KEY_MODES.items()}[self.mode])

    def _apply_syncookies(self) -> None:
        if self.syncookies is not None:
            change_sysctl(SYNCOOKIES, str(self.syncookies), self._saved_sysctls, log)

    def _attach(self) -> None:
        with IPRoute() as ipr:
            for name in self.ifnames:
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise RuntimeError(f"interface {name} does not exist")
                ifindex = found[0]
                if tc.add_clsact(ipr, ifindex):
                    self._own_clsact.append(ifindex)
                for hook, prog in ((tc.INGRESS, "dip_ingress"), (tc.EGRESS, "dip_egress")):
                    tc.attach(ipr, ifindex, name, hook, self.obj.prog_fd(prog), prog)
                    self._attached.append((ifindex, hook))
                log.info("attached dip_ingress and dip_egress on %s", name)

    # -------------------------------------------------------------- undo

    def undo(self) -> None:
        """Restore everything apply() changed; keep going past failures, then raise the first."""
        with Undo(log) as undo:
            if self._attached or self._own_clsact:
                undo.attempt("detaching tc programs", self._detach)
            if self.pool is not None:
                undo.attempt("stopping the key pool", self.pool.stop)
                self.pool = None
            restore_sysctls(self._saved_sysctls, undo.attempt)
            if self.obj is not None:
                self.obj.close()
                self.obj = None

    def _detach(self) -> None:
        with IPRoute() as ipr:
            while self._attached:
                ifindex, hook = self._attached.pop()
                if ifindex not in self._own_clsact:  # deleting our clsact below takes its filters with it
                    tc.detach(ipr, ifindex, hook)
            while self._own_clsact:
                tc.del_clsact(ipr, self._own_clsact.pop())
        log.info("detached token steering from %s", ",".join(self.ifnames))

    # -------------------------------------------------------------- maps

    def _live(self) -> BpfObject:
        if self.obj is None:
            raise RuntimeError("DipTokenSetup is not applied")
        return self.obj

    def _flow_key(self, client_ip: str, client_port: int, vip_port: int | None) -> bytes:
        if vip_port is None:
            if not self.port:
                raise ValueError("vip_port is needed when the setup matches every port")
            vip_port = self.port
        return pack_flow_key(client_ip, client_port, self.vip, vip_port)

    def seed_key(self, client_ip: str, client_port: int, key: bytes, vip_port: int | None = None) -> None:
        """Give the next SYN/ACK of this flow ``key`` (seed mode), whatever the SYN's ISN.

        The in-band path is the key carrier option in the SYN; this is for a
        key that reaches the agent out of band.
        """
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
            raise ValueError(f"key must be {KEY_LEN} bytes")
        raw = _FLOW_STATE.pack(bytes(key), 0, 0, 0, 0, 2, 0, 0, 0)
        self._live().map("dip_flows").update(self._flow_key(client_ip, client_port, vip_port), raw)

    def flow(self, client_ip: str, client_port: int, vip_port: int | None = None) -> FlowState | None:
        raw = self._live().map("dip_flows").lookup(self._flow_key(client_ip, client_port, vip_port))
        return None if raw is None else FlowState.unpack(raw)

    def stats(self) -> dict[str, int]:
        """The programs' counters, summed over CPUs."""
        stats_map = self._live().map("dip_stats")
        result = {}
        for i, name in enumerate(STAT_NAMES):
            raw = stats_map.lookup(_U32.pack(i)) or b""
            result[name] = sum(struct.unpack(f"={len(raw) // 8}Q", raw))
        return result


def _main() -> None:  # pragma: no cover - a manual aid: python -m dip_agent.token_bpf IF VIP PORT ID MODE
    import sys
    import time
    logging.basicConfig(level=logging.INFO)
    ifname, vip, port, server_id, mode = sys.argv[1:6]
    slice_bits = int(sys.argv[6]) if len(sys.argv) > 6 else None
    slices = {int(s) for s in sys.argv[7].split(",")} if len(sys.argv) > 7 else None
    setup = DipTokenSetup(ifname.split(","), vip, int(port), int(server_id), mode, slices, slice_bits)
    setup.apply()
    try:
        while True:
            time.sleep(5)
            log.info("stats %s", setup.stats())
    except KeyboardInterrupt:
        pass
    finally:
        setup.undo()


if __name__ == "__main__":  # pragma: no cover
    _main()
