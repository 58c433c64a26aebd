"""Port-based steering on the real thing: OVS netdev bridges, os-ken, kernel MPTCP in namespaces.

Every claim is checked from the DIP side: each DIP's echo server reports the
subflows its kernel terminated (MPTCP_SUBFLOW_ADDRS) and the SHA-256 of what
it received.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from scapy.all import ICMP, IP, TCP, Ether

from mininet_topos.datacenter import CLIENT_NETS, MUX_NETS, SERVICE_PORT, VIP, dip_mac, mux_mac
from mininet_topos.harness import Datacenter, datapath_port_numbers, ofctl_flow_count, wait_for
from mininet_topos.report import connection_entry, summarize
from mptcp_lb.config import DEFAULT_SLOTS, ControllerSettings

ICMP_RATE = ControllerSettings().icmp_rate

N_DIPS = 3
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def dc():
    from mininet.log import setLogLevel

    setLogLevel("warning")
    with Datacenter(n_dips=N_DIPS, prefix=f"t{os.getpid() % 1000}") as dc:
        yield dc


@pytest.fixture
def ecmp(dc):
    """Tests may pin the router to one MUX; always put ECMP back."""
    yield dc.router
    dc.router.set_vip_route()


def check_port_steering(results, dip_ids=range(1, N_DIPS + 1), shares=None):
    connections = [connection_entry(r) for r in results]
    bad = [c for c in connections if not c["verified"] or len(c["subflows"]) < 2
           or len({sf["dip"] for sf in c["subflows"]}) != 1]
    assert not bad, f"connections that failed, stayed single-path or spanned DIPs: {bad}"
    for c in connections:
        joined = [sf for sf in c["subflows"] if not sf["vip"].endswith(f":{SERVICE_PORT}")]
        assert joined, f"no subflow joined an announced port: {c}"
        assert c["client_subflows"] == len(c["subflows"]), c  # the client sees what the DIP saw
    return summarize(connections, list(dip_ids), shares)


def vip_datapath_flows(dc) -> list[str]:
    """Datapath flows of VIP traffic arriving from the router, the traffic the MUXes steer.

    Not counted: a drop flow on a MUX's fabric port. The fabric floods frames for a DIP whose
    MAC it has not learnt yet, so another MUX sees VIP traffic from the fabric side, and drops it.
    """
    ports = datapath_port_numbers()
    from_router = {f"in_port({ports[dc.mux_router_port(i)]})" for i in (1, 2)}
    out = subprocess.run(["ovs-appctl", "dpctl/dump-flows", "netdev@ovs-netdev"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"dst={VIP}" in line and any(p in line for p in from_router)]


def metrics(dc) -> str:
    return dc.metrics()


def test_every_subflow_of_every_connection_lands_on_one_dip(dc):
    flows_before = dc.mux_flow_counts()
    results = dc.run_traffic(conns=6, size=64 * 1024)
    check_port_steering(results, dip_ids=[])
    dp_small = vip_datapath_flows(dc)
    results = dc.run_traffic(conns=48, size=256 * 1024)
    summary = check_port_steering(results, shares=dc.slot_shares())
    assert summary["spread_ok"] and summary["chance_a_dip_left_out"] < 1e-6, summary  # judged: 48 are enough
    assert dc.mux_flow_counts() == flows_before
    # Datapath flows depend on DIPs and MUXes, not on connections: 6 -> 54 connections.
    dp_large = vip_datapath_flows(dc)
    assert len(dp_large) <= 2 * (N_DIPS + 1), "\n".join(dp_large)
    assert len(dp_small) >= 1


def test_both_muxes_carry_traffic_and_metrics_count_it(dc):
    connections = [connection_entry(r) for r in dc.run_traffic(conns=8, size=64 * 1024)]
    assert all(c["verified"] for c in connections), connections
    served = {c["subflows"][0]["dip"] for c in connections}

    def counted():
        """Per MUX, per DIP packets, once both MUXes counted some and every DIP that served was counted.

        Flow and group-bucket stats come back in separate replies, polled every audit interval.
        """
        text = metrics(dc)
        per_mux = {}
        for dip, mux, value in re.findall(r'mptcplb_dip_packets_total\{dip="(\d+)",mux="(\w+)",vip="web"\} (\S+)', text):
            per_mux.setdefault(mux, {})[int(dip)] = float(value)
        counted_dips = {d for v in per_mux.values() for d, n in v.items() if n > 0}
        both = len(per_mux) == 2 and all(sum(v.values()) > 0 for v in per_mux.values())
        return per_mux if both and served <= counted_dips else None

    per_mux = wait_for(f"packet counters on both MUXes and for DIPs {sorted(served)}", counted, 15)
    assert {d for v in per_mux.values() for d, n in v.items() if n > 0} <= set(range(1, N_DIPS + 1))
    assert "mptcplb_muxes_connected 2.0" in metrics(dc)


def client_sockets_on(dc, first: int, count: int) -> list[str]:
    """The client's TCP sockets with a source port in [first, first + count), in any state."""
    out = dc.client.cmd(f"ss -tanH '( sport >= :{first} and sport < :{first + count} )'")
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture
def no_time_wait(dc):
    """No TIME_WAIT on the client, so a test can open the very same 5-tuple again at once."""
    before = dc.client.cmd("sysctl -n net.ipv4.tcp_max_tw_buckets").strip()
    dc.client.cmd("sysctl -qw net.ipv4.tcp_max_tw_buckets=0")
    yield
    dc.client.cmd(f"sysctl -qw net.ipv4.tcp_max_tw_buckets={before}")


def test_same_five_tuple_reaches_same_dip_through_either_mux(dc, ecmp, no_time_wait):
    seen = {}
    # Below the kernel's ephemeral range (32768 up), so only this test's own sockets hold these ports: at
    # 45000 an earlier test's join, whose port the kernel picked, once sat in TIME_WAIT on one of them.
    first, conns = 20000, 12
    for mux in (1, 2):
        # The first pass's sockets must be gone before their ports are bound again (EADDRINUSE otherwise).
        left = []
        try:
            wait_for(f"client sockets on ports {first}+ to close",
                     lambda: not left.append(client_sockets_on(dc, first, conns)) and not left[-1], 15)
        except TimeoutError as timeout:
            raise AssertionError(f"{timeout}; still there: {left[-1]}") from None
        ecmp.set_vip_route(only_mux=mux)
        results = dc.run_traffic(conns=conns, size=4096, min_subflows=3, parallel=4, source_port=first)
        seen[mux] = [connection_entry(r) for r in results]
    for via1, via2 in zip(seen[1], seen[2]):
        assert via1["verified"] and via2["verified"], (via1, via2)
        first1 = [sf for sf in via1["subflows"] if sf["vip"].endswith(f":{SERVICE_PORT}")]
        first2 = [sf for sf in via2["subflows"] if sf["vip"].endswith(f":{SERVICE_PORT}")]
        assert first1[0]["client"] == first2[0]["client"]  # the very same 5-tuple...
        assert first1[0]["dip"] == first2[0]["dip"]  # ...reached the same DIP
    assert len({c["subflows"][0]["dip"] for c in seen[1]}) >= 2  # and the hash does spread


def test_client_ignoring_the_c_flag_does_not_disturb_others(dc):
    results = {}
    traffic = threading.Thread(target=lambda: results.setdefault("r", dc.run_traffic(conns=12, size=512 * 1024)))
    traffic.start()
    probe = dc.client.popen([sys.executable, os.path.join(HERE, "join_probe.py"), VIP, str(SERVICE_PORT), "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = probe.communicate(timeout=120)
    traffic.join(300)
    answers = json.loads(out)
    # Each JOIN to the service port is refused by whichever DIP the hash picked.
    assert all(a is not None and "R" in a for a in answers), f"answers {json.dumps(answers)}, stderr {err!r}"
    summary = check_port_steering(results["r"])
    assert summary["all_verified"]


def test_controller_recovers_flows_and_groups_deleted_by_hand(dc):
    expected = dc.mux_flow_counts()
    resyncs = [m["resyncs"] for m in dc.api("GET", "/muxes")]
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", dc.mux_bridge(1)], check=True)
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-groups", dc.mux_bridge(2)], check=True)
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", dc.mux_bridge(1), "priority=7,actions=drop"],
                   check=True)
    # The controller may repair a bridge before this test can even look at it: what proves it found
    # both wrong is that each MUX's resync counter moved.
    wait_for("the controller to restore both MUXes",
             lambda: dc.mux_flow_counts() == expected
             and all(m["resyncs"] > r for m, r in zip(dc.api("GET", "/muxes"), resyncs)), 15)
    groups = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-groups", dc.mux_bridge(2)],
                            capture_output=True, text=True, check=True).stdout
    assert groups.count("bucket=") == DEFAULT_SLOTS  # one per slot of the VIP's table
    flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", dc.mux_bridge(1)],
                           capture_output=True, text=True, check=True).stdout
    assert "priority=7" not in flows
    check_port_steering(dc.run_traffic(conns=6, size=64 * 1024), dip_ids=[])


def slots_of(dc, mux: int, dip: int) -> int:
    """How many of the select group's buckets (the VIP's slots) hand packets to DIP ``dip``."""
    groups = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-groups", dc.mux_bridge(mux)],
                            capture_output=True, text=True).stdout
    return groups.count(f"set_field:{dip_mac(dip)}->eth_dst")


def test_drained_dip_gets_no_new_connections_but_keeps_its_ports(dc):
    assert dc.api("POST", "/vips/web/dips/1/drain")[0]["dips"][0]["state"] == "draining"
    try:
        wait_for("both MUXes to move DIP 1's slots away", lambda: [slots_of(dc, i, 1) for i in (1, 2)] == [0, 0], 15)
        summary = check_port_steering(dc.run_traffic(conns=12, size=64 * 1024), dip_ids=[2, 3])
        assert summary["per_dip"]["2"]["connections"] + summary["per_dip"]["3"]["connections"] == 12
        flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", dc.mux_bridge(1)],
                               capture_output=True, text=True, check=True).stdout
        assert "tp_dst=0x1000/0xf000" in flows  # DIP 1's announced ports are still steered
    finally:
        dc.api("POST", "/vips/web/dips/1/activate")
        wait_for("DIP 1 back in the select group", lambda: slots_of(dc, 1, 1) > 0, 15)


def test_bad_rest_change_is_rejected_and_changes_nothing(dc):
    before = dc.mux_flow_counts()
    reply = dc.api("POST", "/vips/web/dips", {"id": 9, "address": "10.2.0.9", "mac": "02:00:00:02:00:09",
                                             "ports": "80-100"})
    assert reply["status"] == 400 and "contains the service port 80" in reply["error"]
    assert [d["id"] for d in dc.api("GET", "/vips")[0]["dips"]] == [1, 2, 3]
    assert dc.mux_flow_counts() == before


def test_printed_flows_install_as_is_on_a_netdev_bridge(tmp_path):
    """`mptcp-lb flows` output goes straight into ovs-ofctl, with no controller."""
    bridge = f"tfl{os.getpid() % 100000}"
    cli = [sys.executable, "-m", "mptcp_lb.cli"]

    def printed(config: str, *what: str) -> str:
        return subprocess.run([*cli, "flows", config, *what], capture_output=True, text=True, check=True).stdout

    def add_meters(config: str) -> None:
        for meter in printed(config, "--meters").splitlines():  # add-meter takes one per call
            subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-meter", bridge, meter], check=True)

    def ofctl(verb: str, text: str) -> None:
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", verb, bridge, "-"], input=text, text=True, check=True)

    subprocess.run(["ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
                    "fail_mode=secure", "protocols=OpenFlow13"], check=True)
    try:
        add_meters("examples/port.yaml")
        ofctl("add-groups", printed("examples/port.yaml", "--groups"))
        ofctl("add-flows", printed("examples/port.yaml"))
        flows = printed("examples/port.yaml")
        dumped = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge], capture_output=True,
                                text=True, check=True).stdout
        cookies = lambda text: sorted(re.findall(r"cookie=(0x[0-9a-f]+)", text))  # noqa: E731
        # ARP x2, three DIP ranges, the hash, path MTU, VIP drop, miss
        assert cookies(dumped) == cookies(flows) and len(cookies(flows)) == ofctl_flow_count(bridge) == 9
        # With `hash: multipath` there is no group: the meters, then one pipe of flows.
        for verb in ("del-flows", "del-groups", "del-meters"):
            subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", verb, bridge], check=True)
        add_meters("examples/port-standalone.yaml")
        text = printed("examples/port-standalone.yaml")
        ofctl("add-flows", text)
        # 9 + one per slot in table 1, where multipath's slot picks its owner
        assert ofctl_flow_count(bridge) == len(text.splitlines()) == 9 + DEFAULT_SLOTS
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge])


def test_a_flow_edited_by_hand_in_place_is_put_back(dc):
    """mod-flows keeps the cookie and changes the actions: the audit's cached texts must not hide that."""
    bridge = dc.mux_bridge(1)
    match = "tcp,in_port=1,nw_dst=10.0.0.100,tp_dst=0x1000/0xf000"

    def dip1_flow() -> str:
        flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, match],
                               capture_output=True, text=True, check=True).stdout
        return "\n".join(line for line in flows.splitlines() if "cookie=" in line)

    original = dip1_flow()
    assert f"set_field:{dip_mac(1)}->eth_dst" in original
    resyncs = dc.api("GET", "/muxes")[0]["resyncs"]
    wait_for("an audit with every text cached", lambda: dc.api("GET", "/muxes")[0]["flows"] > 0, 5)
    # The same length and layout, another DIP's MAC: only the bytes of one field differ.
    edited = original.split("actions=")[1].replace(f"{dip_mac(1)}->eth_dst", "02:00:00:02:00:99->eth_dst")
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "mod-flows", bridge, f"{match},actions={edited}"], check=True)
    wait_for("the controller to put DIP 1's port flow back",
             lambda: f"set_field:{dip_mac(1)}->eth_dst" in dip1_flow() and
             dc.api("GET", "/muxes")[0]["resyncs"] > resyncs, 15)


def test_the_api_takes_only_authenticated_json_from_its_own_origin_and_metrics_only_serves_metrics(dc):
    port = dc.config["controller"]["api_port"]
    with open(dc.token_file) as f:
        token = f.read().strip()

    def call(method, path, headers, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    good = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    assert call("GET", "/vips", {})[0] == 401
    assert call("GET", "/vips", {"Authorization": "Bearer nottheone0123456789"})[0] == 401
    status, body = call("POST", "/vips/web/dips/1/drain", {**good, "Content-Type": "text/plain"}, b"{}")
    assert status == 415 and "application/json" in body["error"]
    status, body = call("POST", "/vips/web/dips/1/drain", {**good, "Origin": "http://evil.example"}, b"{}")
    assert status == 403 and "Origin" in body["error"]
    assert dc.api("GET", "/vips")[0]["dips"][0]["state"] == "active"  # none of them changed anything
    status, vips = call("GET", "/vips", {**good, "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200 and vips[0]["name"] == "web"
    assert "mptcplb_muxes_connected" in dc.metrics()
    for path in ("/vips", "/muxes"):
        with pytest.raises(urllib.error.HTTPError) as e:
            dc.metrics(path)
        assert e.value.code == 404


def test_fragmentation_needed_to_the_vip_reaches_every_dip_within_the_meter(dc):
    """A router's ICMP "fragmentation needed" for a DIP's packet is addressed to the VIP: the MUX copies it
    to all the VIP's DIPs (the one holding the quoted connection lowers its path MTU), at most
    ``controller.icmp_rate`` per second, instead of its VIP drop rule eating it."""
    router_if = f"{dc.prefix}r0-eth2"  # towards mux1
    quoted = IP(src=VIP, dst=f"{CLIENT_NETS['c1'][0]}.1") / TCP(sport=SERVICE_PORT, dport=40000, flags="A")
    frame = (Ether(src=dc.router.intf(router_if).MAC(), dst=mux_mac(1))
             / IP(src=f"{MUX_NETS[0]}.254", dst=VIP) / ICMP(type=3, code=4, nexthopmtu=1280) / bytes(quoted)[:28])
    burst = 400
    received = lambda: [dc.nstat(f"d{i}").get("IcmpInDestUnreachs", 0) for i in range(1, N_DIPS + 1)]  # noqa: E731
    before = received()
    started = time.monotonic()
    sender = dc.router.popen([sys.executable, os.path.join(HERE, "send_frames.py"), router_if,
                              *[bytes(frame).hex()] * burst])
    assert sender.wait(30) == 0
    sent_for = time.monotonic() - started
    wait_for("a copy on every DIP", lambda: all(a > b for a, b in zip(received(), before)), 10)
    grown = [a - b for a, b in zip(received(), before)]
    # ICMP_RATE per second with a burst of as many: what got through the meter while the burst was sent.
    allowed = ICMP_RATE + ICMP_RATE * sent_for + 1
    assert all(0 < g <= allowed for g in grown), (grown, allowed)
    assert max(grown) < burst, grown  # the meter dropped the rest
    meters = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "meter-stats", dc.mux_bridge(1)], capture_output=True,
                            text=True, check=True).stdout
    (dropped,) = re.findall(r"meter:2 .*?bands:\s+0: packet_count:(\d+)", meters, re.S)
    assert int(dropped) >= burst - max(grown), meters


def probe_rules() -> list[str]:
    from ryu_app.health import RULE_PRIORITY

    out = subprocess.run(["ip", "rule", "show"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"{RULE_PRIORITY}:")]


def test_sigterm_stops_the_controller_at_once_and_takes_its_probe_routes_with_it(dc):
    """systemd's stop, with both MUXes connected: exit status 0 (the harness fails a controller it must
    SIGKILL), no policy rule left behind; started again, it carries on and the routes come back."""
    assert probe_rules(), "the health checks' policy rules are in place while the controller runs"
    controller = dc.controller
    dc.stop_controller()
    assert controller.returncode == 0, dc.controller_log()[-2000:]
    assert "SIGTERM: shutting down" in dc.controller_log()
    assert probe_rules() == []
    dc.start_controller()
    dc.wait_programmed()
    wait_for("the health checks' policy rules back", probe_rules, 20)


def test_c1_can_open_one_subflow_per_path_and_back(dc):
    """``Client.one_subflow_per_path``, which ``make bench`` uses to give port mode token mode's shape."""
    c1 = dc.host("c1")
    first, second = (f"{net}.1" for net in c1.nets)
    c1.one_subflow_per_path(True)
    try:
        shaped = [connection_entry(r) for r in dc.run_traffic(conns=4, size=64 * 1024, min_subflows=2)]
    finally:
        c1.one_subflow_per_path(False)
    for c in shaped:
        clients = sorted(sf["client"].rsplit(":", 1)[0] for sf in c["subflows"])
        assert c["verified"] and clients == sorted([first, second]), c  # the initial subflow and one join
        on_service_port = [sf for sf in c["subflows"] if sf["vip"].endswith(f":{SERVICE_PORT}")]
        assert len(on_service_port) == 1, c  # the initial subflow; the join went to the announced port
    check_port_steering(dc.run_traffic(conns=4, size=64 * 1024), dip_ids=[])  # 3 subflows again
    assert all(len(connection_entry(r)["subflows"]) == 3 for r in dc.run_traffic(conns=2, size=64 * 1024))
    with pytest.raises(ValueError, match="does not follow ADD_ADDR"):
        dc.host("c2").one_subflow_per_path(True)
