/* SPDX-License-Identifier: GPL-2.0 */
/*
 * parse.h - the one parsing header: Ethernet, up to two VLAN tags, IPv4
 * (options, fragments), IPv6 (bounded extension-header walk), TCP, UDP,
 * ICMP, ICMPv6. Every bound is checked against data_end before a read.
 */
#ifndef MEDSEG_PARSE_H
#define MEDSEG_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/in.h>

#include "medseg_abi.h"

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_ARP_ 0x0806
#define ETH_P_LLDP_ 0x88CC
#define ETH_P_SLOW_ 0x8809  /* LACP */
#define ETH_P_PAE_ 0x888E   /* EAPOL */
#define VLAN_VID_MASK_ 0x0fff

#define IPV4_MF 0x2000
#define IPV4_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV6_FRAG_MF 0x0001
#define TCP_MIN_HLEN 20
#define ETH_P_802_3_MIN_ 0x0600

enum parse_result {
	PARSE_IP = 0,         /* IPv4/IPv6 with its L4 header where there is one */
	PARSE_ARP,
	PARSE_L2_CONTROL,     /* STP BPDU, LACP, LLDP, EAPOL */
	PARSE_OTHER_ETHERTYPE,
	PARSE_MALFORMED,
};

struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct ipv6_opt_hdr_ {
	u8 nexthdr;
	u8 hdrlen;
};

struct ipv6_frag_hdr_ {
	u8 nexthdr;
	u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* What the program needs of one packet. Addresses are 16 bytes for both
 * families; IPv4 uses the first 4 and leaves the rest zero. */
struct packet {
	u8 *eth_src;
	u8 *eth_dst;
	u32 len;            /* frame length, what bytes are counted as */
	u16 vlan;           /* outer tag's VID, 0 when untagged */
	u8 family;          /* FAMILY_IPV4 / FAMILY_IPV6 */
	u8 proto;           /* L4 protocol after the extension headers */
	u32 src[4];         /* u32 words: compared word by word for flow keys */
	u32 dst[4];
	__be16 sport;       /* network order; ICMP echo: the identifier */
	__be16 dport;
	u16 policy_port;    /* host order: dport, or the ICMP type */
	u8 tcp_flags;
	u8 hop_limit;
	u8 icmp_type;
	u8 icmp_code;
	u8 has_l4;          /* the L4 header is in this packet */
	u8 is_fragment;     /* part of a fragmented datagram */
	u8 is_later_fragment; /* offset > 0: no L4 header */
	u8 frag_proto;      /* the protocol every fragment names (IPv6: after the fragment header) */
	u32 frag_id;
	/* Offsets from the frame's start, not pointers: the ICMP error path
	 * copies its quote out with bpf_xdp_load_bytes (see related_icmp). */
	u16 l4_off;         /* start of the L4 header */
	u16 l4_end_off;     /* end of the datagram (or of this fragment) */
};

/* An ICMP error's quote, copied out of the packet (see related_icmp): the
 * quoted IP header (IPv6's fixed 40 bytes, or IPv4's first 20) and the
 * first 8 bytes of the L4 header it quotes. */
struct icmp_quote {
	u8 ip[40];
	u8 l4[8];
};

/* The verifier learns packet bounds only from comparisons with data_end;
 * the datagram's own end (IP length) is the semantic bound. Check both. */
#define BEYOND(p, end, limit) \
	((void *)(p) > (void *)(end) || (void *)(p) > (void *)(limit))

#define IS_ICMP_PROTO(p) ((p) == IPPROTO_ICMP || (p) == IPPROTO_ICMPV6)

static __always_inline int is_icmp_echo(u8 proto, u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
	return type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY;
}

/* The ports an ICMP message's flow is keyed by: an echo's identifier as both,
 * any other type (type, 0x100 | type). The two never match, so an allowed
 * echo opens no other type and an allowed type no echo. */
#define ICMP_TYPE_KEY_MARK 0x100

static __always_inline void icmp_flow_ports(u8 proto, u8 type, __be16 id,
					    __be16 *sport, __be16 *dport)
{
	if (is_icmp_echo(proto, type)) {
		*sport = id;
		*dport = id;
	} else {
		*sport = bpf_htons(type);
		*dport = bpf_htons(ICMP_TYPE_KEY_MARK | type);
	}
}

/* L4 header at l4, bounded by end: ports, flags, ICMP type. The L4 header of
 * a first fragment must be whole (RFC 1858, RFC 7112): else malformed. */
static __always_inline int parse_l4(struct packet *pkt, void *data, u8 *l4,
				    void *end, void *dgram_end)
{
	pkt->l4_off = (u8 *)l4 - (u8 *)data;
	pkt->l4_end_off = (u8 *)dgram_end - (u8 *)data;
	if (pkt->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)l4;
		if (BEYOND(tcp + 1, end, dgram_end) || tcp->doff < 5)
			return PARSE_MALFORMED;
		pkt->sport = tcp->source;
		pkt->dport = tcp->dest;
		pkt->tcp_flags = ((u8 *)tcp)[13];
	} else if (pkt->proto == IPPROTO_UDP) {
		struct udphdr *udp = (void *)l4;
		if (BEYOND(udp + 1, end, dgram_end))
			return PARSE_MALFORMED;
		pkt->sport = udp->source;
		pkt->dport = udp->dest;
	} else if (IS_ICMP_PROTO(pkt->proto)) {
		/* type, code, checksum, and for echo the identifier */
		if (BEYOND(l4 + 8, end, dgram_end))
			return PARSE_MALFORMED;
		pkt->icmp_type = l4[0];
		pkt->icmp_code = l4[1];
		icmp_flow_ports(pkt->proto, pkt->icmp_type, *(__be16 *)(l4 + 4),
				&pkt->sport, &pkt->dport);
		pkt->policy_port = pkt->icmp_type;
		pkt->has_l4 = 1;
		return PARSE_IP;
	} else {
		pkt->has_l4 = 1;
		return PARSE_IP;
	}
	pkt->policy_port = bpf_ntohs(pkt->dport);
	pkt->has_l4 = 1;
	return PARSE_IP;
}

/* RFC 1858: a later fragment that starts inside the first fragment's TCP
 * header would rewrite the flags and ports that fragment was judged by,
 * wherever a reassembler lets later data win (IPv6 forbids overlaps, RFC
 * 5722, which old stacks ignore). offset in bytes. */
static __always_inline int overlaps_tcp_header(u8 proto, u32 offset)
{
	return proto == IPPROTO_TCP && offset < TCP_MIN_HLEN;
}

static __always_inline int parse_ipv4(struct packet *pkt, void *data, void *l3,
				      void *end)
{
	struct iphdr *ip = l3;

	if ((void *)(ip + 1) > end)
		return PARSE_MALFORMED;
	u32 hdr_len = ip->ihl * 4;
	u32 tot_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || hdr_len < sizeof(*ip) || tot_len < hdr_len ||
	    l3 + tot_len > end)
		return PARSE_MALFORMED;

	pkt->family = FAMILY_IPV4;
	pkt->proto = ip->protocol;
	pkt->hop_limit = ip->ttl;
	__builtin_memcpy(pkt->src, &ip->saddr, 4);
	__builtin_memcpy(pkt->dst, &ip->daddr, 4);

	u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (IPV4_MF | IPV4_OFFSET_MASK)) {
		pkt->is_fragment = 1;
		pkt->frag_proto = ip->protocol;
		pkt->frag_id = bpf_ntohs(ip->id);
		if (frag & IPV4_OFFSET_MASK) {
			pkt->is_later_fragment = 1;
			if (overlaps_tcp_header(ip->protocol,
						(frag & IPV4_OFFSET_MASK) * 8))
				return PARSE_MALFORMED;
			return PARSE_IP;
		}
	}
	/* The datagram (this fragment of it) ends at tot_len, not at the
	 * frame's end: Ethernet pads short frames. */
	return parse_l4(pkt, data, l3 + hdr_len, end, l3 + tot_len);
}

static __always_inline int parse_ipv6(struct packet *pkt, void *data, void *l3,
				      void *end)
{
	struct ipv6hdr *ip6 = l3;

	if ((void *)(ip6 + 1) > end)
		return PARSE_MALFORMED;
	u32 payload = bpf_ntohs(ip6->payload_len);
	void *dgram_end = (void *)(ip6 + 1) + payload;
	/* payload 0 would be a jumbogram: not on an Ethernet bridge */
	if (ip6->version != 6 || payload == 0 || dgram_end > end)
		return PARSE_MALFORMED;

	pkt->family = FAMILY_IPV6;
	pkt->hop_limit = ip6->hop_limit;
	__builtin_memcpy(pkt->src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->dst, &ip6->daddr, 16);

	u8 next = ip6->nexthdr;
	u8 *cursor = (u8 *)(ip6 + 1);

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
		    next == IPPROTO_DSTOPTS) {
			struct ipv6_opt_hdr_ *opt = (void *)cursor;
			if (BEYOND(opt + 1, end, dgram_end))
				return PARSE_MALFORMED;
			next = opt->nexthdr;
			cursor += (opt->hdrlen + 1) * 8;
		} else if (next == IPPROTO_AH) {
			struct ipv6_opt_hdr_ *opt = (void *)cursor;
			if (BEYOND(opt + 1, end, dgram_end))
				return PARSE_MALFORMED;
			next = opt->nexthdr;
			cursor += (opt->hdrlen + 2) * 4;
		} else if (next == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr_ *fh = (void *)cursor;
			if (BEYOND(fh + 1, end, dgram_end))
				return PARSE_MALFORMED;
			u16 off = bpf_ntohs(fh->frag_off);
			next = fh->nexthdr;
			cursor += sizeof(*fh);
			/* an atomic fragment (offset 0, no MF) is a whole datagram */
			if (off & (IPV6_FRAG_OFFSET_MASK | IPV6_FRAG_MF)) {
				pkt->is_fragment = 1;
				pkt->frag_proto = next;
				pkt->frag_id = bpf_ntohl(fh->identification);
				if (off & IPV6_FRAG_OFFSET_MASK) {
					pkt->proto = next;
					pkt->is_later_fragment = 1;
					if (overlaps_tcp_header(next,
								off & IPV6_FRAG_OFFSET_MASK))
						return PARSE_MALFORMED;
					return PARSE_IP;
				}
			}
		} else {
			pkt->proto = next;
			if (next == IPPROTO_NONE || next == IPPROTO_ESP) {
				/* nothing readable follows */
				pkt->has_l4 = 1;
				return PARSE_IP;
			}
			return parse_l4(pkt, data, cursor, end, dgram_end);
		}
	}
	/* more extension headers than we walk (RFC 9098): malformed here */
	return PARSE_MALFORMED;
}

/* An 802.3 frame whose LLC/SNAP header (RFC 1042: AA AA 03, OUI 0) names IP,
 * ARP or a VLAN tag: some stacks take it as that protocol, so it must not
 * pass unjudged as an unknown EtherType. */
static __always_inline int snap_wraps_ip(u8 *llc, void *end)
{
	if ((void *)(llc + 8) > end || llc[0] != 0xAA || llc[1] != 0xAA ||
	    llc[2] != 0x03 || llc[3] || llc[4] || llc[5])
		return 0;
	u16 inner = (llc[6] << 8) | llc[7];
	return inner == ETH_P_IP || inner == ETH_P_IPV6 || inner == ETH_P_ARP_ ||
	       inner == ETH_P_8021Q_ || inner == ETH_P_8021AD_;
}

/* vlan_tags: how many tags the frame carries (0, 1 or 2). An out-parameter,
 * not a field of struct packet: it is read once, by the VLAN check, and a
 * field would keep each parse path's count alive to the end of the program,
 * doubling the states the verifier walks. */
static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt,
					u8 *vlan_tags)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	pkt->len = end - data;
	if ((void *)(eth + 1) > end)
		return PARSE_MALFORMED;
	pkt->eth_dst = eth->h_dest;
	pkt->eth_src = eth->h_source;

	u16 proto = bpf_ntohs(eth->h_proto);
	void *cursor = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != ETH_P_8021Q_ && proto != ETH_P_8021AD_)
			break;
		struct vlan_tag *tag = cursor;
		if ((void *)(tag + 1) > end)
			return PARSE_MALFORMED;
		if (i == 0)
			pkt->vlan = bpf_ntohs(tag->tci) & VLAN_VID_MASK_;
		*vlan_tags = i + 1;
		proto = bpf_ntohs(tag->encapsulated_proto);
		cursor = tag + 1;
	}
	/* a third tag: nothing we parse, and nothing to wave through */
	if (proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_)
		return PARSE_MALFORMED;

	if (proto == ETH_P_IP)
		return parse_ipv4(pkt, data, cursor, end);
	if (proto == ETH_P_IPV6)
		return parse_ipv6(pkt, data, cursor, end);
	if (proto == ETH_P_ARP_)
		return PARSE_ARP;
	if (proto == ETH_P_LLDP_ || proto == ETH_P_SLOW_ || proto == ETH_P_PAE_)
		return PARSE_L2_CONTROL;
	if (proto < ETH_P_802_3_MIN_ && snap_wraps_ip(cursor, end))
		return PARSE_MALFORMED;
	/* 802.3 length field: STP BPDUs travel as LLC to 01:80:c2:00:00:00;
	 * Cisco's CDP, VTP, DTP and UDLD to 01:00:0c:cc:cc:cc and PVST+ BPDUs
	 * to 01:00:0c:cc:cc:cd (a Cisco campus' loop protection) */
	if (proto < ETH_P_802_3_MIN_ && eth->h_dest[0] == 0x01 &&
	    ((eth->h_dest[1] == 0x80 && eth->h_dest[2] == 0xc2 && eth->h_dest[3] == 0 &&
	      eth->h_dest[4] == 0 && eth->h_dest[5] == 0) ||
	     (eth->h_dest[1] == 0x00 && eth->h_dest[2] == 0x0c && eth->h_dest[3] == 0xcc &&
	      eth->h_dest[4] == 0xcc && (eth->h_dest[5] & 0xfe) == 0xcc)))
		return PARSE_L2_CONTROL;
	return PARSE_OTHER_ETHERTYPE;
}

#endif /* MEDSEG_PARSE_H */
