/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The MUX classifier's maps and their values. User space (mptcp_lb/classifier.py)
 * writes mux_ports and reads mux_stats; tests/unit/test_bpf_abi.py checks its
 * layouts and stat names against these.
 */
#ifndef MPTCP_LB_MUX_MAPS_H
#define MPTCP_LB_MUX_MAPS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Where frames go; ifindexes in the MUX host's namespace. */
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

/* Frame counters, the keys of mux_stats; classifier.py's STAT_NAMES names them in this order. */
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

#endif /* MPTCP_LB_MUX_MAPS_H */
