"""Port-based steering over IPv6 needs an ADD_ADDR with a port, which this kernel cannot send beside timestamps.

DESIGN.md §4 records it; this checks it on the running kernel, with stock
MPTCP sockets in two namespaces and the in-kernel path manager: the server
announces its address with a port (a ``signal`` endpoint with a port, as a
port-mode DIP does), and the client, which accepts ADD_ADDR, joins it.

The arithmetic: an IPv6 ADD_ADDR with a port and its HMAC is 30 bytes
(RFC 8684 §3.4.1: 2 + 1 + 1 + 16 + 2 + 8); Linux sends timestamps as 12
(NOP, NOP, kind 8); 30 + 12 > 40, the most TCP options a segment carries.
IPv4's is 18 bytes and fits. Without timestamps IPv6's fits too; but the
token modes steer by the server ID in TSval, so a DIP cannot turn them off.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.netns import Namespaces, in_ns, nstat

ANNOUNCED_PORT = 5000
PEER = str(Path(__file__).with_name("mptcp_peer.py"))
CHUNKS = 40  # 2 s of data: time for the ADD_ADDR, and for the join it asks for


@pytest.mark.parametrize("family, timestamps, announced", [
    ("ipv4", 1, True),   # the control: what port mode does today
    ("ipv6", 1, False),  # the limit: no room beside timestamps
    ("ipv6", 0, True),   # room without timestamps
])
def test_an_add_addr_with_a_port_fits_beside_timestamps_over_ipv4_only(family, timestamps, announced):
    with Namespaces("aa", "10.77", pairs=1) as ns:
        (client_if, server_if), = ns.veths
        if family == "ipv6":
            client_addr, server_addr = "fd00:77::1", "fd00:77::2"
            in_ns(ns.client, "ip", "addr", "add", f"{client_addr}/64", "dev", client_if, "nodad")
            in_ns(ns.server, "ip", "addr", "add", f"{server_addr}/64", "dev", server_if, "nodad")
        else:
            client_addr, server_addr = "10.77.0.1", "10.77.0.2"
        in_ns(ns.server, "sysctl", "-qw", f"net.ipv4.tcp_timestamps={timestamps}")  # IPv6's TCP reads it too
        in_ns(ns.server, "ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "0")
        in_ns(ns.server, "ip", "mptcp", "endpoint", "add", server_addr, "dev", server_if, "port",
              str(ANNOUNCED_PORT), "signal")
        in_ns(ns.client, "ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
        server = subprocess.Popen(["ip", "netns", "exec", ns.server, sys.executable, PEER, "serve"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            subprocess.run(["ip", "netns", "exec", ns.client, sys.executable, PEER, "send", server_addr, str(CHUNKS)],
                           check=True, timeout=30)
            assert int(server.stdout.readline()) == CHUNKS * 16384  # every byte arrived, announced or not
        finally:
            server.kill()
            server.wait()
        sent, received = nstat(ns.server), nstat(ns.client)
        print(f"\n[{family} timestamps={timestamps}] server AddAddrTx={sent.get('MPTcpExtAddAddrTx', 0)} "
              f"AddAddrTxDrop={sent.get('MPTcpExtAddAddrTxDrop', 0)} client PortAdd={received.get('MPTcpExtPortAdd', 0)} "
              f"server MPJoinSynRx={sent.get('MPTcpExtMPJoinSynRx', 0)}")
        if announced:
            assert sent.get("MPTcpExtAddAddrTx", 0) >= 1 and received.get("MPTcpExtPortAdd", 0) >= 1
            assert sent.get("MPTcpExtMPJoinSynRx", 0) >= 1  # and the client joined the announced port
        else:
            assert sent.get("MPTcpExtAddAddrTx", 0) == 0 and received.get("MPTcpExtAddAddr", 0) == 0
            assert sent.get("MPTcpExtAddAddrTxDrop", 0) >= 1  # the kernel's own word: it had no room for it
            assert sent.get("MPTcpExtMPJoinSynRx", 0) == 0  # nothing announced, nothing joined
