/* SPDX-License-Identifier: GPL-2.0 */
/* The DIP programs' maps; dip_agent/ writes dip_config, dip_peers, dip_pool and seeds dip_flows, and reads dip_stats. */
#ifndef MPTCP_LB_DIP_MAPS_H
#define MPTCP_LB_DIP_MAPS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "dip_structs.h"

#define FLOWS_MAX 65536
#define PEERS_MAX 4096
#define TIME_WAIT_MAX 4096
/* How long a drop is remembered: a retransmission of a dropped SYN within it is let through. */
#define TIME_WAIT_RETRY_NS (5ULL * 1000000000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dip_config);
} dip_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOWS_MAX);
	__type(key, struct flow_key);
	__type(value, struct flow_state);
} dip_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOWS_MAX);
	__type(key, struct flow_key);
	__type(value, struct passed_to);
} dip_passed SEC(".maps");

/* SYNs dropped because their 4-tuple was in TIME_WAIT here (dip_tc.c: reopens_time_wait), for the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TIME_WAIT_MAX);
	__type(key, struct flow_key);
	__type(value, struct time_wait_drop);
} dip_time_wait SEC(".maps");

/* Each DIP's IPv6 fabric address by its IPv4 one, which second-chance marks name; written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PEERS_MAX);
	__type(key, __be32);
	__type(value, struct dip_peer);
} dip_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POOL_SIZE);
	__type(key, __u32);
	__type(value, struct pool_entry);
} dip_pool SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pool_state);
} dip_pool_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2); /* one slot per direction, DIR_*: egress and ingress never nest on one CPU */
	__type(key, __u32);
	__type(value, struct scratch);
} dip_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dip_stats SEC(".maps");

#endif /* MPTCP_LB_DIP_MAPS_H */
