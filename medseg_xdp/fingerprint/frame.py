"""Decode a sampled Ethernet frame once, for every parser.

The frame may be cut short (samples hold at most the snaplen), so every
field beyond what is present is simply absent: a parser reads `payload`,
which holds whatever L4 payload bytes were captured.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import NamedTuple

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_LLDP = 0x88CC
VLAN_TPIDS = (0x8100, 0x88A8)
IPV6_EXTENSION_HEADERS = (0, 43, 60, 51)
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


class Side(Enum):
    """Whose property an observation is: the frame's sender or its receiver."""

    SRC = "src"
    DST = "dst"


class Observation(NamedTuple):
    """One fact about one side of a frame: e.g. (SRC, "dhcp.vendor_class", "MSFT 5.0").

    A NamedTuple: immutable, and built in a fraction of a frozen dataclass's time (parsers make one or
    two of them per sample)."""

    side: Side
    signal: str
    value: str


@dataclass(slots=True)
class Frame:
    """The parts of a frame the parsers need; absent parts are None / empty (slots: faster to build and read)."""

    data: bytes
    src_mac: str = ""
    dst_mac: str = ""
    vlan: int = 0
    ethertype: int = 0
    l3: bytes = b""  # from the L3 header on (ARP, LLDP: the whole payload)
    ip_version: int = 0
    src_ip: str | None = None
    dst_ip: str | None = None
    ttl: int = 0
    dont_fragment: bool = False
    proto: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    tcp_window: int = 0
    tcp_options: bytes = b""
    icmp_type: int = -1
    payload: bytes = b""
    truncated: bool = False

    @property
    def is_syn(self) -> bool:
        return self.proto == TCP and self.tcp_flags & 0x12 == 0x02

    @property
    def is_syn_ack(self) -> bool:
        return self.proto == TCP and self.tcp_flags & 0x12 == 0x12


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _ipv4_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, raw)


@lru_cache(maxsize=4096)
def _ipv6_text(raw: bytes) -> str:
    """RFC 5952 text as ipaddress writes it (inet_ntop writes ::a.b.c.d forms ipaddress does not)."""
    return str(ipaddress.IPv6Address(raw))


def decode(data: bytes) -> Frame:
    """Decode as far as the bytes go; never raises."""
    frame = Frame(data=data)
    if len(data) < 14:
        frame.truncated = True
        return frame
    frame.dst_mac, frame.src_mac = _mac(data[0:6]), _mac(data[6:12])
    ethertype = struct.unpack_from("!H", data, 12)[0]
    offset = 14
    for depth in range(2):
        if ethertype not in VLAN_TPIDS or offset + 4 > len(data):
            break
        tci, ethertype = struct.unpack_from("!HH", data, offset)
        if depth == 0:
            frame.vlan = tci & 0x0FFF
        offset += 4
    frame.ethertype = ethertype
    frame.l3 = data[offset:]
    if ethertype == ETH_P_IP:
        _ipv4(frame, frame.l3)
    elif ethertype == ETH_P_IPV6:
        _ipv6(frame, frame.l3)
    return frame


def _ipv4(frame: Frame, l3: bytes) -> None:
    if len(l3) < 20 or l3[0] >> 4 != 4:
        frame.truncated = True
        return
    header_len = (l3[0] & 0x0F) * 4
    total_len = struct.unpack_from("!H", l3, 2)[0]
    frag = struct.unpack_from("!H", l3, 6)[0]
    frame.ip_version = 4
    frame.ttl, frame.proto = l3[8], l3[9]
    frame.dont_fragment = bool(frag & 0x4000)
    frame.src_ip = _ipv4_text(l3[12:16])
    frame.dst_ip = _ipv4_text(l3[16:20])
    if header_len < 20 or frag & 0x1FFF:
        return  # bad header, or a later fragment: no L4 header here
    end = min(total_len, len(l3)) if total_len >= header_len else len(l3)  # drop Ethernet padding
    _l4(frame, l3[header_len:end])


def _ipv6(frame: Frame, l3: bytes) -> None:
    if len(l3) < 40 or l3[0] >> 4 != 6:
        frame.truncated = True
        return
    frame.ip_version = 6
    frame.ttl = l3[7]
    frame.src_ip = _ipv6_text(l3[8:24])
    frame.dst_ip = _ipv6_text(l3[24:40])
    next_header, offset = l3[6], 40
    for _ in range(8):
        if next_header in IPV6_EXTENSION_HEADERS and offset + 2 <= len(l3):
            length = (l3[offset + 1] + 2) * 4 if next_header == 51 else (l3[offset + 1] + 1) * 8
            next_header, offset = l3[offset], offset + length
        elif next_header == 44 and offset + 8 <= len(l3):
            if struct.unpack_from("!H", l3, offset + 2)[0] & 0xFFF8:
                frame.proto = l3[offset]
                return  # a later fragment
            next_header, offset = l3[offset], offset + 8
        else:
            break
    frame.proto = next_header
    _l4(frame, l3[offset:])


def _l4(frame: Frame, l4: bytes) -> None:
    if frame.proto == TCP and len(l4) >= 20:
        frame.sport, frame.dport = struct.unpack_from("!HH", l4, 0)
        data_offset = (l4[12] >> 4) * 4
        frame.tcp_flags = l4[13]
        frame.tcp_window = struct.unpack_from("!H", l4, 14)[0]
        frame.tcp_options = l4[20 : max(20, data_offset)]
        frame.payload = l4[max(20, data_offset) :]
    elif frame.proto == UDP and len(l4) >= 8:
        frame.sport, frame.dport = struct.unpack_from("!HH", l4, 0)
        frame.payload = l4[8:]
    elif frame.proto in (ICMP, ICMPV6) and len(l4) >= 4:
        frame.icmp_type = l4[0]
        frame.payload = l4[4:]
    else:
        frame.truncated = len(l4) == 0
