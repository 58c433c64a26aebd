"""A join whose third ACK trails the payload still lands on the DIP's list of subflows.

A DIP takes a join only once the join's third ACK arrives, and that ACK
crosses another path than the payload; its kernel refuses joins once the
client's DATA_FIN is in. The client (mptcp_lb.traffic) therefore counts a
subflow only once the DIP has answered its handshake. Here the join's path
is a token bucket of 200 bytes/s, so its third ACK trails the SYN-ACK by
about half a second while the payload crosses the other path in a few
milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.netns import REPO, WAIT, Namespaces, in_ns, nstat, python_env

VIP = "10.82.255.1"
PORT = 80
HERE = os.path.dirname(os.path.abspath(__file__))
SLOW_PATH = ("tbf", "rate", "1600bit", "burst", "100", "latency", "10s")  # 200 bytes/s, one small packet at a time

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def spaces():
    """Client and server namespaces; the server holds the VIP and runs the DIP echo service on it."""
    with Namespaces("mes", "10.82", VIP) as spaces:
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


def test_a_join_whose_third_ack_trails_the_payload_is_on_the_dips_list(spaces):
    slow_if = spaces.veths[1][0]
    in_ns(spaces.client, "sysctl", "-qw", f"net.ipv6.conf.{slow_if}.disable_ipv6=1")  # no solicitations in the bucket
    in_ns(spaces.client, "tc", "qdisc", "add", "dev", slow_if, "root", *SLOW_PATH)
    in_ns(spaces.client, "ip", "mptcp", "endpoint", "add", "10.82.1.1", "dev", slow_if, "subflow")
    before = nstat(spaces.server)
    out = in_ns(spaces.client, "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "mptcp_lb.traffic",
                "--vip", VIP, "--port", str(PORT), "--conns", "2", "--parallel", "1", "--size", str(64 * 1024),
                "--min-subflows", "2", "--timeout", "20")
    after = nstat(spaces.server)
    results = json.loads(out)
    assert len(results) == 2
    for r in results:
        assert r.get("verified") and r["client_subflows"] == 2, r
        remotes = sorted(sf["remote"].rsplit(":", 1)[0] for sf in r["reply"]["subflows"])
        assert remotes == ["10.82.0.1", "10.82.1.1"], r
    joins = {k: after.get(k, 0) - before.get(k, 0) for k in ("MPTcpExtMPJoinAckRx", "MPTcpExtMPJoinRejected")}
    assert joins == {"MPTcpExtMPJoinAckRx": 2, "MPTcpExtMPJoinRejected": 0}, joins
    # The payload took the fast path: the slow one carried handshakes and ACKs, a few hundred bytes.
    sent = int(in_ns(spaces.client, "cat", f"/sys/class/net/{slow_if}/statistics/tx_bytes"))
    assert sent < 2000, sent
