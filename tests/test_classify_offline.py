"""`medseg-xdp classify --pcap`: the X-ray offline, without root, on recorded and third-party captures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
NDPI = Path(__file__).resolve().parents[2] / "shared" / "captures" / "ndpi"

WARD_CLASSES = {
    "a0:f2:17:70:00:20": "imaging_modality",  # ct
    "00:14:22:70:00:10": "pacs",
    "00:09:5c:70:00:21": "patient_monitor",  # monitor gateway
    "4c:ae:a3:70:00:11": "hl7_interface_engine",
    "f8:c6:78:70:00:22": "infusion_pump",
    "04:0e:3c:70:00:23": "printer",
    "98:e7:43:70:00:24": "workstation",
    "00:40:8c:70:00:25": "ip_camera",
    "94:18:82:70:00:01": "dhcp_server",
}


def classify(capture: Path) -> dict[str, dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "classify", "--pcap", str(capture), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "parser failures" not in result.stderr
    return {device["mac"]: device for device in json.loads(result.stdout)["devices"]}


def test_the_recorded_ward_is_classified() -> None:
    devices = classify(DATA / "ward-clinical.pcap")
    assert {mac: devices[mac]["class"] for mac in WARD_CLASSES} == WARD_CLASSES
    pump = devices["f8:c6:78:70:00:22"]
    assert pump["vendor"] == "Carefusion" and pump["hostname"] == "ALARIS-8015-0042"
    assert "10.70.0.22" in pump["ips"] and all(ip == "10.70.0.22" or ip.startswith("fe80:") for ip in pump["ips"])
    for device in devices.values():
        assert {"mac", "ips", "vendor", "hostname", "class", "confidence", "evidence"} <= set(device)
        if device["class"] != "unknown":
            assert device["evidence"] and all({"signal", "value", "weight"} <= set(e) for e in device["evidence"])


def test_the_attack_capture_keeps_the_pump_a_pump() -> None:
    """The compromised pump scans and sends HL7: new behaviour, but evidence of one capture does not flip it."""
    devices = classify(DATA / "ward-attack.pcap")
    pump = devices["f8:c6:78:70:00:22"]
    assert pump["class"] in ("infusion_pump", "unknown")  # no DHCP in this capture: the OUI alone is weak
    assert "tcp/104" in pump["protocols_client"] or "dicom" in pump["protocols_client"]


def test_a_third_party_hl7_capture() -> None:
    capture = NDPI / "hl7.pcap"
    if not capture.exists():
        pytest.skip(f"{capture} not present")
    classes = {device["class"] for device in classify(capture).values()}
    assert "hl7_interface_engine" in classes


@pytest.mark.parametrize("name", ["badpackets.pcap", "dhcp-fuzz.pcapng", "synscan.pcap", "tcp_scan.pcapng", "snmp.pcap", "ssdp-m-search-ua.pcap"])
def test_hostile_and_odd_captures_never_break_the_xray(name: str) -> None:
    capture = NDPI / name
    if not capture.exists():
        pytest.skip(f"{capture} not present")
    classify(capture)


def test_a_capture_that_is_not_ethernet_gets_a_clear_error(tmp_path: Path) -> None:
    cooked = tmp_path / "cooked.pcap"
    cooked.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000071000000"))  # link type 113: Linux cooked
    result = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "classify", "--pcap", str(cooked)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is not Ethernet" in result.stderr and "Traceback" not in result.stderr
