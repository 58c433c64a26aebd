"""Token-based and hybrid steering on the real thing: the tc classifier and its tap before OVS, os-ken
seeding SYNs, DIPs adopting keys through SYN cookies and stamping timestamps.

The client c2 is stock Linux: a ``subflow`` endpoint that joins VIP:80, the
service port. Every claim is checked from the DIP side (subflows terminated,
MPTCP token, SHA-256 of the bytes received).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mininet_topos.datacenter import SERVICE_PORT, VIP
from mininet_topos.harness import Datacenter, datapath_flow_count, wait_for
from mininet_topos.report import connection_entry, summarize
from mptcp_lb.config import parse_config
from mptcp_lb.mptcp_codec import slice_of

N_DIPS = 3
HERE = os.path.dirname(os.path.abspath(__file__))
# What a wrong timestamp would break, and nothing else moves: PAWS drops (a stamped TSval going
# backwards, an echoed TSecr the DIP never sent). Undo and spurious-RTO counters are not listed: real
# reordering and loss in any datapath move them too, port mode without BPF included. That the DIP
# restores TSecr exactly, and never below the original, is tested on the programs themselves
# (test_dip_token.py).
NSTAT_MUST_STAY_ZERO = ("TcpExtPAWSEstab", "TcpExtPAWSActive", "TcpExtPAWSOldAck")


def build(mode, key_source, **kw):
    from mininet.log import setLogLevel

    setLogLevel("warning")
    return Datacenter(n_dips=N_DIPS, prefix=f"k{os.getpid() % 1000}", mode=mode, key_source=key_source, **kw)


def nstat(host) -> dict[str, int]:
    """Absolute kernel counters in a host's namespace (``nstat -az`` ignores its history with -a)."""
    out = host.cmd("nstat -az")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)", out, re.M)}


def check_token_steering(dc, results, dips=range(1, N_DIPS + 1)):
    connections = [connection_entry(r) for r in results]
    vip = parse_config(dc.config).vips[0]
    bad = [c for c in connections if not c["verified"] or len(c["subflows"]) < 2
           or len({sf["dip"] for sf in c["subflows"]}) != 1]
    assert not bad, f"failed, single-path or split connections: {bad[:3]}"
    for c in connections:
        assert all(sf["vip"] == f"{VIP}:{SERVICE_PORT}" for sf in c["subflows"]), c  # joined the service port
        dip = vip.dip(c["subflows"][0]["dip"])
        assert slice_of(c["token"], vip.slice_bits) in dip.slices, c  # the DIP adopted a key from its own slice
    summary = summarize(connections, list(dips))
    assert summary["all_dips_used"], summary["per_dip"]
    return summary


@pytest.mark.parametrize("key_source", ["seed", "pool"])
def test_stock_clients_joining_the_service_port_stay_on_one_dip(key_source):
    with build("token", key_source) as dc:
        hosts = [dc.host("c2"), *(dc.dip_host(i) for i in range(1, N_DIPS + 1))]
        before = {h.name: nstat(h) for h in hosts}
        flows_before = dc.mux_flow_counts()
        results = dc.run_traffic(conns=21, size=256 * 1024, client="c2", min_subflows=2)
        check_token_steering(dc, results)
        assert dc.mux_flow_counts() == flows_before
        for h in hosts:
            after = nstat(h)
            grown = {k: after.get(k, 0) - before[h.name].get(k, 0) for k in NSTAT_MUST_STAY_ZERO}
            assert not any(grown.values()), (h.name, {k: v for k, v in grown.items() if v})
        muxes = dc.api("GET", "/muxes")
        punts = sum(m["punts"] for m in muxes)
        if key_source == "seed":
            assert punts >= 21 and all(m["punt_errors"] == 0 for m in muxes)  # every SYN(MPC) was seeded
        else:
            assert punts == 0  # pool mode: no packet reaches the controller


def test_hybrid_serves_both_client_kinds_at_once():
    import threading

    with build("hybrid", "pool") as dc:
        results = {}
        threads = [threading.Thread(target=lambda c=c: results.setdefault(c, dc.run_traffic(
            conns=12, size=128 * 1024, client=c, min_subflows=3 if c == "c1" else 2))) for c in ("c1", "c2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        check_token_steering(dc, results["c2"], dips=[])
        # Joins to announced ports echo their DIP's server ID too (the DIPs stamp every port of the VIP),
        # so tagged traffic needs one datapath flow per MUX, DIP and port kind, not one per timestamp value.
        assert 1 <= datapath_flow_count("dst=0a:4d:03") <= 2 * N_DIPS * 2
        port_conns = [connection_entry(r) for r in results["c1"]]
        assert all(c["verified"] and len({sf["dip"] for sf in c["subflows"]}) == 1 for c in port_conns)
        assert all(any(not sf["vip"].endswith(f":{SERVICE_PORT}") for sf in c["subflows"]) for c in port_conns)
        summary = summarize(port_conns + [connection_entry(r) for r in results["c2"]], list(range(1, N_DIPS + 1)))
        assert summary["all_dips_used"] and summary["all_multipath"]


def test_without_key_adoption_joins_land_on_the_wrong_dip():
    """Control: the same topology with DIPs keeping their own random keys."""
    with build("token", "pool", key_adoption=False) as dc:
        results = dc.run_traffic(conns=24, size=64 * 1024, client="c2", min_subflows=2, timeout=3, parallel=8)
        connections = [connection_entry(r) for r in results]
        single = [c for c in connections if len(c["subflows"]) < 2]
        # A random token lands in the right slice 1 time in 3, so about 16 of 24 joins are refused;
        # fewer than 8 happens with probability below 1e-4 (binomial, p=2/3).
        assert len(single) >= 8, connections


def test_punted_syns_are_capped_by_the_meter():
    with build("token", "seed", punt_rate=20) as dc:
        dc.router.set_vip_route(only_mux=1)
        flood = dc.host("c2").popen([sys.executable, os.path.join(HERE, "syn_flood.py"), VIP, str(SERVICE_PORT),
                                     "600", "2.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = flood.communicate(timeout=60)
        sent, seconds = (float(x) for x in out.split())
        assert sent / seconds >= 5 * 20, (out, err)  # a flood: five times what the meter lets through

        last = []

        def settled():  # two equal reads in a row: every packet-in has been counted
            m = dc.api("GET", "/muxes")
            last.append(m[0]["punts"] + m[0]["punt_errors"])
            return last[-1] if len(last) > 1 and last[-1] == last[-2] and last[-1] > 0 else None
        seen = wait_for("punt counters to settle", settled, 15, interval=0.5)
        # The meter's burst (20), then 20/s for as long as SYNs kept reaching it: as long as the flood
        # really lasted (scapy takes longer than the 2 s asked for: 2.7-3.3 s here), and a quarter
        # second more for the last SYNs to get through the datapath's queues.
        assert 20 <= seen <= 20 + 20 * (seconds + 0.25), (seen, sent, seconds)
