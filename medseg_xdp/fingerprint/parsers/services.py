"""Which services a device offers and uses, from TCP and UDP headers alone.

Signals (value "tcp/<port>" or "udp/<port>"):
- service.serves: the side listens on that port. TCP: it answered a SYN with a SYN-ACK (RFC 9293 3.5,
  the handshake), the strongest header-only proof of a listener. UDP: it was sent a datagram on a
  well-known service port (below).
- service.uses: the side talks to that port on another host. TCP: it sent a SYN to it, or received a
  SYN-ACK from it. UDP: it sent a datagram to a well-known service port.

What is not emitted, and why:
- Ephemeral ports: they name a connection, not a service, and would flood the feature store. For TCP
  a port counts when it is below 32768, where Linux's ephemeral range starts (IANA's dynamic range
  starts at 49152; Windows uses that). Every clinical TCP port known here is below it (104, 2575,
  2762, 4242, 6661, 8042, 11112, 24105); a real listener above 32768 is missed, by design.
- UDP has no handshake, so only the destination port counts, and only when it is a known service
  port: every port below 1024 (IANA system ports) plus UDP_SERVICE_PORTS. The source port is never
  used (NFS and NTP clients send from ports below 1024, DNS answers come from 53 to a random port).
- The DST side of a datagram to a broadcast or multicast address: that is a group, not a device.

UDP_SERVICE_PORTS (registered/known ports >= 1024 seen on hospital networks):
1812/1813 RADIUS (802.1X, MAB), 1900 SSDP, 2000 GE CARESCAPE/Unity time sync (vendor use, not IANA),
2575 HL7 MLLP (IANA lists udp too), 3613 BD Alaris discovery (IANA alaris-disc), 3702 WS-Discovery
(IEEE 11073 SDC), 4242 Orthanc DICOM, 5060 SIP (nurse call, VoIP), 5353 mDNS, 5355 LLMNR, 6464 IEEE
11073 SDC (IANA), 6661 HL7 (common site choice), 7000 GE Unity discovery (vendor use), 11112 DICOM
(IANA registers udp too), 24005/24105 Philips IntelliVue Data Export (vendor use). DICOM and HL7 run
on TCP in practice; their UDP entries only make a stray datagram to them count as use of that service.
5000 is left out on purpose: UPnP, Synology, Flask and many vendors' ad-hoc protocols share it, so
it says nothing about a service.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from medseg_xdp.fingerprint.frame import TCP, UDP, Frame, Observation, Side

SYSTEM_PORTS_END = 1024  # RFC 6335: 0-1023 are system ports
EPHEMERAL_START = 32768  # Linux's default ip_local_port_range starts here
UDP_SERVICE_PORTS = frozenset(
    {1812, 1813, 1900, 2000, 2575, 3613, 3702, 4242, 5060, 5353, 5355, 6464, 6661, 7000, 11112, 24005, 24105}
)


def parse(frame: Frame) -> list[Observation]:
    """service.serves / service.uses from a TCP SYN or SYN-ACK, or a UDP datagram to a service port."""
    out: list[Observation] = []  # values built here from integers: printable, nothing to clean
    if frame.proto == TCP:
        if frame.is_syn_ack and _tcp_service_port(frame.sport):
            out.append(Observation(Side.SRC, "service.serves", f"tcp/{frame.sport}"))
            out.append(Observation(Side.DST, "service.uses", f"tcp/{frame.sport}"))
        elif frame.is_syn and _tcp_service_port(frame.dport):
            out.append(Observation(Side.SRC, "service.uses", f"tcp/{frame.dport}"))
    elif frame.proto == UDP and _udp_service_port(frame.dport):
        out.append(Observation(Side.SRC, "service.uses", f"udp/{frame.dport}"))
        if not is_group_destination(frame):
            out.append(Observation(Side.DST, "service.serves", f"udp/{frame.dport}"))
    return out


def _tcp_service_port(port: int) -> bool:
    return 0 < port < EPHEMERAL_START


def _udp_service_port(port: int) -> bool:
    return 0 < port < SYSTEM_PORTS_END or port in UDP_SERVICE_PORTS


def is_group_destination(frame: Frame) -> bool:
    """The frame goes to a broadcast or multicast address (a group, not one device)."""
    try:
        if frame.dst_mac and int(frame.dst_mac[:2], 16) & 0x01:
            return True  # IEEE 802: the I/G bit of the first octet marks group addresses
    except ValueError:
        return False
    return _is_group_ip(frame.dst_ip or "")


@lru_cache(maxsize=4096)
def _is_group_ip(text: str) -> bool:
    """Multicast or limited broadcast; cached: parsing an address costs about a microsecond."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255")
