"""A simulated OpenFlow 1.3 bridge that runs the compiler's real os-ken messages.

Answers "where does this packet go, and how does it look when it leaves?"
for the subset of OpenFlow the compiler uses (FAUCET's fakeoftable idea, our
own code), and answers the stats requests of the controller's audit with
the counters those packets moved. The select group hashes the 5-tuple like
OVS's symmetric L4 hash would, only with a different function: tests may
rely on *consistency*, not on which bucket a given packet picks. Meters are
held and required, but never drop (rates are not modelled).
"""

from __future__ import annotations

import hashlib
import ipaddress

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ovs_flows.ofctl_text import MULTIPATH_ALGORITHMS
from ovs_flows.ovs_hash import pick_backend

IP_FIELDS = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"}
IPV6_FIELDS = {"ipv6_src", "ipv6_dst", "ipv6_nd_target"}
ALL_BITS = 0xFFFFFFFFFFFFFFFF


def _as_int(name: str, value) -> int:
    if isinstance(value, int):
        return value
    if name in IP_FIELDS:
        return int(ipaddress.IPv4Address(value))
    if name in IPV6_FIELDS:
        return int(ipaddress.IPv6Address(value))
    return int(str(value).replace(":", ""), 16)  # MAC


def field_matches(name: str, want, packet: dict) -> bool:
    if name not in packet:
        return False
    have = _as_int(name, packet[name])
    if isinstance(want, tuple):
        value, mask = want
        mask = _as_int(name, mask)
        return have & mask == _as_int(name, value) & mask
    return have == _as_int(name, want)


def sym_l4_hash(packet: dict) -> int:
    family = "ipv4" if "ipv4_src" in packet else "ipv6"
    ends = sorted([(packet.get(f"{family}_src"), packet.get("tcp_src")),
                   (packet.get(f"{family}_dst"), packet.get("tcp_dst"))], key=str)
    return int.from_bytes(hashlib.sha256(repr(ends).encode()).digest()[:4], "big")


def flow_actions(flow) -> list:
    """The apply-actions of a flow_mod or flow-stats entry."""
    for inst in flow.instructions:
        if isinstance(inst, parser.OFPInstructionActions):
            return list(inst.actions)
    return []


def flow_meters(flow) -> list[int]:
    return [i.meter_id for i in flow.instructions if isinstance(i, parser.OFPInstructionMeter)]


def flow_groups(flow) -> list[int]:
    return [a.group_id for a in flow_actions(flow) if a.type == ofp.OFPAT_GROUP]


def _check_add_or_modify(held: dict, key: int, adding: bool, exists: str, unknown: str) -> None:
    """An ADD of an id already held, or a MODIFY of one not held, is refused as OVS refuses it."""
    if adding and key in held:
        raise ValueError(exists)
    if not adding and key not in held:
        raise ValueError(unknown)


def flow_stats_entry(flow, packet_count: int = 0, byte_count: int = 0):
    """What a switch reports in a flow-stats reply for a flow it holds."""
    return parser.OFPFlowStats(table_id=flow.table_id, duration_sec=1, duration_nsec=0, priority=flow.priority,
                               idle_timeout=flow.idle_timeout, hard_timeout=flow.hard_timeout, flags=flow.flags,
                               cookie=flow.cookie,
                               packet_count=packet_count, byte_count=byte_count, match=flow.match,
                               instructions=flow.instructions)


def _same_match(a, b) -> bool:
    return sorted(a.match.items()) == sorted(b.match.items())


class Counts:
    """Packets and bytes, as every OpenFlow flow, group and bucket counts them."""

    def __init__(self):
        self.packets = self.bytes = 0

    def add(self, size: int) -> None:
        self.packets += 1
        self.bytes += size


class FakeOFTable:
    """One bridge's flow tables, groups and meters, starting from ``msgs`` applied in order."""

    def __init__(self, msgs: list):
        self.flows = []
        self.groups = {}
        self.meters = {}
        self.removed = []  # OFPFlowRemoved the bridge sent, for flows with OFPFF_SEND_FLOW_REM
        self._flow_counts: dict[int, Counts] = {}  # id(flow) -> counter, while the flow is held
        self._group_counts: dict[int, tuple[Counts, list[Counts]]] = {}  # group id -> (group, per bucket)
        for msg in msgs:
            self.apply(msg)

    # ------------------------------------------------------------ controller -> bridge

    def apply(self, msg) -> None:
        """Apply a message as OVS would; errors OVS would send back are raised as ValueError."""
        if isinstance(msg, parser.OFPGroupMod):
            self._group_mod(msg)
        elif isinstance(msg, parser.OFPMeterMod):
            self._meter_mod(msg)
        elif isinstance(msg, parser.OFPFlowMod):
            self._flow_mod(msg)
        elif not isinstance(msg, parser.OFPBarrierRequest):  # one message at a time: nothing to wait for
            raise NotImplementedError(f"fake bridge does not model {msg!r}")

    def _group_mod(self, msg) -> None:
        if msg.command == ofp.OFPGC_DELETE:
            self.groups.pop(msg.group_id, None)
            self._group_counts.pop(msg.group_id, None)
            # OF1.3 §6.5: the flows that use a group go with it
            self._remove_flows(lambda f: msg.group_id in flow_groups(f), ofp.OFPRR_GROUP_DELETE)
            return
        _check_add_or_modify(self.groups, msg.group_id, msg.command == ofp.OFPGC_ADD,
                             "OFPGMFC_GROUP_EXISTS", "OFPGMFC_UNKNOWN_GROUP")
        self.groups[msg.group_id] = msg
        group = self._group_counts.get(msg.group_id, (Counts(), []))[0]
        self._group_counts[msg.group_id] = (group, [Counts() for _ in msg.buckets])  # new buckets count anew

    def _meter_mod(self, msg) -> None:
        if msg.command == ofp.OFPMC_DELETE:
            self.meters.pop(msg.meter_id, None)
            self._remove_flows(lambda f: msg.meter_id in flow_meters(f))  # OF1.3 §6.6: so do a meter's
            return
        _check_add_or_modify(self.meters, msg.meter_id, msg.command == ofp.OFPMC_ADD,
                             "OFPMMFC_METER_EXISTS", "OFPMMFC_UNKNOWN_METER")
        self.meters[msg.meter_id] = msg

    def _flow_mod(self, msg) -> None:
        if msg.command == ofp.OFPFC_ADD:
            if any(g not in self.groups for g in flow_groups(msg)):
                raise ValueError("OFPBAC_BAD_OUT_GROUP")  # as OVS does
            if any(m not in self.meters for m in flow_meters(msg)):
                raise ValueError("OFPMMFC_INVALID_METER")  # as OVS does
            # An ADD replaces the flow of the same table, priority and match, keeping its counters.
            old = [f for f in self.flows if (f.table_id, f.priority) == (msg.table_id, msg.priority)
                   and _same_match(f, msg)]
            counts = self._flow_counts.pop(id(old[0]), Counts()) if old else Counts()
            if msg.flags & ofp.OFPFF_RESET_COUNTS:
                counts = Counts()
            self.flows = [f for f in self.flows if f not in old]
            self.flows.append(msg)
            self._flow_counts[id(msg)] = counts
        elif msg.command == ofp.OFPFC_DELETE_STRICT:
            self._remove_flows(lambda f: msg.table_id in (ofp.OFPTT_ALL, f.table_id) and f.priority == msg.priority
                               and f.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask and _same_match(f, msg))
        else:
            raise NotImplementedError(f"fake bridge does not model flow_mod command {msg.command}")

    def _remove_flows(self, doomed, reason: int = ofp.OFPRR_DELETE) -> None:
        for f in [f for f in self.flows if doomed(f)]:
            self.flows.remove(f)
            counts = self._flow_counts.pop(id(f))
            if f.flags & ofp.OFPFF_SEND_FLOW_REM:
                self.removed.append(parser.OFPFlowRemoved(
                    datapath=None, cookie=f.cookie, priority=f.priority, reason=reason,
                    table_id=f.table_id, duration_sec=1, duration_nsec=0, idle_timeout=0, hard_timeout=0,
                    packet_count=counts.packets, byte_count=counts.bytes, match=f.match))

    def delete_by_hand(self, flow) -> None:
        """``ovs-ofctl del-flows --strict`` of one flow, as an operator would."""
        self.apply(parser.OFPFlowMod(datapath=None, cookie=flow.cookie, cookie_mask=ALL_BITS, table_id=flow.table_id,
                                     command=ofp.OFPFC_DELETE_STRICT, priority=flow.priority, match=flow.match))

    # ------------------------------------------------------------ stats replies

    def stats_reply(self, request) -> list:
        """The body of the multipart reply to one of the controller's audit requests (whole tables only)."""
        if isinstance(request, parser.OFPFlowStatsRequest):
            assert request.table_id == ofp.OFPTT_ALL and request.cookie_mask == 0 and not dict(request.match.items())
            return [flow_stats_entry(f, self._flow_counts[id(f)].packets, self._flow_counts[id(f)].bytes)
                    for f in self.flows]
        if isinstance(request, parser.OFPGroupDescStatsRequest):
            return [parser.OFPGroupDescStats(type_=g.type, group_id=g.group_id, buckets=g.buckets)
                    for g in self.groups.values()]
        if isinstance(request, parser.OFPGroupStatsRequest):
            assert request.group_id == ofp.OFPG_ALL
            return [self._group_stats(gid) for gid in self.groups]
        if isinstance(request, parser.OFPMeterConfigStatsRequest):
            assert request.meter_id == ofp.OFPM_ALL
            return [parser.OFPMeterConfigStats(flags=m.flags, meter_id=m.meter_id, bands=m.bands)
                    for m in self.meters.values()]
        raise NotImplementedError(f"fake bridge does not answer {request!r}")

    def _group_stats(self, group_id: int):
        group, buckets = self._group_counts[group_id]
        refs = sum(group_id in flow_groups(f) for f in self.flows)
        return parser.OFPGroupStats(length=0, group_id=group_id, ref_count=refs, packet_count=group.packets,
                                    byte_count=group.bytes, duration_sec=1, duration_nsec=0,
                                    bucket_stats=[parser.OFPBucketCounter(b.packets, b.bytes) for b in buckets])

    # ------------------------------------------------------------ packets

    def lookup(self, packet: dict, table_id: int = 0):
        """Highest-priority matching flow, or None."""
        best = None
        for f in self.flows:
            if f.table_id == table_id and all(field_matches(n, v, packet) for n, v in f.match.items()):
                if best is None or f.priority > best.priority:
                    best = f
        return best

    def forward(self, packet: dict, size: int = 64) -> list[tuple[int, dict]]:
        """Output (port, packet as sent) pairs; [] means dropped. Counts ``size`` bytes where it goes."""
        return self._run_table(0, dict(packet), size)

    def packet_out(self, msg, packet: dict) -> list[tuple[int, dict]]:
        """Run a packet-out's actions on ``packet`` (its data, as fields); no flow counts it."""
        assert msg.buffer_id == ofp.OFP_NO_BUFFER and msg.in_port == ofp.OFPP_CONTROLLER
        return self._run(msg.actions, dict(packet), len(msg.data))

    def _run_table(self, table_id: int, pkt: dict, size: int) -> list[tuple[int, dict]]:
        flow = self.lookup(pkt, table_id)
        if flow is None:
            return []
        self._flow_counts[id(flow)].add(size)
        return self._run(flow_actions(flow), pkt, size)

    def _run(self, actions, pkt: dict, size: int) -> list[tuple[int, dict]]:
        out = []
        for a in actions:
            if isinstance(a, parser.OFPActionSetField):
                pkt[a.key] = a.value
            elif isinstance(a, parser.NXActionRegMove):
                pkt[a.dst_field] = pkt[a.src_field]
            elif isinstance(a, parser.OFPActionOutput):
                port = pkt["in_port"] if a.port == ofp.OFPP_IN_PORT else a.port
                out.append((port, dict(pkt)))
            elif isinstance(a, parser.NXActionMultipath):
                # the real OVS hash (ovs_flows/ovs_hash.py, checked against ofproto/trace)
                pkt[a.dst] = pick_backend(pkt, a.max_link + 1, basis=a.basis,
                                          algorithm=MULTIPATH_ALGORITHMS[a.algorithm], arg=a.arg)
            elif isinstance(a, parser.NXActionResubmitTable):
                out.extend(self._run_table(a.table_id, dict(pkt), size))
            elif isinstance(a, parser.OFPActionGroup):
                group = self.groups[a.group_id]
                counts, bucket_counts = self._group_counts[a.group_id]
                counts.add(size)
                if group.buckets:
                    i = sym_l4_hash(pkt) % len(group.buckets)
                    bucket_counts[i].add(size)
                    out.extend(self._run(group.buckets[i].actions, pkt, size))
            else:
                raise NotImplementedError(f"fake table does not model {a!r}")
        return out
