"""BGP on the real topology: BIRD 2 on the router and on each MUX, BFD, ECMP by ``merge paths``.

The router learns the VIP from the speakers on both MUX bridges; a MUX whose
datapath goes (its bridge deleted, its links left up, so only BFD can tell)
is withdrawn within 3 s while paced uploads cross it, and not one
connection is lost: the remaining MUX hashes them to the same DIPs. A MUX
cut off from its controller is withdrawn once its leased flows lapse, and
announced again when the controller has it back. Judged from the router's
kernel routing table, the client's and DIPs' kernel counters, and the bytes
every DIP hashed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from mininet_topos.harness import Datacenter, free_ports, wait_for
from mptcp_lb.config import parse_config
from tests.integration.in_flight import client_of, counters, grown, resets, rsts_sent, uploads

WITHDRAWAL_LIMIT = 3.0  # the bound: BFD (3 x 100 ms) is what meets it


CUT_OFF_LEASE = 3  # lease_time where a test waits for a cut-off MUX to be withdrawn


@pytest.fixture
def bgp_dc(request):
    """The demo topology with BGP; the parameter is the mode, or (mode, lease_time)."""
    mode, lease = request.param if isinstance(request.param, tuple) else (request.param, None)
    with Datacenter(prefix=f"b{os.getpid() % 1000}", mode=mode, key_source="pool", bgp=True,
                    bgp_lease_time=lease) as dc:
        yield dc


def vip_packets(dc, i: int) -> int:
    """Packets MUX i's bridge has handed towards the DIPs (its flows to the VIP, group and tag flows alike)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", dc.mux_bridge(i), "table=0"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split("n_packets=")[1].split(",")[0]) for line in out.splitlines()
               if "nw_dst=10.0.0.100" in line and "actions=drop" not in line)


def judge(dc, results, before: dict, after: dict, subflows: int) -> None:
    assert all(r.get("verified") for r in results), results
    assert all(len(r["reply"]["subflows"]) >= subflows for r in results), results
    assert all(v == 0 for v in resets(before, after).values()), resets(before, after)
    assert all(v == 0 for v in rsts_sent(before, after).values()), rsts_sent(before, after)
    assert all(v == 0 for v in grown(before, after, "MPTcpExtMPJoinNoTokenFound").values())


@pytest.mark.parametrize("bgp_dc", ["port", "token"], indirect=True)
def test_a_failed_mux_is_withdrawn_within_3s_and_no_connection_is_lost(bgp_dc):
    dc = bgp_dc
    client, subflows = client_of(dc)
    assert dc.vip_nexthops() == ["10.1.1.1", "10.1.2.1"]  # learnt over BGP from both MUXes, merged into ECMP
    assert dc.router.cmd("ip route show 10.0.0.100/32").split()[1:3] == ["proto", "bird"]
    before = counters(dc)
    run = uploads(dc)
    crossing = vip_packets(dc, 1)
    wait_for("uploads crossing MUX 1", lambda: vip_packets(dc, 1) > crossing + 50, 10)  # data in flight through it
    failover = dc.fail_mux_and_time_withdrawal(1)
    print(f"\n[bgp failover {dc.mode}] {failover:.3f} s")
    assert failover <= WITHDRAWAL_LIMIT
    assert dc.vip_nexthops() == ["10.1.2.1"]
    results = run.results()
    after = counters(dc)
    print(json.dumps({"retransmitted": grown(before, after, "TcpRetransSegs")["client"]}))
    judge(dc, results, before, after, subflows)
    fresh = dc.run_traffic(conns=6, size=32 * 1024, min_subflows=subflows, client=client)
    assert all(r.get("verified") for r in fresh), fresh


@pytest.mark.parametrize("bgp_dc", [("port", CUT_OFF_LEASE)], indirect=True)
def test_a_mux_cut_off_from_its_controller_is_withdrawn_then_announced_again(bgp_dc):
    """Its flows stay (fail secure) and keep forwarding, but their lease lapses: routing takes it out."""
    dc = bgp_dc
    client, subflows = client_of(dc)
    before = counters(dc)
    run = uploads(dc)
    bridge = dc.mux_bridge(2)
    flows = dc.mux_flow_counts()["mux2"]
    target = subprocess.run(["ovs-vsctl", "get-controller", bridge], capture_output=True, text=True,
                            check=True).stdout.split()
    t0 = time.monotonic()
    # Point it at a port nothing listens on: it keeps its flows (fail secure), and its controller is gone.
    # (del-controller would not do: a bridge left with no controller at all has its flows flushed.)
    subprocess.run(["ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{free_ports(1)[0]}"], check=True)
    dc.wait_announced([1], timeout=10)
    cut_off = time.monotonic() - t0
    lease = parse_config(dc.config).muxes[1].bgp.lease_time
    assert lease == CUT_OFF_LEASE
    print(f"\n[bgp controller loss] withdrawn {cut_off:.3f} s after the MUX lost its controller (lease {lease} s)")
    assert cut_off <= lease + WITHDRAWAL_LIMIT
    # The lease ran out and nothing else went: the speaker's 4 flows lapsed, the VIP's are all still there.
    assert dc.mux_flow_counts()["mux2"] == flows - 4
    subprocess.run(["ovs-vsctl", "set-controller", bridge, *target], check=True)
    dc.wait_announced([1, 2], timeout=30)  # the controller renews the lease: BGP and BFD come back up
    results = run.results()
    judge(dc, results, before, counters(dc), subflows)


@pytest.mark.parametrize("bgp_dc", ["token"], indirect=True)
def test_a_controller_restart_withdraws_nothing_and_resets_nothing(bgp_dc):
    """SIGKILLed and back 2 s later: the default lease outlives it, so both MUXes stay announced throughout."""
    dc = bgp_dc
    client, subflows = client_of(dc)
    before = counters(dc)
    run = uploads(dc)
    both = dc.vip_nexthops()
    seen = []
    dc.kill_controller()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the scenario: the controller stays away 2 s
        seen.append(dc.vip_nexthops())
        time.sleep(0.05)
    dc.start_controller()
    dc.wait_programmed()
    deadline = time.monotonic() + 2  # and renews the leases: BFD and BGP never noticed
    while time.monotonic() < deadline:
        seen.append(dc.vip_nexthops())
        time.sleep(0.05)
    assert all(hops == both for hops in seen), [h for h in seen if h != both][:3]
    assert sorted(dc.bfd_up_speakers()) == ["10.1.1.2", "10.1.2.2"]
    results = run.results()
    judge(dc, results, before, counters(dc), subflows)


def test_the_bgp_demo_fails_a_mux_under_load_and_reports_the_withdrawal(tmp_path):
    """``mptcp-lb demo --bgp --fail-mux 1`` in hybrid mode: both kinds of client, one MUX gone mid-transfer."""
    report_path = tmp_path / "report.json"
    demo = subprocess.run([sys.executable, "-m", "mptcp_lb.cli", "demo", "--bgp", "--fail-mux", "1", "--mode",
                           "hybrid", "--key-source", "pool", "--conns", "10", "--json", str(report_path)],
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    report = json.loads(report_path.read_text())
    routing = report["routing"]
    assert routing["protocol"] == "bgp"
    assert routing["nexthops_before"] == ["10.1.1.1", "10.1.2.1"] and routing["nexthops_after"] == ["10.1.2.1"]
    assert 0 < routing["failover_s"] <= WITHDRAWAL_LIMIT
    assert all(report["summary"][k] for k in ("all_verified", "all_multipath", "all_one_dip", "spread_ok"))
    assert {c["client_host"] for c in report["connections"]} == {"c1", "c2"} and len(report["connections"]) == 10
