"""Generic fingerprint parsers: real captures, frames built with scapy, and hostile bytes.

Captures come from shared/captures/ndpi beside the repository (CI lays shared/ there); tests that
need one skip when it is absent. Expected values that are not plain text in the capture were
cross-checked with independent tools: TCP signatures with p0f 3 (`p0f -r`, whose raw_sig prints
"ttl+distance" where ours prints the initial TTL), JA4 and JA4D with the ja4plus package.
"""

from __future__ import annotations

import csv
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import raw
from scapy.asn1.asn1 import ASN1_OID, ASN1_STRING
from scapy.contrib.lldp import (
    LLDPDU,
    LLDPDUChassisID,
    LLDPDUEndOfLLDPDU,
    LLDPDUPortDescription,
    LLDPDUPortID,
    LLDPDUSystemCapabilities,
    LLDPDUSystemDescription,
    LLDPDUSystemName,
    LLDPDUTimeToLive,
)
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import VENDOR_CLASS_DATA, DHCP6_Solicit, DHCP6OptClientFQDN, DHCP6OptOptReq, DHCP6OptVendorClass
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV, dns_compress
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.snmp import SNMP, SNMPresponse, SNMPvarbind
from scapy.utils import rdpcap

from medseg_xdp.fingerprint.frame import Frame, Observation, Side, decode
from medseg_xdp.fingerprint.parsers import dhcp, http, lldp, mdns, oui, snmp, ssdp, tcpstack, tls, wsdiscovery
from medseg_xdp.fingerprint.parsers._text import MAX_VALUE, clean

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures" / "ndpi"
PARSERS: dict[str, Callable[[Frame], list[Observation]]] = {
    "oui": oui.parse,
    "dhcp": dhcp.parse,
    "tcpstack": tcpstack.parse,
    "tls": tls.parse,
    "http": http.parse,
    "snmp": snmp.parse,
    "mdns": mdns.parse,
    "ssdp": ssdp.parse,
    "wsdiscovery": wsdiscovery.parse,
    "lldp": lldp.parse,
}
PHILIPS_MAC = "00:09:5c:12:34:56"  # OUI 00:09:5C: Philips Medical Systems
SERVER_MAC = "00:11:22:33:44:55"
SNAPLEN = 512


def capture(name: str) -> list[bytes]:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"capture {path} not present")
    return [raw(packet) for packet in rdpcap(str(path))]


def seen(parser: Callable[[Frame], list[Observation]], data: bytes) -> set[tuple[Side, str, str]]:
    return {(o.side, o.signal, o.value) for o in parser(decode(data))}


def seen_all(parser: Callable[[Frame], list[Observation]], frames: list[bytes]) -> set[tuple[Side, str, str]]:
    found: set[tuple[Side, str, str]] = set()
    for data in frames:
        found |= seen(parser, data)
    return found


def values(parser: Callable[[Frame], list[Observation]], data: bytes, signal: str) -> list[str]:
    return [o.value for o in parser(decode(data)) if o.signal == signal]


# ---- frames built with scapy, also the seeds of the mutation tests ----


def dhcp_discover() -> bytes:
    """A DISCOVER as an embedded Linux client (udhcpc-like) on a patient monitor would send it."""
    return raw(
        Ether(src=PHILIPS_MAC, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=bytes.fromhex(PHILIPS_MAC.replace(":", "")), xid=0x1234)
        / DHCP(
            options=[
                ("message-type", "discover"),
                ("client_id", b"\x01" + bytes.fromhex(PHILIPS_MAC.replace(":", ""))),
                ("requested_addr", "10.20.0.15"),
                ("max_dhcp_size", 1500),
                ("vendor_class_id", b"udhcp 1.30.1"),
                ("hostname", b"MX450-ICU3"),
                ("param_req_list", [1, 3, 6, 12, 15, 28, 42]),
                (81, b"\x00\x00\x00mx450-icu3.ward.example"),
                "end",
            ]
        )
    )


def dhcp_offer(broadcast: bool = False) -> bytes:
    return raw(
        Ether(src="00:11:22:33:44:55", dst="ff:ff:ff:ff:ff:ff" if broadcast else PHILIPS_MAC)
        / IP(src="10.20.0.1", dst="10.20.0.15")
        / UDP(sport=67, dport=68)
        / BOOTP(op=2, chaddr=bytes.fromhex(PHILIPS_MAC.replace(":", "")), yiaddr="10.20.0.15")
        / DHCP(
            options=[
                ("message-type", "offer"),
                ("server_id", "10.20.0.1"),
                ("lease_time", 3600),
                ("hostname", b"mx450-icu3"),
                "end",
            ]
        )
    )


def dhcpv6_solicit() -> bytes:
    return raw(
        Ether(src=PHILIPS_MAC, dst="33:33:00:01:00:02")
        / IPv6(src="fe80::209:5cff:fe12:3456", dst="ff02::1:2")
        / UDP(sport=546, dport=547)
        / DHCP6_Solicit(trid=0x42)
        / DHCP6OptOptReq(reqopts=[23, 24, 39])
        / DHCP6OptVendorClass(enterprisenum=311, vcdata=[VENDOR_CLASS_DATA(data=b"MSFT 5.0")])
        / DHCP6OptClientFQDN(flags=0, fqdn=b"ws-radiology-07.example.")
    )


def http_request() -> bytes:
    payload = (
        b"GET /api/status HTTP/1.1\r\nHost: pacs.example:8042\r\n"
        b"User-Agent: Orthanc/1.12.1 (DICOMweb client)\r\nAccept: */*\r\n\r\n"
    )
    return raw(
        Ether(src=PHILIPS_MAC, dst="00:11:22:33:44:55")
        / IP(src="10.20.0.15", dst="10.20.0.2")
        / TCP(sport=40000, dport=8042, flags="PA")
        / payload
    )


def snmp_sysdescr_response() -> bytes:
    return raw(
        Ether(src="00:11:22:33:44:66", dst="00:11:22:33:44:55")
        / IP(src="10.20.0.30", dst="10.20.0.2")
        / UDP(sport=161, dport=50000)
        / SNMP(
            version=1,
            community=b"s3cret-community",
            PDU=SNMPresponse(
                id=7,
                varbindlist=[
                    SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.1.0"), value=ASN1_STRING(b"Draeger Evita V500 SW 2.51")),
                    SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.2.0"), value=ASN1_OID("1.3.6.1.4.1.2378.1.2")),
                    SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.4.0"), value=ASN1_STRING(b"jane.doe@hospital.example")),
                ],
            ),
        )
    )


def mdns_printer_announcement() -> bytes:
    """A DNS-SD announcement of an IPP printer, name-compressed as real responders send it."""
    answers = [
        DNSRR(rrname="_ipp._tcp.local.", type="PTR", rdata="Ward3 LaserJet._ipp._tcp.local.", ttl=4500),
        DNSRRSRV(rrname="Ward3 LaserJet._ipp._tcp.local.", target="NPI12AB34.local.", port=631, ttl=120),
        DNSRR(
            rrname="Ward3 LaserJet._ipp._tcp.local.",
            type="TXT",
            rdata=[b"txtvers=1", b"ty=HP LaserJet 400 M401dne", b"product=(HP LaserJet 400 M401dne)"],
        ),
        DNSRR(rrname="NPI12AB34.local.", type="A", rdata="10.20.0.40", ttl=120),
    ]
    dns = dns_compress(DNS(id=0, qr=1, aa=1, rd=0, qd=[], an=answers))
    assert b"\xc0" in raw(dns)  # compression pointers are in use
    return raw(
        Ether(src="00:11:22:33:44:77", dst="01:00:5e:00:00:fb")
        / IP(src="10.20.0.40", dst="224.0.0.251", ttl=255)
        / UDP(sport=5353, dport=5353)
        / dns
    )


def mdns_query() -> bytes:
    return raw(
        Ether(src=PHILIPS_MAC, dst="01:00:5e:00:00:fb")
        / IP(src="10.20.0.15", dst="224.0.0.251", ttl=255)
        / UDP(sport=5353, dport=5353)
        / DNS(id=0, qr=0, rd=0, qd=[DNSQR(qname="_ipp._tcp.local.", qtype="PTR")])
    )


SDC_HELLO = b"""<?xml version="1.0" encoding="UTF-8"?>
<s12:Envelope xmlns:s12="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing"
 xmlns:wsd="http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01" xmlns:dpws="http://docs.oasis-open.org/ws-dd/ns/dpws/2009/01"
 xmlns:mdpws="http://standards.ieee.org/downloads/11073/11073-20702-2016">
<s12:Header><wsa:Action>http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01/Hello</wsa:Action>
<wsa:MessageID>urn:uuid:0b6f4a04-6f2c-4a4e-9d0e-3c1d2c1c9a11</wsa:MessageID>
<wsa:To>urn:docs-oasis-open-org:ws-dd:ns:discovery:2009:01</wsa:To></s12:Header>
<s12:Body><wsd:Hello>
<wsa:EndpointReference><wsa:Address>urn:uuid:6f1a3c2e-1111-4d2b-8c1a-0123456789ab</wsa:Address></wsa:EndpointReference>
<wsd:Types>dpws:Device  mdpws:MedicalDevice</wsd:Types>
<wsd:Scopes>sdc.mds.pkp:1.2.840.10004.20701.1.1 sdc.ctxt.pat:/sdc.ctxt.pat.detail/PID-0042
 sdc.ctxt.loc:/sdc.ctxt.loc.detail/HOSP1%2F%2FICU%2FBed3?fac=HOSP1&amp;poc=ICU&amp;bed=Bed3
 sdc.cdc.type:/urn:oid:1.2.840.10004.1.1.1.0.0.1/69650</wsd:Scopes>
<wsd:XAddrs>https://10.20.0.50:6464/sdc</wsd:XAddrs><wsd:MetadataVersion>1</wsd:MetadataVersion></wsd:Hello></s12:Body></s12:Envelope>"""


def wsd_hello() -> bytes:
    return raw(
        Ether(src="00:11:22:33:44:88", dst="01:00:5e:7f:ff:fa")
        / IP(src="10.20.0.50", dst="239.255.255.250", ttl=1)
        / UDP(sport=3702, dport=3702)
        / SDC_HELLO
    )


def wsd_probe() -> bytes:
    probe = (
        b'<s12:Envelope xmlns:s12="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing">'
        b"<s12:Header><wsa:Action>http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01/Probe</wsa:Action></s12:Header>"
        b"<s12:Body><wsd:Probe><wsd:Types>mdpws:MedicalDevice</wsd:Types></wsd:Probe></s12:Body></s12:Envelope>"
    )
    return raw(
        Ether(src=PHILIPS_MAC, dst="01:00:5e:7f:ff:fa")
        / IP(src="10.20.0.15", dst="239.255.255.250")
        / UDP(sport=40001, dport=3702)
        / probe
    )


def lldp_switch() -> bytes:
    return raw(
        Ether(src="00:1b:21:aa:bb:01", dst="01:80:c2:00:00:0e")
        / LLDPDU()
        / LLDPDUChassisID(subtype=4, id="00:1b:21:aa:bb:00")
        / LLDPDUPortID(subtype=5, id=b"Gi1/0/7")
        / LLDPDUTimeToLive(ttl=120)
        / LLDPDUPortDescription(description=b"ICU-3 bed 7 monitor")
        / LLDPDUSystemName(system_name=b"icu3-access-sw1")
        / LLDPDUSystemDescription(description=b"Cisco IOS Software, C2960X Software, Version 15.2(7)E4")
        / LLDPDUSystemCapabilities(mac_bridge_available=1, router_available=1, mac_bridge_enabled=1)
        / LLDPDUEndOfLLDPDU()
    )


def lldp_med_phone() -> bytes:
    """An LLDP-MED endpoint: inventory TLVs (OUI 00-12-BB) built by hand as scapy has no class for them."""

    def tlv(tlv_type: int, value: bytes) -> bytes:
        return struct.pack("!H", tlv_type << 9 | len(value)) + value

    body = (
        tlv(1, b"\x04" + bytes.fromhex("0009 5c12 3456"))
        + tlv(2, b"\x03" + bytes.fromhex("00095c123456"))
        + tlv(3, b"\x00\x78")
        + tlv(127, b"\x00\x12\xbb\x09" + b"Philips")
        + tlv(127, b"\x00\x12\xbb\x0a" + b"IntelliVue MX450")
        + tlv(127, b"\x00\x12\xbb\x08" + b"SERIAL-DE12345678")
        + tlv(0, b"")
    )
    return bytes.fromhex("0180c200000e") + bytes.fromhex(PHILIPS_MAC.replace(":", "")) + b"\x88\xcc" + body


BUILT: dict[str, Callable[[], bytes]] = {
    "dhcp_discover": dhcp_discover,
    "dhcp_offer": dhcp_offer,
    "dhcpv6_solicit": dhcpv6_solicit,
    "http_request": http_request,
    "snmp_sysdescr_response": snmp_sysdescr_response,
    "mdns_printer_announcement": mdns_printer_announcement,
    "mdns_query": mdns_query,
    "wsd_hello": wsd_hello,
    "wsd_probe": wsd_probe,
    "lldp_switch": lldp_switch,
    "lldp_med_phone": lldp_med_phone,
}


# ---- oui ----


def _first_row(file_name: str) -> tuple[str, str]:
    path = oui.IEEE_DATA_DIR / file_name
    if not path.exists():
        pytest.skip(f"{path} not present (Debian package ieee-data)")
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if row[0] != "Registry" and clean(row[2]).lower() not in oui.NOT_A_VENDOR:
                return row[1], clean(row[2])
    pytest.skip(f"no usable row in {path}")


def _mac_from_prefix(prefix: str) -> str:
    digits = (prefix + "0" * 12)[:12]
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2)).lower()


def test_oui_vendor_for_both_sides() -> None:
    if oui.tables() is None:
        pytest.skip("ieee-data not installed")
    frame = Frame(data=b"", src_mac=PHILIPS_MAC, dst_mac="00:1b:63:98:bf:36")
    found = {(o.side, o.signal): o.value for o in oui.parse(frame)}
    assert found[(Side.SRC, "oui.vendor")].startswith("Philips Medical Systems")
    assert found[(Side.DST, "oui.vendor")] == "Apple, Inc."


@pytest.mark.parametrize("file_name", ["mam.csv", "oui36.csv"])
def test_oui_longest_assignment_wins(file_name: str) -> None:
    prefix, organisation = _first_row(file_name)
    vendor, local = oui.lookup(_mac_from_prefix(prefix))
    assert (vendor, local) == (organisation, False)


def test_oui_locally_administered_and_group_addresses() -> None:
    frame = Frame(data=b"", src_mac="02:42:ac:11:00:02", dst_mac="ff:ff:ff:ff:ff:ff")
    assert oui.parse(frame) == [Observation(Side.SRC, "mac.locally_administered", "true")]
    assert oui.parse(Frame(data=b"", src_mac="01:00:5e:00:00:fb", dst_mac="33:33:00:00:00:01")) == []


def test_oui_real_capture() -> None:
    if oui.tables() is None:
        pytest.skip("ieee-data not installed")
    found = seen_all(oui.parse, capture("ipp.pcap"))
    assert (Side.SRC, "oui.vendor", "Apple, Inc.") in found  # 00:1b:63
    assert (Side.SRC, "oui.vendor", "Hewlett Packard") in found  # 00:12:79, the printer


def test_oui_without_ieee_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(oui, "IEEE_DATA_DIR", tmp_path)
    oui.clear_caches()
    try:
        with caplog.at_level(logging.WARNING, logger=oui.__name__):
            assert oui.parse(Frame(data=b"", src_mac=PHILIPS_MAC, dst_mac="00:1b:63:98:bf:36")) == []
            assert oui.parse(Frame(data=b"", src_mac="00:1b:63:98:bf:37", dst_mac=PHILIPS_MAC)) == []
        assert sum("ieee-data" in record.message for record in caplog.records) == 1
    finally:
        oui.clear_caches()


# ---- dhcp ----


def test_dhcp_client_discover() -> None:
    found = seen(dhcp.parse, dhcp_discover())
    expected = {
        ("dhcp.message_type", "DISCOVER"),
        ("dhcp.param_list", "1,3,6,12,15,28,42"),
        ("dhcp.vendor_class", "udhcp 1.30.1"),
        ("dhcp.hostname", "MX450-ICU3"),
        ("dhcp.client_id", "0100095c123456"),
        ("dhcp.max_msg_size", "1500"),
        ("dhcp.fqdn", "mx450-icu3.ward.example"),
        # JA4D: no 53/50/81 in the option list; cross-checked with ja4plus
        ("dhcp.ja4d", "disco1500id_61-57-60-12-55_1-3-6-12-15-28-42"),
        ("dhcp.fingerprint", "disco1500id_61-57-60-12-55_1-3-6-12-15-28-42_udhcp 1.30.1"),
    }
    assert {(Side.SRC, signal, value) for signal, value in expected} == found


def test_dhcp_server_reply() -> None:
    found = seen(dhcp.parse, dhcp_offer())
    assert (Side.SRC, "dhcp.role", "server") in found
    assert (Side.SRC, "dhcp.server_id", "10.20.0.1") in found
    assert (Side.DST, "dhcp.hostname", "mx450-icu3") in found  # addressed to the chaddr
    assert not {o for o in found if o[0] is Side.DST and o[1] != "dhcp.hostname"}
    # a broadcast reply names no client by MAC: nothing on DST
    assert not {o for o in seen(dhcp.parse, dhcp_offer(broadcast=True)) if o[0] is Side.DST}


def test_dhcp_fuzzed_capture() -> None:
    """ndpi's dhcp-fuzz: message type 106, and a vendor class whose length runs past the packet."""
    (frame,) = capture("dhcp-fuzz.pcapng")
    found = {signal: value for _, signal, value in seen(dhcp.parse, frame)}
    assert found["dhcp.message_type"] == "106"
    assert found["dhcp.hostname"] == "MK03862"
    assert found["dhcp.client_id"] == "01001f29da2d79"
    assert found["dhcp.ja4d"] == "001060000nn_61-12_00"  # as ja4plus computes it
    assert "dhcp.vendor_class" not in found  # incomplete: no partial value


def test_dhcpv6_solicit() -> None:
    found = seen(dhcp.parse, dhcpv6_solicit())
    assert found >= {
        (Side.SRC, "dhcpv6.message_type", "SOLICIT"),
        (Side.SRC, "dhcpv6.oro", "23,24,39"),
        (Side.SRC, "dhcpv6.vendor_class", "311:MSFT 5.0"),
        (Side.SRC, "dhcpv6.fqdn", "ws-radiology-07.example"),
    }


# ---- tcpstack ----


def test_tcp_signatures_match_p0f() -> None:
    ipp = seen_all(tcpstack.parse, capture("ipp.pcap"))
    assert (Side.SRC, "tcp.syn_signature", "4:64:0:1460:mss*4,7:mss,sok,ts,nop,ws:df,id+:0") in ipp
    assert (Side.SRC, "tcp.synack_signature", "4:64:0:1460:mss*4,0:mss,nop,ws,nop,nop,ts::0") in ipp
    assert (Side.SRC, "tcp.initial_ttl", "64") in ipp
    curl = seen_all(tcpstack.parse, capture("443-curl.pcap"))
    assert (Side.SRC, "tcp.syn_signature", "4:64:0:1460:65535,5:mss,nop,ws,nop,nop,ts,sok,eol+1:df:0") in curl
    # window 65160 = 45 * (1460 - 12): p0f's "MSS minus timestamps" rule; observed TTL 52 -> 64
    assert (Side.SRC, "tcp.synack_signature", "4:64:0:1452:mss*45,7:mss,sok,ts,nop,ws:df:0") in curl


def test_tcp_initial_ttl_guess() -> None:
    assert [tcpstack.initial_ttl(t) for t in (1, 32, 33, 64, 65, 128, 129, 255)] == [32, 32, 64, 64, 128, 128, 255, 255]


def test_tcp_only_syn_and_synack() -> None:
    frames = capture("ipp.pcap")
    signals = [o.signal for data in frames for o in tcpstack.parse(decode(data))]
    assert signals.count("tcp.syn_signature") == 3 and signals.count("tcp.synack_signature") == 3


def test_tcp_malformed_options_as_p0f_reads_them() -> None:
    # MSS whose length byte says 5 (read at its fixed size anyway), then EOL with non-zero padding
    frame = Frame(data=b"", ip_version=4, proto=6, tcp_flags=0x02, ttl=60, tcp_window=1024)
    frame.tcp_options = b"\x02\x05\x05\xb4\x00\x01"
    assert [o.value for o in tcpstack.parse(frame)] == ["4:64:0:1460:1024,0:mss,eol+1:opt+,bad:0", "64"]
    frame.tcp_options = b"\x05\x40" + bytes(10)  # SACK longer than p0f's 34-byte limit: walk aborted
    assert tcpstack.parse(frame)[0].value == "4:64:0:0:1024,0:sack:bad:0"


def test_tcp_ipv6_syn() -> None:
    syn = (
        Ether(src=PHILIPS_MAC, dst=SERVER_MAC)
        / IPv6(src="fe80::1", dst="fe80::2", hlim=64, fl=0x12345)
        / TCP(
            sport=1234,
            dport=443,
            flags="S",
            seq=1000,
            window=64800,
            options=[("MSS", 1440), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)],
        )
    )
    assert values(tcpstack.parse, raw(syn), "tcp.syn_signature") == ["6:64:0:1440:mss*45,7:mss,sok,ts,nop,ws:flow:0"]


# ---- tls ----


def test_tls_client_hello_curl() -> None:
    found = seen_all(tls.parse, capture("443-curl.pcap"))
    assert found >= {
        (Side.SRC, "tls.role", "client"),
        (Side.SRC, "tls.sni", "www.ntop.org"),
        (Side.SRC, "tls.alpn", "h2,http/1.1"),
        (Side.SRC, "tls.version", "TLS 1.2"),
        (Side.SRC, "tls.ja4", "t12d6707h2_2955a3196ffa_c83f907a73d3"),  # ja4plus gives the same
        (Side.SRC, "tls.role", "server"),  # the ServerHello
    }


def test_tls_client_hello_cut_by_snaplen() -> None:
    hello = next(data for data in capture("443-curl.pcap") if values(tls.parse, data, "tls.ja4"))
    cut = {signal: value for _, signal, value in seen(tls.parse, hello[:SNAPLEN])}
    assert cut["tls.sni"] == "www.ntop.org" and cut["tls.alpn"] == "h2,http/1.1"
    assert "tls.ja4" not in cut and "tls.version" not in cut  # incomplete lists give no fingerprint
    assert seen(tls.parse, hello[:120]) == {(Side.SRC, "tls.role", "client")}


def test_tls_chrome_capture_is_mid_stream() -> None:
    """443-chrome.pcap holds one server-to-client application-data segment: no handshake to read."""
    assert seen_all(tls.parse, capture("443-chrome.pcap")) == set()


def test_ja4_hashes_match_the_published_example() -> None:
    hello = tls.ClientHello()
    hello.ciphers = [
        0x1301,
        0x1302,
        0x1303,
        0xC02B,
        0xC02F,
        0xC02C,
        0xC030,
        0xCCA9,
        0xCCA8,
        0xC013,
        0xC014,
        0x009C,
        0x009D,
        0x002F,
        0x0035,
    ]
    hello.extensions = [
        0x001B,
        0x0000,
        0x0033,
        0x0010,
        0x4469,
        0x0017,
        0x002D,
        0x000D,
        0x0005,
        0x0023,
        0x0012,
        0x002B,
        0xFF01,
        0x000B,
        0x000A,
        0x0015,
    ]
    hello.sig_algs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    hello.supported_versions = [0x0304, 0x0303]
    hello.alpn = [b"h2", b"http/1.1"]
    assert tls.ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"  # FoxIO's JA4.md example


def _client_hello(grease: bool) -> bytes:
    """A TLS 1.3 ClientHello assembled byte by byte, optionally with GREASE values like Chrome's."""

    def ext(ext_type: int, body: bytes) -> bytes:
        return struct.pack("!HH", ext_type, len(body)) + body

    g = [0x0A0A] if grease else []
    ciphers = [*g, 0x1301, 0x1302, 0xC02B]
    sni = b"fhir.ehr.example"
    extensions = (
        (ext(0x2A2A, b"") if grease else b"")
        + ext(0x0000, struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni)
        + ext(0x0010, b"\x00\x09\x08http/1.1")
        + ext(0x000D, b"\x00\x04\x04\x03\x08\x04")
        + ext(0x002B, bytes([2 * (len(g) + 2)]) + b"".join(struct.pack("!H", v) for v in [*g, 0x0304, 0x0303]))
    )
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + struct.pack("!H", 2 * len(ciphers))
        + b"".join(struct.pack("!H", c) for c in ciphers)
    )
    body += b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake
    return raw(
        Ether(src=PHILIPS_MAC, dst=SERVER_MAC)
        / IP(src="10.20.0.15", dst="10.20.0.9")
        / TCP(sport=50000, dport=443, flags="PA")
        / record
    )


def test_tls13_and_grease_ignored() -> None:
    plain, greased = seen(tls.parse, _client_hello(False)), seen(tls.parse, _client_hello(True))
    assert plain == greased
    found = {signal: value for _, signal, value in plain}
    assert found["tls.version"] == "TLS 1.3" and found["tls.sni"] == "fhir.ehr.example"
    assert found["tls.ja4"].startswith("t13d0304h1_")  # 3 ciphers, 4 extensions, "http/1.1"


# ---- http ----


def test_http_ipp_capture() -> None:
    found = seen_all(http.parse, capture("ipp.pcap"))
    assert found >= {
        (Side.SRC, "http.user_agent", "CUPS/1.3.4"),
        (Side.SRC, "http.host", "10.10.10.251"),
        (Side.SRC, "http.role", "client"),
        (Side.DST, "http.role", "server"),
        (Side.SRC, "http.server", "Virata-EmWeb/R6_2_1"),
    }


def test_http_request_built() -> None:
    assert seen(http.parse, http_request()) == {
        (Side.SRC, "http.role", "client"),
        (Side.DST, "http.role", "server"),
        (Side.SRC, "http.user_agent", "Orthanc/1.12.1 (DICOMweb client)"),
        (Side.SRC, "http.host", "pacs.example"),
    }


def test_http_cut_header_is_not_emitted() -> None:
    data = http_request()
    cut = data[: data.index(b"(DICOMweb")]
    assert not values(http.parse, cut, "http.user_agent")
    assert values(http.parse, cut, "http.host") == ["pacs.example"]


# ---- snmp ----


def test_snmp_capture() -> None:
    frames = capture("snmp.pcap")
    found = seen_all(snmp.parse, frames)
    assert found >= {
        (Side.SRC, "snmp.version", "1"),
        (Side.SRC, "snmp.version", "2c"),
        (Side.SRC, "snmp.version", "3"),
        (Side.SRC, "snmp.sys_name", "R1.lab.local"),
        (Side.SRC, "snmp.role", "manager"),
        (Side.DST, "snmp.role", "agent"),
        (Side.SRC, "snmp.engine_id", "800000090300aabbcc000100"),  # enterprise 9: Cisco
    }
    communities = {"public", "public2c", "adsl"}  # what the capture's v1/v2c messages carry
    assert not {value for _, _, value in found} & communities
    assert not any("globomantics" in value.lower() for _, _, value in found)  # sysContact / sysLocation


def test_snmp_sysdescr_and_sysobjectid() -> None:
    found = seen(snmp.parse, snmp_sysdescr_response())
    assert found >= {
        (Side.SRC, "snmp.version", "2c"),
        (Side.SRC, "snmp.role", "agent"),
        (Side.SRC, "snmp.sys_descr", "Draeger Evita V500 SW 2.51"),
        (Side.SRC, "snmp.sys_object_id", "1.3.6.1.4.1.2378.1.2"),
    }
    assert not any("s3cret" in value or "jane" in value for _, _, value in found)


# ---- mdns ----


def test_mdns_printer_announcement() -> None:
    assert seen(mdns.parse, mdns_printer_announcement()) == {
        (Side.SRC, "mdns.service", "_ipp._tcp.local"),
        (Side.SRC, "mdns.instance", "Ward3 LaserJet"),
        (Side.SRC, "mdns.hostname", "NPI12AB34.local"),
        (Side.SRC, "mdns.model", "HP LaserJet 400 M401dne"),
    }


def test_mdns_query() -> None:
    assert seen(mdns.parse, mdns_query()) == {(Side.SRC, "mdns.query", "_ipp._tcp.local")}


def test_mdns_compression_loop_is_bounded() -> None:
    # question name: label "ab" then a pointer back to offset 12 (itself): a loop
    payload = struct.pack("!HHHHHH", 0, 0x8400, 1, 1, 0, 0) + b"\x02ab\xc0\x0c" + b"\x00\x0c\x00\x01"
    payload += b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 120, 2) + b"\xc0\x0c"
    data = raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=5353, dport=5353) / payload)
    assert mdns.parse(decode(data)) == []
    assert mdns.read_name(payload, 12) is None


# ---- ssdp ----


def test_ssdp_msearch_capture() -> None:
    assert seen_all(ssdp.parse, capture("ssdp-m-search-ua.pcap")) == {
        (Side.SRC, "ssdp.user_agent", "Google Chrome/99.0.4844.74 Mac OS X"),
        (Side.SRC, "ssdp.st", "urn:dial-multiscreen-org:service:dial:1"),
    }


def test_ssdp_notify() -> None:
    notify = (
        b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age=1800\r\n"
        b"LOCATION: http://10.20.0.60:49152/desc/dev-7f3a.xml?token=abc\r\n"
        b"NT: urn:schemas-upnp-org:device:MediaRenderer:1\r\nNTS: ssdp:alive\r\n"
        b"SERVER: Linux/4.9 UPnP/1.0 Barco-ClinicalDisplay/2.3\r\nUSN: uuid:1234::upnp:rootdevice\r\n\r\n"
    )
    data = raw(
        Ether(src=PHILIPS_MAC, dst=SERVER_MAC)
        / IP(src="10.20.0.60", dst="239.255.255.250")
        / UDP(sport=1900, dport=1900)
        / notify
    )
    assert seen(ssdp.parse, data) == {
        (Side.SRC, "ssdp.server", "Linux/4.9 UPnP/1.0 Barco-ClinicalDisplay/2.3"),
        (Side.SRC, "ssdp.nt", "urn:schemas-upnp-org:device:MediaRenderer:1"),
        (Side.SRC, "ssdp.location", "10.20.0.60"),
    }


# ---- wsdiscovery ----


def test_wsd_sdc_hello() -> None:
    found = {signal: value for _, signal, value in seen(wsdiscovery.parse, wsd_hello())}
    assert found["wsd.action"] == "Hello"
    assert found["wsd.types"] == "dpws:Device mdpws:MedicalDevice"
    scopes = found["wsd.scopes"]
    assert scopes.startswith("sdc.mds.pkp:1.2.840.10004.20701.1.1 sdc.ctxt.loc:")
    assert "fac=HOSP1&poc=ICU" in scopes
    assert "PID-0042" not in scopes and "sdc.ctxt.pat" not in scopes  # patient context never leaves


def test_wsd_probe_types_are_not_the_senders() -> None:
    assert seen(wsdiscovery.parse, wsd_probe()) == {
        (Side.SRC, "wsd.action", "Probe"),
        (Side.SRC, "wsd.probe_types", "mdpws:MedicalDevice"),
    }


def test_wsd_truncated_hello() -> None:
    data = wsd_hello()[:SNAPLEN]
    found = {signal for _, signal, _ in seen(wsdiscovery.parse, data)}
    assert "wsd.action" in found  # the header fits; the body's elements may not


# ---- lldp ----


def test_lldp_switch() -> None:
    assert seen(lldp.parse, lldp_switch()) == {
        (Side.SRC, "lldp.chassis_id", "00:1b:21:aa:bb:00"),
        (Side.SRC, "lldp.port_description", "ICU-3 bed 7 monitor"),
        (Side.SRC, "lldp.system_name", "icu3-access-sw1"),
        (Side.SRC, "lldp.system_description", "Cisco IOS Software, C2960X Software, Version 15.2(7)E4"),
        (Side.SRC, "lldp.capabilities", "bridge"),
    }


def test_lldp_med_inventory_without_serial() -> None:
    found = seen(lldp.parse, lldp_med_phone())
    assert found == {
        (Side.SRC, "lldp.chassis_id", PHILIPS_MAC),
        (Side.SRC, "lldp.med_manufacturer", "Philips"),
        (Side.SRC, "lldp.med_model", "IntelliVue MX450"),
    }


def test_lldp_ignores_other_ethertypes() -> None:
    assert lldp.parse(decode(http_request())) == []


# ---- shared text rules ----


def test_values_are_trimmed_and_printable() -> None:
    hostile = b"GET / HTTP/1.1\r\nUser-Agent: evil\x1b[31m\x00\x07" + b"A" * 500 + b"\r\n\r\n"
    data = raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / TCP(sport=1, dport=80, flags="PA") / hostile)
    (agent,) = values(http.parse, data, "http.user_agent")
    assert agent.startswith("evil?[31m??") and len(agent) == MAX_VALUE and agent.isprintable()


# ---- hostile bytes: parsers never raise ----

PREFIXES = [
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=68, dport=67)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=67, dport=68)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IPv6() / UDP(sport=546, dport=547)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / TCP(sport=50000, dport=443, flags="PA")),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / TCP(sport=50000, dport=80, flags="PA")),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / TCP(sport=50000, dport=80, flags="S")),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=50000, dport=161)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=5353, dport=5353)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=1900, dport=1900)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC) / IP() / UDP(sport=3702, dport=3702)),
    raw(Ether(src=PHILIPS_MAC, dst=SERVER_MAC, type=0x88CC)),
]
PROTOCOL_STARTS = [
    b"",
    b"\x16\x03\x01\x02\x00\x01",
    b"\x16\x03\x03\x00\x50\x02",
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"\x30\x82",
    b"\x01\x01\x06\x00",
    b"NOTIFY * HTTP/1.1\r\n",
    b"<wsa:Action>x/Hello</wsa:Action><d:Types>",
]

_SEEDS: list[bytes] | None = None


def seeds() -> list[bytes]:
    """Every built frame plus the real capture frames that exist, computed once."""
    global _SEEDS
    if _SEEDS is None:
        found = [build() for build in BUILT.values()] + [_client_hello(True)]
        for name in ("dhcp-fuzz.pcapng", "snmp.pcap", "ssdp-m-search-ua.pcap", "443-curl.pcap", "ipp.pcap"):
            path = CAPTURES / name
            if path.exists():
                found += [raw(packet) for packet in rdpcap(str(path))][:40]
        _SEEDS = found
    return _SEEDS


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(0, 8))):
        if frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame[: draw(st.integers(0, len(frame)))])


@st.composite
def protocol_frames(draw: st.DrawFn) -> bytes:
    return draw(st.sampled_from(PREFIXES)) + draw(st.sampled_from(PROTOCOL_STARTS)) + draw(st.binary(max_size=600))


HOSTILE = st.one_of(st.binary(max_size=600), mutated_frames(), protocol_frames())


def check_output(result: object) -> None:
    assert isinstance(result, list)
    for observation in result:
        assert isinstance(observation, Observation) and isinstance(observation.side, Side)
        assert isinstance(observation.signal, str) and isinstance(observation.value, str)
        assert 0 < len(observation.value) <= MAX_VALUE and observation.value.isprintable()


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=HOSTILE)
def test_parsers_never_raise(name: str, data: bytes) -> None:
    check_output(PARSERS[name](decode(data)))


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=600),
    proto=st.sampled_from([6, 17]),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    flags=st.integers(0, 255),
    options=st.binary(max_size=40),
)
def test_parsers_never_raise_on_hand_made_frames(
    payload: bytes, proto: int, sport: int, dport: int, flags: int, options: bytes
) -> None:
    """Frames built directly, bypassing decode(): parsers must not rely on decode()'s checks."""
    frame = Frame(
        data=payload,
        src_mac=PHILIPS_MAC,
        dst_mac="zz:zz",
        ethertype=0x88CC,
        l3=payload,
        ip_version=4,
        ttl=300,
        proto=proto,
        sport=sport,
        dport=dport,
        tcp_flags=flags,
        tcp_options=options,
        payload=payload,
    )
    for parser in PARSERS.values():
        check_output(parser(frame))


def test_the_registry_loses_no_observation_by_running_parsers_on_their_kinds_of_frame_only() -> None:
    """Each parser runs on the frame kinds parsers.ALL gives it; on crafted and captured frames (the ward's, the
    DICOM ones, ../shared/captures when present) that yields exactly what running every parser on every frame does."""
    from medseg_xdp.fingerprint import parsers
    from medseg_xdp.fingerprint.registry import ParserRegistry, default_registry

    seeds = (dhcp_discover, dhcp_offer, dhcpv6_solicit, http_request, snmp_sysdescr_response, mdns_printer_announcement, mdns_query,
             wsd_hello, wsd_probe, lldp_switch, lldp_med_phone)
    frames = [seed() for seed in seeds]
    for path in sorted((Path(__file__).parent / "data").glob("*.pcap")) + sorted(CAPTURES.glob("*.pcap*")):
        frames += [raw(packet)[:SNAPLEN] for packet in rdpcap(str(path))]
    dispatched = default_registry()
    everything = ParserRegistry([(name, parser, None) for name, parser, _ in parsers.ALL])
    fired = set()
    for data in frames:
        frame, observations = dispatched.observe(data)
        assert observations == everything.observe(data)[1], data.hex()
        fired |= {name for name, parser, _ in parsers.ALL if parser(frame)}
    # every parser had frames of its own among them (else the equality above proves nothing about it)
    expected = {name for name, _, _ in parsers.ALL} - {"intellivue", "ge_unity"}  # no capture of theirs here
    assert expected <= fired, expected - fired
    assert not dispatched.failures and not everything.failures


def test_a_parser_that_raises_is_counted_and_the_others_still_run() -> None:
    from medseg_xdp.fingerprint.registry import ParserRegistry

    def broken(frame: Frame) -> list[Observation]:
        raise IndexError("hostile bytes")

    registry = ParserRegistry([("broken", broken, None), ("oui", oui.parse, None)])
    _, observations = registry.observe(http_request())
    assert registry.failures == {"broken": 1}
    assert observations == oui.parse(decode(http_request())) != []
