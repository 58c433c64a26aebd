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
	      class == TAG_CLASS_MP_JOIN ? STAT_MP_JOIN : STAT_TIMESTAMP);
}

/* The verdict of docs/token-steering.md §2, written as a tag; no verdict leaves the frame alone. */
static __always_inline void classify(struct __sk_buff *skb)
{
	struct tcp_opts opts;
	struct tcphdr *tcp;
	struct iphdr *ip;
	void *data, *data_end;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + MAX_HEADERS > data_end && skb->len > data_end - data)
		pull_headers(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;

	ip = parse_ipv4(data, data_end);
	if (!ip)
		return;
	tcp = parse_tcp(ip, data_end);
	/* A SYN/ACK never earns a verdict, so its options need no walk. */
	if (!tcp || (tcp->syn && tcp->ack))
		return;
	if (mux_opts_walk(skb, ETH_HLEN + ip->ihl * 4, tcp->doff * 4, &opts))
		return;

	if (tcp->syn) {
		if (!opts.mptcp)
			return;
		if (opts.mptcp_subtype == MPTCP_SUB_CAPABLE)
			write_tag(skb, TAG_CLASS_MP_CAPABLE, 0);
		else if (opts.mptcp_subtype == MPTCP_SUB_JOIN && opts.mptcp_len == TCPOLEN_MPTCP_JOIN_SYN)
			/* The top bits of the receiver token. */
			write_tag(skb, TAG_CLASS_MP_JOIN, opts.join_token >> (32 - TAG_VALUE_BITS));
	} else if (opts.ts) {
		write_tag(skb, TAG_CLASS_TIMESTAMP, opts.tsecr & SERVER_ID_MASK);
	}
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
