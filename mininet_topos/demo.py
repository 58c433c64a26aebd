"""``mptcp-lb demo``: the whole system on the default topology, with real MPTCP traffic."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from mininet_topos.datacenter import VIP, VIP6, mux_address, topology_config
from mininet_topos.harness import Datacenter, datapath_flow_count, wait_for
from mptcp_lb.config import ConfigError, parse_config
from mininet_topos.report import SPREAD_JUDGED_BELOW, connection_entry, format_table, plot, summarize

log = logging.getLogger(__name__)


CLIENT_KINDS = {"c1": "follows ADD_ADDR, respects the C flag", "c2": "stock Linux, joins the service port"}
MIN_SUBFLOWS = {"c1": 3, "c2": 2}  # c1: one per interface to the announced port; c2: one join


def clients_for(mode: str, conns: int) -> list[tuple[str, int]]:
    """Port mode serves C-respecting clients, token mode stock Linux ones, hybrid both at once."""
    if mode == "port":
        return [("c1", conns)]
    if mode == "token":
        return [("c2", conns)]
    return [("c1", conns - conns // 2), ("c2", conns // 2)]


def progress(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_with_mux_failure(dc, args, routing: dict) -> tuple[list[dict], dict]:
    """Paced connections from the mode's clients; MUX ``args.fail_mux`` fails while all are in flight.

    Each connection is paced to last about 6 s, so every one is carrying data
    when the MUX goes. The failover time is from the failure until the
    router's routing table no longer has that MUX as a next hop for the VIP.
    """
    rate = args.size / 6
    runs = []
    for client, conns in clients_for(args.mode, args.conns):
        progress(f"{conns} connections from {client} ({CLIENT_KINDS[client]}), paced to {rate / 1000:.0f} kB/s each")
        runs.append((client, dc.start_traffic(conns, args.size, min_subflows=MIN_SUBFLOWS[client], parallel=conns,
                                              timeout=30, client=client, rate=rate, ipv6=args.ipv6)))
    # c1's joins go to its DIP's announced port; c2's join the service port, which ``established`` counts.
    on_service_port = {"c1": 1, "c2": MIN_SUBFLOWS["c2"]}
    in_flight = sum(conns * on_service_port[c] for c, conns in clients_for(args.mode, args.conns))
    wait_for("every connection established", lambda: sum(dc.established(i) for i in dc.dip_ids()) >= in_flight, 30)
    progress(f"failing MUX {args.fail_mux} (its bridge deleted, its links left up)")
    failover = dc.fail_mux_and_time_withdrawal(args.fail_mux)
    routing = {**routing, "nexthops_after": dc.vip_nexthops(), "failover_s": round(failover, 3)}
    progress(f"withdrawn after {routing['failover_s']} s; the router's next hops: {routing['nexthops_after']}")
    results = []
    for client, run in runs:
        results += [{**r, "client_host": client} for r in run.results()]
    return results, routing


def run_demo(args) -> int:
    from mininet.log import setLogLevel

    setLogLevel("warning")
    if args.fail_mux and not args.bgp:
        raise ValueError("--fail-mux needs --bgp: without it nothing withdraws the failed MUX's route")
    key_source = args.key_source if args.mode != "port" else None
    if args.ipv6:
        try:  # port mode (or BGP) over IPv6 is refused here, in the config's own words, before anything is built
            parse_config(topology_config(args.dips, mode=args.mode, key_source=key_source or "seed", bgp=args.bgp,
                                         ipv6=True))
        except ConfigError as e:
            print(f"--ipv6 --mode {args.mode}: {e}", file=sys.stderr)
            print("DEMO FAILED", file=sys.stderr)
            return 2
    vip = VIP6 if args.ipv6 else VIP
    progress(f"mode={args.mode}{f' key-source={key_source}' if key_source else ''} dips={args.dips} "
             f"conns={args.conns} payload={args.size} bytes, to {vip}")
    routing = None
    with Datacenter(n_dips=args.dips, progress=progress, mode=args.mode, key_source=key_source or "seed",
                    port_type=args.port_type, tls=args.tls, bgp=args.bgp, ipv6=args.ipv6) as dc:
        before = dc.mux_flow_counts()
        dp_before = datapath_flow_count("tcp")
        progress(f"MUX flows before traffic: {before}")
        if args.bgp:
            routing = {"protocol": "bgp", "nexthops_before": dc.vip_nexthops()}
        results = []
        if args.fail_mux:
            results, routing = run_with_mux_failure(dc, args, routing)
        else:
            for client, conns in clients_for(args.mode, args.conns):
                progress(f"{conns} connections from {client} ({CLIENT_KINDS[client]})")
                results += [{**r, "client_host": client}
                            for r in dc.run_traffic(conns, args.size, client=client, min_subflows=MIN_SUBFLOWS[client],
                                                    ipv6=args.ipv6)]
        if routing is not None and "nexthops_after" not in routing:
            routing.update(nexthops_after=dc.vip_nexthops(), failover_s=None)
        after = dc.mux_flow_counts()
        shares = dc.slot_shares()
        before = {k: v for k, v in before.items() if k in after}  # a failed MUX has no flows left to compare
        dp_after = datapath_flow_count("tcp")
        progress(f"{len(results)} connections done; MUX flows after: {after}")
        workdir = dc.workdir
    connections = [connection_entry(r) for r in results]
    summary = summarize(connections, list(range(1, args.dips + 1)), shares)
    report = {
        "mode": args.mode,
        "key_source": key_source,
        "vip": vip,
        "dips": args.dips,
        "port_type": dc.port_type,
        "connections": connections,
        "mux_flows": {"before": before, "after": after},
        "datapath_tcp_flows": {"before": dp_before, "after": dp_after},
        "summary": summary,
        **({"routing": routing} if routing is not None else {}),
        "logs": workdir,
    }
    print(format_table(summary))
    ok = all(summary[k] for k in ("all_verified", "all_multipath", "all_one_dip", "spread_ok"))
    ok = ok and before == after
    if routing is not None:
        progress(f"routing: {json.dumps(routing)}")
        if args.fail_mux:
            survivor = [h for h in routing["nexthops_before"] if h != mux_address(args.fail_mux)]
            ok = ok and routing["nexthops_after"] == survivor
    print(f"verified={summary['all_verified']} multipath={summary['all_multipath']} "
          f"one-DIP-per-connection={summary['all_one_dip']} all-DIPs-used={summary['all_dips_used']}"
          + ("" if summary["chance_a_dip_left_out"] < SPREAD_JUDGED_BELOW else
             f" (not judged: {len(connections)} connections miss a DIP by chance up to "
             f"{summary['chance_a_dip_left_out']:.1%} of runs)") + " "
          f"MUX-flows-unchanged={before == after}" + (" (the surviving MUX's)" if args.fail_mux else ""))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        progress(f"report written to {args.json}")
    if args.plot:
        plot(summary, args.plot, f"mptcp-lb {args.mode} mode: {args.conns} connections")
        progress(f"plot written to {args.plot}")
    print("DEMO PASSED" if ok else "DEMO FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
