/* SPDX-License-Identifier: GPL-2.0 */
/*
 * medseg_abi.h - every struct and constant shared by the XDP program and the
 * Python manager. This file is the single source of truth: medseg_xdp/abi.py
 * parses it (it must stay within the subset that parser reads: #define NAME
 * number, enums with optional "= number", structs of u8/u16/u32/u64 scalars
 * and fixed arrays), and tests/test_abi.py proves that the parsed layouts
 * equal the ones clang gives the BPF maps.
 *
 * Rules for editing: explicit padding, keys zero-initialised and a multiple
 * of 4 bytes, no implicit holes. Changing anything here changes the ABI hash,
 * and so the bpffs pin directory: old pinned maps are never reused with a
 * new layout.
 */
#ifndef MEDSEG_ABI_H
#define MEDSEG_ABI_H

/* Verdict of one packet. AUDIT = policy says drop, the segment is in monitor
 * mode (or the rule's action is audit): the packet passes and is counted. */
enum medseg_verdict {
	VERDICT_PASS = 0,
	VERDICT_DROP = 1,
	VERDICT_AUDIT = 2,
	VERDICT_MAX = 3,
};

/* Why a packet got its verdict. Fixed early: metrics label on it, so only
 * ever append (before REASON_MAX). */
enum medseg_reason {
	REASON_RULE = 0,              /* an explicit rule matched */
	REASON_PAIR_DEFAULT = 1,      /* the segment pair's default */
	REASON_SEGMENT_DEFAULT = 2,   /* the source segment's default */
	REASON_ESTABLISHED = 3,       /* flow hit, initiator's direction */
	REASON_REPLY = 4,             /* flow hit, responder's direction */
	REASON_RELATED_ICMP = 5,      /* ICMP error quoting a flow in the table */
	REASON_RAIL_ARP = 6,
	REASON_RAIL_ND = 7,           /* NS/NA (hop limit 255), RS, MLD */
	REASON_RAIL_RA = 8,           /* router advertisement from a known router */
	REASON_RAIL_DHCP = 9,         /* DHCP/DHCPv6 client traffic, known servers' replies */
	REASON_RAIL_L2_CONTROL = 10,  /* STP, LACP, LLDP, EAPOL */
	REASON_RAIL_MGMT = 11,        /* opened by a management segment, or towards a management = true one */
	REASON_FRAGMENT = 12,         /* non-first fragment, first fragment's verdict */
	REASON_FRAGMENT_ORPHAN = 13,  /* non-first fragment whose first was not seen */
	REASON_MALFORMED = 14,        /* a frame the receiver's stack must discard */
	REASON_UNSUPPORTED_ETHERTYPE = 15,
	REASON_SPOOFED = 16,          /* MAC or prefix seen behind the wrong port */
	REASON_VLAN_NOT_ALLOWED = 17, /* a tag the port's allowed_vlans does not list */
	REASON_RAIL_IGMP = 18,        /* IGMP (TTL 1, to a multicast group): snooping switches need it */
	REASON_UNJUDGED = 19,         /* no judging program to tail-call (PRESSURE_UNJUDGED): passed */
	REASON_RELATED_TFTP = 20,     /* a TFTP server's answer from a new port: its request's decision */
	REASON_MAX = 21,
};

/* Rule and default actions (config words allow / drop / audit). */
enum medseg_action {
	ACTION_ALLOW = 0,
	ACTION_DROP = 1,
	ACTION_AUDIT = 2,
};

enum medseg_mode {
	MODE_MONITOR = 0,
	MODE_ENFORCE = 1,
};

/* Why a packet was copied into the sample ring buffer (0: it was not). */
enum medseg_sample_kind {
	SAMPLE_NONE = 0,
	SAMPLE_FIRST_PACKETS = 1,  /* one of the first K packets of a flow */
	SAMPLE_DHCP = 2,           /* DHCP / DHCPv6, within BUDGET_DHCP */
	SAMPLE_ONE_IN_N = 3,       /* every N-th packet of a flow */
	SAMPLE_DROP_EVENT = 4,     /* a dropped packet, rate limited */
	SAMPLE_FLOWLESS = 5,       /* ARP, ND, unknown EtherType; rate limited */
};

/* Map-pressure and ring-drop counters (per CPU array, index = enum). */
enum medseg_pressure {
	PRESSURE_FLOW_INSERT_FAILED = 0,  /* allowed flow got no entry */
	PRESSURE_FLOW_INSERT_RACE = 1,    /* other CPU inserted first (benign) */
	PRESSURE_FRAG_INSERT_FAILED = 2,
	PRESSURE_RING_FULL = 3,           /* sample wanted, ring buffer full */
	PRESSURE_EVENT_RATE_LIMITED = 4,  /* drop/flowless sample over budget */
	PRESSURE_DHCP_RATE_LIMITED = 5,   /* DHCP sample over budget (a flood) */
	PRESSURE_UNJUDGED = 6,            /* medseg_judge missing from judge_program: passed unjudged */
	PRESSURE_MAX = 7,
};

/* Flags in struct decision.flags */
#define DECISION_NEW_FLOW 1      /* this packet created a flow entry */
#define DECISION_MIDSTREAM 2     /* TCP without SYN picked up mid-stream */
#define DECISION_REVALIDATED 4   /* flow entry of an older generation re-judged */
#define DECISION_NO_FLOW_ENTRY 8 /* allowed, but the flow insert failed */
#define DECISION_SEGMENTS 16     /* src/dst_segment are known (not a rail) */

/* A connection picked up mid-stream: which end listens, by its ports (the
 * program's tie-break and the baseline's reading agree): a well-known port
 * facing a higher one; else one below the ephemeral range facing one in it
 * (Linux's starts at 32768, Windows' at 49152); else the lower port. */
#define WELL_KNOWN_PORT_END 1024
#define EPHEMERAL_PORT_LOW 32768

/* Flags in struct segment_info.flags */
#define SEGMENT_MGMT 1           /* management hosts: every flow they open passes (rail) */
#define SEGMENT_LIFE_CRITICAL 2  /* holds life-critical devices */
#define SEGMENT_MGMT_INBOUND 4   /* and every flow opened towards them (management = true) */

/* Flags in struct rail_host value */
#define RAIL_HOST_DHCP_SERVER 1
#define RAIL_HOST_ROUTER 2

/* Flags in struct settings.flags */
#define SETTING_DROP_UNKNOWN_ETHERTYPE 1
#define SETTING_DHCP_SERVERS_LISTED 2  /* server replies only from rail_hosts */
#define SETTING_ROUTERS_LISTED 4       /* RAs only from rail_hosts */
#define SETTING_BREAK_GLASS 8          /* every segment in monitor mode: nothing is dropped by policy */
#define SETTING_VLAN_FILTER 16         /* some port has allowed_vlans (port_info.vlan_filter) */
#define SETTING_RECORD_DECISION 32     /* write last_decision: the tracer's, never a live bridge's */
#define SETTING_TRUSTED_PORTS 64       /* DHCP server replies and RAs only through ports with port_info.trusted */

/* Pseudo-segments that policy can name. */
#define SEGMENT_UNASSIGNED 0
#define SEGMENT_MULTICAST 65534
#define SEGMENT_BROADCAST 65535

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

/* Rule ids index the per-rule counters; 0 means "no rule" (rails etc.). */
#define MAX_RULE_IDS 16384
#define SAMPLE_SNAPLEN 512
#define MAX_IPV6_EXT_HEADERS 6
/* A sample budget's per_sec at this value never limits (tests use it). */
#define EVENTS_UNLIMITED 4294967295
/* The token buckets of the samples that no flow paces (sample_budgets,
 * event_budget). */
#define BUDGET_EVENTS 0  /* drop events and flowless samples */
#define BUDGET_DHCP 1    /* DHCP rail samples: a DHCP flood must not fill the ring */
#define BUDGET_MAX 2

/* ---- configuration, one slot each ---- */

struct settings {
	u32 sample_first_packets;  /* K: first K packets of every flow */
	u32 sample_one_in_n;       /* N: then every N-th packet; 0 = off */
	u32 flags;                 /* SETTING_* */
	u32 snaplen;               /* bytes copied per sample, <= SAMPLE_SNAPLEN */
	u32 tcp_idle_timeout_s;    /* a TCP flow idle this long is judged anew; 0 = never */
	u32 idle_timeout_s;        /* the same for UDP, ICMP and the rest */
};

/* A token bucket's rate and depth (sample_budgets, one per BUDGET_*). */
struct budget_config {
	u32 per_sec;  /* tokens a second; 0: none of these samples */
	u32 burst;    /* the bucket's depth */
};

/* ---- identity ---- */

struct device_key {
	u32 gen;
	u8 mac[6];
	u16 pad;
};

/* Value of devices and of both prefix tries. */
struct endpoint_info {
	u16 segment;
	u16 flags;
	u32 ifindex;  /* port it must be seen behind; 0 = any */
};

/* LPM: prefixlen counts gen (32) + vlan (16) + address bits. */
struct prefix4_key {
	u32 prefixlen;
	u32 gen;
	u16 vlan;
	u8 addr[4];
	u16 pad;
};

struct prefix6_key {
	u32 prefixlen;
	u32 gen;
	u16 vlan;
	u8 addr[16];
	u16 pad;
};

/* The ports map is an array indexed by ifindex (one inlined lookup on every
 * untagged packet, where a hash cost 5 ns more): the loader refuses a port
 * whose ifindex is at or above this. */
#define PORT_IFINDEX_LIMIT 65536

struct port_info {
	u16 pvid;         /* VLAN of untagged frames on this port, for identity */
	u8 vlan_filter;   /* 1: tagged frames only of the VLANs in port_vlans */
	u8 trusted;       /* 1: DHCP server replies and RAs may enter here ([rails] trusted_ports) */
};

struct port_vlan_key {
	u32 ifindex;
	u16 vlan;
	u16 pad;
};

struct rail_host_key {
	u32 gen;
	u8 addr[16];
	u8 family;
	u8 pad[3];
};

/* ---- policy ---- */

struct segment_key {
	u32 gen;
	u16 segment;
	u16 pad;
};

struct segment_info {
	u32 default_rule_id;
	u32 name_hash;      /* the manager's: the segment across generations and loads (for stats_slot) */
	u8 mode;            /* MODE_* */
	u8 default_action;  /* ACTION_* */
	u8 flags;           /* SEGMENT_* */
	u8 pad;
	u16 stats_slot;     /* row/column in pair_stats, 1..PAIR_SEGMENTS-1; stable while the segment lives */
	u16 pad2;
};

/* LPM: prefixlen = 80 + matched port bits (0 = any port, 16 = exact port);
 * a port range is split into prefixes. port_be is in network byte order so
 * that prefixes of the port are prefixes of the key. For ICMP the "port" is
 * the ICMP type. */
struct rule_key {
	u32 prefixlen;
	u32 gen;
	u16 src_segment;
	u16 dst_segment;
	u8 proto;
	u8 pad;
	u16 port_be;
};

/* An exact port (ICMP: type) of a rule, in a hash in front of the LPM trie:
 * the most specific match there is, found in one lookup where the trie walks
 * a node per branching bit. port is in host order. */
struct rule_exact_key {
	u32 gen;
	u16 src_segment;
	u16 dst_segment;
	u8 proto;
	u8 pad;
	u16 port;
};

struct rule_verdict {
	u32 rule_id;
	u8 action;
	u8 pad[3];
};

struct pair_key {
	u32 gen;
	u16 src_segment;
	u16 dst_segment;
};

/* ---- flows ---- */

/* Normalised 5-tuple + VLAN: (addr_lo, port_lo) is the smaller endpoint, by
 * comparing the address as four native-endian u32 words, then the port as
 * stored (network order). IPv4 uses the first 4 address bytes. ICMP echo uses
 * the identifier as both ports; other ICMP (type, 0x100 | type).
 * The addresses are u32 words, not bytes: as u8[16] they made the compiler
 * copy them two bytes at a time into every key (10 ns of a dropped packet,
 * whose denial key holds this key). */
struct flow_key {
	u32 addr_lo[4];
	u32 addr_hi[4];
	u16 port_lo;
	u16 port_hi;
	u16 vlan;
	u8 proto;
	u8 family;
};

/* A denied judgement, so that a dropped packet that comes again (a flood, a
 * device retrying a blocked port) costs one lookup instead of a judgement.
 * The key holds everything a judgement depends on besides the policy
 * generation: the flow, which end sent the packet, both MACs (identity),
 * the ingress port (the spoofing check), the port or ICMP type the policy
 * looks at (an echo reply shares its request's flow key), and whether the
 * packet is a TCP segment without SYN (judged from both ends). */
struct deny_key {
	struct flow_key flow;
	u8 src_mac[6];
	u8 dst_mac[6];
	u32 ifindex;
	u16 policy_port;
	u8 src_is_lo;
	u8 midstream;
};

struct deny_entry {
	u32 gen;          /* valid in this generation only */
	u32 rule_id;
	u32 pair_index;
	u16 src_segment;
	u16 dst_segment;
	u8 reason;
	u8 flags;         /* the decision's DECISION_* */
	u16 pad;
};

/* Direction 0 = initiator -> responder, 1 = replies. */
struct flow_entry {
	u64 packets[2];
	u64 bytes[2];
	u64 first_seen_ns;
	u64 last_seen_ns;
	u32 gen;
	u32 rule_id;
	u16 src_segment;   /* initiator's */
	u16 dst_segment;   /* responder's */
	u8 verdict;
	u8 reason;         /* the reason of the decision that created it */
	u8 initiator_is_lo;
	u8 flags;          /* DECISION_MIDSTREAM */
	u8 tcp_flags[2];   /* OR of all TCP flags seen, per direction */
	u16 policy_port;   /* the initiator's, to re-judge on a new generation */
	u32 pair_index;    /* the decision's segment pair, see pair_stats */
	/* The link-layer ends the flow was judged with: mac_lo is addr_lo's (a
	 * router's MAC for a routed host). Identity is judged by MAC first, so a
	 * packet of the flow between other MACs is judged again (see
	 * handle_flow): else a frame to a permissive identity (a broadcast or a
	 * management host's MAC) would open an entry that the same 5-tuple to
	 * the real destination's MAC then rode. */
	u8 mac_lo[6];
	u8 mac_hi[6];
	u32 pad;
};

struct frag_key {
	u8 src[16];
	u8 dst[16];
	u32 id;
	u8 proto;
	u8 family;
	u16 vlan;  /* the identity VLAN: the same addresses on two VLANs are two hosts */
};

struct frag_verdict {
	u32 gen;
	u32 rule_id;
	u16 src_segment;
	u16 dst_segment;
	u8 verdict;
	u8 reason;
	u8 flags;          /* DECISION_SEGMENTS of the first fragment's decision */
	u8 pad;
	u32 pair_index;
};

/* ---- accounting and trace ---- */

/* Packets and bytes by segment pair and verdict (metrics: the matrix) live
 * in a per-CPU array, at pair_index * VERDICT_MAX + verdict, where
 * pair_index = src stats_slot * PAIR_SEGMENTS + dst stats_slot: one
 * inlined array access per packet, with the index kept in the flow entry.
 * Slot 0 is for a segment without a segment_info entry. */
#define PAIR_SEGMENTS_DEFAULT 64

struct counter {
	u64 packets;
	u64 bytes;
};

/* Written at the program's single exit: what happened to the last packet on
 * this CPU. `medseg-xdp trace` reads it after each BPF_PROG_TEST_RUN. */
struct decision {
	u64 seq;           /* packets judged on this CPU */
	u32 gen;
	u32 rule_id;
	u16 src_segment;
	u16 dst_segment;
	u8 verdict;
	u8 reason;
	u8 sample_kind;    /* SAMPLE_* wanted for this packet */
	u8 flags;          /* DECISION_* */
	u32 pair_index;    /* valid with DECISION_SEGMENTS */
	u32 pad;
};

struct event_budget {
	u64 last_refill_ns;
	u64 tokens;
};

/* Ring buffer record: this header, then captured_len bytes of the frame
 * from its first byte. */
struct sample_header {
	u64 timestamp_ns;
	u32 ifindex;
	u32 packet_len;
	u32 captured_len;
	u32 rule_id;
	u32 gen;
	u16 src_segment;
	u16 dst_segment;
	u8 verdict;
	u8 reason;
	u8 kind;
	u8 pad;
	u32 pad2;
};

#endif /* MEDSEG_ABI_H */
