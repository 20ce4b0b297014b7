"""One module per signal; each exposes parse(frame) -> list[Observation]."""

from __future__ import annotations

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

ALL = [
    ("oui", oui.parse),
    ("dhcp", dhcp.parse),
    ("tcpstack", tcpstack.parse),
    ("services", services.parse),
    ("tls", tls.parse),
    ("http", http.parse),
    ("dicom", dicom.parse),
    ("hl7", hl7.parse),
    ("intellivue", intellivue.parse),
    ("ge_unity", ge_unity.parse),
    ("snmp", snmp.parse),
    ("mdns", mdns.parse),
    ("ssdp", ssdp.parse),
    ("wsdiscovery", wsdiscovery.parse),
    ("lldp", lldp.parse),
]
