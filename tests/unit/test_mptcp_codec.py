"""mptcp_codec: crypto known answers, slices, option round trips, the reference classifier and frame editing.

Frames come from tests/packets.py: scapy's options where scapy builds them,
and raw option bytes (malformed ones, any data offset) where it will not, so
every case states its exact bytes.
"""

import hashlib
import random
import struct
from collections import Counter

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, IPOption_NOP, Raw

from mptcp_lb import mptcp_codec as mc
from mptcp_lb.mptcp_codec import (FiveTuple, MpCapable, MpJoinSyn, NoOptionRoom, OptionError, Timestamp,
                                  append_tcp_option, build_key_carrier, build_mp_capable, build_mp_join_syn,
                                  build_timestamp, check_option_room, classify_frame, key_to_idsn, key_to_token,
                                  make_key, parse_key_carrier, parse_mpc_syn, parse_mptcp, parse_tcp_options,
                                  parse_timestamp, slice_of, tag_mac)
from tests.packets import LINUX_SYN_OPTIONS, MPC_SYN, ether_frame, tcp_frame

KEY = bytes.fromhex("0123456789abcdef")
KEY2 = bytes.fromhex("fedcba9876543210")
TOKEN = 0x11223344


# --- crypto ---------------------------------------------------------------------

@pytest.mark.parametrize("key", [KEY, KEY2, bytes(8), b"\xff" * 8])
def test_token_and_idsn_are_sha256_prefix_and_suffix(key):
    digest = hashlib.sha256(key).digest()
    assert key_to_token(key) == struct.unpack("!I", digest[:4])[0]
    assert key_to_idsn(key) == struct.unpack("!Q", digest[24:32])[0]


def test_known_answer_for_a_fixed_key():
    # sha256(01 23 45 67 89 ab cd ef) = 55c53f5d490297900cefa825d0c8e8e9532ee8a118abe7d8570762cd38be9818
    assert hashlib.sha256(KEY).hexdigest().startswith("55c53f5d")
    assert key_to_token(KEY) == 0x55C53F5D
    assert key_to_idsn(KEY) == 0x570762CD38BE9818


def test_v0_uses_sha1():
    digest = hashlib.sha1(KEY).digest()
    assert key_to_token(KEY, version=0) == struct.unpack("!I", digest[:4])[0]
    assert key_to_idsn(KEY, version=0) == struct.unpack("!Q", digest[12:20])[0]


@pytest.mark.parametrize("key", [b"", b"\x00" * 7, b"\x00" * 9, "01234567", None])
def test_key_must_be_8_bytes(key):
    with pytest.raises(ValueError, match="key"):
        key_to_token(key)
    with pytest.raises(ValueError, match="key"):
        key_to_idsn(key)


def test_unknown_version_is_refused():
    with pytest.raises(ValueError, match="version"):
        key_to_token(KEY, version=2)


# --- slices and keys --------------------------------------------------------------

@pytest.mark.parametrize("token, bits, expected", [
    (0xFFFFFFFF, 12, 0xFFF), (0x80000000, 1, 1), (0x7FFFFFFF, 1, 0),
    (0x12345678, 8, 0x12), (0x12345678, 12, 0x123), (0x000FFFFF, 12, 0),
])
def test_slice_is_the_high_bits(token, bits, expected):
    assert slice_of(token, bits) == expected


@pytest.mark.parametrize("bits", [0, 13, -1, 1.5, None])
def test_slice_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="slice_bits"):
        slice_of(0, bits)
    with pytest.raises(ValueError, match="slice_bits"):
        make_key({0}, bits)


@pytest.mark.parametrize("token", [-1, 1 << 32])
def test_token_must_be_u32(token):
    with pytest.raises(ValueError, match="token"):
        slice_of(token, 4)


@pytest.mark.parametrize("slices, bits", [({5}, 4), ({0, 4095}, 12), (frozenset({1}), 1), ({3, 9, 200}, 8)])
def test_made_keys_land_in_their_slices(slices, bits):
    for _ in range(50):
        key = make_key(slices, bits)
        assert len(key) == 8
        assert slice_of(key_to_token(key), bits) in slices


def test_make_key_rejects_draws_outside_the_slices():
    hits = [k for k in (i.to_bytes(8, "big") for i in range(10_000)) if slice_of(key_to_token(k), 4) == 7]
    misses = [k for k in (i.to_bytes(8, "big") for i in range(100)) if slice_of(key_to_token(k), 4) != 7]

    class Scripted:
        def __init__(self, draws):
            self.draws = iter(draws)
            self.calls = 0

        def token_bytes(self, n):
            assert n == 8
            self.calls += 1
            return next(self.draws)

    rng = Scripted(misses[:3] + hits[:1])
    assert make_key({7}, 4, rng=rng) == hits[0]
    assert rng.calls == 4


def test_made_keys_spread_over_slices_and_low_bits():
    rng = random.Random(1)
    rng.token_bytes = rng.randbytes
    slices = set(range(8))
    tokens = [key_to_token(make_key(slices, 6, rng=rng)) for _ in range(4000)]
    per_slice = Counter(slice_of(t, 6) for t in tokens)
    assert set(per_slice) == slices
    assert all(350 < c < 650 for c in per_slice.values()), per_slice  # 500 expected each
    low = Counter(t & 0xF for t in tokens)  # the kernel's token hash bucket bits stay uniform
    assert len(low) == 16 and all(150 < c < 350 for c in low.values()), low


@pytest.mark.parametrize("slices, match", [(set(), "empty"), ({16}, "outside"), ({-1}, "outside"),
                                           ({"a"}, "outside")])
def test_make_key_refuses_bad_slices(slices, match):
    with pytest.raises(ValueError, match=match):
        make_key(slices, 4)


def test_join_tag_value_keeps_the_slice_in_its_top_bits():
    for bits in (1, 4, 8, 12):
        for token in (0, TOKEN, 0xFFFFFFFF, 0x80000001, 0x00ABCDEF):
            assert (token >> 8) >> (24 - bits) == slice_of(token, bits)


# --- options ---------------------------------------------------------------------

@pytest.mark.parametrize("mpc, length", [
    (MpCapable(1, 0x01, None, None), 4),
    (MpCapable(1, 0x81, KEY, None), 12),
    (MpCapable(0, 0x81, KEY, None), 12),
    (MpCapable(1, 0x01, KEY, KEY2), 20),
])
def test_mp_capable_round_trip(mpc, length):
    opt = build_mp_capable(mpc.version, mpc.flags, mpc.sender_key, mpc.receiver_key)
    assert len(opt) == length and opt[:2] == bytes((30, length))
    assert parse_mptcp(opt) == mpc


def test_mp_capable_defaults_to_a_v1_syn():
    assert build_mp_capable() == bytes.fromhex("1e040101")


@pytest.mark.parametrize("extra", [b"\x00\x10", b"\x00\x10\xab\xcd"])
def test_mp_capable_with_data_carries_both_keys(extra):
    opt = bytes((30, 20 + len(extra), 0x01, 0x01)) + KEY + KEY2 + extra
    assert parse_mptcp(opt) == MpCapable(1, 0x01, KEY, KEY2)


@pytest.mark.parametrize("length", [3, 5, 11, 13, 19, 21, 23, 25])
def test_mp_capable_bad_length(length):
    opt = bytes((30, length, 0x01)) + bytes(length - 3)
    with pytest.raises(OptionError, match="MP_CAPABLE: length"):
        parse_mptcp(opt)


@pytest.mark.parametrize("join", [MpJoinSyn(False, 0, TOKEN, 0xDEADBEEF), MpJoinSyn(True, 255, 0xFFFFFFFF, 0)])
def test_mp_join_syn_round_trip(join):
    opt = build_mp_join_syn(join.backup, join.address_id, join.token, join.nonce)
    assert len(opt) == 12 and opt[2] >> 4 == 1
    assert parse_mptcp(opt) == join


def test_mp_join_of_later_steps_is_not_a_syn_join():
    assert parse_mptcp(bytes((30, 16, 0x10, 0)) + bytes(12)) is None
    assert parse_mptcp(bytes((30, 24, 0x10, 0)) + bytes(20)) is None
    with pytest.raises(OptionError, match="MP_JOIN: length 13"):
        parse_mptcp(bytes((30, 13, 0x10, 0)) + bytes(9))


def test_other_mptcp_subtypes_are_not_modelled():
    assert parse_mptcp(bytes((30, 4, 0x20, 0))) is None  # DSS without mappings


@pytest.mark.parametrize("opt, match", [
    (bytes((8, 4, 0x00, 0x01)), "kind must be 30"),
    (b"", "kind must be 30"),
    (bytes((30, 5, 0x00, 0x01)), "length byte 5"),
    (bytes((30, 2)), "no room for the subtype"),
])
def test_parse_mptcp_refuses_bad_framing(opt, match):
    with pytest.raises(OptionError, match=match):
        parse_mptcp(opt)


def test_option_builders_name_the_bad_field():
    with pytest.raises(ValueError, match="sender_key"):
        build_mp_capable(sender_key=b"short")
    with pytest.raises(ValueError, match="receiver_key"):
        build_mp_capable(sender_key=KEY, receiver_key=b"x" * 9)
    with pytest.raises(ValueError, match="receiver_key needs a sender_key"):
        build_mp_capable(receiver_key=KEY)
    with pytest.raises(ValueError, match="version"):
        build_mp_capable(version=16)
    with pytest.raises(ValueError, match="flags"):
        build_mp_capable(flags=256)
    with pytest.raises(ValueError, match="token"):
        build_mp_join_syn(False, 0, 1 << 32, 0)
    with pytest.raises(ValueError, match="address_id"):
        build_mp_join_syn(False, 256, 0, 0)
    with pytest.raises(ValueError, match="nonce"):
        build_mp_join_syn(False, 0, 0, -1)
    with pytest.raises(ValueError, match="tsecr"):
        build_timestamp(0, 1 << 32)
    with pytest.raises(ValueError, match="key"):
        build_key_carrier(b"1234567")


def test_timestamp_round_trip():
    opt = build_timestamp(0xA1B2C3D4, 0x00000FFF)
    assert opt == bytes.fromhex("080aa1b2c3d400000fff")
    assert parse_timestamp(opt) == Timestamp(0xA1B2C3D4, 0xFFF)


@pytest.mark.parametrize("opt", [bytes((8, 9)) + bytes(7), bytes((8, 12)) + bytes(10), bytes((8, 2))])
def test_timestamp_of_other_length_is_malformed(opt):
    with pytest.raises(OptionError, match="timestamp option: length"):
        parse_timestamp(opt)


def test_key_carrier_round_trip():
    opt = build_key_carrier(KEY)
    assert opt == bytes.fromhex("fd0c4d4c") + KEY
    assert parse_key_carrier(opt) == KEY


def test_key_carrier_ignores_other_experiments_and_kinds():
    assert parse_key_carrier(bytes.fromhex("fd0c1234") + KEY) is None  # another ExID
    assert parse_key_carrier(bytes((30, 12, 0x01, 0x01)) + KEY) is None
    assert parse_key_carrier(bytes.fromhex("fd02")) is None
    with pytest.raises(OptionError, match="key carrier: length 13"):
        parse_key_carrier(bytes.fromhex("fd0d4d4c") + KEY + b"\x00")


def test_parse_tcp_options_of_a_linux_syn():
    raw = (bytes.fromhex("020405b4") + bytes.fromhex("0402") + build_timestamp(7, 0) + b"\x01"
           + bytes.fromhex("030307") + build_mp_capable())
    assert parse_tcp_options(raw) == [
        (2, bytes.fromhex("020405b4")), (4, bytes.fromhex("0402")), (8, build_timestamp(7, 0)),
        (3, bytes.fromhex("030307")), (30, build_mp_capable()),
    ]


def test_parse_tcp_options_stops_at_eol_and_skips_nops():
    assert parse_tcp_options(b"") == []
    assert parse_tcp_options(b"\x01\x01\x01\x01") == []
    assert parse_tcp_options(build_mp_capable() + b"\x00\xff\x00") == [(30, build_mp_capable())]


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x01\x01\x1e", "no length byte"),
    (b"\x1e", "no length byte"),
    (b"\x1e\x00\x01\x81", "length 0 < 2"),
    (b"\x1e\x01\x01\x81", "length 1 < 2"),
    (b"\x08\x0a\x00\x00", "runs past"),
    (build_mp_capable() + b"\x08\x0b" + bytes(8), "runs past"),
    (b"\xfd\xff", "runs past"),
])
def test_parse_tcp_options_malformed_layouts(raw, match):
    with pytest.raises(OptionError, match=match):
        parse_tcp_options(raw)


# --- classifier reference ----------------------------------------------------------

MPC = MPC_SYN  # v1 SYN MP_CAPABLE, as scapy takes raw options
JOIN = (30, b"\x10\x00" + TOKEN.to_bytes(4, "big") + b"\xde\xad\xbe\xef")
LINUX_SYN_OPTS = LINUX_SYN_OPTIONS + [MPC]


TS_ACK = [("NOP", None), ("NOP", None), ("Timestamp", (0x01020304, 0xABCDEF12))]


@pytest.mark.parametrize("pkt, verdict", [
    # class 1
    (tcp_frame("S", [MPC]), (1, 0)),
    (tcp_frame("S", LINUX_SYN_OPTS), (1, 0)),
    (tcp_frame("SE", LINUX_SYN_OPTS), (1, 0)),  # ECN flags do not matter
    (tcp_frame("S", [MPC], payload=b"data"), (1, 0)),
    (tcp_frame("S", b"\x1e\x03\x00"), (1, 0)),  # any MPTCP option of subtype 0 counts, length 3 included
    (tcp_frame("S", build_mp_capable(0, 0x81, KEY)), (1, 0)),  # v0 SYN
    # class 2
    (tcp_frame("S", [JOIN]), (2, 0x112233)),
    (tcp_frame("S", [("MSS", 1460), ("NOP", None), ("NOP", None), ("Timestamp", (9, 0)), JOIN]), (2, 0x112233)),
    (tcp_frame("S", build_mp_join_syn(True, 7, 0xFFFFFFFF, 1)), (2, 0xFFFFFF)),
    (tcp_frame("S", build_mp_join_syn(False, 0, 0x000000FF, 1)), (2, 0)),
    # class 3: any segment with SYN clear
    (tcp_frame("A", TS_ACK), (3, 0xF12)),
    (tcp_frame("PA", TS_ACK, payload=b"x" * 100), (3, 0xF12)),
    (tcp_frame("FA", TS_ACK), (3, 0xF12)),
    (tcp_frame("R", TS_ACK), (3, 0xF12)),
    (tcp_frame("", TS_ACK), (3, 0xF12)),
    (tcp_frame("A", [MPC] + TS_ACK), (3, 0xF12)),  # MPTCP options do not matter without SYN
    (tcp_frame("A", [("Timestamp", (1, 0x1000))]), (3, 0)),
    (tcp_frame("A", [("Timestamp", (1, 0)), ("Timestamp", (2, 0x777))]), (3, 0)),  # first counts
    # no verdict
    (tcp_frame("S"), None),
    (tcp_frame("S", [("Timestamp", (1, 0))]), None),  # a SYN is never steered by timestamp
    (tcp_frame("SA", [MPC]), None),
    (tcp_frame("SA", [JOIN]), None),
    (tcp_frame("SA", TS_ACK), None),
    (tcp_frame("A"), None),
    (tcp_frame("A", [("MSS", 1460)]), None),
    (tcp_frame("S", [(30, b"\x20\x00")]), None),  # DSS
])
def test_classify_table(pkt, verdict):
    assert classify_frame(pkt) == verdict


@pytest.mark.parametrize("opts, verdict", [
    ([MPC, JOIN], (1, 0)),
    ([JOIN, MPC], (2, 0x112233)),
    ([(30, b"\x20\x00"), MPC], None),  # the first MPTCP option decides, and DSS gives nothing
    ([(30, b"\x10\x00" + bytes(12)), MPC], None),  # a 16-byte JOIN first: no class 2, and still first
    ([(30, b""), MPC], (1, 0)),  # kind 30 of length 2 is not an MPTCP option
])
def test_first_mptcp_option_counts(opts, verdict):
    assert classify_frame(tcp_frame("S", opts)) == verdict


@pytest.mark.parametrize("length", [3, 4, 8, 11, 13, 16, 20, 24])
def test_syn_join_of_wrong_length_gives_no_verdict(length):
    opt = bytes((30, length, 0x10)) + TOKEN.to_bytes(4, "big")[:max(0, length - 3)] + bytes(max(0, length - 7))
    assert len(opt) == length
    assert classify_frame(tcp_frame("S", opt)) is None


@pytest.mark.parametrize("ts_len", [2, 3, 8, 9, 11, 12, 18])
@pytest.mark.parametrize("flags, before", [("A", b""), ("S", build_mp_capable()), ("S", build_mp_join_syn(0, 0, 1, 1))])
def test_timestamp_of_wrong_length_voids_every_verdict(ts_len, flags, before):
    assert classify_frame(tcp_frame(flags, before + bytes((8, ts_len)) + bytes(ts_len - 2))) is None


def test_a_bad_timestamp_after_a_good_one_still_voids_the_verdict():
    assert classify_frame(tcp_frame("A", build_timestamp(1, 5) + b"\x08\x0c" + bytes(10))) is None


@pytest.mark.parametrize("opts", [
    build_mp_capable() + b"\x01\x01\x01\x1e",  # lone kind byte at the end of the area
    build_mp_capable() + b"\x02\x00\x00\x00",  # length 0
    build_mp_capable() + b"\x02\x01\x00\x00",  # length 1
    build_mp_capable() + b"\x02\x05\x00\x00",  # runs past the area
    b"\x08\x0a" + bytes(6),  # a timestamp cut by the data offset
    b"\x1e\x00\x01\x81",
])
def test_malformed_layout_gives_no_verdict(opts):
    assert len(opts) % 4 == 0
    assert classify_frame(tcp_frame("A", build_timestamp(1, 2) + b"\x01\x01")) == (3, 2)  # control
    assert classify_frame(tcp_frame("S", opts)) is None
    assert classify_frame(tcp_frame("A", build_timestamp(1, 2) + b"\x01\x01" + opts)) is None


def test_option_running_past_the_header_into_payload_is_malformed():
    # The area is [20, doff*4); a timestamp whose length crosses into the payload does not count.
    opts = b"\x01\x01\x08\x0a" + bytes(8)
    assert classify_frame(tcp_frame("A", opts, doff=6)) is None
    assert classify_frame(tcp_frame("A", opts, doff=8)) == (3, 0)


def test_eol_ends_the_walk():
    assert classify_frame(tcp_frame("S", build_mp_capable() + b"\x00\x08\x03\xff")) == (1, 0)
    assert classify_frame(tcp_frame("S", b"\x00" + build_mp_capable()[1:] + bytes(4))) is None


def test_options_in_the_payload_do_not_count():
    assert classify_frame(tcp_frame("S", b"", doff=5, payload=build_mp_capable())) is None
    assert classify_frame(tcp_frame("A", b"", doff=5, payload=build_timestamp(1, 2))) is None


def test_ip_options_are_skipped():
    pkt = tcp_frame("S", [MPC], ip={"options": [IPOption_NOP()] * 4})
    assert pkt[14] == 0x46
    assert classify_frame(pkt) == (1, 0)
    pkt = tcp_frame("A", TS_ACK, ip={"options": [IPOption_NOP()] * 40})
    assert pkt[14] == 0x4F
    assert classify_frame(pkt) == (3, 0xF12)


@pytest.mark.parametrize("ip, verdict", [
    ({"flags": "MF"}, None),
    ({"frag": 1}, None),
    ({"frag": 0x1FFF}, None),
    ({"flags": "MF", "frag": 100}, None),
    ({"flags": "DF"}, (1, 0)),
    ({"flags": "evil"}, (1, 0)),  # the reserved bit is not part of the fragment test
    ({"len": 20}, (1, 0)),  # total length is ignored
    ({"len": 65535}, (1, 0)),
    ({"len": 0}, (1, 0)),
    ({"proto": 17}, None),
    ({"version": 6}, None),
    ({"ihl": 4}, None),
    ({"ihl": 0}, None),
    ({"ihl": 15}, None),  # claims 60 header bytes: the "TCP header" is then garbage or cut
])
def test_ip_header_rules(ip, verdict):
    assert classify_frame(tcp_frame("S", [MPC], ip=ip)) == verdict


def test_ihl_past_the_frame_end_gives_no_verdict():
    pkt = bytearray(tcp_frame("S", [MPC]))
    pkt[14] = 0x4F
    assert classify_frame(bytes(pkt[:14 + 59])) is None


@pytest.mark.parametrize("pkt", [
    ether_frame(IP() / UDP() / Raw(b"\x00" * 40)),
    ether_frame(IP() / ICMP()),
    ether_frame(Dot1Q(vlan=5) / IP() / TCP(flags="S", options=[MPC])),
    ether_frame(Raw(tcp_frame("S", [MPC])[14:]), type=0x86DD),
    b"",
])
def test_non_tcp_ipv4_gives_no_verdict(pkt):
    assert classify_frame(pkt) is None


@pytest.mark.parametrize("doff", [0, 1, 2, 3, 4])
def test_data_offset_below_five(doff):
    assert classify_frame(tcp_frame("S", build_mp_capable(), doff=doff)) is None


def test_data_offset_past_the_frame_end():
    pkt = tcp_frame("S", build_mp_capable())
    assert classify_frame(pkt) == (1, 0)
    too_long = bytearray(pkt)
    too_long[14 + 20 + 12] = 7 << 4  # 28 header bytes claimed, 24 present
    assert classify_frame(bytes(too_long)) is None


def test_trailing_bytes_do_not_matter():
    assert classify_frame(tcp_frame("S", [MPC]) + bytes(64)) == (1, 0)


@pytest.mark.parametrize("pkt", [
    tcp_frame("S", LINUX_SYN_OPTS), tcp_frame("S", [JOIN]), tcp_frame("A", TS_ACK, payload=b"abc"),
    tcp_frame("S", [MPC], ip={"options": [IPOption_NOP()] * 8}),
])
def test_every_truncation_is_safe_and_needs_the_whole_header(pkt):
    full = classify_frame(pkt)
    header_end = 14 + (pkt[14] & 0xF) * 4 + (pkt[14 + (pkt[14] & 0xF) * 4 + 12] >> 4) * 4
    for n in range(len(pkt) + 1):
        assert classify_frame(pkt[:n]) == (full if n >= header_end else None), n


def test_never_raises_on_random_or_mutated_bytes():
    rng = random.Random(7)
    seeds = [tcp_frame("S", LINUX_SYN_OPTS), tcp_frame("S", [JOIN]), tcp_frame("A", TS_ACK)]
    for i in range(20_000):
        if i % 2:
            pkt = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                pkt[rng.randrange(len(pkt))] = rng.randrange(256)
            pkt = bytes(pkt[:rng.randint(0, len(pkt))])
        else:
            pkt = rng.randbytes(rng.randint(0, 90))
        verdict = classify_frame(pkt)
        assert verdict is None or (verdict[0] in (1, 2, 3) and 0 <= verdict[1] < 1 << 24)


def test_accepts_bytearray_and_memoryview():
    pkt = tcp_frame("S", [JOIN])
    assert classify_frame(bytearray(pkt)) == classify_frame(memoryview(pkt)) == (2, 0x112233)


# --- tag MAC -----------------------------------------------------------------------

@pytest.mark.parametrize("cls, value, mac", [
    (1, 0, "0a:4d:01:00:00:00"),
    (2, 0x112233, "0a:4d:02:11:22:33"),
    (3, 0xFFF, "0a:4d:03:00:0f:ff"),
    (2, 0xFFFFFF, "0a:4d:02:ff:ff:ff"),
])
def test_tag_mac(cls, value, mac):
    assert tag_mac(cls, value) == mac
    assert mc.TAG_PREFIX == b"\x0a\x4d"


def test_tag_mac_is_locally_administered_unicast():
    first = mc.TAG_PREFIX[0]
    assert first & 0x02 and not first & 0x01


@pytest.mark.parametrize("cls, value, match", [(0, 0, "cls"), (4, 0, "cls"), (2, 1 << 24, "value"),
                                               (3, -1, "value")])
def test_tag_mac_refuses_bad_fields(cls, value, match):
    with pytest.raises(ValueError, match=match):
        tag_mac(cls, value)


# --- frame editing -----------------------------------------------------------------

def checksums_recomputed(pkt: bytes) -> tuple[int, int]:
    """The IP and TCP checksums scapy computes for ``pkt`` when told to compute them itself."""
    parsed = Ether(pkt)
    del parsed[IP].chksum, parsed[TCP].chksum
    again = Ether(bytes(parsed))
    return again[IP].chksum, again[TCP].chksum


def test_parse_mpc_syn_gives_the_five_tuple():
    pkt = tcp_frame("S", LINUX_SYN_OPTS, src="10.0.3.1", dst="10.0.0.100", sport=40000, dport=80)
    assert parse_mpc_syn(pkt) == FiveTuple("10.0.3.1", "10.0.0.100", 40000, 80, 6)
    with_ip_options = tcp_frame("S", [MPC], src="1.2.3.4", ip={"options": [IPOption_NOP()] * 4})
    assert parse_mpc_syn(with_ip_options).src == "1.2.3.4"


@pytest.mark.parametrize("pkt", [tcp_frame("S", [JOIN]), tcp_frame("SA", [MPC]), tcp_frame("A", TS_ACK), tcp_frame("S"),
                                 ether_frame(IP() / UDP()), b""])
def test_parse_mpc_syn_of_anything_else_is_none(pkt):
    assert parse_mpc_syn(pkt) is None


def test_parse_mpc_syn_refuses_an_ip_length_past_the_frame():
    pkt = bytearray(tcp_frame("S", [MPC]))
    struct.pack_into("!H", pkt, 16, len(pkt))  # 14 bytes more than the frame holds
    assert classify_frame(bytes(pkt)) == (1, 0)  # the classifier does not read the IP length
    with pytest.raises(ValueError, match="IP total length"):
        parse_mpc_syn(bytes(pkt))


@pytest.mark.parametrize("ip", [{}, {"options": [IPOption_NOP()] * 8}])
def test_appended_option_follows_the_options_with_every_length_and_checksum_fixed(ip):
    before = tcp_frame("S", LINUX_SYN_OPTS, ip=ip, payload=b"tfo-data")
    after = append_tcp_option(before, build_key_carrier(KEY))
    old, new = Ether(before), Ether(after)
    opts = bytes(new[TCP])[20:new[TCP].dataofs * 4]
    assert opts == bytes(old[TCP])[20:old[TCP].dataofs * 4] + build_key_carrier(KEY)
    assert new[TCP].dataofs == old[TCP].dataofs + 3 and new[IP].len == old[IP].len + 12
    assert bytes(new[TCP].payload) == b"tfo-data"
    assert checksums_recomputed(after) == (new[IP].chksum, new[TCP].chksum)
    assert (new[IP].chksum, new[TCP].chksum) != (old[IP].chksum, old[TCP].chksum)


def test_ethernet_padding_is_not_carried_into_the_longer_packet():
    padded = tcp_frame("S", [MPC]) + bytes(16)
    assert append_tcp_option(padded, build_key_carrier(KEY)) == append_tcp_option(tcp_frame("S", [MPC]),
                                                                                 build_key_carrier(KEY))


def test_option_room_ends_at_a_60_byte_header():
    filler = (254, bytes(22))  # 4 bytes of MP_CAPABLE + 24 = 28 bytes in use: 12 still fit
    full = append_tcp_option(tcp_frame("S", [MPC, filler]), build_key_carrier(KEY))
    assert Ether(full)[TCP].dataofs == 15
    check_option_room(tcp_frame("S", [MPC, filler]), 12)
    with pytest.raises(NoOptionRoom, match="40 bytes in use, no room for 4 more"):
        check_option_room(full, 4)
    with pytest.raises(NoOptionRoom, match="no room for 12 more"):
        append_tcp_option(full, build_key_carrier(KEY))


def test_a_misaligned_option_is_refused():
    with pytest.raises(OptionError, match="6 bytes would misalign"):
        append_tcp_option(tcp_frame("S", [MPC]), bytes((mc.TCPOPT_EXPERIMENTAL, 6)) + bytes(4))


@pytest.mark.parametrize("pkt, match", [
    (ether_frame(IP() / UDP()), "not an IPv4 TCP"),
    (ether_frame(Raw(bytes(60)), type=0x86DD), "not an Ethernet/IPv4"),
    (tcp_frame("S")[:30], "not an Ethernet/IPv4"),
    (tcp_frame("S", b"", doff=4), "data offset 4"),
])
def test_editing_needs_an_ipv4_tcp_frame(pkt, match):
    with pytest.raises(ValueError, match=match):
        append_tcp_option(pkt, build_key_carrier(KEY))


@pytest.mark.parametrize("padding", [b"\x00", b"\x00\x00\x00", b"\x01\x00\x00\x00"])
def test_an_option_is_appended_before_the_end_of_options_not_after_it(padding):
    """BSD and macOS pad with EOL: a carrier after it would be invisible to every reader, the DIP's too."""
    # MSS, SACK-permitted, MP_CAPABLE, then EOL padding (what a BSD stack sends, MPTCP added).
    opts = bytes((2, 4, 5, 0xB4, 4, 2)) + mc.build_mp_capable() + padding
    before = tcp_frame("S", opts)
    after = append_tcp_option(before, build_key_carrier(KEY))
    tcp = Ether(after)[TCP]
    found = parse_tcp_options(bytes(tcp)[20:tcp.dataofs * 4])
    assert [kind for kind, _ in found] == [2, 4, mc.TCPOPT_MPTCP, mc.TCPOPT_EXPERIMENTAL]
    assert parse_key_carrier(found[-1][1]) == KEY
    area = bytes(tcp)[20:tcp.dataofs * 4]
    assert area.rstrip(b"\x00").endswith(build_key_carrier(KEY)) and len(area.rstrip(b"\x00")) > len(area) - 4
    assert checksums_recomputed(after) == (Ether(after)[IP].chksum, tcp.chksum)


@pytest.mark.parametrize("padding", [bytes(28), bytes((1,)) * 28, bytes((1,)) * 16 + bytes(12)],
                         ids=["EOL", "NOP (a blanked carrier)", "NOP then EOL"])
def test_room_counts_the_options_in_use_not_the_padding_after_them(padding):
    # 8 bytes of options, then 28 of padding: 36 of 40 bytes of header, but only 8 in use.
    opts = bytes((2, 4, 5, 0xB4)) + mc.build_mp_capable() + padding
    frame = tcp_frame("S", opts)
    assert (Ether(frame)[TCP].dataofs * 4 - 20) == 36
    check_option_room(frame, 12)  # fits where the padding was
    appended = append_tcp_option(frame, build_key_carrier(KEY))
    assert Ether(appended)[TCP].dataofs * 4 - 20 == 20  # the padding made way
