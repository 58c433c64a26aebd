"""OpenFlow 1.3 messages as ovs-ofctl text: the flows' identity.

This text is what a flow *is* to mptcp-lb. Each flow's cookie is a hash of
its text (``compiler.flow_mod``); ``reconcile`` compares what a bridge holds
with what it should hold by text, so a flow edited by hand is found even if it
kept its cookie; and ``mptcp-lb flows | ovs-ofctl add-flows`` prints exactly
this, so flows installed by hand are the controller's own. Changing how
anything renders changes every cookie: the controller then replaces every flow
once.

Only what the compiler emits has a text form; anything else raises.
"""

from __future__ import annotations

from os_ken.lib.packet.ether_types import ETH_TYPE_ARP, ETH_TYPE_IP, ETH_TYPE_IPV6
from os_ken.lib.packet.in_proto import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser


def _field_text(name: str, value) -> str:
    if isinstance(value, tuple):
        v, m = value
        if isinstance(v, int):
            return f"{name}={v:#x}/{m:#x}"
        return f"{name}={v}/{m}"
    return f"{name}={value}"


_OFCTL_FIELD = {"ipv4_dst": "nw_dst", "ipv4_src": "nw_src", "tcp_dst": "tp_dst", "tcp_src": "tp_src",
                "icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code", "icmpv6_type": "icmp_type",
                "icmpv6_code": "icmp_code", "ipv6_nd_target": "nd_target", "ipv6_nd_sll": "nd_sll",
                "ipv6_nd_tll": "nd_tll"}
# ovs-ofctl's protocol keywords by (eth_type, ip_proto): "tcp" is IPv4's, "tcp6" IPv6's.
_PROTOCOL = {(ETH_TYPE_IP, IPPROTO_TCP): "tcp", (ETH_TYPE_IP, IPPROTO_ICMP): "icmp", (ETH_TYPE_IP, None): "ip",
             (ETH_TYPE_IPV6, IPPROTO_TCP): "tcp6", (ETH_TYPE_IPV6, IPPROTO_ICMPV6): "icmp6",
             (ETH_TYPE_IPV6, None): "ipv6"}


def match_text(match) -> str:
    """A match in ovs-ofctl syntax (only the fields the compiler emits)."""
    fields = dict(match.items())
    out = []
    eth_type = fields.pop("eth_type", None)
    ip_proto = fields.pop("ip_proto", None)
    if eth_type == ETH_TYPE_ARP:
        out.append("arp")
    elif (eth_type, ip_proto) in _PROTOCOL:
        out.append(_PROTOCOL[eth_type, ip_proto])
    elif eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        out += [_PROTOCOL[eth_type, None], f"nw_proto={ip_proto}"]
    elif eth_type is not None:
        out.append(f"dl_type={eth_type:#06x}")
    for name in sorted(fields):
        out.append(_field_text(_OFCTL_FIELD.get(name, name), fields[name]))
    return ",".join(out)


_NXM_NAME = {
    "eth_src": "NXM_OF_ETH_SRC[]", "eth_dst": "NXM_OF_ETH_DST[]",
    "arp_sha": "NXM_NX_ARP_SHA[]", "arp_tha": "NXM_NX_ARP_THA[]",
    "arp_spa": "NXM_OF_ARP_SPA[]", "arp_tpa": "NXM_OF_ARP_TPA[]",
    "ipv6_src": "NXM_NX_IPV6_SRC[]", "ipv6_dst": "NXM_NX_IPV6_DST[]",
}
_SET_FIELD = {"ipv6_nd_tll": "nd_tll"}  # os-ken's name -> ovs-ofctl's, where they differ


MULTIPATH_ALGORITHMS = {  # the multipath action's algorithm, by ovs-ofctl's (and ovs_hash's) name
    nicira_ext.NX_MP_ALG_MODULO_N: "modulo_n", nicira_ext.NX_MP_ALG_HASH_THRESHOLD: "hash_threshold",
    nicira_ext.NX_MP_ALG_HRW: "hrw", nicira_ext.NX_MP_ALG_ITER_HASH: "iter_hash"}


def action_text(action) -> str:
    if isinstance(action, parser.OFPActionOutput):
        if action.port == ofp.OFPP_CONTROLLER:
            return f"controller(max_len={action.max_len})"
        return "in_port" if action.port == ofp.OFPP_IN_PORT else f"output:{action.port}"
    if isinstance(action, parser.OFPActionGroup):
        return f"group:{action.group_id}"
    if isinstance(action, parser.OFPActionSetField):
        return f"set_field:{action.value}->{_SET_FIELD.get(action.key, action.key)}"
    if isinstance(action, parser.NXActionMultipath):
        algorithm = MULTIPATH_ALGORITHMS[action.algorithm]
        return f"multipath(symmetric_l4,{action.basis},{algorithm},{action.max_link + 1},{action.arg},NXM_NX_REG0[0..15])"
    if isinstance(action, parser.NXActionResubmitTable):
        return f"resubmit(,{action.table_id})"
    if isinstance(action, parser.NXActionRegMove):
        # os-ken names fields parsed back from the switch with an "_nxm" suffix
        src, dst = (f.removesuffix("_nxm") for f in (action.src_field, action.dst_field))
        return f"move:{_NXM_NAME[src]}->{_NXM_NAME[dst]}"
    raise ValueError(f"no text form for action {action!r}")


def actions_text(actions) -> str:
    return ",".join(action_text(a) for a in actions) if actions else "drop"


def _flow_actions(flow_mod) -> list:
    for inst in flow_mod.instructions:
        if isinstance(inst, parser.OFPInstructionActions):
            return list(inst.actions)
    return []


def _flow_meter(flow_mod) -> str:
    meters = [i.meter_id for i in flow_mod.instructions if isinstance(i, parser.OFPInstructionMeter)]
    return f"meter:{meters[0]}," if meters else ""


def flow_text(flow_mod, with_cookie: bool = True) -> str:
    """A flow in ``ovs-ofctl -O OpenFlow13 add-flows`` syntax."""
    head = f"cookie={flow_mod.cookie:#x}," if with_cookie else ""
    flags = "send_flow_rem," if flow_mod.flags & ofp.OFPFF_SEND_FLOW_REM else ""
    timeout = f"hard_timeout={flow_mod.hard_timeout}," if flow_mod.hard_timeout else ""
    m = match_text(flow_mod.match)
    return (f"{head}table={flow_mod.table_id},priority={flow_mod.priority},{timeout}{flags}"
            f"{m + ',' if m else ''}actions={_flow_meter(flow_mod)}{actions_text(_flow_actions(flow_mod))}")


def buckets_text(buckets) -> str:
    return ",".join(f"bucket=weight:{b.weight},actions={actions_text(b.actions)}" for b in buckets)


def meter_text(meter_mod) -> str:
    """A meter in ``ovs-ofctl -O OpenFlow13 add-meter`` syntax (packet-rate drop bands only)."""
    flags = [name for bit, name in ((ofp.OFPMF_KBPS, "kbps"), (ofp.OFPMF_PKTPS, "pktps"),
                                    (ofp.OFPMF_BURST, "burst"), (ofp.OFPMF_STATS, "stats"))
             if meter_mod.flags & bit]
    bands = ",".join(f"band=type=drop,rate={b.rate},burst_size={b.burst_size}" for b in meter_mod.bands)
    return ",".join([f"meter={meter_mod.meter_id}", *flags, bands])


def group_text(group_mod) -> str:
    """A group in ``ovs-ofctl -O OpenFlow13 add-groups`` syntax."""
    kind = {ofp.OFPGT_SELECT: "select", ofp.OFPGT_ALL: "all", ofp.OFPGT_INDIRECT: "indirect"}[group_mod.type]
    text = f"group_id={group_mod.group_id},type={kind}"
    return f"{text},{buckets_text(group_mod.buckets)}" if group_mod.buckets else text
