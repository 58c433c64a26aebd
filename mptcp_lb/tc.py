"""tc clsact hooks for BPF programs (direct action), through pyroute2 netlink.

The one place that adds and removes the project's tc filters: the DIP's
token programs (dip_agent/programs.py) and the MUX classifier
(mptcp_lb/classifier.py) both go through it. Each hook holds at most one
filter of ours, at a fixed priority and handle, so a filter left behind by a
killed process is found and replaced rather than stacked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
FILTER_PRIO = 1
FILTER_HANDLE = 1
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)  # the filter, qdisc or interface is already gone
_TCA_BPF_ID = 11  # uapi linux/pkt_cls.h; pyroute2 0.9 does not decode it
_NLA = struct.Struct("=HH")


def add_clsact(ipr: IPRoute, ifindex: int) -> bool:
    """Give the interface a clsact qdisc; False when one was there already (then it is shared, not ours)."""
    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise
        return False
    return True


def del_clsact(ipr: IPRoute, ifindex: int) -> None:
    """Remove the clsact qdisc and every filter on it; nothing to do when it is gone."""
    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def attach(ipr: IPRoute, ifindex: int, ifname: str, hook: str, prog_fd: int, name: str) -> None:
    """Put the program on the hook (INGRESS or EGRESS), taking the place of a filter of ours left there."""
    args = dict(fd=prog_fd, name=name, parent=hook, prio=FILTER_PRIO, classid=1, direct_action=True)
    try:
        try:
            ipr.tc("add-filter", "bpf", ifindex, FILTER_HANDLE, **args)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            log.warning("replacing a filter left on %s (%s prio %d) by %s", ifname, hook, FILTER_PRIO, name)
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, **args)
    except NetlinkError as e:
        raise RuntimeError(f"cannot attach {name} on {ifname} ({hook} prio {FILTER_PRIO}): "
                           f"{os.strerror(e.code)}") from e


def detach(ipr: IPRoute, ifindex: int, hook: str) -> None:
    """Remove our filter from the hook; nothing to do when it (or the interface) is gone."""
    try:
        ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=hook, prio=FILTER_PRIO)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def _nested_u32(attr, attr_type: int) -> int | None:
    """The u32 of one attribute nested in ``attr``, read from the raw message."""
    data, pos, end = attr.data, attr.offset + _NLA.size, attr.offset + attr.length
    while pos + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < _NLA.size or pos + length > end:
            return None
        if kind & 0x3FFF == attr_type and length >= _NLA.size + 4:
            return struct.unpack_from("=I", data, pos + _NLA.size)[0]
        pos += (length + 3) & ~3
    return None


def attached_prog_id(ipr: IPRoute, ifindex: int, hook: str) -> int | None:
    """The id of the BPF program our filter (FILTER_PRIO, FILTER_HANDLE) on the hook runs, or None."""
    try:
        filters = ipr.get_filters(ifindex, parent=int(hook.replace(":", ""), 16))
    except NetlinkError as e:
        if e.code in _GONE:
            return None
        raise
    for f in filters:
        options = f.get_attr("TCA_OPTIONS")
        ours = f["handle"] == FILTER_HANDLE and f["info"] >> 16 == FILTER_PRIO  # tcm_info: prio << 16 | protocol
        if ours and f.get_attr("TCA_KIND") == "bpf" and options is not None:
            prog_id = _nested_u32(options, _TCA_BPF_ID)
            if prog_id is not None:
                return prog_id
    return None


def _attached_prog(ifname: str, hook: str) -> int:
    """The id of the program our filter on ``ifname``'s hook runs; LookupError names what is missing."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"interface {ifname} does not exist")
        prog_id = attached_prog_id(ipr, found[0], hook)
    if prog_id is None:
        raise LookupError(f"no program of ours is attached to {ifname}")
    return prog_id


@contextlib.contextmanager
def attached_maps(ifname: str, hook: str):
    """The maps, by name, of the program our filter on ``ifname``'s hook runs; closed on exit.

    LookupError names what is missing: the interface or our filter.
    """
    from mptcp_lb import bpf

    maps = bpf.program_maps(_attached_prog(ifname, hook))
    try:
        yield maps
    finally:
        for m in maps.values():
            m.close()


def attached_counters(ifname: str, hook: str, map_name: str, names) -> dict[str, int]:
    """The per-CPU counters map ``map_name`` of the program on ``ifname``'s hook, summed (see attached_maps)."""
    from mptcp_lb import bpf

    return bpf.program_counters(_attached_prog(ifname, hook), map_name, names, ifname)
