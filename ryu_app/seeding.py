"""Seed mode: the controller makes each connection's key. Pure: bytes in, bytes out.

A SYN carrying MP_CAPABLE reaches the controller through a rate-capped
packet-in. The controller picks the DIP, draws a key whose token lies in
that DIP's slices, and appends the key to the SYN as an RFC 6994
experimental TCP option (docs/token-steering.md §4). The DIP's tc ingress
program keeps the key for the flow, and its tc egress program puts it in the
SYN/ACK. Keys are never logged. The bytes are mptcp_codec's; this module
only decides which DIP and which key.
"""

from __future__ import annotations

from dataclasses import dataclass

from mptcp_lb.config import Dip, Vip
from mptcp_lb.mptcp_codec import (KEY_CARRIER_LEN, FiveTuple, NoOptionRoom, append_tcp_option, build_key_carrier,
                                  check_option_room, key_to_token, make_key, parse_mpc_syn)
from mptcp_lb.slots import SlotTable
from ovs_flows.compiler import hashed_dip


class SeedError(ValueError):
    """A punted packet that cannot be seeded; the message names the field."""


class Unseeded(SeedError):
    """A valid SYN that goes to ``dip`` without a key; the DIP draws one from its own pool."""

    def __init__(self, message: str, dip: Dip):
        super().__init__(message)
        self.dip = dip


class NoRoomForKey(Unseeded):
    """The SYN's options leave no room for the carrier."""


class NoKeyYet(Unseeded):
    """The key bank has no key in the DIP's slices right now (it refills in the background)."""


@dataclass(frozen=True)
class Seeded:
    dip: Dip
    frame: bytes  # the SYN with the key carrier, checksums fixed
    token: int


def parse_syn(frame: bytes) -> FiveTuple:
    """The 5-tuple of a punted SYN+MP_CAPABLE frame, else SeedError."""
    try:
        five = parse_mpc_syn(frame)
    except ValueError as e:
        raise SeedError(f"packet-in SYN cannot be edited: {e}") from e
    if five is None:
        raise SeedError("packet-in is not an IPv4 TCP SYN carrying MP_CAPABLE")
    return five


def hash_choice(vip: Vip, table: SlotTable, five: FiveTuple) -> Dip | None:
    """The DIP the MUX's multipath flow would pick for this 5-tuple by ``table`` (see ``hashed_dip``)."""
    return hashed_dip(vip, table, five.src, five.dst, five.sport, five.dport)


def draw_now(vip: Vip, dip: Dip) -> bytes:
    """A key for ``dip`` drawn on the spot (rejection sampling): for tests and tools, not the event thread."""
    return make_key(dip.slices, vip.slice_bits)


def seed_syn(vip: Vip, frame: bytes, choose_dip, five: FiveTuple | None = None, draw_key=draw_now) -> Seeded:
    """Pick the DIP for a punted SYN(MPC) and hand it a key from its slices, inside the SYN.

    ``choose_dip(vip, five)`` picks it (the controller: ``hash_choice`` by
    its current slot table); ``draw_key(vip, dip)`` gives its key, or None
    (the controller: its ``KeyBank``); ``five`` is ``parse_syn(frame)`` if
    the caller already has it. Unseeded (NoRoomForKey, NoKeyYet) names the
    DIP to send the SYN to anyway.
    """
    five = five or parse_syn(frame)
    if five.dst != vip.address or five.dport != vip.port:
        raise SeedError(f"packet-in to {five.dst}:{five.dport} is not VIP {vip.name} ({vip.address}:{vip.port})")
    dip = choose_dip(vip, five)
    if dip is None:
        raise SeedError(f"VIP {vip.name} has no active DIP")
    # Check the room before drawing a key: key generation is the expensive part.
    try:
        check_option_room(frame, KEY_CARRIER_LEN)
    except NoOptionRoom as e:
        raise NoRoomForKey(str(e), dip) from e
    key = draw_key(vip, dip)
    if key is None:
        raise NoKeyYet(f"no key in the bank for DIP {dip.id}'s slices yet", dip)
    return Seeded(dip=dip, frame=append_tcp_option(frame, build_key_carrier(key)), token=key_to_token(key))
