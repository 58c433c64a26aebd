"""IPv6 VIPs end to end on the real topology: a dual-stack VIP (``address6``) through both MUXes.

The clients connect to the VIP's IPv6 address; the MUXes answer neighbour
discovery by flows and steer IPv6 by the same slots and tags as IPv4; the
DIP agents put the address on ``lo`` and run their programs over IPv6 (key
adoption, server IDs in TSval, second chance by the peers' IPv6 addresses).
Every connection is judged by the DIP that terminated it, and every byte by
its SHA-256. Port mode cannot announce over IPv6, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mininet_topos.datacenter import VIP6, mux_address6, mux_mac
from mininet_topos.harness import Datacenter, wait_for
from mptcp_lb.config import parse_config
from mptcp_lb.mptcp_codec import slice_of
from tests.integration.in_flight import counters, resets, rsts_sent, uploads
from tests.integration.netns import REPO

TRANSITION = 15.0


@pytest.mark.parametrize("mode,key_source", [("token", "pool"), ("hybrid", "seed")])
def test_the_ipv6_demo_reports_every_connection_multipath_on_one_dip_and_verified(tmp_path, mode, key_source):
    report_path = tmp_path / "r.json"
    run = subprocess.run([sys.executable, "-m", "mptcp_lb.cli", "demo", "--ipv6", "--mode", mode,
                          "--key-source", key_source, "--json", str(report_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "DEMO PASSED" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["vip"] == VIP6 and len(report["connections"]) == 48
    summary = report["summary"]
    assert summary["all_verified"] and summary["all_multipath"] and summary["all_one_dip"], summary
    for c in report["connections"]:
        # Every subflow to the service port is IPv6; in hybrid mode c1 also joins the DIP's IPv4 VIP:P,
        # which the DIP announces on the IPv6 connection.
        to_service = [sf for sf in c["subflows"] if sf["vip"].endswith(":80")]
        assert to_service and all(sf["client"].startswith("[fd00:10:") and sf["vip"] == f"[{VIP6}]:80"
                                  for sf in to_service), c
        if mode == "token" or c["client_host"] == "c2":
            assert to_service == c["subflows"], c


def test_port_mode_over_ipv6_is_refused_naming_the_option_space():
    run = subprocess.run([sys.executable, "-m", "mptcp_lb.cli", "demo", "--ipv6", "--mode", "port"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "vips[0].address6: fd00:10::100: port mode cannot serve IPv6" in run.stderr
    assert "does not fit beside TCP timestamps" in run.stderr and "use mode hybrid" in run.stderr


@pytest.fixture(scope="module")
def hybrid():
    with Datacenter(prefix=f"h6{os.getpid() % 1000}", mode="hybrid", key_source="pool", ipv6=True,
                    transition_time=TRANSITION, spare_dips=1) as dc:
        yield dc


def test_a_dual_stack_hybrid_vip_serves_both_client_kinds_over_ipv6_and_ipv4(hybrid):
    dc = hybrid
    vip = parse_config(dc.config).vips[0]
    before = {i: dc.nstat(f"d{i}") for i in dc.dip_ids()}
    runs = {(client, v6): dc.run_traffic(12, 64 * 1024, client=client, min_subflows=subflows, ipv6=v6)
            for client, subflows in (("c1", 3), ("c2", 2)) for v6 in (True, False)}
    for (client, v6), results in runs.items():
        assert all(r.get("verified") for r in results), (client, v6, results)
        for r in results:
            subflows = r["reply"]["subflows"]  # what the DIP that answered had terminated by then
            assert len(subflows) >= 2, r
            dip = vip.dip(r["reply"]["dip"])
            assert slice_of(r["reply"]["token"], vip.slice_bits) in dip.slices, r  # keyed from its own slice
            on_service = [sf for sf in subflows if sf["local"].endswith(":80")]
            if v6:  # the first subflow and the joins to the service port are IPv6 (c1 also joins IPv4 VIP:P)
                assert on_service and all(sf["local"] == f"[{VIP6}]:80" and sf["remote"].startswith("[fd00:10:")
                           for sf in on_service), r
            else:
                assert all(not sf["local"].startswith("[") for sf in subflows), r
    after = {i: dc.nstat(f"d{i}") for i in dc.dip_ids()}
    for i in dc.dip_ids():  # the DIPs' own word: every join found its token, where it landed
        assert after[i].get("MPTcpExtMPJoinNoTokenFound", 0) == before[i].get("MPTcpExtMPJoinNoTokenFound", 0)
    shown = dc.api("GET", "/vips")[0]
    assert shown["address6"] == VIP6 and all(d["address6"].startswith("fd00:12::") for d in shown["dips"]), shown
    # The router resolved each MUX's IPv6 address to the MUX's MAC, answered by flows.
    for i in (1, 2):
        neigh = dc.router.cmd(f"ip -6 neigh show {mux_address6(i)}")
        assert f"lladdr {mux_mac(i)}" in neigh and "FAILED" not in neigh, neigh


def test_ipv6_uploads_in_flight_survive_a_dip_added(hybrid):
    """Slots move to a new DIP while IPv6 uploads are in flight: nothing is reset, every byte arrives.

    The MUXes steer every packet after the handshake by the server ID in its
    TSecr, so the uploads keep their DIP whatever their slots do; new
    connections then reach the new DIP too.
    """
    dc = hybrid
    before = counters(dc, "c2")
    run = uploads(dc, ipv6=True, client=("c2", 2))
    reply = dc.add_dip(4)
    assert isinstance(reply, list), reply
    results = run.results()
    after = counters(dc, "c2")
    assert all(r.get("verified") for r in results), results
    assert all(v == 0 for v in resets(before, after).values()), resets(before, after)
    assert all(v == 0 for v in rsts_sent(before, after).values()), rsts_sent(before, after)
    wait_for("DIP 4 in the slot table", lambda: dc.slot_shares().get(4, 0) > 0, 15)
    fresh = dc.run_traffic(48, 32 * 1024, client="c2", min_subflows=2, ipv6=True)
    assert all(r.get("verified") for r in fresh), fresh
    assert 4 in {r["reply"]["dip"] for r in fresh}  # 48 connections miss a quarter of the slots 1 in 10^6
