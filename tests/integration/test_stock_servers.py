"""Stock servers and clients behind the DIP agent: nginx on every DIP and curl on a client, both under
``mptcpize``, none of it written for mptcp-lb. The agents only configure the hosts (no ``--echo``).

Judged from the DIPs' kernel counters (which DIP took the MP_CAPABLE SYN,
where each join arrived, whether any join missed its token) and from the
SHA-256 of the file curl saved.
"""

from __future__ import annotations

import os

import pytest

from mininet_topos.datacenter import CLIENT_NETS, VIP
from mininet_topos.harness import Datacenter
from mininet_topos.stock import Blob, StockWebServers, download

N_DIPS = 3
SIZE = 16 << 20
DOWNLOADS = 4
# The DIPs are down until nginx serves, and their slots' return to them is waited out (no traffic is in
# flight then, so a short second chance is enough).
TRANSITION = 5.0


@pytest.fixture(scope="module")
def blob():
    with Blob(SIZE) as b:
        yield b


def build(mode: str, key_source: str = "pool") -> Datacenter:
    from mininet.log import setLogLevel

    setLogLevel("warning")
    return Datacenter(n_dips=N_DIPS, prefix=f"w{os.getpid() % 1000}", mode=mode, key_source=key_source, echo=False,
                      transition_time=TRANSITION)


def check_steered(result: dict) -> None:
    """Every byte arrived; one DIP took the connection, and every join reached it and found its token."""
    assert result["verified"], result
    assert len(result["serving_dips"]) == 1, result
    assert result["joins_at_serving_dip"] >= 1, result  # multipath
    assert result["joins_elsewhere"] == 0 and result["join_token_not_found"] == 0, result


@pytest.mark.parametrize("mode, client", [("port", "c1"), ("token", "c2"), ("hybrid", "c2")])
def test_stock_nginx_and_curl_through_the_vip(blob, mode, client):
    """Port mode's client follows ADD_ADDR to the announced ports; the token modes' is stock Linux, joining
    the service port."""
    with build(mode) as dc, StockWebServers(dc, blob) as web:
        for _ in range(DOWNLOADS):
            check_steered(download(dc, client, web))


def test_path_mtu_discovery_reaches_the_serving_dip(blob):
    """The router's links to c1 carry 1280 bytes, but c1 offers MSS 1460. The DIP's first full-size
    packets draw ICMP "fragmentation needed" to the VIP, which the MUXes copy to every DIP; the serving
    DIP lowers its path MTU and the download completes. Dropped at the MUX, it would hang."""
    with build("port") as dc, StockWebServers(dc, blob) as web:
        dc.narrow_client_path(1280, "c1")
        try:
            result = download(dc, "c1", web, timeout=60)
            check_steered(result)
            (serving,) = result["serving_dips"]
            learned = {net: dc.host(serving).cmd(f"ip route get {net}.1 from {VIP}") for net in CLIENT_NETS["c1"]}
        finally:
            dc.narrow_client_path(None, "c1")
        icmp = {d: c["IcmpInDestUnreachs"] for d, c in result["per_dip"].items()}
        assert all(n > 0 for n in icmp.values()), icmp  # a copy for every DIP, the serving one among them
        assert all("mtu 1280" in route for route in learned.values()), learned  # one per client address
