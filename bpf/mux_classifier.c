// SPDX-License-Identifier: GPL-2.0
/*
 * MUX classifier (docs/token-steering.md §2), at tc ingress of the MUX's
 * uplink, in front of an OVS userspace-datapath bridge.
 *
 * Why here and not XDP on the OVS port: OVS's afxdp ports load their own XDP
 * program and replace any other, and its AF_PACKET (system) ports read frames
 * before tc ingress runs. So the uplink is not an OVS port. The classifier
 * parses each frame arriving on it and, when the frame earns a verdict,
 * writes the verdict into the Ethernet destination as a tag MAC
 * 0a:4d:CLASS:VALUE(24) for the OpenFlow tables to match, then redirects
 * every frame into a veth pair whose far end is the OVS port
 * (mux_uplink_ingress). A second program, at tc ingress of the pair's near
 * end, sends what OVS outputs there back out of the uplink (mux_to_uplink).
 *
 *   router -- uplink --(mux_uplink_ingress: tag, redirect)--> near ==veth== far: OVS port
 *   router <- uplink <-(mux_to_uplink: redirect)------------- near <=veth== far
 *
 * Neither program drops a frame it can deliver or changes any byte but the
 * tag; a frame without a verdict passes untouched. Until mux_ports is filled,
 * nothing is delivered anywhere (TC_ACT_SHOT): the uplink carries no
 * addresses of its own.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "mptcp_lb.h"
#include "mux_maps.h"
#include "parse.h"

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&mux_stats, &stat);

	if (n)
		*n += 1;
}

static __always_inline struct mux_ports *ports(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mux_ports, &zero);
}

DEFINE_TCP_OPTS_WALK(mux_opts_walk, struct __sk_buff)
DEFINE_IPV6_WALK(mux_ipv6_tcp_offset, struct __sk_buff)

/* Overwrite the Ethernet destination with the tag MAC 0a:4d:CLASS:VALUE. */
static __always_inline void write_tag(struct __sk_buff *skb, __u8 class, __u32 value)
{
	__u8 *mac = (void *)(long)skb->data;

	if ((void *)(mac + ETH_ALEN) > (void *)(long)skb->data_end)
		return;
	mac[0] = TAG_PREFIX >> 8;
	mac[1] = TAG_PREFIX & 0xff;
	mac[2] = class;
	mac[3] = value >> 16; /* TAG_VALUE_BITS, big-endian */
	mac[4] = value >> 8;
	mac[5] = value;
	count(class == TAG_CLASS_MP_CAPABLE ? STAT_MP_CAPABLE :
	      class == TAG_CLASS_MP_JOIN ? STAT_MP_JOIN :
	      class == TAG_CLASS_TIMESTAMP ? STAT_TIMESTAMP : STAT_FORGED_TAG);
}

/* Whether the frame arrived with a destination in the tag MAC space (a sender forging a verdict). */
static __always_inline int arrived_tagged(struct __sk_buff *skb)
{
	__u8 *mac = (void *)(long)skb->data;

	return (void *)(mac + ETH_ALEN) <= (void *)(long)skb->data_end && mac[0] == (TAG_PREFIX >> 8) &&
	       mac[1] == (TAG_PREFIX & 0xff);
}

/*
 * Whether a SYN + MP_CAPABLE to this VIP may go to the controller: its punt
 * budget (GCRA) allows it, or the VIP has none (not seed mode). One over
 * budget is not dropped: left untagged, it takes the VIP's hash to a DIP,
 * which gives it a key from its own pool.
 */
static __always_inline int within_punt_budget(struct iphdr *ip, struct tcphdr *tcp)
{
	struct punt_key key = {.vip = ip->daddr, .port = tcp->dest};
	struct punt_budget *b = bpf_map_lookup_elem(&mux_punt_budget, &key);
	__u64 now, tat;
	int ok;

	if (!b)
		return 1;
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&b->lock);
	tat = b->tat > now ? b->tat : now;
	ok = tat - now <= b->burst_ns;
	if (ok)
		b->tat = tat + b->interval_ns;
	bpf_spin_unlock(&b->lock);
	if (!ok)
		count(STAT_OVER_BUDGET);
	return ok;
}

/*
 * Turn every key carrier (kind 253, ExID 0x4d4c) in the frame's TCP options
 * into NOPs: only the controller may hand a DIP a key, and it appends its
 * own after this. The header is edited in a copy whose difference from the
 * original fixes the checksum, so a carrier at any alignment sums right.
 * Every packet pointer is stale after this.
 */
static __always_inline void clear_carriers(struct __sk_buff *skb, __u32 tcp_off, __u32 hdrlen,
					  struct tcp_opts *opts)
{
	struct mux_scratch *sc;
	__u32 zero = 0, at;
	__s64 diff;
	int i, j, cleared = 0;

	if (!opts->carrier || hdrlen > TCP_HLEN_MAX || hdrlen < sizeof(struct tcphdr))
		return;
	sc = bpf_map_lookup_elem(&mux_scratch, &zero);
	if (!sc)
		return;
	__builtin_memset(sc->cur, 0, sizeof(sc->cur));
	if (bpf_skb_load_bytes(skb, tcp_off, sc->cur, hdrlen & (TCP_HLEN_MAX | 3)))
		return;
	__builtin_memcpy(sc->old, sc->cur, sizeof(sc->old));
	/* Three carriers fill 36 of the 40 option bytes: no more can hide behind them. */
	for (i = 0; i < 3 && opts->carrier; i++) {
		at = opts->carrier;
		for (j = 0; j < TCPOLEN_KEY_CARRIER; j++)
			sc->cur[(at + j) & 63] = TCPOPT_NOP;
		if (bpf_skb_store_bytes(skb, tcp_off + (at & 63), &sc->cur[at & 63], TCPOLEN_KEY_CARRIER, 0))
			break;
		cleared++;
		count(STAT_CARRIER_CLEARED);
		if (mux_opts_walk(skb, tcp_off, hdrlen, opts))
			break;
	}
	if (!cleared)
		return;
	diff = bpf_csum_diff((__be32 *)sc->old, sizeof(sc->old), (__be32 *)sc->cur, sizeof(sc->cur), 0);
	if (diff >= 0)
		bpf_l4_csum_replace(skb, tcp_off + offsetof(struct tcphdr, check), 0, diff, 0);
}

/*
 * The TCP header the classifier parses, IPv4 or IPv6, with its frame offset
 * in *tcp_off; *ip is the IPv4 header, NULL for IPv6. NULL: no verdict.
 */
static __always_inline struct tcphdr *parse_l4(struct __sk_buff *skb, void *data, void *data_end, struct iphdr **ip,
						__u32 *tcp_off)
{
	struct tcphdr *tcp;

	*ip = parse_ipv4(data, data_end);
	if (*ip) {
		tcp = parse_tcp(*ip, data_end);
		*tcp_off = ETH_HLEN + (*ip)->ihl * 4;
		return tcp;
	}
	/* Behind AH too: the verdicts only read; a carrier cleared there fails the ICV, as a forged key should. */
	*tcp_off = mux_ipv6_tcp_offset(skb, 1);
	return *tcp_off ? parse_tcp_at(data, *tcp_off, data_end) : NULL;
}

/* The verdict of docs/token-steering.md §2, written as a tag; no verdict leaves the frame alone. */
static __always_inline void classify(struct __sk_buff *skb)
{
	struct tcp_opts opts;
	struct tcphdr *tcp;
	struct iphdr *ip;
	void *data, *data_end;
	__u32 tcp_off;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + MAX_HEADERS > data_end && skb->len > data_end - data)
		pull_headers(skb, MAX_HEADERS);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;

	tcp = parse_l4(skb, data, data_end, &ip, &tcp_off);
	if (!tcp)
		goto none;
	if (mux_opts_walk(skb, tcp_off, tcp->doff * 4, &opts))
		goto none;
	if (opts.carrier) {
		clear_carriers(skb, tcp_off, tcp->doff * 4, &opts);
		/* A store invalidates every packet pointer: find the headers again. */
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		tcp = parse_l4(skb, data, data_end, &ip, &tcp_off);
		if (!tcp)
			goto none;
	}
	/* A SYN/ACK never earns a verdict. */
	if (tcp->syn && tcp->ack)
		goto none;

	if (tcp->syn) {
		if (!opts.mptcp)
			goto none;
		if (opts.mptcp_subtype == MPTCP_SUB_CAPABLE) {
			/* IPv6 has no seed mode: its SYN takes the hash to a DIP that keys it from its pool. */
			if (!ip || !within_punt_budget(ip, tcp))
				goto none;
			write_tag(skb, TAG_CLASS_MP_CAPABLE, 0);
			return;
		}
		if (opts.mptcp_subtype == MPTCP_SUB_JOIN && opts.mptcp_len == TCPOLEN_MPTCP_JOIN_SYN) {
			/* The top bits of the receiver token. */
			write_tag(skb, TAG_CLASS_MP_JOIN, opts.join_token >> (32 - TAG_VALUE_BITS));
			return;
		}
		goto none;
	}
	if (opts.ts) {
		write_tag(skb, TAG_CLASS_TIMESTAMP, opts.tsecr & SERVER_ID_MASK);
		return;
	}
none:
	/* No verdict: a tag MAC the frame came with must not steer it. */
	if (arrived_tagged(skb))
		write_tag(skb, TAG_CLASS_NONE, 0);
}

SEC("tc")
int mux_uplink_ingress(struct __sk_buff *skb)
{
	struct mux_ports *p = ports();

	if (!p || !p->to_ovs) {
		count(STAT_UNCONFIGURED);
		return TC_ACT_SHOT;
	}
	classify(skb);
	count(STAT_TO_OVS);
	return bpf_redirect(p->to_ovs, 0);
}

SEC("tc")
int mux_to_uplink(struct __sk_buff *skb)
{
	struct mux_ports *p = ports();

	if (!p || !p->to_uplink) {
		count(STAT_UNCONFIGURED);
		return TC_ACT_SHOT;
	}
	count(STAT_TO_UPLINK);
	return bpf_redirect(p->to_uplink, 0);
}

char LICENSE[] SEC("license") = "GPL";
