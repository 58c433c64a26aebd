"""Token-based and hybrid steering on the real thing: the tc classifier and its tap before OVS, os-ken
seeding SYNs, DIPs adopting keys through SYN cookies and stamping timestamps.

The client c2 is stock Linux: a ``subflow`` endpoint that joins VIP:80, the
service port. Every claim is checked from the DIP side (subflows terminated,
MPTCP token, SHA-256 of the bytes received).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from pyroute2 import IPRoute

from mininet_topos.datacenter import SERVICE_PORT, VIP
from mininet_topos.harness import Datacenter, datapath_flow_count, wait_for
from mininet_topos.report import connection_entry, summarize
from mptcp_lb import classifier
from mptcp_lb.config import parse_config
from mptcp_lb.mptcp_codec import SERVER_ID_MASK, build_key_carrier, key_to_token, make_key, slice_of
from tests.packets import EOL, MSS, NOP, SACK_PERM, WSCALE, mp_capable, timestamp

N_DIPS = 3
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
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
    summary = summarize(connections, list(dips), dc.slot_shares())
    assert summary["spread_ok"], summary  # judged only where enough connections make a miss unlikely
    return summary


@pytest.mark.parametrize("key_source", ["seed", "pool"])
def test_stock_clients_joining_the_service_port_stay_on_one_dip(key_source):
    with build("token", key_source) as dc:
        assert dc.classifier_hooks == {1: "tc", 2: "tc"}  # the default
        hosts = ["c2", *(f"d{i}" for i in range(1, N_DIPS + 1))]
        before = {h: dc.nstat(h) for h in hosts}
        flows_before = dc.mux_flow_counts()
        results = dc.run_traffic(conns=48, size=256 * 1024, client="c2", min_subflows=2)
        assert check_token_steering(dc, results)["chance_a_dip_left_out"] < 1e-6  # so the spread was judged
        assert dc.mux_flow_counts() == flows_before
        for h in hosts:
            after = dc.nstat(h)
            grown = {k: after.get(k, 0) - before[h].get(k, 0) for k in NSTAT_MUST_STAY_ZERO}
            assert not any(grown.values()), (h, {k: v for k, v in grown.items() if v})
        muxes = dc.api("GET", "/muxes")
        punts = sum(m["punts"] for m in muxes)
        if key_source == "seed":
            assert punts >= 21 and all(m["punt_errors"] == 0 for m in muxes)  # every SYN(MPC) was seeded
        else:
            assert punts == 0  # pool mode: no packet reaches the controller


def test_the_classifier_at_tc_steers_as_it_does_in_xdp():
    """``Datacenter(classifier_hook="tc")``: the classifier at tc ingress even before afxdp ports."""
    with build("token", "pool", classifier_hook="tc") as dc:
        assert dc.classifier_hooks == {1: "tc", 2: "tc"}
        for i in (1, 2):  # seen from the uplink itself: our tc filter, and no XDP program of ours
            uplink = dc.mux_uplink(i)
            assert classifier.UPLINK_PROGRAM in subprocess.run(["tc", "filter", "show", "dev", uplink, "ingress"],
                                                               capture_output=True, text=True, check=True).stdout
            with IPRoute() as ipr:
                assert classifier.xdp.attached_named(ipr, ipr.link_lookup(ifname=uplink)[0],
                                                     classifier.UPLINK_XDP_PROGRAM) is None
        check_token_steering(dc, dc.run_traffic(conns=12, size=128 * 1024, client="c2", min_subflows=2))
        # Both MUXes' classifiers tagged the traffic (its 24 subflows all on one MUX: a 1 in 2^23 chance).
        stats = [classifier.stats(dc.mux_uplink(i)) for i in (1, 2)]
        assert all(st["timestamp"] > 50 and st["unconfigured"] == 0 for st in stats), stats


def test_a_client_reusing_a_4_tuple_the_dip_holds_in_time_wait_still_joins():
    """A SYN that finds TIME_WAIT would get a request socket, not a cookie, so no adopted key (dip_agent/time_wait.py).

    The DIP's echo service closes first, so the first connection leaves its
    4-tuple in TIME_WAIT there; the second, from the same client port, must
    still adopt a key of its DIP's slices and join, its first SYN dropped once.
    """
    with build("token", "pool") as dc:
        port = 40000 + os.getpid() % 1000

        def connect():
            out = dc.host("c2").cmd([sys.executable, os.path.join(HERE, "echo_client.py"), VIP, str(SERVICE_PORT),
                                     "1", str(16 * 1024), "2", str(port), "0.5"])
            return json.loads(out.strip().splitlines()[-1])

        first = connect()
        dip = first[0]["reply"]["dip"]
        check_token_steering(dc, first, dips=[dip])
        in_time_wait = f"ss -Htn state time-wait '( sport = :{SERVICE_PORT} and dport = :{port} )'"
        wait_for("the DIP to hold the 4-tuple in TIME_WAIT", lambda: dc.dip_host(dip).cmd(in_time_wait).strip(), 10)
        before, stats_before = dc.nstat(f"d{dip}"), dc.dip_stats(dip)
        again = connect()
        check_token_steering(dc, again, dips=[dip])  # verified, joined, on one DIP, a key of its slices
        after, stats_after = dc.nstat(f"d{dip}"), dc.dip_stats(dip)
        assert again[0]["reply"]["dip"] == dip
        assert stats_after["syn_time_wait"] - stats_before["syn_time_wait"] == 1
        assert after.get("MPTcpExtMPJoinNoTokenFound", 0) == before.get("MPTcpExtMPJoinNoTokenFound", 0)
        # Its MP_CAPABLE SYN was answered with a cookie, as the join's was: every SYN the listener took got
        # one (both counters move as a SYN is answered, a health probe's alike; a TIME_WAIT reopened
        # with a request socket moves only the first).
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in ("TcpPassiveOpens", "TcpExtSyncookiesSent")}
        assert grown["TcpExtSyncookiesSent"] >= 2 and grown["TcpPassiveOpens"] == grown["TcpExtSyncookiesSent"], grown


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
        summary = summarize(port_conns + [connection_entry(r) for r in results["c2"]], list(range(1, N_DIPS + 1)),
                            dc.slot_shares())
        assert summary["spread_ok"] and summary["all_multipath"], summary


def test_without_key_adoption_joins_land_on_the_wrong_dip():
    """Control: the same topology with DIPs keeping their own random keys."""
    with build("token", "pool", key_adoption=False) as dc:
        results = dc.run_traffic(conns=24, size=64 * 1024, client="c2", min_subflows=2, timeout=3, parallel=8)
        connections = [connection_entry(r) for r in results]
        single = [c for c in connections if len(c["subflows"]) < 2]
        # A random token lands in the right slice 1 time in 3, so about 16 of 24 joins are refused;
        # fewer than 8 happens with probability below 1e-4 (binomial, p=2/3).
        assert len(single) >= 8, connections


WAIT_FLOOD = 30  # seconds for a killed flood to be reaped


def start_flood(dc, client: str, count: int, seconds: float, spoof: str | None = None) -> subprocess.Popen:
    """``syn_flood.py`` from a client, in the background, once its SYNs are built and sending has begun.

    Building them takes seconds (more on a loaded machine), which a test's
    wait for the flood's effect must not count.
    """
    flood = dc.host(client).popen([sys.executable, "-m", "tests.integration.syn_flood", VIP, str(SERVICE_PORT),
                                   str(count), str(seconds), *([spoof] if spoof else [])],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = flood.stdout.readline()  # the flood's own "built COUNT"; "" if it died first
    if first.split() != ["built", str(count)]:
        flood.kill()
        _, err = flood.communicate(timeout=WAIT_FLOOD)
        raise AssertionError(f"syn_flood did not start sending: {first!r} {err[-2000:]}")
    return flood


def finish(flood: subprocess.Popen) -> tuple[float, float]:
    """The SYNs a flood sent and the seconds it took."""
    out, err = flood.communicate(timeout=120)
    assert flood.returncode == 0, err
    sent, seconds = (float(x) for x in out.split())
    return sent, seconds


def punt_meter_drops(dc) -> list[int]:
    """Packets each MUX's punt meter dropped (OpenFlow meter 1's band)."""
    drops = []
    for i in (1, 2):
        out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "meter-stats", dc.mux_bridge(i)], capture_output=True,
                             text=True, check=True).stdout
        (dropped,) = re.findall(r"meter:1 .*?bands:\s+0: packet_count:(\d+)", out, re.S)
        drops.append(int(dropped))
    return drops


# What a client does when MPTCP SYNs go unanswered or come back plain: give MPTCP up, for an hour
# after a blackhole (net.mptcp.blackhole_timeout).
CLIENT_GAVE_UP = ("MPTcpExtBlackhole", "MPTcpExtMPCapableSYNTXDrop", "MPTcpExtMPCapableSYNTXDisabled",
                  "MPTcpExtMPCapableFallbackSYNACK", "MPTcpExtMPCapableFallbackACK")
FLOOD_PPS, FLOOD_SECONDS, SPOOFED = 3000, 12.0, "198.18.0.0/15"


def test_seed_mode_under_a_spoofed_syn_flood_degrades_to_the_pools_and_drops_nothing():
    """3,000 pps of spoofed SYN+MP_CAPABLE while a stock client opens 16 MPTCP connections, default budget.

    Over its VIP's punt budget a SYN goes unseeded through the slot table
    and its DIP keys it from its own pool: every connection still gets a
    token in its DIP's slice, and the punt meter drops nothing.
    """
    with build("token", "seed") as dc:
        dc.router.cmd(f"ip route add blackhole {SPOOFED}")  # the DIPs' answers to the flood go nowhere
        dips = range(1, N_DIPS + 1)
        client_before = dc.nstat("c2")
        fallback_before = sum(dc.dip_stats(i)["seed_fallback"] for i in dips)
        over_budget = lambda: sum(classifier.stats(dc.mux_uplink(i))["over_budget"] for i in (1, 2))  # noqa: E731
        flood = start_flood(dc, "c1", int(FLOOD_PPS * FLOOD_SECONDS), FLOOD_SECONDS, SPOOFED)
        try:
            wait_for("the flood to exceed the punt budgets", lambda: over_budget() > 0, 30, interval=0.2)
            results = dc.run_traffic(conns=16, size=256 * 1024, client="c2", min_subflows=2, parallel=16)
            under_flood = flood.poll() is None
        finally:
            sent, seconds = finish(flood)
        assert under_flood, "the connections outlasted the flood: raise FLOOD_SECONDS"
        assert sent / seconds >= 0.9 * FLOOD_PPS, (sent, seconds)
        check_token_steering(dc, results)  # every connection: verified, a join, its DIP's slice
        grown = {k: dc.nstat("c2").get(k, 0) - client_before.get(k, 0) for k in CLIENT_GAVE_UP}
        assert not any(grown.values()), grown
        assert sum(dc.nstat(f"d{i}").get("MPTcpExtMPJoinNoTokenFound", 0) for i in dips) == 0
        # The flood went around the controller, to the pools, and not into a meter's drop band.
        assert over_budget() > 0.5 * sent, (over_budget(), sent)
        assert sum(dc.dip_stats(i)["seed_fallback"] for i in dips) - fallback_before > 0.5 * sent
        assert punt_meter_drops(dc) == [0, 0]


def syn_answer(dc, options: bytes, sport: int) -> tuple[bytes, int]:
    """Send one SYN with these options from c2; the key the answering DIP adopted and its server ID."""
    probe = dc.host("c2").popen([sys.executable, "-m", "tests.integration.syn_probe", VIP, str(SERVICE_PORT),
                                 str(sport), "1000", options.hex()], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    out, err = probe.communicate(timeout=60)
    reply = json.loads(out) if probe.returncode == 0 else err
    assert isinstance(reply, dict) and reply["flags"] == "SA" and reply["ack"] == 1001, reply
    opts = {k: v for k, v in reply["options"]}
    tsval, _ = opts["Timestamp"]
    return bytes.fromhex(opts[30])[2:10], tsval & SERVER_ID_MASK


def test_seed_mode_keys_come_from_the_mux_only_and_a_syn_ending_in_eol_is_seeded():
    """A BSD-style SYN (options padded with EOL) gets the controller's key; a carrier a client put in its
    own SYN is blanked by the classifier, and the DIP never adopts its key."""
    with build("token", "seed") as dc:
        vip = parse_config(dc.config).vips[0]
        dips = range(1, N_DIPS + 1)

        def counters() -> dict[str, int]:
            dip = [dc.dip_stats(i) for i in dips]
            mux = [classifier.stats(dc.mux_uplink(i)) for i in (1, 2)]
            return {"punts": sum(m["punts"] for m in dc.api("GET", "/muxes")),
                    "carrier_stored": sum(d["carrier_stored"] for d in dip),
                    "seed_fallback": sum(d["seed_fallback"] for d in dip),
                    "carrier_cleared": sum(m["carrier_cleared"] for m in mux)}

        def grown(before: dict) -> dict:
            return {k: v - before[k] for k, v in counters().items()}

        linux = MSS + SACK_PERM + timestamp(1, 0) + NOP + WSCALE + mp_capable(flags=0x81)  # 24 bytes
        before = counters()
        key, dip = syn_answer(dc, linux + EOL * 4, sport=47001)
        assert slice_of(key_to_token(key), vip.slice_bits) in vip.dip(dip).slices
        assert grown(before) == {"punts": 1, "carrier_stored": 1, "seed_fallback": 0, "carrier_cleared": 0}

        forged = make_key(vip.dip(1).slices, vip.slice_bits)  # a key DIP 1 would accept, were it seeded
        before = counters()
        key, dip = syn_answer(dc, linux + build_key_carrier(forged), sport=47002)
        assert key != forged and slice_of(key_to_token(key), vip.slice_bits) in vip.dip(dip).slices
        # Blanked, the carrier left room for the controller's own, and the SYN was seeded.
        assert grown(before) == {"punts": 1, "carrier_stored": 1, "seed_fallback": 0, "carrier_cleared": 1}


def test_punted_syns_are_capped_by_the_meter():
    with build("token", "seed", punt_rate=20) as dc:
        dc.router.set_vip_route(only_mux=1)
        sent, seconds = finish(start_flood(dc, "c2", 600, 2.0))
        assert sent / seconds >= 5 * 20, (sent, seconds)  # a flood: five times what the meter lets through

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
