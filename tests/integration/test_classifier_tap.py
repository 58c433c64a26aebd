"""The classifier in front of a real OVS netdev bridge: on an uplink (native XDP or tc ingress), a tap into OVS.

Topology (names carry this process id so parallel runs do not collide)::

    netns ctNc: ctNc0 ==veth== ctNu (uplink) --tap--> OVS bridge ctbrN <-- ctNp ==veth== ctNs0 :netns ctNs

The bridge forwards port 1 (the uplink, then the tap's OVS end) to port 2
and back. Flows on tag MACs count what the classifier tagged; frames
without a verdict reach the untagged flow. Real MPTCP traffic checks that
both directions cross the tap, on afxdp and on AF_PACKET (system) ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys

import pytest
from pyroute2 import IPRoute

from mininet_topos.harness import wait_for
from mptcp_lb import classifier
from tests.integration.netns import REPO, WAIT, in_ns, python_env, sh
from tests.packets import LINUX_SYN_OPTIONS, MPC_SYN, tcp_frame

CLIENT_MAC, SERVER_MAC = "02:00:00:79:00:01", "02:00:00:79:00:02"
CLIENT_IP, SERVER_IP = "10.79.0.1", "10.79.0.2"
SERVER_ID = 0xABC
HERE = os.path.dirname(os.path.abspath(__file__))

TO_SERVER = f"set_field:{SERVER_MAC}->eth_dst,output:2"
# match -> what it counts
FLOWS = {
    "priority=100,in_port=1,dl_dst=0a:4d:01:00:00:00": "SYN + MP_CAPABLE",
    f"priority=100,in_port=1,dl_dst=0a:4d:03:00:{SERVER_ID >> 8:02x}:{SERVER_ID & 0xff:02x}": "server ID",
    "priority=90,in_port=1,dl_dst=0a:4d:03:00:00:00/ff:ff:ff:00:00:00": "other timestamps",
    "priority=50,tcp,in_port=1": "no verdict",
}


def frame(flags: str, options: list) -> bytes:
    return tcp_frame(flags, options, src=CLIENT_IP, dst=SERVER_IP, eth_src=CLIENT_MAC, eth_dst=SERVER_MAC)


MP_CAPABLE_SYN = frame("S", LINUX_SYN_OPTIONS + [MPC_SYN])
TIMESTAMP_ACK = frame("A", [("NOP", None), ("NOP", None), ("Timestamp", (2, 0x7000 | SERVER_ID))])
PLAIN_ACK = frame("A", [])


def counts(bridge: str) -> dict[str, int]:
    """n_packets of the flows in FLOWS, by what they count."""
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-flows", bridge)
    found = {}
    for line in out.splitlines():
        n = re.search(r"n_packets=(\d+)", line)
        for match, what in FLOWS.items():
            prio, rest = match.split(",", 1)
            if n and f" {prio}," in f" {line}" and line.split("actions=")[0].rstrip(", ").endswith(rest):
                found[what] = int(n.group(1))
    return found


def settled_counts(bridge: str) -> dict[str, int]:
    """``counts`` once two reads over two revalidations (500 ms each) apart agree: OpenFlow counters lag the datapath's."""
    last = []

    def settled():
        last.append(counts(bridge))
        return len(last) > 1 and last[-1] == last[-2] and last[-1]
    return wait_for(f"OpenFlow counters on {bridge} to settle", settled, WAIT, interval=1.1)


def is_port(bridge: str, name: str) -> bool:
    return name in sh("ovs-vsctl", "list-ports", bridge).split()


class TapBed:
    """Two namespaces around one OVS bridge whose port 1 is the client's uplink."""

    def __init__(self, port_type: str):
        tag = os.getpid() % 100000
        self.port_type = port_type
        self.client_ns, self.server_ns, self.bridge = f"ct{tag}c", f"ct{tag}s", f"ctbr{tag}"
        self.uplink, self.server_port = f"ct{tag}u", f"ct{tag}p"
        self.client_if, self.server_if = f"ct{tag}c0", f"ct{tag}s0"
        self.echo = None

    def create(self) -> None:
        for ns, inner, outer, ip, mac in ((self.client_ns, self.client_if, self.uplink, CLIENT_IP, CLIENT_MAC),
                                          (self.server_ns, self.server_if, self.server_port, SERVER_IP, SERVER_MAC)):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            sh("ip", "link", "set", outer, "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "link", "set", inner, "address", mac, "up")
            in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", inner)
            in_ns(ns, "ethtool", "-K", inner, "tx", "off")
        kind = [] if self.port_type == "system" else ["type=afxdp", "options:xdp-mode=best-effort"]
        sh("ovs-vsctl", "--timeout=10", "add-br", self.bridge, "--", "set", "bridge", self.bridge,
           "datapath_type=netdev", "protocols=OpenFlow13", "fail_mode=secure",
           "--", "add-port", self.bridge, self.uplink, "--", "set", "Interface", self.uplink, "ofport_request=1", *kind,
           "--", "add-port", self.bridge, self.server_port, "--", "set", "Interface", self.server_port,
           "ofport_request=2", *kind)
        flows = [f"{match},actions={TO_SERVER}" for match in FLOWS] + [
            f"priority=40,in_port=1,actions={TO_SERVER}",  # ARP and the like, not counted
            "priority=50,in_port=2,actions=output:1"]
        for flow in flows:
            sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", self.bridge, flow)

    def start_echo(self) -> None:
        self.echo = subprocess.Popen(["ip", "netns", "exec", self.server_ns, sys.executable,
                                      os.path.join(HERE, "echo_service.py"), "1", "80"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env(),
                                     cwd=REPO)
        assert self.echo.stdout.readline().strip() == "ready"

    def traffic(self, conns: int = 4, size: int = 2 << 20) -> list[dict]:
        out = in_ns(self.client_ns, "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "mptcp_lb.traffic",
                    "--vip", SERVER_IP, "--port", "80", "--conns", str(conns), "--size", str(size),
                    "--min-subflows", "1", "--timeout", "30")
        return json.loads(out)

    def destroy(self) -> None:
        if self.echo is not None and self.echo.poll() is None:
            self.echo.stdin.close()
            self.echo.wait(WAIT)
        try:
            if os.path.exists(f"/sys/class/net/{self.uplink}") and \
                    os.path.exists(f"/sys/class/net/{classifier.tap_names(socket.if_nametoindex(self.uplink))[0]}"):
                classifier.remove(self.bridge, self.uplink)  # a tap a test left behind; its failure is reported
        finally:
            sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.bridge, check=False)
            for outer in (self.uplink, self.server_port):
                sh("ip", "link", "del", outer, check=False)
            for ns in (self.client_ns, self.server_ns):
                sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def built(port_type: str):
    bed = TapBed(port_type)
    try:
        bed.create()
        yield bed
    finally:
        bed.destroy()


@pytest.fixture(params=["afxdp", "system"])
def bed(request):
    with built(request.param) as bed:
        yield bed


@pytest.fixture
def afxdp_bed():
    """Where insert picks XDP, so its fallback can be seen."""
    with built("afxdp") as bed:
        yield bed


def test_ovs_matches_the_tags_the_classifier_writes(bed):
    tap = classifier.insert(bed.bridge, bed.uplink)
    assert (tap.ofport, tap.port_type) == (1, bed.port_type)  # the uplink's number and kind of port
    assert not is_port(bed.bridge, bed.uplink) and is_port(bed.bridge, tap.ovs_end)
    assert sh("ovs-vsctl", "get", "Interface", tap.ovs_end, "ofport").strip() == "1"
    assert all(n == 0 for n in counts(bed.bridge).values())

    sent = {"SYN + MP_CAPABLE": [MP_CAPABLE_SYN] * 3, "server ID": [TIMESTAMP_ACK] * 2, "no verdict": [PLAIN_ACK] * 4}
    frames = [f for group in sent.values() for f in group]
    in_ns(bed.client_ns, sys.executable, os.path.join(HERE, "send_frames.py"), bed.client_if,
          *(f.hex() for f in frames))
    expected = {what: len(sent.get(what, ())) for what in FLOWS.values()}
    try:
        wait_for(f"OpenFlow counters {expected}", lambda: counts(bed.bridge) == expected, WAIT)
    except TimeoutError as timeout:
        raise AssertionError(f"{timeout}; last seen {counts(bed.bridge)}") from None
    stats = classifier.stats(bed.uplink)
    assert stats["mp_capable"] == 3 and stats["timestamp"] == 2 and stats["to_ovs"] >= len(frames), stats


def test_traffic_crosses_the_tap_both_ways_and_remove_puts_the_uplink_back(bed):
    bed.start_echo()
    tap = classifier.insert(bed.bridge, bed.uplink, bed.port_type, hook="xdp")  # XDP before afxdp, tc before system
    assert tap.hook == ("xdp" if bed.port_type == "afxdp" else "tc")
    results = bed.traffic()
    assert all(r.get("verified") for r in results), results
    seen = settled_counts(bed.bridge)
    # Read after OVS's counters settled: the classifier counts a frame before OVS sees it, and the
    # connections' last ACKs may still be on their way when the traffic generator returns.
    stats = classifier.stats(bed.uplink)
    # Every client segment but the SYN carries a timestamp, so all arrive tagged. A lost SYN
    # (AF_PACKET ports drop under load) comes again, tagged again.
    assert stats["mp_capable"] >= len(results) and stats["timestamp"] > 100, stats
    assert stats["to_uplink"] > 100 and stats["unconfigured"] == 0, stats
    # OVS saw what the classifier tagged (less what a system port dropped), nothing untagged.
    assert len(results) <= seen["SYN + MP_CAPABLE"] <= stats["mp_capable"], (seen, stats)
    assert 100 < seen["server ID"] + seen["other timestamps"] <= stats["timestamp"], (seen, stats)
    assert seen["no verdict"] == 0, seen

    classifier.remove(bed.bridge, bed.uplink)
    assert is_port(bed.bridge, bed.uplink) and not is_port(bed.bridge, tap.ovs_end)
    assert sh("ovs-vsctl", "get", "Interface", bed.uplink, "ofport").strip() == "1"
    assert not os.path.exists(f"/sys/class/net/{tap.near}")
    assert "clsact" not in sh("tc", "qdisc", "show", "dev", bed.uplink)
    results = bed.traffic(conns=2)
    assert all(r.get("verified") for r in results), results
    after = settled_counts(bed.bridge)
    assert after["no verdict"] > 100, after  # the same traffic, untagged now
    assert {k: v for k, v in after.items() if k != "no verdict"} == {k: v for k, v in seen.items() if k != "no verdict"}


def test_insert_refuses_what_it_cannot_do_and_changes_nothing(bed):
    with pytest.raises(classifier.ClassifierError, match=f"interface {bed.uplink}x does not exist"):
        classifier.insert(bed.bridge, bed.uplink + "x", bed.port_type)
    with pytest.raises(classifier.ClassifierError, match=f"is a port of bridge {bed.bridge}, not nobr"):
        classifier.insert("nobr", bed.uplink, bed.port_type)
    with pytest.raises(classifier.ClassifierError, match="has no classifier tap"):
        classifier.remove(bed.bridge, bed.uplink)
    tap = classifier.insert(bed.bridge, bed.uplink, bed.port_type)
    with pytest.raises(classifier.ClassifierError, match=f"already has a classifier tap \\({tap.near}\\)"):
        classifier.insert(bed.bridge, bed.uplink, bed.port_type)
    assert is_port(bed.bridge, tap.ovs_end)  # the refused second insert left the first alone
    classifier.remove(bed.bridge, bed.uplink)
    with pytest.raises(classifier.ClassifierError, match=f"no classifier is attached to {bed.uplink}"):
        classifier.stats(bed.uplink)
    assert is_port(bed.bridge, bed.uplink)


def uplink_state(bed) -> dict:
    """What insert must leave as it found it when it fails."""
    return {"ports": sorted(sh("ovs-vsctl", "list-ports", bed.bridge).split()),
            "ofport": sh("ovs-vsctl", "get", "Interface", bed.uplink, "ofport").strip(),
            "qdiscs": sh("tc", "qdisc", "show", "dev", bed.uplink),
            "gro": sh("ethtool", "-k", bed.uplink).count("generic-receive-offload: on"),
            "taps": sorted(n for n in os.listdir("/sys/class/net") if n.startswith("mlb"))}


@pytest.mark.parametrize("failing", ["tc.attach", "ovs"])
def test_a_failed_insert_puts_everything_back(bed, monkeypatch, failing):
    sh("ethtool", "-K", bed.uplink, "gro", "on")  # so that restoring GRO is visible
    before = uplink_state(bed)
    if failing == "tc.attach":  # the last step: after the tap, the return program and the port swap
        real = classifier.tc.attach

        def attach(ipr, ifindex, ifname, hook, fd, name):
            if name == classifier.UPLINK_PROGRAM:
                raise RuntimeError("injected: cannot attach the uplink program")
            return real(ipr, ifindex, ifname, hook, fd, name)

        def attach_xdp(*args):  # an afxdp port's XDP hook fails first and falls back to tc, which fails too
            raise RuntimeError("injected: no native XDP")
        monkeypatch.setattr(classifier.tc, "attach", attach)
        monkeypatch.setattr(classifier.xdp, "attach", attach_xdp)
        expected = "injected: cannot attach"
    else:  # OVS refuses the port swap (the rollback's swap back goes through)
        real, calls = classifier._swap_port, []

        def swap(*args):
            calls.append(args)
            if len(calls) == 1:
                raise classifier.ClassifierError("injected: ovs-vsctl refused")
            return real(*args)
        monkeypatch.setattr(classifier, "_swap_port", swap)
        expected = "injected: ovs-vsctl refused"
    with pytest.raises((RuntimeError, classifier.ClassifierError), match=expected):
        classifier.insert(bed.bridge, bed.uplink)
    monkeypatch.undo()
    assert uplink_state(bed) == before


def test_the_uplink_program_runs_in_xdp_before_an_afxdp_port_and_at_tc_before_a_system_port(bed):
    """Asked for XDP: where the tap's OVS end runs XDP natively (afxdp) it runs there, elsewhere at tc."""
    tap = classifier.insert(bed.bridge, bed.uplink, hook="xdp")
    with IPRoute() as ipr:
        uplink, ovs_end = (ipr.link_lookup(ifname=n)[0] for n in (bed.uplink, tap.ovs_end))
        on_uplink, on_ovs_end = classifier.xdp.attached(ipr, uplink), classifier.xdp.attached(ipr, ovs_end)
    qdiscs = sh("tc", "qdisc", "show", "dev", bed.uplink)
    if bed.port_type == "afxdp":
        assert tap.hook == "xdp" and on_ovs_end[0] == classifier.xdp.NATIVE, (tap, on_ovs_end)
        assert on_uplink[0] == classifier.xdp.NATIVE and "clsact" not in qdiscs, (on_uplink, qdiscs)
    else:
        assert tap.hook == "tc" and on_uplink == on_ovs_end == (None, None) and "clsact" in qdiscs
    frames = [TIMESTAMP_ACK] * 3
    in_ns(bed.client_ns, sys.executable, os.path.join(HERE, "send_frames.py"), bed.client_if,
          *(f.hex() for f in frames))
    wait_for("3 frames tagged with the server ID", lambda: counts(bed.bridge).get("server ID") == 3, WAIT)
    assert classifier.stats(bed.uplink)["timestamp"] == 3
    classifier.remove(bed.bridge, bed.uplink)
    with IPRoute() as ipr:
        back = classifier.xdp.attached(ipr, uplink)
    if bed.port_type == "afxdp":  # the uplink is OVS's afxdp port again: OVS's program, not ours, and it stays
        assert back[0] == classifier.xdp.NATIVE and back[1] != on_uplink[1], (back, on_uplink)
    else:
        assert back == (None, None)


def test_an_uplink_without_native_xdp_gets_the_classifier_at_tc(afxdp_bed, monkeypatch):
    bed, tried = afxdp_bed, []

    def no_native_xdp(ipr, ifindex, ifname, fd, name):
        tried.append(name)
        raise RuntimeError(f"cannot attach {name} to {ifname} in native XDP mode: injected")
    monkeypatch.setattr(classifier.xdp, "attach", no_native_xdp)
    bed.start_echo()
    tap = classifier.insert(bed.bridge, bed.uplink, hook="xdp")
    assert tried == [classifier.UPLINK_XDP_PROGRAM]
    assert tap.hook == "tc" and "clsact" in sh("tc", "qdisc", "show", "dev", bed.uplink)
    results = bed.traffic(conns=2)
    assert all(r.get("verified") for r in results), results
    assert classifier.stats(bed.uplink)["timestamp"] > 100
    classifier.remove(bed.bridge, bed.uplink)
    assert "clsact" not in sh("tc", "qdisc", "show", "dev", bed.uplink)
