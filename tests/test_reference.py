"""The reference dataplane (medseg_xdp/reference.py) on hand-built frames.

Pure Python, no root: each test builds the configuration maps with the small
builders below, runs frames through ReferenceDataplane and checks the
decision record, the counters and the flow and fragment tables.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from dataclasses import dataclass

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Solicit
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLReport,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrFragment,
)
from scapy.layers.l2 import ARP, LLC, STP, Dot1Q, Dot3, Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from medseg_xdp import abi
from medseg_xdp.policy_image import segment_name_hash
from medseg_xdp.reference import (
    CONFIG_MAPS,
    XDP_DROP,
    XDP_PASS,
    ZERO_KEY,
    C,
    LpmTrie,
    MapContents,
    Outcome,
    Packet,
    ReferenceDataplane,
)

GEN = 1
CLINICAL, SERVERS, BEYOND_V10, BEYOND_ANY, BEYOND_ANY_24, MGMT = 10, 20, 30, 40, 50, 60
ALLOW, DROP, AUDIT = C.ACTION_ALLOW, C.ACTION_DROP, C.ACTION_AUDIT
MONITOR, ENFORCE = C.MODE_MONITOR, C.MODE_ENFORCE
PASS_, DROP_, AUDIT_ = C.VERDICT_PASS, C.VERDICT_DROP, C.VERDICT_AUDIT


@dataclass(frozen=True)
class Host:
    mac: str
    ip4: str
    ip6: str
    port: int  # ifindex of the bridge port it is behind


CLIENT = Host("02:00:00:00:00:01", "10.0.10.1", "fd00:10::1", 1)
SERVER = Host("02:00:00:00:00:02", "10.0.20.2", "fd00:20::2", 2)
ROUTER = Host("02:00:00:00:00:fe", "10.0.0.254", "fe80::fe", 2)  # not a device


def u32(value: int) -> bytes:
    return bytes(ctypes.c_uint32(value))


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """A port range as (port, matched bits) prefixes."""
    prefixes = []
    while lo <= hi:
        size, bits = 1, 16
        while bits and lo % (2 * size) == 0 and lo + 2 * size - 1 <= hi:
            size, bits = 2 * size, bits - 1
        prefixes.append((lo, bits))
        lo += size
    return prefixes


class Policy:
    """Builds the configuration maps of one generation."""

    def __init__(self, gen: int = GEN) -> None:
        self.gen = gen
        self.maps: MapContents = {name: {} for name in CONFIG_MAPS}
        self.maps["active_gen"][ZERO_KEY] = u32(gen)
        self.settings()

    def settings(
        self,
        *,
        first: int = 0,
        one_in_n: int = 0,
        events_per_sec: int = C.EVENTS_UNLIMITED,
        burst: int = 0,
        flags: int = 0,
        snaplen: int = 0,
        idle_timeout_s: int = 0,
        dhcp_per_sec: int = C.EVENTS_UNLIMITED,
        dhcp_burst: int = 0,
    ) -> Policy:
        value = abi.Settings(
            sample_first_packets=first,
            sample_one_in_n=one_in_n,
            flags=flags,
            snaplen=snaplen,
            idle_timeout_s=idle_timeout_s,
        )
        self.maps["settings"][ZERO_KEY] = bytes(value)
        for budget, per_sec, depth in ((C.BUDGET_EVENTS, events_per_sec, burst), (C.BUDGET_DHCP, dhcp_per_sec, dhcp_burst)):
            self.maps["sample_budgets"][bytes(ctypes.c_uint32(budget))] = bytes(abi.BudgetConfig(per_sec=per_sec, burst=depth))
        return self

    def port(self, ifindex: int, pvid: int) -> Policy:
        self.maps["ports"][bytes(ctypes.c_uint32(ifindex))] = bytes(abi.PortInfo(pvid=pvid))
        return self

    def device(self, host: Host, segment: int, *, bound: bool = True) -> Policy:
        key = abi.DeviceKey(gen=self.gen)
        key.mac[:] = bytes.fromhex(host.mac.replace(":", ""))
        value = abi.EndpointInfo(segment=segment, ifindex=host.port if bound else 0)
        self.maps["devices"][bytes(key)] = bytes(value)
        return self

    def prefix(self, network: str, segment: int, *, vlan: int = 0) -> Policy:
        net = ipaddress.ip_network(network)
        key_type, name = (
            (abi.Prefix4Key, "prefixes_v4") if net.version == 4 else (abi.Prefix6Key, "prefixes_v6")
        )
        key = key_type(prefixlen=32 + 16 + net.prefixlen, gen=self.gen, vlan=vlan)
        key.addr[:] = net.network_address.packed
        self.maps[name][bytes(key)] = bytes(abi.EndpointInfo(segment=segment))
        return self

    def segment(
        self,
        segment: int,
        *,
        mode: int = ENFORCE,
        default_action: int = DROP,
        default_rule_id: int = 0,
        flags: int = 0,
    ) -> Policy:
        key = abi.SegmentKey(gen=self.gen, segment=segment)
        value = abi.SegmentInfo(
            default_rule_id=default_rule_id,
            name_hash=segment_name_hash(f"segment {segment}"),
            mode=mode,
            default_action=default_action,
            flags=flags,
        )
        self.maps["segments"][bytes(key)] = bytes(value)
        return self

    def rule(
        self,
        src: int,
        dst: int,
        proto: int,
        ports: int | tuple[int, int] | None,
        action: int,
        rule_id: int,
    ) -> Policy:
        """ports: one port, an inclusive range, or None for any port."""
        if ports is None:
            prefixes = [(0, 0)]
        elif isinstance(ports, int):
            prefixes = [(ports, 16)]
        else:
            prefixes = port_prefixes(*ports)
        for port, bits in prefixes:
            key = abi.RuleKey(
                prefixlen=80 + bits,
                gen=self.gen,
                src_segment=src,
                dst_segment=dst,
                proto=proto,
                port_be=socket.htons(port),
            )
            self.maps["rules"][bytes(key)] = bytes(abi.RuleVerdict(rule_id=rule_id, action=action))
        return self

    def pair(self, src: int, dst: int, action: int, rule_id: int) -> Policy:
        key = abi.PairKey(gen=self.gen, src_segment=src, dst_segment=dst)
        value = abi.RuleVerdict(rule_id=rule_id, action=action)
        self.maps["pair_defaults"][bytes(key)] = bytes(value)
        return self

    def rail_host(self, address: str, flags: int) -> Policy:
        ip = ipaddress.ip_address(address)
        key = abi.RailHostKey(gen=self.gen, family=ip.version)
        key.addr[: len(ip.packed)] = ip.packed
        self.maps["rail_hosts"][bytes(key)] = u32(flags)
        return self


def clinic(mode: int = ENFORCE, gen: int = GEN) -> Policy:
    """Client and server devices, both segments with mode and default drop."""
    return (
        Policy(gen)
        .device(CLIENT, CLINICAL)
        .device(SERVER, SERVERS)
        .segment(CLINICAL, mode=mode, default_rule_id=91)
        .segment(SERVERS, mode=mode, default_rule_id=92)
    )


def web(mode: int = ENFORCE, gen: int = GEN, rule_id: int = 7) -> Policy:
    """clinic() with CLINICAL -> SERVERS TCP 443 allowed."""
    return clinic(mode, gen).rule(CLINICAL, SERVERS, socket.IPPROTO_TCP, 443, ALLOW, rule_id)


def eth(src: Host, dst: Host) -> Ether:
    return Ether(src=src.mac, dst=dst.mac)


def ip4(src: Host, dst: Host, **fields: object) -> ScapyPacket:
    return eth(src, dst) / IP(src=src.ip4, dst=dst.ip4, **fields)


def ip6(src: Host, dst: Host, **fields: object) -> ScapyPacket:
    return eth(src, dst) / IPv6(src=src.ip6, dst=dst.ip6, **fields)


def send(dp: ReferenceDataplane, packet: ScapyPacket | bytes, port: int, now: int = 0) -> Outcome:
    return dp.run(bytes(packet), port, now)


def verdict(outcome: Outcome) -> tuple[int, int, int]:
    d = outcome.decision
    return d.verdict, d.reason, d.rule_id


def segments(outcome: Outcome) -> tuple[int, int]:
    return outcome.decision.src_segment, outcome.decision.dst_segment


def stat(dp: ReferenceDataplane, verdict_: int, reason: int) -> tuple[int, int]:
    counter = dp.stats.get(abi.stats_index(verdict_, reason))
    return (counter.packets, counter.bytes) if counter else (0, 0)


def only_flow(dp: ReferenceDataplane) -> abi.FlowEntry:
    assert len(dp.flows) == 1
    return next(iter(dp.flows.values()))


# ---- flows ----


def test_allowed_tcp_flow_is_established_then_reply() -> None:
    dp = ReferenceDataplane(web().settings(first=2, flags=C.SETTING_RECORD_DECISION).maps)
    syn = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S")
    syn_ack = ip4(SERVER, CLIENT) / TCP(sport=443, dport=40000, flags="SA")
    ack = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="A")

    first = send(dp, syn, CLIENT.port, now=100)
    assert first.action == XDP_PASS
    assert verdict(first) == (PASS_, C.REASON_RULE, 7)
    assert segments(first) == (CLINICAL, SERVERS)
    assert first.decision.flags == C.DECISION_NEW_FLOW | C.DECISION_SEGMENTS
    assert first.decision.gen == GEN
    assert first.decision.sample_kind == C.SAMPLE_FIRST_PACKETS
    assert first.sample == bytes(syn)

    reply = send(dp, syn_ack, SERVER.port, now=200)
    assert verdict(reply) == (PASS_, C.REASON_REPLY, 7)
    assert segments(reply) == (CLINICAL, SERVERS)  # the initiator's view
    assert reply.decision.flags == C.DECISION_SEGMENTS
    assert reply.decision.sample_kind == C.SAMPLE_FIRST_PACKETS

    third = send(dp, ack, CLIENT.port, now=300)
    assert verdict(third) == (PASS_, C.REASON_ESTABLISHED, 7)
    assert third.decision.sample_kind == C.SAMPLE_NONE  # past the first 2
    assert third.sample is None
    assert [first.decision.seq, reply.decision.seq, third.decision.seq] == [1, 2, 3]  # recorded: the tracer's setting

    entry = only_flow(dp)
    assert list(entry.packets) == [2, 1]
    assert list(entry.bytes) == [len(syn) + len(ack), len(syn_ack)]
    assert list(entry.tcp_flags) == [0x02 | 0x10, 0x12]
    assert (entry.first_seen_ns, entry.last_seen_ns) == (100, 300)
    assert (entry.gen, entry.rule_id, entry.verdict, entry.reason) == (GEN, 7, PASS_, C.REASON_RULE)
    assert (entry.src_segment, entry.dst_segment, entry.policy_port) == (CLINICAL, SERVERS, 443)
    assert stat(dp, PASS_, C.REASON_RULE) == (1, len(syn))
    assert stat(dp, PASS_, C.REASON_REPLY) == (1, len(syn_ack))
    assert stat(dp, PASS_, C.REASON_ESTABLISHED) == (1, len(ack))
    assert dp.rule_hits[7].packets == 3
    assert dp.last_decision.seq == 3


def test_a_live_bridge_keeps_no_decision_record() -> None:
    dp = ReferenceDataplane(web().settings().maps)
    send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S"), CLIENT.port)
    assert dp.last_decision.seq == 0


def test_denied_flow_drops_in_enforce_without_an_entry() -> None:
    dp = ReferenceDataplane(web().maps)
    ssh = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S")
    out = send(dp, ssh, CLIENT.port)
    assert out.action == XDP_DROP
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 91)
    assert out.decision.sample_kind == C.SAMPLE_DROP_EVENT
    assert out.sample == bytes(ssh)
    assert dp.flows == {}
    assert stat(dp, DROP_, C.REASON_SEGMENT_DEFAULT) == (1, len(ssh))
    assert dp.rule_hits[91].packets == 1


def test_denied_flow_audits_in_monitor_and_gets_an_entry() -> None:
    dp = ReferenceDataplane(web(mode=MONITOR).maps)
    out = send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S"), CLIENT.port)
    assert out.action == XDP_PASS
    assert verdict(out) == (AUDIT_, C.REASON_SEGMENT_DEFAULT, 91)
    assert out.decision.sample_kind == C.SAMPLE_NONE  # audit is no drop event
    assert only_flow(dp).verdict == AUDIT_


def test_an_enforcing_segments_default_is_enforced_towards_a_monitor_peer() -> None:
    policy = web(mode=MONITOR).segment(SERVERS, mode=ENFORCE, default_rule_id=92)
    dp = ReferenceDataplane(policy.maps)
    out = send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S"), CLIENT.port)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 92)


def test_a_monitor_segments_default_drop_only_audits_towards_an_enforcing_peer() -> None:
    policy = web(mode=MONITOR).segment(SERVERS, mode=ENFORCE, default_action=ALLOW, default_rule_id=92)
    dp = ReferenceDataplane(policy.maps)
    out = send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S"), CLIENT.port)
    assert verdict(out) == (AUDIT_, C.REASON_SEGMENT_DEFAULT, 91)


def test_rule_actions_and_missing_segments() -> None:
    policy = (
        Policy()
        .device(CLIENT, CLINICAL)
        .device(SERVER, SERVERS)
        .segment(CLINICAL)
        .rule(CLINICAL, SERVERS, socket.IPPROTO_TCP, 80, AUDIT, 3)
    )
    dp = ReferenceDataplane(policy.maps)
    out = send(dp, ip4(CLIENT, SERVER) / TCP(dport=80, flags="S"), CLIENT.port)
    assert verdict(out) == (AUDIT_, C.REASON_RULE, 3)  # an audit rule audits when enforced
    out = send(dp, ip4(CLIENT, SERVER) / TCP(dport=81, flags="S"), CLIENT.port)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 0)
    # SERVERS has no entry: it monitors and allows with rule 0; CLINICAL defaults to drop,
    # and the stricter of the two defaults holds: CLINICAL is closed inbound too
    out = send(dp, ip4(SERVER, CLIENT) / TCP(dport=80, flags="S"), SERVER.port)
    assert verdict(out)[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)


def test_rule_specificity() -> None:
    tcp, udp = socket.IPPROTO_TCP, socket.IPPROTO_UDP
    policy = (
        clinic()
        .rule(CLINICAL, SERVERS, tcp, 443, ALLOW, 1)
        .rule(CLINICAL, SERVERS, tcp, (400, 500), DROP, 2)
        .rule(CLINICAL, SERVERS, tcp, None, AUDIT, 3)
        .pair(CLINICAL, SERVERS, ALLOW, 4)
        .rule(SERVERS, CLINICAL, tcp, 443, ALLOW, 5)
        .rule(CLINICAL, SERVERS, udp, 53, ALLOW, 6)
    )
    # rules of another generation never match
    other = Policy(GEN + 1).rule(CLINICAL, SERVERS, udp, None, DROP, 99)
    policy.maps["rules"].update(other.maps["rules"])
    dp = ReferenceDataplane(policy.maps)

    def judge(packet: ScapyPacket, port: int) -> tuple[int, int, int]:
        return verdict(send(dp, packet, port))

    to_server = ip4(CLIENT, SERVER)
    assert judge(to_server / TCP(dport=443, flags="S"), 1) == (PASS_, C.REASON_RULE, 1)
    assert judge(to_server / TCP(dport=444, flags="S"), 1) == (DROP_, C.REASON_RULE, 2)
    assert judge(to_server / TCP(dport=400, flags="S"), 1) == (DROP_, C.REASON_RULE, 2)
    assert judge(to_server / TCP(dport=500, flags="S"), 1) == (DROP_, C.REASON_RULE, 2)
    assert judge(to_server / TCP(dport=501, flags="S"), 1) == (AUDIT_, C.REASON_RULE, 3)
    assert judge(to_server / TCP(dport=399, flags="S"), 1) == (AUDIT_, C.REASON_RULE, 3)
    assert judge(to_server / UDP(dport=53), 1) == (PASS_, C.REASON_RULE, 6)
    assert judge(to_server / UDP(dport=54), 1) == (PASS_, C.REASON_PAIR_DEFAULT, 4)
    to_client = ip4(SERVER, CLIENT)
    assert judge(to_client / TCP(dport=443, flags="S"), 2) == (PASS_, C.REASON_RULE, 5)
    assert judge(to_client / TCP(dport=444, flags="S"), 2) == (DROP_, C.REASON_SEGMENT_DEFAULT, 92)


def test_port_prefixes_cover_exactly_the_range() -> None:
    for lo, hi in [(400, 500), (0, 65535), (1024, 1024), (1, 65534)]:
        covered = set()
        for port, bits in port_prefixes(lo, hi):
            size = 1 << (16 - bits)
            assert port % size == 0
            covered.update(range(port, port + size))
        assert covered == set(range(lo, hi + 1))


def test_icmp_echo_identifier_is_both_ports() -> None:
    policy = clinic().rule(CLINICAL, SERVERS, socket.IPPROTO_ICMP, 8, ALLOW, 12)
    dp = ReferenceDataplane(policy.maps)
    out = send(dp, ip4(CLIENT, SERVER) / ICMP(type=8, id=0x1234), CLIENT.port)
    assert verdict(out) == (PASS_, C.REASON_RULE, 12)
    key = abi.FlowKey.from_buffer_copy(next(iter(dp.flows)))
    assert key.port_lo == key.port_hi == socket.htons(0x1234)
    out = send(dp, ip4(SERVER, CLIENT) / ICMP(type=0, id=0x1234), SERVER.port)
    assert verdict(out) == (PASS_, C.REASON_REPLY, 12)
    out = send(dp, ip4(SERVER, CLIENT) / ICMP(type=0, id=0x1235), SERVER.port)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 92)


def test_flow_key_compares_little_endian_words_then_native_ports() -> None:
    def key_of(src: str, dst: str, sport: int, dport: int) -> tuple[abi.FlowKey, bool]:
        pkt = Packet(
            src=ipaddress.ip_address(src).packed + bytes(12),
            dst=ipaddress.ip_address(dst).packed + bytes(12),
            sport=socket.htons(sport),
            dport=socket.htons(dport),
            family=4,
            proto=6,
            eth_src=bytes.fromhex("020000000001"),
            eth_dst=bytes.fromhex("020000000002"),
        )
        return ReferenceDataplane.make_flow_key(pkt, 0)

    # 1.0.0.2 is the smaller address in network order, not as a native word
    key, src_is_lo = key_of("1.0.0.2", "2.0.0.1", 10, 20)
    assert not src_is_lo
    assert bytes(key.addr_lo)[:4] == bytes([2, 0, 0, 1])
    assert (key.port_lo, key.port_hi) == (socket.htons(20), socket.htons(10))
    # equal addresses: port 256 (bytes 01 00) is below port 2 (bytes 00 02)
    key, src_is_lo = key_of("10.0.0.1", "10.0.0.1", 2, 256)
    assert not src_is_lo
    assert key.port_lo == socket.htons(256)
    assert key_of("10.0.0.1", "10.0.0.1", 7, 7)[1]


# ---- identity ----


def test_vlan_specific_prefix_then_any_vlan() -> None:
    policy = (
        Policy()
        .device(SERVER, SERVERS)
        .port(1, 10)
        .prefix("10.1.0.0/16", BEYOND_V10, vlan=10)
        .prefix("10.1.0.0/16", BEYOND_ANY)
        .prefix("10.1.5.0/24", BEYOND_ANY_24)
        .prefix("fd01::/32", BEYOND_V10, vlan=10)
        .prefix("fd01::/32", BEYOND_ANY)
    )
    dp = ReferenceDataplane(policy.maps)

    def source_segment(packet: ScapyPacket, port: int) -> int:
        return send(dp, packet, port).decision.src_segment

    def v4(address: str, *tags: int) -> ScapyPacket:
        frame = eth(ROUTER, SERVER)
        for vid in tags:
            frame = frame / Dot1Q(vlan=vid)
        return frame / IP(src=address, dst=SERVER.ip4) / UDP(sport=1000, dport=2000)

    # each case its own source address, so that none hits another's flow
    assert source_segment(v4("10.1.5.1", 10), 3) == BEYOND_V10
    assert source_segment(v4("10.1.5.2", 20), 3) == BEYOND_ANY_24  # retried at VLAN 0
    assert source_segment(v4("10.1.6.1", 20), 3) == BEYOND_ANY
    assert source_segment(v4("10.2.0.1", 20), 3) == C.SEGMENT_UNASSIGNED
    assert source_segment(v4("10.1.6.2"), 1) == BEYOND_V10  # untagged: port 1's PVID
    assert source_segment(v4("10.1.6.3"), 3) == BEYOND_ANY  # a port without a PVID
    assert source_segment(v4("10.1.6.4", 10, 20), 3) == BEYOND_V10  # the outer tag
    assert source_segment(v4("10.1.6.5", 20, 10), 3) == BEYOND_ANY
    qinq = Ether(src=ROUTER.mac, dst=SERVER.mac, type=0x88A8) / Dot1Q(vlan=10) / Dot1Q(vlan=20)
    assert source_segment(qinq / IP(src="10.1.6.6", dst=SERVER.ip4) / UDP(), 3) == BEYOND_V10
    v6 = eth(ROUTER, SERVER) / Dot1Q(vlan=20) / IPv6(src="fd01::1", dst=SERVER.ip6) / UDP()
    assert source_segment(v6, 3) == BEYOND_ANY

    # flows are keyed by the identity VLAN: the outer tag, else the port's PVID
    def flow_vlan(source: str) -> int:
        packed = ipaddress.ip_address(source).packed
        keys = [abi.FlowKey.from_buffer_copy(key) for key in dp.flows]
        (vlan,) = {k.vlan for k in keys if packed in (bytes(k.addr_lo)[:4], bytes(k.addr_hi)[:4])}
        return vlan

    assert flow_vlan("10.1.6.2") == 10
    assert flow_vlan("10.1.6.4") == 10


def test_group_macs_are_pseudo_segments() -> None:
    dp = ReferenceDataplane(clinic().maps)
    multicast = Ether(src=CLIENT.mac, dst="01:00:5e:00:00:fb") / IP(dst="224.0.0.251") / UDP()
    broadcast = Ether(src=CLIENT.mac, dst="ff:ff:ff:ff:ff:ff") / IP(dst="10.0.10.255") / UDP()
    assert segments(send(dp, multicast, 1)) == (CLINICAL, C.SEGMENT_MULTICAST)
    assert segments(send(dp, broadcast, 1)) == (CLINICAL, C.SEGMENT_BROADCAST)


def test_spoofed_source_and_management_segment() -> None:
    policy = web().device(ROUTER, MGMT, bound=False).segment(MGMT, flags=C.SEGMENT_MGMT)
    dp = ReferenceDataplane(policy.maps)
    https = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S")
    out = send(dp, https, SERVER.port)  # the client's MAC behind the server's port
    assert verdict(out) == (DROP_, C.REASON_SPOOFED, 0)
    assert segments(out) == (CLINICAL, SERVERS)
    dp.load(web(mode=MONITOR).maps)
    assert verdict(send(dp, https, SERVER.port)) == (AUDIT_, C.REASON_SPOOFED, 0)

    dp = ReferenceDataplane(policy.maps)
    out = send(dp, eth(ROUTER, SERVER) / IP(dst=SERVER.ip4) / TCP(dport=22, flags="S"), 3)
    assert verdict(out) == (PASS_, C.REASON_RAIL_MGMT, 0)
    assert segments(out) == (MGMT, SERVERS)
    # a flow the server opens towards the management host: the policy's, unless management = true (INBOUND)
    towards = eth(SERVER, ROUTER) / IP(src=SERVER.ip4, dst="10.0.0.1") / TCP(sport=40000, dport=445, flags="S")
    assert verdict(send(dp, towards, SERVER.port))[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)
    dp.load(policy.segment(MGMT, flags=C.SEGMENT_MGMT | C.SEGMENT_MGMT_INBOUND).maps)
    assert verdict(send(dp, towards, SERVER.port)) == (PASS_, C.REASON_RAIL_MGMT, 0)


# ---- rails ----


def test_arp_and_layer2_control() -> None:
    policy = clinic().settings(flags=C.SETTING_DROP_UNKNOWN_ETHERTYPE)
    dp = ReferenceDataplane(policy.maps)
    out = send(dp, Ether(src=CLIENT.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=SERVER.ip4), 1)
    assert verdict(out) == (PASS_, C.REASON_RAIL_ARP, 0)
    assert out.decision.sample_kind == C.SAMPLE_FLOWLESS
    stp = Dot3(src=CLIENT.mac, dst="01:80:c2:00:00:00") / LLC() / STP()
    out = send(dp, stp, 1)
    assert verdict(out) == (PASS_, C.REASON_RAIL_L2_CONTROL, 0)
    assert out.decision.sample_kind == C.SAMPLE_NONE
    lldp = Ether(src=CLIENT.mac, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(bytes(32))
    assert verdict(send(dp, lldp, 1)) == (PASS_, C.REASON_RAIL_L2_CONTROL, 0)
    llc_elsewhere = Dot3(src=CLIENT.mac, dst="01:80:c2:00:00:01") / LLC() / STP()
    assert verdict(send(dp, llc_elsewhere, 1)) == (DROP_, C.REASON_UNSUPPORTED_ETHERTYPE, 0)
    dp.load(clinic().maps)
    out = send(dp, Ether(src=CLIENT.mac, dst=SERVER.mac, type=0x88B5) / Raw(bytes(46)), 1)
    assert verdict(out) == (PASS_, C.REASON_UNSUPPORTED_ETHERTYPE, 0)
    assert out.decision.sample_kind == C.SAMPLE_FLOWLESS


def test_neighbor_discovery_rails() -> None:
    policy = clinic().settings(flags=C.SETTING_ROUTERS_LISTED)
    policy.rail_host(SERVER.ip6, C.RAIL_HOST_ROUTER)
    dp = ReferenceDataplane(policy.maps)
    ns = ICMPv6ND_NS(tgt=SERVER.ip6)
    out = send(dp, ip6(CLIENT, SERVER, hlim=255) / ns, 1)
    assert verdict(out) == (PASS_, C.REASON_RAIL_ND, 0)
    assert out.decision.sample_kind == C.SAMPLE_FLOWLESS
    assert dp.flows == {}
    # hop limit below 255: not ND, so policy
    assert verdict(send(dp, ip6(CLIENT, SERVER, hlim=64) / ns, 1))[:2] == (
        DROP_,
        C.REASON_SEGMENT_DEFAULT,
    )
    mld = Ether(src=CLIENT.mac, dst="33:33:00:00:00:16") / IPv6(src="fe80::1", dst="ff02::16", hlim=1) / ICMPv6MLReport()
    assert verdict(send(dp, mld, 1)) == (PASS_, C.REASON_RAIL_ND, 0)
    # unicast MLD (a query for debugging, RFC 3810 5.1.15) meets the policy
    assert verdict(send(dp, ip6(CLIENT, SERVER, hlim=1) / ICMPv6MLReport(), 1))[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)
    ra = ICMPv6ND_RA()
    assert verdict(send(dp, ip6(SERVER, CLIENT, hlim=255) / ra, 2)) == (PASS_, C.REASON_RAIL_RA, 0)
    unlisted = send(dp, ip6(CLIENT, SERVER, hlim=255) / ra, 1)
    assert verdict(unlisted)[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)
    dp.load(clinic().maps)  # routers not listed: every RA with hop limit 255
    assert verdict(send(dp, ip6(CLIENT, SERVER, hlim=255) / ra, 1))[1] == C.REASON_RAIL_RA


def test_dhcp_rails() -> None:
    policy = clinic().settings(flags=C.SETTING_DHCP_SERVERS_LISTED)
    policy.rail_host(SERVER.ip4, C.RAIL_HOST_DHCP_SERVER)
    dp = ReferenceDataplane(policy.maps)
    discover = (
        Ether(src=CLIENT.mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP()
        / DHCP(options=[("message-type", "discover"), "end"])
    )
    out = send(dp, discover, 1)
    assert verdict(out) == (PASS_, C.REASON_RAIL_DHCP, 0)
    assert out.decision.sample_kind == C.SAMPLE_DHCP
    assert out.sample == bytes(discover)

    def offer(src: Host) -> ScapyPacket:
        return ip4(src, CLIENT) / UDP(sport=67, dport=68) / BOOTP(op=2)

    assert verdict(send(dp, offer(SERVER), 2)) == (PASS_, C.REASON_RAIL_DHCP, 0)
    rogue = send(dp, offer(ROUTER), 3)  # falls through to policy, still a DHCP sample
    assert verdict(rogue)[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)  # the client's segment drops by default
    assert rogue.decision.sample_kind == C.SAMPLE_DHCP
    rogue_enforced = send(dp, offer(CLIENT), 1)  # CLINICAL to CLINICAL: default drop
    assert verdict(rogue_enforced) == (DROP_, C.REASON_SEGMENT_DEFAULT, 91)
    assert rogue_enforced.decision.sample_kind == C.SAMPLE_DHCP
    solicit = ip6(CLIENT, SERVER) / UDP(sport=546, dport=547) / DHCP6_Solicit()
    assert verdict(send(dp, solicit, 1)) == (PASS_, C.REASON_RAIL_DHCP, 0)


# ---- malformed frames ----


def ipv4_udp(**ip_fields: object) -> bytes:
    return bytes(ip4(CLIENT, SERVER, **ip_fields) / UDP(sport=1000, dport=2000))


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(bytes(13), id="shorter-than-ethernet"),
        pytest.param(ipv4_udp()[:-1], id="truncated-ipv4"),
        pytest.param(ipv4_udp()[:30], id="ipv4-header-cut"),
        pytest.param(ipv4_udp(ihl=4), id="ihl-4"),
        pytest.param(ipv4_udp(ihl=15), id="ihl-past-tot-len"),
        pytest.param(ipv4_udp(version=5), id="version-5"),
        pytest.param(ipv4_udp(len=19), id="tot-len-below-header"),
        pytest.param(ipv4_udp(len=24) + bytes(20), id="udp-cut-by-tot-len-not-frame"),
        pytest.param(
            bytes(ip4(CLIENT, SERVER) / TCP(dataofs=4, flags="S")), id="tcp-data-offset-4"
        ),
        pytest.param(bytes(ip4(CLIENT, SERVER, proto=1) / Raw(bytes(7))), id="icmp-cut"),
        pytest.param(bytes(ip6(CLIENT, SERVER, plen=0) / UDP()), id="ipv6-payload-0"),
        pytest.param(bytes(ip6(CLIENT, SERVER) / UDP())[:-1], id="ipv6-truncated"),
        pytest.param(bytes(Ether(src=CLIENT.mac, type=0x8100) / Raw(b"\x00\x0a")), id="vlan-cut"),
    ],
)
def test_malformed(frame: bytes) -> None:
    dp = ReferenceDataplane(web(mode=MONITOR).maps)
    out = dp.run(frame, 1)
    assert out.action == XDP_DROP
    assert verdict(out) == (DROP_, C.REASON_MALFORMED, 0)
    assert out.decision.sample_kind == C.SAMPLE_DROP_EVENT
    assert out.sample == frame
    assert stat(dp, DROP_, C.REASON_MALFORMED) == (1, len(frame))


def test_ethernet_padding_is_no_datagram_bytes() -> None:
    dp = ReferenceDataplane(web().rule(CLINICAL, SERVERS, socket.IPPROTO_UDP, 2000, ALLOW, 8).maps)
    padded = ipv4_udp() + bytes(18)  # the 60-byte minimum frame
    out = dp.run(padded, 1)
    assert verdict(out) == (PASS_, C.REASON_RULE, 8)
    assert only_flow(dp).bytes[0] == len(padded)  # the frame's length is counted


def ipv6_with(chain: bytes, first_header: int, l4: bytes = b"") -> bytes:
    return bytes(ip6(CLIENT, SERVER, nh=first_header) / Raw(chain + l4))


def dstopts(next_header: int) -> bytes:
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])  # PadN to 8 bytes


def ah(next_header: int) -> bytes:
    return bytes([next_header, 2, 0, 0]) + bytes(12)  # (2 + 2) * 4 = 16 bytes


def test_ipv6_extension_header_walk() -> None:
    dp = ReferenceDataplane(clinic().rule(CLINICAL, SERVERS, 17, 2000, ALLOW, 9).maps)

    def judge(chain: bytes, first_header: int, sport: int) -> tuple[int, int, int]:
        udp = bytes(UDP(sport=sport, dport=2000))  # a new flow each
        return verdict(dp.run(ipv6_with(chain, first_header, udp), 1))

    five = dstopts(60) * 4 + dstopts(17)  # five extension headers, then UDP
    assert judge(five, 60, 1) == (PASS_, C.REASON_RULE, 9)
    six = dstopts(60) * 5 + dstopts(17)
    assert judge(six, 60, 2)[1] == C.REASON_MALFORMED
    assert judge(ah(17), 51, 3) == (PASS_, C.REASON_RULE, 9)
    # the AH length is in 4-byte units: in 8-byte units UDP would not be found
    assert judge(ah(60) + dstopts(17), 51, 4) == (PASS_, C.REASON_RULE, 9)
    cut = dstopts(60) + bytes([17])  # one byte of an option header
    assert verdict(dp.run(ipv6_with(cut, 60), 1))[1] == C.REASON_MALFORMED
    no_next = send(dp, ip6(CLIENT, SERVER, nh=59) / Raw(bytes(8)), 1)
    assert verdict(no_next)[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)
    assert len(dp.flows) == 3


# ---- fragments ----


def test_tiny_first_fragment_is_malformed_and_so_are_its_followers() -> None:
    dp = ReferenceDataplane(web(mode=MONITOR).maps)
    tcp = bytes(TCP(sport=1, dport=443, flags="S"))
    tiny = ip4(CLIENT, SERVER, id=77, flags="MF", proto=6) / Raw(tcp[:8])
    out = send(dp, tiny, 1)
    assert verdict(out) == (DROP_, C.REASON_MALFORMED, 0)
    ((key, first),) = dp.frags.items()
    assert abi.FragKey.from_buffer_copy(key).id == 77
    assert (first.verdict, first.reason, first.gen) == (DROP_, C.REASON_MALFORMED, GEN)
    rest = ip4(CLIENT, SERVER, id=77, frag=1, proto=6) / Raw(tcp[8:])
    out = send(dp, rest, 1)
    assert verdict(out) == (DROP_, C.REASON_MALFORMED, 0)  # it would rewrite the TCP header (RFC 1858)
    past_the_header = ip4(CLIENT, SERVER, id=77, frag=3, proto=6) / Raw(bytes(8))
    assert verdict(send(dp, past_the_header, 1)) == (DROP_, C.REASON_FRAGMENT, 0)


def test_later_fragment_follows_the_first() -> None:
    dp = ReferenceDataplane(web().rule(CLINICAL, SERVERS, 17, 2000, ALLOW, 8).maps)
    first = ip4(CLIENT, SERVER, id=5, flags="MF") / UDP(sport=1000, dport=2000) / Raw(bytes(16))
    out = send(dp, first, 1)
    assert verdict(out) == (PASS_, C.REASON_RULE, 8)
    (first_verdict,) = dp.frags.values()
    assert (first_verdict.rule_id, first_verdict.src_segment) == (8, CLINICAL)
    later = ip4(CLIENT, SERVER, id=5, frag=3, proto=17) / Raw(bytes(16))
    out = send(dp, later, 1)
    assert verdict(out) == (PASS_, C.REASON_FRAGMENT, 8)
    assert segments(out) == (CLINICAL, SERVERS)
    assert only_flow(dp).packets[0] == 1  # fragments that follow are not flow packets
    assert dp.rule_hits[8].packets == 2


def test_orphan_fragment() -> None:
    later = ip4(CLIENT, SERVER, id=6, frag=3, proto=17) / Raw(bytes(16))
    dp = ReferenceDataplane(web().maps)
    out = send(dp, later, 1)
    assert verdict(out) == (DROP_, C.REASON_FRAGMENT_ORPHAN, 0)
    assert segments(out) == (CLINICAL, SERVERS)
    dp = ReferenceDataplane(web(mode=MONITOR).maps)
    assert verdict(send(dp, later, 1)) == (AUDIT_, C.REASON_FRAGMENT_ORPHAN, 0)


def test_ipv6_fragments_and_atomic_fragment() -> None:
    dp = ReferenceDataplane(web().rule(CLINICAL, SERVERS, 17, 2000, ALLOW, 8).maps)
    udp = UDP(sport=1000, dport=2000) / Raw(bytes(16))
    first = ip6(CLIENT, SERVER) / IPv6ExtHdrFragment(id=9, m=1, offset=0) / udp
    assert verdict(send(dp, first, 1)) == (PASS_, C.REASON_RULE, 8)
    later = ip6(CLIENT, SERVER) / IPv6ExtHdrFragment(id=9, m=0, offset=3, nh=17) / Raw(bytes(8))
    assert verdict(send(dp, later, 1)) == (PASS_, C.REASON_FRAGMENT, 8)
    orphan = ip6(CLIENT, SERVER) / IPv6ExtHdrFragment(id=10, offset=3, nh=17) / Raw(bytes(8))
    assert verdict(send(dp, orphan, 1)) == (DROP_, C.REASON_FRAGMENT_ORPHAN, 0)
    assert len(dp.frags) == 1
    atomic = ip6(CLIENT, SERVER) / IPv6ExtHdrFragment(id=11, m=0, offset=0) / udp
    assert verdict(send(dp, atomic, 1)) == (PASS_, C.REASON_ESTABLISHED, 8)
    assert len(dp.frags) == 1


# ---- ICMP errors ----


def test_related_icmp_error_takes_the_flows_verdict() -> None:
    dp = ReferenceDataplane(web().rule(CLINICAL, SERVERS, 17, 53, ALLOW, 8).maps)
    query = IP(src=CLIENT.ip4, dst=SERVER.ip4) / UDP(sport=5353, dport=53) / Raw(bytes(30))
    send(dp, eth(CLIENT, SERVER) / query, 1)

    def error(quoted: bytes) -> ScapyPacket:
        return ip4(SERVER, CLIENT) / ICMP(type=3, code=3) / Raw(quoted)

    out = send(dp, error(bytes(query)[:28]), 2)
    assert verdict(out) == (PASS_, C.REASON_RELATED_ICMP, 8)
    assert segments(out) == (CLINICAL, SERVERS)
    assert only_flow(dp).packets[1] == 0  # errors are not accounted to the flow
    # 4 bytes of the quoted UDP header are not enough: policy judges it
    out = send(dp, error(bytes(query)[:24]), 2)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 92)
    other = IP(src=CLIENT.ip4, dst=SERVER.ip4) / UDP(sport=5354, dport=53)
    out = send(dp, error(bytes(other)[:28]), 2)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 92)


def test_related_icmpv6_packet_too_big() -> None:
    dp = ReferenceDataplane(web().maps)
    syn = IPv6(src=CLIENT.ip6, dst=SERVER.ip6) / TCP(sport=40000, dport=443, flags="S")
    send(dp, eth(CLIENT, SERVER) / syn, 1)
    too_big = ip6(SERVER, CLIENT) / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(syn)[:48])
    out = send(dp, too_big, 2)
    assert verdict(out) == (PASS_, C.REASON_RELATED_ICMP, 7)
    echo = ip6(SERVER, CLIENT) / ICMPv6EchoRequest(id=1)
    assert verdict(send(dp, echo, 2))[:2] == (DROP_, C.REASON_SEGMENT_DEFAULT)


# ---- mid-stream pickup and policy updates ----


def test_mid_stream_tcp_is_judged_from_both_sides() -> None:
    dp = ReferenceDataplane(web().maps)
    from_server = ip4(SERVER, CLIENT) / TCP(sport=443, dport=40000, flags="A")
    out = send(dp, from_server, 2)
    assert verdict(out) == (PASS_, C.REASON_RULE, 7)
    assert segments(out) == (CLINICAL, SERVERS)
    assert out.decision.flags == C.DECISION_MIDSTREAM | C.DECISION_NEW_FLOW | C.DECISION_SEGMENTS
    entry = only_flow(dp)
    assert (entry.policy_port, entry.flags) == (443, C.DECISION_MIDSTREAM)
    assert list(entry.packets) == [0, 1]  # the server is the responder
    out = send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="A"), 1)
    assert verdict(out) == (PASS_, C.REASON_ESTABLISHED, 7)

    # a SYN is never picked up mid-stream; both sides denied keeps the drop
    dp = ReferenceDataplane(web().maps)
    syn = ip4(SERVER, CLIENT) / TCP(sport=443, dport=40000, flags="S")
    assert verdict(send(dp, syn, 2)) == (DROP_, C.REASON_SEGMENT_DEFAULT, 92)
    out = send(dp, ip4(SERVER, CLIENT) / TCP(sport=22, dport=40000, flags="A"), 2)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 91)  # a tie: judged as the listening end (22) sees it
    assert out.decision.flags == C.DECISION_MIDSTREAM | C.DECISION_SEGMENTS
    assert dp.flows == {}


def test_mid_stream_audit_beats_drop() -> None:
    dp = ReferenceDataplane(web().rule(CLINICAL, SERVERS, 6, 22, AUDIT, 4).maps)
    out = send(dp, ip4(SERVER, CLIENT) / TCP(sport=22, dport=40000, flags="A"), 2)
    assert verdict(out) == (AUDIT_, C.REASON_RULE, 4)
    assert only_flow(dp).verdict == AUDIT_


def test_a_midstream_tie_takes_the_listening_end_for_the_responder() -> None:
    """Both ends audit (monitor mode): the server's segment came first, yet the client is the initiator (443
    listens), so a flip to a policy allowing the client's side keeps the connection."""
    dp = ReferenceDataplane(clinic(mode=MONITOR).maps)
    from_server = ip4(SERVER, CLIENT) / TCP(sport=443, dport=40000, flags="PA")
    assert verdict(send(dp, from_server, 2)) == (AUDIT_, C.REASON_SEGMENT_DEFAULT, 91)  # CLINICAL's default, the client's end
    entry = only_flow(dp)
    assert (entry.flags, entry.policy_port, list(entry.packets)) == (C.DECISION_MIDSTREAM, 443, [0, 1])
    dp.load(web(gen=2).maps)
    out = send(dp, from_server, 2)
    assert verdict(out) == (PASS_, C.REASON_RULE, 7)
    assert out.decision.flags == C.DECISION_REVALIDATED | C.DECISION_SEGMENTS


def test_a_pickup_a_flip_would_audit_is_picked_up_again() -> None:
    """Picked up from the server's end under a permissive policy (a pass: the other end is not judged); after a
    flip that audits it from that end, it is forgotten and its next packet is judged from both ends."""
    dp = ReferenceDataplane(clinic(mode=MONITOR).pair(SERVERS, CLINICAL, ALLOW, 5).maps)
    from_server = ip4(SERVER, CLIENT) / TCP(sport=443, dport=40000, flags="PA")
    assert verdict(send(dp, from_server, 2))[::2] == (PASS_, 5)  # the pair default
    assert only_flow(dp).policy_port == 40000  # the server taken for the initiator
    dp.load(web(mode=MONITOR, gen=2).maps)
    out = send(dp, from_server, 2)
    assert verdict(out)[0] == AUDIT_ and dp.flows == {}
    assert verdict(send(dp, from_server, 2)) == (PASS_, C.REASON_RULE, 7)
    assert only_flow(dp).policy_port == 443


def test_stale_generation_is_rejudged_from_the_initiator() -> None:
    dp = ReferenceDataplane(web().maps)
    send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S"), 1)
    reply = ip4(SERVER, CLIENT) / TCP(sport=443, dport=40000, flags="SA")

    dp.load(web(gen=2, rule_id=17).maps)  # still allowed, by another rule id
    out = send(dp, reply, 2)
    assert verdict(out) == (PASS_, C.REASON_RULE, 17)
    assert out.decision.flags == C.DECISION_REVALIDATED | C.DECISION_SEGMENTS
    assert segments(out) == (CLINICAL, SERVERS)
    entry = only_flow(dp)
    assert (entry.gen, entry.rule_id, list(entry.packets)) == (2, 17, [1, 1])
    assert verdict(send(dp, reply, 2)) == (PASS_, C.REASON_REPLY, 17)

    dp.load(clinic(gen=3).maps)  # 443 no longer allowed
    out = send(dp, reply, 2)
    assert verdict(out) == (DROP_, C.REASON_SEGMENT_DEFAULT, 91)  # CLINICAL's default
    assert out.decision.flags == C.DECISION_REVALIDATED | C.DECISION_SEGMENTS
    assert dp.flows == {}


def test_stale_generation_skips_the_spoofing_check() -> None:
    dp = ReferenceDataplane(web().maps)
    syn = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S")
    send(dp, syn, 1)
    dp.load(web(gen=2).maps)
    out = send(dp, syn, SERVER.port)  # the wrong port, but a re-judge
    assert verdict(out) == (PASS_, C.REASON_RULE, 7)


# ---- sampling ----


def test_first_k_then_one_in_n() -> None:
    dp = ReferenceDataplane(web().settings(first=2, one_in_n=3).maps)
    ack = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="A")
    send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S"), 1)
    kinds = [send(dp, ack, 1).decision.sample_kind for _ in range(6)]
    first, none, one_in_n = C.SAMPLE_FIRST_PACKETS, C.SAMPLE_NONE, C.SAMPLE_ONE_IN_N
    assert kinds == [first, one_in_n, none, none, one_in_n, none]


def test_event_token_bucket() -> None:
    denied = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S")
    dp = ReferenceDataplane(web().settings(events_per_sec=2, burst=2).maps)
    second = 1_000_000_000
    kinds = [send(dp, denied, 1, now=second + i).decision.sample_kind for i in range(3)]
    assert kinds == [C.SAMPLE_DROP_EVENT, C.SAMPLE_DROP_EVENT, C.SAMPLE_NONE]
    assert dp.pressure == {C.PRESSURE_EVENT_RATE_LIMITED: 1}
    half = second + second // 2  # one token back at 2 per second
    kinds = [send(dp, denied, 1, now=half).decision.sample_kind for _ in range(2)]
    assert kinds == [C.SAMPLE_DROP_EVENT, C.SAMPLE_NONE]
    assert send(dp, denied, 1, now=3 * second).sample == bytes(denied)

    dp = ReferenceDataplane(web().settings(events_per_sec=0).maps)
    out = send(dp, denied, 1)
    assert (out.decision.sample_kind, out.sample, dp.pressure) == (C.SAMPLE_NONE, None, {})


def test_the_token_bucket_keeps_its_rate_for_packets_just_faster_than_it() -> None:
    """Packets every 9.9 ms against 100 tokens a second, for 10 s: a bucket that dropped the part-token at each
    refill gave one token per two packets (about 500)."""
    denied = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S")
    dp = ReferenceDataplane(web().settings(events_per_sec=100, burst=1).maps)
    start = 10_000_000_000
    sent = sum(send(dp, denied, 1, now=start + i * 9_900_000).decision.sample_kind == C.SAMPLE_DROP_EVENT for i in range(1011))
    assert 990 <= sent <= 1002, sent


def test_dhcp_token_bucket_is_its_own() -> None:
    """DHCP samples have a bucket of their own: a flood is cut and counted, and drop events keep theirs."""
    discover = (Ether(src=CLIENT.mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67) / BOOTP() / DHCP(options=[("message-type", "discover"), "end"]))
    denied = ip4(CLIENT, SERVER) / TCP(sport=40000, dport=22, flags="S")
    dp = ReferenceDataplane(web().settings(events_per_sec=2, burst=2, dhcp_per_sec=3, dhcp_burst=3).maps)
    second = 1_000_000_000
    kinds = [send(dp, discover, 1, now=second + i).decision.sample_kind for i in range(5)]
    assert kinds == [C.SAMPLE_DHCP] * 3 + [C.SAMPLE_NONE] * 2
    assert all(send(dp, discover, 1, now=second).decision.verdict == C.VERDICT_PASS for _ in range(3))  # the rail holds
    assert dp.pressure == {C.PRESSURE_DHCP_RATE_LIMITED: 5}
    assert send(dp, denied, 1, now=second).decision.sample_kind == C.SAMPLE_DROP_EVENT  # its own bucket is full
    assert send(dp, discover, 1, now=3 * second).decision.sample_kind == C.SAMPLE_DHCP  # refilled

    dp = ReferenceDataplane(web().settings(dhcp_per_sec=0).maps)
    out = send(dp, discover, 1)
    assert (out.decision.sample_kind, out.sample, dp.pressure) == (C.SAMPLE_NONE, None, {})


def test_a_rogue_dhcp_server_is_seen_through_a_discover_flood() -> None:
    """A dropped DHCP reply that finds the DHCP bucket empty goes out as a drop event."""
    policy = clinic().settings(flags=C.SETTING_DHCP_SERVERS_LISTED, events_per_sec=2, burst=2, dhcp_per_sec=1, dhcp_burst=1)
    policy.rail_host(SERVER.ip4, C.RAIL_HOST_DHCP_SERVER)
    dp = ReferenceDataplane(policy.maps)
    discover = (Ether(src=CLIENT.mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67) / BOOTP() / DHCP(options=[("message-type", "discover"), "end"]))
    second = 1_000_000_000
    assert [send(dp, discover, 1, now=second).decision.sample_kind for _ in range(3)] == [C.SAMPLE_DHCP, C.SAMPLE_NONE, C.SAMPLE_NONE]
    rogue = send(dp, ip4(CLIENT, CLIENT) / UDP(sport=67, dport=68) / BOOTP(op=2), 1, now=second)  # an unlisted server's offer
    assert (rogue.decision.verdict, rogue.decision.sample_kind) == (C.VERDICT_DROP, C.SAMPLE_DROP_EVENT)
    assert dp.pressure == {C.PRESSURE_DHCP_RATE_LIMITED: 3}


def test_snaplen() -> None:
    big = ip4(CLIENT, SERVER) / UDP(sport=1, dport=9) / Raw(bytes(1000))
    dp = ReferenceDataplane(web().maps)
    assert send(dp, big, 1).sample == bytes(big)[: C.SAMPLE_SNAPLEN]
    dp = ReferenceDataplane(web().settings(snaplen=64).maps)
    assert send(dp, big, 1).sample == bytes(big)[:64]
    dp = ReferenceDataplane(web().settings(snaplen=4096).maps)
    assert len(send(dp, big, 1).sample or b"") == C.SAMPLE_SNAPLEN


# ---- the map model ----


def test_lpm_trie_semantics() -> None:
    def key(prefixlen: int, data: bytes) -> bytes:
        return u32(prefixlen) + data

    trie = LpmTrie(
        {
            key(8, b"\x0a\xff\xff"): "8",  # bits past the prefix do not count
            key(16, b"\x0a\x01\x00"): "16",
            key(24, b"\x0a\x01\x02"): "24",
            key(0, b"\x00\x00\x00"): "any",
        }
    )
    assert len(trie) == 4
    assert trie.lookup(key(24, b"\x0a\x01\x02")) == "24"
    assert trie.lookup(key(24, b"\x0a\x01\x03")) == "16"
    assert trie.lookup(key(20, b"\x0a\x01\x02")) == "16"  # the key's prefixlen bounds
    assert trie.lookup(key(24, b"\x0a\x02\x02")) == "8"
    assert trie.lookup(key(24, b"\x0b\x01\x02")) == "any"
    same_prefix = LpmTrie({key(8, b"\x0a\x00"): 1, key(8, b"\x0a\x01"): 2})
    assert len(same_prefix) == 1
    assert same_prefix.lookup(key(16, b"\x0a\x09")) == 2
    with pytest.raises(ValueError):
        LpmTrie({key(17, b"\x00\x00"): 1})


def test_load_checks_names_and_sizes() -> None:
    with pytest.raises(ValueError, match="not configuration maps"):
        ReferenceDataplane({"flows": {}})
    with pytest.raises(ValueError, match="map devices"):
        ReferenceDataplane({"devices": {bytes(12): bytes(7)}})
    with pytest.raises(ValueError, match="one slot"):
        ReferenceDataplane({"active_gen": {u32(1): u32(1)}})
    dp = ReferenceDataplane({})  # no configuration: generation 0, zero settings
    out = dp.run(ipv4_udp(), 1)
    assert verdict(out) == (PASS_, C.REASON_SEGMENT_DEFAULT, 0)
    assert out.decision.gen == 0


def test_load_keeps_state() -> None:
    dp = ReferenceDataplane(web().settings(flags=C.SETTING_RECORD_DECISION).maps)
    send(dp, ip4(CLIENT, SERVER) / TCP(sport=40000, dport=443, flags="S"), 1)
    dp.load(web().maps)
    assert len(dp.flows) == 1
    assert dp.last_decision.seq == 1
    assert sum(counter.packets for counter in dp.stats.values()) == 1


def test_an_idle_flow_is_judged_anew() -> None:
    """An address handed to another device must not inherit the old device's flows."""
    policy = clinic().rule(CLINICAL, SERVERS, socket.IPPROTO_UDP, 123, ALLOW, 1).settings(idle_timeout_s=300)
    dp = ReferenceDataplane(policy.maps)
    ntp = ip4(CLIENT, SERVER) / UDP(sport=123, dport=123)
    reply = ip4(SERVER, CLIENT) / UDP(sport=123, dport=123)
    assert verdict(send(dp, ntp, CLIENT.port, now=10 * 10**9))[:2] == (PASS_, C.REASON_RULE)
    assert verdict(send(dp, reply, SERVER.port, now=20 * 10**9))[:2] == (PASS_, C.REASON_REPLY)
    # 301 s later the reply is a new flow from the server's side: judged, and the server may not open to clients
    assert verdict(send(dp, reply, SERVER.port, now=321 * 10**9))[1] == C.REASON_SEGMENT_DEFAULT
