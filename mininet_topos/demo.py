"""``mptcp-lb demo``: the whole system on the default topology, with real MPTCP traffic."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from mininet_topos.harness import Datacenter, datapath_flow_count
from mininet_topos.report import connection_entry, format_table, plot, summarize

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


def run_demo(args) -> int:
    from mininet.log import setLogLevel

    setLogLevel("warning")
    key_source = args.key_source if args.mode != "port" else None
    progress(f"mode={args.mode}{f' key-source={key_source}' if key_source else ''} dips={args.dips} "
             f"conns={args.conns} payload={args.size} bytes")
    with Datacenter(n_dips=args.dips, progress=progress, mode=args.mode, key_source=key_source or "seed",
                    port_type=args.port_type, tls=args.tls) as dc:
        before = dc.mux_flow_counts()
        dp_before = datapath_flow_count("tcp")
        progress(f"MUX flows before traffic: {before}")
        results = []
        for client, conns in clients_for(args.mode, args.conns):
            progress(f"{conns} connections from {client} ({CLIENT_KINDS[client]})")
            results += [{**r, "client_host": client} for r in dc.run_traffic(conns, args.size, client=client,
                                                                             min_subflows=MIN_SUBFLOWS[client])]
        after = dc.mux_flow_counts()
        dp_after = datapath_flow_count("tcp")
        progress(f"{len(results)} connections done; MUX flows after: {after}")
        workdir = dc.workdir
    connections = [connection_entry(r) for r in results]
    summary = summarize(connections, list(range(1, args.dips + 1)))
    report = {
        "mode": args.mode,
        "key_source": key_source,
        "dips": args.dips,
        "port_type": dc.port_type,
        "connections": connections,
        "mux_flows": {"before": before, "after": after},
        "datapath_tcp_flows": {"before": dp_before, "after": dp_after},
        "summary": summary,
        "logs": workdir,
    }
    print(format_table(summary))
    ok = all(summary[k] for k in ("all_verified", "all_multipath", "all_one_dip", "all_dips_used"))
    ok = ok and before == after
    print(f"verified={summary['all_verified']} multipath={summary['all_multipath']} "
          f"one-DIP-per-connection={summary['all_one_dip']} all-DIPs-used={summary['all_dips_used']} "
          f"MUX-flows-unchanged={before == after}")
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
