// SPDX-License-Identifier: GPL-2.0
/*
 * The DIP's tc programs for token-based steering on a stock kernel
 * (docs/token-steering.md §4 and §5). Attach both on the DIP's fabric
 * interface(s) with clsact, direct action:
 *
 *  dip_egress  - SYN/ACK with MP_CAPABLE from VIP:SVC: replace the 8-byte
 *                sender key with the flow's seed key (mode 1) or the next key
 *                of the agent's pool (mode 2). With net.ipv4.tcp_syncookies=2
 *                the listener answers with a cookie and adopts the key the
 *                client echoes in the third ACK (mptcp_subflow_init_cookie_req),
 *                so the token lands in the slice the key was drawn for.
 *              - every segment from VIP:SVC with a timestamp: stamp
 *                TSval = (TSval & ~0xfff) | server_id, remembering per flow the
 *                SYN/ACK's original TSval and the largest original TSval sent.
 *  dip_ingress - SYN to VIP:SVC with the key carrier (kind 253, length 12,
 *                ExID 0x4d4c): keep the key for the flow (mode 1).
 *              - every segment to VIP:SVC with a timestamp: restore TSecr,
 *                exactly for the third ACK (its low bits are the cookie's
 *                WS/SACK/ECN), elsewhere to min(TSecr | 0xfff, largest
 *                original sent): never below what the kernel sent (a lower
 *                TSecr fakes a spurious-retransmission undo), never above it.
 *
 * VIP:SVC is dip_config's IPv4 VIP or its IPv6 one (vip6), alike: the IPv6
 * cookies adopt keys under the same sysctl.
 *
 * Both programs only rewrite bytes and fix the TCP checksum; they never drop
 * (but for a SYN that finds TIME_WAIT, below) and leave any packet they
 * cannot parse untouched.
 *
 * A timestamp at an even offset (where Linux puts it) is rewritten in place,
 * the checksum updated from the old and new values. Anything else (the
 * SYN/ACK's key, a timestamp at an odd offset) goes through a copy of the
 * header in a per-CPU scratch buffer, edited there; the checksum delta is
 * bpf_csum_diff() of the old and new copies, which starts at the TCP header,
 * so fields at any (even unaligned) offset sum correctly.
 *
 * Atomics: the pool index is taken with a fetch-and-add and the largest TSval
 * with a compare-and-swap. Those need BPF ISA v3, which bpf/Makefile does not
 * select globally, so the two programs carry target("cpu=v3") themselves
 * (64-bit atomics only: 32-bit ones would also need alu32).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "mptcp_lb.h"
#include "parse.h"
#include "dip_structs.h"
#include "dip_maps.h"

#define V3 __attribute__((target("cpu=v3")))
#define AF_INET 2 /* linux/socket.h, which a BPF program cannot include */
#define AF_INET6 10

static __always_inline void stat_inc(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&dip_stats, &which);

	if (v)
		*v += 1; /* per-CPU: no other writer */
}

/*
 * An index into a scratch buffer. The mask is done in asm: clang drops a C
 * mask it can prove redundant, and the verifier, which tracks the bound
 * through spills less well, then rejects the access.
 */
static __always_inline __u64 scratch_idx(__u64 x)
{
	asm volatile("%0 &= %1" : "+r"(x) : "i"(SCRATCH_LEN - 1));
	return x;
}

static __always_inline void wr32(__u8 *b, __u32 off, __u32 v)
{
	b[scratch_idx(off)] = v >> 24;
	b[scratch_idx(off + 1)] = v >> 16;
	b[scratch_idx(off + 2)] = v >> 8;
	b[scratch_idx(off + 3)] = v;
}

/* (a after b) in TCP timestamp serial order. */
static __always_inline int ts_after(__u32 a, __u32 b)
{
	return (__s32)(a - b) > 0;
}

/* The extension header walk of parse.h, the classifier's too. */
DEFINE_IPV6_WALK(dip_ipv6_walk, struct __sk_buff)

/* An IPv4 address as struct flow_key holds it: IPv4-mapped, ::ffff:a.b.c.d. */
static __always_inline void map_ipv4(__u8 *out, __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &a, sizeof(a));
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u8 diff = 0;

	for (int i = 0; i < 16; i++)
		diff |= a[i] ^ b[i];
	return !diff;
}

static __always_inline int addr_zero(const __u8 *a)
{
	__u8 any = 0;

	for (int i = 0; i < 16; i++)
		any |= a[i];
	return !any;
}

/* The TCP header of an IPv4 or IPv6 packet (*ip NULL for IPv6), its frame offset in *tcp_off; NULL if none. */
static __always_inline struct tcphdr *find_tcp(struct __sk_buff *skb, void *data, void *data_end, struct iphdr **ip,
					       __u32 *tcp_off)
{
	*ip = NULL;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		*ip = parse_ipv4(data, data_end);
		if (!*ip)
			return NULL;
		*tcp_off = ETH_HLEN + (*ip)->ihl * 4;
		return parse_tcp(*ip, data_end);
	}
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return NULL;
	*tcp_off = dip_ipv6_walk(skb, 0); /* not behind AH: the rewrites would break its ICV */
	return *tcp_off ? parse_tcp_at(data, *tcp_off, data_end) : NULL;
}

/*
 * Whether a packet whose TCP header was not found in the linear data may
 * have one beyond it: unfragmented IPv4 TCP, or IPv6 whose first next header
 * is TCP or an extension header that may lead to it. Other protocols never
 * pay for a pull (it may copy a clone).
 */
static __always_inline int worth_a_pull(struct __sk_buff *skb, void *data, void *data_end)
{
	struct iphdr *ip = data + ETH_HLEN;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u8 next;

	if (skb->len <= data_end - data)
		return 0; /* all of it is linear already */
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return (void *)(ip + 1) <= data_end && ip->protocol == IPPROTO_TCP &&
		       !(ip->frag_off & bpf_htons(IPV4_MF_AND_OFFSET));
	if (skb->protocol != bpf_htons(ETH_P_IPV6) || (void *)(ip6 + 1) > data_end)
		return 0;
	next = ip6->nexthdr;
	return next == IPPROTO_TCP || next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_FRAGMENT;
}

static __always_inline int parse_seg(struct __sk_buff *skb, struct seg *s)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 tcp_off = 0;

	tcp = find_tcp(skb, data, data_end, &ip, &tcp_off);
	if (!tcp) {
		/* A TCP header not all in the linear data (or a malformed one): pull and retry once. */
		if (!worth_a_pull(skb, data, data_end) ||
		    pull_headers(skb, skb->protocol == bpf_htons(ETH_P_IP) ? MAX_HEADERS_IPV4 : MAX_HEADERS_IPV6))
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		tcp = find_tcp(skb, data, data_end, &ip, &tcp_off);
		if (!tcp)
			return -1;
	}
	if (ip) {
		map_ipv4(s->saddr, ip->saddr);
		map_ipv4(s->daddr, ip->daddr);
		s->hop_field = ip->id;
		s->ipv6 = 0;
	} else {
		ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(s->saddr, &ip6->saddr, sizeof(s->saddr));
		__builtin_memcpy(s->daddr, &ip6->daddr, sizeof(s->daddr));
		/* The flow label's top 4 bits (flow_lbl[0] & 0xf) zero: its low 16 bits can be a DIP's mark. */
		s->hop_field = (ip6->flow_lbl[0] & 0xf) ? 0 : bpf_htons((__u16)ip6->flow_lbl[1] << 8 | ip6->flow_lbl[2]);
		s->ipv6 = 1;
	}
	s->ip_off = ETH_HLEN;
	s->sport = tcp->source;
	s->dport = tcp->dest;
	s->seq = bpf_ntohl(tcp->seq);
	s->ack_seq = bpf_ntohl(tcp->ack_seq);
	s->flags = ((__u8 *)tcp)[TCP_FLAGS_OFF];
	s->tcp_off = tcp_off;
	s->hdrlen = tcp->doff * 4;
	return 0;
}

/* Copy the TCP header into the scratch buffer (both copies); NULL on failure. */
static __always_inline struct scratch *load_header(struct __sk_buff *skb, struct seg *s, __u32 slot)
{
	struct scratch *sc = bpf_map_lookup_elem(&dip_scratch, &slot);
	/*
	 * 64 bits wide: a __u32 gets zero-extended into a copy that the bounds
	 * checks below then test, and the verifier sees no bound on len itself.
	 */
	__u64 len = s->hdrlen;

	if (!sc)
		return NULL;
	__builtin_memset(sc->cur, 0, sizeof(sc->cur));
	if (len < sizeof(struct tcphdr) || len > TCP_HLEN_MAX)
		return NULL;
	if (bpf_skb_load_bytes(skb, s->tcp_off, sc->cur, len))
		return NULL;
	__builtin_memcpy(sc->old, sc->cur, sizeof(sc->old));
	return sc;
}

/*
 * Write the edited bytes [off, off+len) of the header back, then fix the TCP
 * checksum by the difference of the whole old and new headers (bytes past
 * hdrlen are zero in both). Called once per edited field; the old copy is
 * brought up to date after each, so each call adds only its own delta.
 */
static __always_inline int commit(struct __sk_buff *skb, struct seg *s, struct scratch *sc,
				  __u32 off, const void *bytes, __u32 len)
{
	__s64 diff;
	long err;

	/* Each length a constant, so the verifier knows how much of `bytes` is read. */
	if (len == sizeof(__be32))
		err = bpf_skb_store_bytes(skb, s->tcp_off + off, bytes, sizeof(__be32), 0);
	else if (len == KEY_LEN)
		err = bpf_skb_store_bytes(skb, s->tcp_off + off, bytes, KEY_LEN, 0);
	else
		err = -1;
	if (err) {
		/* The packet kept its bytes: so does the copy, or a later commit would add this edit's delta. */
		__builtin_memcpy(sc->cur, sc->old, sizeof(sc->cur));
		return -1;
	}
	diff = bpf_csum_diff((__be32 *)sc->old, sizeof(sc->old), (__be32 *)sc->cur, sizeof(sc->cur), 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, s->tcp_off + offsetof(struct tcphdr, check), 0, diff, 0))
		return -1;
	__builtin_memcpy(sc->old, sc->cur, sizeof(sc->old));
	return 0;
}

static __always_inline struct flow_state *flow_get(struct flow_key *k)
{
	struct flow_state *st = bpf_map_lookup_elem(&dip_flows, k);
	struct flow_state fresh = {};

	if (st)
		return st;
	if (bpf_map_update_elem(&dip_flows, k, &fresh, BPF_NOEXIST) == 0)
		stat_inc(STAT_FLOW_CREATED);
	return bpf_map_lookup_elem(&dip_flows, k);
}

/* Raise st->max_tsval to v (serial order); lock-free, so concurrent senders never lose a raise. */
static __always_inline void max_raise(struct flow_state *st, __u32 v)
{
	__u64 want = MAX_VALID | v;
	int i;

	for (i = 0; i < MAX_TSVAL_CAS_TRIES; i++) {
		__u64 old = *(volatile __u64 *)&st->max_tsval;

		if ((old & MAX_VALID) && !ts_after(v, (__u32)old))
			return;
		if (__sync_val_compare_and_swap(&st->max_tsval, old, want) == old)
			return;
	}
}

/* The next pool key into `key`; 0 on success, -1 when the agent has not refilled the slot. */
static __always_inline int pool_take(__u8 *key)
{
	__u32 zero = 0, slot;
	struct pool_state *ps = bpf_map_lookup_elem(&dip_pool_state, &zero);
	struct pool_entry *e;
	__u64 idx;

	if (!ps)
		return -1;
	idx = __sync_fetch_and_add(&ps->next, 1);
	slot = idx & (POOL_SIZE - 1);
	e = bpf_map_lookup_elem(&dip_pool, &slot);
	/*
	 * The agent writes a slot's key with an invalid seq first and the right
	 * seq second, so a matching seq means the key read after it is complete.
	 */
	if (!e || *(volatile __u64 *)&e->seq != idx + 1)
		return -1;
	__builtin_memcpy(key, e->key, KEY_LEN);
	return 0;
}

/* The options walk of parse.h, the classifier's too (docs/token-steering.md §2.4). */
DEFINE_TCP_OPTS_WALK(dip_opts_walk, struct __sk_buff)

/*
 * What both programs do first: the config, the segment and its flow key.
 * Nonzero: the packet is not a TCP segment of the VIP's service (from it on
 * egress, to it on ingress); leave it alone.
 */
static __always_inline int begin(struct __sk_buff *skb, struct dip_packet *pkt)
{
	struct seg *s = &pkt->seg;
	struct flow_key *fk = &pkt->flow;
	__u32 zero = 0;

	struct dip_config *cfg;
	__be32 vip4;

	cfg = pkt->cfg = bpf_map_lookup_elem(&dip_config, &zero);
	if (!cfg || parse_seg(skb, s))
		return -1;
	if (pkt->dir == DIR_INGRESS) {
		__builtin_memcpy(fk->client_ip, s->saddr, sizeof(fk->client_ip));
		__builtin_memcpy(fk->vip, s->daddr, sizeof(fk->vip));
		fk->client_port = s->sport;
		fk->vip_port = s->dport;
	} else {
		__builtin_memcpy(fk->client_ip, s->daddr, sizeof(fk->client_ip));
		__builtin_memcpy(fk->vip, s->saddr, sizeof(fk->vip));
		fk->client_port = s->dport;
		fk->vip_port = s->sport;
	}
	if (s->ipv6) {
		if (addr_zero(cfg->vip6) || !addr_eq(fk->vip, cfg->vip6))
			return -1;
	} else {
		__builtin_memcpy(&vip4, fk->vip + 12, sizeof(vip4));
		if (!cfg->vip || vip4 != cfg->vip)
			return -1;
	}
	if (cfg->port && fk->vip_port != cfg->port)
		return -1;
	return 0;
}

/*
 * Then the offsets and values of its options, read from the packet.
 * Nonzero: no options, or malformed ones; leave it alone.
 */
static __always_inline int walk_options(struct __sk_buff *skb, struct dip_packet *pkt)
{
	struct seg *s = &pkt->seg;

	if (s->hdrlen <= sizeof(struct tcphdr)) /* no options */
		return -1;
	if (dip_opts_walk(skb, s->tcp_off, s->hdrlen, &pkt->opts)) {
		stat_inc(STAT_MALFORMED);
		return -1;
	}
	return 0;
}

/* The header in scratch slot pkt->dir, copied on first use; NULL on failure. */
static __always_inline struct scratch *scratch_header(struct __sk_buff *skb, struct dip_packet *pkt)
{
	if (!pkt->sc)
		pkt->sc = load_header(skb, &pkt->seg, pkt->dir);
	return pkt->sc;
}

/*
 * Replace the 4-byte field at TCP header offset `off`, which holds `old`,
 * with `new` (host order). On the checksum's 16-bit grid (an even offset,
 * as Linux lays timestamps out) the checksum is updated from the two values
 * alone, with no copy of the header; elsewhere through the scratch copy.
 */
static __always_inline int replace_u32(struct __sk_buff *skb, struct dip_packet *pkt, __u32 off, __u32 old,
				       __u32 new)
{
	__be32 from = bpf_htonl(old), to = bpf_htonl(new);
	struct scratch *sc;

	if (!(off & 1)) {
		if (bpf_skb_store_bytes(skb, pkt->seg.tcp_off + off, &to, sizeof(to), 0))
			return -1;
		return bpf_l4_csum_replace(skb, pkt->seg.tcp_off + offsetof(struct tcphdr, check), from, to,
					   sizeof(to)) ? -1 : 0;
	}
	sc = scratch_header(skb, pkt);
	if (!sc)
		return -1;
	wr32(sc->cur, off, new);
	return commit(skb, &pkt->seg, sc, off, &to, sizeof(to));
}

/* Remember that this DIP answered a SYN of this flow (and a new connection's TS state). */
static __always_inline struct flow_state *record_synack(struct dip_packet *pkt)
{
	struct flow_state *st = flow_get(&pkt->flow);
	__u32 isn = pkt->seg.ack_seq - 1;

	if (!st)
		return NULL;
	if (!st->has_conn || st->conn_isn != isn) { /* a new connection on this 4-tuple */
		st->conn_isn = isn;
		st->has_conn = 1;
		st->ack_pending = 0;
		st->max_tsval = 0;
	}
	st->synack_ns = bpf_ktime_get_ns();
	return st;
}

static __always_inline void egress(struct __sk_buff *skb)
{
	struct dip_packet pkt = {.dir = DIR_EGRESS};
	struct dip_config *cfg;
	struct flow_state *st = NULL;
	struct scratch *sc;
	__u8 key[KEY_LEN];
	int synack, have_key = 0;
	__u32 mpc, ts, isn;

	if (begin(skb, &pkt))
		return;
	cfg = pkt.cfg;
	synack = (pkt.seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK);
	if (synack) {
		st = record_synack(&pkt);
		if (!st)
			return;
	}
	if (!(cfg->flags & DIP_FLAG_STAMP) && cfg->key_mode == KEY_MODE_NONE)
		return; /* port mode: nothing to rewrite */
	if (walk_options(skb, &pkt))
		return;
	mpc = pkt.opts.mptcp;
	ts = (cfg->flags & DIP_FLAG_STAMP) ? pkt.opts.ts : 0;
	if (!ts && !(synack && mpc))
		return;
	if (!st)
		st = flow_get(&pkt.flow);
	if (!st)
		return;
	isn = pkt.seg.ack_seq - 1;

	/* MP_CAPABLE (subtype 0) with the sender's key: length 12 in a SYN/ACK. */
	if (synack && mpc && mpc <= TCP_HLEN_MAX - TCPOLEN_MPC_SYNACK && cfg->key_mode != KEY_MODE_NONE &&
	    pkt.opts.mptcp_len == TCPOLEN_MPC_SYNACK && pkt.opts.mptcp_subtype == MPTCP_SUB_CAPABLE &&
	    (sc = scratch_header(skb, &pkt))) {
		if ((st->has_key == KEY_FOR_ISN && st->key_isn == isn) || st->has_key == KEY_ANY_ISN) {
			__builtin_memcpy(key, st->key, KEY_LEN);
			have_key = 1;
		} else if (cfg->key_mode == KEY_MODE_POOL || cfg->key_mode == KEY_MODE_SEED) {
			/* Seed mode keeps the pool as its fallback: for a SYN the controller did not seed. */
			if (pool_take(key) == 0) {
				have_key = 1;
				if (cfg->key_mode == KEY_MODE_SEED)
					stat_inc(STAT_SEED_FALLBACK);
			} else {
				/* Seed mode: neither a key of its own nor one in the pool (none filled, or all taken). */
				stat_inc(cfg->key_mode == KEY_MODE_SEED ? STAT_SYNACK_NO_KEY : STAT_POOL_EMPTY);
			}
		} else {
			stat_inc(STAT_SYNACK_NO_KEY);
		}
		if (have_key) {
			/* The same key again for a retransmitted SYN's SYN/ACK. */
			__builtin_memcpy(st->key, key, KEY_LEN);
			st->key_isn = isn;
			st->has_key = KEY_FOR_ISN;
			for (int i = 0; i < KEY_LEN; i++)
				sc->cur[scratch_idx(mpc + MPC_KEY_OFF + i)] = key[i];
			if (commit(skb, &pkt.seg, sc, mpc + MPC_KEY_OFF, key, KEY_LEN) == 0)
				stat_inc(STAT_SYNACK_KEY_SET);
		}
	}

	if (ts && ts <= TCP_HLEN_MAX - TCPOLEN_TIMESTAMP) {
		__u32 orig = pkt.opts.tsval;
		__u32 stamped = (orig & ~SERVER_ID_MASK) | (cfg->server_id & SERVER_ID_MASK);

		if (synack) {
			st->synack_tsval = orig;
			st->synack_stamped = stamped;
			st->ack_pending = 1;
		}
		max_raise(st, orig);
		if (stamped != orig && replace_u32(skb, &pkt, ts + TS_TSVAL_OFF, orig, stamped))
			return;
		stat_inc(STAT_TS_STAMPED);
	}
}

/* The state of the socket the packet's 4-tuple finds here (the listener if nothing more specific), or -1. */
static __always_inline int socket_state(struct __sk_buff *skb, struct dip_packet *pkt)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	int state;

	if (pkt->seg.ipv6) {
		__builtin_memcpy(tuple.ipv6.saddr, pkt->seg.saddr, sizeof(tuple.ipv6.saddr));
		__builtin_memcpy(tuple.ipv6.daddr, pkt->seg.daddr, sizeof(tuple.ipv6.daddr));
		tuple.ipv6.sport = pkt->seg.sport;
		tuple.ipv6.dport = pkt->seg.dport;
		sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(&tuple.ipv4.saddr, pkt->seg.saddr + 12, sizeof(tuple.ipv4.saddr));
		__builtin_memcpy(&tuple.ipv4.daddr, pkt->seg.daddr + 12, sizeof(tuple.ipv4.daddr));
		tuple.ipv4.sport = pkt->seg.sport;
		tuple.ipv4.dport = pkt->seg.dport;
		sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return -1;
	state = sk->state;
	bpf_sk_release(sk);
	return state;
}

/*
 * Second chance (mptcp_lb/slots.py). A packet whose source MAC carries a
 * previous owner's address belongs to a slot in transition. A SYN starts a
 * connection here; anything else that no connection here holds goes on to
 * that DIP. A slot that moved twice within its transition leaves some
 * connections two owners back: the DIP a packet is passed to passes it on
 * once more where it passed that flow on before (dip_passed), up to
 * SECOND_CHANCE_MAX_HOPS. The hop count rides in the IPv4 ID (IPv6: the flow
 * label), so a packet never circles; with its last hop, or where no record
 * says more, it stays. An IPv6 packet goes on to the previous owner's IPv6
 * fabric address (dip_peers), and stays if the agent gave none.
 *
 * "Held here": a socket for the 4-tuple (established, a request socket in
 * the middle of a handshake, TIME_WAIT), or, when only the listener matches,
 * a SYN/ACK this DIP sent for the flow (with SYN cookies, as the token modes
 * run, a handshake leaves no request socket) whose sequence numbers this
 * packet follows, within a cookie's lifetime.
 *
 * Returns TC_ACT_OK to deliver here, else the redirect's verdict.
 */
static __always_inline int held_here(struct __sk_buff *skb, struct dip_packet *pkt)
{
	struct flow_state *st;
	int state = socket_state(skb, pkt);

	if (state >= 0 && state != BPF_TCP_LISTEN) {
		stat_inc(STAT_SC_LOCAL);
		return 1;
	}
	st = bpf_map_lookup_elem(&dip_flows, &pkt->flow);
	if (st && st->has_conn && (__s32)(pkt->seg.seq - (st->conn_isn + 1)) >= 0 &&
	    bpf_ktime_get_ns() - st->synack_ns < SYNCOOKIE_LIFETIME_NS) {
		stat_inc(STAT_SC_HANDSHAKE);
		return 1;
	}
	return 0;
}

/*
 * Pass the packet on to the DIP at `to` (its IPv4 fabric address; for an IPv6
 * packet, the IPv6 one dip_peers gives for it), marked with the hops so far in
 * the IPv4 ID or the IPv6 flow label; the kernel writes the MACs. TC_ACT_OK
 * when it cannot: the packet is then delivered here.
 */
static __always_inline int pass_on(struct __sk_buff *skb, struct dip_packet *pkt, __be32 to, __u16 hops)
{
	struct bpf_redir_neigh nh = {};
	__be16 id = bpf_htons(SECOND_CHANCE_PASSED_ID | hops);
	struct dip_peer *peer;
	__u8 label[3];

	if (pkt->seg.ipv6) {
		peer = bpf_map_lookup_elem(&dip_peers, &to);
		if (!peer) {
			stat_inc(STAT_SC_NO_PEER);
			return TC_ACT_OK;
		}
		/* Version and traffic class stay (byte 0 and this byte's high nibble); the flow label becomes the mark. */
		if (bpf_skb_load_bytes(skb, pkt->seg.ip_off + 1, label, 1))
			return TC_ACT_OK;
		label[0] &= 0xf0;
		label[1] = (SECOND_CHANCE_PASSED_ID | hops) >> 8;
		label[2] = (SECOND_CHANCE_PASSED_ID | hops) & 0xff;
		/* No checksum covers the flow label; a receive checksum (CHECKSUM_COMPLETE) does. */
		if (bpf_skb_store_bytes(skb, pkt->seg.ip_off + 1, label, sizeof(label), BPF_F_RECOMPUTE_CSUM))
			return TC_ACT_OK;
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, peer->address6, sizeof(nh.ipv6_nh));
		return bpf_redirect_neigh(skb->ifindex, &nh, sizeof(nh), 0);
	}
	if (bpf_l3_csum_replace(skb, pkt->seg.ip_off + offsetof(struct iphdr, check), pkt->seg.hop_field, id,
				sizeof(id)) ||
	    bpf_skb_store_bytes(skb, pkt->seg.ip_off + offsetof(struct iphdr, id), &id, sizeof(id), 0))
		return TC_ACT_OK;
	nh.nh_family = AF_INET;
	nh.ipv4_nh = to;
	return bpf_redirect_neigh(skb->ifindex, &nh, sizeof(nh), 0);
}

static __always_inline int second_chance(struct __sk_buff *skb, struct dip_packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct passed_to *passed, record = {};
	__u16 id = bpf_ntohs(pkt->seg.hop_field);
	__be32 previous;
	int verdict;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_source[0] != (TAG_PREFIX >> 8) || eth->h_source[1] != (TAG_PREFIX & 0xff)) {
		__u16 hops = id & SECOND_CHANCE_HOPS_MASK;

		if ((id & ~SECOND_CHANCE_HOPS_MASK) != SECOND_CHANCE_PASSED_ID || !hops)
			return TC_ACT_OK; /* neither a MUX's mark nor a DIP's */
		/* Passed on by a DIP: on again only by this DIP's own record of the flow. */
		if (hops >= SECOND_CHANCE_MAX_HOPS || held_here(skb, pkt))
			return TC_ACT_OK;
		passed = bpf_map_lookup_elem(&dip_passed, &pkt->flow);
		if (!passed || !passed->to || passed->to == pkt->cfg->self)
			return TC_ACT_OK;
		verdict = pass_on(skb, pkt, passed->to, hops + 1);
		if (verdict != TC_ACT_OK)
			stat_inc(STAT_SC_CHAINED);
		return verdict;
	}
	__builtin_memcpy(&previous, &eth->h_source[SECOND_CHANCE_ADDR_OFF], sizeof(previous));
	if (!previous || previous == pkt->cfg->self) {
		stat_inc(STAT_SC_SELF);
		return TC_ACT_OK;
	}
	if ((pkt->seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
		stat_inc(STAT_SC_SYN);
		return TC_ACT_OK;
	}
	if (held_here(skb, pkt))
		return TC_ACT_OK;
	verdict = pass_on(skb, pkt, previous, 1);
	if (verdict == TC_ACT_OK)
		return verdict;
	record.to = previous;
	record.ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&dip_passed, &pkt->flow, &record, BPF_ANY);
	stat_inc(STAT_SC_FORWARDED);
	return verdict;
}

/*
 * A SYN(MP_CAPABLE) for a 4-tuple this DIP holds in TIME_WAIT (a client
 * reusing its port after the server closed first) would reopen it with a
 * request socket and never a SYN cookie (tcp_conn_request: "TW buckets are
 * converted to open requests"), so the listener would keep its own key while
 * the client learns the adopted one from the SYN/ACK: every join then finds no
 * token. With an agent to retire it (DIP_FLAG_REAP_TIME_WAIT), such a SYN is
 * dropped and its 4-tuple put in dip_time_wait; the agent destroys that
 * TIME_WAIT socket (dip_agent/time_wait.py) and the client's retransmitted SYN
 * is answered with a cookie. Should the TIME_WAIT still be there when the
 * retransmission comes, it goes through: a kernel key rather than a lost SYN.
 * Nonzero: drop.
 */
static __always_inline int reopens_time_wait(struct __sk_buff *skb, struct dip_packet *pkt)
{
	struct time_wait_drop drop = {}, *before;

	if (!(pkt->cfg->flags & DIP_FLAG_REAP_TIME_WAIT) || !pkt->opts.mptcp ||
	    pkt->opts.mptcp_subtype != MPTCP_SUB_CAPABLE || socket_state(skb, pkt) != BPF_TCP_TIME_WAIT)
		return 0;
	drop.ns = bpf_ktime_get_ns();
	drop.isn = pkt->seg.seq;
	before = bpf_map_lookup_elem(&dip_time_wait, &pkt->flow);
	if (before && before->isn == drop.isn && drop.ns - before->ns < TIME_WAIT_RETRY_NS)
		return 0;
	if (bpf_map_update_elem(&dip_time_wait, &pkt->flow, &drop, BPF_ANY))
		return 0;
	stat_inc(STAT_SYN_TIME_WAIT);
	return 1;
}

static __always_inline int ingress(struct __sk_buff *skb)
{
	struct dip_packet pkt = {.dir = DIR_INGRESS};
	struct dip_config *cfg;
	struct flow_state *st;
	struct scratch *sc;
	__u32 carrier, ts, tsecr, restored, sid;
	int verdict;

	if (begin(skb, &pkt))
		return TC_ACT_OK;
	verdict = second_chance(skb, &pkt);
	if (verdict != TC_ACT_OK)
		return verdict;
	cfg = pkt.cfg;
	if (!(cfg->flags & DIP_FLAG_STAMP) && cfg->key_mode == KEY_MODE_NONE)
		return TC_ACT_OK; /* port mode: nothing to read or restore */
	if (walk_options(skb, &pkt))
		return TC_ACT_OK;
	carrier = pkt.opts.carrier;
	ts = (cfg->flags & DIP_FLAG_STAMP) ? pkt.opts.ts : 0;

	if ((pkt.seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
		if (reopens_time_wait(skb, &pkt))
			return TC_ACT_SHOT;
		/* A SYN echoes no timestamp (TSecr is 0): only the carrier matters. */
		if (cfg->key_mode != KEY_MODE_SEED || !carrier || carrier > TCP_HLEN_MAX - TCPOLEN_KEY_CARRIER)
			return TC_ACT_OK;
		sc = scratch_header(skb, &pkt);
		st = sc ? flow_get(&pkt.flow) : NULL;
		if (!st)
			return TC_ACT_OK;
		for (int j = 0; j < KEY_LEN; j++)
			st->key[j] = sc->cur[scratch_idx(carrier + KEY_CARRIER_KEY_OFF + j)];
		st->key_isn = pkt.seg.seq;
		st->has_key = KEY_FOR_ISN;
		stat_inc(STAT_CARRIER_STORED);
		return TC_ACT_OK;
	}

	if (!ts || ts > TCP_HLEN_MAX - TCPOLEN_TIMESTAMP)
		return TC_ACT_OK;
	st = bpf_map_lookup_elem(&dip_flows, &pkt.flow);
	if (!st) {
		stat_inc(STAT_NO_STATE);
		return TC_ACT_OK;
	}
	tsecr = pkt.opts.tsecr;
	if (!tsecr)
		return TC_ACT_OK;
	sid = cfg->server_id & SERVER_ID_MASK;
	if (st->ack_pending && st->has_conn && tsecr == st->synack_stamped) {
		/* The third ACK: the cookie's WS/SACK/ECN bits must come back exactly. */
		restored = st->synack_tsval;
		st->ack_pending = 0;
		stat_inc(STAT_TSECR_EXACT);
	} else {
		__u64 m = *(volatile __u64 *)&st->max_tsval;
		__u32 max = (__u32)m, hi = tsecr | SERVER_ID_MASK;

		/*
		 * The echoed value was stamped from some original O in
		 * [tsecr & ~SERVER_ID_MASK, hi], and O <= max. min(hi, max) is
		 * then >= O and <= what was sent. If the echo is not ours, or its
		 * window lies beyond everything recorded (state lost or reused),
		 * the original cannot be bounded: leave it.
		 */
		if ((tsecr & SERVER_ID_MASK) != sid || !(m & MAX_VALID) ||
		    ts_after(tsecr & ~SERVER_ID_MASK, max)) {
			stat_inc(STAT_TSECR_UNMATCHED);
			return TC_ACT_OK;
		}
		restored = ts_after(hi, max) ? max : hi;
		stat_inc(STAT_TSECR_RESTORED);
	}
	if (restored != tsecr)
		replace_u32(skb, &pkt, ts + TS_TSECR_OFF, tsecr, restored);
	return TC_ACT_OK;
}

V3 SEC("tc") int dip_egress(struct __sk_buff *skb)
{
	egress(skb);
	return TC_ACT_OK;
}

V3 SEC("tc") int dip_ingress(struct __sk_buff *skb)
{
	return ingress(skb);
}

char _license[] SEC("license") = "GPL";
