/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bounds-checked Ethernet / IPv4 / IPv6 / TCP parsing shared by the BPF programs,
 * following docs/token-steering.md §2 "Parsing rules". Every helper checks
 * each read against data_end and gives up (NULL or -1) rather than read past
 * it, so the callers work on any byte sequence and pass the verifier.
 */
#ifndef MPTCP_LB_PARSE_H
#define MPTCP_LB_PARSE_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "mptcp_lb.h"

#define IPV4_MF_AND_OFFSET 0x3fff /* not in the uapi headers (IP_MF | IP_OFFSET) */
#define IPV4_HLEN_MAX 60          /* ihl <= 15 */
#define TCP_HLEN_MAX 60           /* doff <= 15 */
#define TCP_OPTS_MAX (TCP_HLEN_MAX - sizeof(struct tcphdr))
#define IPV6_HLEN 40
/* Ethernet + the longest IP headers + the longest TCP header: all a verdict or a rewrite reads. */
#define MAX_HEADERS_IPV4 (ETH_HLEN + IPV4_HLEN_MAX + TCP_HLEN_MAX)
#define MAX_HEADERS_IPV6 (ETH_HLEN + IPV6_HLEN + IPV6_EXT_BYTES_MAX + TCP_HLEN_MAX)
#define MAX_HEADERS (MAX_HEADERS_IPV6 > MAX_HEADERS_IPV4 ? MAX_HEADERS_IPV6 : MAX_HEADERS_IPV4)
/* Masks a frame offset below MAX_HEADERS into itself: a bound the verifier can see, nothing more. */
#define HEADER_OFF_MASK 0xff
_Static_assert(MAX_HEADERS <= HEADER_OFF_MASK + 1, "HEADER_OFF_MASK must cover every header offset");

/* The TCP header's flags byte (CWR..FIN) and two of its bits. */
#define TCP_FLAGS_OFF 13
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Where fields sit in an option, from its kind byte. */
#define TS_TSVAL_OFF 2
#define TS_TSECR_OFF 6
#define MPTCP_SUBTYPE_OFF 2     /* the subtype is its high nibble */
#define MPTCP_JOIN_TOKEN_OFF 4  /* the receiver's token, in a SYN's MP_JOIN */
#define MPC_KEY_OFF 4           /* the sender's key, in MP_CAPABLE */
#define TCPOLEN_MPC_SYNACK 12   /* MP_CAPABLE with the sender's key only, as in a SYN/ACK */
#define KEY_CARRIER_EXID_OFF 2
#define KEY_CARRIER_KEY_OFF 4

/*
 * Make the headers linear when part of them sits in paged data (a NIC's GRO,
 * for one): pull ``max`` bytes (MAX_HEADERS, or MAX_HEADERS_IPV4 for a
 * program that parses IPv4 only), or the whole packet if it is shorter.
 * This invalidates every packet pointer; 0 or a negative errno.
 */
static __always_inline long pull_headers(struct __sk_buff *skb, __u32 max)
{
	return bpf_skb_pull_data(skb, skb->len < max ? skb->len : max);
}

/* The IPv4 header (options included) after an untagged Ethernet header, or NULL. */
static __always_inline struct iphdr *parse_ipv4(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	if (ip->version != 4 || ip->ihl < 5 || (void *)ip + ip->ihl * 4 > data_end)
		return NULL;
	return ip;
}

/* The TCP header of an unfragmented packet, with all doff*4 bytes in the frame, or NULL. */
static __always_inline struct tcphdr *parse_tcp(struct iphdr *ip, void *data_end)
{
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;

	if (ip->frag_off & bpf_htons(IPV4_MF_AND_OFFSET) || ip->protocol != IPPROTO_TCP)
		return NULL;
	if ((void *)(tcp + 1) > data_end || tcp->doff < 5 || (void *)tcp + tcp->doff * 4 > data_end)
		return NULL;
	return tcp;
}

static __always_inline __u16 load_be16(const __u8 *p)
{
	return (__u16)p[0] << 8 | p[1];
}

static __always_inline __u32 load_be32(const __u8 *p)
{
	return (__u32)p[0] << 24 | (__u32)p[1] << 16 | (__u32)p[2] << 8 | p[3];
}

/* Where an IPv6 extension header walk is: the next header's frame offset and type, and how many came before. */
struct ipv6_walk {
	__u32 off;
	__u32 next;
	__u32 i;
	__u32 ah; /* an authentication header came before */
};

/*
 * One step of the walk over an IPv6 packet's extension headers: 0 when the
 * TCP header is at w->off, 1 to go on, -1 for no verdict. Hop-by-hop
 * options only directly after the fixed header (RFC 8200 §4.1); routing and
 * destination options ((len + 1) * 8 bytes); authentication headers
 * ((len + 2) * 4); a fragment header only if the packet is not really a
 * fragment (offset 0, M clear: an atomic fragment). Anything else (ESP, no
 * next header, another protocol) gives no verdict, and so do more than
 * IPV6_EXT_HEADERS_MAX headers or a TCP header beyond IPV6_EXT_BYTES_MAX.
 */
static __always_inline int ipv6_ext_step(void *data, void *data_end, struct ipv6_walk *w)
{
	__u32 off = w->off, next = w->next, len;
	__u8 *p;

	if (off > ETH_HLEN + IPV6_HLEN + IPV6_EXT_BYTES_MAX)
		return -1;
	if (next == IPPROTO_TCP)
		return 0;
	if (w->i >= IPV6_EXT_HEADERS_MAX)
		return -1;
	p = data + (off & HEADER_OFF_MASK);
	if ((void *)(p + 8) > data_end) /* every extension header is at least 8 bytes */
		return -1;
	if ((next == IPPROTO_HOPOPTS && w->i == 0) || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS)
		len = (p[1] + 1) * 8;
	else if (next == IPPROTO_AH) {
		len = (p[1] + 2) * 4;
		w->ah = 1;
	} else if (next == IPPROTO_FRAGMENT && !(load_be16(p + 2) & IPV6_FRAG_OFFSET_AND_MF))
		len = 8;
	else
		return -1;
	w->next = p[0];
	w->off = off + len;
	w->i++;
	return 1;
}

/*
 * DEFINE_IPV6_WALK(name, ctx_type) defines, for one program type,
 *
 *   __u32 name(ctx_type *ctx, int allow_ah)
 *
 * the frame offset of the TCP header of an IPv6 packet after an untagged
 * Ethernet header, past its extension headers (ipv6_ext_step), or 0; 0 too
 * behind an authentication header unless allow_ah (a program that rewrites
 * TCP bytes would break its ICV; one that only reads may pass it). The
 * payload length is ignored, as IPv4's total length is: the frame's end
 * bounds everything. Each step is a global function for the reason the
 * options walk's are (DEFINE_TCP_OPTS_WALK): inlined, every chain of header
 * types and lengths was a verifier state of its own.
 */
#define DEFINE_IPV6_WALK(name, ctx_type)                                                        \
	__attribute__((noinline)) int name##_step(ctx_type *ctx, struct ipv6_walk *w)           \
	{                                                                                       \
		if (!w)                                                                         \
			return -1;                                                              \
		return ipv6_ext_step((void *)(long)ctx->data, (void *)(long)ctx->data_end, w);  \
	}                                                                                       \
                                                                                                \
	static __always_inline __u32 name(ctx_type *ctx, int allow_ah)                          \
	{                                                                                       \
		void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;  \
		struct ethhdr *eth = data;                                                      \
		struct ipv6hdr *ip6 = (void *)(eth + 1);                                        \
		struct ipv6_walk w = {};                                                        \
		int i, ret = -1;                                                                \
                                                                                                \
		if ((void *)(ip6 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6) ||    \
		    ip6->version != 6)                                                          \
			return 0;                                                               \
		w.off = ETH_HLEN + IPV6_HLEN;                                                   \
		w.next = ip6->nexthdr;                                                          \
		for (i = 0; i <= IPV6_EXT_HEADERS_MAX; i++) {                                   \
			ret = name##_step(ctx, &w);                                             \
			if (ret <= 0)                                                           \
				break;                                                          \
		}                                                                               \
		return ret == 0 && (allow_ah || !w.ah) ? w.off : 0;                             \
	}

/* The TCP header at frame offset tcp_off, with all doff*4 bytes in the frame, or NULL. */
static __always_inline struct tcphdr *parse_tcp_at(void *data, __u32 tcp_off, void *data_end)
{
	struct tcphdr *tcp = data + (tcp_off & HEADER_OFF_MASK);

	if ((void *)(tcp + 1) > data_end || tcp->doff < 5 || (void *)tcp + tcp->doff * 4 > data_end)
		return NULL;
	return tcp;
}

/*
 * What the options walk found. Offsets are from the start of the TCP header
 * and 0 when the option is absent (an option never starts at 0).
 */
struct tcp_opts {
	__u8 ts;            /* the first timestamp option (kind 8, length 10) */
	__u8 mptcp;         /* the first MPTCP option (kind 30, length >= 3) */
	__u8 mptcp_subtype; /* its subtype, the high nibble of byte +2 */
	__u8 mptcp_len;
	__u8 carrier;       /* the first key carrier (kind 253, length 12, ExID 0x4d4c) */
	__u32 tsval;        /* host order, of the first timestamp option */
	__u32 tsecr;
	__u32 join_token;   /* host order, the receiver token when that MPTCP option is an MP_JOIN of length 12 */
};

/* Where the walk is, as offsets from the start of the frame. */
struct tcp_opts_cursor {
	__u32 tcp;  /* the TCP header */
	__u32 pos;  /* the next option */
	__u32 end;  /* the end of the option area */
	struct tcp_opts o;
};

/*
 * Parse the option at c->pos. Returns 1 to go on, 0 when the walk is done and
 * -1 when the layout is malformed (a length byte missing, < 2 or running past
 * the option area, or a timestamp whose length is not 10), so nothing in it
 * may be used. The data_end checks are implied by parse_tcp() and the length
 * checks; they are there for the verifier.
 */
static __always_inline int tcp_opts_step(void *data, void *data_end, struct tcp_opts_cursor *c)
{
	__u32 pos = c->pos, end = c->end;
	__u8 *p, kind, len;

	if (pos >= end)
		return 0;
	p = data + (pos & HEADER_OFF_MASK);
	if ((void *)(p + 1) > data_end)
		return -1;
	kind = p[0];
	if (kind == TCPOPT_EOL)
		return 0;
	if (kind == TCPOPT_NOP) {
		c->pos = pos + 1;
		return 1;
	}
	if (pos + 2 > end || (void *)(p + 2) > data_end)
		return -1;
	len = p[1];
	if (len < 2 || pos + len > end)
		return -1;
	if (kind == TCPOPT_TIMESTAMP) {
		if (len != TCPOLEN_TIMESTAMP || (void *)(p + TCPOLEN_TIMESTAMP) > data_end)
			return -1;
		if (!c->o.ts) {
			c->o.ts = pos - c->tcp;
			c->o.tsval = load_be32(p + TS_TSVAL_OFF);
			c->o.tsecr = load_be32(p + TS_TSECR_OFF);
		}
	} else if (kind == TCPOPT_MPTCP && len >= 3 && !c->o.mptcp) {
		if ((void *)(p + MPTCP_SUBTYPE_OFF + 1) > data_end)
			return -1;
		c->o.mptcp = pos - c->tcp;
		c->o.mptcp_subtype = p[MPTCP_SUBTYPE_OFF] >> 4;
		c->o.mptcp_len = len;
		if (c->o.mptcp_subtype == MPTCP_SUB_JOIN && len == TCPOLEN_MPTCP_JOIN_SYN) {
			if ((void *)(p + MPTCP_JOIN_TOKEN_OFF + 4) > data_end)
				return -1;
			c->o.join_token = load_be32(p + MPTCP_JOIN_TOKEN_OFF);
		}
	} else if (kind == TCPOPT_EXPERIMENTAL && len == TCPOLEN_KEY_CARRIER && !c->o.carrier) {
		if ((void *)(p + KEY_CARRIER_EXID_OFF + 2) > data_end)
			return -1;
		/* Kind 253 is shared by every RFC 6994 experiment: another ExID is someone else's. */
		if (load_be16(p + KEY_CARRIER_EXID_OFF) == KEY_CARRIER_EXID)
			c->o.carrier = pos - c->tcp;
	}
	c->pos = pos + len;
	return 1;
}

/*
 * DEFINE_TCP_OPTS_WALK(name, ctx_type) defines, for one program type,
 *
 *   int name(ctx_type *ctx, __u32 tcp_off, __u32 tcp_len, struct tcp_opts *o)
 *
 * which walks the options of the TCP header at frame offset tcp_off, tcp_len
 * (doff * 4) bytes long, that parse_tcp() or parse_tcp_at() accepted, into *o, and returns 0,
 * or -1 when the layout is malformed. Both programs walk with it: the MUX
 * classifier and the DIP's (whose headers parse_tcp() has put in the linear
 * data too).
 *
 * Each step is a global function (name##_step), which the verifier checks
 * once, on its own. Inlined, or indexing a buffer with the offset, the walk
 * made it explore over a million instructions: every concrete option layout
 * became a state of its own, because the bounds checks make the offsets
 * "precise". The caller sees each step's results as unknown values, so its
 * states with different layouts prune against each other (and it must bound
 * an offset before using it). A step consumes >= 1 byte, so TCP_OPTS_MAX
 * steps cover the option area.
 */
#define DEFINE_TCP_OPTS_WALK(name, ctx_type)                                                    \
	__attribute__((noinline)) int name##_step(ctx_type *ctx, struct tcp_opts_cursor *c)     \
	{                                                                                       \
		if (!c) /* the verifier lets any caller pass NULL to a global function */       \
			return -1;                                                              \
		return tcp_opts_step((void *)(long)ctx->data, (void *)(long)ctx->data_end, c);  \
	}                                                                                       \
                                                                                                \
	static __always_inline int name(ctx_type *ctx, __u32 tcp_off, __u32 tcp_len,          \
					struct tcp_opts *o)                                     \
	{                                                                                       \
		struct tcp_opts_cursor c = {};                                                  \
		int i, ret = 0;                                                                 \
                                                                                                \
		c.tcp = tcp_off;                                                                \
		c.pos = tcp_off + sizeof(struct tcphdr);                                        \
		c.end = tcp_off + tcp_len;                                                      \
		for (i = 0; i < TCP_OPTS_MAX; i++) {                                            \
			ret = name##_step(ctx, &c);                                             \
			if (ret <= 0)                                                           \
				break;                                                          \
		}                                                                               \
		*o = c.o;                                                                       \
		return ret < 0 ? -1 : 0;                                                        \
	}

#endif /* MPTCP_LB_PARSE_H */
