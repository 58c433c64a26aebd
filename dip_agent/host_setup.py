"""Prepare a DIP's network namespace for port-based MPTCP steering, and put it back.

The DIP answers for the VIP (VIP/32 on ``lo``, without ARPing for it, and
its IPv6 address as a /128 there too, which Linux never answers neighbour
solicitations for on another interface), sets
the C flag so clients never join VIP:service-port, and announces
ADD_ADDR(VIP, P) with P in its own port range, so that every further subflow
lands on a port the MUXes steer to this DIP. Every value changed is
remembered so ``undo()`` leaves the namespace as it was; in particular the
signal endpoint with a port must go, or its kernel listener keeps the
namespace alive after ``ip netns del``.
"""

from __future__ import annotations

import logging
import os
import socket

from pyroute2 import IPRoute, MPTCP
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from mptcp_lb.mptcp_sockopt import MptcpUnavailable

from .sysctl import PROC_SYS, change_sysctl, read_sysctl, restore_sysctls, sysctl_name
from .undo import Undo, rollback_on_failure

log = logging.getLogger(__name__)

MPTCP_ENABLED = "net/mptcp/enabled"
MPTCP_GENL_FAMILY = "mptcp_pm"
MPTCP_PM_ADDR_FLAG_SIGNAL = 1
IFA_F_NODAD = 0x02  # linux/if_addr.h

# ARP: answer only for addresses on the receiving interface, and never source
# ARP from the VIP, so only the MUXes attract VIP traffic.
# allow_join_initial_addr_port=0 sets the C flag in the DIP's MP_CAPABLE.
SYSCTLS = {
    "net/ipv4/conf/all/arp_ignore": "1",
    "net/ipv4/conf/all/arp_announce": "2",
    "net/ipv4/conf/lo/arp_ignore": "1",
    "net/ipv4/conf/lo/arp_announce": "2",
    "net/mptcp/allow_join_initial_addr_port": "0",
}

# Seconds before the kernel sends an ADD_ADDR again that the client has not echoed. Its default is
# 120, so a lost ACK carrying the announcement leaves a connection without its announced-port
# subflows for two minutes (the likely cause of a hybrid-mode test run in which one connection of
# twelve never joined its announced port). A DIP announces once per connection: resending after a
# second costs nothing.
ADD_ADDR_RESEND = "1"

__all__ = ["ADD_ADDR_RESEND", "DipHostSetup", "MptcpUnavailable", "SYSCTLS", "check_mptcp_available"]


def check_mptcp_available() -> None:
    """Raise MptcpUnavailable naming what this namespace lacks for in-kernel MPTCP."""
    try:
        enabled = read_sysctl(MPTCP_ENABLED)
    except FileNotFoundError as e:
        raise MptcpUnavailable(f"{os.path.join(PROC_SYS, MPTCP_ENABLED)} does not exist: "
                               "the kernel is built without CONFIG_MPTCP") from e
    if enabled != "1":
        raise MptcpUnavailable(f"{sysctl_name(MPTCP_ENABLED)} is {enabled} in this network "
                               "namespace; it must be 1")
    genl = GenericNetlinkSocket()
    try:
        genl.discovery(MPTCP_GENL_FAMILY)
    except NetlinkError as e:
        raise MptcpUnavailable(f"generic netlink family {MPTCP_GENL_FAMILY!r} is not resolvable "
                               f"({e.args[1] if len(e.args) > 1 else e}): no in-kernel MPTCP "
                               "path manager") from e
    finally:
        genl.close()


def _endpoints(pm: MPTCP) -> list[dict]:
    """The in-kernel PM endpoints as plain dicts (id, addr, port, flags)."""
    result = []
    for msg in pm.endpoint("show"):
        attr = msg.get_attr("MPTCP_PM_ATTR_ADDR")
        result.append({
            "id": attr.get_attr("MPTCP_PM_ADDR_ATTR_ID"),
            "addr": attr.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4") or attr.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6"),
            "port": attr.get_attr("MPTCP_PM_ADDR_ATTR_PORT") or 0,
            "flags": attr.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS") or 0,
        })
    return result


def _limits(pm: MPTCP) -> dict:
    (msg,) = pm.limits("show")
    return {"subflows": msg.get_attr("MPTCP_PM_ATTR_SUBFLOWS"),
            "add_addr_accepted": msg.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS")}


class DipHostSetup:
    """Idempotent setup of the current network namespace as a DIP.

    Port scheme: announce ``VIP:announce_port`` (again after ADD_ADDR_RESEND
    seconds until the client echoes it) and set the C flag so clients join
    only there. Token scheme: ``announce_port=None, c_flag=False`` so
    clients join VIP:service-port. Hybrid: announce, without the C flag.
    """

    def __init__(self, vip_address: str, announce_port: int | None, *, c_flag: bool = True, subflows: int = 8,
                 vip6: str | None = None):
        if announce_port is not None and not 1 <= announce_port <= 65535:
            raise ValueError(f"announce_port {announce_port} is not in 1..65535")
        if not 0 <= subflows <= 8:
            raise ValueError(f"subflows {subflows} is not in 0..8 (the kernel's limit)")
        self.vip = vip_address
        self.vip6 = vip6
        self.announce_port = announce_port
        self.sysctls = {**SYSCTLS, "net/mptcp/allow_join_initial_addr_port": "0" if c_flag else "1",
                        **({"net/mptcp/add_addr_timeout": ADD_ADDR_RESEND} if announce_port is not None else {})}
        self.subflows = subflows
        # What apply() changed, with the values found before the first apply().
        self._saved_sysctls: dict[str, str] = {}
        self._saved_limits: dict | None = None
        self._endpoint_id: int | None = None
        self._added: list[tuple[str, int]] = []  # (address, prefix length) apply() put on lo

    def _endpoint_wanted(self, ep: dict) -> bool:
        return (ep["addr"] == self.vip and ep["port"] == self.announce_port
                and ep["flags"] == MPTCP_PM_ADDR_FLAG_SIGNAL)

    def apply(self) -> None:
        """Configure the namespace; on failure, roll back what was done and re-raise."""
        check_mptcp_available()
        with rollback_on_failure(self.undo, log, "DIP setup for VIP %s port %s", self.vip, self.announce_port):
            self._apply_address()
            self._apply_sysctls()
            with MPTCP() as pm:
                self._apply_limits(pm)
                if self.announce_port is not None:
                    self._apply_endpoint(pm)

    def _apply_address(self) -> None:
        wanted = [(self.vip, 32, socket.AF_INET), *([(self.vip6, 128, socket.AF_INET6)] if self.vip6 else [])]
        with IPRoute() as ipr:
            (lo,) = ipr.link_lookup(ifname="lo")
            for address, prefixlen, family in wanted:
                present = any(a.get_attr("IFA_LOCAL") == address or a.get_attr("IFA_ADDRESS") == address
                              for a in ipr.get_addr(index=lo, family=family))
                if present or (address, prefixlen) in self._added:
                    continue
                # No duplicate address detection: every DIP holds the VIP, on lo, where no neighbour asks.
                ipr.addr("add", index=lo, address=address, prefixlen=prefixlen,
                         **({"flags": IFA_F_NODAD} if family == socket.AF_INET6 else {}))
                self._added.append((address, prefixlen))
                log.info("added %s/%d on lo", address, prefixlen)

    def _apply_sysctls(self) -> None:
        for path, value in self.sysctls.items():
            change_sysctl(path, value, self._saved_sysctls, log)

    def _apply_limits(self, pm: MPTCP) -> None:
        old = _limits(pm)
        if self._saved_limits is None:
            self._saved_limits = old
        wanted = {"subflows": self.subflows, "add_addr_accepted": 0}
        if old != wanted:
            pm.limits("set", **wanted)
            log.info("MPTCP limits: %s -> %s", old, wanted)

    def _apply_endpoint(self, pm: MPTCP) -> None:
        existing = _endpoints(pm)
        if any(self._endpoint_wanted(ep) for ep in existing):
            return
        try:
            pm.endpoint("add", addr=self.vip, port=self.announce_port, flags=MPTCP_PM_ADDR_FLAG_SIGNAL)
        except NetlinkError as e:
            raise RuntimeError(
                f"cannot add MPTCP signal endpoint {self.vip} port {self.announce_port}: "
                f"{os.strerror(e.code)}; existing endpoints: {existing}") from e
        self._endpoint_id = next(ep["id"] for ep in _endpoints(pm) if self._endpoint_wanted(ep))
        log.info("added MPTCP endpoint %s port %d signal (id %d)", self.vip, self.announce_port,
                 self._endpoint_id)

    def undo(self) -> None:
        """Restore everything apply() changed; keep going past failures, then raise the first."""
        with Undo(log) as undo:
            if self._endpoint_id is not None or self._saved_limits is not None:
                with MPTCP() as pm:
                    if self._endpoint_id is not None:
                        undo.attempt("deleting MPTCP endpoint", self._undo_endpoint, pm)
                    if self._saved_limits is not None:
                        undo.attempt("restoring MPTCP limits", self._undo_limits, pm)
            restore_sysctls(self._saved_sysctls, undo.attempt)
            for address, prefixlen in reversed(self._added):
                undo.attempt(f"deleting {address}/{prefixlen} from lo", self._undo_address, address, prefixlen)

    def _undo_endpoint(self, pm: MPTCP) -> None:
        endpoint_id, self._endpoint_id = self._endpoint_id, None
        if not any(ep["id"] == endpoint_id and self._endpoint_wanted(ep) for ep in _endpoints(pm)):
            log.warning("MPTCP endpoint %s port %d (id %d) was already gone", self.vip,
                        self.announce_port, endpoint_id)
            return
        pm.endpoint("del", id=endpoint_id)
        log.info("deleted MPTCP endpoint %s port %d (id %d)", self.vip, self.announce_port, endpoint_id)

    def _undo_limits(self, pm: MPTCP) -> None:
        limits, self._saved_limits = self._saved_limits, None
        pm.limits("set", **limits)
        log.info("MPTCP limits restored to %s", limits)

    def _undo_address(self, address: str, prefixlen: int) -> None:
        self._added.remove((address, prefixlen))
        with IPRoute() as ipr:
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.addr("del", index=lo, address=address, prefixlen=prefixlen)
        log.info("deleted %s/%d from lo", address, prefixlen)
