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

TCP_FRAMES = frozenset({("ip", TCP)})
UDP_FRAMES = frozenset({("ip", UDP)})

# (name, parse, the frames it reads: None for every frame). A parser still
# checks its frames itself; the kind only spares the others the call.
ALL = [
    ("oui", oui.parse, None),
    ("dhcp", dhcp.parse, UDP_FRAMES),
    ("tcpstack", tcpstack.parse, TCP_FRAMES),
    ("services", services.parse, TCP_FRAMES | UDP_FRAMES),
    ("tls", tls.parse, TCP_FRAMES),
    ("http", http.parse, TCP_FRAMES),
    ("dicom", dicom.parse, TCP_FRAMES),
    ("hl7", hl7.parse, TCP_FRAMES),
    ("intellivue", intellivue.parse, UDP_FRAMES),
    ("ge_unity", ge_unity.parse, UDP_FRAMES),
    ("snmp", snmp.parse, UDP_FRAMES),
    ("mdns", mdns.parse, UDP_FRAMES),
    ("ssdp", ssdp.parse, UDP_FRAMES),
    ("wsdiscovery", wsdiscovery.parse, UDP_FRAMES),
    ("lldp", lldp.parse, frozenset({("eth", ETH_P_LLDP)})),
]
