/* SPDX-License-Identifier: GPL-2.0 */
/*
 * medseg_xdp.c - the XDP programs on every port of the inline bridge.
 *
 * xdp_medseg, attached to the ports: parse -> VLAN filter -> rails ->
 * (non-first fragment: first fragment's verdict) -> flow lookup. A flow hit
 * on the active generation carries both segments and the verdict, so an
 * established flow costs one hash lookup. Any other IP packet goes by tail
 * call to medseg_judge: identity and policy, on a miss or a stale entry.
 * Two programs, so that each is verified, and gets its 512-byte stack,
 * apart. Both leave through finish(), which counts, samples and records the
 * decision. The Python twin is medseg_xdp/reference.py: change both.
 */
#include "parse.h"
#include "maps.h"

#define ONE_SECOND_NS 1000000000ULL
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
#define DHCP6_CLIENT_PORT 546
#define DHCP6_SERVER_PORT 547
#define ND_HOP_LIMIT 255
#define MLD_HOP_LIMIT 1

static __always_inline void count_pressure(u32 what)
{
	u64 *counter = pressure.lookup(&what);

	if (counter)
		*counter += 1;
}

static __always_inline void set_decision(struct decision *d, u8 verdict,
					 u8 reason, u32 rule_id)
{
	d->verdict = verdict;
	d->reason = reason;
	d->rule_id = rule_id;
}

static __always_inline void set_segments(struct decision *d, u16 src, u16 dst,
					 u32 pair_index)
{
	d->src_segment = src;
	d->dst_segment = dst;
	d->pair_index = pair_index;
	d->flags |= DECISION_SEGMENTS;
}

/* A DHCP sample, decided first, outranks the flow's sampling. */
static __always_inline void want_sample(struct decision *d, u8 kind)
{
	if (d->sample_kind == SAMPLE_NONE)
		d->sample_kind = kind;
}

/* ---- identity ---- */

static __always_inline void identify(u32 gen, u16 vlan, u8 *mac, u32 *addr,
				     u8 family, struct endpoint_info *out)
{
	out->flags = 0;
	out->ifindex = 0;
	if (mac[0] & 1) {
		int bcast = (mac[0] & mac[1] & mac[2] & mac[3] & mac[4] &
			     mac[5]) == 0xff;
		out->segment = bcast ? SEGMENT_BROADCAST : SEGMENT_MULTICAST;
		return;
	}

	struct device_key dk = { .gen = gen };
	__builtin_memcpy(dk.mac, mac, 6);
	struct endpoint_info *found = devices.lookup(&dk);
	if (found) {
		*out = *found;
		return;
	}

	/* A VLAN-specific prefix first, then the prefixes valid on any VLAN
	 * (vlan 0 in the key). */
	if (family == FAMILY_IPV4) {
		struct prefix4_key k = { .prefixlen = 32 + 16 + 32, .gen = gen,
					 .vlan = vlan };
		__builtin_memcpy(k.addr, addr, 4);
		found = prefixes_v4.lookup(&k);
		if (!found && vlan) {
			k.vlan = 0;
			found = prefixes_v4.lookup(&k);
		}
	} else {
		struct prefix6_key k = { .prefixlen = 32 + 16 + 128,
					 .gen = gen, .vlan = vlan };
		__builtin_memcpy(k.addr, addr, 16);
		found = prefixes_v6.lookup(&k);
		if (!found && vlan) {
			k.vlan = 0;
			found = prefixes_v6.lookup(&k);
		}
	}
	if (found) {
		*out = *found;
		return;
	}
	out->segment = SEGMENT_UNASSIGNED;
}

/* A segment without an entry is in monitor mode and allows by default. */
static __always_inline void lookup_segment(u32 gen, u16 segment,
					   struct segment_info *out)
{
	struct segment_key key = { .gen = gen, .segment = segment };
	struct segment_info *info = segments.lookup(&key);

	if (info) {
		*out = *info;
		return;
	}
	out->default_rule_id = 0;
	out->mode = MODE_MONITOR;
	out->default_action = ACTION_ALLOW;
	out->flags = 0;
	out->stats_slot = 0;
}

static __always_inline u8 verdict_of(u8 action, int enforce)
{
	if (action == ACTION_ALLOW)
		return VERDICT_PASS;
	if (action == ACTION_DROP && enforce)
		return VERDICT_DROP;
	return VERDICT_AUDIT;
}

/* The ingress port's entry (zeros for a port without PVID or VLAN list). */
static __always_inline struct port_info *ingress_port(struct xdp_md *ctx)
{
	u32 ifindex = ctx->ingress_ifindex;

	return ports.lookup(&ifindex);
}

static __always_inline u16 vlan_for_identity(struct xdp_md *ctx,
					     struct packet *pkt)
{
	if (pkt->vlan)
		return pkt->vlan;
	struct port_info *port = ingress_port(ctx);
	return port ? port->pvid : 0;
}

/* A port with allowed_vlans takes tagged frames of those VLANs only, so a
 * device cannot choose its identity VLAN by tagging its own frames. It takes
 * no second tag at all: behind an allowed (or a priority) outer tag, a
 * second one would surface on any switch that strips the outer tag further
 * on (double-tagging VLAN hopping). Untagged and priority-tagged frames
 * always enter: they get the port's PVID. */
static __always_inline int vlan_allowed(struct xdp_md *ctx,
					struct packet *pkt, u8 vlan_tags,
					struct settings *s)
{
	if (!vlan_tags || !(s->flags & SETTING_VLAN_FILTER))
		return 1;
	struct port_info *info = ingress_port(ctx);
	if (!info || !info->vlan_filter)
		return 1;
	if (vlan_tags > 1)
		return 0;
	if (!pkt->vlan)
		return 1;
	struct port_vlan_key key = { .ifindex = ctx->ingress_ifindex,
				     .vlan = pkt->vlan };
	return port_vlans.lookup(&key) != NULL;
}

/* Which end of a connection picked up mid-stream listens (see
 * EPHEMERAL_PORT_LOW): 1 when it is the packet's destination. */
static __always_inline int listens_at_dst(u16 sport, u16 dport)
{
	if ((dport < WELL_KNOWN_PORT_END) != (sport < WELL_KNOWN_PORT_END))
		return dport < WELL_KNOWN_PORT_END;
	if ((dport < EPHEMERAL_PORT_LOW) != (sport < EPHEMERAL_PORT_LOW))
		return dport < EPHEMERAL_PORT_LOW;
	return dport <= sport;
}

/* ---- policy ---- */

struct judge_args {
	u8 *src_mac;
	u8 *dst_mac;
	u32 *src_addr;
	u32 *dst_addr;
	u16 vlan;
	u16 policy_port;
	u8 family;
	u8 proto;
	u8 check_spoof;  /* the source is this packet's sender */
	u8 break_glass;  /* SETTING_BREAK_GLASS: nothing is enforced */
	/* Nonzero: the source is only guessed to have opened the flow (the
	 * other end of a mid-stream segment), from this port. */
	u16 guessed_opener_port;
};

/* Both endpoints' segments into d; returns 1 when either segment enforces.
 * src gives the caller the sender's binding for the spoofing check. */
static __always_inline int resolve_endpoints(u32 gen, struct judge_args *a,
					     struct decision *d,
					     struct endpoint_info *src,
					     struct segment_info *src_info,
					     struct segment_info *dst_info)
{
	struct endpoint_info dst;

	identify(gen, a->vlan, a->src_mac, a->src_addr, a->family, src);
	identify(gen, a->vlan, a->dst_mac, a->dst_addr, a->family, &dst);
	lookup_segment(gen, src->segment, src_info);
	lookup_segment(gen, dst.segment, dst_info);
	set_segments(d, src->segment, dst.segment,
		     (u32)src_info->stats_slot * PAIR_SEGMENTS + dst_info->stats_slot);
	return !a->break_glass &&
	       (src_info->mode == MODE_ENFORCE || dst_info->mode == MODE_ENFORCE);
}

/* drop > audit > pass */
static __always_inline int verdict_rank(u8 verdict)
{
	return verdict == VERDICT_DROP ? 2 : verdict == VERDICT_AUDIT ? 1 : 0;
}

/* Identity then policy for one direction: the most specific rule, the
 * segment pair's default, then the stricter of the two segments' defaults
 * (a segment that defaults to drop is closed to what no rule allows, in
 * both directions). A rule's or a pair default's would-drop is enforced
 * when either endpoint's segment enforces (each side protects itself); a
 * segment's default only when that segment enforces, so the default-drop
 * of a segment still in monitor mode (a pump segment being baselined) is
 * audited even towards an enforcing peer that allows the flow. */
static __always_inline void judge(struct xdp_md *ctx, u32 gen,
				  struct judge_args *a, struct decision *d)
{
	struct endpoint_info src;
	struct segment_info src_info, dst_info;
	int enforce = resolve_endpoints(gen, a, d, &src, &src_info, &dst_info);

	if (a->check_spoof && src.ifindex &&
	    src.ifindex != ctx->ingress_ifindex) {
		set_decision(d, enforce ? VERDICT_DROP : VERDICT_AUDIT,
			     REASON_SPOOFED, 0);
		return;
	}
	/* src is the end that opens the flow: a management host reaches every
	 * device, and a device reaches it only by the policy, unless its
	 * segment takes every flow (management = true). */
	if ((src_info.flags & SEGMENT_MGMT) ||
	    (dst_info.flags & SEGMENT_MGMT_INBOUND)) {
		/* The rail holds on any port: a management host guessed to have
		 * opened a mid-stream segment's connection did so only if the
		 * other end listens. Else any segment from a device to any port
		 * of an outbound management host would pass as the host's own. */
		int implausible = a->guessed_opener_port &&
			!listens_at_dst(a->guessed_opener_port, a->policy_port);
		set_decision(d, implausible ? VERDICT_DROP : VERDICT_PASS,
			     REASON_RAIL_MGMT, 0);
		return;
	}

	struct rule_exact_key xk = {
		.gen = gen,
		.src_segment = d->src_segment,
		.dst_segment = d->dst_segment,
		.proto = a->proto,
		.port = a->policy_port,
	};
	struct rule_verdict *rule = rules_exact.lookup(&xk);
	if (!rule) {
		struct rule_key rk = {
			.prefixlen = 96,
			.gen = gen,
			.src_segment = d->src_segment,
			.dst_segment = d->dst_segment,
			.proto = a->proto,
			.port_be = bpf_htons(a->policy_port),
		};
		rule = rules.lookup(&rk);
	}
	if (rule) {
		set_decision(d, verdict_of(rule->action, enforce), REASON_RULE,
			     rule->rule_id);
		return;
	}
	struct pair_key pk = { .gen = gen, .src_segment = d->src_segment,
			       .dst_segment = d->dst_segment };
	rule = pair_defaults.lookup(&pk);
	if (rule) {
		set_decision(d, verdict_of(rule->action, enforce),
			     REASON_PAIR_DEFAULT, rule->rule_id);
		return;
	}
	u8 src_verdict = verdict_of(src_info.default_action,
				    enforce && src_info.mode == MODE_ENFORCE);
	u8 dst_verdict = verdict_of(dst_info.default_action,
				    enforce && dst_info.mode == MODE_ENFORCE);
	if (verdict_rank(dst_verdict) > verdict_rank(src_verdict))
		set_decision(d, dst_verdict, REASON_SEGMENT_DEFAULT,
			     dst_info.default_rule_id);
	else
		set_decision(d, src_verdict, REASON_SEGMENT_DEFAULT,
			     src_info.default_rule_id);
}

/* ---- flows ---- */

/* The key of the flow between the packet's addresses and these ports (its
 * own, or another flow's of the same two hosts); returns 1 when the packet's
 * sender is the key's lo endpoint. vlan: the identity VLAN (frame tag, else
 * the port's PVID), so an access port and a trunk carrying the same VLAN see
 * one flow. */
static __always_inline int make_flow_key(struct packet *pkt, __be16 sport,
					 __be16 dport, u16 vlan,
					 struct flow_key *key)
{
	int src_is_lo = 1;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (pkt->src[i] != pkt->dst[i]) {
			src_is_lo = pkt->src[i] < pkt->dst[i];
			goto decided;
		}
	}
	src_is_lo = sport <= dport;
decided:
	key->proto = pkt->proto;
	key->family = pkt->family;
	key->vlan = vlan;
	if (src_is_lo) {
		__builtin_memcpy(key->addr_lo, pkt->src, 16);
		__builtin_memcpy(key->addr_hi, pkt->dst, 16);
		key->port_lo = sport;
		key->port_hi = dport;
	} else {
		__builtin_memcpy(key->addr_lo, pkt->dst, 16);
		__builtin_memcpy(key->addr_hi, pkt->src, 16);
		key->port_lo = dport;
		key->port_hi = sport;
	}
	return src_is_lo;
}

static __always_inline int mac_eq(u8 *a, u8 *b)
{
	return *(u32 *)a == *(u32 *)b && *(u16 *)(a + 4) == *(u16 *)(b + 4);
}

/* The packet travels between the MACs the flow was judged with. */
static __always_inline int same_ends(struct flow_entry *e, struct packet *pkt,
				     int src_is_lo)
{
	if (src_is_lo)
		return mac_eq(pkt->eth_src, e->mac_lo) &&
		       mac_eq(pkt->eth_dst, e->mac_hi);
	return mac_eq(pkt->eth_dst, e->mac_lo) && mac_eq(pkt->eth_src, e->mac_hi);
}

static __always_inline int is_device(u32 gen, u8 *mac)
{
	struct device_key dk = { .gen = gen };

	__builtin_memcpy(dk.mac, mac, 6);
	return devices.lookup(&dk) != NULL;
}

/* One end of the packet comes from another MAC than the flow was judged
 * with, and neither MAC is a device's: that end is identified by its
 * address (and VLAN) either way, so the judgement holds. This is a gateway
 * pair answering from another MAC than the one its hosts send to (HSRP,
 * VRRP: the virtual MAC, and the active router's own). A group MAC is a
 * pseudo-segment, never the same identity. */
static __always_inline int same_identity(struct flow_entry *e,
					 struct packet *pkt, int src_is_lo,
					 u32 gen)
{
	u8 *lo = src_is_lo ? pkt->eth_src : pkt->eth_dst;
	u8 *hi = src_is_lo ? pkt->eth_dst : pkt->eth_src;
	u8 *seen, *judged;

	if (mac_eq(lo, e->mac_lo)) {
		seen = hi;
		judged = e->mac_hi;
	} else if (mac_eq(hi, e->mac_hi)) {
		seen = lo;
		judged = e->mac_lo;
	} else {
		return 0;
	}
	return !((seen[0] | judged[0]) & 1) && !is_device(gen, seen) &&
	       !is_device(gen, judged);
}

static __always_inline void set_ends(struct flow_entry *e, struct packet *pkt,
				     int src_is_lo)
{
	if (src_is_lo) {
		__builtin_memcpy(e->mac_lo, pkt->eth_src, 6);
		__builtin_memcpy(e->mac_hi, pkt->eth_dst, 6);
	} else {
		__builtin_memcpy(e->mac_lo, pkt->eth_dst, 6);
		__builtin_memcpy(e->mac_hi, pkt->eth_src, 6);
	}
}

static __always_inline void account(struct flow_entry *e, int dir,
				    struct packet *pkt, u64 now)
{
	/* Plain adds, not atomics (15 of the established path's ~90 ns): each
	 * direction's counters are written by the CPU whose RX queue gets that
	 * direction (RSS hashes the 5-tuple to one queue), so two writers of one
	 * counter at once are rare, and they cost a count, never a verdict.
	 * The verdict counters (stats, per CPU) stay exact. */
	e->packets[dir & 1] += 1;
	e->bytes[dir & 1] += pkt->len;
	if (e->last_seen_ns != now)
		e->last_seen_ns = now;
	/* Plain OR: a lost flag bit between two CPUs costs less than an
	 * atomic on every TCP packet. */
	if ((e->tcp_flags[dir & 1] | pkt->tcp_flags) != e->tcp_flags[dir & 1])
		e->tcp_flags[dir & 1] |= pkt->tcp_flags;
}

/* First K packets of a flow, then every N-th: from the flow's own packet
 * count, so the choice is deterministic. */
static __always_inline u8 flow_sample_kind(struct flow_entry *e,
					   struct settings *s)
{
	u64 total = e->packets[0] + e->packets[1];

	if (total <= s->sample_first_packets)
		return SAMPLE_FIRST_PACKETS;
	if (s->sample_one_in_n && total % s->sample_one_in_n == 0)
		return SAMPLE_ONE_IN_N;
	return SAMPLE_NONE;
}

static __always_inline void fill_judge_args(struct judge_args *a,
					    struct packet *pkt,
					    struct settings *s, u16 vlan,
					    int reverse, u16 policy_port)
{
	a->break_glass = !!(s->flags & SETTING_BREAK_GLASS);
	a->vlan = vlan;
	a->family = pkt->family;
	a->proto = pkt->proto;
	a->policy_port = policy_port;
	a->check_spoof = !reverse;
	a->guessed_opener_port = 0;
	if (reverse) {
		a->src_mac = pkt->eth_dst;
		a->dst_mac = pkt->eth_src;
		a->src_addr = pkt->dst;
		a->dst_addr = pkt->src;
	} else {
		a->src_mac = pkt->eth_src;
		a->dst_mac = pkt->eth_dst;
		a->src_addr = pkt->src;
		a->dst_addr = pkt->dst;
	}
}

/* A denial judged before in this generation, for exactly these inputs
 * (struct deny_key): the same decision, without judging again. */
static __always_inline int cached_denial(struct xdp_md *ctx, u32 gen,
					 struct packet *pkt, struct settings *s,
					 struct flow_key *key,
					 struct deny_key *denial, int src_is_lo,
					 int midstream, struct decision *d)
{
	denial->flow = *key;
	__builtin_memcpy(denial->src_mac, pkt->eth_src, 6);
	__builtin_memcpy(denial->dst_mac, pkt->eth_dst, 6);
	denial->ifindex = ctx->ingress_ifindex;
	denial->policy_port = pkt->policy_port;
	denial->src_is_lo = src_is_lo;
	denial->midstream = midstream;
	/* Under break-glass nothing is dropped: the flag is written before the
	 * generation that re-stamps the policy, and no cached denial may
	 * outlive that moment. */
	if (s->flags & SETTING_BREAK_GLASS)
		return 0;
	struct deny_entry *cached = denied.lookup(denial);
	if (!cached || cached->gen != gen)
		return 0;
	set_decision(d, VERDICT_DROP, cached->reason, cached->rule_id);
	d->src_segment = cached->src_segment;
	d->dst_segment = cached->dst_segment;
	d->pair_index = cached->pair_index;
	d->flags = cached->flags;
	return 1;
}

/* One denial in DENY_CACHE_ONE_IN is kept: an LRU insert costs about as much
 * as the judgement it saves, so a scan (every packet a new flow) would pay
 * twice, while a flood (the same packet again and again) is cached after a
 * few packets all the same. */
#define DENY_CACHE_ONE_IN 8

static __always_inline void remember_denial(u32 gen, struct deny_key *denial,
					    struct decision *d)
{
	if (bpf_get_prandom_u32() % DENY_CACHE_ONE_IN)
		return;
	struct deny_entry entry = {
		.gen = gen,
		.rule_id = d->rule_id,
		.pair_index = d->pair_index,
		.src_segment = d->src_segment,
		.dst_segment = d->dst_segment,
		.reason = d->reason,
		.flags = d->flags,
	};
	denied.update(denial, &entry);
}

/* A flow entry takes the decision judged under generation gen. The
 * generation goes last: the other direction's CPU reads it first and trusts
 * the verdict when it matches (x86 keeps the order of stores; the compiler
 * barrier keeps ours). */
static __always_inline void stamp_entry(struct flow_entry *e,
					struct decision *d, u32 gen)
{
	e->verdict = d->verdict;
	e->reason = d->reason;
	e->rule_id = d->rule_id;
	e->src_segment = d->src_segment;
	e->dst_segment = d->dst_segment;
	e->pair_index = d->pair_index;
	asm volatile("" ::: "memory");
	e->gen = gen;
}

/* An idle flow is forgotten: an address handed to another device must not
 * inherit its flows (TCP comes back through mid-stream pickup). */
static __always_inline int flow_is_idle(struct flow_entry *e,
					struct packet *pkt, struct settings *s,
					u64 now)
{
	u32 idle_s = pkt->proto == IPPROTO_TCP ? s->tcp_idle_timeout_s :
						 s->idle_timeout_s;

	/* Signed: the other direction's CPU may have stamped last_seen_ns after
	 * this packet read its clock, and an unsigned difference would wrap and
	 * forget a busy flow. */
	return idle_s &&
	       (s64)(now - e->last_seen_ns) > (s64)idle_s * (s64)ONE_SECOND_NS;
}

/* A new connection from the responder's side is no reply: it is judged (a
 * mid-stream entry must not open the other way). */
static __always_inline int is_new_connection(struct packet *pkt)
{
	return pkt->proto == IPPROTO_TCP &&
	       (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The entry's decision holds for this packet: judged under the active
 * generation between its MACs, or for a reply a gateway pair's other MAC
 * (replies only: the initiator's packets are checked for spoofing, by the
 * ingress port, which an entry does not keep). */
static __always_inline int decision_holds(struct flow_entry *e,
					  struct packet *pkt, int src_is_lo,
					  int dir, int ends, u32 gen)
{
	return e->gen == gen &&
	       (ends || (dir && same_identity(e, pkt, src_is_lo, gen)));
}

/* 0: the packet goes the way the entry's initiator sent, 1: a reply. */
static __always_inline int direction(struct flow_entry *e, int src_is_lo)
{
	return src_is_lo == e->initiator_is_lo ? 0 : 1;
}

/* d takes the decision an entry holds, for this reason. */
static __always_inline void take_decision(struct decision *d,
					  struct flow_entry *e, u8 reason)
{
	set_decision(d, e->verdict, reason, e->rule_id);
	set_segments(d, e->src_segment, e->dst_segment, e->pair_index);
}

static __always_inline void serve_flow_hit(struct flow_entry *e,
					   struct packet *pkt,
					   struct settings *s, u64 now,
					   int dir, struct decision *d)
{
	take_decision(d, e, dir ? REASON_REPLY : REASON_ESTABLISHED);
	account(e, dir, pkt, now);
	want_sample(d, flow_sample_kind(e, s));
}

#define TFTP_PORT 69

/* A TFTP server answers a request to port 69 from a port of its own, to the
 * port the request came from (RFC 1350). The request's flow entry for a UDP
 * packet from a host to a port that sent it a request to 69, when the table
 * holds one under this generation between the same MACs (or a gateway
 * pair's other MAC); else NULL. */
static __always_inline struct flow_entry *tftp_request(struct packet *pkt,
						       u16 vlan, u32 gen)
{
	u32 zero = 0;
	struct flow_key *request = request_key_scratch.lookup(&zero);

	if (!request || pkt->proto != IPPROTO_UDP ||
	    pkt->sport == bpf_htons(TFTP_PORT) ||
	    pkt->dport == bpf_htons(TFTP_PORT))
		return NULL;
	int server_is_lo = make_flow_key(pkt, bpf_htons(TFTP_PORT), pkt->dport,
					 vlan, request);
	struct flow_entry *e = flows.lookup(request);
	if (!e || e->gen != gen || e->policy_port != TFTP_PORT ||
	    e->initiator_is_lo == server_is_lo ||
	    !(same_ends(e, pkt, server_is_lo) ||
	      same_identity(e, pkt, server_is_lo, gen)))
		return NULL;
	return e;
}

/* The transfer takes its request's decision, over a judgement that did not
 * pass it, unless that judgement found the sender spoofed (a port-bound
 * server's address from another port): returns 1 with d set so. */
static __always_inline int tftp_transfer(struct packet *pkt, u16 vlan, u32 gen,
					 struct decision *d)
{
	if (d->verdict == VERDICT_PASS || d->reason == REASON_SPOOFED)
		return 0;
	struct flow_entry *request = tftp_request(pkt, vlan, gen);

	if (!request)
		return 0;
	take_decision(d, request, REASON_RELATED_TFTP);
	return 1;
}

static __always_inline int is_midstream(struct packet *pkt)
{
	return pkt->proto == IPPROTO_TCP &&
	       (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_ACK;
}

/* A cached denial of this packet (cached_denial, with d set to it) that
 * still holds: not for a TFTP transfer whose request came after the denial
 * was cached, which medseg_judge relates (a spoofed sender's denial holds). */
static __always_inline int cached_denial_holds(struct xdp_md *ctx, u32 gen,
					       struct packet *pkt,
					       struct settings *s,
					       struct flow_key *key,
					       struct deny_key *denial,
					       int src_is_lo, u16 vlan,
					       struct decision *d)
{
	if (!cached_denial(ctx, gen, pkt, s, key, denial, src_is_lo,
			   is_midstream(pkt), d))
		return 0;
	return d->reason == REASON_SPOOFED || !tftp_request(pkt, vlan, gen);
}

/* xdp_medseg's part of the flow path: a packet whose flow entry's decision
 * holds (the established path), or a denial judged before (the deny cache).
 * Returns 0 for everything else, which medseg_judge takes with the lookup
 * f: a new flow, an idle or stale entry, other MACs. */
static __always_inline int flow_served(struct xdp_md *ctx, u32 gen,
				       struct packet *pkt, struct settings *s,
				       u64 now, struct flow_lookup *f,
				       struct decision *d)
{
	u16 vlan = vlan_for_identity(ctx, pkt);
	int src_is_lo = make_flow_key(pkt, pkt->sport, pkt->dport, vlan, &f->key);
	struct flow_entry *e = flows.lookup(&f->key);

	f->vlan = vlan;
	f->src_is_lo = src_is_lo;
	f->flow_missed = !e;
	if (!e) {
		u32 zero = 0;
		struct deny_key *denial = denial_scratch.lookup(&zero);

		return denial && cached_denial_holds(ctx, gen, pkt, s, &f->key,
						     denial, src_is_lo, vlan, d);
	}
	if (flow_is_idle(e, pkt, s, now))
		return 0;
	int dir = direction(e, src_is_lo);
	if ((dir && is_new_connection(pkt)) ||
	    !decision_holds(e, pkt, src_is_lo, dir,
			    same_ends(e, pkt, src_is_lo), gen))
		return 0;
	serve_flow_hit(e, pkt, s, now, dir, d);
	return 1;
}

/* medseg_judge's flow path, from xdp_medseg's lookup f: a stale or idle
 * entry, other MACs, or a new flow (and a hit, where the other direction's
 * CPU made the entry after xdp_medseg looked). */
static __always_inline void handle_flow(struct xdp_md *ctx, u32 gen,
					struct packet *pkt, struct settings *s,
					u64 now, struct flow_lookup *f,
					struct decision *d)
{
	struct flow_key *key = &f->key;
	struct judge_args args;
	u16 vlan = f->vlan;
	int src_is_lo = f->src_is_lo;
	struct flow_entry *e = f->flow_missed ? NULL : flows.lookup(key);

	if (e && flow_is_idle(e, pkt, s, now)) {
		flows.delete(key);
		e = NULL;
	}
	if (e) {
		int dir = direction(e, src_is_lo);

		if (dir && is_new_connection(pkt)) {
			fill_judge_args(&args, pkt, s, vlan, 0, pkt->policy_port);
			judge(ctx, gen, &args, d);
			return;
		}
		int ends = same_ends(e, pkt, src_is_lo);
		if (decision_holds(e, pkt, src_is_lo, dir, ends, gen)) {
			serve_flow_hit(e, pkt, s, now, dir, d);
			return;
		}
		/* Re-judge the initiator's direction under the
		 * active policy and this packet's MACs: the entry's
		 * verdict is an older generation's, or was judged
		 * between other MACs (a gateway pair answering from
		 * its own MAC, or a frame that opened the entry
		 * towards a broadcast or another device's MAC). */
		fill_judge_args(&args, pkt, s, vlan, dir, e->policy_port);
		args.check_spoof = !ends && !dir;
		judge(ctx, gen, &args, d);
		d->flags |= DECISION_REVALIDATED;
		if (!ends) {  /* this packet's judgement; the entry stays */
			if (d->verdict != VERDICT_DROP)
				account(e, dir, pkt, now);
			return;
		}
		/* A TCP connection picked up mid-stream (no SYN in
		 * either direction) has a guessed initiator, and a
		 * pass from its first end was not judged from the
		 * other: one that this end's judgement no longer
		 * passes is forgotten, and its next packet is picked
		 * up again, judged from both ends. Kept, it would
		 * count as a would-drop for as long as it lives. */
		if (d->verdict == VERDICT_DROP ||
		    (d->verdict == VERDICT_AUDIT &&
		     pkt->proto == IPPROTO_TCP &&
		     !((e->tcp_flags[0] | e->tcp_flags[1]) & TCP_FLAG_SYN))) {
			flows.delete(key);
			return;
		}
		stamp_entry(e, d, gen);
		account(e, dir, pkt, now);
		want_sample(d, flow_sample_kind(e, s));
		return;
	}

	int midstream = is_midstream(pkt);
	u32 zero = 0;
	struct deny_key *denial = denial_scratch.lookup(&zero);
	/* xdp_medseg asked the deny cache where it found no entry */
	if (!f->flow_missed && denial &&
	    cached_denial_holds(ctx, gen, pkt, s, key, denial, src_is_lo, vlan, d))
		return;

	fill_judge_args(&args, pkt, s, vlan, 0, pkt->policy_port);
	judge(ctx, gen, &args, d);
	int initiator_is_lo = src_is_lo;
	u16 initiator_port = pkt->policy_port;

	/* Mid-stream pickup: a TCP segment without SYN belongs to a flow that
	 * began before we saw it; judge it from the other side too, and keep
	 * the more permissive answer (pass > audit > drop). On a tie, the end
	 * that listens is the responder: the entry's initiator is what a
	 * policy flip judges the connection by. */
	if (midstream && d->verdict != VERDICT_PASS && d->reason != REASON_SPOOFED) {
		struct decision *other = decision_scratch.lookup(&zero);
		u16 reply_port = bpf_ntohs(pkt->sport);

		if (!other)  /* cannot happen: slot 0 of a per-CPU array */
			return;
		__builtin_memset(other, 0, sizeof(*other));
		fill_judge_args(&args, pkt, s, vlan, 1, reply_port);
		args.guessed_opener_port = pkt->policy_port;
		judge(ctx, gen, &args, other);
		int stricter = verdict_rank(other->verdict) - verdict_rank(d->verdict);

		if (stricter < 0 ||
		    (stricter == 0 && !listens_at_dst(reply_port, pkt->policy_port))) {
			set_decision(d, other->verdict, other->reason,
				     other->rule_id);
			set_segments(d, other->src_segment, other->dst_segment,
				     other->pair_index);
			initiator_is_lo = !src_is_lo;
			initiator_port = reply_port;
		}
		d->flags |= DECISION_MIDSTREAM;
	}
	if (tftp_transfer(pkt, vlan, gen, d)) {
		/* the request's client opened it, on port 69: a flip judges it so */
		initiator_is_lo = !src_is_lo;
		initiator_port = TFTP_PORT;
	}
	if (d->verdict == VERDICT_DROP) {
		if (denial)
			remember_denial(gen, denial, d);
		return;  /* denied flows get no flow entry: a scan cannot evict */
	}

	struct flow_entry *fresh = flow_scratch.lookup(&zero);
	if (!fresh) {  /* cannot happen: slot 0 of a per-CPU array */
		count_pressure(PRESSURE_FLOW_INSERT_FAILED);
		d->flags |= DECISION_NO_FLOW_ENTRY;
		return;
	}
	__builtin_memset(fresh, 0, sizeof(*fresh));
	fresh->first_seen_ns = now;
	fresh->last_seen_ns = now;
	stamp_entry(fresh, d, gen);
	fresh->initiator_is_lo = initiator_is_lo;
	fresh->flags = d->flags & DECISION_MIDSTREAM;
	fresh->policy_port = initiator_port;
	set_ends(fresh, pkt, src_is_lo);
	int dir = src_is_lo == initiator_is_lo ? 0 : 1;

	fresh->packets[dir & 1] = 1;
	fresh->bytes[dir & 1] = pkt->len;
	fresh->tcp_flags[dir & 1] = pkt->tcp_flags;
	int err = flows.insert(key, fresh);
	if (err == 0) {
		d->flags |= DECISION_NEW_FLOW;
		want_sample(d, flow_sample_kind(fresh, s));
		return;
	}
	/* Lost the race to the other direction's CPU: count into its entry,
	 * when it was judged between the same MACs (else this packet's own
	 * judgement stands). */
	e = flows.lookup(key);
	if (e && !same_ends(e, pkt, src_is_lo))
		return;
	if (e) {
		count_pressure(PRESSURE_FLOW_INSERT_RACE);
		serve_flow_hit(e, pkt, s, now, direction(e, src_is_lo), d);
		return;
	}
	count_pressure(PRESSURE_FLOW_INSERT_FAILED);
	d->flags |= DECISION_NO_FLOW_ENTRY;
}

/* ---- rails, fragments, ICMP errors ---- */

#define ND_ROUTER_SOLICIT 133
#define ND_ROUTER_ADVERT 134
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define MLD_QUERY 130
#define MLD_REPORT 131
#define MLD_DONE 132
#define MLD2_REPORT 143
#define IGMP_TTL 1

static __always_inline int is_ipv4_multicast(u32 *addr)
{
	return (((u8 *)addr)[0] & 0xf0) == 0xe0;  /* 224.0.0.0/4 */
}

/* MLD's sources: link-local, or unspecified before DAD (RFC 3810 5.2.13,
 * RFC 3590); hosts discard MLD from any other source. */
static __always_inline int is_mld_source(u32 *addr)
{
	u8 *bytes = (u8 *)addr;

	return (bytes[0] == 0xfe && (bytes[1] & 0xc0) == 0x80) ||  /* fe80::/10 */
	       (addr[0] | addr[1] | addr[2] | addr[3]) == 0;
}

enum dhcp_direction {
	NOT_DHCP = 0,
	DHCP_TO_SERVER,
	DHCP_TO_CLIENT,
};

static __always_inline int dhcp_direction(u8 family, __be16 sport_be,
					  __be16 dport_be)
{
	u16 sport = bpf_ntohs(sport_be), dport = bpf_ntohs(dport_be);
	u16 client = family == FAMILY_IPV4 ? DHCP_CLIENT_PORT : DHCP6_CLIENT_PORT;
	u16 server = family == FAMILY_IPV4 ? DHCP_SERVER_PORT : DHCP6_SERVER_PORT;

	if (sport == client && dport == server)
		return DHCP_TO_SERVER;
	if (sport == server && dport == client)
		return DHCP_TO_CLIENT;
	return NOT_DHCP;
}

/* addr (a packet's src or dst) is a configured host with this RAIL_HOST_* flag */
static __always_inline int is_rail_host(u32 gen, u8 family, u32 *addr, u32 flag)
{
	struct rail_host_key key = { .gen = gen, .family = family };

	__builtin_memcpy(key.addr, addr, 16);
	u32 *flags = rail_hosts.lookup(&key);
	return flags && (*flags & flag);
}

/* A DHCP server's reply or a router's RA (or ICMP error) is trusted as
 * plumbing when it enters a trusted port, where [rails] trusted_ports names
 * any (the model of DHCP snooping and RA guard: a device on an access port
 * cannot spoof its way past it), and comes from a listed host, where any are
 * listed. */
static __always_inline int trusted_source(struct xdp_md *ctx, u32 gen,
					  struct packet *pkt,
					  struct settings *s, u32 listed,
					  u32 host_flag)
{
	if (s->flags & SETTING_TRUSTED_PORTS) {
		struct port_info *port = ingress_port(ctx);
		if (!port || !port->trusted)
			return 0;
	}
	return !(s->flags & listed) ||
	       is_rail_host(gen, pkt->family, pkt->src, host_flag);
}

/* The network's plumbing works under any policy. Returns 1 when a rail
 * decided the packet. An untrusted DHCP server or router falls through to
 * policy (its packets are still sampled: a DHCP sample, or a drop event
 * when the DHCP budget is spent). */
static __always_inline int rails(struct xdp_md *ctx, u32 gen,
				 struct packet *pkt, struct settings *s,
				 struct decision *d)
{
	if (!pkt->has_l4)
		return 0;
	if (pkt->proto == IPPROTO_UDP) {
		int direction = dhcp_direction(pkt->family, pkt->sport, pkt->dport);

		if (direction == DHCP_TO_SERVER) {
			d->sample_kind = SAMPLE_DHCP;
			set_decision(d, VERDICT_PASS, REASON_RAIL_DHCP, 0);
			return 1;
		}
		if (direction == DHCP_TO_CLIENT) {
			d->sample_kind = SAMPLE_DHCP;
			if (trusted_source(ctx, gen, pkt, s,
					   SETTING_DHCP_SERVERS_LISTED,
					   RAIL_HOST_DHCP_SERVER)) {
				set_decision(d, VERDICT_PASS, REASON_RAIL_DHCP, 0);
				return 1;
			}
		}
		return 0;
	}
	if (pkt->family == FAMILY_IPV4 && pkt->proto == IPPROTO_IGMP) {
		/* IGMP is IPv4's MLD: link-local (TTL 1), to a group, in a
		 * multicast frame (a unicast frame reaches one device only) */
		if (pkt->hop_limit != IGMP_TTL || !is_ipv4_multicast(pkt->dst) ||
		    !(pkt->eth_dst[0] & 1))
			return 0;
		set_decision(d, VERDICT_PASS, REASON_RAIL_IGMP, 0);
		d->sample_kind = SAMPLE_FLOWLESS;
		return 1;
	}
	if (pkt->family != FAMILY_IPV6 || pkt->proto != IPPROTO_ICMPV6)
		return 0;

	u8 type = pkt->icmp_type;
	if ((type == ND_NEIGHBOR_SOLICIT || type == ND_NEIGHBOR_ADVERT ||
	     type == ND_ROUTER_SOLICIT) && pkt->hop_limit == ND_HOP_LIMIT) {
		set_decision(d, VERDICT_PASS, REASON_RAIL_ND, 0);
	} else if ((type == MLD_QUERY || type == MLD_REPORT || type == MLD_DONE ||
		    type == MLD2_REPORT) && pkt->hop_limit == MLD_HOP_LIMIT &&
		   ((u8 *)pkt->dst)[0] == 0xff && (pkt->eth_dst[0] & 1) &&
		   is_mld_source(pkt->src)) {
		/* as IGMP: to a group, in a multicast frame; a unicast MLD
		 * query (RFC 3810 5.1.15, for debugging) meets the policy */
		set_decision(d, VERDICT_PASS, REASON_RAIL_ND, 0);
	} else if (type == ND_ROUTER_ADVERT && pkt->hop_limit == ND_HOP_LIMIT &&
		   trusted_source(ctx, gen, pkt, s, SETTING_ROUTERS_LISTED,
				  RAIL_HOST_ROUTER)) {
		set_decision(d, VERDICT_PASS, REASON_RAIL_RA, 0);
	} else {
		return 0;
	}
	d->sample_kind = SAMPLE_FLOWLESS;
	return 1;
}

static __always_inline void make_frag_key(struct xdp_md *ctx,
					  struct packet *pkt,
					  struct frag_key *key)
{
	__builtin_memcpy(key->src, pkt->src, 16);
	__builtin_memcpy(key->dst, pkt->dst, 16);
	key->id = pkt->frag_id;
	key->proto = pkt->frag_proto;
	key->family = pkt->family;
	key->vlan = vlan_for_identity(ctx, pkt);
}

/* A non-first fragment follows its first fragment's verdict. An orphan
 * (first fragment never seen, evicted, or two generations old) carries no
 * ports to judge: it is dropped where an endpoint's segment enforces, audited
 * elsewhere. */
static __always_inline void later_fragment(struct xdp_md *ctx, u32 gen,
					   struct packet *pkt, struct settings *s,
					   struct decision *d)
{
	struct frag_key key = {};

	make_frag_key(ctx, pkt, &key);
	struct frag_verdict *first = frags.lookup(&key);
	/* A first fragment judged under this generation or the one before:
	 * a datagram in flight at a flip completes, while an older verdict is
	 * as good as unseen, so later fragments (an IP ID is easily guessed)
	 * cannot ride it for long. */
	if (first && (first->gen == gen || first->gen + 1 == gen)) {
		set_decision(d, first->verdict, REASON_FRAGMENT, first->rule_id);
		if (first->flags & DECISION_SEGMENTS)  /* not after a rail */
			set_segments(d, first->src_segment,
				     first->dst_segment, first->pair_index);
		return;
	}

	struct judge_args args;
	struct endpoint_info src;
	struct segment_info src_info, dst_info;

	fill_judge_args(&args, pkt, s, vlan_for_identity(ctx, pkt), 0, 0);
	int enforce = resolve_endpoints(gen, &args, d, &src, &src_info, &dst_info);
	set_decision(d, enforce ? VERDICT_DROP : VERDICT_AUDIT,
		     REASON_FRAGMENT_ORPHAN, 0);
}

static __always_inline void record_first_fragment(struct xdp_md *ctx,
						  struct packet *pkt,
						  struct decision *d)
{
	struct frag_key key = {};
	struct frag_verdict v = {
		.gen = d->gen,
		.rule_id = d->rule_id,
		.src_segment = d->src_segment,
		.dst_segment = d->dst_segment,
		.verdict = d->verdict,
		.reason = d->reason,
		.flags = d->flags & DECISION_SEGMENTS,
		.pair_index = d->pair_index,
	};

	make_frag_key(ctx, pkt, &key);
	if (frags.update(&key, &v))
		count_pressure(PRESSURE_FRAG_INSERT_FAILED);
}

#define ICMP_PORT_UNREACH_CODE 3
#define ICMPV6_PORT_UNREACH_CODE 4

static __always_inline int is_port_unreachable(struct packet *pkt)
{
	if (pkt->proto == IPPROTO_ICMP)
		return pkt->icmp_type == ICMP_DEST_UNREACH &&
		       pkt->icmp_code == ICMP_PORT_UNREACH_CODE;
	return pkt->icmp_type == ICMPV6_DEST_UNREACH &&
	       pkt->icmp_code == ICMPV6_PORT_UNREACH_CODE;
}

static __always_inline int is_icmp_error(u8 proto, u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
		       type == ICMP_PARAMETERPROB;
	return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

/* An ICMP error quotes the header of the packet it is about: when that
 * packet's flow is in the table, the error passes with the flow (path-MTU
 * discovery must work). Returns 1 when it found the flow.
 * The quote is copied out of the packet rather than read in place: each
 * bounds check against data_end would leave the verifier a differently
 * bounded packet, and the whole flow path after a miss here was verified
 * once per such state (two thirds of the program's verifier budget). */
static __always_inline int related_icmp(struct xdp_md *ctx, u32 gen,
					struct packet *pkt, struct settings *s,
					u16 vlan, struct decision *d)
{
	u32 zero = 0;
	struct icmp_quote *quote = icmp_quote_scratch.lookup(&zero);
	struct packet inner = {};
	u32 quoted = pkt->l4_off + 8;  /* after the ICMP header */
	u32 l4;

	if (!quote)
		return 0;
	if (pkt->family == FAMILY_IPV4) {
		struct iphdr *ip = (void *)quote->ip;
		if (quoted + sizeof(*ip) > pkt->l4_end_off ||
		    bpf_xdp_load_bytes(ctx, quoted, ip, sizeof(*ip)) || ip->ihl < 5)
			return 0;
		l4 = quoted + ip->ihl * 4;
		inner.proto = ip->protocol;
		__builtin_memcpy(inner.src, &ip->saddr, 4);
		__builtin_memcpy(inner.dst, &ip->daddr, 4);
	} else {
		struct ipv6hdr *ip6 = (void *)quote->ip;
		if (quoted + sizeof(*ip6) > pkt->l4_end_off ||
		    bpf_xdp_load_bytes(ctx, quoted, ip6, sizeof(*ip6)))
			return 0;
		l4 = quoted + sizeof(*ip6);
		inner.proto = ip6->nexthdr;
		__builtin_memcpy(inner.src, &ip6->saddr, 16);
		__builtin_memcpy(inner.dst, &ip6->daddr, 16);
	}
	/* RFC 792 guarantees 8 bytes of the quoted L4 header */
	if (l4 + sizeof(quote->l4) > pkt->l4_end_off ||
	    bpf_xdp_load_bytes(ctx, l4, quote->l4, sizeof(quote->l4)))
		return 0;
	u8 *quoted_l4 = quote->l4;
	if (inner.proto == IPPROTO_TCP || inner.proto == IPPROTO_UDP) {
		inner.sport = *(__be16 *)quoted_l4;
		inner.dport = *(__be16 *)(quoted_l4 + 2);
	} else if (IS_ICMP_PROTO(inner.proto)) {
		icmp_flow_ports(inner.proto, quoted_l4[0],
				*(__be16 *)(quoted_l4 + 4), &inner.sport,
				&inner.dport);
	} else {
		return 0;
	}
	/* An error goes back to the sender of the packet it quotes, and comes
	 * from that packet's destination or from a router: one of the listed
	 * routers, when routers are listed. */
	if (inner.src[0] != pkt->dst[0] || inner.src[1] != pkt->dst[1] ||
	    inner.src[2] != pkt->dst[2] || inner.src[3] != pkt->dst[3])
		return 0;
	if ((s->flags & SETTING_ROUTERS_LISTED) &&
	    (inner.dst[0] != pkt->src[0] || inner.dst[1] != pkt->src[1] ||
	     inner.dst[2] != pkt->src[2] || inner.dst[3] != pkt->src[3]) &&
	    !trusted_source(ctx, gen, pkt, s, SETTING_ROUTERS_LISTED,
			    RAIL_HOST_ROUTER))
		return 0;
	/* DHCP passes on a rail, with no flow entry: one of its errors is
	 * plumbing too, a client that already left its socket answering "port
	 * unreachable" to the server's last reply, and goes back to that server
	 * (a listed one, when servers are listed). Any other error about DHCP
	 * meets the policy. */
	int dhcp = inner.proto == IPPROTO_UDP ?
		   dhcp_direction(pkt->family, inner.sport, inner.dport) :
		   NOT_DHCP;
	if (dhcp) {
		if (dhcp != DHCP_TO_CLIENT || !is_port_unreachable(pkt) ||
		    ((s->flags & SETTING_DHCP_SERVERS_LISTED) &&
		     !is_rail_host(gen, pkt->family, pkt->dst,
				   RAIL_HOST_DHCP_SERVER)))
			return 0;
		set_decision(d, VERDICT_PASS, REASON_RELATED_ICMP, 0);
		return 1;
	}
	inner.family = pkt->family;

	struct flow_key key = {};
	make_flow_key(&inner, inner.sport, inner.dport, vlan, &key);
	struct flow_entry *e = flows.lookup(&key);
	/* A flow judged under an earlier generation vouches for nothing until
	 * its own next packet is judged again: the error meets the policy. */
	if (!e || e->gen != gen)
		return 0;
	take_decision(d, e, REASON_RELATED_ICMP);
	return 1;
}

#define JUDGE_SLOT 0

static __always_inline void handle_ip(struct xdp_md *ctx, u32 gen,
				      struct packet *pkt, struct settings *s,
				      u64 now, struct decision *d)
{
	if (rails(ctx, gen, pkt, s, d))
		return;
	if (pkt->is_later_fragment) {
		later_fragment(ctx, gen, pkt, s, d);
		return;
	}
	if (IS_ICMP_PROTO(pkt->proto) && is_icmp_error(pkt->proto, pkt->icmp_type) &&
	    related_icmp(ctx, gen, pkt, s, vlan_for_identity(ctx, pkt), d))
		return;
	struct flow_lookup f = {};
	if (flow_served(ctx, gen, pkt, s, now, &f, d))
		return;
	u32 zero = 0;
	struct handoff *h = handoffs.lookup(&zero);
	if (h) {
		/* pointers into the frame stay out of maps */
		pkt->eth_src = pkt->eth_dst = NULL;
		h->pkt = *pkt;
		h->flow = f;
		h->sample_kind = d->sample_kind;
		judge_program.call(ctx, JUDGE_SLOT);
	}
	/* Only with the slot empty, which the loader fills before attaching
	 * and a pin keeps filled: pass, counted (fail-open, like a stopped
	 * manager). */
	count_pressure(PRESSURE_UNJUDGED);
	set_decision(d, VERDICT_PASS, REASON_UNJUDGED, 0);
}

/* ---- the single exit ---- */

/* A token of a bucket (BUDGET_*) of the samples that no flow paces:
 * 1 taken, 0 over the rate, -1 the bucket's samples are off. */
static __always_inline int take_token(u32 budget, u64 now)
{
	struct budget_config *cfg = sample_budgets.lookup(&budget);

	if (!cfg || !cfg->per_sec)
		return -1;
	if (cfg->per_sec == EVENTS_UNLIMITED)
		return 1;
	struct event_budget *b = event_budget.lookup(&budget);
	if (!b)
		return 0;
	u64 elapsed = now - b->last_refill_ns;
	if (elapsed >= ONE_SECOND_NS) {
		b->tokens = cfg->burst;
		b->last_refill_ns = now;
	} else {
		u64 add = elapsed * cfg->per_sec / ONE_SECOND_NS;
		if (add) {
			b->tokens += add;
			if (b->tokens > cfg->burst)
				b->tokens = cfg->burst;
			/* the time the tokens were earned, not now: what
			 * is left of a token carries over, or packets just
			 * faster than the rate would get half of it */
			b->last_refill_ns += add * ONE_SECOND_NS / cfg->per_sec;
		}
	}
	if (!b->tokens)
		return 0;
	b->tokens--;
	return 1;
}

/* A sample no flow paces goes out within its bucket's rate, and what the
 * rate holds back is counted. A dropped DHCP packet (an unlisted server's
 * reply) that the DHCP bucket holds back is still a drop event: a flood of
 * DISCOVERs must not hide a rogue server. */
static __always_inline void pace_sample(struct decision *d, u64 now)
{
	int token;

	if (d->sample_kind == SAMPLE_DHCP) {
		token = take_token(BUDGET_DHCP, now);
		if (token > 0)
			return;
		if (token == 0)
			count_pressure(PRESSURE_DHCP_RATE_LIMITED);
		if (d->verdict != VERDICT_DROP) {
			d->sample_kind = SAMPLE_NONE;
			return;
		}
		d->sample_kind = SAMPLE_DROP_EVENT;
	}
	if (d->sample_kind != SAMPLE_DROP_EVENT &&
	    d->sample_kind != SAMPLE_FLOWLESS)
		return;
	token = take_token(BUDGET_EVENTS, now);
	if (token > 0)
		return;
	if (token == 0)
		count_pressure(PRESSURE_EVENT_RATE_LIMITED);
	d->sample_kind = SAMPLE_NONE;
}

struct sample_record {
	struct sample_header hdr;
	u8 data[SAMPLE_SNAPLEN];
};

static __always_inline void emit_sample(struct xdp_md *ctx, struct packet *pkt,
					struct decision *d, struct settings *s,
					u64 now)
{
	struct sample_record *rec = samples.ringbuf_reserve(sizeof(*rec));

	if (!rec) {
		count_pressure(PRESSURE_RING_FULL);
		return;
	}
	u32 cap = s->snaplen && s->snaplen < SAMPLE_SNAPLEN ? s->snaplen :
							     SAMPLE_SNAPLEN;
	if (cap > pkt->len)
		cap = pkt->len;
	/* The identity on 1..SAMPLE_SNAPLEN, written so that the verifier
	 * sees the bound the helper needs. */
	cap = ((cap - 1) & (SAMPLE_SNAPLEN - 1)) + 1;
	rec->hdr.timestamp_ns = now;
	rec->hdr.ifindex = ctx->ingress_ifindex;
	rec->hdr.packet_len = pkt->len;
	rec->hdr.rule_id = d->rule_id;
	rec->hdr.gen = d->gen;
	rec->hdr.src_segment = d->src_segment;
	rec->hdr.dst_segment = d->dst_segment;
	rec->hdr.verdict = d->verdict;
	rec->hdr.reason = d->reason;
	rec->hdr.kind = d->sample_kind;
	rec->hdr.pad = 0;
	rec->hdr.pad2 = 0;
	rec->hdr.captured_len = bpf_xdp_load_bytes(ctx, 0, rec->data, cap) ? 0 : cap;
	samples.ringbuf_submit(rec, 0);
}

static __always_inline void count_pair(struct decision *d, u32 len)
{
	u32 index = d->pair_index * VERDICT_MAX + d->verdict;
	struct counter *c = pair_stats.lookup(&index);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline int finish(struct xdp_md *ctx, struct packet *pkt,
				  struct decision *d, struct settings *s,
				  u64 now)
{
	struct counter *c;
	u32 rule = d->rule_id;
	if (rule && rule < MAX_RULE_IDS) {
		c = rule_hits.lookup(&rule);
		if (c) {
			c->packets++;
			c->bytes += pkt->len;
		}
	}
	if (d->flags & DECISION_SEGMENTS)
		count_pair(d, pkt->len);
	/* The verdict counter after the rule and pair counters: 6 ns less per
	 * packet than before them (BPF_PROG_TEST_RUN, repeated; established and
	 * dropped alike). The JIT'd code was not studied for why. */
	u32 index = d->verdict * REASON_MAX + d->reason;
	c = stats.lookup(&index);
	if (c) {
		c->packets++;
		c->bytes += pkt->len;
	}
	if (pkt->is_fragment && !pkt->is_later_fragment)
		record_first_fragment(ctx, pkt, d);

	if (d->sample_kind == SAMPLE_NONE && d->verdict == VERDICT_DROP)
		d->sample_kind = SAMPLE_DROP_EVENT;
	pace_sample(d, now);
	if (d->sample_kind != SAMPLE_NONE)
		emit_sample(ctx, pkt, d, s, now);

	/* Only the tracer reads the record (medseg-xdp trace, the tests): a
	 * live bridge skips it, 4 ns of every packet. */
	if (s->flags & SETTING_RECORD_DECISION) {
		u32 zero = 0;
		struct decision *last = last_decision.lookup(&zero);
		if (last) {
			d->seq = last->seq + 1;
			*last = *d;
		}
	}
	return d->verdict == VERDICT_DROP ? XDP_DROP : XDP_PASS;
}

/* ---- the programs ---- */

/* What every packet starts from: the active generation (into d), the
 * settings, and the clock (returned). */
static __always_inline u64 begin(struct decision *d, struct settings *s)
{
	u32 zero = 0;
	u32 *gen = active_gen.lookup(&zero);
	struct settings *configured = settings.lookup(&zero);

	if (gen)
		d->gen = *gen;
	if (configured)
		*s = *configured;
	return bpf_ktime_get_coarse_ns();
}

/* The entry point on every port: parse, VLAN filter, rails, fragments,
 * related ICMP errors and flow hits; the rest goes to medseg_judge. */
int xdp_medseg(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct decision d = {};
	struct settings s = {};
	u64 now = begin(&d, &s);
	u8 vlan_tags = 0;

	/* The packet stays one struct in memory: without this, LLVM splits it
	 * into a stack slot per field, which doubled the cost of an established
	 * packet here and took the stack past 512 bytes. */
	asm volatile("" :: "r"(&pkt) : "memory");
	int parsed = parse_packet(ctx, &pkt, &vlan_tags);
	if (vlan_tags && parsed != PARSE_MALFORMED &&
	    !vlan_allowed(ctx, &pkt, vlan_tags, &s))
		set_decision(&d, s.flags & SETTING_BREAK_GLASS ? VERDICT_AUDIT :
								 VERDICT_DROP,
			     REASON_VLAN_NOT_ALLOWED, 0);
	else switch (parsed) {
	case PARSE_IP:
		handle_ip(ctx, d.gen, &pkt, &s, now, &d);
		break;
	case PARSE_ARP:
		set_decision(&d, VERDICT_PASS, REASON_RAIL_ARP, 0);
		d.sample_kind = SAMPLE_FLOWLESS;
		break;
	case PARSE_L2_CONTROL:
		set_decision(&d, VERDICT_PASS, REASON_RAIL_L2_CONTROL, 0);
		break;
	case PARSE_OTHER_ETHERTYPE:
		set_decision(&d, s.flags & SETTING_DROP_UNKNOWN_ETHERTYPE ?
				 VERDICT_DROP : VERDICT_PASS,
			     REASON_UNSUPPORTED_ETHERTYPE, 0);
		d.sample_kind = SAMPLE_FLOWLESS;
		break;
	default:
		set_decision(&d, VERDICT_DROP, REASON_MALFORMED, 0);
	}
	return finish(ctx, &pkt, &d, &s, now);
}

/* What xdp_medseg tail-calls for an IP packet of the flow path that is no
 * flow hit, after the VLAN filter and the rails: identity, policy, the deny
 * cache, mid-stream pickup and new entries. */
int medseg_judge(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct decision d = {};
	struct settings s = {};
	u64 now = begin(&d, &s);
	u32 zero = 0;
	struct handoff *h = handoffs.lookup(&zero);
	u8 *frame = (void *)(long)ctx->data;

	if (h && (void *)(frame + 2 * ETH_ALEN) <= (void *)(long)ctx->data_end) {
		pkt = h->pkt;
		pkt.eth_dst = frame;
		pkt.eth_src = frame + ETH_ALEN;
		d.sample_kind = h->sample_kind;
		handle_flow(ctx, d.gen, &pkt, &s, now, &h->flow, &d);
	} else {  /* cannot happen: slot 0 of a per-CPU array; a parsed frame */
		set_decision(&d, VERDICT_DROP, REASON_MALFORMED, 0);
	}
	return finish(ctx, &pkt, &d, &s, now);
}
