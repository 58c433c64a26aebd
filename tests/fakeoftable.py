"""A simulated OpenFlow 1.3 table that runs the compiler's real os-ken messages.

Answers "where does this packet go, and how does it look when it leaves?"
for the subset of OpenFlow the compiler uses (FAUCET's fakeoftable idea, our
own code). The select group hashes the 5-tuple like OVS's symmetric L4 hash
would, only with a different function: tests may rely on *consistency*, not
on which bucket a given packet picks.
"""

from __future__ import annotations

import hashlib
import ipaddress

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ovs_flows.ovs_hash import pick_backend

IP_FIELDS = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"}


def _as_int(name: str, value) -> int:
    if isinstance(value, int):
        return value
    if name in IP_FIELDS:
        return int(ipaddress.IPv4Address(value))
    return int(str(value).replace(":", ""), 16)  # MAC


def field_matches(name: str, want, packet: dict) -> bool:
    if name not in packet:
        return False
    have = _as_int(name, packet[name])
    if isinstance(want, tuple):
        value, mask = want
        mask = _as_int(name, mask)
        return have & mask == _as_int(name, value) & mask
    return have == _as_int(name, want)


def sym_l4_hash(packet: dict) -> int:
    ends = sorted([(packet.get("ipv4_src"), packet.get("tcp_src")), (packet.get("ipv4_dst"), packet.get("tcp_dst"))],
                  key=str)
    return int.from_bytes(hashlib.sha256(repr(ends).encode()).digest()[:4], "big")


class FakeOFTable:
    def __init__(self, msgs: list):
        self.flows = []
        self.groups = {}
        for msg in msgs:
            self.apply(msg)

    def apply(self, msg) -> None:
        if isinstance(msg, parser.OFPGroupMod):
            if msg.command == ofp.OFPGC_DELETE:
                self.groups.pop(msg.group_id, None)
            else:
                self.groups[msg.group_id] = msg
        elif isinstance(msg, parser.OFPFlowMod):
            if msg.command == ofp.OFPFC_ADD:
                if any(a.type == ofp.OFPAT_GROUP and a.group_id not in self.groups
                       for a in self._actions(msg)):
                    raise ValueError("OFPBAC_BAD_OUT_GROUP")  # as OVS does
                key = (msg.table_id, msg.priority, repr(sorted(msg.match.items())))
                self.flows = [f for f in self.flows
                              if (f.table_id, f.priority, repr(sorted(f.match.items()))) != key]
                self.flows.append(msg)
            elif msg.command == ofp.OFPFC_DELETE_STRICT:
                self.flows = [f for f in self.flows
                              if not (f.priority == msg.priority and f.cookie == msg.cookie
                                      and sorted(f.match.items()) == sorted(msg.match.items()))]

    @staticmethod
    def _actions(flow) -> list:
        for inst in flow.instructions:
            if isinstance(inst, parser.OFPInstructionActions):
                return list(inst.actions)
        return []

    def lookup(self, packet: dict, table_id: int = 0):
        """Highest-priority matching flow, or None."""
        best = None
        for f in self.flows:
            if f.table_id == table_id and all(field_matches(n, v, packet) for n, v in f.match.items()):
                if best is None or f.priority > best.priority:
                    best = f
        return best

    def forward(self, packet: dict) -> list[tuple[int, dict]]:
        """Output (port, packet as sent) pairs; [] means dropped."""
        flow = self.lookup(packet)
        if flow is None:
            return []
        return self._run(self._actions(flow), dict(packet))

    def _run(self, actions, pkt: dict) -> list[tuple[int, dict]]:
        out = []
        for a in actions:
            if isinstance(a, parser.OFPActionSetField):
                pkt[a.key] = a.value
            elif isinstance(a, parser.NXActionRegMove):
                pkt[a.dst_field] = pkt[a.src_field]
            elif isinstance(a, parser.OFPActionOutput):
                port = pkt["in_port"] if a.port == ofp.OFPP_IN_PORT else a.port
                out.append((port, dict(pkt)))
            elif isinstance(a, parser.NXActionMultipath):
                # the real OVS hash (ovs_flows/ovs_hash.py, checked against ofproto/trace)
                pkt[a.dst] = pick_backend(pkt, a.max_link + 1)
            elif isinstance(a, parser.NXActionResubmitTable):
                flow = self.lookup(pkt, a.table_id)
                out.extend(self._run(self._actions(flow), dict(pkt)) if flow else [])
            elif isinstance(a, parser.OFPActionGroup):
                group = self.groups[a.group_id]
                if group.buckets:
                    bucket = group.buckets[sym_l4_hash(pkt) % len(group.buckets)]
                    out.extend(self._run(bucket.actions, pkt))
            else:
                raise NotImplementedError(f"fake table does not model {a!r}")
        return out
