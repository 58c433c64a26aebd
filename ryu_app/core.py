"""Controller state and decisions, with no os-ken app and no sockets.

``LbCore`` holds the validated config, the runtime state built on it (each
DIP's health, each VIP's slot table and the slots in transition) and what
each MUX reported in its last audit. Every method returns OpenFlow messages
(``datapath=None``) for the shim to send, or says whether the MUXes must be
audited; the shim never decides anything. Time is a parameter (``now``,
monotonic seconds), as in FAUCET's Valve, so tests drive the clock.

Decisions are made here and only here: every MUX gets the same slot tables,
computed from the same health, so MUXes agree without talking to each other.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from mptcp_lb.config import Config, Dip, Mux, runtime_changes
from mptcp_lb.slots import SlotTable, Transition, live_transitions, next_transitions, table_for
from ovs_flows.compiler import COOKIE_TAG, CompiledMux, compile_all, to_dip
from ovs_flows.ofctl_text import flow_text
from ovs_flows.reconcile import reconcile
from ryu_app.health import DOWN, DipHealth
from ryu_app.seeding import SeedError, Unseeded, draw_now, hash_choice, parse_syn, seed_syn

log = logging.getLogger(__name__)


@dataclass
class MuxStatus:
    mux: Mux
    connected: bool = False
    flows: int = 0  # flows on the bridge at the last audit
    resyncs: int = 0  # audits that found the bridge wrong and fixed it
    punts: int = 0  # SYN(MPC) packet-ins seeded with a key
    punt_errors: int = 0  # packet-ins that could not be seeded (dropped)
    punts_unseeded: int = 0  # valid SYNs sent on without a key (no room, no key yet): their DIP's pool keys them
    refused: int = 0  # connections that claimed this MUX's dpid and were refused (admit)
    groups_desc: list = field(default_factory=list)
    meter_configs: list = field(default_factory=list)
    # (vip, dip) -> [packets, bytes] from the last flow + group stats
    dip_counters: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    flow_texts: dict[bytes, str] = field(default_factory=dict)  # flow identity -> text, from the last audit
    audit_started: float | None = None  # monotonic time of the audit in flight, if any
    audit_due: bool = False  # another audit was asked for while one was in flight
    # An audit has ended since the MUX connected: what it found wrong was fixed before anything else
    # went out. Until then no leased flow is renewed, so no speaker announces a bridge being programmed.
    programmed: bool = False


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
    """The controller's brain: config in, OpenFlow messages out. Thread-safe.

    ``base`` is the config as its file says (default: ``config``); the
    difference is what the API changed, which ``runtime_state`` reports for
    the state file together with health and transitions. ``restored`` is
    such a state (health and transitions only; the config already holds the
    changes) to carry on from.
    """

    def __init__(self, config: Config, now: float = 0.0, base: Config | None = None,
                 restored: dict | None = None):
        self._lock = threading.RLock()
        self.base = base or config
        self.config = config
        self.health: dict[tuple[str, int], DipHealth] = {}
        self.transitions: dict[str, dict[int, Transition]] = {}
        if restored:
            for (vip, dip), state in restored.get("health", {}).items():
                self.health[(vip, dip)] = DipHealth(state=state["state"], since=state.get("since"))
            self.transitions = {vip: dict(t) for vip, t in restored.get("transitions", {}).items()}
        self.tables: dict[str, SlotTable] = {}
        self.compiled: dict[str, CompiledMux] = {}
        self.key_banks: dict = {}  # slice width -> KeyBank, which the shim runs (seed mode)
        self._rebuild(now)
        self.status: dict[int, MuxStatus] = {m.dpid: MuxStatus(m) for m in config.muxes}

    # ------------------------------------------------------------ decisions

    def _down(self, vip: str) -> set[int]:
        return {dip for (v, dip), h in self.health.items() if v == vip and h.state == DOWN}

    def _rebuild(self, now: float) -> None:
        """Recompute every VIP's slot table (moved slots start transitions) and recompile. Lock held."""
        seconds = self.config.controller.transition_time
        tables = {}
        for vip in self.config.vips:
            table = table_for(vip, self._down(vip.name))
            old = self.tables.get(vip.name)
            was = old.owners if old is not None else table.owners
            known = {d.id for d in vip.dips}
            transitions = live_transitions(
                next_transitions(was, table.owners, self.transitions.get(vip.name, {}), now, seconds), now, known)
            self.transitions[vip.name] = transitions
            tables[vip.name] = SlotTable(table.owners, transitions)
            if old is not None and old.owners != table.owners:
                moved = sum(a != b for a, b in zip(was, table.owners)) if len(was) == len(table.owners) else None
                log.info("VIP %s: slot table changed (%s slots moved, %d in transition)", vip.name,
                         moved if moved is not None else "all", len(transitions))
        self.transitions = {name: t for name, t in self.transitions.items() if name in tables}
        self.tables = tables
        self.compiled = compile_all(self.config, tables)

    def set_config(self, config: Config, now: float = 0.0) -> None:
        """Switch to a new (already validated) config; audits then converge the MUXes."""
        with self._lock:
            self.config = config
            self.health = {k: h for k, h in self.health.items() if self._has_dip(*k)}
            self._rebuild(now)
            for m in config.muxes:
                self.status.setdefault(m.dpid, MuxStatus(m))
        log.info("config updated: %d VIPs, %d MUXes", len(config.vips), len(config.muxes))

    def _has_dip(self, vip: str, dip: int) -> bool:
        try:
            self.config.vip(vip).dip(dip)
        except KeyError:
            return False
        return True

    def health_enabled(self, vip: str) -> bool:
        """Whether the VIP's DIPs are probed: a probe interface exists and the VIP's check is not "none"."""
        try:
            return self.config.controller.probe_interface is not None and self.config.vip(vip).health.kind != "none"
        except KeyError:
            return False

    def health_result(self, vip: str, dip: int, error: str, now: float) -> bool:
        """One probe's result ('' for success); True when the slot tables changed (audit the MUXes)."""
        with self._lock:
            if not self._has_dip(vip, dip):
                return False
            check = self.config.vip(vip).health
            h = self.health.setdefault((vip, dip), DipHealth())
            if not h.observe(not error, now, check.rise, check.fall, error):
                return False
            (log.warning if h.state == DOWN else log.info)("VIP %s DIP %d is %s%s", vip, dip, h.state,
                                                           f": {error}" if error else "")
            before = self.tables.get(vip)
            self._rebuild(now)
            v = self.config.vip(vip)
            active = [d.id for d in v.dips if d.state == "active"]
            if active and all(d in self._down(vip) for d in active):
                log.error("VIP %s: every active DIP is down; failing open: all of them keep their slots", vip)
            return self.tables.get(vip) != before

    def tick(self, now: float) -> bool:
        """End the transitions that ran out; True when a table changed (audit the MUXes)."""
        with self._lock:
            if not any(t.until <= now for ts in self.transitions.values() for t in ts.values()):
                return False
            self._rebuild(now)
            return True

    def in_transition_from(self, vip: str, dip: int, now: float) -> float | None:
        """Until when (monotonic) slots still give connections a second chance at ``dip``, or None."""
        with self._lock:
            ends = [t.until for t in self.transitions.get(vip, {}).values() if t.previous == dip and t.until > now]
        return max(ends) if ends else None

    def runtime_state(self) -> dict:
        """What the state file keeps: the API's changes, health and transitions (monotonic times)."""
        with self._lock:
            return {
                "changes": runtime_changes(self.base, self.config),
                "health": {k: {"state": h.state, "since": h.since} for k, h in self.health.items()
                           if h.state != "unknown"},
                "transitions": {vip: dict(t) for vip, t in self.transitions.items() if t},
            }

    def admit(self, dpid: int, peer_address: str, cert_sha256: str | None, live: bool) -> str | None:
        """None to let a connection claiming ``dpid`` be that MUX; else why it is refused (and counted).

        A MUX with ``pin_address`` must connect from there, one with
        ``pin_cert_sha256`` must present that certificate (TLS); a dpid that a
        live connection already holds is refused, so a rogue switch cannot
        take a MUX over by claiming its dpid.
        """
        with self._lock:
            st = self.status.get(dpid)
            if st is None:
                return None  # not a MUX: mux_connected leaves it alone
            mux, why = st.mux, None
            if mux.pin_address is not None and peer_address != mux.pin_address:
                why = f"connects from {peer_address}, not its pinned address {mux.pin_address}"
            elif mux.pin_cert_sha256 is not None and cert_sha256 != mux.pin_cert_sha256:
                why = (f"presents certificate {cert_sha256 or 'none (no TLS)'}, not its pinned "
                       f"{mux.pin_cert_sha256}")
            elif live:
                why = "a live connection already holds this dpid"
            if why is not None:
                st.refused += 1
        if why is not None:
            log.error("refused a connection claiming MUX %s (dpid=%#x): %s", mux.name, dpid, why)
        return why

    def mux_connected(self, dpid: int, now: float) -> list:
        """A MUX (re)connected: forget any audit in flight and ask what it holds."""
        with self._lock:
            st = self.status.get(dpid)
            if st is None:
                log.warning("bridge dpid=%#x is not a MUX in the config; leaving it alone", dpid)
                return []
            st.connected, st.audit_started, st.audit_due, st.programmed = True, None, False, False
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

    def keepalive(self, dpid: int) -> list:
        """The leased flows (seed-mode punt, BGP speaker): they expire unless renewed; ADDs that renew them.

        An ADD that matches an installed flow replaces it and restarts its
        hard timeout; the shim sends these more often than they expire. None
        before the first audit since the MUX connected has ended: its fixes
        go out first (the shim sends them as it handles the flow stats reply,
        before the group stats reply that ends the audit), so a renewal never
        reaches a bridge ahead of the flows the leased ones depend on.
        """
        with self._lock:
            st = self.status.get(dpid)
            if st is None or not st.connected or not st.programmed:
                return []
            # Copies: the audit may be sending these very messages from another thread.
            return [copy.copy(f) for f in self.compiled[st.mux.name].flows if f.hard_timeout]

    def mux_disconnected(self, dpid: int) -> None:
        with self._lock:
            if dpid in self.status:
                self.status[dpid].connected = self.status[dpid].programmed = False
                log.info("MUX %s disconnected", self.status[dpid].mux.name)

    def meter_config_reply(self, dpid: int, configs: list) -> None:
        with self._lock:
            if dpid in self.status:
                self.status[dpid].meter_configs = configs

    def group_desc_reply(self, dpid: int, descs: list) -> None:
        with self._lock:
            if dpid in self.status:
                self.status[dpid].groups_desc = descs

    def flow_stats_reply(self, dpid: int, stats: list, identities: list[bytes] | None = None) -> list:
        """Audit result: reconcile the bridge and account per-DIP flow counters.

        ``identities`` (``reconcile.flow_identities``, one per entry) let
        flows unchanged since the last audit skip rendering their text.
        """
        with self._lock:
            st = self.status.get(dpid)
            if st is None:
                return []
            compiled = self.compiled[st.mux.name]
            texts = None
            if identities is not None and len(identities) == len(stats):
                texts = [st.flow_texts.get(i) or flow_text(s) for i, s in zip(identities, stats)]
                st.flow_texts = dict(zip(identities, texts))
            # Flows we did not install are stale too: the MUX bridge is ours alone.
            msgs = reconcile(compiled, stats, st.groups_desc, st.meter_configs, texts)
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
            due, st.audit_started, st.programmed = st.audit_due, None, st.connected
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
        timestamp. The key comes from ``key_bank`` (``KeyBank`` per slice
        width, refilled off this thread), or is drawn here when there is none
        (tests). A valid SYN that cannot be seeded goes on unseeded, and the
        DIP keys it from its own pool; only a packet that is no valid SYN is
        dropped. Both are counted.
        """
        with self._lock:
            st = self.status.get(dpid)
            config = self.config
            banks = self.key_banks
        if st is None:
            return []

        def draw_key(vip, dip):
            bank = banks.get(vip.slice_bits)
            return draw_now(vip, dip) if bank is None else bank.take(dip.slices)

        try:
            five = parse_syn(frame)
            vips = [v for v in config.vips if v.address == five.dst and v.port == five.dport
                    and v.uses_tokens and v.key_source == "seed"]
            if not vips:
                raise SeedError(f"no seed-mode VIP at {five.dst}:{five.dport}")
            table = self.tables[vips[0].name]
            seeded = seed_syn(vips[0], frame, lambda vip, five: hash_choice(vip, table, five), five=five,
                              draw_key=draw_key)
        except Unseeded as e:
            # Still connect the client, to the DIP the hash picks: its pool gives the key.
            with self._lock:
                st.punts_unseeded += 1
            log.info("MUX %s: SYN forwarded without a key: %s", st.mux.name, e)
            return [_packet_out(st.mux, e.dip, frame)]
        except SeedError as e:
            with self._lock:
                st.punt_errors += 1
            log.warning("MUX %s: dropped a punted packet: %s", st.mux.name, e)
            return []
        with self._lock:
            st.punts += 1
        return [_packet_out(st.mux, seeded.dip, seeded.frame)]

    def seed_slices(self) -> dict[int, set[int]]:
        """Slice width -> the slices seed-mode DIPs own: what the key banks keep stocked."""
        with self._lock:
            wanted: dict[int, set[int]] = {}
            for v in self.config.vips:
                if v.uses_tokens and v.key_source == "seed":
                    wanted.setdefault(v.slice_bits, set()).update(*(d.slices for d in v.dips))
            return wanted

    def snapshot(self) -> dict:
        """A consistent copy of the state for the API and metrics."""
        with self._lock:
            return {
                "config": self.config,
                "health": {k: h.view() for k, h in self.health.items()},
                "tables": dict(self.tables),
                "muxes": [
                    {"name": st.mux.name, "dpid": st.mux.dpid, "connected": st.connected,
                     "flows": st.flows, "resyncs": st.resyncs, "punts": st.punts,
                     "punt_errors": st.punt_errors, "punts_unseeded": st.punts_unseeded, "refused": st.refused,
                     "dip_counters": {k: tuple(v) for k, v in st.dip_counters.items()}}
                    for st in self.status.values()
                ],
            }
