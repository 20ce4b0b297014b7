"""One module per signal; each exposes parse(frame) -> list[Observation]."""

from __future__ import annotations

from medseg_xdp.fingerprint.frame import ETH_P_LLDP, TCP, UDP
from medseg_xdp.fingerprint.parsers import (
    dhcp,
    dicom,
    ge_unity,
    hl7,
    http,
    intellivue,
    lldp,
    mdns,
    oui,
    services,
    snmp,
    ssdp,
    tcpstack,
    tls,
    wsdiscovery,
)

TCP_PAYLOAD = frozenset({("ip", TCP, True)})
TCP_FRAMES = TCP_PAYLOAD | {("ip", TCP, False)}
UDP_PAYLOAD = frozenset({("ip", UDP, True)})
UDP_FRAMES = UDP_PAYLOAD | {("ip", UDP, False)}

# (name, parse, the frames it reads: None for every frame). A parser still
# checks its frames itself; the kind only spares the others the call.
ALL = [
    ("oui", oui.parse, None),
    ("dhcp", dhcp.parse, UDP_PAYLOAD),
    ("tcpstack", tcpstack.parse, TCP_FRAMES),
    ("services", services.parse, TCP_FRAMES | UDP_FRAMES),
    ("tls", tls.parse, TCP_PAYLOAD),
    ("http", http.parse, TCP_PAYLOAD),
    ("dicom", dicom.parse, TCP_PAYLOAD),
    ("hl7", hl7.parse, TCP_PAYLOAD),
    ("intellivue", intellivue.parse, UDP_PAYLOAD),
    ("ge_unity", ge_unity.parse, UDP_PAYLOAD),
    ("snmp", snmp.parse, UDP_PAYLOAD),
    ("mdns", mdns.parse, UDP_PAYLOAD),
    ("ssdp", ssdp.parse, UDP_PAYLOAD),
    ("wsdiscovery", wsdiscovery.parse, UDP_PAYLOAD),
    ("lldp", lldp.parse, frozenset({("eth", ETH_P_LLDP, False)})),
]
