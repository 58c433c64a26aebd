"""OVS userspace-datapath ports: which port types this host can use, and how each is configured.

There is no OVS kernel module here, so every bridge is ``datapath_type=netdev``
and OVS reads its ports itself, in one of two ways:

- ``afxdp``: an AF_XDP socket fed by an XDP program OVS attaches to the
  interface (native mode on a veth). A PMD thread polls it. Five to seven
  times the download goodput of ``system`` through the demo topology, with
  no retransmissions (``make bench``).
- ``afxdp-nonpmd``: the same socket, polled by ovs-vswitchd's main thread.
- ``system``: an AF_PACKET socket polled by the main thread. The fallback on
  kernels without AF_XDP sockets or an OVS built without them. Its socket
  buffer (``net.core.rmem_default``) is where packets are dropped under load.

``default_port_type()`` is ``afxdp`` where the kernel and OVS both support it.

PMD threads busy-poll their core (``afxdp`` ports only). ``place_pmd()``
gives OVS one PMD thread, on the last CPU, unless the operator already chose
(``pmd-cpu-mask``), and lets it sleep up to ``PMD_MAXSLEEP_US`` when its
queues are idle (``pmd-maxsleep``) so an idle datapath gives its core back.
It returns the other CPUs (on a test bed whose hosts share the machine, their
receive processing belongs there: ``mininet_topos.datacenter.tune_interfaces``)
and what it changed, for ``restore_other_config``. A production MUX
dedicates cores to PMDs instead, and leaves maxsleep at 0.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
from functools import cache

log = logging.getLogger(__name__)

PORT_TYPES = ("afxdp", "afxdp-nonpmd", "system")
PMD_PORT_TYPES = frozenset({"afxdp"})  # polled by PMD threads
XDP_PORT_TYPES = frozenset({"afxdp", "afxdp-nonpmd"})  # OVS reads them through its own XDP program
AF_XDP = 44  # not in Python's socket module


def port_options(port_type: str) -> list[str]:
    """``ovs-vsctl set Interface`` column settings for a port of ``port_type``.

    ``xdp-mode=best-effort`` lets OVS pick native mode on a veth; OVS's docs
    warn that TCP over veth in generic mode does not work.
    """
    if port_type not in PORT_TYPES:
        raise ValueError(f"port type {port_type!r} is not one of {', '.join(PORT_TYPES)}")
    if port_type == "system":
        return ["type=system"]
    return [f"type={port_type}", "options:xdp-mode=best-effort"]


def kernel_has_af_xdp() -> bool:
    """Whether this kernel creates AF_XDP sockets (CONFIG_XDP_SOCKETS)."""
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EINVAL):
            return False
        raise
    return True


def ovs_iface_types() -> frozenset[str]:
    """The interface types the running ovs-vswitchd supports (empty when OVS is not reachable)."""
    proc = subprocess.run(["ovs-vsctl", "--timeout=5", "get", "Open_vSwitch", ".", "iface_types"],
                          capture_output=True, text=True)
    if proc.returncode:
        return frozenset()
    return frozenset(t.strip() for t in proc.stdout.strip().strip("[]").split(",") if t.strip())


@cache
def default_port_type() -> str:
    """``afxdp`` when both the kernel and OVS support it, else ``system`` (with a warning saying why)."""
    if "afxdp" not in ovs_iface_types():
        log.warning("OVS offers no afxdp ports here: using AF_PACKET (system) ports, several times slower")
        return "system"
    if not kernel_has_af_xdp():
        log.warning("this kernel has no AF_XDP sockets: using AF_PACKET (system) ports, several times slower")
        return "system"
    return "afxdp"


def resolve_port_type(port_type: str | None) -> str:
    """``port_type`` checked, or the host's default when None."""
    if port_type is None:
        return default_port_type()
    port_options(port_type)  # validates
    return port_type


PMD_MAXSLEEP_US = 50


def _other_config(key: str) -> str | None:
    proc = subprocess.run(["ovs-vsctl", "--timeout=5", "--if-exists", "get", "Open_vSwitch", ".",
                           f"other_config:{key}"], capture_output=True, text=True)
    value = proc.stdout.strip().strip('"')
    return value if proc.returncode == 0 and value else None


def _set_other_config(key: str, value: str) -> None:
    subprocess.run(["ovs-vsctl", "--timeout=5", "set", "Open_vSwitch", ".", f"other_config:{key}={value}"],
                   check=True, capture_output=True)


def parse_cpu_mask(text: str) -> int:
    """A CPU mask as OVS and taskset write it: hex, with or without 0x."""
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"CPU mask {text!r} is not hexadecimal") from None


def place_pmd() -> tuple[int, dict[str, str | None]]:
    """Pin OVS's PMD thread to the last CPU unless the operator chose; return the other CPUs and what changed.

    The second value maps each ``other_config`` key this set to its previous
    value (None: it was unset), for ``restore_other_config``. With one CPU
    there is nothing to spare: the PMD shares it, and the mask is 0.
    """
    cpus = sorted(os.sched_getaffinity(0))
    everything = sum(1 << c for c in cpus)
    changed: dict[str, str | None] = {}
    chosen = _other_config("pmd-cpu-mask")
    if chosen is None:
        mask = 1 << cpus[-1]
        _set_other_config("pmd-cpu-mask", f"{mask:x}")
        changed["pmd-cpu-mask"] = None
        log.info("OVS PMD thread pinned to CPU %d (other_config:pmd-cpu-mask=%x)", cpus[-1], mask)
    else:
        mask = parse_cpu_mask(chosen)
    if _other_config("pmd-maxsleep") is None:
        _set_other_config("pmd-maxsleep", str(PMD_MAXSLEEP_US))
        changed["pmd-maxsleep"] = None
    return everything & ~mask, changed


def restore_other_config(changed: dict[str, str | None]) -> None:
    """Put back the ``other_config`` keys ``place_pmd`` set."""
    for key, value in changed.items():
        if value is None:
            subprocess.run(["ovs-vsctl", "--timeout=5", "remove", "Open_vSwitch", ".", "other_config", key],
                           capture_output=True)
        else:
            _set_other_config(key, value)
