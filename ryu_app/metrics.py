"""Prometheus view of the controller, read from ``LbCore`` at scrape time.

A custom collector rather than gauges updated in place: the numbers are
OVS's own cumulative counters from the last audit, so they are exported as
they are, and the registry is injectable for tests (FAUCET style).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class LbCollector:
    def __init__(self, core):
        self.core = core

    def collect(self):
        snap = self.core.snapshot()
        packets = CounterMetricFamily("mptcplb_dip_packets", "Packets a MUX steered to a DIP (OVS flow and bucket stats)",
                                      labels=["mux", "vip", "dip"])
        octets = CounterMetricFamily("mptcplb_dip_bytes", "Bytes a MUX steered to a DIP (OVS flow and bucket stats)",
                                     labels=["mux", "vip", "dip"])
        connected = GaugeMetricFamily("mptcplb_muxes_connected", "MUX bridges connected to this controller")
        flows = GaugeMetricFamily("mptcplb_mux_flows", "OpenFlow flows on a MUX at the last audit", labels=["mux"])
        resyncs = CounterMetricFamily("mptcplb_mux_resyncs", "Audits that found a MUX wrong and fixed it",
                                      labels=["mux"])
        refused = CounterMetricFamily("mptcplb_mux_refused", "Connections refused that claimed a MUX's dpid",
                                      labels=["mux"])
        punts = CounterMetricFamily("mptcplb_punts", "SYN(MPC) packet-ins seeded with a key", labels=["mux"])
        punt_errors = CounterMetricFamily("mptcplb_punt_errors", "Packet-ins dropped: not a valid SYN(MPC)",
                                          labels=["mux"])
        unseeded = CounterMetricFamily("mptcplb_punts_unseeded",
                                       "SYN(MPC) packet-ins sent on without a key (the DIP's pool keys them)",
                                       labels=["mux"])
        state = GaugeMetricFamily("mptcplb_dip_active", "1 if a DIP takes new connections, 0 if draining",
                                  labels=["vip", "dip"])
        healthy = GaugeMetricFamily("mptcplb_dip_healthy", "0 if health checks took the DIP down, else 1",
                                    labels=["vip", "dip"])
        slots = GaugeMetricFamily("mptcplb_dip_slots", "Slots of the VIP's table the DIP owns", labels=["vip", "dip"])
        moving = GaugeMetricFamily("mptcplb_slots_in_transition",
                                   "Slots whose packets get a second chance at their previous owner", labels=["vip"])
        connected.add_metric([], sum(1 for m in snap["muxes"] if m["connected"]))
        for m in snap["muxes"]:
            flows.add_metric([m["name"]], m["flows"])
            resyncs.add_metric([m["name"]], m["resyncs"])
            refused.add_metric([m["name"]], m["refused"])
            punts.add_metric([m["name"]], m["punts"])
            punt_errors.add_metric([m["name"]], m["punt_errors"])
            unseeded.add_metric([m["name"]], m["punts_unseeded"])
            for (vip, dip), (pkts, nbytes) in sorted(m["dip_counters"].items()):
                packets.add_metric([m["name"], vip, str(dip)], pkts)
                octets.add_metric([m["name"], vip, str(dip)], nbytes)
        for vip in snap["config"].vips:
            table = snap["tables"].get(vip.name)
            owners = table.owners if table else ()
            moving.add_metric([vip.name], len(table.transitions) if table else 0)
            for d in vip.dips:
                labels = [vip.name, str(d.id)]
                state.add_metric(labels, 1 if d.state == "active" else 0)
                healthy.add_metric(labels, 0 if snap["health"].get((vip.name, d.id), {}).get("state") == "down" else 1)
                slots.add_metric(labels, sum(1 for o in owners if o == d.id))
        yield from (packets, octets, connected, flows, resyncs, refused, punts, punt_errors, unseeded, state, healthy, slots, moving)


def make_registry(core) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(LbCollector(core))
    return registry
