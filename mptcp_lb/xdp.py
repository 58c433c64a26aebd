"""Native XDP programs on an interface, through pyroute2 netlink (IFLA_XDP).

The one place that attaches and detaches the project's XDP programs (the MUX
classifier's uplink program, mptcp_lb/classifier.py). Only native (driver)
mode: generic XDP runs on an skb after the stack built it, which saves
nothing, and on the OVS side of this machine it cost retransmissions
(DESIGN.md §4). Where a driver has no native XDP, the caller falls back to tc.
"""

from __future__ import annotations

import errno
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import XDP_FLAGS_DRV_MODE, XDP_FLAGS_REPLACE, XDP_FLAGS_UPDATE_IF_NOEXIST

from mptcp_lb import bpf

NATIVE = "xdp"  # IFLA_XDP_ATTACHED as pyroute2 names it: a driver-mode program


def _reason(e: NetlinkError) -> str:
    """The kernel's own words (its extended ack, e.g. "Peer MTU is too large to set XDP"), else the errno's."""
    text = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], str) else ""
    return text or os.strerror(e.code)


def attach(ipr: IPRoute, ifindex: int, ifname: str, prog_fd: int, name: str) -> None:
    """Run the program in native mode on the interface; refuse (RuntimeError) if another program is there."""
    try:
        ipr.link("set", index=ifindex, xdp={"attrs": [
            ("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST)]})
    except NetlinkError as e:
        there = ""
        if e.code == errno.EBUSY and (prog_id := attached(ipr, ifindex)[1]) is not None:
            there = f" (program {prog_id} is attached there)"
        raise RuntimeError(f"cannot attach {name} to {ifname} in native XDP mode: {_reason(e)}{there}") from e


def detach(ipr: IPRoute, ifindex: int, name: str) -> bool:
    """Remove the native-mode program named ``name`` from the interface; whether it was there to remove.

    Someone else's program stays, even one that took the place of ours a
    moment ago (OVS's, when the interface becomes an afxdp port again): the
    kernel removes the program only if it is still the one checked here.
    """
    found = _open_named(ipr, ifindex, name)
    if found is None:
        return False
    fd = found[1]
    try:
        ipr.link("set", index=ifindex, xdp={"attrs": [
            ("IFLA_XDP_FD", -1), ("IFLA_XDP_EXPECTED_FD", fd), ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE)]})
    except NetlinkError as e:
        if e.code in (errno.EEXIST, errno.EBUSY):  # replaced since it was read, or held by a link: not ours to take
            return False
        raise
    finally:
        os.close(fd)
    return True


def attached(ipr: IPRoute, ifindex: int) -> tuple[str | None, int | None]:
    """(mode, program id) of the XDP program on the interface: (None, None) when there is none.

    The mode is ``xdp`` (native), ``xdpgeneric``, ``xdpoffload`` or
    ``xdpmulti`` (then the id is the native program's, if there is one).
    """
    links = ipr.get_links(ifindex)
    info = links[0].get_attr("IFLA_XDP") if links else None
    prog_id = info and (info.get_attr("IFLA_XDP_PROG_ID") or info.get_attr("IFLA_XDP_DRV_PROG_ID"))
    if not prog_id:
        return None, None
    return info.get_attr("IFLA_XDP_ATTACHED"), prog_id


def attached_named(ipr: IPRoute, ifindex: int, name: str) -> int | None:
    """The id of the XDP program on the interface if it is named ``name``, else None."""
    found = _open_named(ipr, ifindex, name)
    if found is None:
        return None
    os.close(found[1])
    return found[0]


def _open_named(ipr: IPRoute, ifindex: int, name: str) -> tuple[int, int] | None:
    """(id, a new fd) of the XDP program on the interface if it is named ``name`` (close the fd), else None."""
    prog_id = attached(ipr, ifindex)[1]
    if prog_id is None:
        return None
    try:
        fd = bpf.program_fd_by_id(prog_id)
    except bpf.BpfError as e:
        if e.errno == errno.ENOENT:  # detached and freed since it was read: not there any more
            return None
        raise
    if bpf.program_name(fd) != name[:15]:  # the kernel keeps 15 characters of a name
        os.close(fd)
        return None
    return prog_id, fd
