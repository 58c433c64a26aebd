// SPDX-License-Identifier: GPL-2.0
/*
 * MUX classifier (docs/token-steering.md §2), on the MUX's uplink, in front
 * of an OVS userspace-datapath bridge: in XDP when the bridge's port is an
 * afxdp one, at tc ingress otherwise.
 *
 * Why here and not XDP on the OVS port: OVS's afxdp ports load their own XDP
 * program and replace any other, and its AF_PACKET (system) ports read frames
 * before tc ingress runs. So the uplink is not an OVS port. The classifier
 * parses each frame arriving on it and, when the frame earns a verdict,
 * writes the verdict into the Ethernet destination as a tag MAC
 * 0a:4d:CLASS:VALUE(24) for the OpenFlow tables to match, then redirects
 * every frame into a veth pair whose far end is the OVS port
 * (mux_uplink_xdp, or mux_uplink_ingress at tc). A second program, at tc
 * ingress of the pair's near end, sends what OVS outputs there back out of
 * the uplink (mux_to_uplink).
 *
 *   router -- uplink --(mux_uplink_xdp or _ingress: tag, redirect)--> near ==veth== far: OVS port
 *   router <- uplink <-(mux_to_uplink: redirect)---------------------- near <=veth== far
 *
 * Why two uplink programs: an afxdp OVS port takes frames through its own
 * XDP program, so in XDP the classifier hands each frame over as it came
 * (an xdp_frame, redirected into the veth), skipping the uplink's skb, its
 * backlog pass and tc, once per client packet; a veth only accepts such a
 * redirect when its far end runs XDP natively (or has GRO on), and an
 * AF_PACKET OVS port runs no XDP, so there the classifier runs at tc. Both
 * share every line of classify() below; the unit tests run every frame
 * through both and compare.
 *
 * None of the programs drops a frame it can deliver or changes any byte but
 * the tag (and, for a cleared key carrier, the checksum); a frame without a
 * verdict passes untouched. Until mux_ports is filled, nothing is delivered
 * anywhere (TC_ACT_SHOT, XDP_DROP): the uplink carries no addresses of its
 * own.
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
DEFINE_TCP_OPTS_WALK(mux_xdp_opts_walk, struct xdp_md)
DEFINE_IPV6_WALK(mux_xdp_ipv6_tcp_offset, struct xdp_md)

/*
 * classify() runs on either context: ``ctx`` is a struct __sk_buff (tc) or a
 * struct xdp_md (xdp set), and ``xdp`` is a constant in each program, so
 * after inlining only that program's branch of each of these is left.
 */
static __always_inline void *ctx_data(void *ctx, const int xdp)
{
	return xdp ? (void *)(long)((struct xdp_md *)ctx)->data : (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *ctx_data_end(void *ctx, const int xdp)
{
	return xdp ? (void *)(long)((struct xdp_md *)ctx)->data_end :
		     (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

static __always_inline long ctx_load_bytes(void *ctx, const int xdp, __u32 off, void *to, __u32 len)
{
	return xdp ? bpf_xdp_load_bytes(ctx, off, to, len) : bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline long ctx_store_bytes(void *ctx, const int xdp, __u32 off, void *from, __u32 len)
{
	return xdp ? bpf_xdp_store_bytes(ctx, off, from, len) : bpf_skb_store_bytes(ctx, off, from, len, 0);
}

static __always_inline int opts_walk(void *ctx, const int xdp, __u32 tcp_off, __u32 hdrlen, struct tcp_opts *opts)
{
	return xdp ? mux_xdp_opts_walk(ctx, tcp_off, hdrlen, opts) : mux_opts_walk(ctx, tcp_off, hdrlen, opts);
}

/*
 * Add ``diff`` (bpf_csum_diff of the TCP header before and after an edit) to
 * the checksum at ``check_off``. At tc the kernel does it and keeps the skb's
 * checksum state right; an XDP frame has none, so the field is fixed here,
 * in ones' complement on its bytes as they lie (RFC 1624).
 */
static __always_inline void fix_l4_csum(void *ctx, const int xdp, __u32 check_off, __s64 diff)
{
	__u16 check;
	__u64 sum;

	if (!xdp) {
		bpf_l4_csum_replace(ctx, check_off, 0, diff, 0);
		return;
	}
	if (ctx_load_bytes(ctx, xdp, check_off, &check, sizeof(check)))
		return;
	sum = (__u16)~check + (__u64)(__u32)diff;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	check = ~sum;
	ctx_store_bytes(ctx, xdp, check_off, &check, sizeof(check));
}

/* Overwrite the Ethernet destination with the tag MAC 0a:4d:CLASS:VALUE. */
static __always_inline void write_tag(void *ctx, const int xdp, __u8 class, __u32 value)
{
	__u8 *mac = ctx_data(ctx, xdp);

	if ((void *)(mac + ETH_ALEN) > ctx_data_end(ctx, xdp))
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
static __always_inline int arrived_tagged(void *ctx, const int xdp)
{
	__u8 *mac = ctx_data(ctx, xdp);

	return (void *)(mac + ETH_ALEN) <= ctx_data_end(ctx, xdp) && mac[0] == (TAG_PREFIX >> 8) &&
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
static __always_inline void clear_carriers(void *ctx, const int xdp, __u32 tcp_off, __u32 hdrlen,
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
	if (ctx_load_bytes(ctx, xdp, tcp_off, sc->cur, hdrlen & (TCP_HLEN_MAX | 3)))
		return;
	__builtin_memcpy(sc->old, sc->cur, sizeof(sc->old));
	/* Three carriers fill 36 of the 40 option bytes: no more can hide behind them. */
	for (i = 0; i < 3 && opts->carrier; i++) {
		at = opts->carrier;
		for (j = 0; j < TCPOLEN_KEY_CARRIER; j++)
			sc->cur[(at + j) & 63] = TCPOPT_NOP;
		if (ctx_store_bytes(ctx, xdp, tcp_off + (at & 63), &sc->cur[at & 63], TCPOLEN_KEY_CARRIER))
			break;
		cleared++;
		count(STAT_CARRIER_CLEARED);
		if (opts_walk(ctx, xdp, tcp_off, hdrlen, opts))
			break;
	}
	if (!cleared)
		return;
	diff = bpf_csum_diff((__be32 *)sc->old, sizeof(sc->old), (__be32 *)sc->cur, sizeof(sc->cur), 0);
	if (diff >= 0)
		fix_l4_csum(ctx, xdp, tcp_off + offsetof(struct tcphdr, check), diff);
}

/*
 * The TCP header the classifier parses, IPv4 or IPv6, with its frame offset
 * in *tcp_off; *ip is the IPv4 header, NULL for IPv6. NULL: no verdict.
 */
static __always_inline struct tcphdr *parse_l4(void *ctx, const int xdp, struct iphdr **ip, __u32 *tcp_off)
{
	void *data = ctx_data(ctx, xdp), *data_end = ctx_data_end(ctx, xdp);
	struct tcphdr *tcp;

	*ip = parse_ipv4(data, data_end);
	if (*ip) {
		tcp = parse_tcp(*ip, data_end);
		*tcp_off = ETH_HLEN + (*ip)->ihl * 4;
		return tcp;
	}
	/* Behind AH too: the verdicts only read; a carrier cleared there fails the ICV, as a forged key should. */
	*tcp_off = xdp ? mux_xdp_ipv6_tcp_offset(ctx, 1) : mux_ipv6_tcp_offset(ctx, 1);
	return *tcp_off ? parse_tcp_at(data, *tcp_off, data_end) : NULL;
}

/* The verdict of docs/token-steering.md §2, written as a tag; no verdict leaves the frame alone. */
static __always_inline void classify(void *ctx, const int xdp)
{
	struct tcp_opts opts;
	struct tcphdr *tcp;
	struct iphdr *ip;
	__u32 tcp_off;

	/* An XDP frame's headers are in its one buffer; an skb's may be in paged data (a NIC's GRO). */
	if (!xdp && ctx_data(ctx, xdp) + MAX_HEADERS > ctx_data_end(ctx, xdp) &&
	    ((struct __sk_buff *)ctx)->len > ctx_data_end(ctx, xdp) - ctx_data(ctx, xdp))
		pull_headers(ctx, MAX_HEADERS);

	tcp = parse_l4(ctx, xdp, &ip, &tcp_off);
	if (!tcp)
		goto none;
	if (opts_walk(ctx, xdp, tcp_off, tcp->doff * 4, &opts))
		goto none;
	if (opts.carrier) {
		clear_carriers(ctx, xdp, tcp_off, tcp->doff * 4, &opts);
		/* A store invalidates every packet pointer: find the headers again. */
		tcp = parse_l4(ctx, xdp, &ip, &tcp_off);
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
			write_tag(ctx, xdp, TAG_CLASS_MP_CAPABLE, 0);
			return;
		}
		if (opts.mptcp_subtype == MPTCP_SUB_JOIN && opts.mptcp_len == TCPOLEN_MPTCP_JOIN_SYN) {
			/* The top bits of the receiver token. */
			write_tag(ctx, xdp, TAG_CLASS_MP_JOIN, opts.join_token >> (32 - TAG_VALUE_BITS));
			return;
		}
		goto none;
	}
	if (opts.ts) {
		write_tag(ctx, xdp, TAG_CLASS_TIMESTAMP, opts.tsecr & SERVER_ID_MASK);
		return;
	}
none:
	/* No verdict: a tag MAC the frame came with must not steer it. */
	if (arrived_tagged(ctx, xdp))
		write_tag(ctx, xdp, TAG_CLASS_NONE, 0);
}

/* The uplink at tc ingress: for an OVS port that does not run XDP (AF_PACKET). */
SEC("tc")
int mux_uplink_ingress(struct __sk_buff *skb)
{
	struct mux_ports *p = ports();

	if (!p || !p->to_ovs) {
		count(STAT_UNCONFIGURED);
		return TC_ACT_SHOT;
	}
	classify(skb, 0);
	count(STAT_TO_OVS);
	return bpf_redirect(p->to_ovs, 0);
}

/* The uplink in XDP: for an afxdp OVS port, whose XDP program takes the redirected frame as it is. */
SEC("xdp")
int mux_uplink_xdp(struct xdp_md *xdp)
{
	struct mux_ports *p = ports();

	if (!p || !p->to_ovs) {
		count(STAT_UNCONFIGURED);
		return XDP_DROP;
	}
	classify(xdp, 1);
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
