"""Fixture tables through BPF_PROG_TEST_RUN: packet, map contents, verdict, counters.

The real program, compiled by BCC, on private maps filled from FIXTURE_CONFIG
(tests/fixture_policy.toml). Each row sends frames in order and checks the
last one's verdict, reason, rule and segments, and that exactly its
(verdict, reason) counter and rule counter moved by one packet and its bytes.
"""

from __future__ import annotations

import ctypes
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6MLReport2,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    RouterAlert,
)
from scapy.layers.l2 import ARP, LLC, SNAP, STP, Dot1AD, Dot1Q, Dot3, Ether
from scapy.packet import Raw

from medseg_xdp import abi, bpfsys, config
from medseg_xdp.loader import PROGRAM_NAMES
from medseg_xdp.trace import Tracer

pytestmark = pytest.mark.root

FIXTURE_CONFIG = Path(__file__).parent / "fixture_policy.toml"
MODALITY, MONITOR, PRINTER, OTHER = "02:00:00:00:00:01", "02:00:00:00:00:03", "02:00:00:00:00:07", "02:00:00:00:00:09"
ROUTER = "02:00:00:00:00:fe"
ROUTER2 = "02:00:00:00:00:fd"  # the gateway pair's other router
STRAY = "02:00:00:00:00:0a"  # a MAC no segment lists: placed by its address


def modality(dst: str = "10.0.2.5") -> Ether:
    return Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst=dst)


def to_modality(src: str = "10.0.2.5") -> Ether:
    return Ether(src=ROUTER, dst=MODALITY) / IP(src=src, dst="10.0.1.5")


@dataclass(frozen=True)
class Case:
    name: str
    frames: list[tuple[bytes, str]]  # (frame, ingress port); the last one is checked
    verdict: str
    reason: str
    rule: str = "-"
    src: str | None = None
    dst: str | None = None
    flags: tuple[str, ...] | None = None
    sample: str | None = None


def b(packet: object) -> bytes:
    return bytes(packet)  # type: ignore[call-overload]


def mld_report(src: str = "fe80::5", dst: str = "ff02::16", eth_dst: str = "33:33:00:00:00:16", hlim: int = 1) -> bytes:
    """An MLDv2 report (ICMPv6 type 143) from the modality, as the MLD rail cases vary it."""
    return b(Ether(src=MODALITY, dst=eth_dst) / IPv6(src=src, dst=dst, hlim=hlim, nh=58) / Raw(bytes([143]) + bytes(27)))


def dicom_syn(sport: int) -> Ether:
    return modality() / TCP(sport=sport, dport=104, flags="S")


CASES = [
    Case("allowed TCP SYN", [(b(dicom_syn(40000)), "portA")], "pass", "rule", "dicom", "modalities", "pacs", ("new_flow",), "first_packets"),
    Case(
        "SYN-ACK is a reply",
        [(b(dicom_syn(40001)), "portA"), (b(to_modality() / TCP(sport=104, dport=40001, flags="SA")), "portB")],
        "pass", "reply", "dicom", "modalities", "pacs", (),
    ),
    Case(
        "ACK is established",
        [(b(dicom_syn(40002)), "portA"), (b(modality() / TCP(sport=40002, dport=104, flags="A")), "portA")],
        "pass", "established", "dicom",
    ),
    Case("port range audits", [(b(modality() / TCP(sport=40003, dport=11500, flags="S")), "portA")], "audit", "rule", "dicom-query"),
    Case("exact port beats range", [(b(modality() / TCP(sport=40004, dport=11112, flags="S")), "portA")], "pass", "rule", "dicom-alt"),
    Case("any-port rule", [(b(modality() / UDP(sport=40005, dport=5000)), "portA")], "pass", "rule", "udp-any"),
    Case("segment default drops", [(b(modality() / TCP(sport=40006, dport=22, flags="S")), "portA")], "drop", "segment_default", "default:modalities", sample="drop_event"),
    Case("MAC behind the wrong port is spoofed", [(b(modality() / TCP(sport=40007, dport=104, flags="S")), "portB")], "drop", "spoofed"),
    Case(
        "pair default, enforced by the destination",
        [(b(Ether(src=MONITOR, dst=ROUTER) / IP(src="10.0.3.5", dst="10.0.2.5") / TCP(sport=1, dport=80, flags="S")), "portA")],
        "drop", "pair_default", "monitors-to-pacs", "monitors", "pacs",
    ),
    Case(
        "a life-critical segment's default-drop in monitor mode is not enforced by an enforcing peer that allows",
        [(b(Ether(src=MONITOR, dst=ROUTER) / IP(src="10.0.3.5", dst="10.0.5.5") / TCP(sport=4, dport=80, flags="S")), "portA")],
        "audit", "segment_default", "default:monitors", "monitors", "web",
    ),
    Case(
        "a segment's default is enforced by that segment's own mode: a monitor segment's default-drop audits",
        [(b(Ether(src=PRINTER, dst=ROUTER) / IP(src="10.0.7.5", dst="10.0.5.5") / TCP(sport=5, dport=80, flags="S")), "portA")],
        "audit", "segment_default", "default:printers", "printers", "web",
    ),
    Case(
        "an enforcing segment's default-drop is enforced towards a monitor segment that allows",
        [(b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.5.5.5", dst="10.0.2.5") / TCP(sport=6, dport=80, flags="S")), "portB")],
        "drop", "segment_default", "default:pacs", "unassigned", "pacs", sample="drop_event",
    ),
    Case(
        "monitor mode audits a would-drop",
        [(b(Ether(src=MONITOR, dst=ROUTER) / IP(src="10.0.3.5", dst="10.5.5.5") / TCP(sport=2, dport=80, flags="S")), "portA")],
        "audit", "segment_default", "default:monitors", "monitors", "unassigned",
    ),
    Case(
        "a flow opened towards a broadcast MAC carries nothing to the real destination's MAC",
        [(b(Ether(src=OTHER, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.5.5.5", dst="10.0.1.5") / TCP(sport=7, dport=22, flags="S")), "portB"),
         (b(Ether(src=OTHER, dst=MODALITY) / IP(src="10.5.5.5", dst="10.0.1.5") / TCP(sport=7, dport=22, flags="S")), "portB")],
        "drop", "segment_default", "default:modalities", "unassigned", "modalities", sample="drop_event",
    ),
    Case(
        "a reply from the gateway pair's other MAC (HSRP: sent to the virtual MAC, answered from the router's own): neither is a device's, so it is the flow's",
        [(b(dicom_syn(40020)), "portA"), (b(Ether(src=ROUTER2, dst=MODALITY) / IP(src="10.0.2.5", dst="10.0.1.5") / TCP(sport=104, dport=40020, flags="SA")), "portB")],
        "pass", "reply", "dicom", "modalities", "pacs", (),
    ),
    Case(
        "a routed host's flow answered towards the gateway pair's other MAC is the flow's too",
        [(b(to_modality(src="10.0.99.5") / TCP(sport=40122, dport=22, flags="S")), "portB"),
         (b(Ether(src=MODALITY, dst=ROUTER2) / IP(src="10.0.1.5", dst="10.0.99.5") / TCP(sport=22, dport=40122, flags="SA")), "portA")],
        "pass", "reply", "-", "mgmt", "modalities", (),
    ),
    Case(
        "a reply from a device's MAC is no gateway pair's: judged at every packet",
        [(b(dicom_syn(40123)), "portA"), (b(Ether(src=PRINTER, dst=MODALITY) / IP(src="10.0.2.5", dst="10.0.1.5") / TCP(sport=104, dport=40123, flags="SA")), "portB"),
         (b(Ether(src=PRINTER, dst=MODALITY) / IP(src="10.0.2.5", dst="10.0.1.5") / TCP(sport=104, dport=40123, flags="A")), "portB")],
        "drop", "segment_default", "default:modalities", "modalities", "printers", ("revalidated",), "drop_event",
    ),
    Case(
        "a reply to another MAC than a device's is judged, and the initiator's packet from that MAC through the wrong port is spoofed",
        [(b(dicom_syn(40125)), "portA"),
         (b(Ether(src=ROUTER, dst=STRAY) / IP(src="10.0.2.5", dst="10.0.1.5") / TCP(sport=104, dport=40125, flags="SA")), "portB"),
         (b(Ether(src=STRAY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=40125, dport=104, flags="A")), "portB")],
        "drop", "spoofed", "-", "modalities", "pacs", ("revalidated",), "drop_event",
    ),
    Case(
        "the initiator's packets to the gateway pair's other MAC are judged (the spoofing check is by port)",
        [(b(dicom_syn(40124)), "portA"), (b(Ether(src=MODALITY, dst=ROUTER2) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=40124, dport=104, flags="A")), "portA")],
        "pass", "rule", "dicom", "modalities", "pacs", ("revalidated",),
    ),
    Case(
        "a TFTP server's answer from a new port takes its request's decision (RFC 1350)",
        [(b(modality() / UDP(sport=40200, dport=69) / Raw(b"\x00\x01fw.bin\x00octet\x00")), "portA"),
         (b(to_modality() / UDP(sport=50000, dport=40200) / Raw(b"\x00\x03\x00\x01")), "portB")],
        "pass", "related_tftp", "udp-any", "modalities", "pacs", ("new_flow",),
    ),
    Case(
        "a TFTP transfer over IPv6 takes its request's decision too",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / UDP(sport=40210, dport=69)), "portA"),
         (b(Ether(src=ROUTER, dst=MODALITY) / IPv6(src="fd00:2::5", dst="fd00:1::5") / UDP(sport=50010, dport=40210)), "portB")],
        "pass", "related_tftp", "udp-any", "modalities", "pacs", ("new_flow",),
    ),
    Case(
        "the TFTP client's acknowledgement to the server's new port is the transfer's",
        [(b(modality() / UDP(sport=40201, dport=69) / Raw(b"\x00\x01fw.bin\x00octet\x00")), "portA"),
         (b(to_modality() / UDP(sport=50001, dport=40201) / Raw(b"\x00\x03\x00\x01")), "portB"),
         (b(modality() / UDP(sport=40201, dport=50001) / Raw(b"\x00\x04\x00\x01")), "portA")],
        "pass", "established", "udp-any", "modalities", "pacs", (),
    ),
    Case(
        "an answer from another host than the TFTP request went to is no transfer",
        [(b(modality() / UDP(sport=40202, dport=69)), "portA"), (b(to_modality(src="10.0.2.7") / UDP(sport=50002, dport=40202)), "portB")],
        "drop", "segment_default", "default:pacs", "pacs", "modalities", sample="drop_event",
    ),
    Case(
        "a UDP flow to another port than 69 is no TFTP request",
        [(b(modality() / UDP(sport=40203, dport=5000)), "portA"), (b(to_modality() / UDP(sport=50003, dport=40203)), "portB")],
        "drop", "segment_default", "default:pacs", "pacs", "modalities", sample="drop_event",
    ),
    Case(
        "a spoofed TFTP server (a port-bound server's address, from another port and MAC) stays spoofed",
        [(b(Ether(src=ROUTER, dst=STRAY) / IP(src="10.0.99.5", dst="10.0.1.9") / UDP(sport=40205, dport=69)), "portB"),
         (b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.0.1.9", dst="10.0.99.5") / UDP(sport=50005, dport=40205)), "portB")],
        "drop", "spoofed", "-", "modalities", "mgmt", sample="drop_event",
    ),
    Case(
        "a TFTP transfer is related also after its first packet's denial was cached, before the request",
        [*[(b(to_modality() / UDP(sport=50004, dport=40204)), "portB")] * 64,
         (b(modality() / UDP(sport=40204, dport=69)), "portA"), (b(to_modality() / UDP(sport=50004, dport=40204)), "portB")],
        "pass", "related_tftp", "udp-any", "modalities", "pacs", ("new_flow",),
    ),
    Case(
        "an echo flow opens no other ICMP type, whatever its identifier",
        [(b(modality() / ICMP(type=8, id=5)), "portA"), (b(modality() / ICMP(type=5, code=1)), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "pacs", sample="drop_event",
    ),
    Case(
        "a later TCP fragment that would rewrite the first one's header is dropped (RFC 1858)",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", proto=6, id=77, frag=1) / Raw(b"\x00" * 16)), "portA")],
        "drop", "malformed",
    ),
    Case(
        "the same in IPv6",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / IPv6ExtHdrFragment(nh=6, offset=2, id=78) / Raw(b"\x00" * 16)), "portA")],
        "drop", "malformed",
    ),
    Case(
        "a later TCP fragment past the header follows its first fragment as usual",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", proto=6, id=79, frag=3) / Raw(b"\x00" * 16)), "portA")],
        "drop", "fragment_orphan",
    ),
    Case(
        "a later fragment on another VLAN does not ride a first fragment's verdict",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=90, flags="MF") / UDP(sport=9, dport=5000) / Raw(bytes(16))), "portA"),
         (b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=30) / IP(src="10.0.1.5", dst="10.0.2.5", id=90, frag=3, proto=17) / Raw(bytes(8))), "portC")],
        "drop", "fragment_orphan",
    ),
    Case(
        "IPv4 wrapped in LLC/SNAP (RFC 1042) is no unknown EtherType: dropped",
        [(b(Dot3(src=OTHER, dst=ROUTER) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0800) / IP(src="10.5.5.5", dst="10.0.1.5") / TCP(sport=8, dport=22, flags="S")), "portB")],
        "drop", "malformed",
    ),
    Case(
        "management segment passes as a rail",
        [(b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.0.99.5", dst="10.0.2.5") / TCP(sport=3, dport=22, flags="S")), "portB")],
        "pass", "rail_mgmt", "-", "mgmt", "pacs",
    ),
    Case(
        "a device opens a flow towards a management = true segment: a rail too",
        [(b(Ether(src=ROUTER, dst=OTHER) / IP(src="10.0.2.5", dst="10.0.99.5") / TCP(sport=40100, dport=445, flags="S")), "portB")],
        "pass", "rail_mgmt", "-", "pacs", "mgmt",
    ),
    Case(
        "an outbound management segment opens any flow",
        [(b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.0.98.5", dst="10.0.2.5") / TCP(sport=40101, dport=22, flags="S")), "portB")],
        "pass", "rail_mgmt", "-", "biomed", "pacs", ("new_flow",),
    ),
    Case(
        "the device's reply to an outbound management segment's flow passes",
        [
            (b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.0.98.5", dst="10.0.2.5") / TCP(sport=40102, dport=22, flags="S")), "portB"),
            (b(Ether(src=ROUTER, dst=OTHER) / IP(src="10.0.2.5", dst="10.0.98.5") / TCP(sport=22, dport=40102, flags="SA")), "portB"),
        ],
        "pass", "reply", "-", "biomed", "pacs",
    ),
    Case(
        "a device opening a flow towards an outbound management segment meets the policy",
        [(b(Ether(src=ROUTER, dst=OTHER) / IP(src="10.0.2.5", dst="10.0.98.5") / TCP(sport=40103, dport=445, flags="S")), "portB")],
        "drop", "segment_default", "default:pacs", "pacs", "biomed", sample="drop_event",
    ),
    Case(
        "a device's mid-stream segment to a port an outbound management host listens on is no reply to that host: the policy's",
        [(b(Ether(src=ROUTER, dst=OTHER) / IP(src="10.0.2.5", dst="10.0.98.5") / TCP(sport=40105, dport=445, flags="A")), "portB")],
        "drop", "segment_default", "default:pacs", "pacs", "biomed", sample="drop_event",
    ),
    Case(
        "a connection an outbound management segment opened, picked up mid-stream from the device's side, passes",
        [(b(Ether(src=ROUTER, dst=OTHER) / IP(src="10.0.2.5", dst="10.0.98.5") / TCP(sport=22, dport=40104, flags="A")), "portB")],
        "pass", "rail_mgmt", "-", "biomed", "pacs", ("new_flow", "midstream"),
    ),
    Case("ARP", [(b(Ether(src=MODALITY, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.5", pdst="10.0.1.1")), "portA")], "pass", "rail_arp", sample="flowless"),
    Case(
        "a tag the port's allowed_vlans lists is judged as usual",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=30) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=15, dport=80, flags="S")), "portC")],
        "drop", "segment_default", "default:lab", "lab", "pacs", sample="drop_event",
    ),
    Case(
        "a tag the port does not carry is dropped, whoever is behind it",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=99) / IP(src="10.0.99.5", dst="10.0.2.5") / TCP(sport=16, dport=22, flags="S")), "portC")],
        "drop", "vlan_not_allowed", sample="drop_event",
    ),
    Case(
        "a tag the port does not carry is dropped, rails too",
        [(b(Ether(src=OTHER, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=31) / ARP(psrc="10.9.1.1", pdst="10.9.1.2")), "portC")],
        "drop", "vlan_not_allowed", sample="drop_event",
    ),
    Case(
        "a double tag cannot hop into a VLAN the port does not carry",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1AD(vlan=31) / Dot1Q(vlan=30) / IP(src="10.9.1.1", dst="10.0.2.5") / UDP(sport=17, dport=53)), "portC")],
        "drop", "vlan_not_allowed", sample="drop_event",
    ),
    Case(
        "a second tag behind an allowed outer tag is dropped (double-tagging VLAN hopping)",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=30) / Dot1Q(vlan=20) / IP(src="10.9.1.1", dst="10.0.2.5") / UDP(sport=18, dport=53)), "portC")],
        "drop", "vlan_not_allowed", sample="drop_event",
    ),
    Case(
        "a second tag behind a priority tag is dropped",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=0, prio=5) / Dot1Q(vlan=20) / IP(src="10.9.1.1", dst="10.0.2.5") / UDP(sport=19, dport=53)), "portC")],
        "drop", "vlan_not_allowed", sample="drop_event",
    ),
    Case(
        "a priority tag alone enters like an untagged frame, on the port's PVID",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=0, prio=5) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=20, dport=80, flags="S")), "portC")],
        "drop", "segment_default", "default:lab", "lab", "pacs", sample="drop_event",
    ),
    Case(
        "a port without allowed_vlans takes a double tag, judged on the outer one",
        [(b(Ether(src=MODALITY, dst=ROUTER) / Dot1Q(vlan=5) / Dot1Q(vlan=20) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=21, dport=104, flags="S")), "portA")],
        "pass", "rule", "dicom", "modalities", "pacs", ("new_flow",), "first_packets",
    ),
    Case("LLDP", [(b(Ether(src=MODALITY, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07\x04" + bytes(40))), "portA")], "pass", "rail_l2_control"),
    Case("STP BPDU (802.3 length, LLC)", [(b(Dot3(src=MODALITY, dst="01:80:c2:00:00:00") / LLC() / STP()), "portA")], "pass", "rail_l2_control"),
    Case("Cisco PVST+ BPDU (SNAP to 01:00:0c:cc:cc:cd)",
         [(b(Dot3(src=MODALITY, dst="01:00:0c:cc:cc:cd") / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0x0C, code=0x010B) / STP()), "portA")],
         "pass", "rail_l2_control"),
    Case("Cisco CDP (SNAP to 01:00:0c:cc:cc:cc)",
         [(b(Dot3(src=MODALITY, dst="01:00:0c:cc:cc:cc") / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0x0C, code=0x2000) / Raw(bytes(40))), "portA")],
         "pass", "rail_l2_control"),
    Case("unknown EtherType passes, counted", [(b(Ether(src=MODALITY, dst=ROUTER, type=0x88B5) / Raw(bytes(46))), "portA")], "pass", "unsupported_ethertype"),
    Case("truncated IPv4", [(b(modality() / TCP(sport=5, dport=104))[:30], "portA")], "drop", "malformed"),
    Case("IPv4 header length 4", [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", ihl=4) / Raw(bytes(20))), "portA")], "drop", "malformed"),
    Case("IP total length beyond the frame", [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", len=400) / UDP()), "portA")], "drop", "malformed"),
    Case(
        "DHCP discover",
        [(b(Ether(src=MODALITY, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(bytes(240))), "portA")],
        "pass", "rail_dhcp", sample="dhcp",
    ),
    Case(
        "DHCP offer from the listed server",
        [(b(Ether(src=ROUTER, dst=MODALITY) / IP(src="10.0.0.1", dst="10.0.1.5") / UDP(sport=67, dport=68) / Raw(bytes(240))), "portB")],
        "pass", "rail_dhcp", sample="dhcp",
    ),
    Case(
        "DHCP offer from an unlisted server meets policy",
        [(b(Ether(src=OTHER, dst=MODALITY) / IP(src="10.0.0.66", dst="10.0.1.5") / UDP(sport=67, dport=68) / Raw(bytes(240))), "portB")],
        "drop", "segment_default", "default:modalities", "unassigned", "modalities", sample="dhcp",
    ),
    Case(
        "neighbour solicitation, hop limit 255",
        [(b(Ether(src=MODALITY, dst="33:33:ff:00:00:05") / IPv6(src="fe80::5", dst="ff02::1:ff00:5", hlim=255) / ICMPv6ND_NS(tgt="fe80::6")), "portA")],
        "pass", "rail_nd", sample="flowless",
    ),
    Case(
        "neighbour solicitation, hop limit 64, is no rail",
        [(b(Ether(src=MODALITY, dst="02:00:00:00:00:aa") / IPv6(src="fd00:1::5", dst="fd00:2::5", hlim=64) / ICMPv6ND_NS(tgt="fd00:2::5")), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "pacs",
    ),
    Case(
        "RA from the listed router",
        [(b(Ether(src=ROUTER, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA()), "portB")],
        "pass", "rail_ra",
    ),
    Case(
        "RA from another router meets policy",
        [(b(Ether(src=MODALITY, dst="33:33:00:00:00:01") / IPv6(src="fe80::2", dst="ff02::1", hlim=255) / ICMPv6ND_RA()), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "multicast",
    ),
    Case(
        "VLAN prefix on its VLAN",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=30) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=6, dport=80, flags="S")), "portB")],
        "drop", "segment_default", "default:lab", "lab", "pacs",
    ),
    Case(
        "VLAN prefix on another VLAN is unassigned",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=31) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=7, dport=80, flags="S")), "portB")],
        "drop", "segment_default", "default:pacs", "unassigned", "pacs",
    ),
    Case(
        "QinQ: the outer tag is the VLAN",
        [(b(Ether(src=OTHER, dst=ROUTER) / Dot1AD(vlan=30) / Dot1Q(vlan=99) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=8, dport=80, flags="S")), "portB")],
        "drop", "segment_default", "default:lab", "lab", "pacs",
    ),
    Case(
        "untagged frame takes the port's PVID",
        [(b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=9, dport=80, flags="S")), "portC")],
        "drop", "segment_default", "default:lab", "lab", "pacs",
    ),
    Case(
        "IPv6 through extension headers",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=10, dport=104, flags="S")), "portA")],
        "pass", "rule", "dicom", "modalities", "pacs",
    ),
    Case(
        "more extension headers than the walk allows",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / TCP(sport=11, dport=104, flags="S")), "portA")],
        "drop", "malformed",
    ),
    Case(
        "later fragment follows the first",
        [
            (b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=77, flags="MF", proto=17) / Raw(bytes(UDP(sport=12, dport=5000, len=48)) + bytes(32))), "portA"),
            (b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=77, frag=5, proto=17) / Raw(bytes(8))), "portA"),
        ],
        "pass", "fragment", "udp-any", "modalities", "pacs",
    ),
    Case(
        "orphan fragment is dropped where a segment enforces",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=78, frag=5, proto=17) / Raw(bytes(8))), "portA")],
        "drop", "fragment_orphan", "-", "modalities", "pacs",
    ),
    Case(
        "tiny first fragment",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=79, flags="MF", proto=6) / Raw(bytes(8))), "portA")],
        "drop", "malformed",
    ),
    Case(
        "ICMP error about an allowed flow is related",
        [
            (b(dicom_syn(40010)), "portA"),
            (b(to_modality() / ICMP(type=3, code=4) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=40010, dport=104, flags="S")), "portB"),
        ],
        "pass", "related_icmp", "dicom",
    ),
    Case(
        "mid-stream TCP is judged from both sides",
        [(b(to_modality() / TCP(sport=104, dport=40011, flags="A")), "portB")],
        "pass", "rule", "dicom", "modalities", "pacs", ("new_flow", "midstream"),
    ),
    Case(
        "access port (PVID) and trunk (tag) share one flow",
        [
            (b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.9.1.1", dst="10.0.99.5") / TCP(sport=14, dport=22, flags="S")), "portC"),
            (b(Ether(src=ROUTER, dst=OTHER) / Dot1Q(vlan=30) / IP(src="10.0.99.5", dst="10.9.1.1") / TCP(sport=22, dport=14, flags="SA")), "portB"),
        ],
        "pass", "reply", "-", "lab", "mgmt",
    ),
    Case(
        "a spoofed mid-stream segment stays spoofed",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.99.5") / TCP(sport=15, dport=22, flags="A")), "portB")],
        "drop", "spoofed",
    ),
    Case("a third VLAN tag is not parsed, and not waved through", [(b(Ether(src=MODALITY, dst=ROUTER) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(src="10.0.1.5", dst="10.0.2.5") / UDP()), "portA")], "drop", "malformed"),
    Case(
        "IPv4 carrying protocol 58 is no ND rail",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", proto=58, ttl=255) / Raw(bytes([135]) + bytes(23))), "portA")],
        "drop", "segment_default", "default:modalities",
    ),
    Case(
        "an MLDv2 report to a group passes as a rail, whatever the policy",
        [(mld_report(), "portA")],
        "pass", "rail_nd", sample="flowless",
    ),
    Case(
        "an MLDv2 report as hosts send it (Router Alert in a hop-by-hop header) is a rail",
        [(b(Ether(src=MODALITY, dst="33:33:00:00:00:16") / IPv6(src="fe80::5", dst="ff02::16", hlim=1)
            / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2()), "portA")],
        "pass", "rail_nd", sample="flowless",
    ),
    Case(
        "an MLD report before DAD (unspecified source) is a rail too",
        [(mld_report(src="::"), "portA")],
        "pass", "rail_nd", sample="flowless",
    ),
    Case(
        "MLD in a frame to one device's MAC is no rail",
        [(mld_report(eth_dst=ROUTER), "portA")],
        "drop", "segment_default", "default:modalities", sample="drop_event",
    ),
    Case(
        "MLD to a unicast address is no rail",
        [(mld_report(dst="fd00:2::5"), "portA")],
        "drop", "segment_default", "default:modalities", sample="drop_event",
    ),
    Case(
        "MLD from a global source is no rail (hosts discard it)",
        [(mld_report(src="fd00:1::5"), "portA")],
        "drop", "segment_default", "default:modalities", sample="drop_event",
    ),
    Case(
        "MLD with hop limit 64 is no rail",
        [(mld_report(hlim=64), "portA")],
        "drop", "segment_default", "default:modalities",
    ),
    Case(
        "IPv6 later fragment with options after the fragment header",
        [
            (b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / IPv6ExtHdrFragment(id=5, m=1, offset=0) / IPv6ExtHdrDestOpt() / UDP(sport=16, dport=5000) / Raw(bytes(16))), "portA"),
            (b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / IPv6ExtHdrFragment(id=5, m=0, offset=4, nh=60) / Raw(bytes(16))), "portA"),
        ],
        "pass", "fragment", "udp-any",
    ),
    Case(
        "port unreachable about a DHCP reply is plumbing",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.0.1") / ICMP(type=3, code=3) / IP(src="10.0.0.1", dst="10.0.1.5") / UDP(sport=67, dport=68)), "portA")],
        "pass", "related_icmp", "-",
    ),
    Case(
        "an IGMP report passes as a rail, whatever the policy (snooping switches need it)",
        [(b(Ether(src=MODALITY, dst="01:00:5e:00:00:16") / IP(src="10.0.1.5", dst="224.0.0.22", ttl=1, proto=2) / Raw(bytes.fromhex("2200f9020000000104000000effffffa"))), "portA")],
        "pass", "rail_igmp", sample="flowless",
    ),
    Case(
        "IGMP to a group in a frame to one device's MAC is no rail",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="224.0.0.22", ttl=1, proto=2) / Raw(bytes(8))), "portA")],
        "drop", "segment_default", "default:modalities", sample="drop_event",
    ),
    Case(
        "IGMP to a unicast address is no rail",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", ttl=1, proto=2) / Raw(bytes(8))), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "pacs", sample="drop_event",
    ),
    Case(
        "a listed DHCP server's address on an untrusted port meets the policy (DHCP snooping)",
        [(b(Ether(src=OTHER, dst=MODALITY) / IP(src="10.0.0.1", dst="10.0.1.5") / UDP(sport=67, dport=68) / Raw(bytes(240))), "portA")],
        "drop", "segment_default", "default:modalities", "unassigned", "modalities", sample="dhcp",
    ),
    Case(
        "a listed router's RA on an untrusted port meets the policy (RA guard)",
        [(b(Ether(src=OTHER, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA()), "portA")],
        "pass", "segment_default", "default:unassigned", "unassigned", "multicast",  # no rail: unassigned's own default
    ),
    Case(
        "an error about DHCP to a host that is no listed server meets the policy",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.9") / ICMP(type=3, code=3) / IP(src="10.0.2.9", dst="10.0.1.5") / UDP(sport=67, dport=68)), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "pacs", sample="drop_event",
    ),
    Case(
        "an error about DHCP other than port unreachable meets the policy",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.0.1") / ICMP(type=3, code=1) / IP(src="10.0.0.1", dst="10.0.1.5") / UDP(sport=67, dport=68)), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "unassigned", sample="drop_event",
    ),
    Case(
        "an ICMP error sent to a third party is not related",
        [
            (b(dicom_syn(40012)), "portA"),
            (b(Ether(src=ROUTER, dst=MODALITY) / IP(src="10.0.2.5", dst="10.0.1.77") / ICMP(type=3, code=4) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=40012, dport=104, flags="S")), "portB"),
        ],
        "drop", "segment_default", "default:pacs",
    ),
    Case(
        "a SYN from the responder's side of a mid-stream entry is judged, not a reply",
        [
            (b(to_modality() / TCP(sport=104, dport=40020, flags="A")), "portB"),  # picks up modality:40020 -> pacs:104
            (b(to_modality() / TCP(sport=104, dport=40020, flags="S")), "portB"),  # pacs opens towards the modality
        ],
        "drop", "segment_default", "default:pacs", "pacs", "modalities",
    ),
    Case("a bare SYN-less, ACK-less segment is not picked up mid-stream", [(b(to_modality() / TCP(sport=104, dport=40021, flags="R")), "portB")], "drop", "segment_default", "default:pacs"),
    Case(
        "an allowed ICMP type opens no other type",
        [
            (b(modality() / ICMP(type=8, id=9)), "portA"),
            (b(to_modality() / ICMP(type=13, id=9)), "portB"),
        ],
        "drop", "segment_default", "default:pacs",
    ),
    Case(
        "an ICMP error from a host that is no router nor the quoted destination is not related",
        [
            (b(dicom_syn(40013)), "portA"),
            (b(Ether(src=ROUTER, dst=MODALITY) / IP(src="10.0.2.7", dst="10.0.1.5") / ICMP(type=3, code=4) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=40013, dport=104, flags="S")), "portB"),
        ],
        "drop", "segment_default", "default:pacs",
    ),
    Case(
        "DHCPv4 ports over IPv6 are no rail",
        [(b(Ether(src=MODALITY, dst=ROUTER) / IPv6(src="fd00:1::5", dst="fd00:2::5") / UDP(sport=68, dport=67)), "portA")],
        "pass", "rule", "udp-any",
    ),
    Case(
        "broadcast destination is a pseudo-segment",
        [(b(Ether(src=MODALITY, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.1.5", dst="10.0.1.255") / UDP(sport=13, dport=9999)), "portA")],
        "drop", "segment_default", "default:modalities", "modalities", "broadcast",
    ),
]


@pytest.fixture(scope="module")
def tracer() -> Iterator[Tracer]:
    with Tracer(config.load(FIXTURE_CONFIG)) as t:
        yield t


def _stats(tracer: Tracer) -> dict:
    assert tracer.dataplane is not None
    return tracer.dataplane.stats()


def _hits(tracer: Tracer) -> dict:
    assert tracer.dataplane is not None
    return tracer.dataplane.rule_hits(list(tracer.rule_names))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture(tracer: Tracer, case: Case) -> None:
    for frame, ingress in case.frames[:-1]:
        tracer.trace(frame, ingress)
    frame, ingress = case.frames[-1]
    stats_before, hits_before = _stats(tracer), _hits(tracer)
    result = tracer.trace(frame, ingress)

    assert (result.verdict, result.reason, result.rule) == (case.verdict, case.reason, case.rule)
    assert result.xdp_action == ("drop" if case.verdict == "drop" else "pass")
    if case.src is not None:
        assert (result.src_segment, result.dst_segment) == (case.src, case.dst)
    if case.flags is not None:
        assert result.flags == case.flags
    if case.sample is not None:
        assert result.sample == case.sample

    key = (abi.Verdict[case.verdict], abi.Reason[case.reason])
    stats_after = _stats(tracer)
    moved = {k for k in stats_after if stats_after[k] != stats_before.get(k)}
    assert moved == {key}
    before = stats_before.get(key)
    assert stats_after[key].packets == (before.packets if before else 0) + 1
    assert stats_after[key].bytes == (before.bytes if before else 0) + len(frame)

    hits_after = _hits(tracer)
    moved_rules = {tracer.rule_names[r] for r in hits_after if hits_after[r] != hits_before.get(r)}
    assert moved_rules == ({case.rule} if case.rule != "-" else set())


@pytest.mark.parametrize("name", PROGRAM_NAMES)
def test_the_verifier_has_room_to_spare(tracer: Tracer, name: str) -> None:
    """Half the verifier's budget at most, per program: a change that multiplies the verified paths (a new field
    kept alive across the parse, a packet read that leaves differently bounded pointers) fails here, with room left,
    and not as E2BIG at load time on a kernel that verifies a little differently."""
    used = bpfsys.prog_verified_insns(tracer.loader.program_fds()[name])
    if not used:
        pytest.skip("this kernel reports no verified_insns (before Linux 5.16)")
    assert used < bpfsys.VERIFIER_INSN_LIMIT // 2, f"the verifier processed {used:,} instructions of {name}"


@pytest.mark.parametrize("name", PROGRAM_NAMES)
def test_the_stack_has_room_to_spare(tracer: Tracer, name: str) -> None:
    """480 of the 512 bytes at most, per program: another LLVM (Debian 12 and 13 differ) lays the stack out
    differently, and a program over 512 does not compile. New per-packet state belongs in a per-CPU scratch map
    (see maps.h), or in the other program."""
    depth = tracer.loader.stack_depth(name)
    assert 100 < depth <= 480, f"{name} uses {depth} bytes of stack"


def test_without_the_judging_program_a_new_flow_passes_unjudged_and_counted(tracer: Tracer) -> None:
    """The slot xdp_medseg tail-calls is filled before attaching and kept by its pin; emptied, a new flow passes,
    counted (fail-open, as a stopped manager), while a flow hit is still served by xdp_medseg alone."""
    slots = tracer.loader.bpf[b"judge_program"]  # type: ignore[index]
    established = b(dicom_syn(40130))
    tracer.run_frame(established, "portA")
    before = tracer.dataplane.pressure()[abi.Pressure.unjudged]  # type: ignore[union-attr]
    del slots[ctypes.c_int(0)]
    try:
        denied = tracer.trace(b(modality() / TCP(sport=40131, dport=22, flags="S")), "portA")
        assert (denied.verdict, denied.reason) == ("pass", "unjudged")
        assert tracer.trace(b(modality() / TCP(sport=40130, dport=104, flags="A")), "portA").reason == "established"
    finally:
        slots[ctypes.c_int(0)] = ctypes.c_int(tracer.loader.judge_fd)
    assert tracer.dataplane.pressure()[abi.Pressure.unjudged] == before + 1  # type: ignore[union-attr]
    assert tracer.trace(b(modality() / TCP(sport=40132, dport=22, flags="S")), "portA").verdict == "drop"


def test_a_restart_pairs_the_attached_program_with_the_new_judging_one(tracer: Tracer) -> None:
    """A restart fills the pinned slot with its medseg_judge while the old xdp_medseg is still attached: the old
    one's handoff must reach the new one (pinned handoff maps), and the pairing must judge as either alone."""
    from medseg_xdp.loader import Loader

    restarted = Loader(tracer.loader.bridge, pin_root=tracer.pin_root, sizes=tracer.loader.sizes)
    try:
        restarted.compile()
        restarted.arm()
        allowed = tracer.trace(b(dicom_syn(40140)), "portA")  # tracer.loader's xdp_medseg, the new medseg_judge
        denied = tracer.trace(b(modality() / TCP(sport=40141, dport=22, flags="S")), "portA")
        assert (allowed.verdict, allowed.reason, allowed.rule) == ("pass", "rule", "dicom")
        assert (denied.verdict, denied.reason, denied.rule) == ("drop", "segment_default", "default:modalities")
    finally:
        restarted.close()  # its medseg_judge stays in the pinned slot
    assert tracer.trace(b(dicom_syn(40142)), "portA").rule == "dicom"
    tracer.loader.arm()


def test_pinned_state_stays_while_a_manager_holds_the_program(tracer: Tracer) -> None:
    """Not attached anywhere, but loaded by a manager (here the tracer): the pins that keep judge_program filled
    stay, whichever namespace asks."""
    from medseg_xdp.loader import Loader, LoaderError

    with pytest.raises(LoaderError, match=r"xdp_medseg \(program id \d+\) still uses this bridge's pinned maps"):
        Loader(tracer.loader.bridge, pin_root=tracer.pin_root, sizes=tracer.loader.sizes).remove_pinned_state()
    assert tracer.loader.pin_dir.is_dir()


def test_a_live_bridge_writes_no_decision_record(tracer: Tracer) -> None:
    """The per-packet record is the tracer's alone (SETTING_RECORD_DECISION): as deployed, the program skips it."""
    frame = b(dicom_syn(40100))
    with tracer.deployed(), pytest.raises(RuntimeError, match="recorded no decision"):
        tracer.run_frame(frame, "portA")
    assert tracer.trace(frame, "portA").reason == "established"  # the packet above opened the flow


def test_top_flows_finds_the_largest_across_batches() -> None:
    """Dataplane.top_flows, what the daemon's `flows` command reads: the largest flows by bytes (both directions)
    over several batch chunks, decoded only for those."""
    count, top = 10_000, 25  # three chunks of 4,096
    totals = random.Random(7).sample(range(1, 10**9), count)
    keys, values = bytearray(), bytearray()
    for i, total in enumerate(totals):
        keys += abi.to_bytes(abi.FlowKey(port_lo=i & 0xFFFF, port_hi=i >> 16, proto=6, family=4))
        entry = abi.FlowEntry()
        entry.bytes[0], entry.bytes[1] = total // 3, total - total // 3
        values += abi.to_bytes(entry)
    largest = sorted(range(count), key=lambda i: totals[i], reverse=True)[:top]
    with Tracer(config.load(FIXTURE_CONFIG)) as t:
        assert t.dataplane is not None
        t.dataplane.maps["flows"].update_batch_raw(bytes(keys), bytes(values), count)
        chosen = t.dataplane.top_flows(top)
        assert [key.port_lo | key.port_hi << 16 for key, _ in chosen] == largest
        assert [entry.bytes[0] + entry.bytes[1] for _, entry in chosen] == [totals[i] for i in largest]
        assert len(t.dataplane.top_flows(count + 1)) == count


def test_denied_flow_gets_no_entry(tracer: Tracer) -> None:
    assert tracer.dataplane is not None
    flows_before = sum(1 for _ in tracer.dataplane.flows())
    for port in range(2000, 2050):
        assert tracer.trace(b(modality() / TCP(sport=port, dport=23, flags="S")), "portA").verdict == "drop"
    assert sum(1 for _ in tracer.dataplane.flows()) == flows_before


def test_a_repeated_denial_is_served_from_the_deny_cache_within_its_generation() -> None:
    """The second identical dropped packet takes the cached judgement: the same decision and counters;
    a policy flip that allows it is obeyed at once (the cache holds one generation)."""
    cfg = config.load(FIXTURE_CONFIG)
    with Tracer(cfg) as t:
        assert t.dataplane is not None
        telnet = b(modality() / TCP(sport=43000, dport=23, flags="S"))
        denied = t.dataplane.maps["denied"]
        first = t.run_frame(telnet, "portA")[0]
        for _ in range(300):  # one denial in 8 is kept (DENY_CACHE_ONE_IN)
            if list(denied.keys()):
                break
            t.run_frame(telnet, "portA")
        cached = list(denied.items())
        assert len(cached) == 1 and cached[0][1].gen == t.dataplane.active_generation()
        second = t.run_frame(telnet, "portA")[0]
        fields = [name for name, _ in abi.Decision._fields_ if name != "seq"]
        assert [getattr(second, f) for f in fields] == [getattr(first, f) for f in fields]
        assert t.explain(second, 1).verdict == "drop"
        # the same flow from another port is another key (the spoofing check depends on the port)
        for _ in range(300):
            t.run_frame(telnet, "portB")
        assert len(list(denied.keys())) == 2
        opened = config.parse(FIXTURE_CONFIG.read_text() + '\n[[rules]]\nid = "telnet"\nfrom = "modalities"\nto = "pacs"\nproto = "tcp"\nports = [23]\naction = "allow"\n', "opened")
        t.load_config(opened)
        assert t.trace(telnet, "portA").verdict == "pass"


def test_a_later_fragment_follows_its_first_across_one_flip_not_two() -> None:
    """A datagram in flight at a flip completes; a verdict two generations old is an orphan's."""
    cfg = config.load(FIXTURE_CONFIG)
    with Tracer(cfg) as t:
        first = Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=79, flags="MF", proto=17) / Raw(bytes(UDP(sport=13, dport=5000, len=48)) + bytes(32))
        later = Ether(src=MODALITY, dst=ROUTER) / IP(src="10.0.1.5", dst="10.0.2.5", id=79, frag=5, proto=17) / Raw(bytes(8))
        assert t.trace(b(first), "portA").verdict == "pass"
        assert (t.trace(b(later), "portA").reason) == "fragment"
        t.load_config(cfg)  # the same policy, a new generation
        assert t.trace(b(later), "portA").reason == "fragment"
        t.load_config(cfg)
        result = t.trace(b(later), "portA")
        assert (result.verdict, result.reason) == ("drop", "fragment_orphan")


def test_new_generation_rejudges_established_flows() -> None:
    """A policy flip applies to flows already in the table, at their next packet."""
    cfg = config.load(FIXTURE_CONFIG)
    with Tracer(cfg) as t:
        assert t.trace(b(dicom_syn(41000)), "portA").verdict == "pass"
        assert t.trace(b(modality() / TCP(sport=41000, dport=104, flags="A")), "portA").reason == "established"
        stricter = config.parse(FIXTURE_CONFIG.read_text().replace('action = "allow"  # dicom', 'action = "drop"  # dicom'), "stricter")
        t.load_config(stricter)
        result = t.trace(b(modality() / TCP(sport=41000, dport=104, flags="A")), "portA")
        assert (result.verdict, result.reason, result.flags) == ("drop", "rule", ("revalidated",))
        assert t.dataplane is not None
        assert not [key for key, _ in t.dataplane.flows() if 41000 in (_port(key.port_lo), _port(key.port_hi))]


def test_a_connection_picked_up_midstream_takes_the_listening_end_for_the_responder() -> None:
    """Picked up from the PACS's segment while both ends judge alike (audit), the entry takes the end that listens
    (port 104, not 41500) for the responder, whichever end sent first: at the next flip the connection is judged
    from the modality's end, by the rule that allows it, and is not dropped for a wrong guess."""
    cfg = config.load(FIXTURE_CONFIG)
    from_pacs = b(to_modality() / TCP(sport=104, dport=41500, flags="PA"))
    audited = config.parse(FIXTURE_CONFIG.read_text().replace('action = "allow"  # dicom', 'action = "audit"  # dicom'), "audited")
    with Tracer(audited) as t:
        assert t.dataplane is not None
        t.dataplane.set_break_glass(True)  # both ends audit: a tie
        picked = t.trace(from_pacs, "portB")
        assert (picked.verdict, picked.rule, "midstream" in picked.flags) == ("audit", "dicom", True), picked
        t.dataplane.set_break_glass(False)
        t.load_config(cfg)
        after = t.trace(from_pacs, "portB")
        assert (after.verdict, after.reason, after.rule, after.flags) == ("pass", "rule", "dicom", ("revalidated",)), after
        assert t.trace(from_pacs, "portB").reason == "reply"
        assert t.trace(b(modality() / TCP(sport=41500, dport=104, flags="A")), "portA").reason == "established"


def test_a_connection_picked_up_from_its_servers_segment_is_not_audited_for_life_after_a_flip() -> None:
    """Picked up under a monitor-only policy (a first deployment) from the PACS's segment: a pass, so the other
    end is not judged and the PACS is taken for the initiator. The proposal goes live in monitor mode; judged
    from the PACS's end it would be a would-drop for as long as the connection lives. It is picked up again
    instead, judged from both ends, and passes by the rule for the modality's end."""
    monitor_only = config.parse(FIXTURE_CONFIG.read_text().replace('mode = "enforce"\ndefault = "drop"', 'mode = "monitor"\ndefault = "allow"'), "x-ray")
    proposal = config.parse(FIXTURE_CONFIG.read_text().replace('mode = "enforce"', 'mode = "monitor"'), "proposal")
    from_pacs = b(to_modality() / TCP(sport=104, dport=41700, flags="PA"))
    with Tracer(monitor_only) as t:
        assert (t.trace(from_pacs, "portB").verdict, t.trace(from_pacs, "portB").reason) == ("pass", "established")
        t.load_config(proposal)
        first = t.trace(from_pacs, "portB")
        assert (first.verdict, first.flags) == ("audit", ("revalidated",)), first  # the old guess, once
        again = t.trace(from_pacs, "portB")
        assert (again.verdict, again.rule, set(again.flags)) == ("pass", "dicom", {"new_flow", "midstream"}), again
        assert t.trace(b(modality() / TCP(sport=41700, dport=104, flags="A")), "portA").reason == "established"


@pytest.mark.parametrize(("pacs_port", "modality_port", "pacs_listens"), [
    (6661, 3000, False),  # both registered ports: the lower one listens (an old device's low ephemeral port fools this)
    (50000, 40000, False),  # both ephemeral: the lower one listens
    (3000, 50000, True),  # a port below the ephemeral range facing one in it listens
    (21, 41600, True),  # a well-known port facing a higher one listens
])
def test_a_midstream_tie_takes_the_end_the_ports_say_listens_for_the_responder(pacs_port: int, modality_port: int, pacs_listens: bool) -> None:
    """Both ends judge alike (break-glass: both defaults audit); the PACS's segment comes first. The entry's
    initiator is the end that does not listen, which the other end's next packet shows (established or reply)."""
    with Tracer(config.load(FIXTURE_CONFIG)) as t:
        assert t.dataplane is not None
        t.dataplane.set_break_glass(True)
        picked = t.trace(b(to_modality() / TCP(sport=pacs_port, dport=modality_port, flags="PA")), "portB")
        assert (picked.verdict, "midstream" in picked.flags) == ("audit", True), picked
        from_modality = t.trace(b(modality() / TCP(sport=modality_port, dport=pacs_port, flags="A")), "portA")
        assert from_modality.reason == ("established" if pacs_listens else "reply")


def test_an_icmp_error_about_a_flow_of_the_previous_generation_meets_the_policy() -> None:
    """A flow entry not yet judged again under the active policy vouches for no ICMP error."""
    error = b(to_modality() / ICMP(type=3, code=4) / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=41001, dport=104, flags="S"))
    cfg = config.load(FIXTURE_CONFIG)
    with Tracer(cfg) as t:
        assert t.trace(b(dicom_syn(41001)), "portA").verdict == "pass"
        assert t.trace(error, "portB").reason == "related_icmp"
        t.load_config(cfg)  # the same policy, a new generation: the flow is stale until its next packet
        stale = t.trace(error, "portB")
        assert (stale.verdict, stale.reason, stale.src_segment, stale.dst_segment) == ("drop", "segment_default", "pacs", "modalities")
        assert t.trace(b(modality() / TCP(sport=41001, dport=104, flags="A")), "portA").flags == ("revalidated",)
        assert t.trace(error, "portB").reason == "related_icmp"


def test_a_port_dropped_from_pvid_and_allowed_vlans_loses_both_at_the_next_apply() -> None:
    """The ports map is an array: an apply zeroes the entry of a port the new config no longer lists."""
    import ctypes

    untagged = b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=22, dport=80, flags="S"))
    tagged_31 = b(Ether(src=OTHER, dst=ROUTER) / Dot1Q(vlan=31) / IP(src="10.9.1.1", dst="10.0.2.5") / UDP(sport=23, dport=53))
    cfg = config.load(FIXTURE_CONFIG)
    with Tracer(cfg) as t:
        assert t.trace(untagged, "portC").src_segment == "lab"  # PVID 30: the lab's VLAN
        assert t.trace(tagged_31, "portC").reason == "vlan_not_allowed"
        t.load_config(config.parse(FIXTURE_CONFIG.read_text().replace("pvid = { portC = 30 }", "").replace("allowed_vlans = { portC = [30] }", ""), "no portC"))
        assert t.dataplane is not None
        entry = t.dataplane.maps["ports"].lookup(ctypes.c_uint32(t.ifindex["portC"]))
        assert (entry.pvid, entry.vlan_filter) == (0, 0)  # type: ignore[union-attr]
        assert t.trace(b(Ether(src=OTHER, dst=ROUTER) / IP(src="10.9.1.1", dst="10.0.2.5") / TCP(sport=24, dport=80, flags="S")), "portC").src_segment == "unassigned"
        assert t.trace(tagged_31, "portC").reason != "vlan_not_allowed"


def _port(stored: int) -> int:
    """A flow key's port as a number (stored in network byte order)."""
    return int.from_bytes(stored.to_bytes(2, "little"), "big")


FLIP_POLICY = """
[bridge]
ports = ["portA", "portB"]
[segments.left]
macs = ["02:00:00:00:00:01"]
mode = "enforce"
default = "drop"
[segments.right]
macs = ["02:00:00:00:00:02"]
mode = "enforce"
default = "drop"
[[rules]]
from = "left"
to = "right"
proto = "udp"
action = "allow"
"""


_SENDER = r"""
import os, sys
from pyroute2 import netns
from medseg_xdp import bpfsys
prog_fd = bpfsys.obj_get(sys.argv[1])
netns.setns(sys.argv[5])  # not `ip netns exec`: its fresh /sys has no bpffs
template, ifindex, stop_file = bytearray.fromhex(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sent = 0
while sent < 10_000_000 and not (sent % 64 == 0 and os.path.exists(stop_file)):
    # UDP ports: a new flow each time (the policy allows any UDP port)
    template[34:38] = (1024 + sent % 64_000).to_bytes(2, "big") + (53 + sent // 64_000).to_bytes(2, "big")
    bpfsys.prog_test_run(prog_fd, bytes(template), ifindex)
    sent += 1
    if sent == 1:
        print("sending", flush=True)
print(sent, flush=True)
"""
FLIPS = 24


def test_generation_flip_never_mixes_policies(tmp_path: Path) -> None:
    """New flows judged while policies flip: identity and rules always from one generation.

    Policy B gives both segments other ids. A packet that took its identity
    from one generation and its rules from the other would find no rule and
    be dropped by the segment default, so any drop is a mixed judgement.
    The sender is another process, so it runs truly beside the flips: it
    sends from before the first flip until after the last.
    """
    from medseg_xdp import bpfsys

    policy_a = config.parse(FLIP_POLICY, "a")
    policy_b = config.parse(FLIP_POLICY.replace("[segments.left]", "[segments.left]\nid = 11").replace("[segments.right]", "[segments.right]\nid = 12"), "b")
    template = b(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.1.0.1", dst="10.2.0.1") / UDP(sport=1024, dport=53))
    stop_file = tmp_path / "stop"
    with Tracer(policy_a) as t:
        prog_pin = t.pin_root / "prog"
        bpfsys.obj_pin(t.loader.prog_fd, str(prog_pin))
        argv = [sys.executable, "-c", _SENDER, str(prog_pin), template.hex(), str(t.ifindex["portA"]), str(stop_file), t.namespace.name]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as sender:
            try:
                assert sender.stdout is not None
                started = sender.stdout.readline()
                assert started == "sending\n", f"the sender did not start: {started!r}"
                for flip in range(FLIPS):
                    t.load_config(policy_b if flip % 2 == 0 else policy_a)
                assert sender.poll() is None, "the sender stopped before the last flip"
                stop_file.touch()
                output = sender.communicate(timeout=60)[0]
            finally:
                sender.kill()
        assert sender.returncode == 0, output
        sent = int(output)
        stats = _stats(t)
    assert {k: v.packets for k, v in stats.items()} == {(abi.Verdict["pass"], abi.Reason.rule): sent}


def test_break_glass_passes_everything_and_its_end_re_enforces_open_flows() -> None:
    with Tracer(config.load(FIXTURE_CONFIG)) as t:
        assert t.dataplane is not None
        ssh = b(modality() / TCP(sport=42000, dport=22, flags="S"))
        assert t.trace(ssh, "portA").verdict == "drop"
        t.dataplane.set_break_glass(True)
        result = t.trace(ssh, "portA")
        assert (result.verdict, result.reason) == ("audit", "segment_default")  # counted as a would-drop
        assert t.trace(b(modality() / TCP(sport=42000, dport=22, flags="A")), "portA").reason == "established"
        t.dataplane.set_break_glass(False)
        after = t.trace(b(modality() / TCP(sport=42000, dport=22, flags="A")), "portA")
        assert (after.verdict, after.flags) == ("drop", ("revalidated",))


def test_an_apply_never_lets_a_dead_writers_leftovers_go_live() -> None:
    """A writer killed mid-apply left entries of the next generation: the next apply removes them first."""
    with Tracer(config.load(FIXTURE_CONFIG)) as t:
        assert t.dataplane is not None
        live = t.dataplane.active_generation()
        leftover = abi.RuleKey(prefixlen=96, gen=live + 1, src_segment=1, dst_segment=2, proto=6, port_be=int.from_bytes((22).to_bytes(2, "big"), "little"))
        t.dataplane.maps["rules"].update(leftover, abi.RuleVerdict(rule_id=99, action=abi.Action.allow))
        t.load_config(config.load(FIXTURE_CONFIG))
        assert t.trace(b(modality() / TCP(sport=42001, dport=22, flags="S")), "portA").verdict == "drop"
        assert all(k.gen == live + 1 for k in t.dataplane.maps["rules"].keys())
        assert not any(k.port_be == leftover.port_be and k.prefixlen == 96 for k in t.dataplane.maps["rules"].keys())


def test_a_flow_stamped_by_another_cpu_after_this_packet_read_its_clock_is_not_idle() -> None:
    """The reply's CPU may write last_seen_ns later than this packet's clock: the difference is negative, not huge."""
    import time

    with Tracer(config.load(FIXTURE_CONFIG)) as t:
        assert t.dataplane is not None
        request = b(modality() / UDP(sport=43001, dport=5000))
        reply = b(to_modality() / UDP(sport=5000, dport=43001))
        assert t.trace(request, "portA").reason == "rule"
        flows = t.dataplane.maps["flows"]
        [(key, entry)] = [(k, e) for k, e in t.dataplane.flows() if 43001 in (_port(k.port_lo), _port(k.port_hi))]
        entry.last_seen_ns = time.monotonic_ns() + 10**9  # ahead of any clock this packet reads
        flows.update(key, entry)
        assert t.trace(reply, "portB").reason == "reply"


def test_an_idle_flow_is_judged_anew_by_the_kernel() -> None:
    """The real clock: a 1 s idle timeout, a 2.5 s pause, and the flow's reply is judged as new."""
    import time

    text = FIXTURE_CONFIG.read_text().replace("[settings]\n", "[settings]\nidle_timeout = 1\n")
    with Tracer(config.parse(text, "short idle timeout")) as t:
        request = b(modality() / UDP(sport=43000, dport=5000))
        reply = b(to_modality() / UDP(sport=5000, dport=43000))
        assert t.trace(request, "portA").reason == "rule"
        assert t.trace(reply, "portB").reason == "reply"
        time.sleep(2.5)
        after = t.trace(reply, "portB")
        assert (after.verdict, after.reason) == ("drop", "segment_default")  # the pacs may not open towards modalities
