"""The DIP's BPF programs on a stock kernel: bpf/dip_tc.o loaded, configured and on tc.

Every DIP runs them, in every mode: they give a slot's connections their
second chance while the slot moves (mptcp_lb/slots.py). In the token modes
they also adopt keys and stamp timestamps (``stamp=True``, a key mode).

``DipPrograms`` separates loading from attaching, as Katran's
``loadBpfProgs`` / ``attachBpfProgs`` do. ``load()`` loads ``bpf/dip_tc.o``
(as ``make bpf`` built it), writes the configuration map and, in pool mode,
fills the key pool and starts its refill thread (dip_agent/key_pool.py); with
a key mode it starts the TIME_WAIT reaper (dip_agent/time_wait.py). It
touches no interface: the programs can run on test packets then.
``attach()`` sets ``net.ipv4.tcp_syncookies=2`` in the current network
namespace, so that the listener adopts the MPTCP key the tc egress program
writes into its SYN/ACK (docs/token-steering.md §5), and attaches
``dip_ingress`` / ``dip_egress`` with clsact (direct action) on the DIP's
fabric interface(s). ``apply()`` does both; ``undo()`` detaches, stops and
restores everything they did.

Keys are secrets: nothing here logs or prints one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pyroute2 import IPRoute

from mptcp_lb import tc
from mptcp_lb.bpf import BPF_DIR, BpfObject, built_object, read_counters
from mptcp_lb.mptcp_codec import make_key

from .dip_abi import (KEY_MODE_NONE, KEY_MODE_POOL, KEY_MODE_SEED, KEY_MODES, POOL_SIZE, STAT_NAMES, U32, FlowState,
                      check_port, key_mode, pack_config, pack_flow_key, pack_peer, pack_seeded_flow_state)
from .key_pool import KeyPool
from .poller import IDLE_INTERVAL
from .sysctl import change_sysctl, restore_sysctls
from .time_wait import TimeWaitReaper
from .undo import Undo, rollback_on_failure

log = logging.getLogger(__name__)

OBJECT_PATH = BPF_DIR / "dip_tc.o"
SYNCOOKIES = "net/ipv4/tcp_syncookies"

__all__ = ["DipPrograms", "OBJECT_PATH", "dip_object", "attached_stats"]


def attached_stats(ifname: str) -> dict[str, int]:
    """The counters of the DIP programs attached to ``ifname`` (by this process or the agent's).

    With them, how full the flow table is: ``flow_entries`` now, of
    ``flow_capacity``, and ``flows_evicted``, the entries the LRU dropped
    to make room (nothing else ever deletes one).
    """
    with tc.attached_maps(ifname, tc.INGRESS) as maps:
        if "dip_stats" not in maps or "dip_flows" not in maps:
            raise LookupError(f"the program on {ifname} is not the DIP programs (maps: {sorted(maps)})")
        return _usage(maps["dip_stats"], maps["dip_flows"])


def _usage(stats_map, flows_map) -> dict[str, int]:
    """The counters, and the flow table's fill: entries, capacity and LRU evictions."""
    stats = read_counters(stats_map, STAT_NAMES)
    stats["flow_entries"] = flows_map.count()
    stats["flow_capacity"] = flows_map.max_entries
    stats["flows_evicted"] = max(0, stats["flow_created"] - stats["flow_entries"])
    return stats


def dip_object(obj: Path = OBJECT_PATH) -> Path:
    """The DIP programs' object: ``bpf/dip_tc.o`` as ``make bpf`` built it, or a given path."""
    obj = Path(obj)
    if obj == OBJECT_PATH:
        return built_object(obj.name)
    if not obj.exists():
        raise FileNotFoundError(f"{obj} does not exist")
    return obj


class DipPrograms:
    """This namespace's DIP programs: tc programs, maps, key pool, TIME_WAIT reaper and syncookies.

    ``ifname`` is the fabric interface, or a list of them (all share one
    object, so one flow table and one pool). ``mode`` is "none", "seed" or
    "pool" (or 0, 1, 2); pool mode needs ``slices`` and ``slice_bits``.
    ``stamp`` turns on the server ID in TSval (the token modes).
    ``vip6`` is the VIP's IPv6 address, served alike; ``peers6`` maps each
    DIP's IPv4 fabric address to its IPv6 one, where second chance passes
    IPv6 packets on (without an entry, they stay).
    ``self_address`` is the DIP's own fabric address (second chance never
    hands it a packet). ``syncookies`` is the value ``attach()`` gives
    net.ipv4.tcp_syncookies (2: always answer with a cookie, which key
    adoption needs; None leaves it alone).
    """

    def __init__(self, ifname: str | Sequence[str], vip: str, port: int, server_id: int,
                 mode: int | str, slices: Iterable[int] | None = None, slice_bits: int | None = None,
                 *, stamp: bool = True, self_address: str = "0.0.0.0", syncookies: int | None = 2,
                 object_path: str | os.PathLike | None = None, pool_size: int = POOL_SIZE,
                 poll_interval: float = 0.02, flows: int | None = None, vip6: str | None = None,
                 peers6: Mapping[str, str] | None = None):
        self.ifnames = [ifname] if isinstance(ifname, str) else list(ifname)
        if not self.ifnames:
            raise ValueError("no interface given")
        self.vip = str(ipaddress.IPv4Address(vip))
        self.vip6 = str(ipaddress.IPv6Address(vip6)) if vip6 is not None else None
        self._peers = [pack_peer(a, a6) for a, a6 in (peers6 or {}).items()]  # validates
        check_port(port, "port", allow_zero=True)
        self.port = port
        self.server_id = server_id
        self.mode = key_mode(mode)
        self.stamp = stamp
        self._config_args = dict(vip=self.vip, port=port, server_id=server_id, mode=self.mode, stamp=stamp,
                                 self_address=self_address, vip6=self.vip6)
        # Key adoption has the reaper retire the TIME_WAIT sockets that would cost a SYN its cookie.
        self._config = pack_config(**self._config_args, reap_time_wait=self.mode != KEY_MODE_NONE)  # validates
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
        if not 0 < poll_interval <= IDLE_INTERVAL:
            raise ValueError(f"poll_interval {poll_interval!r} is not in (0, {IDLE_INTERVAL}]")
        self.poll_interval = poll_interval
        if flows is not None and not 1024 <= flows <= 1 << 24:
            raise ValueError(f"flows {flows!r} is not in 1024..{1 << 24}")
        self.flows = flows  # dip_flows' size (None: the program's FLOWS_MAX)
        self.obj: BpfObject | None = None
        self.pool: KeyPool | None = None
        self.reaper: TimeWaitReaper | None = None
        self._saved_sysctls: dict[str, str] = {}  # the values found before the first attach()
        self._attached: list[tuple[int, str]] = []  # (ifindex, hook) of each filter we added
        self._own_clsact: list[int] = []  # ifindexes where we created clsact

    # -------------------------------------------------------------- load / attach

    def _rollback_on_failure(self):
        return rollback_on_failure(self.undo, log, "DIP programs' setup on %s for %s:%d",
                                   ",".join(self.ifnames), self.vip, self.port)

    def load(self) -> None:
        """Load the object, write its config, fill and start the key pool; touch no interface.

        On failure roll back what was done and re-raise.
        """
        if self.obj is not None:
            return
        with self._rollback_on_failure():
            self.obj = BpfObject(dip_object(self.object_path),
                                 max_entries={"dip_flows": self.flows, "dip_passed": self.flows} if self.flows else None)
            self.obj.map("dip_config").update(U32.pack(0), self._config)
            for key, value in self._peers:
                self.obj.map("dip_peers").update(key, value)
            # Seed mode keeps a pool too, for the SYNs the controller could not seed (given the slices).
            if self.mode == KEY_MODE_POOL or (self.mode == KEY_MODE_SEED and self.slices):
                self.pool = KeyPool(self.obj.map("dip_pool"), self.obj.map("dip_pool_state"),
                                    self.slices, self.slice_bits, size=self.pool_size,
                                    interval=self.poll_interval)
                self.pool.fill()
                self.pool.start()
            if self.mode != KEY_MODE_NONE:
                self.reaper = TimeWaitReaper(self.obj.map("dip_time_wait"), self._stop_dropping_for_time_wait,
                                             interval=self.poll_interval)
                self.reaper.start()

    def _stop_dropping_for_time_wait(self) -> None:
        """The kernel cannot destroy sockets: clear DIP_FLAG_REAP_TIME_WAIT, so SYNs that find TIME_WAIT go on."""
        self._config = pack_config(**self._config_args, reap_time_wait=False)
        self._live().map("dip_config").update(U32.pack(0), self._config)

    def attach(self) -> None:
        """Set syncookies and attach both programs on every interface; on failure roll back all and re-raise."""
        if self.obj is None:
            raise RuntimeError("DipPrograms is not loaded: load() first")
        if self._attached:
            return
        with self._rollback_on_failure():
            if self.syncookies is not None:
                change_sysctl(SYNCOOKIES, str(self.syncookies), self._saved_sysctls, log)
            self._attach_programs()
        log.info("DIP programs on %s: VIP %s port %d, server id %d, key mode %s, TSval stamping %s",
                 ",".join(self.ifnames), self.vip + (f" and {self.vip6}" if self.vip6 else ""), self.port,
                 self.server_id,
                 {v: k for k, v in KEY_MODES.items()}[self.mode], "on" if self.stamp else "off")

    def apply(self) -> None:
        """``load()`` then ``attach()``; on failure roll back what was done and re-raise."""
        self.load()
        self.attach()

    def _attach_programs(self) -> None:
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
        """Restore everything load() and attach() changed; keep going past failures, then raise the first."""
        with Undo(log) as undo:
            if self._attached or self._own_clsact:
                undo.attempt("detaching tc programs", self._detach)
            if self.pool is not None:
                undo.attempt("stopping the key pool", self.pool.stop)
                self.pool = None
            if self.reaper is not None:
                undo.attempt("stopping the TIME_WAIT reaper", self.reaper.stop)
                self.reaper = None
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
        log.info("detached the DIP programs from %s", ",".join(self.ifnames))

    # -------------------------------------------------------------- maps

    def _live(self) -> BpfObject:
        if self.obj is None:
            raise RuntimeError("DipPrograms is not loaded")
        return self.obj

    def _flow_key(self, client_ip: str, client_port: int, vip_port: int | None) -> bytes:
        if vip_port is None:
            if not self.port:
                raise ValueError("vip_port is needed when the setup matches every port")
            vip_port = self.port
        if ipaddress.ip_address(client_ip).version == 4:
            return pack_flow_key(client_ip, client_port, self.vip, vip_port)
        if self.vip6 is None:
            raise ValueError(f"client_ip {client_ip!r} is IPv6, and this setup serves no IPv6 VIP (vip6)")
        return pack_flow_key(client_ip, client_port, self.vip6, vip_port)

    def seed_key(self, client_ip: str, client_port: int, key: bytes, vip_port: int | None = None) -> None:
        """Give the next SYN/ACK of this flow ``key`` (seed mode), whatever the SYN's ISN.

        The in-band path is the key carrier option in the SYN; this is for a
        key that reaches the agent out of band.
        """
        raw = pack_seeded_flow_state(key)
        self._live().map("dip_flows").update(self._flow_key(client_ip, client_port, vip_port), raw)

    def flow(self, client_ip: str, client_port: int, vip_port: int | None = None) -> FlowState | None:
        raw = self._live().map("dip_flows").lookup(self._flow_key(client_ip, client_port, vip_port))
        return None if raw is None else FlowState.unpack(raw)

    def stats(self) -> dict[str, int]:
        """The programs' counters, summed over CPUs."""
        return read_counters(self._live().map("dip_stats"), STAT_NAMES)

    def usage(self) -> dict[str, int]:
        """``attached_stats`` of these programs, the keys the pool refilled and the TIME_WAIT sockets reaped."""
        obj = self._live()
        usage = _usage(obj.map("dip_stats"), obj.map("dip_flows"))
        usage["pool_refilled"] = self.pool.refilled if self.pool is not None else 0
        usage["time_wait_reaped"] = self.reaper.reaped if self.reaper is not None else 0
        usage["time_wait_reap_failed"] = self.reaper.failed if self.reaper is not None else 0
        return usage
