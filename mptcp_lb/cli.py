"""The ``mptcp-lb`` command: controller, dip-agent, demo, check-config, flows."""

from __future__ import annotations

import argparse
import logging
import sys

from mptcp_lb.config import ConfigError, load_config

EXIT_CONFIG = 2


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


def cmd_flows(args) -> int:
    from ovs_flows.compiler import compile_mux, flow_text, group_text, meter_text

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


def cmd_controller(args) -> int:
    from ryu_app.launch import run_controller

    config = _load(args.config)
    run_controller(config, args.config)
    return 0


def cmd_dip_agent(args) -> int:
    from dip_agent.main import run

    return run(args.config, args.dip, vip_name=args.vip, ready_file=args.ready_file,
               key_adoption=not args.no_key_adoption, interface=args.interface)


def cmd_classifier(args) -> int:
    from mptcp_lb import classifier

    try:
        (classifier.attach if args.action == "attach" else classifier.detach)(args.interface)
    except OSError as e:
        print(f"classifier {args.action} {args.interface}: {e}", file=sys.stderr)
        return 1
    print(f"classifier {'attached to' if args.action == 'attach' else 'detached from'} {args.interface} "
          "(generic XDP)")
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

    s = sub.add_parser("flows", help="print a MUX's OpenFlow 1.3 rules in ovs-ofctl syntax")
    s.add_argument("config")
    s.add_argument("--mux", help="MUX name (default: the first)")
    s.add_argument("--groups", action="store_true",
                   help="print the select groups (for ovs-ofctl add-groups) instead of the flows")
    s.add_argument("--meters", action="store_true",
                   help="print the punt meters (one ovs-ofctl add-meter argument per line) instead")
    s.set_defaults(func=cmd_flows)

    s = sub.add_parser("controller", help="run the os-ken controller, REST API and /metrics")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_controller)

    s = sub.add_parser("dip-agent", help="set up this host (or netns) as a DIP and serve until stopped")
    s.add_argument("--config", required=True)
    s.add_argument("--dip", required=True, type=int, help="DIP id from the config")
    s.add_argument("--vip", help="VIP name (default: the only VIP with this DIP)")
    s.add_argument("--ready-file", help="write 'ready' here once set up")
    s.add_argument("--interface", help="token modes: the fabric interface VIP traffic arrives on "
                                       "(default: the default route's)")
    s.add_argument("--no-key-adoption", action="store_true",
                   help="token modes: keep the kernel's own keys (a control for tests; joins then break)")
    s.set_defaults(func=cmd_dip_agent)

    s = sub.add_parser("classifier", help="attach/detach the XDP MPTCP classifier on a MUX's uplink port")
    s.add_argument("action", choices=["attach", "detach"])
    s.add_argument("interface", help="the OVS-side interface facing the border router")
    s.set_defaults(func=cmd_classifier)

    s = sub.add_parser("demo", help="build the default datacenter topology and run real MPTCP traffic")
    s.add_argument("--mode", default="port", choices=["port", "token", "hybrid"])
    s.add_argument("--key-source", default="mux", choices=["mux", "pool"],
                   help="token/hybrid: the controller makes keys (mux) or each DIP draws from its pool")
    s.add_argument("--dips", type=int, default=3)
    s.add_argument("--conns", type=int, default=20)
    s.add_argument("--size", type=int, default=256 * 1024, help="payload bytes per connection")
    s.add_argument("--json", help="write the JSON report here")
    s.add_argument("--plot", help="write a PNG plot of load per DIP here")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
