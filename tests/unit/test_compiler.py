from dataclasses import replace

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from mptcp_lb.config import ConfigError, parse_config, with_dip_state
from mptcp_lb.slots import table_for as slot_table
from ovs_flows.compiler import ICMP_METER, compile_mux
from ovs_flows.ofctl_text import flow_text, group_text
from tests.fakeoftable import FakeOFTable

VIP = "10.0.0.100"
UPLINK, FABRIC = 1, 2


def tcp(dst_port, src="10.0.1.1", sport=40000, dst=VIP):
    return {"in_port": UPLINK, "eth_src": "02:aa:00:00:00:01", "eth_dst": "02:00:00:01:00:01", "eth_type": 0x0800,
            "ip_proto": 6, "ipv4_src": src, "ipv4_dst": dst, "tcp_src": sport, "tcp_dst": dst_port}


@pytest.fixture
def config(raw_config):
    return parse_config(raw_config)


def table_for(config, mux_index=0):
    return FakeOFTable(compile_mux(config, config.muxes[mux_index]).messages)


def dip_of(table, packet, config):
    out = table.forward(packet)
    if not out:
        return None
    (port, pkt), = out
    assert port == FABRIC
    return {d.mac: d.id for d in config.vips[0].dips}[pkt["eth_dst"]]


def test_announced_ports_reach_their_dip(config):
    table = table_for(config)
    for dip in config.vips[0].dips:
        for port in (dip.ports.start, dip.announce_port, dip.ports.end, (dip.ports.start + dip.ports.end) // 2):
            assert dip_of(table, tcp(port), config) == dip.id


def test_service_port_is_hashed_over_all_dips_consistently(config):
    t1, t2 = table_for(config, 0), table_for(config, 1)
    seen = set()
    for sport in range(40000, 40200):
        d1, d2 = dip_of(t1, tcp(80, sport=sport), config), dip_of(t2, tcp(80, sport=sport), config)
        assert d1 == d2 is not None
        seen.add(d1)
    assert seen == {1, 2, 3}


def test_unknown_vip_traffic_and_other_addresses_are_dropped(config):
    table = table_for(config)
    assert table.forward(tcp(443)) == []
    assert table.forward(tcp(65000)) == []
    assert table.forward({**tcp(80), "ip_proto": 17, "tcp_dst": None}) == []
    assert table.forward(tcp(80, dst="10.0.0.101")) == []


@pytest.mark.parametrize("address", ["10.1.1.1", VIP])
def test_arp_is_answered_by_flows(config, address):
    table = table_for(config)
    req = {"in_port": UPLINK, "eth_src": "02:aa:00:00:00:09", "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_op": 1, "arp_sha": "02:aa:00:00:00:09", "arp_spa": "10.1.1.254", "arp_tha": "00:00:00:00:00:00",
           "arp_tpa": address}
    (port, reply), = table.forward(req)
    assert port == UPLINK
    assert reply["arp_op"] == 2 and reply["eth_dst"] == "02:aa:00:00:00:09"
    assert reply["eth_src"] == reply["arp_sha"] == "02:00:00:01:00:01"
    assert reply["arp_spa"] == address and reply["arp_tpa"] == "10.1.1.254"
    assert reply["arp_tha"] == "02:aa:00:00:00:09"
    assert table.forward({**req, "arp_tpa": "10.1.1.7"}) == []


def test_draining_dip_gets_no_new_connections_but_keeps_its_ports(config):
    drained = with_dip_state(config, "web", 2, "draining")
    table = table_for(drained)
    dips = {dip_of(table, tcp(80, sport=s), drained) for s in range(40000, 40300)}
    assert dips == {1, 3}
    assert dip_of(table, tcp(8192), drained) == 2


def test_dip_ranges_compile_to_fewest_masked_matches(config):
    dips = list(config.vips[0].dips)
    dips[0] = replace(dips[0], ports=type(dips[0].ports)(4000, 8191), announce_port=4000)
    odd = config.with_vip(replace(config.vips[0], dips=tuple(dips)))
    texts = [flow_text(f) for f in compile_mux(odd, odd.muxes[0]).flows]
    dip1 = [t for t in texts if "02:00:00:02:00:01->eth_dst" in t and "tcp," in t]
    # 4000-4095 = 4000/0xffe0 (4000-4031) + 4032/0xffc0 (4032-4095); then 4096-8191 in one.
    assert [t.split("tp_dst=")[1].split(",")[0] for t in dip1] == ["0xfa0/0xffe0", "0xfc0/0xffc0", "0x1000/0xf000"]
    table = FakeOFTable(compile_mux(odd, odd.muxes[0]).messages)
    assert dip_of(table, tcp(3999), odd) is None and dip_of(table, tcp(4000), odd) == 1


def test_messages_need_no_datapath_and_cookies_identify_flows(config):
    compiled = compile_mux(config, config.muxes[0])
    assert all(m.datapath is None for m in compiled.messages)
    # meters, then groups, before the flows that use them
    assert compiled.messages[:len(compiled.meters) + 1] == [*compiled.meters, compiled.groups[0]]
    cookies = [f.cookie for f in compiled.flows]
    assert len(set(cookies)) == len(cookies) and all(c >> 48 == 0x4D4C for c in cookies)
    assert all(f.flags & ofp.OFPFF_SEND_FLOW_REM for f in compiled.flows)
    assert compile_mux(config, config.muxes[0]).flows[3].cookie == compiled.flows[3].cookie  # deterministic
    assert sorted(compiled.flow_dip.values()) == [("web", 1), ("web", 2), ("web", 3)]


def test_flow_without_its_group_is_rejected_like_ovs(config):
    compiled = compile_mux(config, config.muxes[0])
    with pytest.raises(ValueError, match="BAD_OUT_GROUP"):
        FakeOFTable(compiled.flows)


def test_text_form(config):
    compiled = compile_mux(config, config.muxes[0])
    assert group_text(compiled.groups[0]).startswith("group_id=1,type=select,bucket=weight:1,actions=")
    texts = [flow_text(f) for f in compiled.flows]
    assert any(",tcp,in_port=1,nw_dst=10.0.0.100,tp_dst=80,actions=group:1" in t for t in texts)
    assert texts[-1].endswith("table=0,priority=0,send_flow_rem,actions=drop")


def test_4095_dips_compile(raw_config):
    dips = [{"id": i, "address": f"10.{2 + i // 250}.{i % 250}.1", "mac": f"02:00:00:03:{i >> 8:02x}:{i & 255:02x}",
             "ports": f"{2048 + i * 15}-{2048 + i * 15 + 14}"} for i in range(1, 4096)]
    raw_config["vips"][0]["dips"] = dips
    with pytest.raises(ConfigError, match=r"vips\[0\].slots: 256 slots for 4095 active DIPs"):
        parse_config(raw_config)
    raw_config["vips"][0].update(hash="multipath", slots=4096)
    config = parse_config(raw_config)
    compiled = compile_mux(config, config.muxes[0])
    slots = [f for f in compiled.flows if f.table_id == 1]
    assert len(slots) == 4096 and compiled.groups == []
    assert {dip for _, dip in compiled.flow_dip.values()} == set(range(1, 4096))  # every DIP's port flows
    # compile time is measured in bench/, not asserted here


def token_config(raw_config, mode="token", key_source="seed", slice_bits=4):
    vip = raw_config["vips"][0]
    vip.update(mode=mode, key_source=key_source, slice_bits=slice_bits)
    if mode == "token":
        for d in vip["dips"]:
            d.pop("ports")
    return parse_config(raw_config)


def tagged(dst_port, mac, **kw):
    return {**tcp(dst_port, **kw), "eth_dst": mac}


@pytest.mark.parametrize("key_source", ["seed", "pool"])
def test_server_id_and_join_slice_tags_steer(raw_config, key_source):
    from mptcp_lb.mptcp_codec import CLASS_MP_JOIN, CLASS_TIMESTAMP, tag_mac

    config = token_config(raw_config, key_source=key_source)
    table = table_for(config)
    for dip in config.vips[0].dips:
        assert dip_of(table, tagged(80, tag_mac(CLASS_TIMESTAMP, dip.id)), config) == dip.id
        for s in dip.slices:
            token = (s << 28) | 0x0ABCDEF
            assert dip_of(table, tagged(80, tag_mac(CLASS_MP_JOIN, token >> 8)), config) == dip.id


def test_seed_mode_punts_mpc_syns_through_the_meter(raw_config):
    from mptcp_lb.mptcp_codec import CLASS_MP_CAPABLE, tag_mac

    config = token_config(raw_config)
    compiled = compile_mux(config, config.muxes[0])
    # The backstop behind the classifier's budgets: twice controller.punt_rate for the one seed-mode VIP.
    assert [m.meter_id for m in compiled.meters] == [1, 2] and compiled.meters[0].bands[0].rate == 200
    (port, pkt), = FakeOFTable(compiled.messages).forward(tagged(80, tag_mac(CLASS_MP_CAPABLE, 0)))
    assert port == ofp.OFPP_CONTROLLER
    punt = [f for f in compiled.flows if "controller" in flow_text(f)]
    assert len(punt) == 1 and "actions=meter:1,controller(max_len=65535)" in flow_text(punt[0])


def test_seed_mode_hash_is_what_the_controller_predicts(raw_config):
    from ovs_flows.compiler import hashed_dip

    config = token_config(raw_config)
    t1, t2 = table_for(config, 0), table_for(config, 1)
    slots = slot_table(config.vips[0])
    seen = set()
    for sport in range(40000, 40100):
        predicted = hashed_dip(config.vips[0], slots, "10.0.1.1", VIP, sport, 80).id
        assert dip_of(t1, tcp(80, sport=sport), config) == predicted
        # the other MUX has other MACs and must still agree
        assert dip_of(t2, {**tcp(80, sport=sport), "eth_dst": "02:00:00:01:00:02", "eth_src": "02:bb:00:00:00:07"},
                      config) == predicted
        seen.add(predicted)
    assert seen == {1, 2, 3}


def test_unknown_server_id_falls_back_to_the_hash(raw_config):
    from mptcp_lb.mptcp_codec import CLASS_TIMESTAMP, tag_mac

    config = token_config(raw_config, key_source="pool")
    assert dip_of(table_for(config), tagged(80, tag_mac(CLASS_TIMESTAMP, 99)), config) in {1, 2, 3}


def test_hybrid_keeps_announced_ports_and_adds_tokens(raw_config):
    from mptcp_lb.mptcp_codec import CLASS_MP_JOIN, CLASS_TIMESTAMP, tag_mac

    config = token_config(raw_config, mode="hybrid", key_source="pool")
    table = table_for(config)
    assert dip_of(table, tcp(8192), config) == 2
    # a JOIN to DIP 2's announced port whose token is DIP 1's is still steered by port
    assert dip_of(table, tagged(8192, tag_mac(CLASS_MP_JOIN, 0)), config) == 2
    assert dip_of(table, tagged(80, tag_mac(CLASS_TIMESTAMP, 3)), config) == 3
    assert [m.meter_id for m in compile_mux(config, config.muxes[0]).meters] == [ICMP_METER]  # pool mode punts nothing


def test_drained_dip_leaves_the_seed_hash_but_keeps_its_tags(raw_config):
    from mptcp_lb.mptcp_codec import CLASS_TIMESTAMP, tag_mac
    from ovs_flows.compiler import hashed_dip

    config = with_dip_state(token_config(raw_config), "web", 1, "draining")
    table = table_for(config)
    assert {dip_of(table, tcp(80, sport=s), config) for s in range(40000, 40200)} == {2, 3}
    slots = slot_table(config.vips[0])
    assert {hashed_dip(config.vips[0], slots, "10.0.1.1", VIP, s, 80).id for s in range(40000, 40200)} == {2, 3}
    assert dip_of(table, tagged(80, tag_mac(CLASS_TIMESTAMP, 1)), config) == 1


def test_port_mode_with_multipath_needs_no_group(raw_config):
    from ovs_flows.compiler import hashed_dip

    raw_config["vips"][0]["hash"] = "multipath"
    config = parse_config(raw_config)
    compiled = compile_mux(config, config.muxes[0])
    assert compiled.groups == [] and [m.meter_id for m in compiled.meters] == [ICMP_METER]
    table = FakeOFTable([*compiled.meters, *compiled.flows])  # no group has to exist first
    slots = slot_table(config.vips[0])
    seen = set()
    for sport in range(40000, 40060):
        got = dip_of(table, tcp(80, sport=sport), config)
        assert got == hashed_dip(config.vips[0], slots, "10.0.1.1", VIP, sport, 80).id
        seen.add(got)
    assert seen == {1, 2, 3}
    assert dip_of(table, tcp(12288), config) == 3


def test_only_the_router_side_reaches_vips_and_arp(config):
    table = table_for(config)
    assert table.forward({**tcp(80), "in_port": FABRIC}) == []
    assert table.forward({**tcp(4096), "in_port": FABRIC}) == []
    arp = {"in_port": FABRIC, "eth_src": "02:aa:00:00:00:09", "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_op": 1, "arp_sha": "02:aa:00:00:00:09", "arp_spa": "10.2.0.9", "arp_tha": "00:00:00:00:00:00",
           "arp_tpa": "10.1.1.1"}
    assert table.forward(arp) == []


@pytest.mark.parametrize("mode", ["port", "token", "hybrid"])
def test_fast_matches_serialize_as_os_ken_builds_them(raw_config, mode):
    """ovs_flows.compiler.match against parser.OFPMatch(**fields): same fields, order and bytes."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    config = parse_config(raw_config) if mode == "port" else token_config(raw_config, mode=mode)
    for flow in compile_mux(config, config.muxes[0]).flows:
        reference = parser.OFPMatch(**dict(flow.match.items()))
        assert flow.match.items() == reference.items()
        ours, theirs = bytearray(), bytearray()
        flow.match.serialize(ours, 0)
        reference.serialize(theirs, 0)
        assert ours == theirs, flow_text(flow)


def icmp(type_, code, in_port=UPLINK):
    return {"in_port": in_port, "eth_src": "02:aa:00:00:00:01", "eth_dst": "02:00:00:01:00:01", "eth_type": 0x0800,
            "ip_proto": 1, "ipv4_src": "10.0.9.1", "ipv4_dst": VIP, "icmpv4_type": type_, "icmpv4_code": code}


@pytest.mark.parametrize("mode", ["port", "token"])
def test_fragmentation_needed_to_the_vip_reaches_every_dip_through_its_meter(raw_config, mode):
    raw_config["controller"] = {**raw_config.get("controller", {}), "icmp_rate": 50}
    config = token_config(raw_config) if mode == "token" else parse_config(raw_config)
    compiled = compile_mux(config, config.muxes[0])
    table = FakeOFTable(compiled.messages)
    copies = table.forward(icmp(3, 4))
    assert [p for p, _ in copies] == [FABRIC] * 3
    assert [pkt["eth_dst"] for _, pkt in copies] == [d.mac for d in config.vips[0].dips]
    (pmtu,) = [f for f in compiled.flows if "icmp" in flow_text(f)]
    assert flow_text(pmtu).count("meter:2") == 1
    (meter,) = [m for m in compiled.meters if m.meter_id == ICMP_METER]
    assert meter.bands[0].rate == 50
    # Other ICMP to the VIP is dropped, and nothing from the fabric side is copied back.
    assert table.forward(icmp(8, 0)) == [] and table.forward(icmp(3, 3)) == []
    assert table.forward(icmp(3, 4, in_port=FABRIC)) == []


# ---------------------------------------------------------------- IPv6: a dual-stack VIP (address6)

VIP6 = "fd00:10::100"


def dual_stack_config(raw_config, mode="token", **vip):
    from tests.unit.test_config import dual_stack

    raw = dual_stack(raw_config, mode)
    raw["vips"][0].update(vip)
    return parse_config(raw)


def tcp6(dst_port, src="fd00:10:3::1", sport=40000, dst=VIP6):
    return {"in_port": UPLINK, "eth_src": "02:aa:00:00:00:01", "eth_dst": "02:00:00:01:00:01", "eth_type": 0x86DD,
            "ip_proto": 6, "ipv6_src": src, "ipv6_dst": dst, "tcp_src": sport, "tcp_dst": dst_port}


@pytest.mark.parametrize("hash_method", ["dp_hash", "multipath"])
def test_ipv6_shares_the_vips_slots_and_tags(raw_config, hash_method):
    from mptcp_lb.mptcp_codec import CLASS_MP_JOIN, CLASS_TIMESTAMP, tag_mac

    config = dual_stack_config(raw_config, hash=hash_method, slots=256)
    t1, t2 = table_for(config, 0), table_for(config, 1)
    for dip in config.vips[0].dips:
        assert dip_of(t1, {**tcp6(80), "eth_dst": tag_mac(CLASS_TIMESTAMP, dip.id)}, config) == dip.id
        first = min(dip.slices)
        token = first << (32 - config.vips[0].slice_bits)
        assert dip_of(t1, {**tcp6(80), "eth_dst": tag_mac(CLASS_MP_JOIN, token >> 8)}, config) == dip.id
    seen = set()
    for sport in range(40000, 40120):
        d1, d2 = dip_of(t1, tcp6(80, sport=sport), config), dip_of(t2, tcp6(80, sport=sport), config)
        assert d1 == d2 is not None  # every MUX picks the same slot
        seen.add(d1)
    assert seen == {1, 2, 3}


def test_other_ipv6_traffic_to_the_vip_and_other_addresses_is_dropped(raw_config):
    config = dual_stack_config(raw_config, mode="hybrid")
    table = table_for(config)
    assert table.forward(tcp6(443)) == []
    assert table.forward(tcp6(config.vips[0].dips[0].ports.start)) == []  # no port ranges over IPv6
    assert table.forward({**tcp6(80), "ip_proto": 17}) == []
    assert table.forward(tcp6(80, dst="fd00:10::101")) == []
    assert table.forward({**tcp6(80), "in_port": FABRIC}) == []


def test_an_ipv4_only_config_compiles_no_ipv6_flow(raw_config):
    config = token_config(raw_config)
    texts = [flow_text(f) for f in compile_mux(config, config.muxes[0]).flows]
    assert not [t for t in texts if any(k in t for k in ("tcp6", "icmp6", "ipv6"))]


def solicitation(target, src="fd00:11:1::fe", in_port=UPLINK):
    return {"in_port": in_port, "eth_src": "02:aa:00:00:00:fe", "eth_dst": "33:33:ff:00:00:01", "eth_type": 0x86DD,
            "ip_proto": 58, "ipv6_src": src, "ipv6_dst": "ff02::1:ff00:1", "icmpv6_type": 135, "icmpv6_code": 0,
            "ipv6_nd_target": target, "ipv6_nd_sll": "02:aa:00:00:00:fe"}


@pytest.mark.parametrize("target", ["fd00:11:1::1", VIP6])
def test_neighbour_solicitations_are_answered_by_flows(raw_config, target):
    config = dual_stack_config(raw_config)
    table = table_for(config)
    (port, advert), = table.forward(solicitation(target))
    assert port == UPLINK
    assert advert["eth_dst"] == "02:aa:00:00:00:fe" and advert["eth_src"] == "02:00:00:01:00:01"
    assert advert["ipv6_src"] == target and advert["ipv6_dst"] == "fd00:11:1::fe"
    assert (advert["icmpv6_type"], advert["icmpv6_code"]) == (136, 0)
    assert advert["nd_reserved"] == 0x60000000  # Solicited and Override
    assert advert["nd_options_type"] == 2 and advert["ipv6_nd_tll"] == "02:00:00:01:00:01"
    assert table.forward(solicitation("fd00:11:1::7")) == []
    assert table.forward(solicitation(target, in_port=FABRIC)) == []
    assert table.forward(solicitation(target, src="::")) == []  # duplicate address detection: nobody to answer


def test_ipv6_packet_too_big_reaches_every_dip_through_the_meter(raw_config):
    config = dual_stack_config(raw_config)
    table = table_for(config)
    ptb = {"in_port": UPLINK, "eth_src": "02:aa:00:00:00:01", "eth_dst": "02:00:00:01:00:01", "eth_type": 0x86DD,
           "ip_proto": 58, "ipv6_src": "fd00:10:3::fe", "ipv6_dst": VIP6, "icmpv6_type": 2, "icmpv6_code": 0}
    out = table.forward(ptb)
    assert sorted(pkt["eth_dst"] for _, pkt in out) == sorted(d.mac for d in config.vips[0].dips)
    (flow,) = [f for f in compile_mux(config, config.muxes[0]).flows if "icmp6,icmp_type=2," in flow_text(f)]
    assert "actions=meter:2," in flow_text(flow)
    assert table.forward({**ptb, "icmpv6_type": 1}) == []


@pytest.mark.parametrize("mode", ["token", "hybrid"])
def test_flows_parsed_back_from_the_wire_have_the_same_text(raw_config, mode):
    """The text is a flow's identity: a flow dumped from the switch (bytes, parsed by os-ken) must render the same.

    IPv6 addresses come back in os-ken's own form, and nd_reserved and nd_options_type
    through the OXM fields ovs_flows.oxm_ext registers.
    """
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    config = dual_stack_config(raw_config, mode=mode)
    for flow in compile_mux(config, config.muxes[0]).flows:
        buf = bytearray()
        length = flow.match.serialize(buf, 0)
        match = parser.OFPMatch.parser(bytes(buf), 0)
        instructions = []
        for inst in flow.instructions:
            ibuf = bytearray()
            inst.serialize(ibuf, 0)
            instructions.append(parser.OFPInstruction.parser(bytes(ibuf), 0))
        back = parser.OFPFlowStats(table_id=flow.table_id, priority=flow.priority, hard_timeout=flow.hard_timeout,
                                   flags=flow.flags, cookie=flow.cookie, match=match, instructions=instructions)
        assert length and flow_text(back) == flow_text(flow)
