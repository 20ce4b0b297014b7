"""Classifier and inventory, without root: evidence, hysteresis, pinning, persistence."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import msgpack
import pytest

from medseg_xdp.classify import Classifier, load_catalog
from medseg_xdp.fingerprint.frame import Frame, Observation, Side
from medseg_xdp.inventory import MAX_VALUES_PER_SIGNAL, ClassChange, Inventory, InventoryStore

CT = "00:1b:2c:00:00:01"
PACS = "00:1b:2c:00:00:02"


@pytest.fixture
def classifier() -> Classifier:
    return Classifier(load_catalog())


def frame(src: str = CT, dst: str = PACS, src_ip: str = "10.70.0.10") -> Frame:
    return Frame(data=b"", src_mac=src, dst_mac=dst, src_ip=src_ip, dst_ip="10.70.0.20")


def obs(side: Side, signal: str, value: str) -> Observation:
    return Observation(side, signal, value)


DICOM_STORE = [
    obs(Side.SRC, "dicom.role", "scu"),
    obs(Side.SRC, "dicom.service", "storage"),
    obs(Side.SRC, "dicom.sop_class", "CT Image Storage"),
    obs(Side.DST, "dicom.role", "scp"),
]


def test_every_class_the_issue_names_exists(classifier: Classifier) -> None:
    names = {
        "imaging_modality", "pacs", "hl7_interface_engine", "patient_monitor", "infusion_pump", "ventilator",
        "lab_analyzer", "printer", "workstation", "ip_camera", "dhcp_server", "dns_server", "web_server",
        "network_infrastructure", "unknown",
    }
    assert names <= set(classifier.catalog.classes)
    for life_critical in ("patient_monitor", "infusion_pump", "ventilator"):
        assert classifier.catalog.criticality(life_critical) == "life_critical"


def test_a_dicom_store_classifies_both_ends_with_evidence(classifier: Classifier) -> None:
    inventory = Inventory(classifier, clock=lambda: 100.0)
    changes = inventory.observe(frame(), DICOM_STORE)
    assert {(c.mac, c.new) for c in changes} == {(CT, "imaging_modality"), (PACS, "pacs")}
    ct = inventory.devices[CT]
    assert ct.confidence > 0.5
    assert {(e["signal"], e["value"]) for e in ct.evidence} == {("dicom.role", "scu"), ("dicom.service", "storage")}
    assert ct.protocols_client == ["dicom"] and inventory.devices[PACS].protocols_server == ["dicom"]
    assert ct.ips == {"10.70.0.10": [100.0, 100.0]} and ct.peers == [PACS]


def test_weak_evidence_claims_nothing(classifier: Classifier) -> None:
    decision = classifier.decide("unknown", False, {"oui.vendor": {"Dell Inc.": 1}})
    assert (decision.device_class, decision.confidence) == ("unknown", 0.0)


def test_hysteresis_keeps_a_class_against_weaker_contrary_evidence(classifier: Classifier) -> None:
    monitor = {"hl7.role": {"sender": 3}, "hl7.message_type": {"ORU^R01": 3}}
    assert classifier.decide("unknown", False, monitor).device_class == "patient_monitor"
    # a browser on the same MAC (workstation +3) does not outweigh the monitor's 6
    mixed = {**monitor, "http.user_agent": {"Mozilla/5.0 (Windows NT 10.0)": 1}}
    assert classifier.decide("patient_monitor", False, mixed, current_confidence=0.67).device_class == "patient_monitor"
    # equal contrary evidence (a compromised pump sending ORU^R01) does not flip a settled class
    pump = {"oui.vendor": {"Carefusion": 1}, "dhcp.vendor_class": {"BD Alaris PCU 8015": 1}}
    assert classifier.decide("unknown", False, pump).device_class == "infusion_pump"
    assert classifier.decide("infusion_pump", False, {**pump, **monitor}, current_confidence=0.67).device_class == "infusion_pump"
    # only a clear lead moves it: 1.5 * score + 2
    overwhelming = {"dicom.role": {"scu": 1}, "dicom.service": {"storage": 1}, "oui.vendor": {"Siemens Healthineers": 1}}
    assert classifier.decide("web_server", False, overwhelming, current_confidence=0.6).device_class == "imaging_modality"
    # a tentative class yields to any leader
    assert classifier.decide("workstation", False, overwhelming, current_confidence=0.3).device_class == "imaging_modality"


def test_a_pinned_class_never_moves(classifier: Classifier) -> None:
    inventory = Inventory(classifier, clock=lambda: 1.0)
    inventory.pin(CT, device_class="infusion_pump")
    inventory.observe(frame(), DICOM_STORE)
    assert inventory.devices[CT].device_class == "infusion_pump"
    with pytest.raises(ValueError, match="unknown device class"):
        inventory.pin(CT, device_class="toaster")


def test_values_per_signal_are_bounded(classifier: Classifier) -> None:
    inventory = Inventory(classifier, clock=lambda: 1.0)
    for port in range(1000):
        inventory.observe(frame(), [obs(Side.SRC, "service.uses", f"tcp/{port}")])
    assert len(inventory.devices[CT].observations["service.uses"]) == MAX_VALUES_PER_SIGNAL


def test_store_round_trip_is_atomic_and_private(tmp_path: Path, classifier: Classifier) -> None:
    inventory = Inventory(classifier, clock=lambda: 5.0)
    inventory.observe(frame(), DICOM_STORE)
    inventory.pin(PACS, segment="pacs")
    store = InventoryStore(tmp_path / "state")
    store.save(inventory)
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert [p.name for p in store.path.parent.iterdir()] == ["inventory.msgpack"]  # no temp file left
    loaded = Inventory(classifier)
    assert store.load(loaded) is None
    assert loaded.summaries() == inventory.summaries()
    assert loaded.devices[PACS].pinned_segment


def test_an_older_store_learns_which_macs_front_other_hosts(tmp_path: Path, classifier: Classifier) -> None:
    """A file written before fronts_others: a gateway's MAC with three subnets' addresses is one when loaded."""
    from medseg_xdp.statefile import StateFile

    store = InventoryStore(tmp_path)
    record = {"mac": "00:00:0c:07:ac:28", "first_seen": 1.0, "last_seen": 2.0, "ips": {f"10.{n}.0.1": [1.0, 2.0] for n in range(3)}}
    StateFile(store.path, 1).write([record])
    assert msgpack.unpackb(store.path.read_bytes())["body"][0].get("fronts_others") is None
    loaded = Inventory(classifier)
    assert store.load(loaded) is None and loaded.devices["00:00:0c:07:ac:28"].fronts_others


@pytest.mark.parametrize("content", [b"\xc1garbage", msgpack.packb({"version": 99, "body": []}), msgpack.packb([1, 2]), msgpack.packb({"version": 1, "body": [{"mac": 1}]})])
def test_an_unreadable_store_is_kept_aside_and_reported(tmp_path: Path, classifier: Classifier, content: bytes) -> None:
    store = InventoryStore(tmp_path)
    store.path.write_bytes(content)
    inventory = Inventory(classifier)
    problem = store.load(inventory)
    assert problem is not None and "kept aside" in problem
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("inventory.msgpack.unreadable-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert inventory.devices == {}


def test_exports(classifier: Classifier) -> None:
    inventory = Inventory(classifier, clock=lambda: 1.0)
    inventory.observe(frame(), DICOM_STORE)
    document = json.loads(inventory.to_json())
    assert {d["mac"]: d["class"] for d in document["devices"]} == {CT: "imaging_modality", PACS: "pacs"}
    assert {"mac", "ips", "vendor", "hostname", "class", "confidence", "evidence"} <= set(document["devices"][0])
    rows = list(csv.DictReader(io.StringIO(inventory.to_csv())))
    assert rows[0]["mac"] == CT and "dicom.role=scu" in rows[0]["evidence"]


def test_a_mac_flood_cannot_exhaust_the_inventory(classifier: Classifier) -> None:
    """Random source MACs fill it with unknown devices: the oldest are forgotten, counted; classified and
    pinned devices stay."""
    inventory = Inventory(classifier, max_devices=100)
    inventory.observe(frame(), DICOM_STORE, now=1.0)
    inventory.pin("02:aa:00:00:00:01", segment="pacs")
    assert inventory.devices[CT].device_class != "unknown"
    for n in range(1000):
        inventory.observe(frame(src=f"02:ff:00:00:{n >> 8:02x}:{n & 0xFF:02x}", dst="ff:ff:ff:ff:ff:ff"), [], now=2.0 + n)
    assert len(inventory.devices) <= 100
    assert inventory.evicted == inventory.discovered - len(inventory.devices) > 900
    assert {CT, PACS, "02:aa:00:00:00:01"} <= inventory.devices.keys()
    assert "02:ff:00:00:03:e7" in inventory.devices  # the newest stays


def test_an_inventory_full_of_classified_devices_grows_scanning_once_per_tenth(classifier: Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to forget: it grows past max_devices, and looks for room once per max_devices / 10 newcomers,
    not at every one (each look reads every device)."""
    inventory = Inventory(classifier, max_devices=100)
    for n in range(100):
        inventory.pin(f"02:aa:00:00:00:{n:02x}", segment="pacs")
    scans = []
    make_room = inventory._make_room
    monkeypatch.setattr(inventory, "_make_room", lambda now: (scans.append(len(inventory.devices)), make_room(now)))
    for n in range(50):
        inventory.observe(frame(src=f"02:ff:00:00:00:{n:02x}", dst="ff:ff:ff:ff:ff:ff"), [], now=2.0 + n)
    # the first look finds nothing to forget and lets ten come; the next forgets those ten, the one after
    # the single newcomer since (less than a tenth: ten more may come), and so on
    assert scans == [100, 110, 101, 110, 101, 110, 101, 110, 101]
    assert inventory.evicted == 4 * (10 + 1) and len(inventory.devices) == 150 - 44
    assert all(f"02:aa:00:00:00:{n:02x}" in inventory.devices for n in range(100))


def test_a_classified_device_that_looks_like_another_class_is_reported_not_moved(classifier: Classifier) -> None:
    """A compromised modality faking a pump's fingerprint must not walk into the pumps' segment by itself."""
    inventory = Inventory(classifier)
    device = inventory.device(CT, 1.0)
    first = ClassChange(1.0, CT, "unknown", "imaging_modality", 0.9, ())
    assert device.follow(first, move_classified=False) and device.placement_class == "imaging_modality"
    device.device_class = "infusion_pump"
    later = ClassChange(2.0, CT, "imaging_modality", "infusion_pump", 0.9, ())
    assert not device.follow(later, move_classified=False)
    assert device.placement_class == "imaging_modality" and device.summary()["placed_as"] == "imaging_modality"
    assert device.follow(later, move_classified=True) and device.placement_class == "infusion_pump"
    inventory.pin(CT, device_class="workstation")  # a person's word moves it, whatever was placed
    assert device.placement_class == "workstation"
