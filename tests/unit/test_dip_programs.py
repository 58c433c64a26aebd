"""The DIP's tc programs (bpf/dip_tc.c) run on crafted frames with BPF_PROG_TEST_RUN, no interface.

Key rewrite, checksum (at every option alignment), TSval stamping, TSecr
restoration, the key carrier, malformed input, the key pool never reusing a
key, the second chance's decisions, and DipPrograms.load() getting the
programs ready without touching an interface; then the same rewrites over
IPv6, past extension headers. tests/integration/test_dip_token.py runs the same programs under
a real client in network namespaces.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import AH

from dip_agent.dip_abi import (PASSED_TO, STAT_NAMES, U32, FlowState, pack_config, pack_flow_key, pack_peer,
                               pack_seeded_flow_state)
from dip_agent.key_pool import KeyPool
from dip_agent.sysctl import read_sysctl
from dip_agent.programs import SYNCOOKIES, DipPrograms, dip_object
from mptcp_lb.bpf import TC_ACT_OK, TC_ACT_REDIRECT, BpfObject, read_counters, test_run
from mptcp_lb.mptcp_codec import (SECOND_CHANCE_MAX_HOPS, SECOND_CHANCE_PASSED_ID, build_key_carrier, key_to_token,
                                  make_key, second_chance_mac, slice_of)
from tests.packets import (checksums_ok, ether_frame, mp_capable, tcp6_frame, tcp_frame, tcp_options, timestamp,
                           tsval_tsecr)

VIP = "10.78.9.100"
CLIENT = "10.78.0.1"
VIP6, CLIENT6 = "2001:db8:78::100", "2001:db8:78:1::1"
PORT = 80
SERVER_ID = 0x5A5
SLICE_BITS, SLICES = 8, {5}  # pool keys are drawn for slice 5 of 256
SELF, PREVIOUS = "10.78.2.1", "10.78.2.2"  # this DIP's fabric address, and a slot's previous owner's


class Programs:
    """dip_tc.o loaded and configured, run on frames with BPF_PROG_TEST_RUN (no interface)."""

    def __init__(self, mode: str, server_id: int = SERVER_ID, stamp: bool = True, vip: str | None = VIP,
                 vip6: str | None = VIP6):
        self.obj = BpfObject(dip_object())
        self.obj.map("dip_config").update(U32.pack(0), pack_config(vip, PORT, server_id, mode, stamp=stamp,
                                                                   self_address=SELF, vip6=vip6))
        self.egress_fd = self.obj.prog_fd("dip_egress")
        self.ingress_fd = self.obj.prog_fd("dip_ingress")

    def egress(self, data: bytes) -> bytes:
        result = test_run(self.egress_fd, data)
        assert result.retval == TC_ACT_OK  # always
        return result.data_out

    def ingress(self, data: bytes, verdict: int = TC_ACT_OK) -> bytes:
        result = test_run(self.ingress_fd, data)
        assert result.retval == verdict
        return result.data_out

    def pool(self, slices=SLICES, slice_bits=SLICE_BITS) -> KeyPool:
        return KeyPool(self.obj.map("dip_pool"), self.obj.map("dip_pool_state"), slices, slice_bits)

    def flow(self, client_port: int, client_ip: str = CLIENT) -> FlowState | None:
        vip = VIP6 if ipaddress.ip_address(client_ip).version == 6 else VIP
        raw = self.obj.map("dip_flows").lookup(pack_flow_key(client_ip, client_port, vip, PORT))
        return None if raw is None else FlowState.unpack(raw)

    def stats(self) -> dict:
        return read_counters(self.obj.map("dip_stats"), STAT_NAMES)

    def close(self) -> None:
        self.obj.close()


@pytest.fixture
def programs(bpf_platform):
    loaded: list[Programs] = []

    def load(mode: str, **kw) -> Programs:
        p = Programs(mode, **kw)
        loaded.append(p)
        return p

    yield load
    for p in loaded:
        p.close()


def mpc_synack(key: bytes) -> bytes:
    """A SYN/ACK's MP_CAPABLE: v1, flags A|H, the sender's key."""
    return mp_capable(12, flags=0x81, keys=key)


def synack(cport: int, options: bytes, isn: int = 1000) -> bytes:
    return tcp_frame("SA", options, src=VIP, dst=CLIENT, sport=PORT, dport=cport, seq=777, ack=isn + 1)


def server_segment(cport: int, tsval: int, tsecr: int = 1) -> bytes:
    return tcp_frame("A", timestamp(tsval, tsecr), src=VIP, dst=CLIENT, sport=PORT, dport=cport, payload=b"x" * 7)


def client_ack(cport: int, tsecr: int, tsval: int = 99) -> bytes:
    return tcp_frame("A", b"\x01\x01" + timestamp(tsval, tsecr), src=CLIENT, dst=VIP, sport=cport, dport=PORT)


def client_syn(cport: int, options: bytes, seq: int = 1) -> bytes:
    return tcp_frame("S", options, src=CLIENT, dst=VIP, sport=cport, dport=PORT, seq=seq)


@pytest.mark.parametrize("pad", range(4))
def test_pool_key_replaced_and_tsval_stamped_at_every_alignment(programs, pad):
    progs = programs("pool")
    progs.pool().fill()
    original_key = bytes(range(1, 9))
    tsval = 0x12345678
    out = progs.egress(synack(40000, b"\x01" * pad + timestamp(tsval, 4242) + b"\x01" * (3 - pad)
                              + b"\x01" * pad + mpc_synack(original_key)))
    assert checksums_ok(out)
    key = tcp_options(out)[30][4:12]
    assert key != original_key
    assert slice_of(key_to_token(key), SLICE_BITS) in SLICES
    assert tsval_tsecr(out) == ((tsval & ~0xFFF) | SERVER_ID, 4242)
    st = progs.flow(40000)
    assert st.key == key and st.has_key == 1 and st.key_isn == 1000
    assert (st.synack_tsval, st.synack_stamped, st.ack_pending) == (tsval, (tsval & ~0xFFF) | SERVER_ID, True)
    assert st.max_tsval == tsval
    assert "key=" not in repr(st).replace("has_key=", "") and key.hex() not in repr(st)  # keys are never printed
    assert progs.stats()["synack_key_set"] == 1


def test_retransmitted_synack_keeps_its_key_and_a_new_connection_gets_a_new_one(programs):
    progs = programs("pool")
    progs.pool().fill()
    opts = timestamp(0x1000, 1) + mpc_synack(b"\x00" * 8)
    first = tcp_options(progs.egress(synack(40001, opts, isn=1000)))[30][4:12]
    again = tcp_options(progs.egress(synack(40001, opts, isn=1000)))[30][4:12]
    other = tcp_options(progs.egress(synack(40001, opts, isn=9999)))[30][4:12]
    assert first == again
    assert other != first


def test_no_key_rewrite_in_mode_none_but_tsval_stamped(programs):
    progs = programs("none")
    key = bytes(range(8))
    out = progs.egress(synack(40002, timestamp(0xABCDE123, 0) + mpc_synack(key)))
    assert checksums_ok(out)
    assert tcp_options(out)[30][4:12] == key
    assert tsval_tsecr(out)[0] == 0xABCDE5A5


def test_pool_empty_leaves_the_key_alone(programs):
    progs = programs("pool")  # never filled
    key = bytes(range(8))
    out = progs.egress(synack(40003, mpc_synack(key) + timestamp(7, 0)))
    assert tcp_options(out)[30][4:12] == key
    assert progs.stats()["pool_empty"] == 1


def test_key_pool_never_hands_out_a_key_twice(programs):
    progs = programs("pool")
    pool = progs.pool({3}, 4)
    pool.fill()
    handed = []

    def take(n: int, first_port: int) -> None:
        for i in range(n):
            out = progs.egress(synack(first_port + i, mpc_synack(b"\x00" * 8)))
            key = tcp_options(out)[30][4:12]
            if key != b"\x00" * 8:
                handed.append(key)

    # Steady state: polled often enough, the pool never runs dry across several wraps.
    for round_ in range(12):
        take(250, 1024 + round_ * 250)
        pool.poll_once()
    assert progs.stats()["pool_empty"] == 0
    assert len(handed) == 3000
    # Starved: more SYN/ACKs than slots between polls. The overflow finds the pool empty.
    pool.poll_once()
    pool.poll_once()
    take(pool.size + 300, 20000)
    assert progs.stats()["pool_empty"] == 300
    pool.poll_once()
    pool.poll_once()
    take(100, 40000)
    assert progs.stats()["pool_empty"] == 300
    assert len(handed) == 3000 + pool.size + 100
    assert len(set(handed)) == len(handed), "a pool key was handed out twice"
    assert all(slice_of(key_to_token(k), 4) == 3 for k in handed)


def test_the_key_pool_polls_fast_while_keys_are_taken_and_refilled(programs):
    progs = programs("pool")
    pool = progs.pool({3}, 4)
    pool.fill()
    assert not pool.busy(pool.poll_once())  # nothing taken: the poller may back off
    for port in range(30000, 30005):
        progs.egress(synack(port, mpc_synack(b"\x00" * 8)))
    assert pool.busy(pool.poll_once()) and pool.refilled == 0  # taken since the last poll: refilled at the next
    assert pool.busy(pool.poll_once()) and pool.refilled == 5
    assert not pool.busy(pool.poll_once())


def test_carrier_in_syn_seeds_the_synack_key(programs):
    progs = programs("seed")
    key = make_key(SLICES, SLICE_BITS)
    syn = client_syn(40010, mp_capable(flags=0x81) + timestamp(5, 0) + b"\x01" + build_key_carrier(key), seq=123456)
    assert progs.ingress(syn) == syn  # read, never changed
    st = progs.flow(40010)
    assert (st.key, st.key_isn, st.has_key) == (key, 123456, 1)
    out = progs.egress(synack(40010, timestamp(0x4000, 5) + mpc_synack(b"\x00" * 8), isn=123456))
    assert checksums_ok(out)
    assert tcp_options(out)[30][4:12] == key
    # A SYN/ACK for another SYN (another ISN) must not get that key.
    stale = progs.egress(synack(40010, mpc_synack(b"\x00" * 8), isn=5))
    assert tcp_options(stale)[30][4:12] == b"\x00" * 8
    assert progs.stats()["synack_no_key"] == 1


def test_carrier_ignored_outside_seed_mode_and_other_exids(programs):
    progs = programs("seed")
    other = bytes((253, 12, 0x12, 0x34)) + b"\xee" * 8
    progs.ingress(client_syn(40011, mp_capable(flags=0x81) + other))
    assert progs.flow(40011) is None
    pool_progs = programs("pool")
    pool_progs.ingress(client_syn(40012, build_key_carrier(b"\x01" * 8)))
    assert pool_progs.flow(40012) is None


def test_seeded_key_from_userspace_serves_any_isn(programs):
    progs = programs("seed")
    key = make_key(SLICES, SLICE_BITS)
    flows = progs.obj.map("dip_flows")
    flows.update(pack_flow_key(CLIENT, 40013, VIP, PORT), pack_seeded_flow_state(key))
    out = progs.egress(synack(40013, mpc_synack(b"\x00" * 8), isn=424242))
    assert tcp_options(out)[30][4:12] == key
    assert progs.flow(40013).key_isn == 424242


def test_tsecr_restoration(programs):
    progs = programs("none")
    cport = 40020
    syn_ack_ts = 0x10000A3B  # low 6 bits: the cookie's options
    stamped = lambda v: (v & ~0xFFF) | SERVER_ID  # noqa: E731
    progs.egress(synack(cport, timestamp(syn_ack_ts, 9)))

    def echo(tsecr: int) -> int:
        out = progs.ingress(client_ack(cport, tsecr))
        assert checksums_ok(out)
        return tsval_tsecr(out)[1]

    # Third ACK: exactly the SYN/ACK's original, cookie bits and all.
    assert echo(stamped(syn_ack_ts)) == syn_ack_ts
    assert not progs.flow(cport).ack_pending
    # Another echo of the same window: min(TSecr | 0xfff, largest sent) = the SYN/ACK's value.
    assert echo(stamped(syn_ack_ts)) == syn_ack_ts
    # Later segments, one in a new 4096-tick window, two in the same one.
    t2 = syn_ack_ts + 5000
    t3 = t2 + 10
    progs.egress(server_segment(cport, t2))
    assert echo(stamped(t2)) == t2  # the largest sent so far
    progs.egress(server_segment(cport, t3))
    assert echo(stamped(t2)) == t3  # same stamped value: t3 is >= the real echo and was sent
    assert t2 <= echo(stamped(t3)) <= t3
    # An echo of the old window: the top of that window, never below the original.
    assert echo(stamped(syn_ack_ts)) == syn_ack_ts | 0xFFF
    # Not ours (other server id), beyond anything sent, or zero: left alone.
    assert echo((t3 & ~0xFFF) | 0x123) == (t3 & ~0xFFF) | 0x123
    assert echo(stamped(t3 + 0x10000)) == stamped(t3 + 0x10000)
    assert echo(0) == 0
    stats = progs.stats()
    assert stats["tsecr_exact"] == 1 and stats["tsecr_unmatched"] == 2


@pytest.mark.parametrize("pad", range(4))
def test_tsecr_restored_exactly_at_every_alignment(programs, pad):
    """Even offsets are rewritten in place, odd ones through the scratch copy: both keep the checksum right."""
    progs = programs("none")
    cport, syn_ack_ts = 40060 + pad, 0x10000A3B
    progs.egress(synack(cport, b"\x01" * pad + timestamp(syn_ack_ts, 9)))
    third_ack = tcp_frame("A", b"\x01" * pad + timestamp(99, (syn_ack_ts & ~0xFFF) | SERVER_ID), src=CLIENT, dst=VIP,
                          sport=cport, dport=PORT)
    out = progs.ingress(third_ack)
    assert checksums_ok(out) and tsval_tsecr(out) == (99, syn_ack_ts)


def test_tsecr_restoration_across_u32_wrap(programs):
    progs = programs("none")
    cport = 40021
    start = 0xFFFFF800
    progs.egress(synack(cport, timestamp(start, 9)))
    progs.ingress(client_ack(cport, (start & ~0xFFF) | SERVER_ID))
    progs.egress(server_segment(cport, 0x00000123))  # wrapped: later in serial order
    out = progs.ingress(client_ack(cport, SERVER_ID))  # echo of stamped 0x123 -> 0x5a5
    assert tsval_tsecr(out)[1] == 0x123
    out = progs.ingress(client_ack(cport, (start & ~0xFFF) | SERVER_ID))
    assert tsval_tsecr(out)[1] == 0xFFFFFFFF  # the old window's top, still <= the largest sent


def test_untouched_traffic(programs):
    progs = programs("pool")
    progs.pool().fill()
    cases = [
        # other VIP, other port
        tcp_frame("SA", timestamp(1, 2) + mpc_synack(b"\x00" * 8), src="10.0.0.1", dst=CLIENT, sport=PORT,
                  dport=40030),
        tcp_frame("SA", timestamp(1, 2) + mpc_synack(b"\x00" * 8), src=VIP, dst=CLIENT, sport=8080, dport=40030),
        # malformed: length 1, length past the end, timestamp of length 8
        synack(40031, mpc_synack(b"\x00" * 8) + bytes((5, 1))),
        synack(40032, mpc_synack(b"\x00" * 8) + bytes((5, 40))),
        synack(40033, mpc_synack(b"\x00" * 8) + bytes((8, 8)) + b"\x00" * 6),
        # MP_CAPABLE of another length (third ACK form) is no SYN/ACK key
        synack(40034, mp_capable(20, flags=0x81, keys=bytes(16))),
        # no options at all
        synack(40035, b""),
    ]
    for data in cases:
        assert progs.egress(data) == data
    truncated = synack(40036, timestamp(1, 2) + mpc_synack(b"\x00" * 8))[:-6]
    assert progs.egress(truncated) == truncated
    for data in cases:
        assert progs.ingress(data) == data
    assert progs.stats()["synack_key_set"] == 0


# --------------------------------------------------------------- DipPrograms.load(): no interface touched


@pytest.fixture
def loaded_setup(bpf_platform):
    """Make a DipPrograms and load() it (never attach()); undo() it after the test."""
    made: list[DipPrograms] = []

    def load(mode: str, **kw) -> DipPrograms:
        setup = DipPrograms("mlb-no-such-if", VIP, PORT, SERVER_ID, mode, **kw)
        made.append(setup)
        setup.load()
        return setup

    yield load
    for setup in made:
        setup.undo()
        assert setup.obj is None and setup.pool is None


def test_load_fills_the_pool_and_writes_the_config_without_an_interface(loaded_setup):
    cookies = read_sysctl(SYNCOOKIES)
    setup = loaded_setup("pool", slices=SLICES, slice_bits=SLICE_BITS)  # the interface does not even exist
    out = test_run(setup.obj.prog_fd("dip_egress"), synack(40040, timestamp(0x1000, 1) + mpc_synack(bytes(8))))
    key = tcp_options(out.data_out)[30][4:12]
    assert slice_of(key_to_token(key), SLICE_BITS) in SLICES  # a pool key
    assert tsval_tsecr(out.data_out)[0] == SERVER_ID | 0x1000  # the configured server ID
    assert setup.flow(CLIENT, 40040).key == key and setup.stats()["synack_key_set"] == 1
    assert read_sysctl(SYNCOOKIES) == cookies  # left to attach()


def test_a_key_seeded_into_a_loaded_setup_goes_into_the_next_synack(loaded_setup):
    setup = loaded_setup("seed")
    key = make_key(SLICES, SLICE_BITS)
    setup.seed_key(CLIENT, 40041, key)
    out = test_run(setup.obj.prog_fd("dip_egress"), synack(40041, mpc_synack(bytes(8)), isn=77))
    assert tcp_options(out.data_out)[30][4:12] == key
    assert setup.flow(CLIENT, 40041).key_isn == 77


# ------------------------------------------------------------------ second chance
# BPF_PROG_TEST_RUN runs in this test's own network namespace, where no socket
# holds these flows: only a SYN/ACK the egress program saw makes one "ours".


def marked(frame: bytes, previous: str = PREVIOUS) -> bytes:
    """The frame as a MUX hands it over while its slot is in transition from ``previous``."""
    return frame[:6] + bytes.fromhex(second_chance_mac(previous).replace(":", "")) + frame[12:]


def ip_id(frame: bytes) -> int:
    return int.from_bytes(frame[18:20], "big")


def passed_on(frame: bytes, hops: int) -> bytes:
    """The frame as a DIP passes it on after ``hops`` hops: its IPv4 ID says so (checksum fixed)."""
    ip = IP(frame[14:])
    ip.id = SECOND_CHANCE_PASSED_ID | hops
    del ip.chksum  # scapy computes it again
    return ether_frame(ip)


@pytest.mark.parametrize("mode,stamp", [("none", False), ("pool", True), ("seed", True)])
def test_a_marked_packet_nobody_here_holds_goes_to_the_previous_owner(programs, mode, stamp):
    progs = programs(mode, stamp=stamp)
    ack = tcp_frame("A", src=CLIENT, dst=VIP, sport=41000, dport=PORT, seq=5000, ack=1)
    out = progs.ingress(marked(ack), verdict=TC_ACT_REDIRECT)
    # Passed on with its first hop in the IPv4 ID (the kernel writes the MACs on the way out); all else untouched.
    assert ip_id(out) == SECOND_CHANCE_PASSED_ID | 1 and checksums_ok(out)
    assert out[:18] + out[20:24] + out[26:] == marked(ack)[:18] + marked(ack)[20:24] + marked(ack)[26:]
    progs.ingress(marked(tcp_frame("R", src=CLIENT, dst=VIP, sport=41001, dport=PORT)), verdict=TC_ACT_REDIRECT)
    progs.ingress(marked(client_ack(41002, tsecr=0x1234)), verdict=TC_ACT_REDIRECT)
    assert progs.stats()["sc_forwarded"] == 3


def test_unmarked_packets_syns_and_marks_naming_this_dip_stay(programs):
    progs = programs("none", stamp=False)
    ack = tcp_frame("A", src=CLIENT, dst=VIP, sport=41010, dport=PORT, seq=5000, ack=1)
    progs.ingress(ack)  # no mark: the slot is not in transition
    progs.ingress(marked(client_syn(41011, mp_capable())))  # a SYN starts its connection here
    progs.ingress(marked(ack, previous=SELF))
    progs.ingress(marked(ack, previous="0.0.0.0"))
    progs.ingress(passed_on(ack, hops=1))  # passed on by a DIP, and this one never passed the flow on
    other_port = tcp_frame("A", src=CLIENT, dst=VIP, sport=41012, dport=PORT + 1, seq=1, ack=1)
    progs.ingress(marked(other_port))  # not the VIP's service: not ours to judge
    stats = progs.stats()
    assert (stats["sc_forwarded"], stats["sc_syn"], stats["sc_self"], stats["sc_chained"]) == (0, 1, 2, 0)


def test_a_slot_that_moved_twice_passes_its_packets_on_again_where_this_dip_did_before(programs):
    """Owner A, then B (this DIP, passing A's flows on), then C: C passes to B, B passes on to A."""
    progs = programs("none", stamp=False)
    ack = tcp_frame("A", src=CLIENT, dst=VIP, sport=41040, dport=PORT, seq=5000, ack=1)
    passed = progs.obj.map("dip_passed")
    key = pack_flow_key(CLIENT, 41040, VIP, PORT)
    assert passed.lookup(key) is None
    progs.ingress(marked(ack, previous=PREVIOUS), verdict=TC_ACT_REDIRECT)  # B passes to A: and remembers it
    assert PASSED_TO.unpack(passed.lookup(key))[0] == ipaddress.IPv4Address(PREVIOUS).packed
    out = progs.ingress(passed_on(ack, hops=1), verdict=TC_ACT_REDIRECT)  # from C, one hop so far: on to A
    assert ip_id(out) == SECOND_CHANCE_PASSED_ID | 2 and checksums_ok(out)
    progs.ingress(passed_on(ack, hops=SECOND_CHANCE_MAX_HOPS))  # the last hop: it stays, whatever the record says
    other = tcp_frame("A", src=CLIENT, dst=VIP, sport=41041, dport=PORT, seq=5000, ack=1)
    progs.ingress(passed_on(other, hops=1))  # no record for this flow: it stays
    stats = progs.stats()
    assert (stats["sc_forwarded"], stats["sc_chained"]) == (1, 1)


def test_a_handshake_this_dip_answered_stays_here_for_a_cookie_lifetime(programs):
    """With SYN cookies only the listener matches the third ACK: the SYN/ACK this DIP sent makes it ours."""
    progs = programs("pool")
    progs.pool().fill()
    isn = 70000
    progs.egress(synack(41020, mpc_synack(bytes(8)) + timestamp(0x1000, 9), isn=isn))
    assert progs.flow(41020).synack_ns > 0
    third_ack = tcp_frame("A", timestamp(1, (0x1000 & ~0xFFF) | SERVER_ID), src=CLIENT, dst=VIP, sport=41020,
                          dport=PORT, seq=isn + 1, ack=778)
    progs.ingress(marked(third_ack))
    data = tcp_frame("A", src=CLIENT, dst=VIP, sport=41020, dport=PORT, seq=isn + 1 + 5000, ack=778, payload=b"x")
    progs.ingress(marked(data))
    # Sequence numbers from before this DIP's SYN/ACK are another connection's: not ours.
    stale = tcp_frame("A", src=CLIENT, dst=VIP, sport=41020, dport=PORT, seq=isn - 100, ack=778)
    progs.ingress(marked(stale), verdict=TC_ACT_REDIRECT)
    stats = progs.stats()
    assert (stats["sc_handshake"], stats["sc_forwarded"]) == (2, 1)


def test_port_mode_records_synacks_but_rewrites_nothing(programs):
    progs = programs("none", stamp=False)
    frame = synack(41030, mpc_synack(bytes(range(8))) + timestamp(0xABCDE123, 0))
    assert progs.egress(frame) == frame
    assert progs.egress(server_segment(41030, 0xABCDE200)) == server_segment(41030, 0xABCDE200)
    state = progs.flow(41030)
    assert state.has_conn and state.conn_isn == 1000 and state.max_tsval is None
    assert progs.ingress(client_ack(41030, tsecr=0xABCDE123)) == client_ack(41030, tsecr=0xABCDE123)
    assert progs.stats()["ts_stamped"] == 0


def test_seed_mode_keys_an_unseeded_syn_from_its_pool(programs):
    """A SYN over the punt budget, or sent while the controller was away, still gets a key in the DIP's slices."""
    progs = programs("seed")
    progs.pool().fill()
    out = progs.egress(synack(41050, mpc_synack(bytes(8)) + timestamp(0x2000, 9)))
    key = tcp_options(out)[30][4:12]
    assert key != bytes(8) and slice_of(key_to_token(key), SLICE_BITS) in SLICES
    assert progs.stats()["seed_fallback"] == 1 and progs.stats()["synack_no_key"] == 0


# --------------------------------------------------------------- IPv6

HBH_DSTOPTS = (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())
ATOMIC_FRAGMENT = (IPv6ExtHdrFragment(offset=0, m=0, id=7),)


def synack6(cport: int, options: bytes, isn: int = 1000, ext: tuple = (), src: str = VIP6, sport: int = PORT) -> bytes:
    return tcp6_frame("SA", options, ext=ext, src=src, dst=CLIENT6, sport=sport, dport=cport, seq=777, ack=isn + 1)


def client_ack6(cport: int, tsecr: int, ext: tuple = ()) -> bytes:
    return tcp6_frame("A", b"\x01\x01" + timestamp(99, tsecr), ext=ext, src=CLIENT6, dst=VIP6, sport=cport,
                      dport=PORT, seq=1001, ack=778)


@pytest.mark.parametrize("ext", [(), HBH_DSTOPTS, ATOMIC_FRAGMENT],
                         ids=["plain", "hop-by-hop+dstopts", "atomic-fragment"])
@pytest.mark.parametrize("pad", range(4))
def test_ipv6_pool_key_replaced_and_tsval_stamped_at_every_alignment(programs, pad, ext):
    progs = programs("pool")
    progs.pool().fill()
    tsval = 0x12345678
    out = progs.egress(synack6(40100 + pad, b"\x01" * pad + timestamp(tsval, 4242) + b"\x01" * (3 - pad)
                               + b"\x01" * pad + mpc_synack(bytes(range(1, 9))), ext=ext))
    assert checksums_ok(out)
    key = tcp_options(out)[30][4:12]
    assert key != bytes(range(1, 9)) and slice_of(key_to_token(key), SLICE_BITS) in SLICES
    assert tsval_tsecr(out) == ((tsval & ~0xFFF) | SERVER_ID, 4242)
    st = progs.flow(40100 + pad, client_ip=CLIENT6)  # kept under the IPv6 4-tuple
    assert st.key == key and st.key_isn == 1000 and st.synack_stamped == (tsval & ~0xFFF) | SERVER_ID
    assert progs.flow(40100 + pad) is None  # not under an IPv4 one


def test_ipv6_third_ack_restored_exactly_and_later_echoes_bounded(programs):
    progs = programs("pool")
    progs.pool().fill()
    syn_ack_ts = 0x20000A3B
    stamped = lambda v: (v & ~0xFFF) | SERVER_ID  # noqa: E731
    progs.egress(synack6(40110, timestamp(syn_ack_ts, 9) + mpc_synack(bytes(8)), ext=HBH_DSTOPTS))

    def echo(tsecr: int) -> int:
        out = progs.ingress(client_ack6(40110, tsecr, ext=HBH_DSTOPTS))
        assert checksums_ok(out)
        return tsval_tsecr(out)[1]

    assert echo(stamped(syn_ack_ts)) == syn_ack_ts  # the cookie's bits come back exactly
    later = syn_ack_ts + 5000
    progs.egress(tcp6_frame("A", timestamp(later, 1), src=VIP6, dst=CLIENT6, sport=PORT, dport=40110, payload=b"x"))
    assert echo(stamped(later)) == later
    assert echo((later & ~0xFFF) | 0x123) == (later & ~0xFFF) | 0x123  # another server's: left alone
    stats = progs.stats()
    assert (stats["tsecr_exact"], stats["tsecr_restored"], stats["tsecr_unmatched"]) == (1, 1, 1)


def test_ipv6_carrier_in_syn_seeds_the_synack_key(programs):
    progs = programs("seed")
    key = make_key(SLICES, SLICE_BITS)
    syn = tcp6_frame("S", mp_capable(flags=0x81) + timestamp(5, 0) + b"\x01" + build_key_carrier(key), src=CLIENT6,
                     dst=VIP6, sport=40120, dport=PORT, seq=123456)
    assert progs.ingress(syn) == syn
    out = progs.egress(synack6(40120, timestamp(0x4000, 5) + mpc_synack(bytes(8)), isn=123456))
    assert checksums_ok(out) and tcp_options(out)[30][4:12] == key


def test_ipv6_traffic_that_is_not_the_vips_service_is_left_alone(programs):
    progs = programs("pool")
    progs.pool().fill()
    options = timestamp(1, 2) + mpc_synack(bytes(8))
    ah = (AH(nh=6, payloadlen=4, spi=1, icv=bytes(12)),)
    cases = [
        synack6(40130, options, src="2001:db8:78::101"),  # another VIP
        synack6(40131, options, sport=8080),  # another port
        synack6(40132, options, ext=ah),  # behind AH: a rewrite would break its ICV
        synack6(40133, options, src=f"::ffff:{VIP}"),  # IPv4-mapped on the wire is not the IPv4 VIP
        synack6(40137, options, ext=(IPv6ExtHdrFragment(offset=0, m=1, id=9),)),  # a first fragment
        synack6(40138, options, ext=(IPv6ExtHdrDestOpt(),) * 9),  # more extension headers than the walk takes
    ]
    for frame in cases:
        assert progs.egress(frame) == frame
    # A flow with state, whose echo behind AH would be restored were AH not refused.
    progs.egress(synack6(40134, timestamp(0x1000, 1)))
    behind_ah = client_ack6(40134, (0x1000 & ~0xFFF) | SERVER_ID, ext=ah)
    assert progs.ingress(behind_ah) == behind_ah
    assert progs.stats()["tsecr_exact"] == 0 and progs.stats()["tsecr_restored"] == 0
    v4_only = programs("pool", vip6=None)  # an IPv4 VIP's programs: IPv6 is not theirs
    v4_only.pool().fill()
    assert v4_only.egress(synack6(40135, options)) == synack6(40135, options)
    v6_only = programs("pool", vip=None)  # and the other way round
    v6_only.pool().fill()
    assert v6_only.egress(synack(40136, options)) == synack(40136, options)
    assert tcp_options(v6_only.egress(synack6(40136, options)))[30][4:12] != bytes(8)
    assert progs.stats()["synack_key_set"] == 0 and v4_only.stats()["synack_key_set"] == 0


PREVIOUS6 = "2001:db8:78:2::2"  # the previous owner's IPv6 fabric address


def with_flow_label(frame: bytes, traffic_class: int, label: int) -> bytes:
    """An Ethernet/IPv6 frame with this traffic class and flow label (neither is under any checksum)."""
    word = 6 << 28 | traffic_class << 20 | label
    return frame[:14] + word.to_bytes(4, "big") + frame[18:]


def flow_label(frame: bytes) -> tuple[int, int]:
    """(traffic class, flow label) of an Ethernet/IPv6 frame."""
    word = int.from_bytes(frame[14:18], "big")
    return word >> 20 & 0xFF, word & 0xFFFFF


def ack6(cport: int, label: int = 0x12345) -> bytes:
    frame = tcp6_frame("A", src=CLIENT6, dst=VIP6, sport=cport, dport=PORT, seq=5000, ack=1)
    return with_flow_label(frame, 0xB8, label)


def test_ipv6_a_marked_packet_nobody_here_holds_goes_to_the_previous_owner_marked_in_its_flow_label(programs):
    progs = programs("pool")
    progs.obj.map("dip_peers").update(*pack_peer(PREVIOUS, PREVIOUS6))
    out = progs.ingress(marked(ack6(41100)), verdict=TC_ACT_REDIRECT)
    # The flow label carries the first hop; the traffic class and everything else stay.
    assert flow_label(out) == (0xB8, SECOND_CHANCE_PASSED_ID | 1) and checksums_ok(out)
    assert out[:15] + out[18:] == marked(ack6(41100))[:15] + marked(ack6(41100))[18:]
    key = pack_flow_key(CLIENT6, 41100, VIP6, PORT)
    assert PASSED_TO.unpack(progs.obj.map("dip_passed").lookup(key))[0] == ipaddress.IPv4Address(PREVIOUS).packed
    # Passed on once more by this DIP's record, and never beyond the last hop.
    again = with_flow_label(ack6(41100), 0xB8, SECOND_CHANCE_PASSED_ID | 1)
    assert flow_label(progs.ingress(again, verdict=TC_ACT_REDIRECT))[1] == SECOND_CHANCE_PASSED_ID | 2
    progs.ingress(with_flow_label(ack6(41100), 0xB8, SECOND_CHANCE_PASSED_ID | SECOND_CHANCE_MAX_HOPS))
    # A client's own label that only shares the mark's low 16 bits is no mark: it has bits above them.
    progs.ingress(with_flow_label(ack6(41100), 0, 1 << 16 | SECOND_CHANCE_PASSED_ID | 1))
    stats = progs.stats()
    assert (stats["sc_forwarded"], stats["sc_chained"], stats["sc_no_peer"]) == (1, 1, 0)


def test_ipv6_a_marked_packet_for_a_dip_without_an_ipv6_address_stays(programs):
    progs = programs("none", stamp=False)
    assert progs.ingress(marked(ack6(41101))) == marked(ack6(41101))
    assert progs.obj.map("dip_passed").lookup(pack_flow_key(CLIENT6, 41101, VIP6, PORT)) is None
    stats = progs.stats()
    assert (stats["sc_forwarded"], stats["sc_no_peer"]) == (0, 1)


def test_a_peer_must_be_a_unicast_ipv6_address():
    for bad in (f"::ffff:{PREVIOUS}", "::", "ff02::1"):
        with pytest.raises(ValueError, match="not a unicast IPv6 address"):
            pack_peer(PREVIOUS, bad)


def test_a_config_refuses_an_ipv4_mapped_vip6_and_no_vip_at_all():
    with pytest.raises(ValueError, match="IPv4-mapped"):
        pack_config(VIP, PORT, SERVER_ID, "pool", vip6=f"::ffff:{VIP}")
    with pytest.raises(ValueError, match="needs a VIP"):
        pack_config(None, PORT, SERVER_ID, "pool")
    with pytest.raises(ValueError, match="one address family"):
        pack_flow_key(CLIENT6, 1, VIP, PORT)
