import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from mptcp_lb.config import parse_config
from mptcp_lb.mptcp_codec import CLASS_MP_CAPABLE, key_to_token, parse_key_carrier, parse_tcp_options, slice_of, tag_mac
from ryu_app.seeding import SeedError, seed_syn
from tests.packets import LINUX_SYN_OPTIONS, MPC_SYN, checksums_ok, tcp_frame

MPC_SYN_OPTIONS = LINUX_SYN_OPTIONS + [MPC_SYN]


@pytest.fixture
def vip(raw_config):
    v = raw_config["vips"][0]
    v.update(mode="token", slice_bits=4)
    for d in v["dips"]:
        d.pop("ports")
    return parse_config(raw_config).vips[0]


def syn(options=MPC_SYN_OPTIONS, dport=80, flags="S", payload=b""):
    """A client's SYN as the MUX punts it: tagged MP_CAPABLE."""
    return tcp_frame(flags, options, payload=payload, src="10.0.3.1", dst="10.0.0.100", dport=dport,
                     eth_src="02:aa:00:00:00:01", eth_dst=tag_mac(CLASS_MP_CAPABLE, 0))


def first_dip(vip, five):
    return vip.dips[1]


def test_key_rides_in_the_syn_and_checksums_are_right(vip):
    seeded = seed_syn(vip, syn(), first_dip)
    assert seeded.dip.id == 2
    out = Ether(seeded.frame)
    raw_opts = bytes(out[TCP])[20:out[TCP].dataofs * 4]
    assert raw_opts.startswith(bytes(Ether(syn())[TCP])[20:36])  # the client's own options, untouched
    carrier = raw_opts[-12:]
    key = parse_key_carrier(carrier)
    assert key is not None and key_to_token(key) == seeded.token
    assert slice_of(seeded.token, 4) in vip.dips[1].slices
    assert checksums_ok(seeded.frame)
    assert out[IP].len == Ether(syn())[IP].len + 12


def test_payload_after_options_is_kept(vip):
    seeded = seed_syn(vip, syn(payload=b"tfo-data"), first_dip)
    assert bytes(Ether(seeded.frame)[TCP].payload) == b"tfo-data"


def test_keys_differ_per_connection(vip):
    tokens = {seed_syn(vip, syn(), first_dip).token for _ in range(20)}
    assert len(tokens) == 20


@pytest.mark.parametrize("frame,message", [
    (syn(options=[("MSS", 1460)]), "not an IPv4 TCP SYN carrying MP_CAPABLE"),
    (syn(flags="SA"), "not an IPv4 TCP SYN carrying MP_CAPABLE"),
    (syn(dport=81), "is not VIP web"),
    (syn(options=[("MSS", 1460), ("Timestamp", (1, 0)), ("Timestamp", (1, 0)), ("NOP", None), ("NOP", None),
                  (30, bytes([0x01, 0x81]) + bytes(8))]), "no room for 12 more"),
])
def test_unseedable_packets_are_named(vip, frame, message):
    with pytest.raises(SeedError, match=message):
        seed_syn(vip, frame, first_dip)


def test_syn_without_room_is_forwarded_unseeded(raw_config):
    from ryu_app.core import LbCore

    v = raw_config["vips"][0]
    v.update(mode="token", slice_bits=4)
    for d in v["dips"]:
        d.pop("ports")
    core = LbCore(parse_config(raw_config))
    assert core.mux_connected(0x1001, now=0.0)
    full = syn(options=[("MSS", 1460), ("Timestamp", (1, 0)), ("Timestamp", (1, 0)), ("NOP", None),
                        ("NOP", None), (30, bytes([0x01, 0x81]) + bytes(8))])
    (out,) = core.packet_in(0x1001, full)
    assert out.data == full  # unchanged, no key: the DIP's pool keys it
    assert core.snapshot()["muxes"][0]["punts_unseeded"] == 1
    assert core.packet_in(0x1001, syn(flags="SA")) == []  # not a SYN(MPC): dropped, counted
    assert core.snapshot()["muxes"][0]["punt_errors"] == 1
    (seeded,) = core.packet_in(0x1001, syn())
    assert len(seeded.data) == len(syn()) + 12 and core.snapshot()["muxes"][0]["punts"] == 1


def test_with_a_key_bank_the_event_thread_only_pops_keys_and_an_empty_bank_sends_syns_on_unseeded(raw_config):
    from mptcp_lb.key_bank import KeyBank
    from ryu_app.core import LbCore

    v = raw_config["vips"][0]
    v.update(mode="token", slice_bits=4)
    for d in v["dips"]:
        d.pop("ports")
    core = LbCore(parse_config(raw_config))
    assert core.mux_connected(0x1001, now=0.0)
    (bits, slices), = core.seed_slices().items()
    bank = KeyBank(bits, slices, per_slice=2)
    core.key_banks = {bits: bank}
    (out,) = core.packet_in(0x1001, syn())
    assert out.data == syn() and core.snapshot()["muxes"][0]["punts_unseeded"] == 1  # empty: on, unseeded
    bank.fill(rounds=2)
    assert bank.stocked() == 2 * len(slices)
    seen = set()
    for _ in range(4):
        (out,) = core.packet_in(0x1001, syn())
        key = parse_key_carrier(dict(parse_tcp_options(out.data[54:54 + (out.data[46] >> 4) * 4 - 20]))[253])
        seen.add(key)
    assert len(seen) == 4 and bank.handed_out == 4  # each key handed out once
