"""Known-answer tests for ovs_flows.ovs_hash.

Every expected value below was read from a real Open vSwitch 3.1.0 (Debian
package 3.1.0-2+deb12u1, amd64, i.e. the generic "mhash" build) with
``ovs-appctl ofproto/trace BR 'in_port=LOCAL,<packet>'`` on a netdev bridge:

* raw 32-bit field hashes: table 0 held
  ``multipath(F,B,modulo_n,65536,0,NXM_NX_REG0[0..15]),
    multipath(F,B,hash_threshold,65536,0,NXM_NX_REG0[16..31])``
  so reg0 = (hash % 65536) | (hash >> 16) << 16 = the full hash;
* link indices: table 0 held ``multipath(symmetric_l4,0,ALG,N,ARG,
  NXM_NX_REG0[0..15])`` and the trace's "NXM_NX_REG0[0..15] is now" line
  gave the link.

(tests/integration/test_ovs_hash_matches_ovs.py redoes this live for 500
random packets per N.)
"""

from __future__ import annotations

import ipaddress

import pytest

from ovs_flows.ovs_hash import (
    crc32c_update,
    hash_2words,
    infer_hash_impl,
    jhash_bytes,
    multipath_link,
    pick_backend,
    symmetric_l3l4_hash,
    symmetric_l4_hash,
)

A, Z = "02:00:00:00:00:01", "02:00:00:00:00:fe"

# name -> (symmetric_l4 args without basis,
#          OVS symmetric_l4 hash basis 0, same with basis 4660,
#          OVS symmetric_l3l4 hash basis 0 or None)
PACKETS = {
    "tcp_basic": (("00:11:22:33:44:55", "66:77:88:99:aa:bb", 0x0800, 0, 6,
                   "10.0.0.1", "10.0.0.2", 1234, 80),
                  0x1A2A7ED1, 0xE8DCD2E7, 0xD7721676),
    "tcp_reverse": (("66:77:88:99:aa:bb", "00:11:22:33:44:55", 0x0800, 0, 6,
                     "10.0.0.2", "10.0.0.1", 80, 1234),
                    0x1A2A7ED1, 0xE8DCD2E7, 0xD7721676),
    "tcp_vip": ((A, Z, 0x0800, 0, 6, "192.168.1.10", "10.10.0.100", 40000, 443),
                0x998046C4, 0xBF8D85AE, 0x060BA9A1),
    # traced with dl_vlan=100,dl_vlan_pcp=5 -> TCI 0xb064 (PCP and CFI ignored)
    "tcp_vlan": ((A, Z, 0x0800, 0xB064, 6, "192.168.1.10", "10.10.0.100", 40000, 443),
                 0xDC7B2B66, 0x81C6658F, 0x060BA9A1),
    "tcp_zero": (("00:00:00:00:00:00", "00:00:00:00:00:00", 0x0800, 0, 6,
                  "0.0.0.0", "0.0.0.0", 0, 0),
                 0x0BF82DED, 0xADA6A7EB, 0xA4902450),
    "tcp_ones": (("ff:ff:ff:ff:ff:fe", "00:00:00:00:00:01", 0x0800, 0, 6,
                  "255.255.255.255", "1.2.3.4", 65535, 1),
                 0x825100E8, 0xD34DF1B5, 0x9A551817),
    # traced with udp_src=5353,udp_dst=53: symmetric_l4 ignores UDP ports
    "udp_ports_ignored": ((A, Z, 0x0800, 0, 17, "192.168.1.10", "10.10.0.100", 1, 2),
                          0xC9D3CF53, 0x84514645, 0x22A94B33),
    "tcp6": ((A, Z, 0x86DD, 0, 6, "2001:db8::1", "2001:db8::100", 40000, 443),
             0x88B9B092, 0x30E1B8A9, 0xDBDD8EFF),
    # arp: only the MACs and dl_type are hashed
    "arp": ((A, "ff:ff:ff:ff:ff:ff", 0x0806, 0, 0, None, None, 0, 0),
            0x2E51B1CE, 0x455F80F3, None),
}

# name -> {n_links: link} for multipath(symmetric_l4,0,hrw,N,0,...) as traced
HRW = {
    "tcp_basic": {2: 1, 3: 1, 5: 1, 16: 14, 64: 27, 100: 47},
    "tcp_reverse": {2: 1, 3: 1, 5: 1, 16: 14, 64: 27, 100: 47},
    "tcp_vip": {2: 1, 3: 1, 5: 3, 16: 13, 64: 53, 100: 44},
    "tcp_vlan": {2: 0, 3: 0, 5: 3, 16: 5, 64: 33, 100: 88},
}
# name -> (iter_hash arg 0 N=3, N=5, hash_threshold N=5, modulo_n N=5)
OTHER = {
    "tcp_basic": (2, 0, 0, 3),
    "tcp_reverse": (2, 0, 0, 3),
    "tcp_vip": (0, 4, 2, 2),
    "tcp_vlan": (0, 0, 4, 3),
}


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_symmetric_l4_hash_matches_ovs(name):
    args, h0, h4660, _ = PACKETS[name]
    assert symmetric_l4_hash(*args) == h0
    assert symmetric_l4_hash(*args, basis=4660) == h4660


@pytest.mark.parametrize("name", sorted(n for n in PACKETS if PACKETS[n][3] is not None))
def test_symmetric_l3l4_hash_matches_ovs(name):
    (_, _, eth_type, _, proto, src, dst, sp, dp), _, _, l3l4 = PACKETS[name]
    assert symmetric_l3l4_hash(eth_type, proto, src, dst, sp, dp) == l3l4


@pytest.mark.parametrize("name", sorted(HRW))
def test_hrw_links_match_ovs(name):
    args, h, _, _ = PACKETS[name]
    for n, link in HRW[name].items():
        assert multipath_link(h, n) == link, n
        assert multipath_link(h, n, "hrw", 0) == link, n


@pytest.mark.parametrize("name", sorted(OTHER))
def test_other_algorithms_match_ovs(name):
    h = PACKETS[name][1]
    it3, it5, ht5, mod5 = OTHER[name]
    assert multipath_link(h, 3, "iter_hash", 0) == it3
    assert multipath_link(h, 5, "iter_hash", 0) == it5
    assert multipath_link(h, 5, "hash_threshold") == ht5
    assert multipath_link(h, 5, "modulo_n") == mod5
    assert multipath_link(h, 5, "modulo_n") == h % 5
    assert multipath_link(h, 5, "hash_threshold") == h // (0xFFFFFFFF // 5 + 1)


def test_pick_backend_accepts_ovs_and_osken_spellings():
    ovs_names = {"dl_src": A, "dl_dst": Z, "nw_src": "192.168.1.10",
                 "nw_dst": "10.10.0.100", "tp_src": 40000, "tp_dst": 443}
    osken = {"eth_src": A, "eth_dst": Z, "eth_type": 0x0800, "ip_proto": 6,
             "ipv4_src": "192.168.1.10", "ipv4_dst": "10.10.0.100",
             "tcp_src": 40000, "tcp_dst": 443}
    for n, link in HRW["tcp_vip"].items():
        assert pick_backend(ovs_names, n) == link
        assert pick_backend(osken, n) == link
    # OF1.3 vlan_vid carries OFPVID_PRESENT (0x1000): only the VID counts
    vlan = {**osken, "vlan_vid": 0x1000 | 100}
    assert pick_backend(vlan, 16) == HRW["tcp_vlan"][16]


def test_pick_backend_input_forms_are_equivalent():
    base = pick_backend({"eth_src": A, "eth_dst": Z, "ip_src": "192.168.1.10",
                         "ip_dst": "10.10.0.100", "tp_src": 40000, "tp_dst": 443}, 16)
    other = pick_backend({"eth_src": bytes.fromhex("020000000001"), "eth_dst": 0x0200000000FE,
                          "ip_src": ipaddress.ip_address("192.168.1.10"),
                          "ip_dst": int(ipaddress.ip_address("10.10.0.100")),
                          "tp_src": 40000, "tp_dst": 443}, 16)
    assert base == other == HRW["tcp_vip"][16]


def test_pick_backend_missing_and_conflicting_fields():
    with pytest.raises(KeyError):
        pick_backend({"eth_src": A, "eth_dst": Z, "ip_src": "1.1.1.1"}, 4)
    with pytest.raises(ValueError):
        pick_backend({"eth_src": A, "dl_src": Z, "eth_dst": Z, "ip_src": "1.1.1.1",
                      "ip_dst": "2.2.2.2", "tp_src": 1, "tp_dst": 2}, 4)


def test_symmetry_and_what_is_ignored():
    args = list(PACKETS["tcp_vip"][0])
    h = symmetric_l4_hash(*args)
    # VLAN PCP/CFI bits are ignored, the VID is not
    assert symmetric_l4_hash(*args[:3], 0xB064, *args[4:]) == \
        symmetric_l4_hash(*args[:3], 100, *args[4:])
    assert symmetric_l4_hash(*args[:3], 100, *args[4:]) != h
    # QinQ: the two VIDs are XORed
    assert symmetric_l4_hash(*args[:3], (100, 100), *args[4:]) == h
    # ports count for TCP, not for UDP
    assert symmetric_l4_hash(*args[:7], 40001, 443) != h
    udp = args[:4] + [17] + args[5:7]
    assert symmetric_l4_hash(*udp, 1, 2) == symmetric_l4_hash(*udp, 3, 4)
    # MACs count
    assert symmetric_l4_hash(args[0], "02:00:00:00:00:fd", *args[2:]) != h


def test_basis_is_uint16():
    args = PACKETS["tcp_basic"][0]
    assert symmetric_l4_hash(*args, basis=4660 + 65536) == PACKETS["tcp_basic"][2]


def test_jhash_lookup3_reference_value():
    # Bob Jenkins' lookup3.c driver: hashlittle("", 0, 0) == 0xdeadbeef and
    # hashlittle("Four score and seven years ago", 30, 0) == 0x17770551
    assert jhash_bytes(b"", 0) == 0xDEADBEEF  # n == 0: no mixing at all
    assert jhash_bytes(b"Four score and seven years ago", 0) == 0x17770551
    assert jhash_bytes(b"Four score and seven years ago", 1) == 0xCD628161


def test_crc32c_core_check_value():
    # standard CRC-32C check value; OVS's instructions skip both inversions
    assert crc32c_update(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283
    assert hash_2words(1, 0, "crc32c") != hash_2words(1, 0, "mhash")


def test_n_links_limits_and_bad_arguments():
    assert multipath_link(0xFFFFFFFF, 1, "hash_threshold") == 0
    assert all(multipath_link(h, 1, alg) == 0
               for h in (0, 1, 0xFFFFFFFF)
               for alg in ("modulo_n", "hash_threshold", "hrw", "iter_hash"))
    assert 0 <= multipath_link(12345, 65536, "hrw") < 65536
    with pytest.raises(ValueError):
        multipath_link(1, 0)
    with pytest.raises(ValueError):
        multipath_link(1, 65537)
    with pytest.raises(ValueError):
        multipath_link(1, 4, "bogus")
    with pytest.raises(ValueError):
        multipath_link(1, 4, hash_impl="bogus")


def test_hrw_minimal_disruption():
    hashes = [symmetric_l4_hash(A, Z, 0x0800, 0, 6, f"10.0.{i // 256}.{i % 256}",
                                "10.10.0.100", 1024 + i, 443) for i in range(3000)]
    for n in (4, 8, 15):
        before = [multipath_link(h, n) for h in hashes]
        after = [multipath_link(h, n + 1) for h in hashes]
        moved = [(b, a) for b, a in zip(before, after) if b != a]
        assert all(a == n for _, a in moved)  # only onto the new link
        assert len(moved) < 2 * len(hashes) / (n + 1)


def test_infer_hash_impl():
    obs = [(dict(zip(("eth_src", "eth_dst", "eth_type", "vlan_tci", "ip_proto",
                      "ip_src", "ip_dst", "tp_src", "tp_dst"), PACKETS[k][0])), n, link)
           for k in HRW for n, link in HRW[k].items()]
    assert infer_hash_impl(obs) == "mhash"
    assert infer_hash_impl([(p, n, (link + 1) % n) for p, n, link in obs]) is None
