"""Config -> OpenFlow 1.3 messages for one MUX bridge. Pure: no datapath, no I/O.

The pipeline is table 0 (``hash: multipath`` adds table 1, a slot per flow;
an IPv6 address adds table 2, where neighbour advertisements are finished):

  prio 310  the BGP speaker's ARP and IP with the router, via the uplink (leased)  (muxes[].bgp)
  prio 300  ARP request for the MUX's or a VIP's address -> ARP reply by flows
  prio 300  neighbour solicitation for the MUX's or a VIP's IPv6 address -> advertisement (table 2 ends it);
            one from :: (duplicate address detection) is dropped at 301
  prio 250  ICMP fragmentation needed / ICMPv6 packet too big to a VIP -> every DIP, metered
  prio 230  VIP:service-port, classifier tag "server ID"  -> that DIP        (token, hybrid)
  prio 230  VIP:service-port, tag "JOIN, token slice"     -> slice's owner   (token, hybrid)
  prio 220  VIP:service-port, tag "SYN + MP_CAPABLE"      -> meter, punt     (key_source: seed)
  prio 200  tcp to VIP:service-port                      -> the VIP's slot table (5-tuple hash)
  prio 200  tcp to VIP, tp_dst in a DIP's range          -> that DIP        (port, hybrid)
  prio 100  anything else to a VIP                       -> drop
  prio 0    table miss                                   -> drop (never punted)

A VIP with ``address6`` is served over IPv6 by the same flows, each once per
family (``_destinations``), and the same slot table; port ranges are IPv4's
alone, since no ADD_ADDR with a port goes out over IPv6 (docs/ipv6.md).

The slot table (mptcp_lb/slots.py) is a select group of one bucket per slot
(``hash: dp_hash``) or ``multipath`` over the slot count into table 1, one
flow per slot (``hash: multipath``): the hash into slots never changes, and
the controller points each slot at a DIP. A slot in transition hands its
packets to the new owner with the old owner's address in the source MAC
(``second_chance_mac``), so the new owner can pass on what it holds no
connection for.

The tags are written into the destination MAC by the classifier at tc
ingress of the MUX's uplink (bpf/mux_classifier.c, docs/token-steering.md),
which hands every frame to the bridge through a tap; every flow that hands a
packet to a DIP rewrites the MAC, so a tag never leaves the MUX.

Every flow's cookie is derived from its own ovs-ofctl text (ovs_flows/ofctl_text.py),
so the controller can tell a correct flow from a stale one by cookie alone, and
flows installed with ``ovs-ofctl`` from ``mptcp-lb flows`` are recognised as
correct by the controller without churn.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from mptcp_lb.config import Config, Dip, Mux, Vip
from mptcp_lb.mptcp_codec import CLASS_MP_CAPABLE, CLASS_MP_JOIN, CLASS_TIMESTAMP, TAG_CLASS_MASK, second_chance_mac, tag_mac
from mptcp_lb.slots import SlotTable, table_for
from ovs_flows import oxm_ext
from ovs_flows.ofctl_text import flow_text
from ovs_flows.ovs_hash import pick_backend
from ovs_flows.port_ranges import range_to_masks

COOKIE_TAG = 0x4D4C  # "ML": the top 16 bits of every cookie this app installs
TABLE = 0
TABLE_HASHED = 1  # hash: multipath: the slot multipath chose (reg0) -> its owner
TABLE_ND = 2  # a solicitation turned advertisement gets its target link-layer address (nd_responder)
ZERO_MAC = "00:00:00:00:00:00"
PRIO_ARP = 300
PRIO_TAG = 230
PRIO_PUNT = 220
PRIO_VIP = 200
PRIO_VIP_DROP = 100
PRIO_MISS = 0
ETH_ARP = 0x0806
ETH_IP = 0x0800
ETH_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_ICMPV6 = 58
ND_SOLICIT, ND_ADVERT = 135, 136
ND_SOLICITED_OVERRIDE = 0x60000000  # an advertisement's S and O flags, in nd_reserved
ND_OPT_TARGET_LL = 2
ICMPV6_PACKET_TOO_BIG = 2
PUNT_METER = 1
ICMP_METER = 2  # path MTU messages to a VIP, per MUX
PRIO_ICMP = 250
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED = 3, 4
IPPROTO_ICMP = 1
# Seconds the seed-mode punt flow lives unless the controller renews it. A Linux client gives up on
# MPTCP after its second retransmitted SYN(MPC) is lost (3 s after the first), so a dead controller
# must stop getting SYNs well before that.
PUNT_FLOW_LIFETIME = 2
# Seconds between the controller's renewals of every leased flow (the punt flow, the BGP speaker's,
# which live muxes[].bgp.lease_time): four per punt flow lifetime, so one lost or late renewal
# still leaves it in place.
RENEW_INTERVAL = PUNT_FLOW_LIFETIME / 4
PRIO_SPEAKER = 310


@dataclass
class CompiledMux:
    """Everything the controller needs to program and account one MUX."""

    mux: Mux
    meters: list = field(default_factory=list)  # OFPMeterMod (ADD)
    groups: list = field(default_factory=list)  # OFPGroupMod (ADD)
    flows: list = field(default_factory=list)  # OFPFlowMod (ADD)
    # cookie -> (vip name, dip id) for flows that steer to one DIP
    flow_dip: dict[int, tuple[str, int]] = field(default_factory=dict)
    # group id -> (vip name, [dip id per bucket, in bucket order])
    group_dips: dict[int, tuple[str, list[int]]] = field(default_factory=dict)

    @property
    def messages(self) -> list:
        """Meters and groups first: OVS rejects a flow whose meter or group does not exist yet."""
        return [*self.meters, *self.groups, *self.flows]

    @cached_property
    def flow_texts(self) -> dict[str, object]:
        """Each flow by its ovs-ofctl text, rendered once for every audit that compares against it."""
        return {flow_text(f): f for f in self.flows}


# ---------------------------------------------------------------- builders


@lru_cache(maxsize=65536)
def _normalized_field(name: str, value) -> tuple[int, str, object]:
    """(OXM sort key, name, value) of one match field, as OFPMatch normalizes it (the slow part)."""
    n, v, m = ofp.oxm_from_user(*ofp.oxm_normalize_user(name, value))
    return (n[0] if isinstance(n, tuple) else n), *ofp.oxm_to_user(n, v, m)


def _match_field(name: str, value) -> tuple[int, str, object]:
    """``_normalized_field``; integers and (value, mask) pairs of them come back as they went in."""
    if type(value) is int or (type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int):
        return _normalized_field(name, 0)[0], name, value
    return _normalized_field(name, value)


_EMPTY_MATCH = parser.OFPMatch()


def match(**fields):
    """``parser.OFPMatch(**fields)``: the same fields in the same order, built for a fraction of the cost.

    A VIP of thousands of DIPs repeats the same few fields (in_port, eth_type,
    the VIP) in tens of thousands of matches, and OFPMatch normalizes each
    anew and builds two objects of its old match API per match. Each field's
    normalization is cached, and the match is a copy of an empty one (whose
    old-API objects nobody writes) given the fields as os-ken's own parser
    gives them (``_ordered_fields``). tests/unit/test_compiler.py checks that
    both serialize to the same bytes.
    """
    m = copy.copy(_EMPTY_MATCH)
    m.fields = []
    m._fields2 = [(name, value) for _, name, value in sorted(_match_field(k, v) for k, v in fields.items())]
    return m



def _cookie(text: str) -> int:
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")
    return (COOKIE_TAG << 48) | digest


def flow_mod(priority: int, match, actions: list, meter_id: int | None = None, table_id: int = TABLE,
             hard_timeout: int = 0):
    """An ADD flow_mod with a content-derived cookie, built without a datapath."""
    inst = [parser.OFPInstructionMeter(meter_id)] if meter_id is not None else []
    if actions:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    msg = parser.OFPFlowMod(
        datapath=None, table_id=table_id, command=ofp.OFPFC_ADD, priority=priority, hard_timeout=hard_timeout,
        match=match, instructions=inst, flags=ofp.OFPFF_SEND_FLOW_REM,
        buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY)
    msg.cookie = _cookie(flow_text(msg, with_cookie=False))
    return msg


def arp_responder(mux: Mux, address: str):
    """Answer ARP requests from the router side for ``address`` with the MUX's MAC, in the datapath."""
    mac = mux.mac
    m = match(in_port=mux.uplink_port, eth_type=ETH_ARP, arp_op=1, arp_tpa=address)
    actions = [
        parser.NXActionRegMove(src_field="eth_src", dst_field="eth_dst", n_bits=48),
        parser.OFPActionSetField(eth_src=mac),
        parser.OFPActionSetField(arp_op=2),
        parser.NXActionRegMove(src_field="arp_sha", dst_field="arp_tha", n_bits=48),
        parser.OFPActionSetField(arp_sha=mac),
        parser.NXActionRegMove(src_field="arp_spa", dst_field="arp_tpa", n_bits=32),
        parser.OFPActionSetField(arp_spa=address),
        parser.OFPActionOutput(ofp.OFPP_IN_PORT),
    ]
    return flow_mod(PRIO_ARP, m, actions)


def nd_responder(mux: Mux, address: str) -> list:
    """Answer neighbour solicitations from the router side for ``address`` with the MUX's MAC, in the datapath.

    Two tables, as OVS requires: ``nd_tll`` may only be set on an
    advertisement, so table 0 turns the solicitation into one (Solicited and
    Override flags, the option's type) and table 2 writes the MAC into its
    option. A solicitation from the unspecified address (duplicate address
    detection) is not answered: there is nobody to answer.
    """
    mac = mux.mac
    solicit = dict(in_port=mux.uplink_port, eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6, icmpv6_type=ND_SOLICIT,
                   ipv6_nd_target=address)
    actions = [
        parser.NXActionRegMove(src_field="eth_src", dst_field="eth_dst", n_bits=48),
        parser.OFPActionSetField(eth_src=mac),
        parser.NXActionRegMove(src_field="ipv6_src", dst_field="ipv6_dst", n_bits=128),
        parser.OFPActionSetField(ipv6_src=address),
        parser.OFPActionSetField(icmpv6_type=ND_ADVERT),
        parser.OFPActionSetField(icmpv6_code=0),
        parser.OFPActionSetField(**{oxm_ext.ND_RESERVED: ND_SOLICITED_OVERRIDE}),
        parser.OFPActionSetField(**{oxm_ext.ND_OPTIONS_TYPE: ND_OPT_TARGET_LL}),
        parser.NXActionResubmitTable(table_id=TABLE_ND),
    ]
    advert = match(eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6, icmpv6_type=ND_ADVERT, ipv6_nd_target=address)
    return [
        flow_mod(PRIO_ARP, match(**solicit), actions),
        flow_mod(PRIO_ARP + 1, match(**solicit, ipv6_src="::"), []),
        flow_mod(PRIO_ARP, advert, [parser.OFPActionSetField(ipv6_nd_tll=mac),
                                    parser.OFPActionOutput(ofp.OFPP_IN_PORT)], table_id=TABLE_ND),
    ]


def to_dip(mux: Mux, dip: Dip, previous: Dip | None = None) -> list:
    """Actions that hand a packet to a DIP over the fabric (L2 DSR).

    With ``previous``, the source MAC carries that DIP's address instead of
    the MUX's: the packet's slot is in transition from it (second chance).
    """
    return list(_to_dip(mux.mac, mux.fabric_port, dip.mac, previous.address if previous is not None else None))


@lru_cache(maxsize=65536)
def _to_dip(mux_mac: str, fabric_port: int, dip_mac: str, previous: str | None) -> tuple:
    """The actions, built once: a DIP's are the same in each of its many flows and buckets."""
    src = second_chance_mac(previous) if previous is not None else mux_mac
    return (parser.OFPActionSetField(eth_src=src), parser.OFPActionSetField(eth_dst=dip_mac),
            parser.OFPActionOutput(fabric_port))


def _slot_actions(mux: Mux, vip: Vip, table: SlotTable) -> list[tuple[int, list]]:
    """(owner id, actions) per slot of the VIP's table."""
    dips = {d.id: d for d in vip.dips}
    out = []
    for slot, owner in enumerate(table.owners):
        t = table.transitions.get(slot)
        out.append((owner, to_dip(mux, dips[owner], dips.get(t.previous) if t else None)))
    return out


def vip_group(mux: Mux, vip: Vip, group_id: int, table: SlotTable):
    """The VIP's slot table as a select group: one equal bucket per slot, pointing at its owner.

    No selection_method is set: OVS then uses dp_hash with a symmetric L4
    hash, which the datapath computes itself (``hash(sym_l4(0)),recirc``), so
    datapath flows do not grow per connection; and with 256 equal buckets
    hash value h always lands in bucket h, whatever the buckets' actions.
    """
    slots = _slot_actions(mux, vip, table)
    buckets = [parser.OFPBucket(weight=1, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY, actions=actions)
               for _, actions in slots]
    msg = parser.OFPGroupMod(datapath=None, command=ofp.OFPGC_ADD, type_=ofp.OFPGT_SELECT,
                             group_id=group_id, buckets=buckets)
    return msg, [owner for owner, _ in slots]


METER_HEADROOM = 2  # the meter only protects the controller: the classifier's budgets decide (it never drops)


def punt_meter(rate: int):
    """Cap SYN(MPC) packet-ins per MUX: the controller's only punt path.

    The classifier already admits only each VIP's budget to the punt tag and
    sends the rest down the hash; this meter, at ``METER_HEADROOM`` times the
    budgets, is the backstop for a MUX whose classifier was loaded without
    them. OVS's userspace meters can only drop.
    """
    return _drop_meter(PUNT_METER, rate)


def icmp_meter(rate: int):
    """Path MTU messages to the VIPs, at most ``rate`` per second per MUX: each is copied to every DIP."""
    return _drop_meter(ICMP_METER, rate)


def _drop_meter(meter_id: int, rate: int):
    """A meter passing ``rate`` packets per second, with a burst of one second's worth, and dropping the rest."""
    return parser.OFPMeterMod(datapath=None, command=ofp.OFPMC_ADD, flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST,
                              meter_id=meter_id, bands=[parser.OFPMeterBandDrop(rate=rate, burst_size=rate)])


def pmtu_flows(out: CompiledMux, mux: Mux, vip: Vip) -> None:
    """ICMP "fragmentation needed" to the VIP goes to all its DIPs, rate-limited (GLB's way).

    The message quotes the DIP's packet to the client, but no OpenFlow match
    reaches inside it, so every DIP gets a copy (one flow, one output per
    DIP: no group to create first); the one that holds the quoted connection
    lowers its path MTU, the others find no socket and drop it. Without this
    the VIP's drop rule would eat them, and a client behind a smaller MTU
    would hang (a PMTU black hole).
    """
    actions = [a for d in vip.dips for a in to_dip(mux, d)]
    out.flows.append(flow_mod(PRIO_ICMP, match(in_port=mux.uplink_port, eth_type=ETH_IP, ip_proto=IPPROTO_ICMP,
                                               ipv4_dst=vip.address, icmpv4_type=ICMP_DEST_UNREACH,
                                               icmpv4_code=ICMP_FRAG_NEEDED), actions, meter_id=ICMP_METER))
    if vip.address6 is not None:  # IPv6's "packet too big", which only the sender's side can act on
        out.flows.append(flow_mod(PRIO_ICMP, match(in_port=mux.uplink_port, eth_type=ETH_IPV6,
                                                   ip_proto=IPPROTO_ICMPV6, ipv6_dst=vip.address6,
                                                   icmpv6_type=ICMPV6_PACKET_TOO_BIG), actions, meter_id=ICMP_METER))


def _ipv4(vip: Vip) -> dict:
    return {"eth_type": ETH_IP, "ipv4_dst": vip.address}


def _destinations(vip: Vip) -> list[dict]:
    """The VIP as a match, per address family: IPv4, and IPv6 when it has ``address6``."""
    out = [_ipv4(vip)]
    if vip.address6 is not None:
        out.append({"eth_type": ETH_IPV6, "ipv6_dst": vip.address6})
    return out


def _service(mux: Mux, vip: Vip, dst: dict, **extra):
    """VIP:service-port traffic of one family (``_destinations``) from the router side (the fabric never sends to a VIP)."""
    return match(in_port=mux.uplink_port, **dst, ip_proto=IPPROTO_TCP, tcp_dst=vip.port, **extra)


def slice_tag_matches(slices, slice_bits: int) -> list[tuple[str, str]]:
    """(MAC, mask) pairs matching JOIN tags whose token falls in ``slices``.

    The tag's 24-bit value is token >> 8, so a slice is its top ``slice_bits``
    bits; contiguous runs of slices merge into few masked matches.
    """
    shift = 24 - slice_bits
    runs, ordered = [], sorted(slices)
    for s in ordered:
        if runs and runs[-1][1] == s - 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    out = []
    for lo, hi in runs:
        for value, mask in range_to_masks(lo, hi, bits=slice_bits):
            mac_mask = (0xFFFFFF << 24) | (mask << shift)
            out.append((tag_mac(CLASS_MP_JOIN, value << shift), _mac(mac_mask)))
    return out


def _mac(n: int) -> str:
    return ":".join(f"{b:02x}" for b in n.to_bytes(6, "big"))


def hashed_slot(vip: Vip, src: str, dst: str, sport: int, dport: int) -> int:
    """The slot the multipath flow (``_hashed_flows``, ``hash: multipath``) picks for a 5-tuple.

    Both sides zero the MACs first: OVS's symmetric_l4 hashes them, and they
    differ between MUXes.
    """
    fields = {"eth_src": ZERO_MAC, "eth_dst": ZERO_MAC, "ipv4_src": src, "ipv4_dst": dst,
              "tcp_src": sport, "tcp_dst": dport}
    return pick_backend(fields, vip.slots, algorithm="modulo_n")


def hashed_dip(vip: Vip, table: SlotTable, src: str, dst: str, sport: int, dport: int) -> Dip | None:
    """The DIP the multipath flow hands a 5-tuple to, by ``table``.

    The controller seeds a SYN with a key for exactly this DIP, so a client
    that sends no timestamps (and so carries no server-ID tag) still reaches
    the DIP that holds its connection.
    """
    if not table.owners:
        return None
    return vip.dip(table.owners[hashed_slot(vip, src, dst, sport, dport)])


def _hashed_flows(out: CompiledMux, mux: Mux, vip: Vip, table: SlotTable) -> list:
    """Actions of the multipath service-port flow, plus the slot -> owner table they resubmit to.

    ``modulo_n`` over a fixed slot count: a slot's hash never depends on
    which DIPs there are, and the algorithm costs the same for any count.
    """
    for slot, (owner, actions) in enumerate(_slot_actions(mux, vip, table)):
        for dst in _destinations(vip):
            fm = flow_mod(PRIO_VIP, match(reg0=slot, **dst, ip_proto=IPPROTO_TCP, tcp_dst=vip.port),
                          actions, table_id=TABLE_HASHED)
            out.flows.append(fm)
            out.flow_dip[fm.cookie] = (vip.name, owner)
    return [parser.OFPActionSetField(eth_src=ZERO_MAC), parser.OFPActionSetField(eth_dst=ZERO_MAC),
            parser.NXActionMultipath(fields=nicira_ext.NX_HASH_FIELDS_SYMMETRIC_L4, basis=0,
                                     algorithm=nicira_ext.NX_MP_ALG_MODULO_N, max_link=vip.slots - 1, arg=0,
                                     ofs_nbits=nicira_ext.ofs_nbits(0, 15), dst="reg0"),
            parser.NXActionResubmitTable(table_id=TABLE_HASHED)]


def _port_flows(out: CompiledMux, mux: Mux, vip: Vip) -> None:
    for dip in vip.dips:
        for value, mask in range_to_masks(dip.ports.start, dip.ports.end):
            tcp_dst = value if mask == 0xFFFF else (value, mask)
            m = match(in_port=mux.uplink_port, eth_type=ETH_IP, ip_proto=IPPROTO_TCP, ipv4_dst=vip.address,
                      tcp_dst=tcp_dst)
            fm = flow_mod(PRIO_VIP, m, to_dip(mux, dip))
            out.flows.append(fm)
            out.flow_dip[fm.cookie] = (vip.name, dip.id)


def _token_flows(out: CompiledMux, mux: Mux, vip: Vip) -> None:
    for dip in vip.dips:
        actions = to_dip(mux, dip)
        tags = [tag_mac(CLASS_TIMESTAMP, dip.id), *slice_tag_matches(dip.slices, vip.slice_bits)]
        for dst in _destinations(vip):
            for tag in tags:
                fm = flow_mod(PRIO_TAG, _service(mux, vip, dst, eth_dst=tag), actions)
                out.flows.append(fm)
                out.flow_dip[fm.cookie] = (vip.name, dip.id)
    if vip.key_source == "seed":
        # It expires PUNT_FLOW_LIFETIME after the controller last renewed it (LbCore.keepalive): a
        # controller that is gone gets no SYNs, which take the hash to a DIP's pool key instead.
        # IPv4 only: the classifier never tags an IPv6 SYN for the controller (no seed mode over IPv6).
        out.flows.append(flow_mod(
            PRIO_PUNT, _service(mux, vip, _ipv4(vip), eth_dst=(tag_mac(CLASS_MP_CAPABLE, 0), TAG_CLASS_MASK)),
            [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)], meter_id=PUNT_METER,
            hard_timeout=PUNT_FLOW_LIFETIME))


def speaker_flows(mux: Mux) -> list:
    """The BGP speaker's sessions with the router, between its port and the uplink, leased like the punt flow.

    Its BGP and BFD sessions cross this bridge's datapath, so they end when
    the bridge stops forwarding, and ``muxes[].bgp.lease_time`` after the
    controller last renewed these flows: the router withdraws the MUX either
    way. Only the router reaches the speaker and the speaker only the
    router, each with its own addresses; IP for the speaker gets the
    speaker's MAC back (the classifier may have tagged it).
    """
    bgp = mux.bgp
    if bgp is None:
        return []
    to_speaker = [parser.OFPActionSetField(eth_dst=bgp.mac), parser.OFPActionOutput(bgp.speaker_port)]
    to_uplink = [parser.OFPActionOutput(mux.uplink_port)]
    lease = bgp.lease_time
    return [
        flow_mod(PRIO_SPEAKER, match(in_port=mux.uplink_port, eth_type=ETH_ARP, arp_spa=bgp.peer,
                                     arp_tpa=bgp.address), [parser.OFPActionOutput(bgp.speaker_port)],
                 hard_timeout=lease),
        flow_mod(PRIO_SPEAKER, match(in_port=mux.uplink_port, eth_type=ETH_IP, ipv4_src=bgp.peer,
                                     ipv4_dst=bgp.address), to_speaker, hard_timeout=lease),
        flow_mod(PRIO_SPEAKER, match(in_port=bgp.speaker_port, eth_src=bgp.mac, eth_type=ETH_ARP,
                                     arp_spa=bgp.address, arp_sha=bgp.mac, arp_tpa=bgp.peer), to_uplink,
                 hard_timeout=lease),
        flow_mod(PRIO_SPEAKER, match(in_port=bgp.speaker_port, eth_src=bgp.mac, eth_type=ETH_IP,
                                     ipv4_src=bgp.address, ipv4_dst=bgp.peer), to_uplink, hard_timeout=lease),
    ]


def compile_mux(config: Config, mux: Mux, tables: dict[str, SlotTable] | None = None) -> CompiledMux:
    """All meters, groups and flows one MUX bridge should hold, in install order.

    ``tables`` gives each VIP's slot table by name (the controller's, with
    health and transitions); a VIP not in it gets the table of its active
    DIPs (``slots.table_for``).
    """
    tables = tables or {}
    out = CompiledMux(mux=mux)
    if any(v.uses_tokens and v.key_source == "seed" for v in config.vips):
        seeded = [v for v in config.vips if v.uses_tokens and v.key_source == "seed"]
        out.meters.append(punt_meter(METER_HEADROOM * sum(v.punt_rate or config.controller.punt_rate for v in seeded)))
    out.meters.append(icmp_meter(config.controller.icmp_rate))
    out.flows.append(arp_responder(mux, mux.address))
    if mux.address6 is not None:
        out.flows += nd_responder(mux, mux.address6)
    for group_id, vip in enumerate(config.vips, start=1):
        out.flows.append(arp_responder(mux, vip.address))
        if vip.address6 is not None:
            out.flows += nd_responder(mux, vip.address6)
        table = tables.get(vip.name) or table_for(vip)
        if vip.hash == "multipath":
            # Always so in seed mode, where the controller must predict the hash.
            actions = _hashed_flows(out, mux, vip, table)
        else:
            group, bucket_dips = vip_group(mux, vip, group_id, table)
            out.groups.append(group)
            out.group_dips[group_id] = (vip.name, bucket_dips)
            actions = [parser.OFPActionGroup(group_id)]
        for dst in _destinations(vip):
            out.flows.append(flow_mod(PRIO_VIP, _service(mux, vip, dst), actions))
        if vip.uses_ports:
            _port_flows(out, mux, vip)
        if vip.uses_tokens:
            _token_flows(out, mux, vip)
        pmtu_flows(out, mux, vip)
        for dst in _destinations(vip):
            out.flows.append(flow_mod(PRIO_VIP_DROP, match(**dst), []))
    out.flows.append(flow_mod(PRIO_MISS, match(), []))
    out.flows += speaker_flows(mux)  # last: the VIPs are announced once everything they need is in place
    return out


def compile_all(config: Config, tables: dict[str, SlotTable] | None = None) -> dict[str, CompiledMux]:
    return {m.name: compile_mux(config, m, tables) for m in config.muxes}
