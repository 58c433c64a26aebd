"""Bring a bridge from what it holds to what it should hold. Pure.

Resync is a diff, not "delete everything and re-add": a reconnecting
controller or a periodic audit must not drop traffic, and a bridge that is
already right gets no messages at all. Flows are compared by their full
text (cookie, priority, match, actions), so a flow changed by hand is found
even if it kept our cookie.
"""

from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ovs_flows.compiler import CompiledMux
from ovs_flows.ofctl_text import buckets_text, flow_text, match_text, meter_text

ALL_BITS = 0xFFFFFFFFFFFFFFFF


def _slot(flow) -> tuple:
    """What OVS keys a flow by: an ADD with the same slot replaces the flow there."""
    return flow.table_id, flow.priority, match_text(flow.match)


def _delete_strict(stats):
    return parser.OFPFlowMod(
        datapath=None, cookie=stats.cookie, cookie_mask=ALL_BITS, table_id=stats.table_id,
        command=ofp.OFPFC_DELETE_STRICT, priority=stats.priority, match=stats.match,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY)


def _group_mod(desired, command: int):
    return parser.OFPGroupMod(datapath=None, command=command, type_=desired.type,
                              group_id=desired.group_id, buckets=desired.buckets)


def _meter_mod(desired, command: int):
    return parser.OFPMeterMod(datapath=None, command=command, flags=desired.flags, meter_id=desired.meter_id,
                              bands=desired.bands)


def _same_meter(have, want) -> bool:
    return meter_text(have) == meter_text(want)


def _same_group(have, want) -> bool:
    return have.type == want.type and buckets_text(have.buckets) == buckets_text(want.buckets)


def _add_or_modify(have: dict, want: dict, same, mod, add: int, modify: int) -> list:
    """``mod(w, add)`` for each id of ``want`` missing from ``have``, ``mod(w, modify)`` where not ``same``."""
    msgs = []
    for key, w in want.items():
        h = have.get(key)
        if h is None:
            msgs.append(mod(w, add))
        elif not same(h, w):
            msgs.append(mod(w, modify))
    return msgs


FLOW_STATS_HEADER = 16  # an OFPMP_FLOW reply's header: OpenFlow's, then the multipart type and flags
# Where an ofp_flow_stats entry keeps what changes while the flow stays the same: its age and its counters.
_AGE = slice(4, 12)
_COUNTERS = slice(32, 48)


def flow_identities(reply: bytes, lengths: list[int]) -> list[bytes]:
    """Each entry of a raw flow-stats reply without its age and counters: equal bytes, equal flow.

    ``lengths`` are the entries' ``length`` fields, in order. Two audits of an
    unchanged flow give the same bytes, so its text can be looked up rather
    than rendered again (``LbCore`` keeps the cache).
    """
    out, offset = [], FLOW_STATS_HEADER
    for length in lengths:
        entry = reply[offset:offset + length]
        out.append(entry[:_AGE.start] + entry[_AGE.stop:_COUNTERS.start] + entry[_COUNTERS.stop:])
        offset += length
    return out


def reconcile(desired: CompiledMux, flow_stats: list, group_descs: list, meter_configs: list = (),
              stats_texts: list[str | None] | None = None) -> list:
    """Messages that turn (flow_stats, group_descs, meter_configs) into ``desired``; [] if equal.

    Order matters to OVS: meters and groups are created or fixed before flows
    point at them, and stale ones are deleted last (deleting a group also
    deletes the flows that use it). ``stats_texts`` may give each installed
    flow's text already (None where not): rendering tens of thousands of
    flows each audit is what a large MUX would otherwise spend its time on.
    """
    have_meters = {m.meter_id: m for m in meter_configs}
    want_meters = {m.meter_id: m for m in desired.meters}
    have_groups = {g.group_id: g for g in group_descs}
    want_groups = {g.group_id: g for g in desired.groups}
    msgs = (_add_or_modify(have_meters, want_meters, _same_meter, _meter_mod, ofp.OFPMC_ADD, ofp.OFPMC_MODIFY)
            + _add_or_modify(have_groups, want_groups, _same_group, _group_mod, ofp.OFPGC_ADD, ofp.OFPGC_MODIFY))
    if msgs:
        msgs.append(parser.OFPBarrierRequest(datapath=None))

    want_flows = desired.flow_texts
    have_texts, stale = set(), []
    for i, stats in enumerate(flow_stats):
        text = stats_texts[i] if stats_texts and stats_texts[i] else flow_text(stats)  # same fields as flow_mods
        if text in want_flows and text not in have_texts:
            have_texts.add(text)
        else:
            stale.append(stats)
    # Adds first: an ADD replaces a flow with the same match and priority in place, so a
    # changed flow never leaves a gap in which its packets fall to the VIP drop rule.
    adds = [f for text, f in want_flows.items() if text not in have_texts]
    msgs.extend(adds)
    replaced = {_slot(f) for f in adds}
    msgs.extend(_delete_strict(s) for s in stale if _slot(s) not in replaced)

    stale_groups = sorted(set(have_groups) - set(want_groups))
    stale_meters = sorted(set(have_meters) - set(want_meters))
    if stale_groups or stale_meters:
        msgs.append(parser.OFPBarrierRequest(datapath=None))
    msgs.extend(parser.OFPGroupMod(datapath=None, command=ofp.OFPGC_DELETE, group_id=gid) for gid in stale_groups)
    msgs.extend(parser.OFPMeterMod(datapath=None, command=ofp.OFPMC_DELETE, meter_id=mid) for mid in stale_meters)
    return msgs
