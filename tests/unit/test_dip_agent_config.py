"""What the DIP agent takes from the config for its programs and host (dip_agent/main.py), without a kernel."""

import socket

from dip_agent.dip_abi import pack_peer
from dip_agent.main import dip_programs, find_dip
from mptcp_lb.config import parse_config
from tests.unit.test_config import dual_stack


def test_a_dual_stack_vip_gives_the_programs_its_ipv6_address_and_the_peers_ipv6_addresses(raw_config):
    vip, dip = find_dip(parse_config(dual_stack(raw_config)), 2)
    programs = dip_programs(vip, dip, interface="eth0")
    assert programs.vip == "10.0.0.100" and programs.vip6 == "fd00:10::100"
    # Second chance names the previous owner by its IPv4 address; over IPv6 the packet goes to its IPv6 one.
    assert sorted(programs._peers) == sorted([pack_peer("10.2.0.1", "fd00:12::1"), pack_peer("10.2.0.3", "fd00:12::3")])
    assert pack_peer("10.2.0.1", "fd00:12::1")[0] == socket.inet_aton("10.2.0.1")


def test_an_ipv4_vip_gives_the_programs_no_ipv6(raw_config):
    raw_config["vips"][0]["dips"][0]["address6"] = "fd00:12::1"  # a DIP's address6 alone serves nothing
    vip, dip = find_dip(parse_config(raw_config), 2)
    programs = dip_programs(vip, dip, interface="eth0")
    assert programs.vip6 is None and programs._peers == []


def test_a_poll_interval_beyond_the_idle_one_is_refused_before_anything_is_loaded():
    import pytest

    from dip_agent.programs import DipPrograms

    with pytest.raises(ValueError, match=r"poll_interval 0.5 is not in \(0, 0.2\]"):
        DipPrograms("eth0", "10.0.0.100", 80, 1, "none", poll_interval=0.5)
