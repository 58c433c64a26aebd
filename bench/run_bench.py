"""mptcp-lb benchmarks, measured side by side in one run (``make bench``).

1. Long MPTCP downloads through the demo topology, the way a user would run
   one (stock nginx on the DIPs, stock curl on a client, both under
   mptcpize; every byte verified): port and token steering, on afxdp and on
   AF_PACKET (system) OVS ports, each next to plain L2 forwarding over the
   same fabric ports. Goodput, and retransmissions per MB on the senders
   (the DIPs) and on the client, from their kernels' counters.
2. Upload goodput client -> server through one OVS bridge, alternating
   between plain L2 forwarding (``actions=NORMAL``), the port pipeline and
   the token pipeline with the classifier tap in front of the bridge (in
   XDP, and forced to tc): here every data packet crosses the classifier.
3. Datapath (megaflow) count for the VIP on the datacenter topology after
   few vs many connections: it must not grow with connections.
4. Flow compile time for 4096 DIPs vs 3 DIPs.
5. Classifier cost per packet class (BPF_PROG_TEST_RUN, 1e6 repeats) against
   the tap's bare redirect (``mux_to_uplink``), on the same frames.
6. Controller: SYN(MPC) seeding rate (packet-in -> packet-out decisions per
   second, in process) and key generation rate for a DIP's slices.
7. Consistency of the slot table for 8 DIPs: slots that move when a DIP is
   removed (none but its own) or added (about 1/9), and the balance.
8. Failure detection: a DIP's link goes down under the demo topology's
   health checks; seconds until its slots leave both MUXes.
9. OpenFlow over TLS as os-ken uses it (one thread reads a switch while
   another writes it): fresh connections that lose their stream, with the
   bare ``ssl.SSLSocket`` and with ``SerializedTLSSocket``.

Absolute numbers on this shared 2-core machine are noisy; the ratios are the point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from bench.download import checked_download, hosts_off_pmd, route_vip_to
from mininet_topos.harness import Datacenter, require_platform
from mininet_topos.stock import Blob, DownloadFailed, StockWebServers
from mptcp_lb.datapath import PORT_TYPES, XDP_PORT_TYPES

BENCH_VIP = "10.9.0.100"
BENCH_VIP6 = "2001:db8:9::100"
CLIENT_IP, SERVER_IP, MUX_IP = "10.9.0.1", "10.9.0.2", "10.9.0.254"
SERVER_MAC = "02:00:00:09:00:02"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOWNLOAD_SECONDS_PER_128_MIB = 60  # the time limit; a download that size takes about 5 s on AF_PACKET ports

def bench_config(mode: str = "port") -> dict:
    """One MUX, one VIP, one DIP (the server host), in the given steering mode."""
    dip = {"id": 1, "address": SERVER_IP, "mac": SERVER_MAC}
    vip = {"name": "bench", "address": BENCH_VIP, "port": 80, "mode": mode, "dips": [dip]}
    if mode == "port":
        dip["ports"] = "4096-8191"
    else:
        vip["key_source"] = "pool"
    return {
        "muxes": [{"name": "bmux", "dpid": 0x9001, "address": MUX_IP, "mac": "02:00:00:09:00:fe",
                   "uplink_port": 1, "fabric_port": 2}],
        "vips": [vip],
    }

def ofctl(*args, stdin: str | None = None) -> str:
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], input=stdin, capture_output=True,
                          text=True, check=True).stdout

def install_pipeline(bridge: str, mode: str) -> None:
    """The compiled MUX pipeline for ``mode`` (port or token), as ``mptcp-lb flows`` prints it."""
    from mptcp_lb.config import parse_config
    from ovs_flows.compiler import compile_mux
    from ovs_flows.ofctl_text import flow_text, group_text, meter_text

    config = parse_config(bench_config(mode))
    compiled = compile_mux(config, config.muxes[0])
    ofctl("del-flows", bridge)
    ofctl("del-groups", bridge)
    ofctl("del-meters", bridge)
    for meter in compiled.meters:  # meters, then groups, then the flows that use them; one meter per call
        ofctl("add-meter", bridge, meter_text(meter))
    ofctl("add-groups", bridge, "-", stdin="\n".join(group_text(g) for g in compiled.groups))
    ofctl("add-flows", bridge, "-", stdin="\n".join(flow_text(f) for f in compiled.flows))
    ofctl("add-flow", bridge, "priority=50,in_port=2,actions=output:1")  # DSR return path

def install_l2(bridge: str) -> None:
    ofctl("del-flows", bridge)
    ofctl("del-groups", bridge)
    ofctl("add-flow", bridge, "priority=0,actions=NORMAL")

def throughput(seconds: float, rounds: int) -> dict:
    """Goodput client -> VIP through one bridge: plain L2 vs the port pipeline vs the token pipeline.

    The server is the same in all three: a real DIP agent in token mode (key
    pool, TSval stamping, SYN cookies), so only the MUX pipeline differs; the
    token rounds put the classifier tap in front of the bridge, with the
    classifier where ``insert`` puts it (XDP before an afxdp port) and once
    more forced to tc. In L2 mode the client reaches the VIP through the
    server's own MAC. The modes take turns going first, round by round.
    """
    from mininet.net import Mininet
    from mininet.topo import Topo

    from mininet_topos.datacenter import MuxSwitch, tune_interfaces
    from mininet_topos.harness import wait_for
    from mptcp_lb import classifier
    from mptcp_lb.datapath import PMD_PORT_TYPES, default_port_type, place_pmd, restore_other_config

    tag = f"b{os.getpid() % 1000}"
    port_type = default_port_type()

    class Pair(Topo):
        def build(self):
            sw = self.addSwitch(f"{tag}s1", cls=MuxSwitch, datapath="user", failMode="secure",
                                protocols="OpenFlow13", dpid="%016x" % 0x9001, port_type=port_type)
            self.addLink(self.addHost(f"{tag}h1", ip=f"{CLIENT_IP}/24"), sw, port2=1)
            self.addLink(self.addHost(f"{tag}h2", ip=f"{SERVER_IP}/24", mac=SERVER_MAC), sw, port2=2)

    workdir = tempfile.mkdtemp(prefix="mptcp-lb-bench-")
    config_path = os.path.join(workdir, "token.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(bench_config("token"), f)
    net = Mininet(topo=Pair(), controller=None, autoSetMacs=False)
    agent, uplink, bridge, changed = None, f"{tag}s1-eth1", f"{tag}s1", {}
    try:
        rps_cpus = 0
        if port_type in PMD_PORT_TYPES:
            rps_cpus, changed = place_pmd()
        net.start()
        h1, h2 = net.get(f"{tag}h1"), net.get(f"{tag}h2")
        for h in (h1, h2):
            tune_interfaces(h, rps_cpus)
        h2.cmd(f"ip route add default via {MUX_IP}")
        ready = os.path.join(workdir, "ready")
        agent = h2.popen([sys.executable, "-m", "mptcp_lb.cli", "dip-agent", "--config", config_path, "--dip", "1",
                          "--ready-file", ready, "--echo"], cwd=ROOT)
        wait_for("the bench DIP agent", lambda: os.path.exists(ready), 20)
        token = lambda b: install_pipeline(b, "token")  # noqa: E731
        # mode -> (flows, next hop, classifier hook: None for no classifier)
        modes = {"l2": (install_l2, SERVER_IP, None), "port": (lambda b: install_pipeline(b, "port"), MUX_IP, None),
                 "token": (token, MUX_IP, "tc"), "token_xdp": (token, MUX_IP, "xdp")}
        results: dict[str, list[float]] = {m: [] for m in modes}
        hooks: dict[str, set[str]] = {m: set() for m, (_, _, hook) in modes.items() if hook}
        for n in range(rounds):
            for mode, (install, next_hop, hook) in turn(list(modes.items()), n):
                install(bridge)
                if hook:
                    hooks[mode].add(classifier.insert(bridge, uplink, port_type, hook=hook).hook)
                h1.cmd(f"ip route replace {BENCH_VIP}/32 via {next_hop}")
                h1.cmd("ip neigh flush all")
                out = h1.cmd(f"{sys.executable} -m bench.bulk {BENCH_VIP} 80 {seconds}")
                if hook:
                    classifier.remove(bridge, uplink)
                results[mode].append(json.loads(out.strip().splitlines()[-1])["gbps"])
                print(f"  throughput {mode}: {results[mode][-1]:.3f} Gbit/s", flush=True)
        med = {m: statistics.median(v) for m, v in results.items()}
        return {"port_type": port_type, "gbps": results, "median_gbps": med, "port_over_l2": med["port"] / med["l2"],
                "token_over_l2": med["token"] / med["l2"], "token_over_port": med["token"] / med["port"],
                "xdp_hooks": sorted(hooks["token_xdp"]), "xdp_over_tc": med["token_xdp"] / med["token"]}
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait()
        try:
            if os.path.exists(f"/sys/class/net/{uplink}") and \
                    os.path.exists(f"/sys/class/net/{classifier.tap_names(socket.if_nametoindex(uplink))[0]}"):
                classifier.remove(bridge, uplink)
        finally:
            net.stop()
            restore_other_config(changed)

def turn(items: list, n: int) -> list:
    """``items`` in the order for turn ``n``: reversed every other turn and rotated, so none is always first,
    and none always before another."""
    order = items if n % 2 == 0 else items[::-1]
    k = (n // 2) % len(order)
    return order[k:] + order[:k]


def downloads(size: int, rounds: int, per_round: int, port_types: list[str]) -> dict:
    """Port and token downloads through the demo topology on each port type, each next to plain L2.

    Port mode uses c1 (follows ADD_ADDR: 3 subflows, two of them on its
    first path), token mode the stock client c2 (joins the service port: 2
    subflows, one per path); token mode runs the classifier tap on both MUX
    uplinks and the DIPs' tc programs (pool keys, TSval stamping, SYN
    cookies). A download's goodput depends on its subflows (on the L2 path
    alone, c1 with 3 ran about 3% faster than either client with 2, in both
    modes), so port mode also downloads with c1 opening one subflow per path
    (``lb_per_path``): the shape of token mode's, against which the token
    pipeline's own cost shows. On afxdp ports a third configuration
    (``token_xdp``) runs token mode's classifiers in native XDP instead of at
    tc ingress (``Datacenter(classifier_hook="xdp")``), in a topology of its
    own: rebuilding the taps of a running topology left its downloads
    slower in both places. Each round builds every configuration's
    topology in turn, alone (idle afxdp ports of a second topology would
    cost the one PMD thread polling time), in an order that changes every
    round (``turn``), so the configurations share the machine's ups and
    downs round by round. In each topology one download per path goes unmeasured (the first
    download of a topology ran at about half the goodput of the rest), then
    ``per_round`` sets take the paths in changing orders too. The hosts run off
    the PMD's CPU (``hosts_off_pmd``).
    """
    # (name, mode, client, classifier hook) per port type; token_xdp where XDP can run
    configs = [(name, mode, client, hook, port_type) for port_type in port_types
               for name, mode, client, hook in (("port", "port", "c1", None), ("token", "token", "c2", None),
                                                ("token_xdp", "token", "c2", "xdp"))
               if name != "token_xdp" or port_type in XDP_PORT_TYPES]
    # path -> (None: through the MUXes, else the DIP the VIP goes to; one subflow per path)
    paths_of = {"port": {"lb": (None, False), "lb_per_path": (None, True), "l2": (1, False)},
                "token": {"lb": (None, False), "l2": (1, False)}}
    raw: dict[str, dict[str, list[list[dict]]]] = {f"{c}/{pt}": {path: [] for path in paths_of[m]}
                                                   for c, m, _, _, pt in configs}
    failed: list[dict] = []
    hooks: dict[str, set[str]] = {}  # configuration -> where its classifiers ran, in any round
    timeout = DOWNLOAD_SECONDS_PER_128_MIB * max(1.0, size / (128 << 20))
    with Blob(size) as blob, hosts_off_pmd() as host_cpus:
        for n in range(rounds):
            for config, mode, client, hook, port_type in turn(configs, n):
                name = f"{config}/{port_type}"
                for results in raw[name].values():
                    results.append([])
                with Datacenter(n_dips=3, prefix=f"b{os.getpid() % 1000}", progress=lambda m: None, mode=mode,
                                key_source="pool", port_type=port_type, echo=False, transition_time=2.0,
                                classifier_hook=hook) as dc, \
                        StockWebServers(dc, blob) as web:
                    paths = list(paths_of[mode].items())
                    hooks.setdefault(name, set()).update(dc.classifier_hooks.values())

                    def measure(path: str, dip: int | None, per_path: bool, kept: list | None) -> None:
                        """One download over ``path``, into ``kept`` (None: the warm-up, verified and dropped)."""
                        route_vip_to(dc, dip)
                        if per_path:
                            dc.host(client).one_subflow_per_path(True)
                        try:
                            result = checked_download(dc, client, web, timeout)
                        except DownloadFailed as e:  # reported, not measured; a wrong byte still ends the run
                            failed.append({"run": name, "path": path, "round": n + 1, "warm_up": kept is None,
                                           "error": str(e)})
                            print(f"  round {n + 1}/{rounds} {name} {path}: download failed: "
                                  f"{str(e).splitlines()[0]}", flush=True)
                            return
                        finally:
                            if per_path:
                                dc.host(client).one_subflow_per_path(False)
                        if kept is not None:
                            kept.append(result)

                    for path, (dip, per_path) in paths:
                        measure(path, dip, per_path, None)
                    for k in range(per_round):
                        for path, (dip, per_path) in turn(paths, n * per_round + k):
                            measure(path, dip, per_path, raw[name][path][-1])
                print(f"  round {n + 1}/{rounds} {name}: " + "; ".join(
                    f"{path} " + ", ".join(f"{r['gbps']:.2f}" for r in raw[name][path][-1]) for path, _ in paths)
                    + " Gbit/s", flush=True)
    out: dict = {"bytes": size, "rounds": rounds, "downloads_per_round": per_round, "host_cpu_mask": host_cpus,
                 "failed": failed, "classifier_hooks": {name: sorted(h) for name, h in hooks.items()}, "runs": {}}
    for name, paths in raw.items():
        summary = {}
        for path, by_round in paths.items():
            results = [r for rnd in by_round for r in rnd]
            if not results:  # every one failed: said in "failed", and no figure
                summary[path] = None
                continue
            mb = sum(r["bytes"] for r in results) / 1e6
            summary[path] = {
                "gbps": [r["gbps"] for r in results],
                "median_gbps": statistics.median(r["gbps"] for r in results),
                "round_median_gbps": [statistics.median(r["gbps"] for r in rnd) if rnd else None for rnd in by_round],
                "mb": mb,
                "sender_retrans_segs": sum(r["sender_retrans_segs"] for r in results),
                "sender_retrans_per_mb": sum(r["sender_retrans_segs"] for r in results) / mb,
                "client_retrans_segs": sum(r["client_retrans_segs"] for r in results),
                "client_retrans_per_mb": sum(r["client_retrans_segs"] for r in results) / mb,
                "subflows_at_serving_dip": [1 + r["joins_at_serving_dip"] for r in results],
            }
        if summary["lb"] and summary["l2"]:
            summary["lb_over_l2"] = summary["lb"]["median_gbps"] / summary["l2"]["median_gbps"]
            out["runs"][name] = summary
    runs = out["runs"]  # a configuration whose every download on a path failed has no figures
    port_types = [pt for pt in port_types if f"port/{pt}" in runs and f"token/{pt}" in runs]
    for port_type in port_types:
        port, token = runs[f"port/{port_type}"]["lb"], runs[f"token/{port_type}"]["lb"]
        out[f"token_over_port/{port_type}"] = {
            "goodput": token["median_gbps"] / port["median_gbps"],
            # The same ratio round by round: how far one round's figure can be trusted.
            "goodput_by_round": [t / p for t, p in zip(token["round_median_gbps"], port["round_median_gbps"]) if t and p],
            "sender_retrans_per_mb": (token["sender_retrans_per_mb"], port["sender_retrans_per_mb"]),
            "client_retrans_per_mb": (token["client_retrans_per_mb"], port["client_retrans_per_mb"]),
            "retrans_segs": {"token": (token["sender_retrans_segs"], token["client_retrans_segs"], token["mb"]),
                             "port": (port["sender_retrans_segs"], port["client_retrans_segs"], port["mb"])},
        }
        per_path = runs[f"port/{port_type}"].get("lb_per_path")
        if per_path:  # the same shape in both modes: one subflow per path
            out[f"token_over_port/{port_type}"].update({
                "goodput_one_subflow_per_path": token["median_gbps"] / per_path["median_gbps"],
                "goodput_one_subflow_per_path_by_round": [
                    t / p for t, p in zip(token["round_median_gbps"], per_path["round_median_gbps"]) if t and p],
            })
    for port_type in {pt for *_, pt in configs}:  # token mode with its classifiers in XDP over the same at tc
        in_xdp, at_tc = runs.get(f"token_xdp/{port_type}"), runs.get(f"token/{port_type}")
        if in_xdp and at_tc and out["classifier_hooks"].get(f"token_xdp/{port_type}") == ["xdp"]:
            x, t = in_xdp["lb"], at_tc["lb"]
            out[f"xdp_over_tc/{port_type}"] = {
                "goodput": x["median_gbps"] / t["median_gbps"],
                "goodput_by_round": [a / b for a, b in zip(x["round_median_gbps"], t["round_median_gbps"]) if a and b]}
    if "afxdp" in port_types and "system" in port_types:
        for mode in ("port", "token"):
            afxdp = runs[f"{mode}/afxdp"]["lb"]["median_gbps"]
            out[f"afxdp_over_system/{mode}"] = afxdp / runs[f"{mode}/system"]["lb"]["median_gbps"]
            # The pipeline before afxdp ports and the tap, as the baseline was measured: port mode on
            # AF_PACKET ports. Token mode on AF_PACKET runs the tap and another client, not that pipeline.
            out[f"afxdp_over_before/{mode}"] = afxdp / runs["port/system"]["lb"]["median_gbps"]
    return out

def datapath_flows(few: int, many: int) -> dict:
    from mininet_topos.datacenter import VIP

    def vip_flows() -> int:
        out = subprocess.run(["ovs-appctl", "dpctl/dump-flows", "netdev@ovs-netdev"], capture_output=True,
                             text=True, check=True).stdout
        return sum(1 for line in out.splitlines() if f"dst={VIP}" in line)

    with Datacenter(n_dips=3, prefix=f"b{os.getpid() % 1000}", progress=lambda m: None) as dc:
        first = dc.run_traffic(few, 64 * 1024)
        after_few = vip_flows()
        second = dc.run_traffic(many - few, 64 * 1024)
        after_many = vip_flows()
        openflow = dc.mux_flow_counts()
    failed = [r for r in first + second if not r.get("verified")]
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark connections failed: {failed[:3]}")
    return {"connections": [few, many], "vip_datapath_flows": [after_few, after_many],
            "growth_ratio": after_many / max(after_few, 1), "openflow_flows": openflow}

def compile_time() -> dict:
    from mptcp_lb.config import DEFAULT_SLOTS, parse_config
    from ovs_flows.compiler import compile_all

    def config_with(n_dips: int) -> dict:
        raw = bench_config()
        per_vip = (n_dips + 1) // 2
        raw["vips"] = []
        for v in range(2 if n_dips > 1 else 1):
            dips = []
            for i in range(per_vip):
                n = v * per_vip + i
                dips.append({"id": i + 1, "address": f"10.{16 + n // 65536}.{n // 256 % 256}.{n % 256}",
                             "mac": f"02:00:{n >> 24 & 255:02x}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
                             "ports": f"{2048 + i * 15}-{2048 + i * 15 + 14}"})
            vip = {"name": f"v{v}", "address": f"10.9.1.{v + 1}", "port": 80, "mode": "port", "dips": dips}
            if per_vip > DEFAULT_SLOTS:  # more DIPs than a dp_hash group has slots: multipath, a slot per DIP
                vip.update(hash="multipath", slots=per_vip)
            raw["vips"].append(vip)
        return raw

    out = {}
    for n in (3, 4096):
        raw = config_with(n)
        started = time.perf_counter()
        config = parse_config(raw)
        compiled = compile_all(config)
        elapsed = time.perf_counter() - started
        mux = next(iter(compiled.values()))
        out[str(n)] = {"seconds": elapsed, "flows": len(mux.flows), "groups": len(mux.groups),
                       "dips": sum(len(v.dips) for v in config.vips)}
    out["per_dip_ratio_4096_vs_3"] = (out["4096"]["seconds"] / 4096) / (out["3"]["seconds"] / 3)
    return out

def consistency(n_dips: int = 8) -> dict:
    """How the slot table moves for ``n_dips`` equal DIPs: removing one, adding a ninth."""
    from mptcp_lb.config import DEFAULT_SLOTS
    from mptcp_lb.slots import balance, moved, slot_owners

    before = slot_owners({i: 1 for i in range(1, n_dips + 1)}, DEFAULT_SLOTS)
    removed = 3
    without = slot_owners({i: 1 for i in range(1, n_dips + 1) if i != removed}, DEFAULT_SLOTS)
    others = [s for s in range(DEFAULT_SLOTS) if before[s] != removed]
    added = slot_owners({i: 1 for i in range(1, n_dips + 2)}, DEFAULT_SLOTS)
    return {"slots": DEFAULT_SLOTS, "dips": n_dips,
            "moved_on_remove_other": sum(before[s] != without[s] for s in others) / len(others),
            "moved_on_remove": len(moved(before, without)) / DEFAULT_SLOTS,
            "moved_on_add": len(moved(before, added)) / DEFAULT_SLOTS,
            "expected_on_add": 1 / (n_dips + 1),
            "balance": balance(before)}

def failure_detection(rounds: int = 3) -> dict:
    """Seconds from a DIP's link going down to its slots leaving both MUXes, on the demo topology."""
    times = []
    with Datacenter(prefix="bfd") as dc:
        mac = dc.config["vips"][0]["dips"][1]["mac"]

        def slots_left() -> bool:
            dumps = [subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-groups", dc.mux_bridge(i)],
                                    capture_output=True, text=True).stdout for i in (1, 2)]
            return all(f"set_field:{mac}->eth_dst" not in d for d in dumps)

        for _ in range(rounds):
            started = time.monotonic()
            dc.set_dip_link(2, up=False)
            while not slots_left():
                time.sleep(0.02)
            times.append(time.monotonic() - started)
            dc.set_dip_link(2, up=True)
            while dc.health()[2] != "up" or slots_left():
                time.sleep(0.05)
        check = dc.config["vips"][0].get("health", {})
    return {"seconds": times, "median_s": statistics.median(times),
            "interval_s": check.get("interval", 0.5), "fall": check.get("fall", 3)}

def classifier_cost(repeat: int) -> dict:
    """ns per frame of the classifier (parse, tag, redirect) vs the tap's bare redirect, same frames.

    Both uplink programs, tc's and XDP's; the bare redirect is tc's (a test
    run's fixed cost differs between the two program types).

    Each TCP segment is measured over IPv4 and over IPv6 (``*_ipv6``), and
    once more over IPv6 behind a hop-by-hop and a destination options
    header (``*_ipv6_ext``), which the classifier walks to reach TCP.
    """
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
    from scapy.layers.l2 import Ether

    from mptcp_lb import bpf, classifier
    bases = {"": Ether(dst="02:00:00:01:00:01") / IP(src="10.0.1.1", dst=BENCH_VIP),
             "_ipv6": Ether(dst="02:00:00:01:00:01") / IPv6(src="2001:db8:1::1", dst=BENCH_VIP6),
             "_ipv6_ext": Ether(dst="02:00:00:01:00:01") / IPv6(src="2001:db8:1::1", dst=BENCH_VIP6)
             / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()}
    ts = ("Timestamp", (0x12345678, 0x0ABC0003))
    frames = {
        "syn_mp_capable": TCP(flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                                                  ("NOP", None), ("WScale", 7), (30, bytes([0x01, 0x81]))]),
        "syn_mp_join": TCP(flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                                               ("NOP", None), ("WScale", 7), (30, bytes([0x10, 0x02]) + bytes(8))]),
        "ack_timestamp": TCP(flags="A", options=[("NOP", None), ("NOP", None), ts]),
        "data_dss_timestamp": TCP(flags="PA", options=[("NOP", None), ("NOP", None), ts,
                                                       (30, bytes([0x20, 0x01]) + bytes(4))]) / (b"x" * 1400),
        "no_options": TCP(flags="A"),
    }
    out = {}
    with classifier.load() as obj:
        obj.configure(to_ovs=1, to_uplink=1)  # test runs never really redirect
        for family, base in bases.items():
            for name, tcp in frames.items():
                frame = bytes(base / tcp)
                cls_ns = bpf.test_run(obj.prog_fd(classifier.UPLINK_PROGRAM), frame, repeat=repeat).duration_ns
                xdp_ns = bpf.test_run(obj.prog_fd(classifier.UPLINK_XDP_PROGRAM), frame, repeat=repeat).duration_ns
                base_ns = bpf.test_run(obj.prog_fd(classifier.RETURN_PROGRAM), frame, repeat=repeat).duration_ns
                out[name + family] = {"classifier_ns": cls_ns, "classifier_xdp_ns": xdp_ns, "redirect_ns": base_ns,
                                      "ratio": cls_ns / max(base_ns, 1)}
    return {"repeat": repeat, "per_class": out}

def _ns_per_fresh_frame(fd: int, frame: bytes, calls: int, rewrites: bool) -> float:
    """Mean ns of one run on a fresh copy of ``frame``, over ``calls`` runs.

    One run per call: with ``repeat`` the kernel runs the program again on
    its own output, whose timestamp is then stamped (or restored) already,
    so the rewrite would be timed once and the no-op after it every other
    time. ``rewrites``: each run must change the frame, or the figure is not
    the rewrite's.
    """
    from mptcp_lb import bpf

    total = 0
    for _ in range(calls):
        result = bpf.test_run(fd, frame)
        if (result.data_out != frame) != rewrites:
            raise RuntimeError(f"the DIP program {'left' if rewrites else 'changed'} the benchmark frame "
                               f"{'alone' if rewrites else ''}")
        total += result.duration_ns
    return total / calls


def dip_program_cost(calls: int) -> dict:
    """ns per segment of the DIP programs: port mode (nothing to rewrite) vs the token modes, same frames.

    A server's data segment through dip_egress (TSval stamped) and a client's
    ACK through dip_ingress (TSecr restored), each over IPv4 and IPv6, for a
    flow whose SYN/ACK (and third ACK) the programs saw, as in a running
    connection. Each figure is the mean of ``calls`` single runs on a fresh
    frame, and includes the test run's own overhead, the same for both modes.
    """
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from dip_agent.dip_abi import U32, pack_config
    from dip_agent.programs import dip_object
    from mptcp_lb import bpf

    families = {"": (IP, "10.9.1.1", BENCH_VIP), "_ipv6": (IPv6, "2001:db8:1::1", BENCH_VIP6)}
    dss = (30, bytes([0x20, 0x01]) + bytes(4))
    out = {}
    for family, (ip, client, vip) in families.items():
        def frame(flags, src, dst, sport, dport, ts, payload=b"", seq=1, ack=1):
            options = [("NOP", None), ("NOP", None), ("Timestamp", ts), dss]
            tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, options=options)
            return bytes(Ether(src="02:00:00:01:00:02", dst="02:00:00:01:00:01") / ip(src=src, dst=dst) / tcp / payload)
        synack = frame("SA", vip, client, 80, 40000, (0x12345000, 9), seq=777, ack=1001)
        data = frame("PA", vip, client, 80, 40000, (0x12345678, 99), b"x" * 1400)
        ack = frame("A", client, vip, 40000, 80, (99, 0x123455A5))
        row = {}
        for mode, stamp in (("port", False), ("token", True)):
            obj = bpf.BpfObject(dip_object())
            try:
                obj.map("dip_config").update(U32.pack(0), pack_config(
                    BENCH_VIP, 80, 0x5A5, "none" if mode == "port" else "pool", stamp=stamp, vip6=BENCH_VIP6))
                bpf.test_run(obj.prog_fd("dip_egress"), synack)
                bpf.test_run(obj.prog_fd("dip_ingress"), ack)  # the third ACK, restored exactly, once
                for prog, frame in (("egress", data), ("ingress", ack)):
                    row[f"{mode}_{prog}_ns"] = _ns_per_fresh_frame(obj.prog_fd(f"dip_{prog}"), frame, calls,
                                                                   rewrites=stamp)
            finally:
                obj.close()
        out["ipv4" if not family else "ipv6"] = row
    return {"calls": calls, "per_family": out}


def _per_second(seconds: float, run) -> float:
    """How many times ``run()`` completes per second, over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        n += 1
    return n / (time.perf_counter() - start)

def controller_rates(seconds: float) -> dict:
    """Seed-mode SYNs the controller's core seeds per second, and keys per second drawn on demand or banked."""
    from mptcp_lb.config import parse_config
    from mptcp_lb.key_bank import BATCH, KeyBank
    from mptcp_lb.mptcp_codec import make_key
    from ryu_app.core import LbCore
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    raw = bench_config()
    raw["vips"][0].update(mode="token", key_source="seed", slice_bits=8)
    raw["vips"][0]["dips"] = [{"id": i, "address": f"10.9.0.{10 + i}", "mac": f"02:00:00:09:01:{i:02x}"}
                              for i in range(1, 4)]
    config = parse_config(raw)
    core = LbCore(config)
    core.mux_connected(config.muxes[0].dpid, time.monotonic())
    syn = Ether(dst="0a:4d:01:00:00:00") / IP(src="10.9.0.1", dst=BENCH_VIP) / TCP(
        dport=80, flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                      ("WScale", 7), (30, bytes([0x01, 0x81]))])
    frames = []
    for sport in range(1024, 2048):  # built up front: scapy must not be what is measured
        syn[TCP].sport = sport
        frames.append(bytes(syn))
    dpid, frame = config.muxes[0].dpid, itertools.cycle(frames)

    def seed() -> None:
        if not core.packet_in(dpid, next(frame)):
            raise RuntimeError("a benchmark SYN was not seeded")
    punt_rate = _per_second(seconds, seed)
    keys = {f"on_demand_slice_bits_{bits}_one_slice": _per_second(seconds, lambda b=bits: make_key({7}, b))
            for bits in (8, 12)}
    for bits in (8, 12):
        # One slice per DIP, every slice owned (256 or 4096 DIPs): each key drawn is filed somewhere.
        bank = KeyBank(bits, range(1 << bits), per_slice=1 << 30)
        keys[f"key_bank_slice_bits_{bits}"] = _per_second(seconds, bank.fill) * BATCH
    return {"seed_syn_per_s": punt_rate, "keys_per_s": keys, "punt_budget_default_pps": config.controller.punt_rate}

def _retrans_ratio(token: float, port: float) -> str:
    return "both 0" if token == port == 0 else ("port 0" if port == 0 else f"{token / port:.2f}")

def print_downloads(dl: dict, args) -> None:
    n = dl["rounds"] * dl["downloads_per_round"]
    cpus = f"hosts on CPU mask {dl['host_cpu_mask']:x}" if dl["host_cpu_mask"] else "hosts on every CPU"
    print(f"\nDownloads of {args.download_mb} MiB through the demo topology (medians of {n}, from {dl['rounds']} "
          f"topologies each; {cpus}, the PMD off them; retransmitted segments per MB on the DIPs, the senders, "
          "and on the client):")
    print(f"  {'mode/ports':<16}{'LB Gbit/s':>10}{'L2 Gbit/s':>10}{'LB/L2':>7}{'LB retx/MB DIPs':>17}"
          f"{'client':>8}{'L2 retx/MB DIPs':>17}{'client':>8}")
    for name, run in dl["runs"].items():
        lb, l2 = run["lb"], run["l2"]
        print(f"  {name:<16}{lb['median_gbps']:>10.3f}{l2['median_gbps']:>10.3f}{run['lb_over_l2']:>7.2f}"
              f"{lb['sender_retrans_per_mb']:>17.2f}{lb['client_retrans_per_mb']:>8.2f}"
              f"{l2['sender_retrans_per_mb']:>17.2f}{l2['client_retrans_per_mb']:>8.2f}")
    for name, run in dl["runs"].items():
        if run.get("lb_per_path"):
            r = run["lb_per_path"]
            print(f"  {name + ',':<16} c1 with one subflow per path (subflows at the DIP: "
                  f"{', '.join(map(str, sorted(set(r['subflows_at_serving_dip']))))}): LB {r['median_gbps']:.3f} "
                  f"Gbit/s, retx/MB DIPs {r['sender_retrans_per_mb']:.2f}, client {r['client_retrans_per_mb']:.2f}")
    for f in dl["failed"]:
        print(f"  FAILED: {f['run']} {f['path']} in round {f['round']}: {f['error'].splitlines()[0]} "
              "(every host's sockets in the JSON report)")
    for mode in ("port", "token"):
        if f"afxdp_over_system/{mode}" in dl:
            print(f"  {mode} download, afxdp / AF_PACKET ports: {dl[f'afxdp_over_system/{mode}']:.1f}x; "
                  f"over the pipeline before afxdp and the tap (port mode, AF_PACKET): "
                  f"{dl[f'afxdp_over_before/{mode}']:.1f}x")
    for port_type in args.port_types:
        if f"token_over_port/{port_type}" not in dl:
            continue  # its downloads failed (listed above)
        r = dl[f"token_over_port/{port_type}"]
        seg = r["retrans_segs"]
        print(f"  token / port on {port_type}: goodput {r['goodput']:.2f} (round by round "
              f"{', '.join(f'{x:.2f}' for x in r['goodput_by_round'])}); retransmissions/MB on the DIPs "
              f"{_retrans_ratio(*r['sender_retrans_per_mb'])}, on the client "
              f"{_retrans_ratio(*r['client_retrans_per_mb'])} (segments retransmitted by the DIPs and the client: "
              f"token {seg['token'][0]} and {seg['token'][1]} in {seg['token'][2]:.0f} MB, "
              f"port {seg['port'][0]} and {seg['port'][1]} in {seg['port'][2]:.0f} MB)")
        if "goodput_one_subflow_per_path" in r:
            print(f"  token / port on {port_type}, one subflow per path in both: goodput "
                  f"{r['goodput_one_subflow_per_path']:.2f} (round by round "
                  f"{', '.join(f'{x:.2f}' for x in r['goodput_one_subflow_per_path_by_round'])})")
    for port_type in args.port_types:
        if f"xdp_over_tc/{port_type}" in dl:
            x = dl[f"xdp_over_tc/{port_type}"]
            print(f"  token on {port_type}, the classifier in XDP / at tc: goodput {x['goodput']:.2f} (round by round "
                  f"{', '.join(f'{v:.2f}' for v in x['goodput_by_round'])})")
        elif dl["classifier_hooks"].get(f"token_xdp/{port_type}"):
            print(f"  token on {port_type}: no XDP/tc figure, the classifiers asked for XDP ran "
                  f"{' and '.join(dl['classifier_hooks'][f'token_xdp/{port_type}'])} "
                  "(or a configuration has no figures)")

def tls_lost_streams(n: int) -> dict:
    """bench.tls_duplex in a process of its own: its unserialized half races OpenSSL, which may crash it."""
    run = subprocess.run([sys.executable, "-m", "bench.tls_duplex", str(n)], capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": f"bench.tls_duplex exited with {run.returncode}: {run.stderr.strip()[-500:]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="out/bench.json")
    p.add_argument("--download-mb", type=int, default=128, help="MiB per download (a multiple of 1)")
    p.add_argument("--download-rounds", type=int, default=5, help="topologies built per configuration")
    p.add_argument("--downloads-per-round", type=int, default=3, help="downloads per path per topology")
    p.add_argument("--port-types", nargs="+", default=["afxdp", "system"], choices=PORT_TYPES)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per upload run")
    p.add_argument("--rounds", type=int, default=3, help="upload rounds (L2, port, token in XDP and at tc)")
    p.add_argument("--conns", type=int, nargs=2, default=[10, 50], metavar=("FEW", "MANY"))
    p.add_argument("--repeat", type=int, default=1_000_000, help="BPF_PROG_TEST_RUN repeats per packet class")
    p.add_argument("--dip-calls", type=int, default=20000, help="single BPF_PROG_TEST_RUN runs per DIP frame")
    p.add_argument("--tls-connections", type=int, default=2000, help="fresh TLS connections each way")
    p.add_argument("--only", nargs="+", choices=["classifier", "dip_programs", "controller", "compile",
                                                 "consistency", "failure_detection", "datapath_flows", "downloads",
                                                 "throughput", "tls"],
                   help="run only these sections")
    args = p.parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    require_platform()
    sections = {
        "classifier": ("classifier cost", lambda: classifier_cost(args.repeat)),
        "dip_programs": ("DIP program cost", lambda: dip_program_cost(args.dip_calls)),
        "controller": ("controller rates", lambda: controller_rates(2.0)),
        "compile": ("compile time", compile_time),
        "consistency": ("slot table consistency", consistency),
        "failure_detection": ("failure detection (a DIP's link down, demo topology)", failure_detection),
        "datapath_flows": ("datapath flows", lambda: datapath_flows(*args.conns)),
        "downloads": ("downloads through the demo topology (stock nginx and curl under mptcpize)",
                      lambda: downloads(args.download_mb << 20, args.download_rounds, args.downloads_per_round,
                                        args.port_types)),
        "throughput": ("uploads through one bridge (plain L2 vs port vs token pipeline, same server)",
                       lambda: throughput(args.seconds, args.rounds)),
        "tls": ("OpenFlow TLS connections read and written from two threads",
                lambda: tls_lost_streams(args.tls_connections)),
    }
    report = {}
    for name in args.only or sections:
        title, run = sections[name]
        print(f"{title} ...", flush=True)
        report[name] = run()
    print_report(report, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written to {args.json}")
    return 0

def print_report(report: dict, args) -> None:
    """The figures, ratios first; sections that did not run are left out."""
    if "downloads" in report:
        print_downloads(report["downloads"], args)
    if "throughput" in report:
        t = report["throughput"]
        m = t["median_gbps"]
        print(f"\nUploads through one bridge ({t['port_type']} ports, medians of {args.rounds}): port pipeline / "
              f"plain L2 {t['port_over_l2']:.2f}, token pipeline + classifier / plain L2 {t['token_over_l2']:.2f}, "
              f"token / port {t['token_over_port']:.2f} ({m['port']:.2f}, {m['token']:.2f}, {m['l2']:.2f} Gbit/s)")
        if t["xdp_hooks"] == ["xdp"]:  # else the classifier ran at tc in both (AF_PACKET ports)
            print(f"  the classifier in XDP / at tc: {t['xdp_over_tc']:.2f} ({m['token_xdp']:.2f} and "
                  f"{m['token']:.2f} Gbit/s)")
    if "datapath_flows" in report:
        d = report["datapath_flows"]
        print(f"VIP datapath flows after {d['connections'][0]} / {d['connections'][1]} connections: "
              f"{d['vip_datapath_flows'][0]} / {d['vip_datapath_flows'][1]} (growth ratio {d['growth_ratio']:.2f})")
    if "compile" in report:
        c = report["compile"]
        print(f"compile 4096 DIPs: {c['4096']['seconds']:.3f} s ({c['4096']['flows']} flows); "
              f"3 DIPs: {c['3']['seconds'] * 1e3:.2f} ms; per-DIP cost ratio {c['per_dip_ratio_4096_vs_3']:.2f}")
    if "consistency" in report:
        c = report["consistency"]
        print(f"slot table, {c['dips']} DIPs over {c['slots']} slots: removing one moves {c['moved_on_remove_other']:.3f} "
              f"of the others' slots; adding a 9th moves {c['moved_on_add']:.3f} (1/9 = {c['expected_on_add']:.3f}); "
              f"balance max/mean {c['balance']:.2f}")
    if "failure_detection" in report:
        f = report["failure_detection"]
        print(f"failure detection: a DIP's link down -> its slots off both MUXes in {f['median_s']:.2f} s (median of "
              f"{len(f['seconds'])}; probes every {f['interval_s']} s, {f['fall']} failures)")
    if "classifier" in report:
        for name, row in report["classifier"]["per_class"].items():
            print(f"classifier {name:>29}: {row['classifier_ns']:4d} ns/packet at tc ({row['classifier_xdp_ns']:4d} "
                  f"in XDP) vs bare redirect {row['redirect_ns']:3d} ns (ratio {row['ratio']:.1f})")
    if "dip_programs" in report:
        for family, row in report["dip_programs"]["per_family"].items():
            print(f"DIP programs over {family}: a data segment through dip_egress {row['port_egress_ns']:.0f} ns in "
                  f"port mode, {row['token_egress_ns']:.0f} ns stamped (token); an ACK through dip_ingress "
                  f"{row['port_ingress_ns']:.0f} ns, {row['token_ingress_ns']:.0f} ns restored (one run per call)")
    if "controller" in report:
        ctl = report["controller"]
        print(f"controller: {ctl['seed_syn_per_s']:.0f} SYN(MPC)/s seeded (the classifier punts at most "
              f"{ctl['punt_budget_default_pps']}/s per VIP and MUX by default); keys/s: "
              + ", ".join(f"{k} {v:.0f}" for k, v in ctl["keys_per_s"].items()))
    if "tls" in report and "error" in report["tls"]:
        print(f"OpenFlow TLS, read and written from two threads: {report['tls']['error']}")
    elif "tls" in report:
        t = report["tls"]
        print(f"OpenFlow TLS, read and written from two threads: of {t['connections']} fresh connections, "
              f"{t['lost_streams']['unserialized']} lost their stream unserialized, "
              f"{t['lost_streams']['serialized']} through SerializedTLSSocket")

if __name__ == "__main__":
    sys.exit(main())
