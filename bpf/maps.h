/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h - every map of the medseg XDP program, in one place.
 *
 * All maps but the ring buffer are pinned under MEDSEG_PIN_DIR
 * (/sys/fs/bpf/medseg/<bridge>/<abi-hash>), so a manager restart or crash
 * leaves enforcement running and the next manager reuses them. BCC creates
 * and pins a map that is not there yet, and opens it if it is.
 *
 * Policy and identity maps hold two generations side by side: every key
 * starts with the generation, the program reads the active one once per
 * packet (active_gen), and the manager flips that one slot after writing the
 * new generation in full.
 *
 * Sizes come from the loader as -D options (from the config); the defaults
 * here are what `medseg-xdp trace` and the tests use.
 */
#ifndef MEDSEG_MAPS_H
#define MEDSEG_MAPS_H

#include "medseg_abi.h"
#include "parse.h"

#ifndef MEDSEG_PIN_DIR
#error "MEDSEG_PIN_DIR must name the bpffs directory for pinned maps"
#endif
#ifndef FLOW_TABLE_SIZE
#define FLOW_TABLE_SIZE 65536
#endif
#ifndef DEVICE_TABLE_SIZE
#define DEVICE_TABLE_SIZE 16384
#endif
#ifndef PREFIX_TABLE_SIZE
#define PREFIX_TABLE_SIZE 4096
#endif
#ifndef RULE_TABLE_SIZE
#define RULE_TABLE_SIZE 16384
#endif
#ifndef SEGMENT_TABLE_SIZE
#define SEGMENT_TABLE_SIZE 1024
#endif
#ifndef PAIR_SEGMENTS
#define PAIR_SEGMENTS PAIR_SEGMENTS_DEFAULT
#endif
#ifndef DENIED_TABLE_SIZE
#define DENIED_TABLE_SIZE 8192
#endif
#ifndef FRAG_TABLE_SIZE
#define FRAG_TABLE_SIZE 4096
#endif
#ifndef RING_PAGES
#define RING_PAGES 256
#endif

#define PINNED(name) MEDSEG_PIN_DIR "/" #name

/* The generation every lookup of this packet uses; the one slot a policy
 * update flips. */
BPF_TABLE_PINNED("array", u32, u32, active_gen, 1, PINNED(active_gen));

/* Sampling and rail settings, changed at run time. */
BPF_TABLE_PINNED("array", u32, struct settings, settings, 1, PINNED(settings));

/* Bridge ports by ifindex: the PVID that gives untagged frames their VLAN,
 * and whether the port filters tags. Zero for a port without either.
 * Mmapable: an apply finds the entries to clear by reading memory, where a
 * batch lookup of its 65,536 entries takes 9 ms. */
BPF_TABLE_PINNED("array", u32, struct port_info, ports, PORT_IFINDEX_LIMIT,
		 PINNED(ports), BPF_F_MMAPABLE);

/* The tagged VLANs a port with vlan_filter may carry (value 1). */
BPF_TABLE_PINNED("hash", struct port_vlan_key, u8, port_vlans, 4096,
		 PINNED(port_vlans));

/* Devices by (generation, MAC) -> segment and the port they live behind. */
BPF_TABLE_PINNED("hash", struct device_key, struct endpoint_info, devices,
		 2 * DEVICE_TABLE_SIZE, PINNED(devices));

/* Hosts beyond the bridge by (generation, VLAN, prefix) -> segment. */
BPF_TABLE_PINNED("lpm_trie", struct prefix4_key, struct endpoint_info,
		 prefixes_v4, 2 * PREFIX_TABLE_SIZE, PINNED(prefixes_v4),
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct prefix6_key, struct endpoint_info,
		 prefixes_v6, 2 * PREFIX_TABLE_SIZE, PINNED(prefixes_v6),
		 BPF_F_NO_PREALLOC);

/* Configured DHCP servers and IPv6 routers, for the rails. */
BPF_TABLE_PINNED("hash", struct rail_host_key, u32, rail_hosts, 512,
		 PINNED(rail_hosts));

/* Segment mode, default action and flags. */
BPF_TABLE_PINNED("hash", struct segment_key, struct segment_info, segments,
		 2 * SEGMENT_TABLE_SIZE, PINNED(segments));

/* Rules on single ports (an exact port, or a single-port piece of a range):
 * looked up first, as nothing is more specific. */
BPF_TABLE_PINNED("hash", struct rule_exact_key, struct rule_verdict,
		 rules_exact, 2 * RULE_TABLE_SIZE, PINNED(rules_exact));

/* The other rules: one LPM lookup answers port range and any port. */
BPF_TABLE_PINNED("lpm_trie", struct rule_key, struct rule_verdict, rules,
		 2 * RULE_TABLE_SIZE, PINNED(rules), BPF_F_NO_PREALLOC);

/* Segment-pair defaults. */
BPF_TABLE_PINNED("hash", struct pair_key, struct rule_verdict, pair_defaults,
		 2 * RULE_TABLE_SIZE, PINNED(pair_defaults));

/* The flow table, shared by all CPUs: the two directions of a flow enter on
 * different ports and so on different CPUs. Denied flows get no entry. */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_entry, flows,
		 FLOW_TABLE_SIZE, PINNED(flows));

/* Recent denied judgements (struct deny_key): an LRU of its own, so that a
 * scan evicts only other denials, never an allowed flow. */
BPF_TABLE_PINNED("lru_hash", struct deny_key, struct deny_entry, denied,
		 DENIED_TABLE_SIZE, PINNED(denied));

/* Per CPU: the deny key being built (off the 512-byte stack) by xdp_medseg,
 * which asks the deny cache, and read by medseg_judge, which fills the cache.
 * Every field is written for each packet; never read across packets. Pinned,
 * as handoffs: see there. */
BPF_TABLE_PINNED("percpu_array", u32, struct deny_key, denial_scratch, 1,
		 PINNED(denial_scratch));

/* Per CPU: the other side's judgement of a mid-stream TCP segment (off the
 * stack, where the first judgement's state still lives). Written in full for
 * each such segment, never read across packets. */
BPF_PERCPU_ARRAY(decision_scratch, struct decision, 1);

/* Per CPU: the ICMP error being matched to its flow (struct icmp_quote);
 * written for each ICMP error, never read across packets. */
BPF_PERCPU_ARRAY(icmp_quote_scratch, struct icmp_quote, 1);

/* Per CPU: the entry of a new flow being built (off the stack, which the
 * rest of the miss path fills). Written in full for each new flow. */
BPF_PERCPU_ARRAY(flow_scratch, struct flow_entry, 1);

/* First fragments' verdicts, for the fragments that follow them. */
BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_verdict, frags,
		 FRAG_TABLE_SIZE, PINNED(frags));

/* Packets and bytes by verdict * REASON_MAX + reason. */
BPF_TABLE_PINNED("percpu_array", u32, struct counter, stats,
		 VERDICT_MAX * REASON_MAX, PINNED(stats));

/* Packets and bytes by (src segment, dst segment, verdict), at
 * pair_index * VERDICT_MAX + verdict (see medseg_abi.h): bounded by the
 * configured segments, never by traffic. */
BPF_TABLE_PINNED("percpu_array", u32, struct counter, pair_stats,
		 PAIR_SEGMENTS * PAIR_SEGMENTS * VERDICT_MAX, PINNED(pair_stats));

/* Packets and bytes decided by each rule id (defaults have ids too). */
BPF_TABLE_PINNED("percpu_array", u32, struct counter, rule_hits, MAX_RULE_IDS,
		 PINNED(rule_hits));

/* Map-pressure and ring-drop counters, index = enum medseg_pressure. */
BPF_TABLE_PINNED("percpu_array", u32, u64, pressure, PRESSURE_MAX,
		 PINNED(pressure));

/* Per CPU: what happened to the last packet, written under
 * SETTING_RECORD_DECISION (read by trace). */
BPF_TABLE_PINNED("percpu_array", u32, struct decision, last_decision, 1,
		 PINNED(last_decision));

/* Rate and depth of each token bucket (BUDGET_*) of the samples that no
 * flow paces: drop events and flowless samples, and DHCP. Set with the
 * policy's settings. */
BPF_TABLE_PINNED("array", u32, struct budget_config, sample_budgets,
		 BUDGET_MAX, PINNED(sample_budgets));

/* Per CPU: the state of those buckets. */
BPF_TABLE_PINNED("percpu_array", u32, struct event_budget, event_budget,
		 BUDGET_MAX, PINNED(event_budget));

/* What xdp_medseg hands medseg_judge with the tail call: written for each
 * packet that is no flow hit, read by the program it calls on the same CPU.
 * The parsed packet is handed over rather than parsed again: medseg_judge
 * then starts from one verifier state, not one for each way through the
 * parser. */
struct flow_lookup {
	struct flow_key key;  /* the packet's flow */
	u16 vlan;             /* the identity VLAN */
	u8 src_is_lo;         /* the sender is the key's lo end */
	u8 flow_missed;       /* no entry, and the deny cache missed too
				 * (denial_scratch holds the packet's key) */
};

struct handoff {
	struct packet pkt;    /* without its MAC pointers: into the frame */
	struct flow_lookup flow;
	u8 sample_kind;       /* wanted so far: a DHCP sample, from the rails */
};

/* Per CPU: the handoff being written (struct handoff). Pinned, like
 * judge_program: while a restart swaps the programs, the xdp_medseg still
 * attached tail-calls the new medseg_judge, and both must use one map. */
BPF_TABLE_PINNED("percpu_array", u32, struct handoff, handoffs, 1,
		 PINNED(handoffs));

/* Per CPU: the key of the request flow a TFTP transfer would belong to
 * (tftp_transfer), built for each UDP flow that a judgement does not pass;
 * never read across packets. */
BPF_PERCPU_ARRAY(request_key_scratch, struct flow_key, 1);

/* Slot 0: medseg_judge, which xdp_medseg tail-calls for every IP packet that
 * is not a flow hit, so that each program is verified, and gets its stack,
 * apart. Pinned: the kernel empties a program array when its last user
 * reference (a file descriptor or a pin) goes, and the program stays
 * attached after the manager exits. Filled when the ports are attached. */
BPF_TABLE_PINNED("prog", u32, u32, judge_program, 1, PINNED(judge_program));

/* Samples to the manager. Not pinned: its consumer is the manager itself. */
BPF_RINGBUF_OUTPUT(samples, RING_PAGES);

#endif /* MEDSEG_MAPS_H */
