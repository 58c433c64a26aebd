"""MPTCP keys, tokens, TCP options and frames: the one place that knows their bytes.

Everything here is pure (no I/O) and follows docs/token-steering.md, which
fixes the contracts between the MUX classifier, the controller and the DIP.
``classify_frame`` is the reference the BPF classifier is fuzzed against, so
it follows that page byte for byte and never raises. The frame editing at the
end is what the controller does to a punted SYN in seed mode.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import struct
from dataclasses import dataclass

KEY_LEN = 8
MAX_SLICE_BITS = 12

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_TIMESTAMP = 8
TCPOPT_MPTCP = 30
TCPOPT_EXPERIMENTAL = 253  # RFC 6994, shared by experiments told apart by their ExID
TIMESTAMP_LEN = 10

MPTCP_SUB_CAPABLE = 0
MPTCP_SUB_JOIN = 1
MPC_FLAG_HMAC_SHA256 = 0x01  # "H": the only crypto algorithm defined for v1
# MP_CAPABLE length -> how many keys it carries (RFC 8684 3.1): SYN v1, SYN/ACK or
# SYN v0, third ACK, and the first data ACK without / with a DSS checksum.
_MPC_KEYS_BY_LEN = {4: 0, 12: 1, 20: 2, 22: 2, 24: 2}
MP_JOIN_SYN_LEN = 12
_MP_JOIN_LENS = (MP_JOIN_SYN_LEN, 16, 24)  # SYN, SYN/ACK, third ACK

KEY_CARRIER_EXID = 0x4D4C  # "ML"
KEY_CARRIER_LEN = 4 + KEY_LEN

# The tag MAC: TAG_PREFIX, the class, then a TAG_VALUE_BITS value (bpf/mptcp_lb.h).
TAG_PREFIX = bytes((0x0A, 0x4D))  # locally administered unicast, then "M"
CLASS_NONE = 0  # a tag MAC a frame arrived with and did not earn
CLASS_MP_CAPABLE = 1
CLASS_MP_JOIN = 2
CLASS_TIMESTAMP = 3
TAG_VALUE_BITS = 24
SERVER_ID_BITS = 12  # the low TSval bits a DIP stamps its server ID into
SERVER_ID_MASK = (1 << SERVER_ID_BITS) - 1

_ETH_HLEN = 14
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_IPPROTO_TCP = 6
# IPv6 as the classifier walks it (bpf/parse.h: ipv6_ext_step; the limits are bpf/mptcp_lb.h's).
_IPV6_HLEN = 40
IPV6_EXT_HEADERS_MAX = 8
IPV6_EXT_BYTES_MAX = 128
IPV6_FRAG_OFFSET_AND_MF = 0xFFF9  # of the fragment header's u16 at +2: an atomic fragment has neither
_IPPROTO_HOPOPTS, _IPPROTO_ROUTING, _IPPROTO_FRAGMENT, _IPPROTO_AH, _IPPROTO_DSTOPTS = 0, 43, 44, 51, 60
_TCP_HLEN = 20
MAX_TCP_HLEN = 60  # data offset is 4 bits of 32-bit words
_TCP_SYN = 0x02
_TCP_ACK = 0x10


class OptionError(ValueError):
    """A TCP option (or option area) whose layout is malformed; the message says where."""


class NoOptionRoom(OptionError):
    """A TCP header too full for one more option; the message says how full."""


# --- crypto -------------------------------------------------------------------

def _digest(key: bytes, version: int) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes, got {key!r}")
    if version == 1:
        return hashlib.sha256(key).digest()
    if version == 0:
        return hashlib.sha1(key).digest()
    raise ValueError(f"version must be 0 or 1, got {version!r}")


def key_to_token(key: bytes, version: int = 1) -> int:
    """The connection token: first 4 bytes of SHA-256(key) (SHA-1 in v0), big-endian."""
    return int.from_bytes(_digest(key, version)[:4], "big")


def key_to_idsn(key: bytes, version: int = 1) -> int:
    """The initial data sequence number: last 8 bytes of the key's hash, big-endian."""
    return int.from_bytes(_digest(key, version)[-8:], "big")


def _check_slice_bits(slice_bits: int) -> None:
    if not isinstance(slice_bits, int) or not 1 <= slice_bits <= MAX_SLICE_BITS:
        raise ValueError(f"slice_bits must be 1..{MAX_SLICE_BITS}, got {slice_bits!r}")


def slice_of(token: int, slice_bits: int) -> int:
    """The token's slice: its high bits, since the kernel's token hash buckets use the low ones."""
    _check_slice_bits(slice_bits)
    if not 0 <= token <= 0xFFFFFFFF:
        raise ValueError(f"token must be a u32, got {token!r}")
    return token >> (32 - slice_bits)


def make_key(slices: set[int] | frozenset[int], slice_bits: int, rng=secrets) -> bytes:
    """A fresh CSPRNG key whose v1 token lands in one of ``slices``.

    Rejection sampling keeps the key uniform within the chosen slices, so the
    token stays as unguessable as the kernel's own.
    """
    _check_slice_bits(slice_bits)
    if not slices:
        raise ValueError("slices must not be empty")
    bad = sorted(s for s in slices if not isinstance(s, int) or not 0 <= s < 1 << slice_bits)
    if bad:
        raise ValueError(f"slices {bad} are outside 0..{(1 << slice_bits) - 1} for slice_bits={slice_bits}")
    while True:
        key = rng.token_bytes(KEY_LEN)
        if slice_of(key_to_token(key), slice_bits) in slices:
            return key


# --- options ------------------------------------------------------------------

@dataclass(frozen=True)
class MpCapable:
    """MP_CAPABLE: keys present depend on the handshake step (none in a v1 SYN)."""
    version: int
    flags: int
    sender_key: bytes | None
    receiver_key: bytes | None


@dataclass(frozen=True)
class MpJoinSyn:
    """MP_JOIN as sent in a SYN: the token names the connection to join."""
    backup: bool
    address_id: int
    token: int
    nonce: int


@dataclass(frozen=True)
class Timestamp:
    """TCP timestamps (RFC 7323)."""
    tsval: int
    tsecr: int


def _option_spans(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(offset, kind, length) of every option in buf[start:end] but NOP/EOL padding.

    The walk rules of docs/token-steering.md §2.4, shared by the parser and
    the classifier so they cannot drift apart.
    """
    spans = []
    off = start
    while off < end:
        kind = buf[off]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            off += 1
            continue
        if off + 1 >= end:
            raise OptionError(f"option kind {kind} at offset {off - start} has no length byte")
        length = buf[off + 1]
        if length < 2:
            raise OptionError(f"option kind {kind} at offset {off - start} has length {length} < 2")
        if off + length > end:
            raise OptionError(f"option kind {kind} at offset {off - start} with length {length} "
                              f"runs past the option area's end ({end - start} bytes)")
        spans.append((off, kind, length))
        off += length
    return spans


def parse_tcp_options(raw: bytes) -> list[tuple[int, bytes]]:
    """(kind, full option bytes) of each option in a TCP option area, in order.

    NOPs are skipped and EOL ends the area; a layout the walk rules call
    malformed raises OptionError.
    """
    raw = bytes(raw)
    return [(kind, raw[off:off + length]) for off, kind, length in _option_spans(raw, 0, len(raw))]


def _check_option(opt: bytes, kind: int, name: str) -> None:
    if len(opt) < 2 or opt[0] != kind:
        raise OptionError(f"{name}: kind must be {kind}, got {opt[:1].hex() or 'nothing'}")
    if opt[1] != len(opt):
        raise OptionError(f"{name}: length byte {opt[1]} does not match the {len(opt)} bytes given")


def _check_key(key: bytes | None, field: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"{field} must be {KEY_LEN} bytes, got {key!r}")


def _check_uint(value: int, bits: int, field: str) -> None:
    if not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"{field} must be a u{bits}, got {value!r}")


def parse_mptcp(opt: bytes) -> MpCapable | MpJoinSyn | None:
    """Decode an MPTCP option (kind 30): MP_CAPABLE or a SYN's MP_JOIN.

    Other subtypes, and MP_JOIN of the later handshake steps, give None.
    """
    opt = bytes(opt)
    _check_option(opt, TCPOPT_MPTCP, "MPTCP option")
    if len(opt) < 3:
        raise OptionError(f"MPTCP option: length {len(opt)} leaves no room for the subtype")
    subtype = opt[2] >> 4
    if subtype == MPTCP_SUB_CAPABLE:
        keys = _MPC_KEYS_BY_LEN.get(len(opt))
        if keys is None:
            raise OptionError(f"MP_CAPABLE: length {len(opt)} is not one of {sorted(_MPC_KEYS_BY_LEN)}")
        return MpCapable(version=opt[2] & 0x0F, flags=opt[3],
                         sender_key=opt[4:12] if keys >= 1 else None,
                         receiver_key=opt[12:20] if keys == 2 else None)
    if subtype == MPTCP_SUB_JOIN:
        if len(opt) not in _MP_JOIN_LENS:
            raise OptionError(f"MP_JOIN: length {len(opt)} is not one of {list(_MP_JOIN_LENS)}")
        if len(opt) != MP_JOIN_SYN_LEN:
            return None
        token, nonce = struct.unpack_from("!II", opt, 4)
        return MpJoinSyn(backup=bool(opt[2] & 0x01), address_id=opt[3], token=token, nonce=nonce)
    return None


def build_mp_capable(version: int = 1, flags: int = MPC_FLAG_HMAC_SHA256,
                     sender_key: bytes | None = None, receiver_key: bytes | None = None) -> bytes:
    """MP_CAPABLE with no key (v1 SYN), the sender's key (SYN/ACK, v0 SYN) or both (third ACK)."""
    _check_uint(version, 4, "version")
    _check_uint(flags, 8, "flags")
    keys = b""
    if sender_key is not None:
        _check_key(sender_key, "sender_key")
        keys = bytes(sender_key)
    if receiver_key is not None:
        if sender_key is None:
            raise ValueError("receiver_key needs a sender_key: MP_CAPABLE carries it second")
        _check_key(receiver_key, "receiver_key")
        keys += bytes(receiver_key)
    return bytes((TCPOPT_MPTCP, 4 + len(keys), MPTCP_SUB_CAPABLE << 4 | version, flags)) + keys


def build_mp_join_syn(backup: bool, address_id: int, token: int, nonce: int) -> bytes:
    """MP_JOIN for a SYN (length 12)."""
    _check_uint(address_id, 8, "address_id")
    _check_uint(token, 32, "token")
    _check_uint(nonce, 32, "nonce")
    return struct.pack("!BBBBII", TCPOPT_MPTCP, MP_JOIN_SYN_LEN,
                       MPTCP_SUB_JOIN << 4 | bool(backup), address_id, token, nonce)


def build_timestamp(tsval: int, tsecr: int) -> bytes:
    """TCP timestamp option (kind 8, length 10)."""
    _check_uint(tsval, 32, "tsval")
    _check_uint(tsecr, 32, "tsecr")
    return struct.pack("!BBII", TCPOPT_TIMESTAMP, TIMESTAMP_LEN, tsval, tsecr)


def parse_timestamp(opt: bytes) -> Timestamp:
    """Decode a TCP timestamp option; any length but 10 is malformed."""
    opt = bytes(opt)
    _check_option(opt, TCPOPT_TIMESTAMP, "timestamp option")
    if len(opt) != TIMESTAMP_LEN:
        raise OptionError(f"timestamp option: length {len(opt)} must be {TIMESTAMP_LEN}")
    return Timestamp(*struct.unpack_from("!II", opt, 2))


def build_key_carrier(key: bytes) -> bytes:
    """The seed-mode option that hands the controller's key to the DIP inside the SYN."""
    _check_key(key, "key")
    return struct.pack("!BBH", TCPOPT_EXPERIMENTAL, KEY_CARRIER_LEN, KEY_CARRIER_EXID) + bytes(key)


def parse_key_carrier(opt: bytes) -> bytes | None:
    """The key in a key carrier option, or None if the option is not ours.

    Kind 253 is shared by every RFC 6994 experiment, so another ExID is
    someone else's option, not an error.
    """
    opt = bytes(opt)
    if len(opt) < 4 or opt[0] != TCPOPT_EXPERIMENTAL or struct.unpack_from("!H", opt, 2)[0] != KEY_CARRIER_EXID:
        return None
    _check_option(opt, TCPOPT_EXPERIMENTAL, "key carrier")
    if len(opt) != KEY_CARRIER_LEN:
        raise OptionError(f"key carrier: length {len(opt)} must be {KEY_CARRIER_LEN}")
    return opt[4:]


# --- classifier reference -----------------------------------------------------

def _ipv4_tcp_offset(frame: bytes) -> int | None:
    """Where the TCP header of an unfragmented IPv4 packet starts, else None."""
    n = len(frame)
    if n < _ETH_HLEN + 20:
        return None
    version, ihl = frame[14] >> 4, frame[14] & 0x0F
    if version != 4 or ihl < 5:
        return None
    l4 = _ETH_HLEN + ihl * 4
    if l4 > n:
        return None
    if frame[20] & 0x3F or frame[21]:  # MF flag, fragment offset
        return None
    return l4 if frame[23] == _IPPROTO_TCP else None


def _ipv6_tcp_offset(frame: bytes) -> int | None:
    """Where the TCP header of an IPv6 packet starts, past the extension headers the classifier walks, else None.

    Hop-by-hop options only first, routing and destination options, AH, an
    atomic fragment header; at most IPV6_EXT_HEADERS_MAX of them and the TCP
    header within IPV6_EXT_BYTES_MAX bytes of the fixed header.
    """
    if len(frame) < _ETH_HLEN + _IPV6_HLEN or frame[14] >> 4 != 6:
        return None
    off, nxt = _ETH_HLEN + _IPV6_HLEN, frame[20]
    for i in range(IPV6_EXT_HEADERS_MAX + 1):
        if off > _ETH_HLEN + _IPV6_HLEN + IPV6_EXT_BYTES_MAX:
            return None
        if nxt == _IPPROTO_TCP:
            return off
        if i == IPV6_EXT_HEADERS_MAX or off + 8 > len(frame):
            return None
        if (nxt == _IPPROTO_HOPOPTS and i == 0) or nxt in (_IPPROTO_ROUTING, _IPPROTO_DSTOPTS):
            length = (frame[off + 1] + 1) * 8
        elif nxt == _IPPROTO_AH:
            length = (frame[off + 1] + 2) * 4
        elif nxt == _IPPROTO_FRAGMENT and not int.from_bytes(frame[off + 2:off + 4], "big") \
                & IPV6_FRAG_OFFSET_AND_MF:
            length = 8  # offset 0 and M clear: an atomic fragment, the whole packet
        else:
            return None
        nxt, off = frame[off], off + length
    return None


def _walked_tcp(frame: bytes) -> tuple[int, int, list[tuple[int, int, int]], bool] | None:
    """(TCP offset, option area end, option spans, is IPv6) of a frame the classifier parses, else None.

    The classifier's preconditions (docs/token-steering.md §2): Ethernet,
    IPv4 without fragmentation or IPv6 with the extension headers it walks,
    TCP whose whole header is in the frame, and a well-formed option area.
    """
    n = len(frame)
    if n < _ETH_HLEN:
        return None
    ethertype = frame[12] << 8 | frame[13]
    if ethertype == _ETH_P_IP:
        l4 = _ipv4_tcp_offset(frame)
    elif ethertype == _ETH_P_IPV6:
        l4 = _ipv6_tcp_offset(frame)
    else:
        return None
    if l4 is None or l4 + _TCP_HLEN > n:
        return None
    doff = frame[l4 + 12] >> 4
    if doff < 5 or l4 + doff * 4 > n:
        return None
    try:
        spans = _option_spans(frame, l4 + _TCP_HLEN, l4 + doff * 4)
    except OptionError:
        return None
    if any(kind == TCPOPT_TIMESTAMP and length != TIMESTAMP_LEN for _, kind, length in spans):
        return None  # the walk calls a timestamp of another length malformed
    return l4, l4 + doff * 4, spans, ethertype == _ETH_P_IPV6


def classify_frame(frame: bytes) -> tuple[int, int] | None:
    """The MUX classifier's verdict (class, value) for an Ethernet frame, or None.

    Follows docs/token-steering.md §2 exactly; the BPF classifier must agree
    on every byte sequence, and no input makes this raise.
    """
    walked = _walked_tcp(frame)
    if walked is None:
        return None
    l4, _, spans, ipv6 = walked
    timestamp = mptcp = None
    for off, kind, length in spans:
        if kind == TCPOPT_TIMESTAMP:
            if timestamp is None:
                timestamp = off
        elif kind == TCPOPT_MPTCP and length >= 3 and mptcp is None:
            mptcp = (off, length)
    flags = frame[l4 + 13]
    if flags & _TCP_SYN:
        if flags & _TCP_ACK or mptcp is None:
            return None
        off, length = mptcp
        subtype = frame[off + 2] >> 4
        if subtype == MPTCP_SUB_CAPABLE:
            return None if ipv6 else (CLASS_MP_CAPABLE, 0)  # IPv6 has no seed mode: the hash, a pool key
        if subtype == MPTCP_SUB_JOIN and length == MP_JOIN_SYN_LEN:
            return CLASS_MP_JOIN, int.from_bytes(frame[off + 4:off + 8], "big") >> (32 - TAG_VALUE_BITS)
        return None
    if timestamp is not None:
        return CLASS_TIMESTAMP, int.from_bytes(frame[timestamp + 6:timestamp + 10], "big") & SERVER_ID_MASK
    return None


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _carrier_at(frame: bytes, spans: list[tuple[int, int, int]]) -> int | None:
    for off, kind, length in spans:
        if kind == TCPOPT_EXPERIMENTAL and length == KEY_CARRIER_LEN and \
                int.from_bytes(frame[off + 2:off + 4], "big") == KEY_CARRIER_EXID:
            return off
    return None


def _le_sum(data: bytes) -> int:
    return sum(int.from_bytes(data[i:i + 2], "little") for i in range(0, len(data), 2))


def classifier_output(frame: bytes) -> bytes:
    """The frame as the MUX classifier hands it to OVS (with no punt budget configured).

    Client key carriers become NOPs (up to the three that fit), the TCP
    checksum moved by exactly what the kernel's incremental update does, and
    the destination MAC becomes the verdict's tag, the "none" tag if the frame
    came with a tag MAC and earned none, or stays. The BPF classifier must
    produce these bytes for every input.
    """
    out = bytearray(frame)
    walked = _walked_tcp(frame)
    if walked is not None:
        l4, end, spans, _ = walked
        old_header = bytes(out[l4:end])
        for _ in range(3):
            at = _carrier_at(bytes(out), spans)
            if at is None:
                break
            out[at:at + KEY_CARRIER_LEN] = bytes([TCPOPT_NOP]) * KEY_CARRIER_LEN
            spans = _option_spans(bytes(out), l4 + _TCP_HLEN, end)
        if bytes(out[l4:end]) != old_header:
            # bpf_csum_diff() then bpf_l4_csum_replace(), as x86 computes them: little-endian words.
            old = int.from_bytes(out[l4 + 16:l4 + 18], "little")
            new = 0xFFFF - ((_le_sum(bytes(out[l4:end])) - _le_sum(old_header) - old - 1) % 0xFFFF + 1)
            out[l4 + 16:l4 + 18] = new.to_bytes(2, "little")
    verdict = classify_frame(bytes(out))
    if verdict is not None:
        out[:6] = bytes.fromhex(tag_mac(*verdict).replace(":", ""))
    elif bytes(out[:2]) == TAG_PREFIX:
        out[:6] = TAG_PREFIX + bytes((CLASS_NONE, 0, 0, 0))
    return bytes(out)


def tag_mac(cls: int, value: int) -> str:
    """The destination MAC the classifier writes for a verdict: 0a:4d:class:value(24 bits)."""
    if cls not in (CLASS_MP_CAPABLE, CLASS_MP_JOIN, CLASS_TIMESTAMP):
        raise ValueError(f"cls must be 1, 2 or 3, got {cls!r}")
    _check_uint(value, TAG_VALUE_BITS, "value")
    return _mac_text(TAG_PREFIX + bytes((cls,)) + value.to_bytes(TAG_VALUE_BITS // 8, "big"))


# The mask of a tag MAC's prefix and class: matches every tag of one class.
TAG_CLASS_MASK = _mac_text(b"\xff" * (len(TAG_PREFIX) + 1) + bytes(TAG_VALUE_BITS // 8))


SECOND_CHANCE_ADDR_OFF = len(TAG_PREFIX)  # where the previous owner's address starts in the mark
SECOND_CHANCE_PASSED_ID = 0x4D40  # a DIP's mark on a packet it passed on: this | hops, in the IPv4 ID
SECOND_CHANCE_HOPS_MASK = 0x7
SECOND_CHANCE_MAX_HOPS = 4  # a packet is passed on at most this often


def second_chance_mac(previous_owner: str) -> str:
    """The source MAC a MUX writes on a packet of a slot in transition: 0a:4d, then the old owner's IPv4.

    The new owner's tc ingress program (bpf/dip_tc.c) reads the address back
    and hands the packet to that DIP when it holds no connection for it.
    """
    return ":".join(f"{b:02x}" for b in TAG_PREFIX + ipaddress.IPv4Address(previous_owner).packed)


# --- frame editing ------------------------------------------------------------

@dataclass(frozen=True)
class FiveTuple:
    """A TCP connection's addresses, as the MUX hashes them."""
    src: str
    dst: str
    sport: int
    dport: int
    proto: int = _IPPROTO_TCP


def _internet_checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_text(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _tcp_offset(frame: bytes) -> int:
    """Where the TCP header of an Ethernet/IPv4/TCP frame starts; ValueError naming what is wrong if not one."""
    if len(frame) < _ETH_HLEN + 20 or struct.unpack_from("!H", frame, 12)[0] != _ETH_P_IP:
        raise ValueError("not an Ethernet/IPv4 frame")
    if frame[_ETH_HLEN] >> 4 != 4 or frame[_ETH_HLEN] & 0x0F < 5 or frame[23] != _IPPROTO_TCP:
        raise ValueError("not an IPv4 TCP packet with a valid header length")
    tcp = _ETH_HLEN + (frame[_ETH_HLEN] & 0x0F) * 4
    ip_end = _ETH_HLEN + struct.unpack_from("!H", frame, _ETH_HLEN + 2)[0]
    if tcp + _TCP_HLEN > ip_end or ip_end > len(frame):
        raise ValueError(f"IP total length {ip_end - _ETH_HLEN} does not hold a TCP header in {len(frame)} bytes")
    if not _TCP_HLEN <= (frame[tcp + 12] >> 4) * 4 <= ip_end - tcp:
        raise ValueError(f"TCP data offset {frame[tcp + 12] >> 4} runs outside the IP packet")
    return tcp


def parse_mpc_syn(frame: bytes) -> FiveTuple | None:
    """The 5-tuple of a SYN carrying MP_CAPABLE (by ``classify_frame``'s rules), else None.

    ValueError if the classifier's rules pass but the IP total length does not
    fit the frame: such a SYN could not be edited.
    """
    verdict = classify_frame(frame)
    if verdict is None or verdict[0] != CLASS_MP_CAPABLE:
        return None
    tcp = _tcp_offset(frame)
    sport, dport = struct.unpack_from("!HH", frame, tcp)
    return FiveTuple(_ipv4_text(frame[_ETH_HLEN + 12:_ETH_HLEN + 16]), _ipv4_text(frame[_ETH_HLEN + 16:_ETH_HLEN + 20]),
                     sport, dport)


def _options_in_use(frame: bytes, tcp: int) -> int:
    """Option bytes up to the end of the last option: what an appended option must follow.

    The padding after it goes: BSD and macOS stacks pad with EOL, and an
    option placed after an EOL would be past the end of the list for every
    reader, the DIP's walk included; trailing NOPs (a client's carrier the
    classifier blanked, for one) would only take the room the carrier needs.
    """
    start, end = tcp + _TCP_HLEN, tcp + (frame[tcp + 12] >> 4) * 4
    spans = _option_spans(frame, start, end)  # OptionError for a malformed area
    return spans[-1][0] + spans[-1][2] - start if spans else 0


def check_option_room(frame: bytes, size: int) -> None:
    """NoOptionRoom unless ``size`` more option bytes fit in the frame's TCP header after its options."""
    used = _options_in_use(frame, _tcp_offset(frame))
    if _TCP_HLEN + _pad4(used + size) > MAX_TCP_HLEN:
        raise NoOptionRoom(f"TCP options: {used} bytes in use, no room for {size} more")


def _pad4(n: int) -> int:
    return n + (-n % 4)


def append_tcp_option(frame: bytes, option: bytes) -> bytes:
    """The frame with ``option`` after its TCP options; data offset, IP length and both checksums fixed.

    The option goes where the list ends: before an end-of-options byte, whose
    padding is rebuilt after it. Bytes past the IP packet (Ethernet padding)
    are dropped: they would otherwise land inside the longer packet.
    """
    if len(option) % 4:
        raise OptionError(f"option of {len(option)} bytes would misalign the TCP header")
    check_option_room(frame, len(option))
    ip, tcp = _ETH_HLEN, _tcp_offset(frame)
    doff = (frame[tcp + 12] >> 4) * 4
    total_len = struct.unpack_from("!H", frame, ip + 2)[0]
    used = _options_in_use(frame, tcp)
    options = frame[tcp + _TCP_HLEN:tcp + _TCP_HLEN + used] + option
    options += bytes([TCPOPT_EOL]) * (-len(options) % 4)
    out = bytearray(frame[:tcp + _TCP_HLEN] + options + frame[tcp + doff:ip + total_len])
    new_doff = _TCP_HLEN + len(options)
    out[tcp + 12] = (new_doff // 4) << 4 | (out[tcp + 12] & 0x0F)
    struct.pack_into("!H", out, ip + 2, total_len + new_doff - doff)
    struct.pack_into("!H", out, ip + 10, 0)
    struct.pack_into("!H", out, ip + 10, _internet_checksum(bytes(out[ip:tcp])))
    struct.pack_into("!H", out, tcp + 16, 0)
    segment = bytes(out[tcp:])
    pseudo = bytes(out[ip + 12:ip + 20]) + struct.pack("!BBH", 0, _IPPROTO_TCP, len(segment))
    struct.pack_into("!H", out, tcp + 16, _internet_checksum(pseudo + segment))
    return bytes(out)


__all__ = [
    "KEY_LEN", "MAX_SLICE_BITS", "TCPOPT_EOL", "TCPOPT_NOP", "TCPOPT_TIMESTAMP", "TCPOPT_MPTCP",
    "TCPOPT_EXPERIMENTAL", "MPTCP_SUB_CAPABLE", "MPTCP_SUB_JOIN", "MPC_FLAG_HMAC_SHA256",
    "KEY_CARRIER_EXID", "KEY_CARRIER_LEN", "TAG_PREFIX", "CLASS_MP_CAPABLE", "CLASS_MP_JOIN",
    "CLASS_TIMESTAMP", "CLASS_NONE", "classifier_output", "second_chance_mac", "TAG_VALUE_BITS", "TAG_CLASS_MASK",
    "SERVER_ID_BITS", "SERVER_ID_MASK", "OptionError", "key_to_token", "key_to_idsn", "slice_of", "make_key",
    "MpCapable", "MpJoinSyn", "Timestamp", "parse_tcp_options", "parse_mptcp",
    "build_mp_capable", "build_mp_join_syn", "build_timestamp", "parse_timestamp",
    "build_key_carrier", "parse_key_carrier", "classify_frame", "tag_mac",
    "MAX_TCP_HLEN", "NoOptionRoom", "FiveTuple", "parse_mpc_syn", "check_option_room", "append_tcp_option",
]
