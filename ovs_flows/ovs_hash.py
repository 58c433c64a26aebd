"""Bit-exact Python model of Open vSwitch's ``multipath`` action (OVS 3.1).

Why: the controller decides a backend for a punted SYN in Python, while every
later packet of the connection is steered by an OVS flow

    table=0, tcp, actions=multipath(symmetric_l4,0,modulo_n,SLOTS,0,NXM_NX_REG0[0..15]),
                          resubmit(,1)
    table=1, reg0=i, actions=<the owner of slot i>

Both must pick the same backend, so this module recomputes what
``multipath_execute()`` (lib/multipath.c) writes into reg0:

    link = multipath_algorithm(flow_hash_fields(flow, fields, basis),
                               algorithm, n_links, arg)

Written from a reading of the OVS sources (tag v3.1.0 == branch-3.1 for every
function used here): lib/multipath.c, lib/flow.c (flow_hash_fields,
flow_hash_symmetric_l4, flow_hash_symmetric_l3l4, flow_mask_hash_fields),
lib/jhash.c, lib/hash.h, lib/hash-aarch64.h, include/openvswitch/flow.h.

What ``symmetric_l4`` hashes (flow_hash_symmetric_l4)
------------------------------------------------------
A zeroed 32-byte struct, hashed with Bob Jenkins' lookup3 ``jhash_bytes``
(words read in host order; every platform OVS runs on in practice is
little-endian, which is what is modelled here)::

    off  0..15  IPv4: nw_src XOR nw_dst in bytes 0..3 (rest 0);
                IPv6: ipv6_src XOR ipv6_dst (16 bytes); other: 0
    off 16..17  dl_type (network order)
    off 18..19  XOR over both VLAN headers of (tci & 0x0fff), i.e. only the
                VIDs, never PCP/CFI; 0 when untagged
    off 20..21  tp_src XOR tp_dst, only for TCP and SCTP (0 for UDP, ICMP..)
    off 22..27  dl_src XOR dl_dst (6 bytes)
    off 28      nw_proto for IPv4/IPv6, else 0
    off 29..31  padding (0)

So: yes it includes the MACs and the VLAN ID, yes it includes the ports
(TCP/SCTP only), and it is symmetric: every pair enters as an XOR, so the
reply direction (src/dst swapped) hashes identically.  Not hashed: in_port,
TTL/ToS, TCP flags (a SYN and later segments hash the same), IP fragment
state.  The hash sees the packet *as it is when the multipath action runs*:
if an earlier action rewrites a MAC, hash the rewritten value.  Consequence
for the LB: the MACs are per-hop values, so a packet of the same 5-tuple
arriving through a different upstream router (different dl_src) can pick a
different backend.  ``symmetric_l3l4`` (also modelled below) avoids that.

The ``basis`` of the action is a uint16 (flow_hash_fields takes ``uint16_t``).

Algorithms (multipath_algorithm)
--------------------------------
* ``modulo_n``       hash % n
* ``hash_threshold`` hash // (0xffffffff // n + 1)
* ``hrw``            highest random weight: argmax_i hash_2words(hash, i),
                     ties to the lowest i; n > 64 silently uses iter_hash
* ``iter_hash``      M = arg rounded to a power of two in [n, 2n);
                     first hash_2words(hash, i) % M (i = 0, 1, ...) below n

Choice for this project: ``modulo_n`` over a fixed slot count
(``ovs_flows.compiler``; ``vips[].slots``). With the link count fixed, the
algorithm never renumbers anything: the controller moves slots between DIPs
(mptcp_lb/slots.py), so any algorithm is stable, and ``modulo_n`` is the one
that is the same on every OVS build (below). Over a changing backend count,
``hrw`` would be the one with minimal disruption: growing N -> N+1 moves just
the ~1/(N+1) of flows that now prefer the new link; ``modulo_n`` moves
~N/(N+1) of all flows, ``hash_threshold`` about half, and ``iter_hash`` is
only stable while N stays within the same power of two.

The price of ``hrw`` (and ``iter_hash``; also ``symmetric_l3l4``) is that
``hash_2words`` is build-dependent: a generic build (e.g. Debian/Ubuntu
``openvswitch-switch`` on amd64) uses the MurmurHash3-style ``mhash``; a build
with ``-msse4.2`` on x86-64 (typical for OVS-DPDK packages, whose DPDK flags
imply it) or with the ARMv8 CRC extension on aarch64 uses a CRC32-C based
hash.  Select it with ``hash_impl='mhash'`` (default) or ``'crc32c'``.  The
symmetric_l4 hash itself, and therefore ``modulo_n``/``hash_threshold``, is
jhash and identical on every build.  The mhash flavour is verified against a
real OVS 3.1.0 in tests/integration/test_ovs_hash_matches_ovs.py; the crc32c
flavour is implemented from the source but could not be checked against a
live SSE4.2 build here (its CRC32-C core is checked against the standard
check value).  ``infer_hash_impl`` tells the two apart from a few samples
observed on the real switch (e.g. via ``ofproto/trace``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

__all__ = [
    "ALGORITHMS",
    "HASH_IMPLS",
    "crc32c_update",
    "hash_2words",
    "infer_hash_impl",
    "jhash_bytes",
    "multipath_link",
    "pick_backend",
    "symmetric_l3l4_hash",
    "symmetric_l4_hash",
]

M32 = 0xFFFFFFFF
ETH_TYPE_IP = 0x0800
ETH_TYPE_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
VLAN_VID_MASK = 0x0FFF

ALGORITHMS = ("modulo_n", "hash_threshold", "hrw", "iter_hash")
HASH_IMPLS = ("mhash", "crc32c")
HRW_MAX_LINKS = 64  # above this OVS's hrw falls back to iter_hash


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


# ------------------------------------------------------------------ jhash


def _jhash_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32; a ^= _rot(c, 4); c = (c + b) & M32  # noqa: E702
    b = (b - a) & M32; b ^= _rot(a, 6); a = (a + c) & M32  # noqa: E702
    c = (c - b) & M32; c ^= _rot(b, 8); b = (b + a) & M32  # noqa: E702
    a = (a - c) & M32; a ^= _rot(c, 16); c = (c + b) & M32  # noqa: E702
    b = (b - a) & M32; b ^= _rot(a, 19); a = (a + c) & M32  # noqa: E702
    c = (c - b) & M32; c ^= _rot(b, 4); b = (b + a) & M32  # noqa: E702
    return a, b, c


def _jhash_final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c ^= b; c = (c - _rot(b, 14)) & M32  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & M32  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & M32  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & M32  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & M32  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & M32  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & M32  # noqa: E702
    return a, b, c


def jhash_bytes(data: bytes, basis: int = 0) -> int:
    """lookup3 over ``data`` as OVS's jhash_bytes does on a little-endian host:
    whole 12-byte blocks are mixed, a zero-padded tail (if any) is finalised."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + basis) & M32
    pos = 0
    while n - pos >= 12:
        a = (a + int.from_bytes(data[pos:pos + 4], "little")) & M32
        b = (b + int.from_bytes(data[pos + 4:pos + 8], "little")) & M32
        c = (c + int.from_bytes(data[pos + 8:pos + 12], "little")) & M32
        a, b, c = _jhash_mix(a, b, c)
        pos += 12
    if pos < n:
        tail = data[pos:].ljust(12, b"\0")
        a = (a + int.from_bytes(tail[0:4], "little")) & M32
        b = (b + int.from_bytes(tail[4:8], "little")) & M32
        c = (c + int.from_bytes(tail[8:12], "little")) & M32
        a, b, c = _jhash_final(a, b, c)
    return c


# ------------------------------------------------------- hash.h (2 flavours)


def _mhash_add(h: int, data: int) -> int:
    data &= M32
    if data:  # a zero word leaves the state untouched before the rotation
        data = (data * 0xCC9E2D51) & M32
        data = _rot(data, 15)
        data = (data * 0x1B873593) & M32
        h ^= data
    h = _rot(h, 13)
    return (h * 5 + 0xE6546B64) & M32


def _mhash_finish(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_CRC32C_POLY if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c_update(crc: int, data: bytes) -> int:
    """Raw CRC32-C step as the SSE4.2 ``crc32`` / ARMv8 ``crc32c*`` instructions
    compute it: no initial or final inversion."""
    crc &= M32
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _crc_u32(crc: int, v: int) -> int:
    return crc32c_update(crc, (v & M32).to_bytes(4, "little"))


def _crc_u64(crc: int, v: int) -> int:
    return crc32c_update(crc, (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))


def _crc_finish(h: int, final: int) -> int:
    h = (_crc_u64(h, final) * 0x805204F3) & M32
    return h ^ (h >> 16)


def _check_impl(hash_impl: str) -> None:
    if hash_impl not in HASH_IMPLS:
        raise ValueError(f"hash_impl must be one of {HASH_IMPLS}, not {hash_impl!r}")


def hash_add(h: int, data: int, hash_impl: str = "mhash") -> int:
    """hash.h ``hash_add`` of the given build flavour."""
    _check_impl(hash_impl)
    return _mhash_add(h, data) if hash_impl == "mhash" else _crc_u32(h, data)


def hash_add64(h: int, data: int, hash_impl: str = "mhash") -> int:
    _check_impl(hash_impl)
    if hash_impl == "mhash":
        return _mhash_add(_mhash_add(h, data & M32), data >> 32)
    return _crc_u64(h, data)


def hash_finish(h: int, final: int, hash_impl: str = "mhash") -> int:
    _check_impl(hash_impl)
    if hash_impl == "mhash":
        return _mhash_finish((h ^ final) & M32)
    return _crc_finish(h, final)


def hash_2words(x: int, y: int, hash_impl: str = "mhash") -> int:
    """hash.h ``hash_2words``: what hrw and iter_hash use as link weights."""
    _check_impl(hash_impl)
    x &= M32
    y &= M32
    if hash_impl == "mhash":
        return _mhash_finish(_mhash_add(_mhash_add(x, 0), y) ^ 8)
    return _crc_finish(_crc_u64(0, (y << 32) | x), 23)


# ------------------------------------------------------------ field inputs


def _mac_bytes(mac) -> bytes:
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    if isinstance(mac, int):
        return mac.to_bytes(6, "big")
    text = str(mac).replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def _ip_bytes(addr, eth_type: int) -> bytes:
    size = 16 if eth_type == ETH_TYPE_IPV6 else 4
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) != size:
            raise ValueError(f"address must be {size} bytes, got {len(addr)}")
        return bytes(addr)
    if isinstance(addr, int):
        return addr.to_bytes(size, "big")
    ip = addr if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
        else ipaddress.ip_address(str(addr))
    packed = ip.packed
    if len(packed) != size:
        raise ValueError(f"{addr!r} does not fit eth_type 0x{eth_type:04x}")
    return packed


def _vids(vlan_tci) -> int:
    """XOR of the VIDs of up to two VLAN headers (OVS: FLOW_MAX_VLAN_HEADERS)."""
    if vlan_tci is None:
        return 0
    tcis = [vlan_tci] if isinstance(vlan_tci, int) else list(vlan_tci)
    if len(tcis) > 2:
        raise ValueError("OVS keeps at most two VLAN headers")
    v = 0
    for tci in tcis:
        v ^= int(tci) & VLAN_VID_MASK
    return v


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


# ------------------------------------------------------------- field hashes


def symmetric_l4_hash(eth_src, eth_dst, eth_type, vlan_tci, ip_proto,
                      ip_src, ip_dst, tp_src, tp_dst, basis: int = 0) -> int:
    """OVS ``flow_hash_symmetric_l4(flow, basis)``, bit-exact (any build).

    eth_src/eth_dst: "aa:bb:..", 6 bytes or int.  eth_type: int (0x0800 IPv4,
    0x86dd IPv6; anything else hashes only L2).  vlan_tci: int TCI (or VID, or
    OF1.3 ``vlan_vid`` with OFPVID_PRESENT; only the low 12 bits count), a
    sequence of two TCIs for QinQ, or 0/None when untagged.  ip_*: str,
    ipaddress object, packed bytes or int.  tp_*: host-order ints.  basis: the
    action's basis (uint16).
    """
    eth_type = int(eth_type) & 0xFFFF
    buf = bytearray(32)
    buf[16:18] = eth_type.to_bytes(2, "big")
    buf[18:20] = _vids(vlan_tci).to_bytes(2, "big")
    buf[22:28] = _xor(_mac_bytes(eth_src), _mac_bytes(eth_dst))
    if eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        addr = _xor(_ip_bytes(ip_src, eth_type), _ip_bytes(ip_dst, eth_type))
        buf[0:len(addr)] = addr
        proto = int(ip_proto) & 0xFF
        buf[28] = proto
        if proto in (IPPROTO_TCP, IPPROTO_SCTP):
            buf[20:22] = ((int(tp_src) ^ int(tp_dst)) & 0xFFFF).to_bytes(2, "big")
    return jhash_bytes(bytes(buf), basis & 0xFFFF)


def symmetric_l3l4_hash(eth_type, ip_proto, ip_src, ip_dst, tp_src, tp_dst,
                        basis: int = 0, *, udp_ports: bool = False,
                        hash_impl: str = "mhash") -> int:
    """OVS ``flow_hash_symmetric_l3l4`` (``symmetric_l3l4`` or, with
    ``udp_ports``, ``symmetric_l3l4+udp``) for unfragmented IP packets.

    No MACs, no VLAN: robust when packets of one connection can arrive via
    different L2 next hops.  Build-dependent (uses hash_add): see hash_impl.
    """
    _check_impl(hash_impl)
    eth_type = int(eth_type) & 0xFFFF
    basis &= 0xFFFF
    h = basis
    if eth_type == ETH_TYPE_IP:
        x = _xor(_ip_bytes(ip_src, eth_type), _ip_bytes(ip_dst, eth_type))
        h = hash_add(h, int.from_bytes(x, "little"), hash_impl)
    elif eth_type == ETH_TYPE_IPV6:
        x = _xor(_ip_bytes(ip_src, eth_type), _ip_bytes(ip_dst, eth_type))
        for i in (0, 8):
            h = hash_add64(h, int.from_bytes(x[i:i + 8], "little"), hash_impl)
    else:
        raise ValueError("non-IP packets fall back to symmetric_l2; not modelled")
    proto = int(ip_proto) & 0xFF
    h = hash_add(h, proto, hash_impl)
    if proto in (IPPROTO_TCP, IPPROTO_SCTP) or (udp_ports and proto == IPPROTO_UDP):
        ports = ((int(tp_src) ^ int(tp_dst)) & 0xFFFF).to_bytes(2, "big")
        h = hash_add(h, int.from_bytes(ports, "little"), hash_impl)
    return hash_finish(h, basis, hash_impl)


# --------------------------------------------------------------- algorithms


def _round_up_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length() if x > 1 else 1


def _iter_hash(h: int, n_links: int, modulo: int, hash_impl: str) -> int:
    if modulo < n_links or modulo // 2 > n_links:
        modulo = _round_up_pow2(n_links)
    i = 0
    while True:
        link = (hash_2words(h, i, hash_impl) % modulo) & 0xFFFF
        i += 1
        if link < n_links:
            return link


def _hrw(h: int, n_links: int, hash_impl: str) -> int:
    best_link, best_weight = 0, hash_2words(h, 0, hash_impl)
    for link in range(1, n_links):
        w = hash_2words(h, link, hash_impl)
        if w > best_weight:
            best_link, best_weight = link, w
    return best_link


def multipath_link(hash_value: int, n_links: int, algorithm: str = "hrw",
                   arg: int = 0, *, hash_impl: str = "mhash") -> int:
    """OVS ``multipath_algorithm``: the link index (0..n_links-1) written to
    the destination field for a flow whose field hash is ``hash_value``."""
    if not 1 <= n_links <= 65536:
        raise ValueError(f"n_links {n_links} is not in valid range 1 to 65536")
    _check_impl(hash_impl)
    h = hash_value & M32
    if algorithm == "modulo_n":
        return h % n_links
    if algorithm == "hash_threshold":
        return 0 if n_links == 1 else h // (M32 // n_links + 1)
    if algorithm == "hrw":
        if n_links <= HRW_MAX_LINKS:
            return _hrw(h, n_links, hash_impl)
        return _iter_hash(h, n_links, 0, hash_impl)
    if algorithm == "iter_hash":
        return _iter_hash(h, n_links, arg & M32, hash_impl)
    raise ValueError(f"unknown algorithm {algorithm!r}; one of {ALGORITHMS}")


# ------------------------------------------------------------- convenience

# Accepted spellings per argument: our names, OVS/ovs-ofctl names, OF1.3 /
# os-ken OFPMatch names.
_ALIASES = {
    "eth_src": ("eth_src", "dl_src"),
    "eth_dst": ("eth_dst", "dl_dst"),
    "eth_type": ("eth_type", "dl_type"),
    "vlan_tci": ("vlan_tci", "vlan_vid", "dl_vlan"),
    "ip_proto": ("ip_proto", "nw_proto"),
    "ip_src": ("ip_src", "nw_src", "ipv4_src", "ipv6_src"),
    "ip_dst": ("ip_dst", "nw_dst", "ipv4_dst", "ipv6_dst"),
    "tp_src": ("tp_src", "tcp_src", "sctp_src", "udp_src"),
    "tp_dst": ("tp_dst", "tcp_dst", "sctp_dst", "udp_dst"),
}
_DEFAULTS = {"eth_type": ETH_TYPE_IP, "vlan_tci": 0, "ip_proto": IPPROTO_TCP}


def _normalise(packet_fields: Mapping, need_l2: bool = True) -> dict:
    out = {}
    for name, spellings in _ALIASES.items():
        if not need_l2 and name in ("eth_src", "eth_dst", "vlan_tci"):
            continue
        found = [k for k in spellings if packet_fields.get(k) is not None]
        if len(found) > 1 and len({str(packet_fields[k]) for k in found}) > 1:
            raise ValueError(f"conflicting values for {name}: {found}")
        if found:
            out[name] = packet_fields[found[0]]
        elif name in _DEFAULTS:
            out[name] = _DEFAULTS[name]
        else:
            raise KeyError(f"packet_fields lacks {name} (any of {spellings})")
    return out


def pick_backend(packet_fields: Mapping, n_links: int, *,
                 fields: str = "symmetric_l4", basis: int = 0,
                 algorithm: str = "hrw", arg: int = 0,
                 hash_impl: str = "mhash") -> int:
    """Index OVS's ``multipath(fields,basis,algorithm,n_links,arg,dst)`` picks
    for this packet; defaults match ``multipath(symmetric_l4,0,hrw,N,0,..)``.

    ``packet_fields`` keys (any spelling): eth_src/dl_src, eth_dst/dl_dst,
    eth_type/dl_type (default 0x0800), vlan_tci/vlan_vid (default 0),
    ip_proto/nw_proto (default 6), ip_src/nw_src/ipv4_src, ip_dst/nw_dst/
    ipv4_dst, tp_src/tcp_src, tp_dst/tcp_dst.  Use the values as they are
    when the multipath action runs (after any earlier rewrites).
    """
    if fields == "symmetric_l4":
        f = _normalise(packet_fields)
        h = symmetric_l4_hash(f["eth_src"], f["eth_dst"], f["eth_type"],
                              f["vlan_tci"], f["ip_proto"], f["ip_src"],
                              f["ip_dst"], f["tp_src"], f["tp_dst"], basis)
    elif fields in ("symmetric_l3l4", "symmetric_l3l4+udp"):
        f = _normalise(packet_fields, need_l2=False)
        h = symmetric_l3l4_hash(f["eth_type"], f["ip_proto"], f["ip_src"],
                                f["ip_dst"], f["tp_src"], f["tp_dst"], basis,
                                udp_ports=fields.endswith("+udp"),
                                hash_impl=hash_impl)
    else:
        raise ValueError(f"fields {fields!r} not modelled")
    return multipath_link(h, n_links, algorithm, arg, hash_impl=hash_impl)


def infer_hash_impl(samples: Iterable[tuple[Mapping, int, int]], *,
                    algorithm: str = "hrw", **kw) -> str | None:
    """Which ``hash_impl`` the switch was built with, from observations
    ``(packet_fields, n_links, link_ovs_chose)``; None if neither fits all.
    Use n_links >= 3 samples with hrw: 1 link carries no information."""
    samples = list(samples)
    for impl in HASH_IMPLS:
        if samples and all(
            pick_backend(p, n, algorithm=algorithm, hash_impl=impl, **kw) == link
            for p, n, link in samples
        ):
            return impl
    return None

