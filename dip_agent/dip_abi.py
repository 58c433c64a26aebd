"""The DIP programs' ABI: bpf/dip_tc.c's map values, key modes and counters as user space packs and reads them.

The C side is bpf/mptcp_lb.h (key modes, pool size) and bpf/dip_structs.h
(the structs, has_key values, stat names); tests/unit/test_bpf_abi.py checks
every constant, stat name and layout here against them and the object's BTF.
Pure: no BPF syscalls.

Keys are secrets (whoever knows one can forge MP_JOINs for its connection):
``FlowState`` leaves its key out of repr.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from mptcp_lb.bpf import StructLayout
from mptcp_lb.mptcp_codec import KEY_LEN, SERVER_ID_BITS, SERVER_ID_MASK

# struct dip_config.key_mode (mptcp_lb.h)
KEY_MODE_NONE = 0
KEY_MODE_SEED = 1
KEY_MODE_POOL = 2
KEY_MODES = {"none": KEY_MODE_NONE, "seed": KEY_MODE_SEED, "pool": KEY_MODE_POOL}

POOL_SIZE = 1024  # entries of dip_pool (mptcp_lb.h)

# struct dip_config.flags (mptcp_lb.h)
DIP_FLAG_STAMP = 1  # stamp the server ID into TSval and restore TSecr (the token modes)
DIP_FLAG_REAP_TIME_WAIT = 2  # the agent destroys TIME_WAIT sockets: drop a SYN(MP_CAPABLE) that finds one

# struct flow_state.has_key (dip_structs.h)
KEY_NONE = 0
KEY_FOR_ISN = 1  # key_isn names the SYN the key belongs to
KEY_ANY_ISN = 2  # seeded from user space: good for the next SYN/ACK, whatever its ISN

MAX_VALID = 1 << 32  # set in flow_state.max_tsval once it holds a TSval
INVALID_SEQ = (1 << 64) - 1  # a pool slot being rewritten: matches no pool index

# enum dip_stat (dip_structs.h), in order: the keys of dip_stats.
STAT_NAMES = ("synack_key_set", "synack_no_key", "pool_empty", "carrier_stored", "ts_stamped",
              "tsecr_exact", "tsecr_restored", "tsecr_unmatched", "malformed", "no_state",
              "sc_forwarded", "sc_local", "sc_handshake", "sc_syn", "sc_self", "sc_chained", "seed_fallback",
              "flow_created", "syn_time_wait", "sc_no_peer")

# The map values (dip_structs.h); addresses and ports stay in network order, as bytes.
DIP_CONFIG = StructLayout("dip_config", [("vip", "4s"), ("port", "2s"), ("server_id", "H"), ("key_mode", "I"),
                                         ("flags", "I"), ("self", "4s"), ("vip6", "16s")])
# Addresses are IPv6, or IPv4-mapped (::ffff:a.b.c.d) for IPv4.
FLOW_KEY = StructLayout("flow_key", [("client_ip", "16s"), ("vip", "16s"), ("client_port", "2s"), ("vip_port", "2s")])
FLOW_STATE = StructLayout("flow_state", [("key", f"{KEY_LEN}s"), ("key_isn", "I"), ("conn_isn", "I"),
                                         ("synack_tsval", "I"), ("synack_stamped", "I"), ("has_key", "B"),
                                         ("has_conn", "B"), ("ack_pending", "B"), ("reserved", "5x"),
                                         ("max_tsval", "Q"), ("synack_ns", "Q")])
PASSED_TO = StructLayout("passed_to", [("to", "4s"), ("reserved", "I"), ("ns", "Q")])
DIP_PEER = StructLayout("dip_peer", [("address6", "16s")])  # dip_peers' value; its key is an IPv4 address
POOL_ENTRY = StructLayout("pool_entry", [("key", f"{KEY_LEN}s"), ("seq", "Q")])
POOL_STATE = StructLayout("pool_state", [("next", "Q")])
TIME_WAIT_DROP = StructLayout("time_wait_drop", [("ns", "Q"), ("isn", "I"), ("reserved", "I")])
MAP_VALUES = (DIP_CONFIG, FLOW_KEY, FLOW_STATE, PASSED_TO, DIP_PEER, POOL_ENTRY, POOL_STATE, TIME_WAIT_DROP)

U32 = struct.Struct("=I")  # the key of every array map

__all__ = ["KEY_MODES", "KEY_MODE_NONE", "KEY_MODE_SEED", "KEY_MODE_POOL", "POOL_SIZE", "DIP_FLAG_STAMP", "DIP_FLAG_REAP_TIME_WAIT", "KEY_NONE", "KEY_FOR_ISN",
           "KEY_ANY_ISN", "MAX_VALID", "INVALID_SEQ", "STAT_NAMES", "DIP_CONFIG", "FLOW_KEY", "FLOW_STATE",
           "PASSED_TO", "DIP_PEER", "POOL_ENTRY", "POOL_STATE", "TIME_WAIT_DROP", "MAP_VALUES", "U32", "FlowState", "key_mode", "check_port", "pack_config",
           "pack_flow_key", "pack_seeded_flow_state", "pack_peer", "flow_address", "flow_ip"]


def _ipv4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def flow_address(address: str) -> bytes:
    """An address as struct flow_key holds it: IPv6 as is, IPv4 mapped into IPv6 (::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(address)
    return (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed


def flow_ip(packed: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address of a struct flow_key field: IPv4 for an IPv4-mapped one."""
    ip = ipaddress.IPv6Address(packed)
    return ip.ipv4_mapped or ip


def check_port(port: int, what: str, allow_zero: bool = False) -> None:
    if not isinstance(port, int) or not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"{what} {port!r} is not in {0 if allow_zero else 1}..65535")


def key_mode(mode: int | str) -> int:
    """A key mode by name ("none", "seed", "pool") or number (0, 1, 2)."""
    if isinstance(mode, str):
        if mode not in KEY_MODES:
            raise ValueError(f"key mode {mode!r} is not one of {sorted(KEY_MODES)}")
        return KEY_MODES[mode]
    if mode not in KEY_MODES.values():
        raise ValueError(f"key mode {mode!r} is not one of {sorted(KEY_MODES.values())}")
    return mode


def pack_config(vip: str | None, port: int, server_id: int, mode: int | str, *, stamp: bool = True,
                self_address: str = "0.0.0.0", reap_time_wait: bool = False, vip6: str | None = None) -> bytes:
    """struct dip_config: VIP and port in network order (port 0: every port of the VIP).

    ``vip`` is the VIP's IPv4 address and ``vip6`` its IPv6 one (None: none
    of that family); the programs serve both alike.

    ``stamp``: the token modes' TSval stamping and TSecr restoration.
    ``reap_time_wait``: an agent destroys the TIME_WAIT sockets SYNs find (dip_agent/time_wait.py).
    ``self_address``: the DIP's own fabric address, which a second-chance
    mark never names for a DIP to pass a packet to.
    """
    check_port(port, "port", allow_zero=True)
    if not isinstance(server_id, int) or not 0 <= server_id <= SERVER_ID_MASK:
        raise ValueError(f"server_id {server_id!r} does not fit {SERVER_ID_BITS} bits")
    flags = (DIP_FLAG_STAMP if stamp else 0) | (DIP_FLAG_REAP_TIME_WAIT if reap_time_wait else 0)
    if vip is None and vip6 is None:
        raise ValueError("a DIP config needs a VIP: vip, vip6 or both")
    if vip6 is not None and ipaddress.IPv6Address(vip6).ipv4_mapped:
        raise ValueError(f"vip6 {vip6!r} is an IPv4-mapped address: give the IPv4 address as vip")
    if vip6 is not None and (ipaddress.IPv6Address(vip6).is_unspecified or ipaddress.IPv6Address(vip6).is_multicast):
        raise ValueError(f"vip6 {vip6!r} is not a unicast IPv6 address")
    return DIP_CONFIG.pack(_ipv4(vip) if vip is not None else bytes(4), port.to_bytes(2, "big"), server_id,
                           key_mode(mode), flags, _ipv4(self_address),
                           ipaddress.IPv6Address(vip6).packed if vip6 is not None else bytes(16))


def pack_flow_key(client_ip: str, client_port: int, vip: str, vip_port: int) -> bytes:
    """struct flow_key: client address, VIP, client port, VIP port, all in network order; both addresses one family."""
    check_port(client_port, "client_port")
    check_port(vip_port, "vip_port")
    if ipaddress.ip_address(client_ip).version != ipaddress.ip_address(vip).version:
        raise ValueError(f"client_ip {client_ip!r} and vip {vip!r} are not of one address family")
    return FLOW_KEY.pack(flow_address(client_ip), flow_address(vip), client_port.to_bytes(2, "big"),
                         vip_port.to_bytes(2, "big"))


def pack_peer(address: str, address6: str) -> tuple[bytes, bytes]:
    """A dip_peers entry: a DIP's IPv4 fabric address (what second-chance marks name) and its IPv6 one."""
    ip6 = ipaddress.IPv6Address(address6)
    if ip6.ipv4_mapped or ip6.is_unspecified or ip6.is_multicast:
        raise ValueError(f"address6 {address6!r} of DIP {address} is not a unicast IPv6 address")
    return _ipv4(address), DIP_PEER.pack(ip6.packed)


def pack_seeded_flow_state(key: bytes) -> bytes:
    """struct flow_state holding only ``key``, for the flow's next SYN/ACK whatever its ISN (KEY_ANY_ISN)."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes")
    return FLOW_STATE.pack(bytes(key), 0, 0, 0, 0, KEY_ANY_ISN, 0, 0, 0, 0)


@dataclass(frozen=True)
class FlowState:
    """struct flow_state, decoded. ``key`` is a secret: it is not part of repr."""

    key: bytes = field(repr=False)
    key_isn: int
    conn_isn: int
    synack_tsval: int
    synack_stamped: int
    has_key: int  # KEY_NONE, KEY_FOR_ISN or KEY_ANY_ISN
    has_conn: bool
    ack_pending: bool
    max_tsval: int | None  # the largest original TSval sent, None before any
    synack_ns: int  # CLOCK_MONOTONIC ns of the last SYN/ACK (0: none)

    @classmethod
    def unpack(cls, raw: bytes) -> FlowState:
        (key, key_isn, conn_isn, synack_tsval, synack_stamped, has_key, has_conn, ack_pending,
         max_tsval, synack_ns) = FLOW_STATE.unpack(raw)
        return cls(key, key_isn, conn_isn, synack_tsval, synack_stamped, has_key, bool(has_conn),
                   bool(ack_pending), max_tsval & 0xFFFFFFFF if max_tsval & MAX_VALID else None, synack_ns)
