"""Long MPTCP downloads through the demo topology, the way a user would run one.

Stock nginx on every DIP, stock curl on a client (``mininet_topos.stock``);
here only what the benchmark adds: the plain L2 baseline route, the hosts
kept off the PMD's core, and a refusal of any download that was not every
byte, on one DIP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mininet_topos.datacenter import FABRIC_NET, VIP
from mininet_topos.stock import DownloadFailed, StockWebServers, download


def route_vip_to(dc, dip: int | None) -> None:
    """Send the VIP through the MUXes (None: the ECMP route) or straight over the fabric to one DIP.

    The straight route is plain L2 forwarding on the same fabric bridge and
    ports, with no MUX: the baseline the load-balanced download is set against.
    """
    if dip is None:
        dc.router.set_vip_route()
    else:
        dc.router.cmd(f"ip route replace {VIP}/32 via {FABRIC_NET}.{dip} dev {dc.prefix}r0-eth4")


@contextmanager
def hosts_off_pmd() -> Iterator[int]:
    """Run this process, and so every host and daemon a topology starts from it, off the PMD thread's CPU.

    A deployment gives its PMD threads cores of their own. Here the PMD
    shares a 2-core machine with every host: left to the scheduler, curl or
    nginx now and then lands on the PMD's core, and a download through the
    same topology then ran anywhere from 0.45 to 2.3 Gbit/s; with the hosts
    on the other core, 1.9-2.1 (port mode, afxdp). Yields the CPU mask the
    hosts got (0: one CPU, nothing to spare, left as it was).
    """
    from mptcp_lb.datapath import place_pmd, restore_other_config

    others, changed = place_pmd()
    saved = os.sched_getaffinity(0)
    cpus = {c for c in saved if others >> c & 1}
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        yield others if cpus else 0
    finally:
        os.sched_setaffinity(0, saved)
        restore_other_config(changed)


def checked_download(dc, client: str, servers: StockWebServers, timeout: float = 120) -> dict:
    """``download``, refusing a result that was not every byte, or whose joins missed their DIP.

    One that stopped short is a failed transfer (``DownloadFailed``, which a
    benchmark may report and go on); one that arrived whole but different,
    or steered elsewhere, is the product's fault (RuntimeError).
    """
    result = download(dc, client, servers, timeout=timeout)
    if result["bytes"] != servers.blob.size:
        raise DownloadFailed(f"curl from {client} got {result['bytes']} of {servers.blob.size} bytes: {result}")
    if not result["verified"]:
        raise RuntimeError(f"download from {client} arrived corrupted: {result}")
    if result["join_token_not_found"] or result["joins_elsewhere"] or len(result["serving_dips"]) != 1:
        raise RuntimeError(f"download from {client} was not steered to one DIP: {result}")
    return result
