/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The DIP programs' structs: the map values user space reads and writes
 * (dip_agent/dip_abi.py packs the same layouts; tests/unit/test_bpf_abi.py
 * checks them against this object's BTF), then what the programs keep about
 * the packet at hand.
 */
#ifndef MPTCP_LB_DIP_STRUCTS_H
#define MPTCP_LB_DIP_STRUCTS_H

#include <linux/types.h>
#include "mptcp_lb.h"
#include "parse.h"

/* ------------------------------------------------------------------ map values */

/* Configuration, written by the agent before attaching. */
struct dip_config {
	__be32 vip;       /* network order */
	__be16 port;      /* network order; 0 matches every port of the VIP */
	__u16 server_id;  /* stamped into TSval's low SERVER_ID_BITS */
	__u32 key_mode;   /* KEY_MODE_* */
	__u32 flags;      /* DIP_FLAG_* */
	__be32 self;      /* this DIP's fabric address: a second-chance mark naming it is ignored */
	__u8 vip6[16];    /* the VIP's IPv6 address, served like vip; all zero: none */
};

/* A flow as the DIP sees it; addresses (IPv6, or IPv4-mapped ::ffff:a.b.c.d) and ports in network order. */
struct flow_key {
	__u8 client_ip[16];
	__u8 vip[16];
	__be16 client_port;
	__be16 vip_port;
};

/* flow_state.has_key */
#define KEY_NONE 0
#define KEY_FOR_ISN 1 /* key_isn names the SYN the key belongs to */
#define KEY_ANY_ISN 2 /* seeded from userspace: good for the next SYN/ACK, whatever its ISN */

/* Set in flow_state.max_tsval once it holds a TSval: any u32, 0 included, is one. */
#define MAX_VALID (1ULL << 32)
/*
 * How long after its SYN/ACK a flow the DIP answered with a SYN cookie can
 * still complete its handshake here (second chance): the kernel takes
 * cookies up to MAX_SYNCOOKIE_AGE (2) minutes old, plus the minute in progress.
 */
#define SYNCOOKIE_LIFETIME_NS (180ULL * 1000000000ULL)

/* Compare-and-swap attempts to raise max_tsval against concurrent senders before giving up. */
#define MAX_TSVAL_CAS_TRIES 8

struct flow_state {
	__u8 key[KEY_LEN];     /* the key chosen for this flow's SYN/ACK */
	__u32 key_isn;         /* client ISN of the SYN the key belongs to (host order) */
	__u32 conn_isn;        /* client ISN of the connection the TS state describes */
	__u32 synack_tsval;    /* original TSval of the last SYN/ACK (host order) */
	__u32 synack_stamped;  /* ... and as stamped on the wire */
	__u8 has_key;          /* KEY_* */
	__u8 has_conn;         /* conn_isn, synack_* are set */
	__u8 ack_pending;      /* the third ACK (echoing synack_stamped) is still to come */
	__u8 reserved[5];
	__u64 max_tsval;       /* MAX_VALID | largest original TSval sent (serial order) */
	__u64 synack_ns;       /* bpf_ktime_get_ns() of the last SYN/ACK (second chance: a handshake of ours) */
};

/* dip_passed: where this DIP passed a flow's packets on (second chance), for a slot that moves again. */
struct passed_to {
	__be32 to;  /* the previous owner it passed them to */
	__u32 reserved;
	__u64 ns;   /* bpf_ktime_get_ns() of the last one */
};

/* dip_peers' value: a DIP's IPv6 fabric address, to pass an IPv6 packet on to it (second chance). */
struct dip_peer {
	__u8 address6[16];
};

struct pool_entry {
	__u8 key[KEY_LEN];
	__u64 seq; /* 1 + the pool index this key is for (0: never filled); other indices find the pool empty */
};

/* dip_time_wait's value: a SYN dropped because its 4-tuple was in TIME_WAIT here. */
struct time_wait_drop {
	__u64 ns;  /* bpf_ktime_get_ns() when it was dropped */
	__u32 isn; /* its sequence number: a retransmission of it is not dropped again */
	__u32 reserved;
};

struct pool_state {
	__u64 next; /* the next pool index to hand out; only ever incremented, here */
};

/* A TCP header's room: a power of two above TCP_HLEN_MAX, so a masked index stays inside. */
#define SCRATCH_LEN 64
_Static_assert(SCRATCH_LEN >= TCP_HLEN_MAX && !(SCRATCH_LEN & (SCRATCH_LEN - 1)), "SCRATCH_LEN");

struct scratch {
	__u8 cur[SCRATCH_LEN]; /* the TCP header, being edited */
	__u8 old[SCRATCH_LEN]; /* the TCP header as it arrived */
};

/* The keys of dip_stats; dip_abi.py's STAT_NAMES names them in this order. */
enum dip_stat {
	STAT_SYNACK_KEY_SET,   /* SYN/ACK key replaced */
	STAT_SYNACK_NO_KEY,    /* seed mode: no key for the flow, SYN/ACK left alone */
	STAT_POOL_EMPTY,       /* pool mode: the slot was not refilled yet */
	STAT_CARRIER_STORED,   /* seed mode: carrier key kept for a flow */
	STAT_TS_STAMPED,       /* egress segments stamped */
	STAT_TSECR_EXACT,      /* third ACKs restored exactly */
	STAT_TSECR_RESTORED,   /* other segments restored */
	STAT_TSECR_UNMATCHED,  /* TSecr not ours or beyond the flow's state: left alone */
	STAT_MALFORMED,        /* options malformed: packet left alone */
	STAT_NO_STATE,         /* ingress TSecr for a flow without state */
	STAT_SC_FORWARDED,     /* second chance: marked, no connection here, passed to the previous owner */
	STAT_SC_LOCAL,         /* second chance: marked, but a socket here holds it */
	STAT_SC_HANDSHAKE,     /* second chance: marked, the listener's, but this DIP answered its SYN */
	STAT_SC_SYN,           /* second chance: a marked SYN, which always stays with the new owner */
	STAT_SC_SELF,          /* second chance: the mark names this DIP itself */
	STAT_SC_CHAINED,       /* second chance: passed on again, to where this DIP passed the flow before */
	STAT_SEED_FALLBACK,    /* seed mode: a SYN the controller did not seed, keyed from the pool */
	STAT_FLOW_CREATED,     /* dip_flows entries made (the LRU evicts the oldest when it is full) */
	STAT_SYN_TIME_WAIT,    /* SYN(MP_CAPABLE)s dropped: their 4-tuple was in TIME_WAIT, handed to the agent */
	STAT_SC_NO_PEER,       /* second chance: an IPv6 packet to pass on, but no IPv6 address for that DIP: kept */
	STAT_MAX,
};

/* ------------------------------------------------------------------ the packet at hand */

#define DIR_EGRESS 0  /* from VIP:port; also the scratch slot */
#define DIR_INGRESS 1 /* to VIP:port */

/*
 * The packet's TCP header, validated by parse.h (Ethernet, then IPv4
 * unfragmented or IPv6 past its extension headers, none of them AH; the whole
 * doff*4 header in the linear data), with what the programs need.
 */
struct seg {
	__u8 saddr[16], daddr[16]; /* as in struct flow_key */
	__u8 ipv6;
	__be16 hop_field;           /* where second chance counts hops: the IPv4 ID, or IPv6's flow label if < 2^16 */
	__be16 sport, dport;
	__u32 seq, ack_seq; /* host order */
	__u8 flags;
	__u32 ip_off;       /* from the start of the frame */
	__u32 tcp_off;
	__u32 hdrlen;       /* doff * 4 */
};

/* What begin() learns of a packet, for egress() and ingress(). */
struct dip_packet {
	__u32 dir;              /* DIR_*, set by the caller */
	struct dip_config *cfg;
	struct seg seg;
	struct flow_key flow;
	struct tcp_opts opts;   /* offsets from the start of the TCP header */
	struct scratch *sc;     /* the TCP header, copied into scratch slot dir */
};

#endif /* MPTCP_LB_DIP_STRUCTS_H */
