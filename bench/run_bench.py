"""mptcp-lb benchmarks, measured side by side in one run (``make bench``).

1. MPTCP goodput client -> server through one OVS netdev bridge, alternating
   between the LB pipeline (compiled flows, VIP -> select group -> DIP, DSR
   return) and plain L2 forwarding (``actions=NORMAL``) on the same bridge,
   same hosts, same datapath. Reports medians and the LB/L2 ratio.
2. Datapath (megaflow) count for the VIP on the datacenter topology after
   few vs many connections: it must not grow with connections.
3. Flow compile time for 4096 DIPs vs 3 DIPs.
4. Classifier cost per packet class (BPF_PROG_TEST_RUN, 1e6 repeats) against
   an XDP program that only returns XDP_PASS, on the same frames.
5. Controller: SYN(MPC) seeding rate (packet-in -> packet-out decisions per
   second, in process) and key generation rate for a DIP's slices.

Absolute numbers on this shared 2-core machine are noisy; the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from mininet_topos.harness import Datacenter, require_platform

BENCH_VIP = "10.9.0.100"
CLIENT_IP, SERVER_IP, MUX_IP = "10.9.0.1", "10.9.0.2", "10.9.0.254"
SERVER_MAC = "02:00:00:09:00:02"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    from ovs_flows.compiler import compile_mux, flow_text, group_text

    config = parse_config(bench_config(mode))
    compiled = compile_mux(config, config.muxes[0])
    ofctl("del-flows", bridge)
    ofctl("del-groups", bridge)
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
    pool, TSval stamping, SYN cookies), so only the MUX pipeline differs. In
    L2 mode the client reaches the VIP through the server's own MAC.
    """
    from mininet.net import Mininet
    from mininet.node import OVSSwitch
    from mininet.topo import Topo

    from mininet_topos.datacenter import no_tx_offload
    from mininet_topos.harness import wait_for
    from mptcp_lb import classifier

    tag = f"b{os.getpid() % 1000}"

    class Pair(Topo):
        def build(self):
            sw = self.addSwitch(f"{tag}s1", cls=OVSSwitch, datapath="user", failMode="secure",
                                protocols="OpenFlow13", dpid="%016x" % 0x9001)
            self.addLink(self.addHost(f"{tag}h1", ip=f"{CLIENT_IP}/24"), sw, port2=1)
            self.addLink(self.addHost(f"{tag}h2", ip=f"{SERVER_IP}/24", mac=SERVER_MAC), sw, port2=2)

    workdir = tempfile.mkdtemp(prefix="mptcp-lb-bench-")
    config_path = os.path.join(workdir, "token.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(bench_config("token"), f)
    net = Mininet(topo=Pair(), controller=None, autoSetMacs=False)
    agent, uplink = None, f"{tag}s1-eth1"
    try:
        net.start()
        h1, h2 = net.get(f"{tag}h1"), net.get(f"{tag}h2")
        bridge = f"{tag}s1"
        for h in (h1, h2):
            no_tx_offload(h)
        h2.cmd(f"ip route add default via {MUX_IP}")
        ready = os.path.join(workdir, "ready")
        agent = h2.popen([sys.executable, "-m", "mptcp_lb.cli", "dip-agent", "--config", config_path, "--dip", "1",
                          "--ready-file", ready], cwd=ROOT)
        wait_for("the bench DIP agent", lambda: os.path.exists(ready), 20)
        modes = {"l2": (install_l2, SERVER_IP), "port": (lambda b: install_pipeline(b, "port"), MUX_IP),
                 "token": (lambda b: install_pipeline(b, "token"), MUX_IP)}
        results: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(rounds):
            for mode, (install, next_hop) in modes.items():
                install(bridge)
                if mode == "token":
                    classifier.attach(uplink)
                h1.cmd(f"ip route replace {BENCH_VIP}/32 via {next_hop}")
                h1.cmd("ip neigh flush all")
                out = h1.cmd(f"{sys.executable} -m bench.bulk {BENCH_VIP} 80 {seconds}")
                if mode == "token":
                    classifier.detach(uplink)
                results[mode].append(json.loads(out.strip().splitlines()[-1])["gbps"])
                print(f"  throughput {mode}: {results[mode][-1]:.3f} Gbit/s", flush=True)
        med = {m: statistics.median(v) for m, v in results.items()}
        return {"gbps": results, "median_gbps": med, "port_over_l2": med["port"] / med["l2"],
                "token_over_l2": med["token"] / med["l2"], "token_over_port": med["token"] / med["port"]}
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait()
        net.stop()


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
    from mptcp_lb.config import parse_config
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
            raw["vips"].append({"name": f"v{v}", "address": f"10.9.1.{v + 1}", "port": 80, "mode": "port",
                                "dips": dips})
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


def classifier_cost(repeat: int) -> dict:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from mptcp_lb import bpf
    from mptcp_lb.classifier import PROGRAM
    base = Ether(dst="02:00:00:01:00:01") / IP(src="10.0.1.1", dst=BENCH_VIP)
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
    with bpf.BpfObject(bpf.built_object("mux_classifier.o")) as clf, \
            bpf.BpfObject(bpf.built_object("xdp_pass.o")) as noop:
        for name, tcp in frames.items():
            frame = bytes(base / tcp)
            cls_ns = bpf.test_run(clf.prog_fd(PROGRAM), frame, repeat=repeat).duration_ns
            base_ns = bpf.test_run(noop.prog_fd("xdp_pass"), frame, repeat=repeat).duration_ns
            out[name] = {"classifier_ns": cls_ns, "xdp_pass_ns": base_ns, "ratio": cls_ns / max(base_ns, 1)}
    return {"repeat": repeat, "per_class": out}


def controller_rates(seconds: float) -> dict:
    from mptcp_lb.config import parse_config
    from mptcp_lb.mptcp_codec import make_key
    from ryu_app.core import LbCore
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    raw = bench_config()
    raw["vips"][0].update(mode="token", key_source="mux", slice_bits=8)
    raw["vips"][0]["dips"] = [{"id": i, "address": f"10.9.0.{10 + i}", "mac": f"02:00:00:09:01:{i:02x}"}
                              for i in range(1, 4)]
    config = parse_config(raw)
    core = LbCore(config)
    core.mux_connected(config.muxes[0].dpid)
    syn = Ether(dst="0a:4d:01:00:00:00") / IP(src="10.9.0.1", dst=BENCH_VIP) / TCP(
        dport=80, flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                      ("WScale", 7), (30, bytes([0x01, 0x81]))])
    frames = []
    for sport in range(1024, 2048):  # built up front: scapy must not be what is measured
        syn[TCP].sport = sport
        frames.append(bytes(syn))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if not core.packet_in(config.muxes[0].dpid, frames[n % len(frames)]):
            raise RuntimeError("a benchmark SYN was not seeded")
        n += 1
    punt_rate = n / (time.perf_counter() - start)
    keys = {}
    for label, slices in (("one_third_of_256_slices", config.vips[0].dips[0].slices), ("one_of_256_slices", {7})):
        k, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            make_key(slices, 8)
            k += 1
        keys[label] = k / (time.perf_counter() - start)
    return {"seed_syn_per_s": punt_rate, "keys_per_s": keys, "punt_meter_default_pps": config.controller.punt_rate}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="out/bench.json")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per throughput run")
    p.add_argument("--rounds", type=int, default=3, help="alternating L2/LB rounds")
    p.add_argument("--conns", type=int, nargs=2, default=[10, 50], metavar=("FEW", "MANY"))
    p.add_argument("--repeat", type=int, default=1_000_000, help="BPF_PROG_TEST_RUN repeats per packet class")
    args = p.parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    require_platform()
    report = {}
    print("classifier cost ...", flush=True)
    report["classifier"] = classifier_cost(args.repeat)
    print("controller rates ...", flush=True)
    report["controller"] = controller_rates(2.0)
    print("compile time ...", flush=True)
    report["compile"] = compile_time()
    print("datapath flows ...", flush=True)
    report["datapath_flows"] = datapath_flows(*args.conns)
    print("throughput (plain L2 vs port vs token pipeline, same netdev bridge and server) ...", flush=True)
    report["throughput"] = throughput(args.seconds, args.rounds)
    t, d, c = report["throughput"], report["datapath_flows"], report["compile"]
    m = t["median_gbps"]
    print(f"\nMPTCP goodput (medians of {args.rounds}): port pipeline / plain L2 {t['port_over_l2']:.2f}, "
          f"token pipeline / plain L2 {t['token_over_l2']:.2f}, token / port {t['token_over_port']:.2f} "
          f"({m['port']:.2f}, {m['token']:.2f}, {m['l2']:.2f} Gbit/s)")
    print(f"VIP datapath flows after {d['connections'][0]} / {d['connections'][1]} connections: "
          f"{d['vip_datapath_flows'][0]} / {d['vip_datapath_flows'][1]} (growth ratio {d['growth_ratio']:.2f})")
    print(f"compile 4096 DIPs: {c['4096']['seconds']:.3f} s ({c['4096']['flows']} flows); "
          f"3 DIPs: {c['3']['seconds'] * 1e3:.2f} ms; per-DIP cost ratio {c['per_dip_ratio_4096_vs_3']:.2f}")
    for name, row in report["classifier"]["per_class"].items():
        print(f"classifier {name:>20}: {row['classifier_ns']:4d} ns/packet vs XDP_PASS {row['xdp_pass_ns']:3d} ns "
              f"(ratio {row['ratio']:.1f})")
    ctl = report["controller"]
    print(f"controller: {ctl['seed_syn_per_s']:.0f} SYN(MPC)/s seeded (meter caps punts at "
          f"{ctl['punt_meter_default_pps']}/s per MUX); keys/s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in ctl["keys_per_s"].items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
