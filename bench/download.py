"""Long MPTCP downloads through the demo topology, the way a user would run one.

Stock nginx on every DIP, stock curl on a client (``mininet_topos.stock``);
here only what the benchmark adds: the plain L2 baseline route, a warm-up
and a refusal of any download that was not every byte, on one DIP.
"""

from __future__ import annotations

from mininet_topos.datacenter import FABRIC_NET, SERVICE_PORT, VIP
from mininet_topos.stock import StockWebServers, download


def route_vip_to(dc, dip: int | None) -> None:
    """Send the VIP through the MUXes (None: the ECMP route) or straight over the fabric to one DIP.

    The straight route is plain L2 forwarding on the same fabric bridge and
    ports, with no MUX: the baseline the load-balanced download is set against.
    """
    if dip is None:
        dc.router.set_vip_route()
    else:
        dc.router.cmd(f"ip route replace {VIP}/32 via {FABRIC_NET}.{dip} dev {dc.prefix}r0-eth4")


def warm_up(dc, client: str) -> None:
    """Fetch the first 8 MiB once, unmeasured: ARP, datapath flows and nginx's worker are then in place."""
    out = dc.host(client).cmd(f"timeout 60 mptcpize run curl -sS -r 0-8388607 -o /dev/null -w '%{{size_download}}' "
                              f"http://{VIP}:{SERVICE_PORT}/blob")
    if not out.strip().endswith("8388608"):
        raise RuntimeError(f"warm-up download from {client} failed: {out.strip()[-500:]!r}")


def checked_download(dc, client: str, servers: StockWebServers) -> dict:
    """``download``, refusing a result that was not every byte, or whose joins missed their DIP."""
    result = download(dc, client, servers)
    if not result["verified"]:
        raise RuntimeError(f"download from {client} arrived corrupted or short: {result}")
    if result["join_token_not_found"] or result["joins_elsewhere"] or len(result["serving_dips"]) != 1:
        raise RuntimeError(f"download from {client} was not steered to one DIP: {result}")
    return result
