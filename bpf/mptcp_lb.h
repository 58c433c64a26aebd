/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The wire constants the BPF programs share with user space, and only those
 * (docs/token-steering.md). Their Python twins live in mptcp_lb/mptcp_codec.py
 * (wire format) and dip_agent/dip_abi.py (the DIP's maps);
 * tests/unit/test_bpf_abi.py checks that every name here has a twin of the
 * same value. Plain #defines of integers, so that test can read them.
 */
#ifndef MPTCP_LB_H
#define MPTCP_LB_H

/* TCP options (docs/token-steering.md §2.4). */
#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_TIMESTAMP 8
#define TCPOLEN_TIMESTAMP 10
#define TCPOPT_MPTCP 30
#define TCPOPT_EXPERIMENTAL 253 /* RFC 6994, shared by experiments told apart by their ExID */
#define MPTCP_SUB_CAPABLE 0
#define MPTCP_SUB_JOIN 1
#define TCPOLEN_MPTCP_JOIN_SYN 12

/* MPTCP keys, and the key carrier: the option that brings the DIP a key in the SYN (seed mode). */
#define KEY_LEN 8
#define KEY_CARRIER_EXID 0x4d4c /* "ML" */
#define TCPOLEN_KEY_CARRIER (4 + KEY_LEN)

/* The tag MAC the classifier writes as Ethernet destination: 0a:4d:CLASS:VALUE (docs/token-steering.md §2). */
#define TAG_PREFIX 0x0a4d /* locally administered unicast, then "M" */
#define TAG_CLASS_NONE 0 /* written over a tag MAC a frame arrived with but did not earn */
#define TAG_CLASS_MP_CAPABLE 1
#define TAG_CLASS_MP_JOIN 2
#define TAG_CLASS_TIMESTAMP 3
#define TAG_VALUE_BITS 24

/*
 * What the classifier walks of IPv6 (docs/token-steering.md §2): at most
 * IPV6_EXT_HEADERS_MAX extension headers, the TCP header at most
 * IPV6_EXT_BYTES_MAX bytes after the fixed header, and a fragment header
 * only when its offset and M flag (this mask of its u16 at +2) are 0.
 */
#define IPV6_EXT_HEADERS_MAX 8
#define IPV6_EXT_BYTES_MAX 128
#define IPV6_FRAG_OFFSET_AND_MF 0xfff9

/*
 * Second chance (mptcp_lb/slots.py). A MUX marks a packet of a slot in
 * transition in its source MAC: TAG_PREFIX, then the previous owner's IPv4
 * address; the new owner passes on what it holds no connection for. A DIP
 * that passes a packet on marks it in the IPv4 ID (free for any value in a
 * packet that is not a fragment), or in an IPv6 packet's flow label (which
 * no checksum covers, and a receiver ignores with flowlabel_reflect off):
 * SECOND_CHANCE_PASSED_ID | the hops so far, because the neighbour
 * subsystem rewrites the MACs on the way. The next DIP
 * passes it on again only where it passed that flow on itself before (a slot
 * that moved twice), and never beyond SECOND_CHANCE_MAX_HOPS.
 */
#define SECOND_CHANCE_ADDR_OFF 2 /* the address's offset in the source MAC */
#define SECOND_CHANCE_PASSED_ID 0x4d40
#define SECOND_CHANCE_HOPS_MASK 0x7
#define SECOND_CHANCE_MAX_HOPS 4

/* The server ID a DIP stamps into the low bits of TSval, and the classifier reads back from TSecr. */
#define SERVER_ID_BITS 12
#define SERVER_ID_MASK ((1u << SERVER_ID_BITS) - 1)

/* What the DIP's egress puts in a SYN/ACK's MP_CAPABLE key (struct dip_config.key_mode). */
#define KEY_MODE_NONE 0 /* the kernel's own key */
#define KEY_MODE_SEED 1 /* the key the flow's SYN carried, or one seeded from user space */
#define KEY_MODE_POOL 2 /* the next key of the agent's pool */

#define POOL_SIZE 1024 /* entries of dip_pool; a power of two */

/* struct dip_config.flags */
#define DIP_FLAG_STAMP 1 /* stamp the server ID into TSval and restore TSecr (the token modes) */
#define DIP_FLAG_REAP_TIME_WAIT 2 /* the agent destroys TIME_WAIT sockets: drop a SYN(MP_CAPABLE) that finds one */

#endif /* MPTCP_LB_H */
