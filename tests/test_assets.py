"""Asset import: CSV rows become pinned devices; the classifier's disagreement is reported, not applied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_xdp.assets import AssetError, import_assets, parse_assets
from medseg_xdp.classify import Classifier, load_catalog
from medseg_xdp.fingerprint.frame import Frame, Observation, Side
from medseg_xdp.inventory import Inventory

CLASSES = set(load_catalog().classes)
CSV = """MAC,Class,IP,Model,Location,Owner
00:09:5c:70:00:21,patient_monitor,10.70.0.21,IntelliVue MX800,ICU bed 4,Biomed
F8-C6-78-70-00-22,infusion_pump,,Alaris 8015,ICU bed 4,Biomed
"""


def test_rows_become_pinned_devices_and_disagreement_is_reported() -> None:
    inventory = Inventory(Classifier(load_catalog()), clock=lambda: 1.0)
    # the classifier already saw the monitor's MAC send DICOM storage: it thinks "imaging_modality"
    frame = Frame(data=b"", src_mac="00:09:5c:70:00:21", dst_mac="02:00:00:00:00:99")
    inventory.observe(frame, [Observation(Side.SRC, "dicom.role", "scu"), Observation(Side.SRC, "dicom.service", "storage")])
    assert inventory.devices["00:09:5c:70:00:21"].device_class == "imaging_modality"

    disagreements = import_assets(inventory, parse_assets(CSV, CLASSES))
    monitor, pump = inventory.devices["00:09:5c:70:00:21"], inventory.devices["f8:c6:78:70:00:22"]
    assert (monitor.device_class, monitor.pinned_class) == ("patient_monitor", True)
    assert (pump.device_class, pump.pinned_class, pump.asset["location"]) == ("infusion_pump", True, "ICU bed 4")
    assert [d.line() for d in disagreements] == [
        "00:09:5c:70:00:21: imported as patient_monitor, the classifier says imaging_modality (dicom.role=scu; dicom.service=storage)"
    ]
    # pinned: more contrary evidence changes nothing
    inventory.observe(frame, [Observation(Side.SRC, "oui.vendor", "Siemens Healthineers")])
    assert monitor.device_class == "patient_monitor"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mac,model\n00:11:22:33:44:55,x\n", "<csv>:1: no 'class' column"),
        ("mac,class\nnot-a-mac,printer\n", "<csv>:2: 'not-a-mac' is not a MAC address"),
        ("mac,class\n00:11:22:33:44:55,toaster\n", "<csv>:2: unknown class 'toaster'"),
        ("mac,class\n00:11:22:33:44:55,printer\n00-11-22-33-44-55,printer\n", "<csv>:3: 00:11:22:33:44:55 is listed twice"),
    ],
)
def test_a_bad_row_names_its_line_and_nothing_is_imported(text: str, message: str) -> None:
    with pytest.raises(AssetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_assets(text, CLASSES)


def test_import_without_a_daemon_goes_into_the_state_directory(tmp_path: Path) -> None:
    csv_file = tmp_path / "assets.csv"
    csv_file.write_text(CSV)
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    result = subprocess.run([*cli, "import-assets", str(csv_file), "--reason", "CMDB sync", "--state-dir", str(state)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 devices imported and pinned" in result.stdout
    devices = json.loads(subprocess.run([*cli, "devices", "--json", "--state-dir", str(state)], capture_output=True, text=True, check=True).stdout)["devices"]
    assert {(d["mac"], d["class"], d["pinned"]) for d in devices} == {("00:09:5c:70:00:21", "patient_monitor", True), ("f8:c6:78:70:00:22", "infusion_pump", True)}
    audit = subprocess.run([*cli, "audit", "--json", "--state-dir", str(state)], capture_output=True, text=True, check=True).stdout
    assert json.loads(audit)["action"] == "asset import"
