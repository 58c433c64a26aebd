"""The classifier in front of a real OVS netdev bridge: OpenFlow sees the tag MACs.

Topology (names carry this process id so parallel runs do not collide)::

    netns: xcNNNn  <-- veth -->  xcNNNo (generic XDP classifier)  --  OVS bridge xcbrNNN

Frames sent from the namespace reach OVS's AF_PACKET socket after the XDP
program ran, so flows matching dl_dst=0a:4d:... count the tagged ones, and a
flow on the original destination counts the frames without a verdict.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
from scapy.all import IP, TCP, Ether, raw

from mininet_topos.harness import wait_for
from mptcp_lb import classifier
from tests.integration.netns import WAIT, sh

ORIGINAL_DST = "02:00:00:77:00:02"
SERVER_ID = 0xABC


SEND = """
import sys
from scapy.all import Ether, sendp
sendp([Ether(bytes.fromhex(h)) for h in sys.argv[2:]], iface=sys.argv[1], verbose=False)
"""


def frame(flags: str, options: list) -> bytes:
    return raw(Ether(src="02:00:00:77:00:01", dst=ORIGINAL_DST) / IP(src="10.78.0.1", dst="10.78.0.2")
               / TCP(sport=40000, dport=80, flags=flags, options=options))


MP_CAPABLE_SYN = frame("S", [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                             ("WScale", 7), (30, b"\x01\x01")])
TIMESTAMP_ACK = frame("A", [("NOP", None), ("NOP", None), ("Timestamp", (2, 0x7000 | SERVER_ID))])
PLAIN_ACK = frame("A", [])

# (OpenFlow match, frames sent that it must count)
FLOWS = {
    "dl_dst=0a:4d:01:00:00:00": [MP_CAPABLE_SYN] * 3,
    f"dl_dst=0a:4d:03:00:{SERVER_ID >> 8:02x}:{SERVER_ID & 0xff:02x}": [TIMESTAMP_ACK] * 2,
    f"dl_dst={ORIGINAL_DST}": [PLAIN_ACK] * 4,
}


def packet_counts(bridge: str) -> dict[str, int]:
    """n_packets of our flows, keyed by their match, from ovs-ofctl dump-flows."""
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge)
    counts = {}
    for line in out.splitlines():
        n = re.search(r"n_packets=(\d+)", line)
        match = re.search(r"dl_dst=([0-9a-f:]+)", line)
        if n and match:
            counts[f"dl_dst={match.group(1)}"] = int(n.group(1))
    return counts


@pytest.fixture
def bridge_with_classifier():
    """An OVS netdev bridge whose port is a veth carrying the classifier.

    Yields (bridge, netns, OVS-side veth, namespace-side veth).
    """
    tag = os.getpid()
    ns, bridge = f"xc{tag}n", f"xcbr{tag}"
    outer, inner = f"xc{tag}o", f"xc{tag}i"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "-n", ns, "link", "set", inner, "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", inner, "tx", "off")
        sh("ovs-vsctl", "--timeout=10", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
           "protocols=OpenFlow13", "fail_mode=secure", "--", "add-port", bridge, outer)
        for match in FLOWS:
            sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge, f"priority=100,{match},actions=drop")
        classifier.attach(outer)
        yield bridge, ns, outer, inner
    finally:
        sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge, check=False)
        sh("ip", "link", "del", outer, check=False)  # also detaches the program
        sh("ip", "netns", "del", ns, check=False)


def test_ovs_matches_the_tag_macs_the_classifier_writes(bridge_with_classifier):
    bridge, ns, outer, inner = bridge_with_classifier
    assert "xdpgeneric" in sh("ip", "link", "show", "dev", outer)
    assert all(n == 0 for n in packet_counts(bridge).values())

    frames = [f for sent in FLOWS.values() for f in sent]
    sh("ip", "netns", "exec", ns, sys.executable, "-c", SEND, inner, *(f.hex() for f in frames))

    expected = {match: len(sent) for match, sent in FLOWS.items()}
    try:
        wait_for(f"OpenFlow counters {expected} on {bridge}", lambda: packet_counts(bridge) == expected, WAIT)
    except TimeoutError as timeout:
        raise AssertionError(f"{timeout}; last seen {packet_counts(bridge)}") from None

    classifier.detach(outer)
    assert "xdp" not in sh("ip", "link", "show", "dev", outer)
