"""The X-ray live: the real XDP program samples the ward's real traffic, the manager classifies.

dnsmasq/udhcpc, dcmtk, HL7 over MLLP, TLS, IPP/mDNS, RTSP/SSDP and an nmap
scan cross the bridge with the program on every port; samples come through
the ring buffer into the same X-ray the daemon runs.
"""

from __future__ import annotations

import pytest

from medseg_xdp import abi, config
from medseg_xdp.samples import Sample, SampleReader
from medseg_xdp.session import ProgramOnBridge
from medseg_xdp.ward import HOSTS_BY_NAME, Ward
from medseg_xdp.xray import Xray

pytestmark = [pytest.mark.root, pytest.mark.netns]

EXPECTED = {
    "ct": "imaging_modality",
    "pacs": "pacs",
    "monitor-gw": "patient_monitor",
    "hl7-engine": "hl7_interface_engine",
    "pump": "infusion_pump",
    "printer": "printer",
    "workstation": "workstation",
    "camera": "ip_camera",
    "dhcp": "dhcp_server",
}


def test_ward_devices_are_classified_from_live_samples() -> None:
    xray = Xray.default()
    samples: list[Sample] = []

    def ingest(sample: Sample) -> None:
        samples.append(sample)
        xray.ingest(sample.data, sample.timestamp_ns / 1e9)

    cfg = config.parse('[bridge]\nname = "xray"\n[settings]\nsample_first_packets = 8\n', "monitor everything")
    with Ward() as ward, ProgramOnBridge(ward.topology, cfg) as program:
        reader = SampleReader(program.loader.bpf, ingest)
        report = ward.run_clinical_traffic(rounds=1)
        assert report.ok, report.failures
        reader.poll(100)
        attack = ward.run_attack(ports="1-200", host_timeout=15.0)
        assert attack.scan_completed
        reader.poll(100)
        assert program.dataplane is not None
        drops = sum(v.packets for (verdict, _), v in program.dataplane.stats().items() if verdict == abi.Verdict.drop)
    assert drops == 0  # no policy yet: the X-ray only looks
    kinds = {s.kind for s in samples}
    assert {abi.SampleKind.first_packets, abi.SampleKind.dhcp} <= kinds
    classes = {name: xray.inventory.devices[HOSTS_BY_NAME[name].mac].device_class for name in EXPECTED if HOSTS_BY_NAME[name].mac in xray.inventory.devices}
    assert classes == EXPECTED
    pump = xray.inventory.devices[HOSTS_BY_NAME["pump"].mac]
    assert pump.hostname == "ALARIS-8015-0042"
    assert any(e["signal"].startswith("dhcp.") for e in pump.evidence)
    assert sum(xray.registry.failures.values()) == 0
