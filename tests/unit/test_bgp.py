"""A MUX's BGP speaker: its config section, the leased flows its sessions cross, and the BIRD config it runs."""

import copy
import shutil
import subprocess

import pytest
import yaml

from mininet_topos.datacenter import router_bird_config
from mptcp_lb.bgp import speaker_config
from mptcp_lb.cli import main
from mptcp_lb.config import ConfigError, parse_config
from mptcp_lb.mptcp_codec import CLASS_TIMESTAMP, tag_mac
from ovs_flows.compiler import compile_mux
from ovs_flows.ofctl_text import flow_text
from ryu_app.core import LbCore
from tests.fakeoftable import FakeOFTable
from tests.unit.test_core import DPID, run_audit
from tests.platform import require_platform

EXAMPLE = "examples/bgp.yaml"
UPLINK, SPEAKER = 1, 3
ROUTER_MAC, SPEAKER_MAC = "02:aa:00:00:00:fe", "02:00:00:01:01:01"


@pytest.fixture
def raw():
    with open(EXAMPLE) as f:
        return yaml.safe_load(f)


def problems(raw_config) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw_config)
    return e.value.problems


def test_the_example_parses_with_defaults(raw):
    bgp = parse_config(raw).muxes[0].bgp
    assert (bgp.speaker_port, bgp.address, bgp.peer, bgp.asn, bgp.peer_asn) == (3, "10.1.1.2", "10.1.1.254", 65001,
                                                                                65000)
    assert (bgp.hold_time, bgp.bfd_interval, bgp.bfd_multiplier, bgp.lease_time) == (3, 0.1, 3, 30)


@pytest.mark.parametrize("key, value, wanted", [
    ("speaker_port", 1, "muxes[0].bgp.speaker_port: 1 is also the MUX's uplink_port"),
    ("speaker_port", 2, "muxes[0].bgp.speaker_port: 2 is also the MUX's fabric_port"),
    ("address", "10.1.1.1", "muxes[0].bgp.address: 10.1.1.1 is the MUX's own address"),
    ("peer", "10.1.1.1", "muxes[0].bgp.peer: 10.1.1.1 is the MUX's own address"),
    ("peer", "10.1.1.2", "muxes[0].bgp.peer: 10.1.1.2 is the speaker's own address"),
    ("mac", "02:00:00:01:00:01", "muxes[0].bgp.mac: 02:00:00:01:00:01 is the MUX's own mac"),
    ("mac", "0a:4d:00:00:00:01", "muxes[0].bgp.mac: 0a:4d:00:00:00:01 is in the tag MAC space"),
    ("peer_asn", 65001, "muxes[0].bgp.peer_asn: 65001 is the speaker's own AS: the session is eBGP"),
    ("address", "10.1.1.300", "muxes[0].bgp.address: '10.1.1.300' is not an IPv4 address"),
    ("address", "224.0.0.5", "muxes[0].bgp.address: '224.0.0.5' is not a unicast host address"),
    ("peer", "127.0.0.1", "muxes[0].bgp.peer: '127.0.0.1' is not a unicast host address"),
    ("address", "10.1.2.1", "muxes[0].bgp.address: 10.1.2.1 is also muxes[1].address"),
    ("address", "10.1.2.2", "muxes[1].bgp.address: 10.1.2.2 is also muxes[0].bgp.address"),
    ("mac", "02:00:00:02:00:03", "muxes[0].bgp.mac: 02:00:00:02:00:03 is also vips[web].dips[3].mac"),
    ("peer", "10.0.0.100", "muxes[0].bgp.peer: 10.0.0.100 is a VIP"),
    ("speaker", 3, "muxes[0].bgp.speaker: unknown key"),
])
def test_a_bad_speaker_is_refused_by_name(raw, key, value, wanted):
    raw["muxes"][0]["bgp"][key] = value
    assert any(p.startswith(wanted) for p in problems(raw)), problems(raw)


def test_a_bad_speaker_is_named_beside_its_muxs_own_problems(raw):
    raw["muxes"][0]["fabric_port"] = 1  # also the uplink: the MUX's own check stops there
    raw["muxes"][0]["bgp"]["asn"] = 0
    found = problems(raw)
    assert "muxes[0].fabric_port: 1 is also the uplink_port" in found
    assert "muxes[0].bgp.asn: 0 is not an integer in 1..4294967295" in found


def test_a_missing_speaker_key_and_a_vip_on_the_speakers_address_are_named(raw):
    bad = copy.deepcopy(raw)
    del bad["muxes"][0]["bgp"]["peer"]
    assert "muxes[0].bgp.peer: missing required key" in problems(bad)
    bad = copy.deepcopy(raw)
    bad["vips"][0]["address"] = "10.1.2.2"
    assert "muxes[1].bgp.address: 10.1.2.2 is also vips[web].address" in problems(bad)


def arp(tpa, in_port=UPLINK, spa="10.1.1.254", sha=ROUTER_MAC):
    return {"in_port": in_port, "eth_src": sha, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1,
            "arp_sha": sha, "arp_spa": spa, "arp_tha": "00:00:00:00:00:00", "arp_tpa": tpa}


def ip(src, dst, in_port=UPLINK, eth_src=ROUTER_MAC, eth_dst=SPEAKER_MAC):
    return {"in_port": in_port, "eth_src": eth_src, "eth_dst": eth_dst, "eth_type": 0x0800, "ip_proto": 6,
            "ipv4_src": src, "ipv4_dst": dst, "tcp_src": 179, "tcp_dst": 40000}


def test_only_the_router_and_the_speaker_reach_each_other_across_the_bridge(raw):
    config = parse_config(raw)
    table = FakeOFTable(compile_mux(config, config.muxes[0]).messages)
    # The router reaches the speaker, even with a classifier tag in the destination MAC, which is put back.
    assert table.forward(arp("10.1.1.2")) == [(SPEAKER, arp("10.1.1.2"))]
    (port, pkt), = table.forward(ip("10.1.1.254", "10.1.1.2", eth_dst=tag_mac(CLASS_TIMESTAMP, 1)))
    assert port == SPEAKER and pkt["eth_dst"] == SPEAKER_MAC
    # Nobody else does: not a host behind the router, not the fabric side.
    assert table.forward(ip("192.0.2.7", "10.1.1.2")) == []
    assert table.forward(arp("10.1.1.2", spa="10.1.1.9")) == []
    assert table.forward(ip("10.2.0.1", "10.1.1.2", in_port=2)) == []
    # The speaker reaches the router, with its own addresses only, and nothing else.
    reply = arp("10.1.1.254", in_port=SPEAKER, spa="10.1.1.2", sha=SPEAKER_MAC)
    assert table.forward(reply) == [(UPLINK, reply)]
    assert table.forward({**reply, "arp_sha": "02:00:00:01:00:01"}) == []
    out = ip("10.1.1.2", "10.1.1.254", in_port=SPEAKER, eth_src=SPEAKER_MAC, eth_dst=ROUTER_MAC)
    assert table.forward(out) == [(UPLINK, out)]
    assert table.forward({**out, "ipv4_dst": "192.0.2.7"}) == []
    assert table.forward({**out, "ipv4_src": "10.0.0.100"}) == []  # no spoofing the VIP from the speaker's port
    assert table.forward({**out, "eth_src": "02:00:00:01:00:01"}) == []
    assert table.forward(ip("10.2.0.1", "10.0.0.100", in_port=SPEAKER, eth_src=SPEAKER_MAC)) == []


def test_the_arp_responder_still_answers_for_the_mux_and_the_vip_beside_the_speaker(raw):
    config = parse_config(raw)
    table = FakeOFTable(compile_mux(config, config.muxes[0]).messages)
    for address in ("10.1.1.1", "10.0.0.100"):
        (port, reply), = table.forward(arp(address))
        assert port == UPLINK and reply["arp_op"] == 2 and reply["arp_sha"] == "02:00:00:01:00:01"


def test_the_speakers_flows_are_leased_and_installed_last(raw):
    config = parse_config(raw)
    flows = compile_mux(config, config.muxes[0]).flows
    leased = [f for f in flows if f.hard_timeout]
    assert len(leased) == 4 and flows[-4:] == leased  # after every flow the VIP needs
    assert all(f.hard_timeout == 30 and f.priority == 310 for f in leased)
    raw["muxes"][0]["bgp"]["lease_time"] = 5
    config = parse_config(raw)
    assert {f.hard_timeout for f in compile_mux(config, config.muxes[0]).flows if f.hard_timeout} == {5}
    assert not [f for f in compile_mux(config, config.muxes[1]).flows if "hard_timeout=5," in flow_text(f)]


def test_the_controller_renews_the_lease_only_once_the_mux_is_programmed_and_while_connected(raw):
    core, bridge = LbCore(parse_config(raw)), FakeOFTable([])
    requests = core.mux_connected(DPID, now=0.0)
    assert core.keepalive(DPID) == []  # not before its first audit has fixed the bridge
    run_audit(core, bridge, requests, now=0.1)
    renewals = core.keepalive(DPID)
    assert sorted(map(flow_text, renewals)) == sorted(flow_text(f) for f in core.compiled["mux1"].flows[-4:])
    core.mux_disconnected(DPID)
    assert core.keepalive(DPID) == []  # the flows lapse, the sessions through them end, the MUX is withdrawn
    core.mux_connected(DPID, now=1.0)
    assert core.keepalive(DPID) == []  # reconnected: programmed again first


def test_the_speaker_announces_every_vip_with_the_mux_as_next_hop(raw):
    raw["vips"].append({**copy.deepcopy(raw["vips"][0]), "name": "api", "address": "10.0.0.101"})
    for d in raw["vips"][1]["dips"]:
        d["address"] = d["address"].replace("10.2.0.", "10.2.1.")
        d["mac"] = d["mac"].replace(":02:00:", ":02:01:")
    config = parse_config(raw)
    text = speaker_config(config, config.muxes[1])
    assert "route 10.0.0.100/32 blackhole;" in text and "route 10.0.0.101/32 blackhole;" in text
    assert "next hop address 10.1.2.1;" in text and "local 10.1.2.2 as 65001;" in text
    assert "neighbor 10.1.2.254 as 65000;" in text and "bfd on;" in text
    assert "interval 100 ms;" in text and "multiplier 3;" in text and "import none;" in text


def test_bird_accepts_the_speaker_configs_and_the_demo_routers(raw, tmp_path):
    require_platform(None if shutil.which("bird") else "bird (Debian bird2) is not installed", "BGP")
    config = parse_config(raw)
    texts = {mux.name: speaker_config(config, mux) for mux in config.muxes}
    texts["router"] = router_bird_config("t0")
    for name, text in texts.items():
        path = tmp_path / f"{name}.conf"
        path.write_text(text)
        check = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, (name, check.stderr)


def test_the_cli_prints_it_or_names_the_mux_without_a_speaker(raw, tmp_path, capsys):
    assert main(["bird-config", EXAMPLE, "--mux", "mux2"]) == 0
    config = parse_config(raw)
    assert capsys.readouterr().out == speaker_config(config, config.muxes[1])
    assert main(["bird-config", "examples/port.yaml", "--mux", "mux1"]) == 2
    assert "'mux1' has no bgp section in examples/port.yaml" in capsys.readouterr().err
    assert main(["bird-config", EXAMPLE, "--mux", "mux9"]) == 2
    assert "'mux9' is not a MUX" in capsys.readouterr().err
