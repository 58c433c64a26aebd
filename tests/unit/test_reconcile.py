from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
import pytest

from mptcp_lb.config import parse_config, with_dip_state
from ovs_flows.compiler import compile_mux, flow_mod
from ovs_flows.reconcile import reconcile
from tests.fakeoftable import FakeOFTable, flow_stats_entry


@pytest.fixture
def compiled(raw_config):
    config = parse_config(raw_config)
    return compile_mux(config, config.muxes[0])


def as_stats(flow_mods):
    """What a switch reports back for flows it holds."""
    return [flow_stats_entry(f) for f in flow_mods]


def as_descs(group_mods):
    return [parser.OFPGroupDescStats(type_=g.type, group_id=g.group_id, buckets=g.buckets) for g in group_mods]


def as_meters(meter_mods):
    return [parser.OFPMeterConfigStats(flags=m.flags, meter_id=m.meter_id, bands=m.bands) for m in meter_mods]


def current(compiled):
    """What a correct bridge reports: its groups and meters."""
    return as_descs(compiled.groups), as_meters(compiled.meters)


def kinds(msgs):
    out = []
    for m in msgs:
        if isinstance(m, parser.OFPMeterMod):
            out.append(("meter", {ofp.OFPMC_ADD: "add", ofp.OFPMC_MODIFY: "modify", ofp.OFPMC_DELETE: "delete"}[m.command]))
        elif isinstance(m, parser.OFPGroupMod):
            out.append(("group", {ofp.OFPGC_ADD: "add", ofp.OFPGC_MODIFY: "modify", ofp.OFPGC_DELETE: "delete"}[m.command]))
        elif isinstance(m, parser.OFPFlowMod):
            out.append(("flow", {ofp.OFPFC_ADD: "add", ofp.OFPFC_DELETE_STRICT: "delete"}[m.command]))
        else:
            out.append(("barrier",))
    return out


def test_empty_bridge_gets_meters_and_groups_then_flows(compiled):
    msgs = reconcile(compiled, [], [])
    assert kinds(msgs) == ([("meter", "add")] * len(compiled.meters) + [("group", "add"), ("barrier",)]
                           + [("flow", "add")] * len(compiled.flows))


def test_correct_bridge_gets_nothing(compiled):
    assert reconcile(compiled, as_stats(compiled.flows), *current(compiled)) == []


def test_stale_foreign_and_missing_flows(compiled):
    foreign = flow_mod(5, parser.OFPMatch(eth_type=0x0800), [])
    foreign.cookie = 0x1234
    have = as_stats([*compiled.flows[1:], foreign])
    msgs = reconcile(compiled, have, *current(compiled))
    assert kinds(msgs) == [("flow", "add"), ("flow", "delete")]  # add first: no gap
    assert msgs[1].cookie == 0x1234 and msgs[1].cookie_mask == 2**64 - 1
    assert msgs[0] is compiled.flows[0]


def test_flow_changed_by_hand_is_replaced(compiled):
    hacked = flow_mod(compiled.flows[2].priority, compiled.flows[2].match, [])
    hacked.cookie = compiled.flows[2].cookie  # same cookie, other actions
    have = as_stats([f if i != 2 else hacked for i, f in enumerate(compiled.flows)])
    msgs = reconcile(compiled, have, *current(compiled))
    # The ADD replaces the hand-edited flow in place; a cookie-strict delete would remove the fix.
    assert kinds(msgs) == [("flow", "add")]
    assert msgs[0] is compiled.flows[2]


def test_duplicate_flow_is_removed(compiled):
    have = as_stats([*compiled.flows, compiled.flows[0]])
    assert kinds(reconcile(compiled, have, *current(compiled))) == [("flow", "delete")]


def test_changed_group_is_modified_and_stale_group_deleted_last(raw_config, compiled):
    config = parse_config(raw_config)
    drained = compile_mux(with_dip_state(config, "web", 1, "draining"), config.muxes[0])
    extra = parser.OFPGroupMod(datapath=None, command=ofp.OFPGC_ADD, type_=ofp.OFPGT_SELECT, group_id=9, buckets=[])
    msgs = reconcile(drained, as_stats(drained.flows), as_descs([*compiled.groups, extra]), as_meters(drained.meters))
    assert kinds(msgs) == [("group", "modify"), ("barrier",), ("barrier",), ("group", "delete")]
    assert len(msgs[0].buckets) == len(compiled.groups[0].buckets) and msgs[-1].group_id == 9


def test_reconciled_table_behaves_like_a_fresh_one(compiled):
    table = FakeOFTable([])
    for m in reconcile(compiled, [], []):
        if not isinstance(m, parser.OFPBarrierRequest):
            table.apply(m)
    fresh = FakeOFTable(compiled.messages)
    assert [flow.cookie for flow in table.flows] == [flow.cookie for flow in fresh.flows]


def test_flow_identities_ignore_age_and_counters_and_nothing_else():
    import struct

    from ovs_flows.reconcile import FLOW_STATS_HEADER, flow_identities

    def entry(cookie, packets, seconds, actions):
        rest = b"\x00\x01\x00\x04" + b"\x00" * 4 + actions  # a match and instructions, any bytes here
        head = struct.pack("!HBxIIHHHH4xQQQ", 48 + len(rest), 0, seconds, 7, 200, 0, 0, 1, cookie, packets,
                           packets * 100)
        return head + rest

    a, b = entry(0x4D4C01, 10, 5, b"out:2"), entry(0x4D4C01, 99, 6, b"out:2")
    edited, other = entry(0x4D4C01, 10, 5, b"drop!"), entry(0x4D4C02, 10, 5, b"out:2")
    reply = bytes(FLOW_STATS_HEADER) + a + b + edited + other
    ids = flow_identities(reply, [len(a), len(b), len(edited), len(other)])
    assert ids[0] == ids[1]  # counted more packets, grew older: the same flow
    assert ids[2] != ids[0] and ids[3] != ids[0]  # edited by hand, or another cookie: not
