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
#include "parse.h"

#define TAG_CLASS_MP_CAPABLE 1
#define TAG_CLASS_MP_JOIN 2
#define TAG_CLASS_TIMESTAMP 3
#define SERVER_ID_MASK 0xfff
/* Ethernet + the longest IPv4 header + the longest TCP header: all a verdict reads. */
#define MAX_HEADERS (ETH_HLEN + 60 + 60)

/* Where frames go; ifindexes in the MUX host's namespace, written by mptcp_lb/classifier.py. */
struct mux_ports {
	__u32 to_ovs;    /* the near end of the pair whose far end is the OVS port */
	__u32 to_uplink; /* the uplink */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mux_ports);
} mux_ports SEC(".maps");

/* Frame counters; mptcp_lb/classifier.py reads them in this order (STAT_NAMES). */
enum mux_stat {
	STAT_TO_OVS,        /* frames from the uplink redirected to OVS */
	STAT_MP_CAPABLE,    /* ... of which tagged SYN + MP_CAPABLE */
	STAT_MP_JOIN,       /* ... tagged SYN + MP_JOIN */
	STAT_TIMESTAMP,     /* ... tagged with a timestamp's server ID */
	STAT_TO_UPLINK,     /* frames from OVS redirected out of the uplink */
	STAT_UNCONFIGURED,  /* frames dropped because mux_ports is not filled */
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mux_stats SEC(".maps");

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

/* Overwrite the Ethernet destination with 0a:4d:CLASS:VALUE (24-bit big-endian). */
static __always_inline void write_tag(struct __sk_buff *skb, __u8 class, __u32 value)
{
	__u8 *mac = (void *)(long)skb->data;

	if ((void *)(mac + ETH_ALEN) > (void *)(long)skb->data_end)
		return;
	mac[0] = 0x0a;
	mac[1] = 0x4d;
	mac[2] = class;
	mac[3] = value >> 16;
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

	/* The headers may sit partly in paged data (a NIC's GRO, for one): make them linear. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + MAX_HEADERS > data_end && skb->len > data_end - data)
		bpf_skb_pull_data(skb, skb->len < MAX_HEADERS ? skb->len : MAX_HEADERS);
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
			/* The top 24 bits of the receiver token. */
			write_tag(skb, TAG_CLASS_MP_JOIN, opts.join_token >> 8);
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
