// SPDX-License-Identifier: GPL-2.0
/*
 * MUX classifier (docs/token-steering.md §2). XDP on the MUX uplink, ahead of
 * OVS's AF_PACKET socket: it parses and, when a packet earns a verdict, writes
 * the verdict into the Ethernet destination as a tag MAC 0a:4d:CLASS:VALUE(24)
 * for the OpenFlow tables to match. It never drops and never changes any
 * other byte.
 */
#include <linux/bpf.h>
#include "parse.h"

#define TAG_CLASS_MP_CAPABLE 1
#define TAG_CLASS_MP_JOIN 2
#define TAG_CLASS_TIMESTAMP 3
#define SERVER_ID_MASK 0xfff

DEFINE_TCP_OPTS_WALK(mux_opts_walk, struct xdp_md)

/* Overwrite the Ethernet destination with 0a:4d:CLASS:VALUE (24-bit big-endian). */
static __always_inline void write_tag(void *data, void *data_end, __u8 class, __u32 value)
{
	__u8 *mac = data;

	if ((void *)(mac + ETH_ALEN) > data_end)
		return;
	mac[0] = 0x0a;
	mac[1] = 0x4d;
	mac[2] = class;
	mac[3] = value >> 16;
	mac[4] = value >> 8;
	mac[5] = value;
}

SEC("xdp")
int mux_classifier(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcp_opts opts;
	struct tcphdr *tcp;
	struct iphdr *ip;

	ip = parse_ipv4(data, data_end);
	if (!ip)
		return XDP_PASS;
	tcp = parse_tcp(ip, data_end);
	/* A SYN/ACK never earns a verdict, so its options need no walk. */
	if (!tcp || (tcp->syn && tcp->ack))
		return XDP_PASS;
	if (mux_opts_walk(ctx, ip, tcp, &opts))
		return XDP_PASS;

	if (tcp->syn) {
		if (!opts.mptcp)
			return XDP_PASS;
		if (opts.mptcp_subtype == MPTCP_SUB_CAPABLE)
			write_tag(data, data_end, TAG_CLASS_MP_CAPABLE, 0);
		else if (opts.mptcp_subtype == MPTCP_SUB_JOIN && opts.mptcp_len == TCPOLEN_MPTCP_JOIN_SYN)
			/* The top 24 bits of the receiver token. */
			write_tag(data, data_end, TAG_CLASS_MP_JOIN, opts.join_token >> 8);
	} else if (opts.ts) {
		write_tag(data, data_end, TAG_CLASS_TIMESTAMP, opts.tsecr & SERVER_ID_MASK);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
