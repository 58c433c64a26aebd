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

/* A seed-mode VIP's punt budget: SYN + MP_CAPABLE tagged for the controller, at most this often. */
struct punt_key {
	__be32 vip;
	__be16 port;
	__u16 reserved;
};

struct punt_budget {
	__u64 interval_ns; /* one punt per interval... */
	__u64 burst_ns;    /* ... and bursts of up to burst_ns / interval_ns */
	__u64 tat;         /* GCRA's theoretical arrival time (bpf_ktime_get_ns), kept by the program */
	struct bpf_spin_lock lock;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct punt_key);
	__type(value, struct punt_budget);
} mux_punt_budget SEC(".maps");

/* A copy of the TCP header being edited (clearing client key carriers), and as it arrived. */
struct mux_scratch {
	__u8 cur[64];
	__u8 old[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mux_scratch);
} mux_scratch SEC(".maps");

/* Frame counters, the keys of mux_stats; classifier.py's STAT_NAMES names them in this order. */
enum mux_stat {
	STAT_TO_OVS,        /* frames from the uplink redirected to OVS */
	STAT_MP_CAPABLE,    /* ... of which tagged SYN + MP_CAPABLE */
	STAT_MP_JOIN,       /* ... tagged SYN + MP_JOIN */
	STAT_TIMESTAMP,     /* ... tagged with a timestamp's server ID */
	STAT_TO_UPLINK,     /* frames from OVS redirected out of the uplink */
	STAT_UNCONFIGURED,  /* frames dropped because mux_ports is not filled */
	STAT_OVER_BUDGET,   /* SYN + MP_CAPABLE over its VIP's punt budget: left untagged, for the hash */
	STAT_CARRIER_CLEARED, /* key carriers a client put in its own packet, turned into NOPs */
	STAT_FORGED_TAG,    /* frames that arrived with a tag MAC and earned none: tag class 0 */
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mux_stats SEC(".maps");

#endif /* MPTCP_LB_MUX_MAPS_H */
