"""Seed mode: the controller makes each connection's key. Pure: bytes in, bytes out.

A SYN carrying MP_CAPABLE reaches the controller through a rate-capped
packet-in. The controller picks the DIP, draws a key whose token lies in
that DIP's slices, and appends the key to the SYN as an RFC 6994
experimental TCP option (docs/token-steering.md §4). The DIP's tc ingress
program keeps the key for the flow, and its tc egress program puts it in the
SYN/ACK. Keys are never logged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mptcp_lb.config import Dip, Vip
from ovs_flows.compiler import hashed_dip
from mptcp_lb.mptcp_codec import (CLASS_MP_CAPABLE, KEY_CARRIER_LEN, build_key_carrier, classify_frame,
                                  key_to_token, make_key)

ETH_HLEN = 14
MAX_TCP_HEADER = 60


class SeedError(ValueError):
    """A punted packet that cannot be seeded; the message names the field."""


class NoRoomForKey(SeedError):
    """A valid SYN whose options leave no room for the carrier: forward it unseeded to ``dip``."""

    dip: Dip | None = None


@dataclass(frozen=True)
class FiveTuple:
    src: str
    dst: str
    sport: int
    dport: int
    proto: int = 6


@dataclass(frozen=True)
class Seeded:
    dip: Dip
    frame: bytes  # the SYN with the key carrier, checksums fixed
    token: int


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def parse_syn(frame: bytes) -> tuple[FiveTuple, int, int]:
    """(5-tuple, IP header offset, TCP header offset) of a SYN+MP_CAPABLE frame, else SeedError."""
    verdict = classify_frame(frame)
    if verdict is None or verdict[0] != CLASS_MP_CAPABLE:
        raise SeedError("packet-in is not an IPv4 TCP SYN carrying MP_CAPABLE")
    ihl = (frame[ETH_HLEN] & 0x0F) * 4
    tcp = ETH_HLEN + ihl
    sport, dport = struct.unpack_from("!HH", frame, tcp)
    return FiveTuple(_ip(frame[ETH_HLEN + 12:ETH_HLEN + 16]), _ip(frame[ETH_HLEN + 16:ETH_HLEN + 20]),
                     sport, dport), ETH_HLEN, tcp


def check_room(frame: bytes, tcp_off: int, size: int) -> None:
    """NoRoomForKey unless ``size`` more option bytes fit in the 60-byte TCP header."""
    doff = (frame[tcp_off + 12] >> 4) * 4
    if doff + size > MAX_TCP_HEADER:
        raise NoRoomForKey(f"TCP options: {doff - 20} bytes in use, no room for {size} more")


def append_tcp_option(frame: bytes, ip_off: int, tcp_off: int, option: bytes) -> bytes:
    """Insert ``option`` after the TCP options; fix data offset, IP length and both checksums."""
    if len(option) % 4:
        raise SeedError(f"option of {len(option)} bytes would misalign the TCP header")
    check_room(frame, tcp_off, len(option))
    doff = (frame[tcp_off + 12] >> 4) * 4
    total_len = struct.unpack_from("!H", frame, ip_off + 2)[0]
    ip_end = ip_off + total_len
    out = bytearray(frame[:tcp_off + doff] + option + frame[tcp_off + doff:ip_end])
    out[tcp_off + 12] = ((doff + len(option)) // 4) << 4 | (out[tcp_off + 12] & 0x0F)
    struct.pack_into("!H", out, ip_off + 2, total_len + len(option))
    struct.pack_into("!H", out, ip_off + 10, 0)
    struct.pack_into("!H", out, ip_off + 10, _checksum(bytes(out[ip_off:tcp_off])))
    segment = bytes(out[tcp_off:])
    struct.pack_into("!H", out, tcp_off + 16, 0)
    pseudo = bytes(out[ip_off + 12:ip_off + 20]) + struct.pack("!BBH", 0, 6, len(segment))
    struct.pack_into("!H", out, tcp_off + 16, _checksum(pseudo + bytes(out[tcp_off:])))
    return bytes(out)


def hash_choice(vip: Vip, five: FiveTuple) -> Dip | None:
    """The DIP the MUX's multipath flow would pick for this 5-tuple (see ``hashed_dip``)."""
    return hashed_dip(vip, five.src, five.dst, five.sport, five.dport)


def seed_syn(vip: Vip, frame: bytes, choose_dip=hash_choice, parsed=None) -> Seeded:
    """Pick the DIP for a punted SYN(MPC) and hand it a key from its slices, inside the SYN.

    ``parsed`` is ``parse_syn(frame)`` if the caller already has it.
    """
    five, ip_off, tcp_off = parsed or parse_syn(frame)
    if five.dst != vip.address or five.dport != vip.port:
        raise SeedError(f"packet-in to {five.dst}:{five.dport} is not VIP {vip.name} ({vip.address}:{vip.port})")
    dip = choose_dip(vip, five)
    if dip is None:
        raise SeedError(f"VIP {vip.name} has no active DIP")
    # Check the room before drawing a key: key generation is the expensive part.
    try:
        check_room(frame, tcp_off, KEY_CARRIER_LEN)
    except NoRoomForKey as e:
        e.dip = dip
        raise
    key = make_key(dip.slices, vip.slice_bits)
    return Seeded(dip=dip, frame=append_tcp_option(frame, ip_off, tcp_off, build_key_carrier(key)),
                  token=key_to_token(key))
