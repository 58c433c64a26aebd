"""A join whose third ACK trails the payload still lands on the DIP's list of subflows.

A DIP takes a join only once the join's third ACK arrives, and that ACK
crosses another path than the payload; the DIP's kernel refuses a join once
the client's DATA_FIN is in (MPTcpExtMPJoinRejected). The client
(mptcp_lb.traffic) therefore counts a subflow only once the DIP has answered
its handshake. Here the join's path is a token bucket of 1000 bytes/s that
holds one small packet: the SYN drains it, so the third ACK waits some 60 ms
behind it, while the payload crosses the other path in a millisecond or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.netns import REPO, WAIT, Namespaces, in_ns, nstat, python_env, sh

VIP = "10.82.255.1"
PORT = 80
HERE = os.path.dirname(os.path.abspath(__file__))
# 1000 bytes/s; a bucket of 120 bytes (a join's SYN is 86, its third ACK 90); at most 200 ms of queue, so a
# packet never waits the second after which a SYN would be sent again and a second SYN-ACK come back.
SLOW_PATH = ("tbf", "rate", "8000bit", "burst", "120", "latency", "200ms")

@pytest.fixture
def spaces():
    """Client and server namespaces; the server holds the VIP and runs the DIP echo service on it."""
    with Namespaces("mlj", "10.82", VIP) as spaces:
        in_ns(spaces.server, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        echo = subprocess.Popen(["ip", "netns", "exec", spaces.server, sys.executable,
                                 os.path.join(HERE, "echo_service.py"), "1", str(PORT)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env(), cwd=REPO)
        try:
            assert echo.stdout.readline().strip() == "ready"
            yield spaces
        finally:
            echo.stdin.close()
            echo.wait(WAIT)
            echo.stdout.close()


def slow_down(spaces: Namespaces, pair: int) -> str:
    """Put the token bucket on the client's end of ``pair``, with nothing but TCP to fill it; its name."""
    client_if, server_if = spaces.veths[pair]
    ends = ((spaces.client, client_if, f"10.82.{pair}.1"), (spaces.server, server_if, f"10.82.{pair}.2"))
    for (ns, ifname, _), (peer_ns, peer_if, peer_ip) in (ends, ends[::-1]):
        in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1")  # no solicitations or reports
        mac = in_ns(peer_ns, "cat", f"/sys/class/net/{peer_if}/address").strip()
        in_ns(ns, "ip", "neigh", "replace", peer_ip, "lladdr", mac, "dev", ifname, "nud", "permanent")  # no ARP
    in_ns(spaces.client, "tc", "qdisc", "add", "dev", client_if, "root", *SLOW_PATH)
    return client_if


def test_a_join_whose_third_ack_trails_the_payload_is_on_the_dips_list(spaces):
    slow_if = slow_down(spaces, 1)
    # A backup subflow: the payload stays on the fast path even once the join is in.
    in_ns(spaces.client, "ip", "mptcp", "endpoint", "add", "10.82.1.1", "dev", slow_if, "subflow", "backup")
    before = {ns: nstat(ns) for ns in (spaces.client, spaces.server)}
    run = subprocess.run(["ip", "netns", "exec", spaces.client, sys.executable, "-m", "mptcp_lb.traffic",
                          "--vip", VIP, "--port", str(PORT), "--conns", "3", "--parallel", "1",
                          "--size", str(64 * 1024), "--min-subflows", "2", "--timeout", "20"],
                         capture_output=True, text=True, env=python_env(), cwd=REPO, timeout=120)
    grown = {ns: {k: v - before[ns].get(k, 0) for k, v in nstat(ns).items()} for ns in before}
    results = json.loads(run.stdout or "null")
    assert results and len(results) == 3, (run.returncode, run.stderr)
    for r in results:
        assert r.get("verified") and r["client_subflows"] == 2, r
        remotes = sorted(sf["remote"].rsplit(":", 1)[0] for sf in r["reply"]["subflows"])
        assert remotes == ["10.82.0.1", "10.82.1.1"], r
    server = grown[spaces.server]
    joins = {k: server.get(k, 0) for k in ("MPTcpExtMPJoinSynRx", "MPTcpExtMPJoinAckRx", "MPTcpExtMPJoinRejected")}
    # Every join answered once: no SYN reached the DIP twice and no SYN-ACK was sent again, either of which
    # would bring the client a second SYN-ACK, and that counts as an answer too. (The client may send a
    # SYN again: until a join is in, the client resends its third ACK every srtt, a few microseconds
    # here, and the copies can fill the bucket's queue and drop the next connection's SYN.)
    assert joins == {"MPTcpExtMPJoinSynRx": 3, "MPTcpExtMPJoinAckRx": 3, "MPTcpExtMPJoinRejected": 0}, grown
    assert server.get("TcpExtTCPSynRetrans", 0) == 0, grown
    # And the third ACKs really waited in the bucket: tbf counts a packet it held back as an overlimit.
    stats = sh("ip", "netns", "exec", spaces.client, "tc", "-s", "qdisc", "show", "dev", slow_if)
    assert int(stats.split("overlimits ")[1].split()[0]) >= 3, stats
