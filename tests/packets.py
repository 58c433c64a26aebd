"""The tests' frames: every Ethernet/IPv4/TCP frame a test sends, classifies or runs through BPF is built here.

Frames are scapy-built. Options given as bytes go after the 20-byte TCP
header exactly as given (EOL-padded to a word unless ``doff`` is set by
hand), so malformed layouts can be stated byte for byte; options given as a
list are scapy's option tuples. Reading a frame back goes through
``mptcp_lb.mptcp_codec``, the one module that parses option bytes.
"""

from __future__ import annotations

import struct

from scapy.all import IP, TCP, Ether, IPv6, Raw
from scapy.utils import checksum

from mptcp_lb.mptcp_codec import (MPC_FLAG_HMAC_SHA256, MPTCP_SUB_CAPABLE, MPTCP_SUB_JOIN, TCPOPT_MPTCP,
                                  TCPOPT_TIMESTAMP, TIMESTAMP_LEN, parse_tcp_options, parse_timestamp)

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SRC_IP, DST_IP = "10.0.0.1", "10.0.0.2"

ETH_HLEN = 14
TCP_HLEN = 20

NOP, EOL = b"\x01", b"\x00"
MSS = b"\x02\x04\x05\xb4"  # 1460
SACK_PERM = b"\x04\x02"
WSCALE = b"\x03\x03\x07"

# A Linux SYN's options, as scapy tuples; add an MPTCP option (MPC_SYN, or a join) to make it MPTCP's.
LINUX_SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)]
MPC_SYN = (TCPOPT_MPTCP, bytes((MPTCP_SUB_CAPABLE << 4 | 1, 0x81)))  # MP_CAPABLE v1, flags A|H, no key


# ------------------------------------------------------------------ options


def timestamp(tsval: int, tsecr: int, length: int = TIMESTAMP_LEN) -> bytes:
    """A timestamp option; any other length goes in the length byte and cuts or zero-pads the option to it."""
    return (bytes((TCPOPT_TIMESTAMP, length)) + struct.pack("!II", tsval, tsecr) + bytes(8))[:length]


def mp_capable(length: int = 4, version: int = 1, flags: int = MPC_FLAG_HMAC_SHA256,
               keys: bytes = bytes(range(1, 17))) -> bytes:
    """MP_CAPABLE of ``length``: 4 in a v1 SYN, 12 with the sender's key, 20 with both; keys cut from ``keys``."""
    return bytes((TCPOPT_MPTCP, length, MPTCP_SUB_CAPABLE << 4 | version, flags)) + keys[:length - 4]


def mp_join(token: int, length: int = 12) -> bytes:
    """MP_JOIN as in a SYN (length 12): flags, address ID, receiver token, nonce; cut or zero-padded to ``length``."""
    body = struct.pack("!BBII", MPTCP_SUB_JOIN << 4, 0, token, 0x01020304)
    return bytes((TCPOPT_MPTCP, length)) + (body + bytes(32))[: length - 2]


# ------------------------------------------------------------------ frames


def _ipv4_tcp(flags: str, options: bytes | list, doff: int | None, payload: bytes, src: str | None, dst: str,
              sport: int, dport: int, seq: int, ack: int, ip: dict | None):
    if isinstance(options, (bytes, bytearray)):
        if doff is None:
            options = bytes(options) + EOL * (-len(options) % 4)
            doff = 5 + len(options) // 4
        tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, dataofs=doff) / Raw(bytes(options) + payload)
    else:
        tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, dataofs=doff, options=list(options))
        if payload:
            tcp = tcp / Raw(payload)
    return IP(src=src, dst=dst, **(ip or {})) / tcp


def tcp_segment(flags: str, options: bytes | list = b"", *, doff: int | None = None, payload: bytes = b"",
                src: str | None = SRC_IP, dst: str = DST_IP, sport: int = 40000, dport: int = 80, seq: int = 0,
                ack: int = 0, ip: dict | None = None) -> bytes:
    """An IPv4/TCP packet with right checksums; ``ip`` sets other IP header fields, ``src`` None lets the route pick."""
    return bytes(_ipv4_tcp(flags, options, doff, payload, src, dst, sport, dport, seq, ack, ip))


def tcp_frame(flags: str, options: bytes | list = b"", *, doff: int | None = None, payload: bytes = b"",
              src: str = SRC_IP, dst: str = DST_IP, sport: int = 40000, dport: int = 80, seq: int = 0, ack: int = 0,
              ip: dict | None = None, eth_src: str = SRC_MAC, eth_dst: str = DST_MAC) -> bytes:
    """An Ethernet/IPv4/TCP frame with right checksums (``tcp_segment`` behind an Ethernet header)."""
    return ether_frame(_ipv4_tcp(flags, options, doff, payload, src, dst, sport, dport, seq, ack, ip),
                       src=eth_src, dst=eth_dst)


def tcp6_frame(flags: str, options: bytes = b"", *, ext: tuple = (), payload: bytes = b"", src: str = "2001:db8:1::1",
               dst: str = "2001:db8::100", sport: int = 40000, dport: int = 80, seq: int = 0, ack: int = 0,
               eth_src: str = SRC_MAC, eth_dst: str = DST_MAC) -> bytes:
    """An Ethernet/IPv6/TCP frame, ``ext`` the scapy extension headers between IPv6 and TCP, in order."""
    options = bytes(options) + EOL * (-len(options) % 4)
    pkt = IPv6(src=src, dst=dst)
    for header in ext:
        pkt = pkt / header
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, dataofs=5 + len(options) // 4) / Raw(
        options + payload)
    return ether_frame(pkt / tcp, src=eth_src, dst=eth_dst)


def ether_frame(payload, src: str = SRC_MAC, dst: str = DST_MAC, **fields) -> bytes:
    """Any scapy layers (ARP, IPv6, a VLAN tag...) behind an Ethernet header."""
    return bytes(Ether(src=src, dst=dst, **fields) / payload)


# ------------------------------------------------------------------ reading frames back


def _is_ipv6(frame: bytes) -> bool:
    return frame[ETH_HLEN - 2:ETH_HLEN] == b"\x86\xdd"


def _tcp_offset(frame: bytes) -> int:
    if _is_ipv6(frame):  # past the extension headers
        return len(frame) - len(bytes(Ether(frame)[TCP]))
    return ETH_HLEN + (frame[ETH_HLEN] & 0x0F) * 4


def tcp_options(frame: bytes) -> dict[int, bytes]:
    """The first option of each kind in an Ethernet/IPv4 or IPv6/TCP frame's TCP header, by kind."""
    tcp = _tcp_offset(frame)
    found: dict[int, bytes] = {}
    for kind, opt in parse_tcp_options(frame[tcp + TCP_HLEN:tcp + (frame[tcp + 12] >> 4) * 4]):
        found.setdefault(kind, opt)
    return found


def tsval_tsecr(frame: bytes) -> tuple[int, int]:
    """(TSval, TSecr) of the frame's first timestamp option."""
    ts = parse_timestamp(tcp_options(frame)[TCPOPT_TIMESTAMP])
    return ts.tsval, ts.tsecr


def checksums_ok(frame: bytes) -> bool:
    """Whether the IPv4 header and TCP checksums of an Ethernet/IPv4/TCP frame (for IPv6, the TCP
    checksum) are what a sender computes."""
    if _is_ipv6(frame):
        pkt = Ether(frame)
        stored = pkt[TCP].chksum
        pkt[TCP].chksum = None
        return Ether(bytes(pkt))[TCP].chksum == stored
    tcp = _tcp_offset(frame)
    total_len = struct.unpack_from("!H", frame, ETH_HLEN + 2)[0]
    segment = frame[tcp:ETH_HLEN + total_len]
    pseudo = frame[ETH_HLEN + 12:ETH_HLEN + 20] + struct.pack("!BBH", 0, 6, len(segment))

    def stored_is_computed(data: bytes, at: int) -> bool:
        return checksum(data[:at] + b"\0\0" + data[at + 2:]) == struct.unpack_from("!H", data, at)[0]

    return stored_is_computed(frame[ETH_HLEN:tcp], 10) and stored_is_computed(pseudo + segment, len(pseudo) + 16)
