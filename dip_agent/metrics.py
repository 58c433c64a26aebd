"""Prometheus view of a DIP's programs, read from their maps at scrape time.

What an operator watches for exhaustion under a flood: ``pool_empty`` and
``synack_no_key`` (a SYN/ACK found no key ready and kept the kernel's own,
so that connection's joins will not find their DIP) and the flow table's
fill and LRU evictions (an evicted live flow loses its timestamp offset).
``syn_time_wait`` counts SYNs dropped because their 4-tuple was in TIME_WAIT
(each costs its client one SYN retransmission); ``time_wait_reaped`` should
follow it, and ``time_wait_reap_failed`` stay 0 (a failure there lets the
retransmitted SYN go on with the kernel's key).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .dip_abi import STAT_NAMES

# dip_stats entries that are not events worth a series of their own
_NOT_EVENTS = {"flow_created"}


class DipCollector:
    def __init__(self, programs, vip: str, dip: int):
        self.programs = programs
        self.labels = [vip, str(dip)]

    def collect(self):
        usage = self.programs.usage()
        events = CounterMetricFamily("mptcplb_dip_program_events", "What the DIP's tc programs did, by event "
                                     "(dip_structs.h names each)", labels=["vip", "dip", "event"])
        for name in STAT_NAMES:
            if name not in _NOT_EVENTS:
                events.add_metric([*self.labels, name], usage[name])
        yield events
        gauges = (("flow_entries", "mptcplb_dip_flow_entries", "Entries in the DIP programs' flow table"),
                  ("flow_capacity", "mptcplb_dip_flow_capacity", "Size of the DIP programs' flow table (--flows)"))
        for key, name, doc in gauges:
            g = GaugeMetricFamily(name, doc, labels=["vip", "dip"])
            g.add_metric(self.labels, usage[key])
            yield g
        counters = (("flows_evicted", "mptcplb_dip_flows_evicted", "Flow table entries the LRU dropped for room"),
                    ("pool_refilled", "mptcplb_dip_pool_refilled", "Key pool slots refilled with fresh keys"),
                    ("time_wait_reaped", "mptcplb_dip_time_wait_reaped",
                     "TIME_WAIT sockets destroyed so a reconnecting client's SYN gets a cookie (dip_agent/time_wait.py)"),
                    ("time_wait_reap_failed", "mptcplb_dip_time_wait_reap_failed",
                     "TIME_WAIT sockets the kernel refused to destroy: those SYNs went on with the kernel's key"))
        for key, name, doc in counters:
            c = CounterMetricFamily(name, doc, labels=["vip", "dip"])
            c.add_metric(self.labels, usage[key])
            yield c


def serve_metrics(programs, vip: str, dip: int, host: str, port: int):
    """Serve the DIP's metrics on ``host:port`` in a thread; returns the server (``shutdown()`` it)."""
    registry = CollectorRegistry()
    registry.register(DipCollector(programs, vip, dip))
    server, _thread = start_http_server(port, host, registry)
    return server


__all__ = ["DipCollector", "serve_metrics"]
