"""Second chance on the DIPs (bpf/dip_tc.c) with real agents, real sockets and an OVS bridge as the MUX.

    client ns --- OVS netdev bridge --- d1 ns (dip-agent --echo, DIP 1)
                  (plays the MUX)   \\-- d2 ns (dip-agent --echo, DIP 2)

The bridge hands the client's VIP traffic to DIP 2, as a MUX does for a slot
DIP 2 owns. Rate-limited uploads are in flight when the slot moves to DIP 1:
the bridge then hands that traffic to DIP 1 with DIP 2's address in the
source MAC, exactly as a MUX's bucket in transition does. DIP 1 must pass
every packet of the old connections on to DIP 2 and keep every new one.
Each client has one path, so each connection has one subflow: a connection
that loses it dies. Judged from the client's and the DIPs' kernel counters,
the DIPs' own reports of where each connection ended, and verified bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from mininet_topos.harness import wait_for
from mptcp_lb.mptcp_codec import second_chance_mac
from tests.integration.netns import REPO, WAIT, ServerDriver, in_ns, nstat, python_env, sh, wait_for_ipv6_dad

VIP, PORT = "10.77.9.100", 80
CLIENT_IP, CLIENT_MAC = "10.77.0.100", "02:00:00:77:00:64"
MUX_MAC = "02:00:00:77:00:fe"  # what the client thinks the VIP's next hop is
DIPS = {1: ("10.77.0.1", "02:00:00:77:00:01"), 2: ("10.77.0.2", "02:00:00:77:00:02")}
OFPORT = {"client": 1, 1: 2, 2: 3}


def config(mode: str) -> dict:
    dips = [{"id": i, "address": a, "mac": m} for i, (a, m) in DIPS.items()]
    vip = {"name": "web", "address": VIP, "port": PORT, "mode": mode, "dips": dips}
    if mode == "port":
        for d, ports in zip(dips, ("4096-8191", "8192-12287")):
            d["ports"] = ports
    else:
        vip["key_source"] = "pool"
    return {"muxes": [{"name": "mux1", "dpid": 1, "address": "10.77.1.1", "mac": MUX_MAC, "uplink_port": 1,
                       "fabric_port": 2}], "vips": [vip]}


class Bed:
    vip = VIP
    vip_match = f"tcp,nw_dst={VIP}"  # the client's VIP traffic, as the 'MUX' flow matches it

    def __init__(self, tmp_path, mode: str):
        tag = os.getpid() % 100000
        self.mode = mode
        self.bridge = f"scbr{tag}"
        self.ns = {"client": f"sc{tag}c", 1: f"sc{tag}d1", 2: f"sc{tag}d2"}
        self.outer = {k: f"sc{tag}o{k}"[:15] for k in self.ns}
        self.inner = "e0"
        self.agents: dict[int, subprocess.Popen] = {}
        self.tmp = tmp_path
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config(mode)))

    def create(self) -> None:
        addrs = {"client": (CLIENT_IP, CLIENT_MAC), **DIPS}
        for key, ns in self.ns.items():
            ip, mac = addrs[key]
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", self.outer[key], "type", "veth", "peer", "name", self.inner, "netns", ns)
            sh("ip", "link", "set", self.outer[key], "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "link", "set", self.inner, "address", mac, "up")
            in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", self.inner)
            in_ns(ns, "ethtool", "-K", self.inner, "tx", "off")  # the netdev datapath completes no checksum
        in_ns(self.ns["client"], "ip", "route", "add", f"{VIP}/32", "dev", self.inner)
        in_ns(self.ns["client"], "ip", "neigh", "replace", VIP, "lladdr", MUX_MAC, "dev", self.inner)
        cmd = ["ovs-vsctl", "--timeout=10", "add-br", self.bridge, "--", "set", "bridge", self.bridge,
               "datapath_type=netdev", "fail_mode=secure"]
        for key, port in OFPORT.items():
            cmd += ["--", "add-port", self.bridge, self.outer[key], "--", "set", "Interface", self.outer[key],
                    f"ofport_request={port}"]
        sh(*cmd)
        sh("ovs-ofctl", "add-flow", self.bridge, "priority=10,actions=NORMAL")

    def steer(self, dip: int, previous: int | None = None) -> None:
        """The 'MUX': the client's VIP traffic to ``dip``, marked with ``previous`` while in transition."""
        mark = f"mod_dl_src:{second_chance_mac(DIPS[previous][0])}," if previous else ""
        sh("ovs-ofctl", "add-flow", self.bridge, f"priority=100,{self.vip_match},in_port={OFPORT['client']},"
                                                 f"actions={mark}mod_dl_dst:{DIPS[dip][1]},output:{OFPORT[dip]}")

    def start_agents(self) -> None:
        for i, ns in ((1, self.ns[1]), (2, self.ns[2])):
            ready = self.tmp / f"d{i}.ready"
            log = open(self.tmp / f"d{i}.log", "w")
            self.agents[i] = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "mptcp_lb.cli", "dip-agent", "--config",
                 str(self.config_path), "--dip", str(i), "--interface", self.inner, "--echo",
                 "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT, env=python_env(), cwd=REPO)
            log.close()
        for i in self.agents:
            def ready(i=i):
                if self.agents[i].poll() is not None:
                    raise AssertionError(f"agent d{i} exited: {(self.tmp / f'd{i}.log').read_text()[-2000:]}")
                return (self.tmp / f"d{i}.ready").exists()
            wait_for(f"DIP agent d{i}", ready, WAIT)

    def traffic(self, conns: int, size: int, rate: float = 0, timeout: float = 30) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns["client"], sys.executable, "-m", "mptcp_lb.traffic", "--vip", self.vip,
             "--port", str(PORT), "--conns", str(conns), "--size", str(size), "--min-subflows", "1",
             "--parallel", str(conns), "--timeout", str(timeout), "--rate", str(rate)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(), cwd=REPO)

    def established(self, dip: int) -> int:
        out = in_ns(self.ns[dip], "ss", "-tnH", "state", "established", f"( sport = :{PORT} )")
        return len([line for line in out.splitlines() if line.strip()])

    def stats(self, dip: int) -> dict[str, int]:
        out = in_ns(self.ns[dip], sys.executable, "-m", "mptcp_lb.cli", "dip-stats", self.inner)
        return json.loads(out)

    def destroy(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
        sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.bridge, check=False)
        for key, ns in self.ns.items():
            in_ns(ns, "ip", "mptcp", "endpoint", "flush", check=False)
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "link", "del", self.outer[key], check=False)
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(params=["port", "token"])
def bed(request, tmp_path):
    bed = Bed(tmp_path, request.param)
    try:
        bed.create()
        bed.start_agents()
        yield bed
    finally:
        bed.destroy()


def results(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=120)
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError(f"traffic printed no JSON ({proc.returncode}): {err[-2000:]}") from None


def test_moving_a_slot_keeps_every_connection_and_sends_new_ones_to_the_new_owner(bed):
    bed.steer(2)
    before = {k: nstat(ns) for k, ns in bed.ns.items()}
    old = bed.traffic(conns=6, size=600_000, rate=200_000)  # 3 s each: in flight when the slot moves
    wait_for("6 uploads established on DIP 2", lambda: bed.established(2) >= 6, WAIT)
    bed.steer(1, previous=2)  # the slot moves: new owner DIP 1, second chance at DIP 2
    new = results(bed.traffic(conns=6, size=100_000))
    old = results(old)
    after = {k: nstat(ns) for k, ns in bed.ns.items()}
    delta = {k: {n: after[k].get(n, 0) - before[k].get(n, 0) for n in ("TcpEstabResets", "TcpOutRsts",
                                                                       "TcpAttemptFails")} for k in bed.ns}
    stats = {i: bed.stats(i) for i in (1, 2)}
    print(json.dumps({"mode": bed.mode, "nstat": delta, "dip1": stats[1]}))
    for r in old:
        assert r.get("verified") and r["reply"]["dip"] == 2, r  # every byte, on the DIP that held it
    for r in new:
        assert r.get("verified") and r["reply"]["dip"] == 1, r  # new connections stay with the new owner
    assert delta["client"]["TcpEstabResets"] == 0 and delta["client"]["TcpAttemptFails"] == 0, delta
    assert delta[1]["TcpOutRsts"] == 0 and delta[2]["TcpOutRsts"] == 0, delta
    assert stats[1]["sc_forwarded"] > 0 and stats[1]["sc_syn"] >= 6, stats[1]
    if bed.mode == "token":
        # SYN cookies leave no request socket: DIP 1 kept the handshakes it answered.
        assert stats[1]["sc_handshake"] >= 6, stats[1]
    assert stats[2]["sc_forwarded"] == 0  # DIP 2 got its packets unmarked: nothing passed on twice
    # DIP 1 recorded its handshakes, in a table with room for them all.
    assert stats[1]["flow_entries"] >= 6 and stats[1]["flows_evicted"] == 0 and stats[1]["flow_capacity"] == 65536


def test_control_without_the_mark_the_moved_connections_are_reset(bed):
    """What the second chance prevents: the same move, unmarked, resets every upload in flight."""
    bed.steer(2)
    before = nstat(bed.ns["client"])
    # A reset subflow leaves its MPTCP connection waiting for another one: a short timeout ends it.
    old = bed.traffic(conns=4, size=600_000, rate=200_000, timeout=5)
    wait_for("4 uploads established on DIP 2", lambda: bed.established(2) >= 4, WAIT)
    bed.steer(1)
    old = results(old)
    resets = nstat(bed.ns["client"]).get("TcpEstabResets", 0) - before.get("TcpEstabResets", 0)
    assert not any(r.get("verified") for r in old), old
    assert resets >= 4, resets


# ============================================================== over IPv6

VIP6, CLIENT_IP6 = "2001:db8:77:9::100", "2001:db8:77::100"
DIPS6 = {1: "2001:db8:77::1", 2: "2001:db8:77::2"}  # the DIPs' IPv6 fabric addresses


class Bed6(Bed):
    """The same bed, dual-stack, the client speaking IPv6 to VIP6, each DIP's programs run by a driver.

    The agent cannot serve an IPv6 VIP yet (docs/ipv6.md), so each DIP runs
    DipPrograms with vip6 and every DIP's IPv6 address (peers6) and the
    recording echo server of test_dip_token, in the server driver.
    """

    vip = VIP6
    vip_match = f"tcp6,ipv6_dst={VIP6}"

    def create(self) -> None:
        super().create()
        for key, ns in self.ns.items():
            address = CLIENT_IP6 if key == "client" else DIPS6[key]
            in_ns(ns, "ip", "addr", "add", f"{address}/64", "dev", self.inner, "nodad")
            if key != "client":
                in_ns(ns, "ip", "addr", "add", f"{VIP6}/128", "dev", "lo")
        in_ns(self.ns["client"], "ip", "route", "add", f"{VIP6}/128", "dev", self.inner)
        in_ns(self.ns["client"], "ip", "neigh", "replace", VIP6, "lladdr", MUX_MAC, "dev", self.inner)
        wait_for_ipv6_dad(*self.ns.values())

    def start_agents(self, peers6: bool = True) -> None:
        key_mode = {"port": "none", "token": "pool"}[self.mode]
        for i in (1, 2):
            self.agents[i] = ServerDriver(
                self.ns[i], ifnames=[self.inner], vip=VIP, vip6=VIP6, port=PORT, server_id=i, mode=key_mode,
                slices=[i], slice_bits=2, syncookies=2 if self.mode == "token" else None,
                stamp=self.mode == "token", self_address=DIPS[i][0],
                peers6={DIPS[j][0]: DIPS6[j] for j in DIPS} if peers6 else None)
            self.agents[i].call("apply")

    def stats(self, dip: int) -> dict[str, int]:
        return self.agents[dip].call("stats")

    def destroy(self) -> None:
        for driver in self.agents.values():
            driver.close()
        self.agents = {}
        super().destroy()


@pytest.mark.parametrize("mode", ["port", "token"])
def test_over_ipv6_a_moved_slot_keeps_every_connection_passed_on_by_the_flow_label(tmp_path, mode):
    bed = Bed6(tmp_path, mode)
    try:
        bed.create()
        bed.start_agents()
        bed.steer(2)
        before = nstat(bed.ns["client"])
        old = bed.traffic(conns=6, size=600_000, rate=200_000)  # 3 s each: in flight when the slot moves
        wait_for("6 uploads established on DIP 2", lambda: bed.established(2) >= 6, WAIT)
        bed.steer(1, previous=2)
        new = results(bed.traffic(conns=6, size=100_000))
        old = results(old)
        after = nstat(bed.ns["client"])
        resets = {n: after.get(n, 0) - before.get(n, 0) for n in ("TcpEstabResets", "TcpAttemptFails")}
        stats = {i: bed.stats(i) for i in (1, 2)}
        syn_retrans = after.get("TcpExtTCPSynRetrans", 0) - before.get("TcpExtTCPSynRetrans", 0)
        print(json.dumps({"mode": mode, "client": resets, "client_syn_retrans": syn_retrans, "dip1": stats[1],
                          "dip2": stats[2]}))
        for r in old:
            assert r.get("verified") and r["reply"]["dip"] == 2, r  # every byte, on the DIP that held it
        for r in new:
            assert r.get("verified") and r["reply"]["dip"] == 1, r
        assert resets == {"TcpEstabResets": 0, "TcpAttemptFails": 0}, resets
        assert stats[1]["sc_forwarded"] > 0 and stats[1]["sc_syn"] >= 6 and stats[1]["sc_no_peer"] == 0, stats[1]
        assert stats[2]["sc_forwarded"] == 0 and stats[2]["sc_chained"] == 0, stats[2]
        # Every connection the DIPs terminated was IPv6, from the client's IPv6 address.
        for i in (1, 2):
            for record in bed.agents[i].call("conns"):
                assert record["family"] == "AF_INET6" and record["peer"].startswith(CLIENT_IP6 + ":"), record
    finally:
        bed.destroy()


def test_over_ipv6_without_the_previous_owners_address_the_moved_connections_are_lost(tmp_path):
    """The control: no peers6, so DIP 1 keeps what it cannot pass on (sc_no_peer) and the uploads die."""
    bed = Bed6(tmp_path, "port")
    try:
        bed.create()
        bed.start_agents(peers6=False)
        bed.steer(2)
        old = bed.traffic(conns=4, size=600_000, rate=200_000, timeout=5)
        wait_for("4 uploads established on DIP 2", lambda: bed.established(2) >= 4, WAIT)
        bed.steer(1, previous=2)
        old = results(old)
        assert not any(r.get("verified") for r in old), old
        stats = bed.stats(1)
        assert stats["sc_no_peer"] > 0 and stats["sc_forwarded"] == 0, stats
    finally:
        bed.destroy()
