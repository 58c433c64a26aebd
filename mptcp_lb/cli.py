"""The ``mptcp-lb`` command: controller, dip-agent, demo, check-config, flows, bird-config."""

from __future__ import annotations

import argparse
import logging
import sys

from mptcp_lb.config import ConfigError, load_config
from mptcp_lb.datapath import PORT_TYPES

EXIT_CONFIG = 2


def _tcp_port(text: str) -> int:
    """argparse type: a TCP port to listen on, 1..65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port in 1..65535")
    return port


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"{path}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from e


def cmd_check_config(args) -> int:
    config = _load(args.config)
    dips = sum(len(v.dips) for v in config.vips)
    print(f"{args.config}: OK ({len(config.vips)} VIPs, {dips} DIPs, {len(config.muxes)} MUXes)")
    return 0


def cmd_config_reference(args) -> int:
    from mptcp_lb.config_schema import reference

    sys.stdout.write(reference())
    return 0


def cmd_flows(args) -> int:
    from ovs_flows.compiler import compile_mux
    from ovs_flows.ofctl_text import flow_text, group_text, meter_text

    config = _load(args.config)
    muxes = [m for m in config.muxes if args.mux in (None, m.name)]
    if not muxes:
        print(f"--mux: {args.mux!r} is not a MUX in {args.config}", file=sys.stderr)
        return EXIT_CONFIG
    compiled = compile_mux(config, muxes[0])
    if args.meters:
        lines = [meter_text(m) for m in compiled.meters]
    elif args.groups:
        lines = [group_text(g) for g in compiled.groups]
    else:
        lines = [flow_text(f) for f in compiled.flows]
    print("\n".join(lines))
    return 0


def cmd_bird_config(args) -> int:
    from mptcp_lb.bgp import speaker_config

    config = _load(args.config)
    muxes = [m for m in config.muxes if m.name == args.mux]
    if not muxes or muxes[0].bgp is None:
        what = "is not a MUX" if not muxes else "has no bgp section"
        print(f"--mux: {args.mux!r} {what} in {args.config}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(speaker_config(config, muxes[0]))
    return 0


def cmd_controller(args) -> int:
    import time

    from ryu_app.api import TokenFileError, read_token
    from ryu_app.launch import run_controller
    from ryu_app.state_file import StateFileError, restore

    config = _load(args.config)
    try:  # the app restores the same way; a state file that does not fit is named here, before os-ken starts
        restore(args.config, time.monotonic(), time.time())
    except (ConfigError, StateFileError) as e:
        print(f"{config.controller.state_file}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if config.controller.api_token_file is None:
            raise TokenFileError("controller.api_token_file: not set; the REST API takes no request without a "
                                 "token (make one with `mptcp-lb api-token FILE`)")
        read_token(config.controller.api_token_file)
    except TokenFileError as e:
        print(e, file=sys.stderr)
        return EXIT_CONFIG
    run_controller(config, args.config)
    return 0


def cmd_dip_agent(args) -> int:
    from dip_agent.main import run

    return run(args.config, args.dip, vip_name=args.vip, ready_file=args.ready_file,
               key_adoption=not args.no_key_adoption, interface=args.interface, echo=args.echo,
               flows=args.flows, metrics=(args.metrics_host, args.metrics_port) if args.metrics_port else None)


def cmd_api_token(args) -> int:
    from ryu_app.api import write_token

    try:
        write_token(args.file)
    except OSError as e:
        print(f"api-token {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"a new token is in {args.file} (mode 0600); point controller.api_token_file at it")
    return 0


def cmd_dip_stats(args) -> int:
    import json

    from dip_agent.programs import attached_stats

    try:
        print(json.dumps(attached_stats(args.interface)))
    except (LookupError, OSError) as e:
        print(f"dip-stats {args.interface}: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_classifier(args) -> int:
    import json

    from pyroute2.netlink.exceptions import NetlinkError

    from mptcp_lb import classifier

    try:
        if args.action == "attach":
            budgets = classifier.punt_budgets(_load(args.config)) if args.config else {}
            if not args.config:
                print("classifier attach: no --config, so no punt budgets: every SYN(MPC) goes to the "
                      "controller, and only its meter limits them", file=sys.stderr)
            tap = classifier.insert(args.bridge, args.uplink, args.port_type, args.ofport, budgets=budgets)
            hook = "native XDP" if tap.hook == "xdp" else "tc ingress"
            print(f"classifier on {tap.uplink}: {hook}, frames to OpenFlow port {tap.ofport} of {tap.bridge} "
                  f"through {tap.ovs_end} ({tap.port_type})")
        elif args.action == "detach":
            tap = classifier.remove(args.bridge, args.uplink)
            print(f"classifier removed from {args.uplink}"
                  + (f": it is OpenFlow port {tap.ofport} of {args.bridge} again" if tap.uplink_was_port else ""))
        else:
            print(json.dumps(classifier.stats(args.uplink)))
    except (OSError, RuntimeError, ValueError, NetlinkError) as e:
        print(f"classifier {args.action} {args.uplink}: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    from mininet_topos.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mptcp-lb", description="Stateless MPTCP-aware L4 load balancer on Open vSwitch")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check-config", help="validate a config file; non-zero exit names each problem")
    s.add_argument("config")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("config-reference", help="print the configuration reference (docs/config.md) in Markdown")
    s.set_defaults(func=cmd_config_reference)

    s = sub.add_parser("flows", help="print a MUX's OpenFlow 1.3 rules in ovs-ofctl syntax")
    s.add_argument("config")
    s.add_argument("--mux", help="MUX name (default: the first)")
    s.add_argument("--groups", action="store_true",
                   help="print the select groups (for ovs-ofctl add-groups) instead of the flows")
    s.add_argument("--meters", action="store_true",
                   help="print the meters (one ovs-ofctl add-meter argument per line) instead")
    s.set_defaults(func=cmd_flows)

    s = sub.add_parser("bird-config", help="print the BIRD 2 config of a MUX's BGP speaker (muxes[].bgp)")
    s.add_argument("config")
    s.add_argument("--mux", required=True, help="MUX name")
    s.set_defaults(func=cmd_bird_config)

    s = sub.add_parser("controller", help="run the os-ken controller, REST API and /metrics")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_controller)

    s = sub.add_parser("dip-agent", help="set up this host (or netns) as a DIP until stopped")
    s.add_argument("--config", required=True)
    s.add_argument("--dip", required=True, type=int, help="DIP id from the config")
    s.add_argument("--vip", help="VIP name (default: the only VIP with this DIP)")
    s.add_argument("--ready-file", help="write 'ready' here once set up")
    s.add_argument("--interface", help="the fabric interface(s) VIP traffic arrives on, comma-separated "
                                       "(default: the default route's)")
    s.add_argument("--echo", action="store_true",
                   help="also serve the test echo service on the VIP's service port (demo, tests, benchmarks); "
                        "without it the agent only configures the host and your application serves")
    s.add_argument("--flows", type=int,
                   help="entries of the DIP programs' flow table (default 65536): every live connection, plus "
                        "the handshakes of a SYN flood for as long as a connection may stay idle")
    s.add_argument("--metrics-port", type=_tcp_port, help="serve the DIP programs' Prometheus metrics here "
                                                    "(pool misses, flow table fill and evictions; default: none)")
    s.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    s.add_argument("--no-key-adoption", action="store_true",
                   help="token modes: keep the kernel's own keys (a control for tests; joins then break)")
    s.set_defaults(func=cmd_dip_agent)

    s = sub.add_parser("api-token", help="write a new random REST API token to a file only its owner can read")
    s.add_argument("file", help="where (it must not exist yet)")
    s.set_defaults(func=cmd_api_token)

    s = sub.add_parser("dip-stats", help="the counters of the DIP programs on this host's fabric interface, as JSON")
    s.add_argument("interface", help="the interface dip-agent attached them to")
    s.set_defaults(func=cmd_dip_stats)

    s = sub.add_parser("classifier", help="put the MPTCP classifier between a MUX's uplink and its OVS bridge "
                                          "(token and hybrid modes), take it away, or read its counters")
    s.add_argument("action", choices=["attach", "detach", "stats"])
    s.add_argument("uplink", help="the MUX's interface facing the border router")
    s.add_argument("--bridge", help="attach/detach: the MUX's OVS bridge")
    s.add_argument("--port-type", choices=PORT_TYPES,
                   help="attach: OVS port type of the tap's end (default: the uplink's, else afxdp where supported)")
    s.add_argument("--config", help="attach: the mptcp-lb config, whose seed-mode VIPs' punt budgets it enforces")
    s.add_argument("--ofport", type=int,
                   help="attach: OpenFlow port number, when the uplink is not a port of the bridge yet")
    s.set_defaults(func=cmd_classifier)

    s = sub.add_parser("demo", help="build the default datacenter topology and run real MPTCP traffic")
    s.add_argument("--mode", default="port", choices=["port", "token", "hybrid"])
    s.add_argument("--key-source", default="seed", choices=["seed", "pool"],
                   help="token/hybrid: the controller makes keys (seed) or each DIP draws from its pool")
    s.add_argument("--dips", type=int, default=3)
    s.add_argument("--port-type", choices=PORT_TYPES,
                   help="OVS port type of every bridge port (default: afxdp where supported, else system)")
    s.add_argument("--tls", action="store_true",
                   help="OpenFlow over TLS with mutual certificates (a test PKI from ovs-pki), MUX dpids pinned")
    s.add_argument("--bgp", action="store_true",
                   help="the router learns the VIP from each MUX's BGP speaker (BIRD 2, BFD) instead of a static "
                        "ECMP route")
    s.add_argument("--fail-mux", type=int, choices=[1, 2],
                   help="with --bgp: take this MUX's datapath away while connections are in flight, and time "
                        "the router's withdrawal")
    s.add_argument("--ipv6", action="store_true",
                   help="a dual-stack topology; the clients connect to the VIP's IPv6 address (token and hybrid "
                        "modes: port mode cannot announce over IPv6, and says why)")
    s.add_argument("--conns", type=int, default=48,
                   help="connections (below about 40, a DIP the hash left out is reported, not judged)")
    s.add_argument("--size", type=int, default=256 * 1024, help="payload bytes per connection")
    s.add_argument("--json", help="write the JSON report here")
    s.add_argument("--plot", help="write a PNG plot of load per DIP here")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "classifier" and args.action != "stats" and not args.bridge:
        parser.error(f"classifier {args.action} needs --bridge")
    if args.command == "demo" and args.fail_mux and not args.bgp:
        parser.error("--fail-mux needs --bgp: without it nothing withdraws the failed MUX's route")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
