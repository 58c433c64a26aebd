"""The DIP agent in real network namespaces: host setup, undo, and verified multipath echo traffic.

Topology (names carry this process id so parallel runs do not collide)::

    client ns                         server ns (the DIP)
    10.77.0.1/24  <-- veth 0 -->  10.77.0.2/24
    10.77.1.1/24  <-- veth 1 -->  10.77.1.2/24     VIP/32 on lo (added by the agent)

The client reaches the VIP via 10.77.0.2 (and, for subflows bound to veth 1,
via 10.77.1.2). Server-side code runs in a subprocess under ``ip netns exec``
so the test process never changes namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mininet_topos.harness import wait_for
from tests.integration.netns import REPO, WAIT, Namespaces, in_ns, python_env

VIP = "10.77.9.100"
SERVICE_PORT = 80
ANNOUNCE_PORT = 4096
DIP_ID = 1


AGENT_SYSCTLS = {
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.lo.arp_ignore": "1",
    "net.ipv4.conf.lo.arp_announce": "2",
    "net.mptcp.allow_join_initial_addr_port": "0",
    "net.mptcp.add_addr_timeout": "1",  # a lost ADD_ADDR goes again after a second, not 120
}

HERE = Path(__file__).resolve().parent


METRICS_PORT = 9181


def run_agent(ns: str, config: Path, dip_id: int, ready: Path, interfaces: list[str]) -> subprocess.Popen:
    """``mptcp-lb dip-agent --echo`` in ``ns``, its DIP programs on ``interfaces``, metrics on loopback."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "mptcp_lb.cli", "dip-agent", "--config", str(config),
         "--dip", str(dip_id), "--ready-file", str(ready), "--interface", ",".join(interfaces), "--echo",
         "--metrics-port", str(METRICS_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(), cwd=REPO)


@pytest.fixture
def netns():
    with Namespaces("mlb", "10.77", VIP) as spaces:
        yield spaces


def server_state(ns: str) -> dict:
    """Everything DipHostSetup may touch, as seen from outside by iproute2 and sysctl."""
    return {
        "endpoints": in_ns(ns, "ip", "mptcp", "endpoint", "show").strip(),
        "limits": in_ns(ns, "ip", "mptcp", "limits", "show").strip(),
        "sysctls": {name: in_ns(ns, "sysctl", "-n", name).strip() for name in AGENT_SYSCTLS},
        "lo": in_ns(ns, "ip", "-4", "-o", "addr", "show", "dev", "lo").strip(),
        "lo6": in_ns(ns, "ip", "-6", "-o", "addr", "show", "dev", "lo").strip(),
    }


class SetupDriver:
    """A DipHostSetup living in a subprocess inside the server namespace."""

    def __init__(self, ns: str, vip6: str | None = None):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE / "host_setup_driver.py"), VIP, str(ANNOUNCE_PORT),
             *([vip6] if vip6 else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=python_env(), cwd=REPO)

    def call(self, method: str) -> None:
        self.proc.stdin.write(method + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if answer != "done\n":
            self.proc.kill()
            raise AssertionError(f"{method}() failed in the server namespace:\n{self.proc.stderr.read()}")

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=WAIT) == 0, self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.mark.parametrize("vip6", [None, "fd00:77::100"])
def test_apply_is_idempotent_and_undo_restores_everything(netns, vip6):
    ns = netns.server
    # A baseline that differs from both kernel defaults and the agent's values,
    # so a restore to defaults would be caught.
    in_ns(ns, "ip", "mptcp", "limits", "set", "subflows", "3", "add_addr_accepted", "2")
    in_ns(ns, "sysctl", "-q", "net.ipv4.conf.lo.arp_announce=1")
    in_ns(ns, "ip", "mptcp", "endpoint", "add", "10.77.0.2", "signal")
    before = server_state(ns)
    assert VIP not in before["lo"] and "fd00:77::100" not in before["lo6"]

    driver = SetupDriver(ns, vip6)
    try:
        driver.call("apply")
        applied = server_state(ns)
        assert applied["sysctls"] == AGENT_SYSCTLS
        assert applied["limits"] == "add_addr_accepted 0 subflows 8"
        assert f"inet {VIP}/32" in applied["lo"]
        if vip6:  # no duplicate address detection: usable at once, never tentative
            assert f"inet6 {vip6}/128" in applied["lo6"] and "tentative" not in applied["lo6"], applied["lo6"]
        else:
            assert applied["lo6"] == before["lo6"]
        endpoints = applied["endpoints"].splitlines()
        assert len(endpoints) == 2
        assert "10.77.0.2 id 1 signal" in endpoints[0]
        assert endpoints[1].split() == [VIP, "port", str(ANNOUNCE_PORT), "id", "2", "signal"]

        driver.call("apply")
        assert server_state(ns) == applied

        driver.call("undo")
        assert server_state(ns) == before

        driver.call("undo")  # nothing left to undo
        assert server_state(ns) == before
    finally:
        driver.close()


def write_config(path: Path) -> Path:
    path.write_text(f"""
muxes:
  - {{name: mux1, dpid: 1, address: 10.77.8.1, mac: "02:00:00:01:00:01", uplink_port: 1, fabric_port: 2}}
vips:
  - name: web
    address: {VIP}
    port: {SERVICE_PORT}
    dips:
      - {{id: {DIP_ID}, address: 10.77.0.2, mac: "02:00:00:02:00:01", ports: 4096-8191,
         announce_port: {ANNOUNCE_PORT}}}
""")
    return path


def test_echo_traffic_uses_announced_port_and_verifies_every_byte(netns, tmp_path):
    config = write_config(tmp_path / "dip.yaml")
    ready = tmp_path / "ready"
    agent = run_agent(netns.server, config, DIP_ID, ready, netns.server_ifs)
    try:
        wait_for("the DIP agent to become ready", lambda: ready.exists() or agent.poll() is not None, WAIT)
        assert agent.poll() is None, f"agent exited {agent.returncode}: {agent.stderr.read()}"
        assert ready.read_text() == "ready\n"

        client = netns.client
        bad = subprocess.run(["ip", "netns", "exec", client, sys.executable, str(HERE / "bad_clients.py"), VIP,
                              str(SERVICE_PORT)],
                             capture_output=True, text=True, env=python_env(), cwd=REPO)
        assert bad.returncode == 0, bad.stderr
        assert bad.stdout.split() == ["closed"] * 3  # the server hung up without a reply

        in_ns(client, "ip", "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4")
        for i, (c_if, _) in enumerate(netns.veths):
            in_ns(client, "ip", "mptcp", "endpoint", "add", f"10.77.{i}.1", "dev", c_if, "subflow", "fullmesh")

        conns, size = 6, 300_000
        proc = subprocess.run(
            ["ip", "netns", "exec", client, sys.executable, "-m", "mptcp_lb.traffic", "--vip", VIP,
             "--port", str(SERVICE_PORT), "--conns", str(conns), "--size", str(size),
             "--min-subflows", "3", "--parallel", "3", "--timeout", "10"],
            capture_output=True, text=True, env=python_env(), cwd=REPO)
        results = json.loads(proc.stdout)
        assert proc.returncode == 0, (results, proc.stderr)
        assert len(results) == conns
        for r in results:
            assert "error" not in r, r
            assert r["verified"] and r["bytes_sent"] == size and r["reply"]["bytes"] == size, r
            assert r["client_subflows"] >= 3 and r["min_subflows_reached"], r
            reply = r["reply"]
            assert reply["dip"] == DIP_ID
            locals_ = [sf["local"] for sf in reply["subflows"]]
            remotes = {sf["remote"].rsplit(":", 1)[0] for sf in reply["subflows"]}
            # the MPC subflow on the service port, joins only on the announced port (C flag)
            assert locals_.count(f"{VIP}:{SERVICE_PORT}") == 1, reply
            assert f"{VIP}:{ANNOUNCE_PORT}" in locals_, reply
            assert set(locals_) == {f"{VIP}:{SERVICE_PORT}", f"{VIP}:{ANNOUNCE_PORT}"}, reply
            assert remotes == {"10.77.0.1", "10.77.1.1"}, reply  # fullmesh used both client interfaces

        # The agent's metrics, on the DIP's loopback: the programs' events and the flow table's fill.
        scrape = in_ns(netns.server, sys.executable, "-c", "import sys, urllib.request; sys.stdout.write("
                       f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode())")
        assert f'mptcplb_dip_flow_capacity{{dip="{DIP_ID}",vip="web"}} 65536.0' in scrape, scrape
        assert f'mptcplb_dip_program_events_total{{dip="{DIP_ID}",event="pool_empty",vip="web"}} 0.0' in scrape, scrape
        assert f'mptcplb_dip_flows_evicted_total{{dip="{DIP_ID}",vip="web"}} 0.0' in scrape, scrape
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)  # reaches the agent: ip netns exec execs it
        rc = agent.wait(timeout=WAIT)
        stderr = agent.stderr.read()
        agent.stdout.close()
        agent.stderr.close()
    assert rc == 0, stderr
    assert "exceeds the maximum" in stderr and "connection closed after 3 of 10" in stderr, stderr
    state = server_state(netns.server)
    assert state["endpoints"] == ""
    assert VIP not in state["lo"]
    assert state["sysctls"]["net.mptcp.allow_join_initial_addr_port"] == "1"


def test_agent_exit_codes(netns, tmp_path):
    config = write_config(tmp_path / "dip.yaml")
    ready = tmp_path / "ready"
    before = server_state(netns.server)

    agent = run_agent(netns.server, config, 9, ready, netns.server_ifs)
    _, err = agent.communicate(timeout=WAIT)
    assert agent.returncode == 2, err
    assert "--dip 9: VIP web has no DIP with that id (ids: 1)" in err

    # Its metrics port taken: named, and nothing left behind.
    holder = subprocess.Popen(["ip", "netns", "exec", netns.server, sys.executable, "-c",
                               "import socket, sys; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); "
                               "print('up', flush=True); sys.stdin.read()", str(METRICS_PORT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "up\n"
        agent = run_agent(netns.server, config, DIP_ID, ready, netns.server_ifs)
        _, err = agent.communicate(timeout=WAIT)
        assert agent.returncode == 2, err
        assert f"--metrics-host/--metrics-port 127.0.0.1:{METRICS_PORT}: Address already in use" in err, err
    finally:
        holder.communicate("")
    assert server_state(netns.server) == before

    in_ns(netns.server, "sysctl", "-q", "net.mptcp.enabled=0")
    agent = run_agent(netns.server, config, DIP_ID, ready, netns.server_ifs)
    _, err = agent.communicate(timeout=WAIT)
    assert agent.returncode == 3, err
    assert "net.mptcp.enabled is 0" in err
    assert not ready.exists()
    in_ns(netns.server, "sysctl", "-q", "net.mptcp.enabled=1")
    assert server_state(netns.server) == before


def test_token_agent_without_default_route_names_the_missing_interface():
    ns = f"mlbr{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = ("from dip_agent.main import default_interface\n"
                "from mptcp_lb.config import ConfigError\n"
                "try:\n    default_interface()\nexcept ConfigError as e:\n    print(e.problems[0])\n")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                             text=True, check=True, cwd=REPO).stdout
        assert out.startswith("--interface: not given, and no default route to find the fabric interface by")
    finally:
        subprocess.run(["ip", "netns", "del", ns])
