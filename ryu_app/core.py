"""Controller state and decisions, with no os-ken app and no sockets.

``LbCore`` holds the validated config and what each MUX reported in its
last audit. Every method returns OpenFlow messages (``datapath=None``) for
the shim to send; the shim never decides anything. Time is a parameter
(``now``, monotonic seconds), as in FAUCET's Valve, so tests drive the clock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from mptcp_lb.config import Config, Dip, Mux
from ovs_flows.compiler import COOKIE_TAG, CompiledMux, compile_all, to_dip
from ovs_flows.reconcile import reconcile
from ryu_app.seeding import NoRoomForKey, SeedError, parse_syn, seed_syn

log = logging.getLogger(__name__)


@dataclass
class MuxStatus:
    mux: Mux
    connected: bool = False
    flows: int = 0  # flows on the bridge at the last audit
    resyncs: int = 0  # audits that found the bridge wrong and fixed it
    punts: int = 0  # SYN(MPC) packet-ins seeded with a key
    punt_errors: int = 0  # packet-ins that could not be seeded (dropped)
    groups_desc: list = field(default_factory=list)
    meter_configs: list = field(default_factory=list)
    # (vip, dip) -> [packets, bytes] from the last flow + group stats
    dip_counters: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    audit_started: float | None = None  # monotonic time of the audit in flight, if any
    audit_due: bool = False  # another audit was asked for while one was in flight


AUDIT_STALE = 10.0  # seconds after which an unanswered audit no longer blocks a new one


def audit_requests() -> list:
    """Ask a bridge for what it holds: meters and groups first, then flows, then counters."""
    return [
        parser.OFPMeterConfigStatsRequest(datapath=None, flags=0, meter_id=ofp.OFPM_ALL),
        parser.OFPGroupDescStatsRequest(datapath=None, flags=0),
        parser.OFPFlowStatsRequest(datapath=None, flags=0, table_id=ofp.OFPTT_ALL,
                                   out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                                   cookie=0, cookie_mask=0, match=parser.OFPMatch()),
        parser.OFPGroupStatsRequest(datapath=None, flags=0, group_id=ofp.OFPG_ALL),
    ]


def _packet_out(mux: Mux, dip: Dip, frame: bytes):
    """A packet-out handing ``frame`` to ``dip`` over the fabric, as the MUX's own flows would."""
    return parser.OFPPacketOut(datapath=None, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                               actions=to_dip(mux, dip), data=frame)


class LbCore:
    """The controller's brain: config in, OpenFlow messages out. Thread-safe."""

    def __init__(self, config: Config):
        self._lock = threading.RLock()
        self.config = config
        self.compiled: dict[str, CompiledMux] = compile_all(config)
        self.status: dict[int, MuxStatus] = {m.dpid: MuxStatus(m) for m in config.muxes}

    def set_config(self, config: Config) -> None:
        """Switch to a new (already validated) config; audits then converge the MUXes."""
        compiled = compile_all(config)
        with self._lock:
            self.config, self.compiled = config, compiled
            for m in config.muxes:
                self.status.setdefault(m.dpid, MuxStatus(m))
        log.info("config updated: %d VIPs, %d MUXes", len(config.vips), len(config.muxes))

    def mux_connected(self, dpid: int, now: float) -> list:
        """A MUX (re)connected: forget any audit in flight and ask what it holds."""
        with self._lock:
            st = self.status.get(dpid)
            if st is None:
                log.warning("bridge dpid=%#x is not a MUX in the config; leaving it alone", dpid)
                return []
            st.connected, st.audit_started, st.audit_due = True, None, False
        log.info("MUX %s (dpid=%#x) connected", st.mux.name, dpid)
        return self.audit(dpid, now)

    def audit(self, dpid: int, now: float) -> list:
        """Ask a MUX what it holds, unless an audit is already in flight.

        Requests are coalesced: a burst of flow-removed events (an operator's
        del-flows, or our own deletes) costs one more audit, not one each.
        """
        with self._lock:
            st = self.status.get(dpid)
            if st is None or not st.connected:
                return []
            if st.audit_started is not None and now - st.audit_started < AUDIT_STALE:
                st.audit_due = True
                return []
            st.audit_started, st.audit_due = now, False
        return audit_requests()

    def mux_disconnected(self, dpid: int) -> None:
        with self._lock:
            if dpid in self.status:
                self.status[dpid].connected = False
                log.info("MUX %s disconnected", self.status[dpid].mux.name)

    def meter_config_reply(self, dpid: int, configs: list) -> None:
        with self._lock:
            if dpid in self.status:
                self.status[dpid].meter_configs = configs

    def group_desc_reply(self, dpid: int, descs: list) -> None:
        with self._lock:
            if dpid in self.status:
                self.status[dpid].groups_desc = descs

    def flow_stats_reply(self, dpid: int, stats: list) -> list:
        """Audit result: reconcile the bridge and account per-DIP flow counters."""
        with self._lock:
            st = self.status.get(dpid)
            if st is None:
                return []
            compiled = self.compiled[st.mux.name]
            # Flows we did not install are stale too: the MUX bridge is ours alone.
            msgs = reconcile(compiled, stats, st.groups_desc, st.meter_configs)
            st.flows = len(stats)
            log.debug("audit %s: %d flows, %d groups", st.mux.name, len(stats), len(st.groups_desc))
            counters: dict[tuple[str, int], list[int]] = {}
            for s in stats:
                owner = compiled.flow_dip.get(s.cookie)
                if owner is not None:
                    c = counters.setdefault(owner, [0, 0])
                    c[0] += s.packet_count
                    c[1] += s.byte_count
            st.dip_counters = counters
            if msgs:
                st.resyncs += 1
                log.warning("MUX %s differs from config: sending %d messages", st.mux.name, len(msgs))
        return msgs

    def group_stats_reply(self, dpid: int, stats: list, now: float) -> list:
        """Add select-group bucket counters; this reply ends an audit, so start a due one."""
        with self._lock:
            st = self.status.get(dpid)
            if st is None:
                return []
            due, st.audit_started = st.audit_due, None
            compiled = self.compiled[st.mux.name]
            for g in stats:
                owner = compiled.group_dips.get(g.group_id)
                if owner is None:
                    continue
                vip, dips = owner
                for dip_id, bucket in zip(dips, g.bucket_stats):
                    c = st.dip_counters.setdefault((vip, dip_id), [0, 0])
                    c[0] += bucket.packet_count
                    c[1] += bucket.byte_count
        return self.audit(dpid, now) if due else []

    def flow_removed(self, dpid: int, msg, now: float) -> list:
        """Someone deleted one of our flows: audit that MUX now rather than later."""
        if msg.cookie >> 48 != COOKIE_TAG:
            return []
        return self.audit(dpid, now)

    def packet_in(self, dpid: int, frame: bytes) -> list:
        """Seed a punted SYN(MPC): a packet-out of the SYN, carrying its key, to the chosen DIP.

        The DIP is the one the MUX's hash picks for packets without a
        timestamp. Failures drop the SYN (the client retries) and are counted;
        the meter already caps how often this can run.
        """
        with self._lock:
            st = self.status.get(dpid)
            config = self.config
        if st is None:
            return []
        try:
            five = parse_syn(frame)
            vips = [v for v in config.vips if v.address == five.dst and v.port == five.dport
                    and v.uses_tokens and v.key_source == "seed"]
            if not vips:
                raise SeedError(f"no seed-mode VIP at {five.dst}:{five.dport}")
            seeded = seed_syn(vips[0], frame, five=five)
        except NoRoomForKey as e:
            # Still connect the client (to the DIP the hash picks); without the key its
            # later joins may miss, but dropping would fail every retry of this SYN.
            with self._lock:
                st.punt_errors += 1
            log.warning("MUX %s: SYN forwarded without a key: %s", st.mux.name, e)
            return [_packet_out(st.mux, e.dip, frame)]
        except SeedError as e:
            with self._lock:
                st.punt_errors += 1
            log.warning("MUX %s: dropped a punted packet: %s", st.mux.name, e)
            return []
        with self._lock:
            st.punts += 1
        return [_packet_out(st.mux, seeded.dip, seeded.frame)]

    def snapshot(self) -> dict:
        """A consistent copy of the state for the API and metrics."""
        with self._lock:
            return {
                "config": self.config,
                "muxes": [
                    {"name": st.mux.name, "dpid": st.mux.dpid, "connected": st.connected,
                     "flows": st.flows, "resyncs": st.resyncs, "punts": st.punts,
                     "punt_errors": st.punt_errors,
                     "dip_counters": {k: tuple(v) for k, v in st.dip_counters.items()}}
                    for st in self.status.values()
                ],
            }
