"""The executable specification of bpf/medseg_xdp.c, in pure Python.

Given the same map contents and the same frame, ReferenceDataplane.run()
gives what the XDP program gives: the action, the decision record, the
counter changes and the flow and fragment tables (timestamps aside). It is a
port of the C, function by function under the same names (the parsing
functions of bpf/parse.h first, then those of medseg_xdp.c in file order), so
the two read side by side; change both together. Layouts and the header's
constants come from medseg_xdp.abi, never restated here.

How the maps are modelled:

- hash maps are dicts keyed by the bytes of the ctypes key struct, with
  ctypes structs as values; the LPM tries are LpmTrie;
- the LRU maps (flows, frags) are plain dicts that never evict: tests size
  the kernel's tables so that nothing is evicted there either;
- the per-CPU maps are one CPU's: sum the kernel's counters over CPUs, and
  read its last_decision and event_budget on the CPU that ran the program;
- outcomes that only the kernel can have are left out: the ring buffer always
  has room (PRESSURE_RING_FULL), and a flow insert after a missed lookup
  always succeeds (PRESSURE_FLOW_INSERT_RACE, PRESSURE_FLOW_INSERT_FAILED,
  DECISION_NO_FLOW_ENTRY);
- the deny cache (cached_denial, remember_denial) is left out: a cached denial
  is, by its key, the decision a judgement in the same generation gives, so
  the model judges every time and the differential test checks that the two
  agree;
- the host is little-endian, like the BPF target BCC compiles for on x86-64
  and arm64: a __be16 field holds the network-order bytes, read as a native
  u16 (see raw16).
"""

from __future__ import annotations

import ctypes
import enum
import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

from medseg_xdp import abi
from medseg_xdp.policy_image import live_stats_slots, stable_stats_slots

# medseg_abi.h's #defines and enum members under their C names.
C = SimpleNamespace(
    **abi.DEFINES,
    **{name: value for members in abi.ENUMS.values() for name, value in members.items()},
)

# linux/bpf.h
XDP_DROP = 1
XDP_PASS = 2

# linux/if_ether.h and parse.h
ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_ARP = 0x0806
ETH_P_LLDP = 0x88CC
ETH_P_SLOW = 0x8809
ETH_P_PAE = 0x888E
ETH_P_802_3_MIN = 0x0600
VLAN_HLEN = 4
VLAN_VID_MASK = 0x0FFF
STP_MAC = bytes.fromhex("0180c2000000")
CISCO_L2_MACS = frozenset({bytes.fromhex("01000ccccccc"), bytes.fromhex("01000ccccccd")})  # CDP, VTP, DTP, UDLD; PVST+

IPV4_HLEN = 20
IPV4_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
IPV6_HLEN = 40
IPV6_OPT_HLEN = 2  # struct ipv6_opt_hdr_
IPV6_FRAG_HLEN = 8  # struct ipv6_frag_hdr_
IPV6_FRAG_OFFSET_MASK = 0xFFF8
IPV6_FRAG_MF = 0x0001
TCP_HLEN = 20
UDP_HLEN = 8
ICMP_HLEN = 8  # type, code, checksum, and for echo the identifier

# linux/in.h, linux/in6.h
IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_IGMP = 2
IGMP_TTL = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

# linux/icmp.h, linux/icmpv6.h
ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
ICMPV6_DEST_UNREACH = 1
ICMPV6_PARAMPROB = 4
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

# medseg_xdp.c
NSEC_PER_SEC = 1_000_000_000
TCP_FLAG_SYN = 0x02
TFTP_PORT = 69  # host order: the port a TFTP request goes to (RFC 1350)
TCP_FLAG_ACK = 0x10
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
DHCP6_CLIENT_PORT = 546
DHCP6_SERVER_PORT = 547
ND_HOP_LIMIT = 255
MLD_HOP_LIMIT = 1
ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
MLD_QUERY = 130
MLD_REPORT = 131
MLD_DONE = 132
MLD2_REPORT = 143

U64_MASK = (1 << 64) - 1
U32_MASK = (1 << 32) - 1
ZERO_KEY = bytes(4)  # u32 0: the one slot of an array map
ZERO_ADDR = bytes(16)

MapContents = dict[str, dict[bytes, bytes]]
"""Map name -> {key bytes: value bytes}, for the configuration maps."""

# The configuration maps of maps.h: name -> (key type, value type).
CONFIG_MAPS: dict[str, tuple[Any, Any]] = {
    "active_gen": (ctypes.c_uint32, ctypes.c_uint32),
    "settings": (ctypes.c_uint32, abi.Settings),
    "sample_budgets": (ctypes.c_uint32, abi.BudgetConfig),  # an array: an absent budget reads as zeros
    "ports": (ctypes.c_uint32, abi.PortInfo),  # an array: an absent port reads as zeros
    "port_vlans": (abi.PortVlanKey, ctypes.c_uint8),
    "devices": (abi.DeviceKey, abi.EndpointInfo),
    "prefixes_v4": (abi.Prefix4Key, abi.EndpointInfo),
    "prefixes_v6": (abi.Prefix6Key, abi.EndpointInfo),
    "rail_hosts": (abi.RailHostKey, ctypes.c_uint32),
    "segments": (abi.SegmentKey, abi.SegmentInfo),
    "rules_exact": (abi.RuleExactKey, abi.RuleVerdict),
    "rules": (abi.RuleKey, abi.RuleVerdict),
    "pair_defaults": (abi.PairKey, abi.RuleVerdict),
}
ARRAY_MAPS = ("active_gen", "settings")

V = TypeVar("V")


# ---- byte helpers ----


def be16(frame: bytes, offset: int) -> int:
    """bpf_ntohs() of the __be16 at offset."""
    return int.from_bytes(frame[offset : offset + 2], "big")


def be32(frame: bytes, offset: int) -> int:
    """bpf_ntohl() of the __be32 at offset."""
    return int.from_bytes(frame[offset : offset + 4], "big")


def raw16(frame: bytes, offset: int) -> int:
    """The __be16 at offset as the C holds it: network-order bytes in a native u16."""
    return int.from_bytes(frame[offset : offset + 2], "little")


def bswap16(value: int) -> int:
    """bpf_ntohs() / bpf_htons() of a u16 value."""
    return ((value & 0xFF) << 8) | (value >> 8)


def _mask_prefix(data: bytes, prefixlen: int) -> bytes:
    """The first prefixlen bits of data (most significant bit first), the rest zero."""
    width = 8 * len(data)
    kept = int.from_bytes(data, "big") >> (width - prefixlen) << (width - prefixlen)
    return kept.to_bytes(len(data), "big")


class LpmTrie(Generic[V]):
    """BPF_MAP_TYPE_LPM_TRIE: a key is a u32 prefixlen then the data. A lookup
    finds the longest stored prefix, no longer than the lookup key's prefixlen,
    whose first prefixlen bits equal the key's; stored keys with the same
    prefix are one entry (the last one given wins), as in the kernel."""

    def __init__(self, entries: dict[bytes, V]) -> None:
        self._by_prefixlen: dict[int, dict[bytes, V]] = {}
        for key, value in entries.items():
            prefixlen, data = int.from_bytes(key[:4], "little"), key[4:]
            if prefixlen > 8 * len(data):
                raise ValueError(f"LPM key prefixlen {prefixlen} exceeds {8 * len(data)} bits")
            self._by_prefixlen.setdefault(prefixlen, {})[_mask_prefix(data, prefixlen)] = value
        self._prefixlens = sorted(self._by_prefixlen, reverse=True)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_prefixlen.values())

    def lookup(self, key: bytes) -> V | None:
        """bpf_map_lookup_elem() on the trie."""
        prefixlen, data = int.from_bytes(key[:4], "little"), key[4:]
        for length in self._prefixlens:
            if length <= prefixlen:
                found = self._by_prefixlen[length].get(_mask_prefix(data, length))
                if found is not None:
                    return found
        return None


def decode_map(name: str, entries: dict[bytes, bytes]) -> dict[bytes, Any]:
    """One configuration map's raw entries as {key bytes: ctypes value}, sizes checked."""
    key_type, value_type = CONFIG_MAPS[name]
    key_size, value_size = ctypes.sizeof(key_type), ctypes.sizeof(value_type)
    decoded = {}
    for key, value in entries.items():
        if len(key) != key_size or len(value) != value_size:
            raise ValueError(
                f"map {name}: entry of {len(key)}/{len(value)} bytes, "
                f"the map takes {key_size}/{value_size}"
            )
        decoded[bytes(key)] = value_type.from_buffer_copy(value)
    return decoded


# ---- parse.h ----


class ParseResult(enum.IntEnum):
    """enum parse_result."""

    IP = 0
    ARP = 1
    L2_CONTROL = 2
    OTHER_ETHERTYPE = 3
    MALFORMED = 4


@dataclass(slots=True)
class XdpContext:
    """struct xdp_md: the frame (data .. data_end) and the port it came in on."""

    data: bytes
    ingress_ifindex: int


@dataclass(slots=True)
class Packet:
    """struct packet. Pointers are offsets into the frame; addresses are the 16
    bytes of src[4]/dst[4]; sport/dport hold network-order bytes (raw16)."""

    eth_src: bytes = b""
    eth_dst: bytes = b""
    len: int = 0
    vlan: int = 0
    vlan_tags: int = 0  # C: parse_packet's out-parameter, kept off struct packet (fewer verifier states)
    family: int = 0
    proto: int = 0
    src: bytes = ZERO_ADDR
    dst: bytes = ZERO_ADDR
    sport: int = 0
    dport: int = 0
    policy_port: int = 0
    tcp_flags: int = 0
    hop_limit: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    has_l4: bool = False
    is_fragment: bool = False
    is_later_fragment: bool = False
    frag_proto: int = 0
    frag_id: int = 0
    l4: int = 0
    l4_end: int = 0


NOT_DHCP, DHCP_TO_SERVER, DHCP_TO_CLIENT = 0, 1, 2


def dhcp_direction(family: int, sport_raw: int, dport_raw: int) -> int:
    """dhcp_direction(): ports as stored (network order); DHCP for IPv4, DHCPv6 for IPv6."""
    sport, dport = bswap16(sport_raw), bswap16(dport_raw)
    client, server = (DHCP_CLIENT_PORT, DHCP_SERVER_PORT) if family == C.FAMILY_IPV4 else (DHCP6_CLIENT_PORT, DHCP6_SERVER_PORT)
    if (sport, dport) == (client, server):
        return DHCP_TO_SERVER
    if (sport, dport) == (server, client):
        return DHCP_TO_CLIENT
    return NOT_DHCP


def verdict_rank(verdict: int) -> int:
    """verdict_rank(): drop > audit > pass."""
    return 2 if verdict == C.VERDICT_DROP else 1 if verdict == C.VERDICT_AUDIT else 0


def listens_at_dst(sport: int, dport: int) -> bool:
    """listens_at_dst(): which end of a connection picked up mid-stream listens, by its ports: a well-known port
    facing a higher one; else one below the ephemeral range facing one in it; else the lower port."""
    well_known, ephemeral = C.WELL_KNOWN_PORT_END, C.EPHEMERAL_PORT_LOW
    if (dport < well_known) != (sport < well_known):
        return dport < well_known
    if (dport < ephemeral) != (sport < ephemeral):
        return dport < ephemeral
    return dport <= sport


def beyond(p: int, end: int, limit: int) -> bool:
    """BEYOND(): p is past the frame's end or past the datagram's end."""
    return p > end or p > limit


def is_icmp_proto(proto: int) -> bool:
    """IS_ICMP_PROTO()."""
    return proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)


ICMP_TYPE_KEY_MARK = 0x100


def icmp_flow_ports(proto: int, icmp_type: int, identifier: int) -> tuple[int, int]:
    """icmp_flow_ports(): an echo's identifier as both ports, any other type (type, 0x100 | type)."""
    if is_icmp_echo(proto, icmp_type):
        return identifier, identifier
    return bswap16(icmp_type), bswap16(ICMP_TYPE_KEY_MARK | icmp_type)


ICMP_PORT_UNREACH_CODE = 3
ICMPV6_PORT_UNREACH_CODE = 4


def is_port_unreachable(pkt: Packet) -> bool:
    """is_port_unreachable()."""
    if pkt.proto == IPPROTO_ICMP:
        return pkt.icmp_type == ICMP_DEST_UNREACH and pkt.icmp_code == ICMP_PORT_UNREACH_CODE
    return pkt.icmp_type == ICMPV6_DEST_UNREACH and pkt.icmp_code == ICMPV6_PORT_UNREACH_CODE


def is_mld_source(addr: bytes) -> bool:
    """is_mld_source(): link-local (fe80::/10), or unspecified before DAD; hosts discard MLD from others."""
    return (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) or addr == ZERO_ADDR


def is_icmp_echo(proto: int, icmp_type: int) -> bool:
    """is_icmp_echo()."""
    if proto == IPPROTO_ICMP:
        return icmp_type in (ICMP_ECHO, ICMP_ECHOREPLY)
    return icmp_type in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)


def parse_l4(pkt: Packet, frame: bytes, l4: int, dgram_end: int) -> ParseResult:
    """parse_l4(): ports, TCP flags, ICMP type; a cut L4 header is malformed."""
    end = len(frame)
    pkt.l4 = l4
    pkt.l4_end = dgram_end
    if pkt.proto == IPPROTO_TCP:
        if beyond(l4 + TCP_HLEN, end, dgram_end) or (frame[l4 + 12] >> 4) < 5:
            return ParseResult.MALFORMED
        pkt.sport = raw16(frame, l4)
        pkt.dport = raw16(frame, l4 + 2)
        pkt.tcp_flags = frame[l4 + 13]
    elif pkt.proto == IPPROTO_UDP:
        if beyond(l4 + UDP_HLEN, end, dgram_end):
            return ParseResult.MALFORMED
        pkt.sport = raw16(frame, l4)
        pkt.dport = raw16(frame, l4 + 2)
    elif is_icmp_proto(pkt.proto):
        if beyond(l4 + ICMP_HLEN, end, dgram_end):
            return ParseResult.MALFORMED
        pkt.icmp_type = frame[l4]
        pkt.icmp_code = frame[l4 + 1]
        pkt.sport, pkt.dport = icmp_flow_ports(pkt.proto, pkt.icmp_type, raw16(frame, l4 + 4))
        pkt.policy_port = pkt.icmp_type
        pkt.has_l4 = True
        return ParseResult.IP
    else:
        pkt.has_l4 = True
        return ParseResult.IP
    pkt.policy_port = bswap16(pkt.dport)
    pkt.has_l4 = True
    return ParseResult.IP


def parse_ipv4(pkt: Packet, frame: bytes, l3: int) -> ParseResult:
    """parse_ipv4(): the datagram ends at tot_len (Ethernet pads short frames)."""
    end = len(frame)
    if l3 + IPV4_HLEN > end:
        return ParseResult.MALFORMED
    version, ihl = frame[l3] >> 4, frame[l3] & 0x0F
    hdr_len = ihl * 4
    tot_len = be16(frame, l3 + 2)
    if version != 4 or hdr_len < IPV4_HLEN or tot_len < hdr_len or l3 + tot_len > end:
        return ParseResult.MALFORMED

    pkt.family = C.FAMILY_IPV4
    pkt.proto = frame[l3 + 9]
    pkt.hop_limit = frame[l3 + 8]
    pkt.src = frame[l3 + 12 : l3 + 16] + bytes(12)
    pkt.dst = frame[l3 + 16 : l3 + 20] + bytes(12)

    frag = be16(frame, l3 + 6)
    if frag & (IPV4_MF | IPV4_OFFSET_MASK):
        pkt.is_fragment = True
        pkt.frag_proto = pkt.proto
        pkt.frag_id = be16(frame, l3 + 4)
        if frag & IPV4_OFFSET_MASK:
            pkt.is_later_fragment = True
            if overlaps_tcp_header(pkt.proto, (frag & IPV4_OFFSET_MASK) * 8):
                return ParseResult.MALFORMED
            return ParseResult.IP
    return parse_l4(pkt, frame, l3 + hdr_len, l3 + tot_len)


def parse_ipv6(pkt: Packet, frame: bytes, l3: int) -> ParseResult:
    """parse_ipv6(): at most MAX_IPV6_EXT_HEADERS headers walked, the last the L4 one."""
    end = len(frame)
    if l3 + IPV6_HLEN > end:
        return ParseResult.MALFORMED
    payload = be16(frame, l3 + 4)
    dgram_end = l3 + IPV6_HLEN + payload
    if frame[l3] >> 4 != 6 or payload == 0 or dgram_end > end:
        return ParseResult.MALFORMED

    pkt.family = C.FAMILY_IPV6
    pkt.hop_limit = frame[l3 + 7]
    pkt.src = frame[l3 + 8 : l3 + 24]
    pkt.dst = frame[l3 + 24 : l3 + 40]

    next_header = frame[l3 + 6]
    cursor = l3 + IPV6_HLEN
    for _ in range(C.MAX_IPV6_EXT_HEADERS):
        if next_header in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
            if beyond(cursor + IPV6_OPT_HLEN, end, dgram_end):
                return ParseResult.MALFORMED
            next_header = frame[cursor]
            cursor += (frame[cursor + 1] + 1) * 8
        elif next_header == IPPROTO_AH:
            if beyond(cursor + IPV6_OPT_HLEN, end, dgram_end):
                return ParseResult.MALFORMED
            next_header = frame[cursor]
            cursor += (frame[cursor + 1] + 2) * 4
        elif next_header == IPPROTO_FRAGMENT:
            if beyond(cursor + IPV6_FRAG_HLEN, end, dgram_end):
                return ParseResult.MALFORMED
            offset = be16(frame, cursor + 2)
            identification = be32(frame, cursor + 4)
            next_header = frame[cursor]
            cursor += IPV6_FRAG_HLEN
            # an atomic fragment (offset 0, no MF) is a whole datagram
            if offset & (IPV6_FRAG_OFFSET_MASK | IPV6_FRAG_MF):
                pkt.is_fragment = True
                pkt.frag_proto = next_header
                pkt.frag_id = identification
                if offset & IPV6_FRAG_OFFSET_MASK:
                    pkt.proto = next_header
                    pkt.is_later_fragment = True
                    if overlaps_tcp_header(next_header, offset & IPV6_FRAG_OFFSET_MASK):
                        return ParseResult.MALFORMED
                    return ParseResult.IP
        else:
            pkt.proto = next_header
            if next_header in (IPPROTO_NONE, IPPROTO_ESP):
                pkt.has_l4 = True  # nothing readable follows
                return ParseResult.IP
            return parse_l4(pkt, frame, cursor, dgram_end)
    return ParseResult.MALFORMED  # more extension headers than we walk


TCP_MIN_HLEN = 20
SNAP_HEADER = bytes.fromhex("aaaa03000000")


def overlaps_tcp_header(proto: int, offset: int) -> bool:
    """overlaps_tcp_header(): a later fragment starting inside the TCP header (RFC 1858); offset in bytes."""
    return proto == IPPROTO_TCP and offset < TCP_MIN_HLEN


def snap_wraps_ip(frame: bytes, llc: int) -> bool:
    """snap_wraps_ip(): an RFC 1042 LLC/SNAP header naming IP, ARP or a VLAN tag."""
    if llc + 8 > len(frame) or frame[llc : llc + 6] != SNAP_HEADER:
        return False
    return be16(frame, llc + 6) in (ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD)


def parse_packet(ctx: XdpContext, pkt: Packet) -> ParseResult:
    """parse_packet(): Ethernet, up to two VLAN tags (the outer gives the VID), L3."""
    frame = ctx.data
    end = len(frame)
    pkt.len = end
    if ETH_HLEN > end:
        return ParseResult.MALFORMED
    pkt.eth_dst = frame[0:ETH_ALEN]
    pkt.eth_src = frame[ETH_ALEN : 2 * ETH_ALEN]

    proto = be16(frame, 12)
    cursor = ETH_HLEN
    for i in range(2):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if cursor + VLAN_HLEN > end:
            return ParseResult.MALFORMED
        if i == 0:
            pkt.vlan = be16(frame, cursor) & VLAN_VID_MASK
        pkt.vlan_tags = i + 1
        proto = be16(frame, cursor + 2)
        cursor += VLAN_HLEN
    if proto in (ETH_P_8021Q, ETH_P_8021AD):
        return ParseResult.MALFORMED  # a third tag

    if proto == ETH_P_IP:
        return parse_ipv4(pkt, frame, cursor)
    if proto == ETH_P_IPV6:
        return parse_ipv6(pkt, frame, cursor)
    if proto == ETH_P_ARP:
        return ParseResult.ARP
    if proto in (ETH_P_LLDP, ETH_P_SLOW, ETH_P_PAE):
        return ParseResult.L2_CONTROL
    if proto < ETH_P_802_3_MIN and snap_wraps_ip(frame, cursor):
        return ParseResult.MALFORMED
    # 802.3 length field: STP BPDUs travel as LLC to 01:80:c2:00:00:00, Cisco's CDP/VTP/DTP/UDLD and PVST+ to theirs
    if proto < ETH_P_802_3_MIN and (pkt.eth_dst == STP_MAC or pkt.eth_dst in CISCO_L2_MACS):
        return ParseResult.L2_CONTROL
    return ParseResult.OTHER_ETHERTYPE


# ---- medseg_xdp.c ----


@dataclass(slots=True)
class JudgeArgs:
    """struct judge_args."""

    src_mac: bytes
    dst_mac: bytes
    src_addr: bytes
    dst_addr: bytes
    vlan: int
    policy_port: int
    family: int
    proto: int
    check_spoof: bool
    break_glass: bool
    guessed_opener_port: int = 0  # nonzero: the source is only guessed to have opened the flow, from this port


@dataclass
class Outcome:
    """What one run of the program gives."""

    action: int  # XDP_PASS / XDP_DROP
    decision: abi.Decision  # the record finish() writes, seq included
    sample: bytes | None  # the bytes captured into the sample ring, None when no sample


class ReferenceDataplane:
    """The XDP program with its maps: configuration from load(), state kept."""

    def __init__(self, maps: MapContents, pair_segments: int = C.PAIR_SEGMENTS_DEFAULT) -> None:
        self.pair_segments = pair_segments  # [tables] pair_segments of the program it models
        self.flows: dict[bytes, abi.FlowEntry] = {}
        self.frags: dict[bytes, abi.FragVerdict] = {}
        self.stats: dict[int, abi.Counter] = {}
        self.rule_hits: dict[int, abi.Counter] = {}
        self.pair_stats: dict[int, abi.Counter] = {}  # by index, as the program's array
        self.pressure: dict[int, int] = {}
        self.last_decision = abi.Decision()
        self.event_budget = [abi.EventBudget() for _ in range(C.BUDGET_MAX)]
        self.load(maps)

    def load(self, maps: MapContents) -> None:
        """Replaces the configuration maps (a policy update); state maps are kept.

        As Dataplane.apply does: a segment keeps its stats slot across updates, and a slot that
        changes owner starts from zero."""
        unknown = maps.keys() - CONFIG_MAPS.keys()
        if unknown:
            raise ValueError(f"not configuration maps: {sorted(unknown)}")
        live = live_stats_slots((abi.SegmentKey.from_buffer_copy(key), info) for key, info in getattr(self, "segments", {}).items())
        segments, new_owners = stable_stats_slots(maps.get("segments", {}), live, self.pair_segments)
        maps = {**maps, "segments": segments}
        self.pair_stats = {index: c for index, c in self.pair_stats.items() if not set(divmod(index // C.VERDICT_MAX, self.pair_segments)) & new_owners}
        tables = {name: decode_map(name, maps.get(name, {})) for name in CONFIG_MAPS}
        for name in ARRAY_MAPS:  # an array's slot is always there, zero until written
            if set(tables[name]) - {ZERO_KEY}:
                raise ValueError(f"map {name} has the one slot 0")
            tables[name].setdefault(ZERO_KEY, CONFIG_MAPS[name][1]())
        self.active_gen: dict[bytes, ctypes.c_uint32] = tables["active_gen"]
        self.settings: dict[bytes, abi.Settings] = tables["settings"]
        self.sample_budgets: dict[bytes, abi.BudgetConfig] = tables["sample_budgets"]
        self.ports: dict[bytes, abi.PortInfo] = tables["ports"]
        self.port_vlans: dict[bytes, ctypes.c_uint8] = tables["port_vlans"]
        self.devices: dict[bytes, abi.EndpointInfo] = tables["devices"]
        self.prefixes_v4: LpmTrie[abi.EndpointInfo] = LpmTrie(tables["prefixes_v4"])
        self.prefixes_v6: LpmTrie[abi.EndpointInfo] = LpmTrie(tables["prefixes_v6"])
        self.rail_hosts: dict[bytes, ctypes.c_uint32] = tables["rail_hosts"]
        self.segments: dict[bytes, abi.SegmentInfo] = tables["segments"]
        self.rules_exact: dict[bytes, abi.RuleVerdict] = tables["rules_exact"]
        self.rules: LpmTrie[abi.RuleVerdict] = LpmTrie(tables["rules"])
        self.pair_defaults: dict[bytes, abi.RuleVerdict] = tables["pair_defaults"]

    def count_pressure(self, what: int) -> None:
        """count_pressure()."""
        self.pressure[what] = self.pressure.get(what, 0) + 1

    @staticmethod
    def set_decision(d: abi.Decision, verdict: int, reason: int, rule_id: int) -> None:
        """set_decision()."""
        d.verdict = verdict
        d.reason = reason
        d.rule_id = rule_id

    @staticmethod
    def set_segments(d: abi.Decision, src: int, dst: int, pair_index: int) -> None:
        """set_segments()."""
        d.src_segment = src
        d.dst_segment = dst
        d.pair_index = pair_index
        d.flags |= C.DECISION_SEGMENTS

    def count_pair(self, d: abi.Decision, length: int) -> None:
        """count_pair(): packets and bytes by segment pair and verdict."""
        counter = self.pair_stats.setdefault(d.pair_index * C.VERDICT_MAX + d.verdict, abi.Counter())
        counter.packets += 1
        counter.bytes += length

    @staticmethod
    def want_sample(d: abi.Decision, kind: int) -> None:
        """want_sample(): a DHCP sample, decided first, outranks the flow's sampling."""
        if d.sample_kind == C.SAMPLE_NONE:
            d.sample_kind = kind

    # ---- identity ----

    def identify(
        self, gen: int, vlan: int, mac: bytes, addr: bytes, family: int
    ) -> abi.EndpointInfo:
        """identify(): group MAC pseudo-segments, then the device, then the prefix."""
        if mac[0] & 1:
            broadcast = mac == b"\xff" * ETH_ALEN
            segment = C.SEGMENT_BROADCAST if broadcast else C.SEGMENT_MULTICAST
            return abi.EndpointInfo(segment=segment, flags=0, ifindex=0)

        device_key = abi.DeviceKey(gen=gen)
        device_key.mac[:] = mac
        found = self.devices.get(bytes(device_key))
        if found is not None:
            return found

        # A VLAN-specific prefix first, then the prefixes valid on any VLAN.
        if family == C.FAMILY_IPV4:
            key4 = abi.Prefix4Key(prefixlen=32 + 16 + 32, gen=gen, vlan=vlan)
            key4.addr[:] = addr[:4]
            found = self.prefixes_v4.lookup(bytes(key4))
            if found is None and vlan:
                key4.vlan = 0
                found = self.prefixes_v4.lookup(bytes(key4))
        else:
            key6 = abi.Prefix6Key(prefixlen=32 + 16 + 128, gen=gen, vlan=vlan)
            key6.addr[:] = addr
            found = self.prefixes_v6.lookup(bytes(key6))
            if found is None and vlan:
                key6.vlan = 0
                found = self.prefixes_v6.lookup(bytes(key6))
        if found is not None:
            return found
        return abi.EndpointInfo(segment=C.SEGMENT_UNASSIGNED, flags=0, ifindex=0)

    def lookup_segment(self, gen: int, segment: int) -> abi.SegmentInfo:
        """lookup_segment(): a segment without an entry monitors and allows."""
        info = self.segments.get(bytes(abi.SegmentKey(gen=gen, segment=segment)))
        if info is not None:
            return info
        return abi.SegmentInfo(
            default_rule_id=0, mode=C.MODE_MONITOR, default_action=C.ACTION_ALLOW, flags=0, stats_slot=0
        )

    @staticmethod
    def verdict_of(action: int, enforce: bool) -> int:
        """verdict_of()."""
        if action == C.ACTION_ALLOW:
            return C.VERDICT_PASS
        if action == C.ACTION_DROP and enforce:
            return C.VERDICT_DROP
        return C.VERDICT_AUDIT

    def ingress_port(self, ctx: XdpContext) -> abi.PortInfo | None:  # type: ignore[valid-type]
        """ingress_port(): the ingress port's entry (the C array's zeros: None)."""
        return self.ports.get(bytes(ctypes.c_uint32(ctx.ingress_ifindex)))

    def vlan_for_identity(self, ctx: XdpContext, pkt: Packet) -> int:
        """vlan_for_identity(): the outer tag's VID, else the ingress port's PVID."""
        if pkt.vlan:
            return pkt.vlan
        port = self.ingress_port(ctx)
        return port.pvid if port is not None else 0

    def vlan_allowed(self, ctx: XdpContext, pkt: Packet, s: abi.Settings) -> bool:
        """vlan_allowed(): a port with allowed_vlans takes tagged frames of those VLANs only, and no second tag."""
        if not pkt.vlan_tags or not s.flags & C.SETTING_VLAN_FILTER:
            return True
        port = self.ingress_port(ctx)
        if port is None or not port.vlan_filter:
            return True
        if pkt.vlan_tags > 1:
            return False
        if not pkt.vlan:
            return True
        return bytes(abi.PortVlanKey(ifindex=ctx.ingress_ifindex, vlan=pkt.vlan)) in self.port_vlans

    # ---- policy ----

    def resolve_endpoints(
        self, gen: int, a: JudgeArgs, d: abi.Decision
    ) -> tuple[bool, abi.EndpointInfo, abi.SegmentInfo, abi.SegmentInfo]:
        """resolve_endpoints(): both segments into d; (enforce, src, src_info, dst_info)."""
        src = self.identify(gen, a.vlan, a.src_mac, a.src_addr, a.family)
        dst = self.identify(gen, a.vlan, a.dst_mac, a.dst_addr, a.family)
        src_info = self.lookup_segment(gen, src.segment)
        dst_info = self.lookup_segment(gen, dst.segment)
        self.set_segments(d, src.segment, dst.segment, src_info.stats_slot * self.pair_segments + dst_info.stats_slot)
        enforce = not a.break_glass and (src_info.mode == C.MODE_ENFORCE or dst_info.mode == C.MODE_ENFORCE)
        return enforce, src, src_info, dst_info

    def judge(self, ctx: XdpContext, gen: int, a: JudgeArgs, d: abi.Decision) -> None:
        """judge(): spoofing, mgmt rail (a flow the management segment opens, or one towards it with management = true),
        the most specific rule, pair default, segment default."""
        enforce, src, src_info, dst_info = self.resolve_endpoints(gen, a, d)

        if a.check_spoof and src.ifindex and src.ifindex != ctx.ingress_ifindex:
            verdict = C.VERDICT_DROP if enforce else C.VERDICT_AUDIT
            self.set_decision(d, verdict, C.REASON_SPOOFED, 0)
            return
        if src_info.flags & C.SEGMENT_MGMT or dst_info.flags & C.SEGMENT_MGMT_INBOUND:
            # the rail holds on any port: a guessed opener opened it only if the other end listens
            implausible = a.guessed_opener_port and not listens_at_dst(a.guessed_opener_port, a.policy_port)
            self.set_decision(d, C.VERDICT_DROP if implausible else C.VERDICT_PASS, C.REASON_RAIL_MGMT, 0)
            return

        exact_key = abi.RuleExactKey(gen=gen, src_segment=d.src_segment, dst_segment=d.dst_segment, proto=a.proto, port=a.policy_port)
        rule = self.rules_exact.get(bytes(exact_key))
        if rule is None:
            rule_key = abi.RuleKey(
                prefixlen=96,
                gen=gen,
                src_segment=d.src_segment,
                dst_segment=d.dst_segment,
                proto=a.proto,
                port_be=bswap16(a.policy_port),
            )
            rule = self.rules.lookup(bytes(rule_key))
        if rule is not None:
            self.set_decision(d, self.verdict_of(rule.action, enforce), C.REASON_RULE, rule.rule_id)
            return
        pair_key = abi.PairKey(gen=gen, src_segment=d.src_segment, dst_segment=d.dst_segment)
        rule = self.pair_defaults.get(bytes(pair_key))
        if rule is not None:
            self.set_decision(
                d, self.verdict_of(rule.action, enforce), C.REASON_PAIR_DEFAULT, rule.rule_id
            )
            return
        src_verdict = self.verdict_of(src_info.default_action, enforce and src_info.mode == C.MODE_ENFORCE)
        dst_verdict = self.verdict_of(dst_info.default_action, enforce and dst_info.mode == C.MODE_ENFORCE)
        if verdict_rank(dst_verdict) > verdict_rank(src_verdict):
            self.set_decision(d, dst_verdict, C.REASON_SEGMENT_DEFAULT, dst_info.default_rule_id)
        else:
            self.set_decision(d, src_verdict, C.REASON_SEGMENT_DEFAULT, src_info.default_rule_id)

    # ---- flows ----

    @staticmethod
    def make_flow_key(pkt: Packet, vlan: int, ports: tuple[int, int] | None = None) -> tuple[abi.FlowKey, bool]:
        """make_flow_key(): the normalised key (identity VLAN) of the packet's flow, or of the flow between its
        addresses and ports (raw sport, dport), and whether the sender is its lo endpoint."""
        sport, dport = ports if ports is not None else (pkt.sport, pkt.dport)
        src_words, dst_words = struct.unpack("<4I", pkt.src), struct.unpack("<4I", pkt.dst)
        for src_word, dst_word in zip(src_words, dst_words, strict=True):
            if src_word != dst_word:
                src_is_lo = src_word < dst_word
                break
        else:
            src_is_lo = sport <= dport
        key = abi.FlowKey(proto=pkt.proto, family=pkt.family, vlan=vlan)
        if src_is_lo:
            key.addr_lo[:] = src_words
            key.addr_hi[:] = dst_words
            key.port_lo = sport
            key.port_hi = dport
        else:
            key.addr_lo[:] = dst_words
            key.addr_hi[:] = src_words
            key.port_lo = dport
            key.port_hi = sport
        return key, src_is_lo

    def tftp_transfer(self, pkt: Packet, vlan: int, gen: int, d: abi.Decision) -> bool:
        """tftp_transfer(): a UDP flow from a host to the port that sent it a request to 69 (RFC 1350) takes the
        request's decision over a judgement that did not pass it (unless it found the sender spoofed), when the
        table holds the request under gen between the same MACs."""
        tftp = bswap16(TFTP_PORT)
        if d.verdict == C.VERDICT_PASS or d.reason == C.REASON_SPOOFED:
            return False
        if pkt.proto != IPPROTO_UDP or tftp in (pkt.sport, pkt.dport):
            return False
        request, server_is_lo = self.make_flow_key(pkt, vlan, (tftp, pkt.dport))
        e = self.flows.get(bytes(request))
        if (e is None or e.gen != gen or e.policy_port != TFTP_PORT or e.initiator_is_lo == server_is_lo
                or not (self.same_ends(e, pkt, server_is_lo) or self.same_identity(e, pkt, server_is_lo, gen))):
            return False
        self.take_decision(d, e, C.REASON_RELATED_TFTP)
        return True

    def take_decision(self, d: abi.Decision, e: abi.FlowEntry, reason: int) -> None:  # type: ignore[valid-type]
        """take_decision(): d takes the decision an entry holds, for this reason."""
        self.set_decision(d, e.verdict, reason, e.rule_id)
        self.set_segments(d, e.src_segment, e.dst_segment, e.pair_index)

    @staticmethod
    def same_ends(e: abi.FlowEntry, pkt: Packet, src_is_lo: bool) -> bool:  # type: ignore[valid-type]
        """same_ends(): the packet travels between the MACs the flow was judged with."""
        lo, hi = (pkt.eth_src, pkt.eth_dst) if src_is_lo else (pkt.eth_dst, pkt.eth_src)
        return bytes(e.mac_lo) == lo and bytes(e.mac_hi) == hi

    def same_identity(self, e: abi.FlowEntry, pkt: Packet, src_is_lo: bool, gen: int) -> bool:  # type: ignore[valid-type]
        """same_identity(): one end from another MAC, neither MAC a device's (a gateway pair): identified by address either way."""
        lo, hi = (pkt.eth_src, pkt.eth_dst) if src_is_lo else (pkt.eth_dst, pkt.eth_src)
        if bytes(e.mac_lo) == lo:
            seen, judged = hi, bytes(e.mac_hi)
        elif bytes(e.mac_hi) == hi:
            seen, judged = lo, bytes(e.mac_lo)
        else:
            return False
        return not (seen[0] | judged[0]) & 1 and not self.is_device(gen, seen) and not self.is_device(gen, judged)

    def is_device(self, gen: int, mac: bytes) -> bool:
        key = abi.DeviceKey(gen=gen)
        key.mac[:] = mac
        return bytes(key) in self.devices

    @staticmethod
    def account(e: abi.FlowEntry, direction: int, pkt: Packet, now: int) -> None:
        """account(): per-direction packets and bytes, last seen, OR of TCP flags."""
        e.packets[direction] += 1
        e.bytes[direction] += pkt.len
        e.last_seen_ns = now
        e.tcp_flags[direction] |= pkt.tcp_flags

    @staticmethod
    def flow_sample_kind(e: abi.FlowEntry, s: abi.Settings) -> int:
        """flow_sample_kind(): the first K packets, then every N-th, by the flow's count."""
        total = e.packets[0] + e.packets[1]
        if total <= s.sample_first_packets:
            return C.SAMPLE_FIRST_PACKETS
        if s.sample_one_in_n and total % s.sample_one_in_n == 0:
            return C.SAMPLE_ONE_IN_N
        return C.SAMPLE_NONE

    @staticmethod
    def fill_judge_args(pkt: Packet, s: abi.Settings, vlan: int, reverse: bool, policy_port: int) -> JudgeArgs:
        """fill_judge_args(): the packet's direction, or reversed (no spoofing check then)."""
        source, destination = (pkt.eth_src, pkt.src), (pkt.eth_dst, pkt.dst)
        if reverse:
            source, destination = destination, source
        return JudgeArgs(
            src_mac=source[0],
            dst_mac=destination[0],
            src_addr=source[1],
            dst_addr=destination[1],
            vlan=vlan,
            policy_port=policy_port,
            family=pkt.family,
            proto=pkt.proto,
            check_spoof=not reverse,
            break_glass=bool(s.flags & C.SETTING_BREAK_GLASS),
        )

    def handle_flow(
        self,
        ctx: XdpContext,
        gen: int,
        pkt: Packet,
        s: abi.Settings,
        now: int,
        d: abi.Decision,
    ) -> None:
        """handle_flow(): a hit, a stale hit (re-judged), or a new flow."""
        vlan = self.vlan_for_identity(ctx, pkt)
        key, src_is_lo = self.make_flow_key(pkt, vlan)
        key_bytes = bytes(key)
        e = self.flows.get(key_bytes)

        idle_s = s.tcp_idle_timeout_s if pkt.proto == IPPROTO_TCP else s.idle_timeout_s
        if e is not None and idle_s and now - e.last_seen_ns > idle_s * NSEC_PER_SEC:  # signed, as the C (s64)
            del self.flows[key_bytes]  # idle: judged anew
            e = None
        if e is not None:
            direction = 0 if src_is_lo == e.initiator_is_lo else 1
            if direction and pkt.proto == IPPROTO_TCP and pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN:
                # a new connection from the responder's side is no reply: judge it
                self.judge(ctx, gen, self.fill_judge_args(pkt, s, vlan, False, pkt.policy_port), d)
                return
            ends = self.same_ends(e, pkt, src_is_lo)
            # replies only: the initiator's packets are checked for spoofing, by port, which an entry does not keep
            if e.gen == gen and (ends or (direction and self.same_identity(e, pkt, src_is_lo, gen))):
                self.take_decision(d, e, C.REASON_REPLY if direction else C.REASON_ESTABLISHED)
            else:
                # Re-judge the initiator's direction under the active policy and this packet's MACs.
                args = self.fill_judge_args(pkt, s, vlan, bool(direction), e.policy_port)
                args.check_spoof = not ends and not direction
                self.judge(ctx, gen, args, d)
                d.flags |= C.DECISION_REVALIDATED
                if not ends:  # this packet's judgement; the entry stays
                    if d.verdict != C.VERDICT_DROP:
                        self.account(e, direction, pkt, now)
                    return
                picked_up = pkt.proto == IPPROTO_TCP and not (e.tcp_flags[0] | e.tcp_flags[1]) & TCP_FLAG_SYN
                if d.verdict == C.VERDICT_DROP or (d.verdict == C.VERDICT_AUDIT and picked_up):
                    del self.flows[key_bytes]  # a pickup's initiator was a guess: judged from both ends at the next packet
                    return
                e.verdict = d.verdict
                e.reason = d.reason
                e.rule_id = d.rule_id
                e.src_segment = d.src_segment
                e.dst_segment = d.dst_segment
                e.pair_index = d.pair_index
                e.gen = gen
            self.account(e, direction, pkt, now)
            self.want_sample(d, self.flow_sample_kind(e, s))
            return

        args = self.fill_judge_args(pkt, s, vlan, False, pkt.policy_port)
        self.judge(ctx, gen, args, d)
        initiator_is_lo = src_is_lo
        initiator_port = pkt.policy_port

        # Mid-stream pickup: TCP without SYN is judged from the other side too,
        # and the more permissive answer is kept (pass > audit > drop); on a tie,
        # the end that listens is the responder.
        if (
            pkt.proto == IPPROTO_TCP
            and pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_ACK
            and d.verdict != C.VERDICT_PASS
            and d.reason != C.REASON_SPOOFED
        ):
            other = abi.Decision()
            reply_port = bswap16(pkt.sport)
            args = self.fill_judge_args(pkt, s, vlan, True, reply_port)
            args.guessed_opener_port = pkt.policy_port
            self.judge(ctx, gen, args, other)
            stricter = verdict_rank(other.verdict) - verdict_rank(d.verdict)
            if stricter < 0 or (stricter == 0 and not listens_at_dst(reply_port, pkt.policy_port)):
                self.set_decision(d, other.verdict, other.reason, other.rule_id)
                self.set_segments(d, other.src_segment, other.dst_segment, other.pair_index)
                initiator_is_lo = not src_is_lo
                initiator_port = reply_port
            d.flags |= C.DECISION_MIDSTREAM
        if self.tftp_transfer(pkt, vlan, gen, d):
            initiator_is_lo = not src_is_lo  # the request's client opened it, on port 69
            initiator_port = TFTP_PORT
        if d.verdict == C.VERDICT_DROP:
            return  # denied flows get no entry: a scan cannot evict

        fresh = abi.FlowEntry(
            first_seen_ns=now,
            last_seen_ns=now,
            gen=gen,
            rule_id=d.rule_id,
            src_segment=d.src_segment,
            dst_segment=d.dst_segment,
            verdict=d.verdict,
            reason=d.reason,
            initiator_is_lo=initiator_is_lo,
            flags=d.flags & C.DECISION_MIDSTREAM,
            policy_port=initiator_port,
            pair_index=d.pair_index,
        )
        fresh.mac_lo[:], fresh.mac_hi[:] = (pkt.eth_src, pkt.eth_dst) if src_is_lo else (pkt.eth_dst, pkt.eth_src)
        direction = 0 if src_is_lo == initiator_is_lo else 1
        fresh.packets[direction] = 1
        fresh.bytes[direction] = pkt.len
        fresh.tcp_flags[direction] = pkt.tcp_flags
        # The key was just missing, so the insert succeeds (the race and
        # failure branches of the C are kernel-only).
        self.flows[key_bytes] = fresh
        d.flags |= C.DECISION_NEW_FLOW
        self.want_sample(d, self.flow_sample_kind(fresh, s))

    # ---- rails, fragments, ICMP errors ----

    def is_rail_host(self, gen: int, family: int, addr: bytes, flag: int) -> bool:
        """is_rail_host(): addr (a packet's src or dst) is a configured host with this RAIL_HOST_* flag."""
        key = abi.RailHostKey(gen=gen, family=family)
        key.addr[:] = addr
        flags = self.rail_hosts.get(bytes(key))
        return flags is not None and bool(flags.value & flag)

    def trusted_source(self, ctx: XdpContext, gen: int, pkt: Packet, s: abi.Settings, listed: int, host_flag: int) -> bool:
        """trusted_source(): through a trusted port (where any are named) and from a listed host (where any are listed)."""
        if s.flags & C.SETTING_TRUSTED_PORTS:
            port = self.ingress_port(ctx)
            if port is None or not port.trusted:
                return False
        return not s.flags & listed or self.is_rail_host(gen, pkt.family, pkt.src, host_flag)

    def rails(self, ctx: XdpContext, gen: int, pkt: Packet, s: abi.Settings, d: abi.Decision) -> bool:
        """rails(): DHCP and ND/MLD/RA pass under any policy; True when one decided."""
        if not pkt.has_l4:
            return False
        if pkt.proto == IPPROTO_UDP:
            direction = dhcp_direction(pkt.family, pkt.sport, pkt.dport)
            if direction == DHCP_TO_SERVER:
                d.sample_kind = C.SAMPLE_DHCP
                self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_DHCP, 0)
                return True
            if direction == DHCP_TO_CLIENT:
                d.sample_kind = C.SAMPLE_DHCP
                if self.trusted_source(ctx, gen, pkt, s, C.SETTING_DHCP_SERVERS_LISTED, C.RAIL_HOST_DHCP_SERVER):
                    self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_DHCP, 0)
                    return True
            return False
        if pkt.family == C.FAMILY_IPV4 and pkt.proto == IPPROTO_IGMP:
            # link-local, to a group (224.0.0.0/4), in a multicast frame (a unicast frame reaches one device only)
            if pkt.hop_limit != IGMP_TTL or pkt.dst[0] & 0xF0 != 0xE0 or not pkt.eth_dst[0] & 1:
                return False
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_IGMP, 0)
            d.sample_kind = C.SAMPLE_FLOWLESS
            return True
        if pkt.family != C.FAMILY_IPV6 or pkt.proto != IPPROTO_ICMPV6:
            return False

        icmp_type = pkt.icmp_type
        if (
            icmp_type in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT, ND_ROUTER_SOLICIT)
            and pkt.hop_limit == ND_HOP_LIMIT
        ):
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_ND, 0)
        elif (
            icmp_type in (MLD_QUERY, MLD_REPORT, MLD_DONE, MLD2_REPORT)
            and pkt.hop_limit == MLD_HOP_LIMIT
            and pkt.dst[0] == 0xFF
            and pkt.eth_dst[0] & 1
            and is_mld_source(pkt.src)
        ):  # to a group, in a multicast frame, from a link-local or unspecified source
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_ND, 0)
        elif (
            icmp_type == ND_ROUTER_ADVERT
            and pkt.hop_limit == ND_HOP_LIMIT
            and self.trusted_source(ctx, gen, pkt, s, C.SETTING_ROUTERS_LISTED, C.RAIL_HOST_ROUTER)
        ):
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_RA, 0)
        else:
            return False
        d.sample_kind = C.SAMPLE_FLOWLESS
        return True

    def make_frag_key(self, ctx: XdpContext, pkt: Packet) -> abi.FragKey:
        """make_frag_key(): (src, dst, id, protocol, family, identity VLAN)."""
        key = abi.FragKey(id=pkt.frag_id, proto=pkt.frag_proto, family=pkt.family, vlan=self.vlan_for_identity(ctx, pkt))
        key.src[:] = pkt.src
        key.dst[:] = pkt.dst
        return key

    def later_fragment(self, ctx: XdpContext, gen: int, pkt: Packet, s: abi.Settings, d: abi.Decision) -> None:
        """later_fragment(): the first fragment's verdict, else an orphan (drop where enforced)."""
        first = self.frags.get(bytes(self.make_frag_key(ctx, pkt)))
        if first is not None and (first.gen == gen or (first.gen + 1) & 0xFFFFFFFF == gen):  # this or the previous generation
            self.set_decision(d, first.verdict, C.REASON_FRAGMENT, first.rule_id)
            if first.flags & C.DECISION_SEGMENTS:  # not after a rail
                self.set_segments(d, first.src_segment, first.dst_segment, first.pair_index)
            return

        args = self.fill_judge_args(pkt, s, self.vlan_for_identity(ctx, pkt), False, 0)
        enforce, _, _, _ = self.resolve_endpoints(gen, args, d)
        verdict = C.VERDICT_DROP if enforce else C.VERDICT_AUDIT
        self.set_decision(d, verdict, C.REASON_FRAGMENT_ORPHAN, 0)

    def record_first_fragment(self, ctx: XdpContext, pkt: Packet, d: abi.Decision) -> None:
        """record_first_fragment(): the decision, for the fragments that follow."""
        self.frags[bytes(self.make_frag_key(ctx, pkt))] = abi.FragVerdict(
            gen=d.gen,
            rule_id=d.rule_id,
            src_segment=d.src_segment,
            dst_segment=d.dst_segment,
            verdict=d.verdict,
            reason=d.reason,
            flags=d.flags & C.DECISION_SEGMENTS,
            pair_index=d.pair_index,
        )

    @staticmethod
    def is_icmp_error(proto: int, icmp_type: int) -> bool:
        """is_icmp_error()."""
        if proto == IPPROTO_ICMP:
            return icmp_type in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB)
        return ICMPV6_DEST_UNREACH <= icmp_type <= ICMPV6_PARAMPROB

    def related_icmp(self, ctx: XdpContext, gen: int, pkt: Packet, s: abi.Settings, vlan: int, d: abi.Decision) -> bool:
        """related_icmp(): an ICMP error quoting a flow in the table takes its verdict."""
        frame = ctx.data
        end = len(frame)
        quoted = pkt.l4 + 8
        inner = Packet()

        if pkt.family == C.FAMILY_IPV4:
            if beyond(quoted + IPV4_HLEN, end, pkt.l4_end) or frame[quoted] & 0x0F < 5:
                return False
            l4 = quoted + (frame[quoted] & 0x0F) * 4
            inner.proto = frame[quoted + 9]
            inner.src = frame[quoted + 12 : quoted + 16] + bytes(12)
            inner.dst = frame[quoted + 16 : quoted + 20] + bytes(12)
        else:
            if beyond(quoted + IPV6_HLEN, end, pkt.l4_end):
                return False
            l4 = quoted + IPV6_HLEN
            inner.proto = frame[quoted + 6]
            inner.src = frame[quoted + 8 : quoted + 24]
            inner.dst = frame[quoted + 24 : quoted + 40]
        # RFC 792 guarantees 8 bytes of the quoted L4 header
        if beyond(l4 + 8, end, pkt.l4_end):
            return False
        if inner.proto in (IPPROTO_TCP, IPPROTO_UDP):
            inner.sport = raw16(frame, l4)
            inner.dport = raw16(frame, l4 + 2)
        elif is_icmp_proto(inner.proto):
            inner.sport, inner.dport = icmp_flow_ports(inner.proto, frame[l4], raw16(frame, l4 + 4))
        else:
            return False
        if inner.src != pkt.dst:
            return False  # an error goes back to the sender of the packet it quotes
        if (
            s.flags & C.SETTING_ROUTERS_LISTED
            and inner.dst != pkt.src
            and not self.trusted_source(ctx, gen, pkt, s, C.SETTING_ROUTERS_LISTED, C.RAIL_HOST_ROUTER)
        ):
            return False  # ... and comes from its destination, or from a listed router
        dhcp = dhcp_direction(pkt.family, inner.sport, inner.dport) if inner.proto == IPPROTO_UDP else NOT_DHCP
        if dhcp:
            # DHCP passes on a rail without a flow entry: one of its errors is plumbing too, a client's port
            # unreachable about a server's reply, back to that (listed) server; any other meets the policy
            if (
                dhcp != DHCP_TO_CLIENT
                or not is_port_unreachable(pkt)
                or (s.flags & C.SETTING_DHCP_SERVERS_LISTED and not self.is_rail_host(gen, pkt.family, pkt.dst, C.RAIL_HOST_DHCP_SERVER))
            ):
                return False
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RELATED_ICMP, 0)
            return True
        inner.family = pkt.family

        key, _ = self.make_flow_key(inner, vlan)
        e = self.flows.get(bytes(key))
        if e is None or e.gen != gen:  # a flow of an earlier generation vouches for nothing
            return False
        self.take_decision(d, e, C.REASON_RELATED_ICMP)
        return True

    def handle_ip(
        self,
        ctx: XdpContext,
        gen: int,
        pkt: Packet,
        s: abi.Settings,
        now: int,
        d: abi.Decision,
    ) -> None:
        """handle_ip(): rails, later fragments, related ICMP errors, then flows."""
        if self.rails(ctx, gen, pkt, s, d):
            return
        if pkt.is_later_fragment:
            self.later_fragment(ctx, gen, pkt, s, d)
            return
        if (
            is_icmp_proto(pkt.proto)
            and self.is_icmp_error(pkt.proto, pkt.icmp_type)
            and self.related_icmp(ctx, gen, pkt, s, self.vlan_for_identity(ctx, pkt), d)
        ):
            return
        self.handle_flow(ctx, gen, pkt, s, now, d)

    # ---- the single exit ----

    def take_token(self, budget: int, now: int) -> int:
        """take_token(): a token of a bucket (BUDGET_*): 1 taken, 0 over the rate, -1 the bucket's samples are off."""
        cfg = self.sample_budgets.get(bytes(ctypes.c_uint32(budget)), abi.BudgetConfig())
        if not cfg.per_sec:
            return -1
        if cfg.per_sec == C.EVENTS_UNLIMITED:
            return 1
        b = self.event_budget[budget]
        elapsed = (now - b.last_refill_ns) & U64_MASK
        if elapsed >= NSEC_PER_SEC:
            b.tokens = cfg.burst
            b.last_refill_ns = now
        else:
            add = (elapsed * cfg.per_sec & U64_MASK) // NSEC_PER_SEC
            if add:
                b.tokens = (b.tokens + add) & U64_MASK
                if b.tokens > cfg.burst:
                    b.tokens = cfg.burst
                b.last_refill_ns = (b.last_refill_ns + add * NSEC_PER_SEC // cfg.per_sec) & U64_MASK  # the rest carries over
        if not b.tokens:
            return 0
        b.tokens -= 1
        return 1

    def pace_sample(self, d: abi.Decision, now: int) -> None:
        """pace_sample(): a sample no flow paces goes out within its bucket's rate; what it holds back is counted.

        A dropped DHCP packet the DHCP bucket holds back is still a drop event."""
        if d.sample_kind == C.SAMPLE_DHCP:
            token = self.take_token(C.BUDGET_DHCP, now)
            if token > 0:
                return
            if token == 0:
                self.count_pressure(C.PRESSURE_DHCP_RATE_LIMITED)
            if d.verdict != C.VERDICT_DROP:
                d.sample_kind = C.SAMPLE_NONE
                return
            d.sample_kind = C.SAMPLE_DROP_EVENT
        if d.sample_kind not in (C.SAMPLE_DROP_EVENT, C.SAMPLE_FLOWLESS):
            return
        token = self.take_token(C.BUDGET_EVENTS, now)
        if token > 0:
            return
        if token == 0:
            self.count_pressure(C.PRESSURE_EVENT_RATE_LIMITED)
        d.sample_kind = C.SAMPLE_NONE

    @staticmethod
    def emit_sample(ctx: XdpContext, pkt: Packet, s: abi.Settings) -> bytes:
        """emit_sample(): the captured bytes (the ring buffer always has room here)."""
        snaplen = C.SAMPLE_SNAPLEN
        cap = s.snaplen if s.snaplen and s.snaplen < snaplen else snaplen
        if cap > pkt.len:
            cap = pkt.len
        cap = (((cap - 1) & U32_MASK) & (snaplen - 1)) + 1
        # bpf_xdp_load_bytes() fails past the frame's end: captured_len 0
        return ctx.data[:cap] if cap <= len(ctx.data) else b""

    def finish(
        self,
        ctx: XdpContext,
        pkt: Packet,
        d: abi.Decision,
        s: abi.Settings,
        now: int,
    ) -> Outcome:
        """finish(): counters, first fragments, samples, the decision record."""
        counter = self.stats.setdefault(d.verdict * C.REASON_MAX + d.reason, abi.Counter())
        counter.packets += 1
        counter.bytes += pkt.len
        rule = d.rule_id
        if rule and rule < C.MAX_RULE_IDS:
            counter = self.rule_hits.setdefault(rule, abi.Counter())
            counter.packets += 1
            counter.bytes += pkt.len
        if d.flags & C.DECISION_SEGMENTS:
            self.count_pair(d, pkt.len)
        if pkt.is_fragment and not pkt.is_later_fragment:
            self.record_first_fragment(ctx, pkt, d)

        if d.sample_kind == C.SAMPLE_NONE and d.verdict == C.VERDICT_DROP:
            d.sample_kind = C.SAMPLE_DROP_EVENT
        self.pace_sample(d, now)
        sample = None
        if d.sample_kind != C.SAMPLE_NONE:
            sample = self.emit_sample(ctx, pkt, s)

        if s.flags & C.SETTING_RECORD_DECISION:
            d.seq = self.last_decision.seq + 1
            self.last_decision = abi.Decision.from_buffer_copy(d)
        action = XDP_DROP if d.verdict == C.VERDICT_DROP else XDP_PASS
        return Outcome(action=action, decision=d, sample=sample)

    def run(self, frame: bytes, ingress_ifindex: int, now_ns: int = 0) -> Outcome:
        """xdp_medseg(): judge one frame that came in on ingress_ifindex at now_ns."""
        ctx = XdpContext(data=bytes(frame), ingress_ifindex=ingress_ifindex)
        pkt = Packet()
        d = abi.Decision(gen=self.active_gen[ZERO_KEY].value)
        s = self.settings[ZERO_KEY]
        now = now_ns

        result = parse_packet(ctx, pkt)
        if result != ParseResult.MALFORMED and not self.vlan_allowed(ctx, pkt, s):
            verdict = C.VERDICT_AUDIT if s.flags & C.SETTING_BREAK_GLASS else C.VERDICT_DROP
            self.set_decision(d, verdict, C.REASON_VLAN_NOT_ALLOWED, 0)
            return self.finish(ctx, pkt, d, s, now)
        if result == ParseResult.IP:
            self.handle_ip(ctx, d.gen, pkt, s, now, d)
        elif result == ParseResult.ARP:
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_ARP, 0)
            d.sample_kind = C.SAMPLE_FLOWLESS
        elif result == ParseResult.L2_CONTROL:
            self.set_decision(d, C.VERDICT_PASS, C.REASON_RAIL_L2_CONTROL, 0)
        elif result == ParseResult.OTHER_ETHERTYPE:
            drop = s.flags & C.SETTING_DROP_UNKNOWN_ETHERTYPE
            verdict = C.VERDICT_DROP if drop else C.VERDICT_PASS
            self.set_decision(d, verdict, C.REASON_UNSUPPORTED_ETHERTYPE, 0)
            d.sample_kind = C.SAMPLE_FLOWLESS
        else:
            self.set_decision(d, C.VERDICT_DROP, C.REASON_MALFORMED, 0)
        return self.finish(ctx, pkt, d, s, now)
