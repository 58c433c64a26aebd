"""LbCore driven through a fake OpenFlow 1.3 bridge, with the test holding the clock.

FAUCET's test_valve shape: the core returns messages, the fake bridge
(tests/fakeoftable.py) answers the audit's stats requests and applies what
the core sends back, and the test asks the bridge where packets go.
"""

from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from mptcp_lb.config import parse_config, with_dip_state
from mptcp_lb.mptcp_codec import (CLASS_MP_CAPABLE, TCPOPT_EXPERIMENTAL, key_to_token, parse_key_carrier,
                                  parse_tcp_options, second_chance_mac, slice_of, tag_mac)
from ovs_flows.compiler import ICMP_METER, PUNT_METER
from ovs_flows.ofctl_text import flow_text
from ryu_app.core import AUDIT_STALE, LbCore
from tests.fakeoftable import FakeOFTable
from tests.unit.test_compiler import FABRIC, VIP, dip_of, tagged, tcp, token_config

DPID = 0x1001  # mux1 of examples/port.yaml
AUDIT = [parser.OFPMeterConfigStatsRequest, parser.OFPGroupDescStatsRequest, parser.OFPFlowStatsRequest,
         parser.OFPGroupStatsRequest]


def kinds(msgs) -> list:
    return [type(m) for m in msgs]


def run_audit(core, bridge, requests, now):
    """Answer an audit as the bridge would and apply what the core sends back.

    The bridge answers every request before it reads the fixes (they were all
    sent at once), as OVS does. Returns (the messages applied, the next
    audit's requests if the core started one).
    """
    assert kinds(requests) == AUDIT
    replies = [bridge.stats_reply(r) for r in requests]
    core.meter_config_reply(DPID, replies[0])
    core.group_desc_reply(DPID, replies[1])
    fixes = core.flow_stats_reply(DPID, replies[2])
    next_audit = core.group_stats_reply(DPID, replies[3], now)
    assert all(m.datapath is None for m in [*fixes, *next_audit])
    for m in fixes:
        bridge.apply(m)
    return fixes, next_audit


def connected(config, now=0.0):
    """A core and the bridge of its first MUX, converged by one audit."""
    core, bridge = LbCore(config), FakeOFTable([])
    fixes, next_audit = run_audit(core, bridge, core.mux_connected(DPID, now), now + 0.1)
    assert fixes and next_audit == []
    return core, bridge


def mux_status(core) -> dict:
    (status,) = [m for m in core.snapshot()["muxes"] if m["dpid"] == DPID]
    return status


@pytest.fixture
def config(raw_config):
    return parse_config(raw_config)


def test_connect_audit_converges_the_bridge_and_the_next_audit_sends_nothing(config):
    core, bridge = LbCore(config), FakeOFTable([])
    requests = core.mux_connected(DPID, now=0.0)
    fixes, next_audit = run_audit(core, bridge, requests, now=0.1)
    # the meter and the group before their flows
    assert kinds(fixes[:3]) == [parser.OFPMeterMod, parser.OFPGroupMod, parser.OFPBarrierRequest]
    assert next_audit == []
    for dip in config.vips[0].dips:
        assert dip_of(bridge, tcp(dip.announce_port), config) == dip.id
    assert {dip_of(bridge, tcp(80, sport=s), config) for s in range(40000, 40100)} == {1, 2, 3}
    assert bridge.forward(tcp(443)) == []
    assert run_audit(core, bridge, core.audit(DPID, now=2.0), now=2.1) == ([], [])
    status = mux_status(core)
    assert status["connected"] and status["resyncs"] == 1 and status["flows"] == len(core.compiled["mux1"].flows)


def test_a_flow_deleted_by_hand_is_restored(config):
    core, bridge = connected(config)
    dip2 = config.vips[0].dip(2)
    (flow,) = [f for f in bridge.flows if core.compiled["mux1"].flow_dip.get(f.cookie) == ("web", 2)]
    bridge.delete_by_hand(flow)
    assert dip_of(bridge, tcp(dip2.announce_port), config) is None  # now falls to the VIP's drop rule
    (removed,) = bridge.removed
    fixes, _ = run_audit(core, bridge, core.flow_removed(DPID, removed, now=1.0), now=1.1)
    assert fixes == [flow]
    assert dip_of(bridge, tcp(dip2.announce_port), config) == 2
    assert mux_status(core)["resyncs"] == 2


def test_audits_are_coalesced(config):
    core = LbCore(config)
    assert len(core.mux_connected(DPID, now=0.0)) == 4  # meters, groups, flows, counters
    assert core.audit(DPID, now=0.1) == []  # one is in flight: this one is only noted as due
    ours = SimpleNamespace(cookie=core.compiled["mux1"].flows[0].cookie)
    assert core.flow_removed(DPID, ours, now=0.2) == []
    assert core.flow_removed(DPID, SimpleNamespace(cookie=0x1234), now=0.2) == []  # not our flow
    assert len(core.group_stats_reply(DPID, [], now=0.3)) == 4  # the audit ended; the due one starts
    assert core.group_stats_reply(DPID, [], now=0.4) == []  # and nothing more was due
    assert core.audit(0x9999, now=0.5) == []  # unknown bridge


def test_a_burst_of_flow_removals_costs_one_more_audit(config):
    core, bridge = connected(config)
    requests = core.audit(DPID, now=5.0)
    for f in list(bridge.flows)[:5]:
        bridge.delete_by_hand(f)
    assert all(core.flow_removed(DPID, r, now=5.1) == [] for r in bridge.removed)
    fixes, next_audit = run_audit(core, bridge, requests, now=5.2)
    assert len(fixes) == 5  # the audit in flight already saw the deletes
    assert run_audit(core, bridge, next_audit, now=5.3) == ([], [])  # the one that was due finds nothing


def test_an_unanswered_audit_stops_blocking_once_stale(config):
    core = LbCore(config)
    assert kinds(core.mux_connected(DPID, now=100.0)) == AUDIT
    assert core.audit(DPID, now=100.0 + AUDIT_STALE - 0.01) == []
    assert kinds(core.audit(DPID, now=100.0 + AUDIT_STALE)) == AUDIT  # the bridge lost it: ask again
    assert core.audit(DPID, now=100.0 + AUDIT_STALE + 1) == []  # and that one is in flight
    assert kinds(core.mux_connected(DPID, now=100.0 + AUDIT_STALE + 2)) == AUDIT  # a reconnect forgets it


def test_a_disconnected_mux_is_not_audited(config):
    core, _ = connected(config)
    core.mux_disconnected(DPID)
    assert core.audit(DPID, now=10.0) == [] and not mux_status(core)["connected"]


def test_draining_a_dip_converges_the_bridge(config):
    core, bridge = connected(config)
    before = core.tables["web"].owners
    core.set_config(with_dip_state(config, "web", 2, "draining"), now=3.0)
    fixes, _ = run_audit(core, bridge, core.audit(DPID, now=3.0), now=3.1)
    assert kinds(fixes) == [parser.OFPGroupMod, parser.OFPBarrierRequest]  # the flows stay as they are
    # The whole bucket list, same count: OVS keeps its hash -> bucket map, only DIP 2's slots change.
    assert fixes[0].command == ofp.OFPGC_MODIFY and len(fixes[0].buckets) == len(before)
    assert {dip_of(bridge, tcp(80, sport=s), config) for s in range(40000, 40300)} == {1, 3}
    after = core.tables["web"].owners
    assert all(after[s] == before[s] for s in range(len(before)) if before[s] != 2)
    # DIP 2's old slots reach their new owners marked with DIP 2's address: a second chance there.
    moved = {s for s in range(len(before)) if before[s] == 2}
    assert set(core.tables["web"].transitions) == moved
    mark = second_chance_mac(config.vips[0].dip(2).address)
    assert {str(b.actions[0].value) for i, b in enumerate(fixes[0].buckets) if i in moved} == {mark}
    assert dip_of(bridge, tcp(config.vips[0].dip(2).announce_port), config) == 2  # its connections keep going
    assert run_audit(core, bridge, core.audit(DPID, now=6.0), now=6.1) == ([], [])
    # The transition ends after controller.transition_time: the marks go, the owners stay.
    assert not core.tick(now=3.0 + config.controller.transition_time - 1)
    assert core.tick(now=3.0 + config.controller.transition_time)
    fixes, _ = run_audit(core, bridge, core.audit(DPID, now=400.0), now=400.1)
    assert kinds(fixes) == [parser.OFPGroupMod, parser.OFPBarrierRequest]
    assert core.tables["web"].owners == after and not core.tables["web"].transitions
    assert mark not in {str(b.actions[0].value) for b in fixes[0].buckets}


@pytest.mark.parametrize("hash_method", ["dp_hash", "multipath"])
def test_dip_counters_are_accounted_from_flow_and_group_stats(raw_config, hash_method):
    raw_config["vips"][0]["hash"] = hash_method
    config = parse_config(raw_config)
    core, bridge = connected(config)
    mac_to_dip = {d.mac: d.id for d in config.vips[0].dips}
    expected = {}
    packets = [(tcp(80, sport=s), 100) for s in range(40000, 40060)]
    packets += [(tcp(d.announce_port, sport=40000 + d.id), 1000 * d.id) for d in config.vips[0].dips]
    for packet, size in packets:
        (port, sent), = bridge.forward(packet, size=size)
        counts = expected.setdefault(("web", mac_to_dip[sent["eth_dst"]]), [0, 0])
        counts[0] += 1
        counts[1] += size
    bridge.forward(tcp(443), size=5000)  # dropped: nobody's
    assert run_audit(core, bridge, core.audit(DPID, now=2.0), now=2.1) == ([], [])
    assert mux_status(core)["dip_counters"] == {k: tuple(v) for k, v in expected.items()}
    assert len(expected) == 3


def syn_frame(sport: int) -> bytes:
    """A SYN+MP_CAPABLE from tcp()'s client, as the classifier tags it."""
    return bytes(Ether(src="02:aa:00:00:00:01", dst=tag_mac(CLASS_MP_CAPABLE, 0))
                 / IP(src="10.0.1.1", dst=VIP)
                 / TCP(sport=sport, dport=80, flags="S", options=[("MSS", 1460), (30, bytes([0x01, 0x81]))]))


def test_a_punted_syn_is_seeded_for_the_dip_the_hash_picks(raw_config):
    config = token_config(raw_config)
    core, bridge = connected(config)
    assert list(bridge.meters) == [PUNT_METER, ICMP_METER]
    seen = set()
    for sport in range(40000, 40030):
        punted = tagged(80, tag_mac(CLASS_MP_CAPABLE, 0), sport=sport)
        ((port, _),) = bridge.forward(punted)
        assert port == ofp.OFPP_CONTROLLER
        (out,) = core.packet_in(DPID, syn_frame(sport))
        ((port, sent),) = bridge.packet_out(out, punted)
        dip = config.vips[0].dip({d.mac: d.id for d in config.vips[0].dips}[sent["eth_dst"]])
        assert port == FABRIC and sent["eth_src"] == config.muxes[0].mac
        # The packets after the SYN carry no tag when the client sends no timestamps: the hash must agree.
        assert dip_of(bridge, tcp(80, sport=sport), config) == dip.id
        carrier = [opt for kind, opt in parse_tcp_options(bytes(Ether(out.data)[TCP])[20:]) if kind == TCPOPT_EXPERIMENTAL]
        assert slice_of(key_to_token(parse_key_carrier(carrier[0])), config.vips[0].slice_bits) in dip.slices
        seen.add(dip.id)
    assert seen == {1, 2, 3}
    assert mux_status(core)["punts"] == 30 and mux_status(core)["punt_errors"] == 0


@pytest.mark.parametrize("total_length", [20, 1500, 0xFFFF])
def test_a_punted_syn_whose_ip_total_length_lies_is_a_counted_punt_error(raw_config, total_length):
    core, _ = connected(token_config(raw_config))
    frame = bytearray(syn_frame(40000))
    frame[16:18] = total_length.to_bytes(2, "big")
    assert core.packet_in(DPID, bytes(frame)) == []
    assert mux_status(core)["punt_errors"] == 1 and mux_status(core)["punts"] == 0


def test_a_packet_in_for_no_seed_mode_vip_is_dropped_and_counted(raw_config):
    config = token_config(raw_config, key_source="pool")
    core, _ = connected(config)
    assert core.packet_in(DPID, syn_frame(40000)) == []
    assert mux_status(core)["punt_errors"] == 1
    assert core.packet_in(0x9999, syn_frame(40000)) == []  # not a MUX


# ------------------------------------------------------------------ health and restarts


def fail(core, dip, now, times=3, vip="web"):
    changed = [core.health_result(vip, dip, "connection refused", now + i * 0.5) for i in range(times)]
    return changed


def test_a_dead_dip_leaves_the_table_after_fall_failures_and_returns_after_rise(config):
    core, bridge = connected(config)
    before = core.tables["web"].owners
    assert fail(core, 2, now=10.0) == [False, False, True]  # fall: 3
    assert 2 not in core.tables["web"].owners
    assert all(core.tables["web"].owners[s] == before[s] for s in range(len(before)) if before[s] != 2)
    run_audit(core, bridge, core.audit(DPID, now=12.0), now=12.1)
    assert {dip_of(bridge, tcp(80, sport=s), config) for s in range(40000, 40300)} == {1, 3}
    assert core.snapshot()["health"][("web", 2)]["state"] == "down"
    assert core.health_result("web", 2, "", now=13.0) is False  # rise: 2
    assert core.health_result("web", 2, "", now=13.5) is True
    assert core.tables["web"].owners == before
    # Its slots come back in transition from the DIPs that held them meanwhile.
    assert {t.previous for t in core.tables["web"].transitions.values()} <= {1, 3}


def test_every_dip_down_fails_open(config, caplog):
    core, _ = connected(config)
    before = core.tables["web"].owners
    for dip in (1, 2):
        fail(core, dip, now=10.0)
    assert set(core.tables["web"].owners) == {3}
    fail(core, 3, now=20.0)
    assert core.tables["web"].owners == before  # all down: all keep their slots
    assert "every active DIP is down; failing open" in caplog.text


def test_health_of_a_removed_dip_or_unknown_vip_changes_nothing(config):
    core, _ = connected(config)
    assert fail(core, 9, now=1.0) == [False] * 3
    assert fail(core, 1, now=1.0, vip="nope") == [False] * 3


def test_runtime_state_restores_drains_health_and_transitions(config):
    from mptcp_lb.config import with_runtime_changes

    core, _ = connected(config)
    core.set_config(with_dip_state(config, "web", 2, "draining"), now=50.0)
    fail(core, 3, now=60.0)
    state = core.runtime_state()
    assert state["changes"] == {"web": {"removed": [], "added": [], "states": {"2": "draining"}}}
    restarted = LbCore(with_runtime_changes(config, state["changes"]), now=61.0, base=config, restored=state)
    assert restarted.config == core.config
    assert restarted.tables == core.tables  # the same owners and the same transitions, carried on
    assert restarted.in_transition_from("web", 2, now=61.0) == 50.0 + config.controller.transition_time


def test_the_seed_punt_flow_expires_unless_renewed_and_keepalive_renews_it(raw_config):
    config = token_config(raw_config)
    core, bridge = connected(config)
    renewals = core.keepalive(DPID)
    assert [f.hard_timeout for f in renewals] == [2] and "controller" in flow_text(renewals[0])
    assert all(f.hard_timeout == 0 for f in core.compiled["mux1"].flows if f not in renewals
               and "controller" not in flow_text(f))
    # The bridge holds it with its timeout: the next audit finds nothing to fix.
    assert run_audit(core, bridge, core.audit(DPID, now=5.0), now=5.1) == ([], [])
    core.mux_disconnected(DPID)
    assert core.keepalive(DPID) == []


def test_a_connection_claiming_a_mux_is_admitted_only_from_its_pins_and_only_once(raw_config):
    pin = "ab" * 32
    raw_config["muxes"][0].update(pin_address="127.0.0.1", pin_cert_sha256=pin.upper())
    core = LbCore(parse_config(raw_config))
    assert core.admit(DPID, "127.0.0.1", pin, live=False) is None
    assert "not its pinned address 127.0.0.1" in core.admit(DPID, "10.9.9.9", pin, live=False)
    assert "presents certificate none (no TLS)" in core.admit(DPID, "127.0.0.1", None, live=False)
    assert "not its pinned" in core.admit(DPID, "127.0.0.1", "cd" * 32, live=False)
    assert "a live connection already holds" in core.admit(DPID, "127.0.0.1", pin, live=True)
    assert core.admit(0x1002, "10.9.9.9", None, live=False) is None  # mux2 has no pins
    assert core.admit(0x9999, "10.9.9.9", None, live=True) is None  # not a MUX: left alone, not refused
    assert mux_status(core)["refused"] == 4
