"""The virtual ward: real software produces every clinical exchange, the attack runs, nothing is left behind.

No XDP program here: these tests prove the ward itself works, so that tests with the
program attached can blame the program for what does not get through.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from pyroute2 import netns
from scapy.all import BOOTP, DHCP, DNS, IP, TCP, UDP, Ether, rdpcap  # type: ignore[attr-defined]

from medseg_xdp import ward_apps
from medseg_xdp.ward import (
    APPS,
    HOSTS,
    HOSTS_BY_NAME,
    PUMP_SNI,
    SUBNET4,
    SUBNET6,
    AttackReport,
    TrafficReport,
    Ward,
)

OUI_CSV = Path("/usr/share/ieee-data/oui.csv")
DATA = Path(__file__).parent / "data"
MAX_PCAP = 200_000


@pytest.fixture(scope="module")
def ward() -> Iterator[Ward]:
    with Ward() as built:
        yield built


@pytest.fixture(scope="module")
def clinical(ward: Ward) -> Iterator[tuple[TrafficReport, Path]]:
    """One clinical round, captured on br0 into a temporary pcap (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="medseg-ward-test-") as tmp:
        pcap = Path(tmp) / "clinical.pcap"
        with ward.capture(pcap):
            report = ward.run_clinical_traffic(1)
        yield report, pcap


@pytest.fixture(scope="module")
def attack(ward: Ward, clinical: tuple[TrafficReport, Path]) -> AttackReport:
    return ward.run_attack()


def test_hosts_carry_their_vendors_oui_and_ward_addresses() -> None:
    if not OUI_CSV.exists():
        pytest.skip("ieee-data is not installed")
    with OUI_CSV.open(newline="", encoding="utf-8") as f:
        registry = {row["Assignment"]: row["Organization Name"].strip() for row in csv.DictReader(f)}
    for host in HOSTS:
        assert registry.get(host.oui) == host.vendor, host.name
        assert ip_address(host.ipv4) in ip_network(SUBNET4)
        assert ip_address(host.ipv6) in ip_network(SUBNET6)
    assert len({h.mac for h in HOSTS}) == len({h.ipv4 for h in HOSTS}) == len(HOSTS)


def test_hl7_ack_answers_the_sender() -> None:
    message = ward_apps.hl7_oru_r01(
        sending_application="INTELLIVUE_GW", sending_facility="ICU", receiving_application="HL7ENGINE",
        receiving_facility="HOSPITAL", control_id="X1", observations=[("1^A^MDC", "5", "2^B^MDC")],
    )
    msh = message.split("\r")[0].split("|")
    assert msh[2:6] == ["INTELLIVUE_GW", "ICU", "HL7ENGINE", "HOSPITAL"]
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5"
    ack = ward_apps.hl7_ack(message).split("\r")
    assert ack[0].split("|")[2:6] == ["HL7ENGINE", "HOSPITAL", "INTELLIVUE_GW", "ICU"]
    assert ack[1] == "MSA|AA|X1"
    assert ward_apps.mllp_unframe(ward_apps.mllp_frame(message) * 2) == [message, message]


@pytest.mark.root
@pytest.mark.netns
def test_every_clinical_exchange_succeeds(clinical: tuple[TrafficReport, Path]) -> None:
    report, _ = clinical
    assert report.ok, "\n".join(f"{e.key}: {e.detail}" for e in report.failures)
    dhcp_clients = {h.name for h in HOSTS if h.dhcp is not None}
    expected = {f"dhcp {name}->dhcp" for name in dhcp_clients} | {
        "mdns printer->224.0.0.251",
        "ssdp camera->239.255.255.250",
        "dicom-echo ct->pacs",
        "dicom-store ct->pacs",
        "dicom-echo workstation->pacs",
        "dicom-find workstation->pacs",
        "hl7-oru monitor-gw->hl7-engine",
        "tls pump->pump-server",
        "http workstation->ehr",
        "https workstation->ehr",
        "pjl workstation->printer",
        "ipp workstation->printer",
        "rtsp workstation->camera",
    }
    assert set(report.by_key()) == expected
    assert report.seconds < 20


@pytest.mark.root
@pytest.mark.netns
def test_dhcp_leases_are_the_hosts_own_addresses(ward: Ward, clinical: tuple[TrafficReport, Path]) -> None:
    assert ward.dhcp_leases() == {h.mac: h.ipv4 for h in HOSTS if h.dhcp is not None}


@pytest.mark.root
@pytest.mark.netns
def test_pump_server_refuses_a_wrong_sni(ward: Ward) -> None:
    payload = ward_apps.http_request("GET", PUMP_SNI, "/", "probe").hex()
    argv = [sys.executable, str(APPS), "request", ward.ip("pump-server"), "443", payload, "--timeout", "3"]
    ca = str(ward.workdir / "pump-server.crt")
    wrong = ward.namespace("pump").run([*argv, "--tls-sni", "wrong.hospital.example", "--cafile", ca], check=False)
    assert wrong.returncode != 0, wrong.stdout
    right = ward.namespace("pump").run([*argv, "--tls-sni", PUMP_SNI, "--cafile", ca], check=False)
    assert right.returncode == 0, right.stderr
    assert bytes.fromhex(right.stdout.strip()).startswith(b"HTTP/1.0 200")


@pytest.mark.root
@pytest.mark.netns
def test_the_capture_carries_each_devices_identity(clinical: tuple[TrafficReport, Path]) -> None:
    """What classify --pcap will read: on br0, every device says who it is."""
    assert_clinical_capture(clinical[1])


def test_the_recorded_captures_are_small_and_complete() -> None:
    """tests/data/ward-*.pcap (scripts/record_ward_pcaps.py) still show what the live ward shows."""
    assert_clinical_capture(DATA / "ward-clinical.pcap")
    attack = DATA / "ward-attack.pcap"
    assert 0 < attack.stat().st_size < MAX_PCAP
    frames = rdpcap(str(attack))
    pump, pacs = HOSTS_BY_NAME["pump"], HOSTS_BY_NAME["pacs"]
    syns = {
        (f[IP].dst, f[TCP].dport)
        for f in frames
        if f.haslayer(TCP) and f[Ether].src == pump.mac and f[TCP].flags == "S"
    }
    assert len({port for dst, port in syns if dst == pacs.ipv4}) >= 500
    assert (HOSTS_BY_NAME["hl7-engine"].ipv4, 2575) in syns  # the direct HL7 attempt
    assert any(f.haslayer(TCP) and f[IP].src == pacs.ipv4 and f[TCP].sport == 104 and f[TCP].flags == "SA" for f in frames)


def assert_clinical_capture(pcap: Path) -> None:
    assert 0 < pcap.stat().st_size < MAX_PCAP
    frames = rdpcap(str(pcap))

    vendor_classes = {}
    for frame in frames:
        if frame.haslayer(DHCP) and frame[UDP].dport == 67:
            options = dict(o for o in frame[DHCP].options if isinstance(o, tuple) and len(o) == 2)
            vendor_classes[frame[Ether].src] = options.get("vendor_class_id")
    assert vendor_classes == {h.mac: h.dhcp.vendor_class.encode() for h in HOSTS if h.dhcp is not None}

    def payloads(src: str, dport: int) -> bytes:
        ip = HOSTS_BY_NAME[src].ipv4
        return b"".join(
            bytes(f[TCP].payload) for f in frames if f.haslayer(TCP) and f[IP].src == ip and f[TCP].dport == dport
        )

    assert PUMP_SNI.encode() in payloads("pump", 443)  # SNI in the ClientHello
    assert b"ehr.hospital.example" in payloads("workstation", 443)
    assert b"User-Agent: Mozilla/5.0" in payloads("workstation", 80)
    assert b"MSH|^~\\&|INTELLIVUE_GW|ICU|" in payloads("monitor-gw", 2575)
    assert b"ORU^R01" in payloads("monitor-gw", 2575)
    assert b"CT01" in payloads("ct", 104) and b"PACS" in payloads("ct", 104)  # A-ASSOCIATE-RQ AE titles
    assert b"Test^Phantom" in payloads("ct", 104)  # the synthetic image went over the wire
    assert b"OPTIONS rtsp://" in payloads("workstation", 554)

    mdns = [f for f in frames if f.haslayer(UDP) and f[UDP].dport == 5353 and f[IP].dst == "224.0.0.251"]
    assert len(mdns) == 1 and mdns[0][Ether].src == HOSTS_BY_NAME["printer"].mac
    assert mdns[0][Ether].dst == "01:00:5e:00:00:fb" and mdns[0][IP].ttl == 255
    answers = mdns[0][DNS].an
    assert [rr.type for rr in answers] == [12, 33, 16, 1]  # PTR, SRV, TXT, A
    assert answers[0].rrname == b"_ipp._tcp.local." and answers[1].port == 631
    assert answers[3].rdata == HOSTS_BY_NAME["printer"].ipv4
    ssdp = [f for f in frames if f.haslayer(UDP) and f[UDP].dport == 1900]
    assert len(ssdp) == 1 and ssdp[0][Ether].src == HOSTS_BY_NAME["camera"].mac
    assert b"NTS: ssdp:alive" in bytes(ssdp[0][UDP].payload) and b"SERVER: Linux" in bytes(ssdp[0][UDP].payload)

    # Nothing addressed outside the ward's own subnets.
    for frame in frames:
        if frame.haslayer(IP) and not frame.haslayer(BOOTP):
            dst = ip_address(frame[IP].dst)
            assert dst in ip_network(SUBNET4) or dst.is_multicast, frame.summary()


@pytest.mark.root
@pytest.mark.netns
def test_attack_scans_and_reaches_the_servers_without_a_program(attack: AttackReport) -> None:
    assert attack.scan_completed, attack.detail
    assert attack.open_ports == {"pacs": (104,), "hl7-engine": ()}  # 2575 lies beyond 1-1024
    assert attack.dicom_answered and attack.hl7_answered, attack.detail
    assert attack.seconds < 30


@pytest.mark.root
@pytest.mark.netns
def test_everything_is_removed_even_when_the_body_raises() -> None:
    ward = Ward(timeout=2.0)
    with pytest.raises(RuntimeError, match="boom"), ward:
        names = set(ward.topology.namespace_names.values())
        pids = [pid for name, found in netns.ns_pids().items() if name in names for pid in found]
        assert len(pids) >= 7  # dnsmasq, dcmqrscp, s_server and four Python servers
        with ward.capture(ward.workdir / "x.pcap"):
            pids += netns.ns_pids().get(ward.topology.bridge_ns.name, [])  # tcpdump
            raise RuntimeError("boom")
    assert not names & set(netns.listnetns())
    assert not ward.workdir.exists()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


@pytest.mark.root
@pytest.mark.netns
def test_a_server_that_fails_to_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:

    names: set[str] = set()

    def broken(self: Ward) -> None:
        names.update(self.topology.namespace_names.values())
        self._popen("pump-server", "broken", ["false"], [("tcp", 443)])

    monkeypatch.setattr(Ward, "_start_pump_server", broken)
    ward = Ward(timeout=2.0)
    with pytest.raises(RuntimeError, match="pump-server"):
        ward.__enter__()
    assert names and not names & set(netns.listnetns())
    assert not ward.workdir.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie left for its parent to reap is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
