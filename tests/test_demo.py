"""The main job end to end: `medseg-xdp demo` on the virtual ward, judged by its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_xdp import config

pytestmark = [pytest.mark.root, pytest.mark.netns]


def test_demo_from_xray_to_enforcement(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "demo", "--json-report", str(report_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())

    classes = {row["host"]: row["class"] for row in report["inventory"]}
    assert classes["ct"] == "imaging_modality" and classes["pacs"] == "pacs" and classes["pump"] == "infusion_pump"
    assert classes["monitor-gw"] == "patient_monitor" and classes["hl7-engine"] == "hl7_interface_engine"

    proposed = config.parse("[bridge]\n" + report["proposed_policy"], "proposed")
    assert any(rule.src == "imaging-modality" and rule.dst == "pacs" and rule.ports == ((104, 104),) for rule in proposed.rules)
    assert report["simulation"]["clean"] and not report["simulation"]["cuts_life_critical"]

    enforcement = report["enforcement"]
    assert enforcement["clinical_exchanges"]["failed"] == []
    assert enforcement["legitimate_packets_dropped"] == 0 and enforcement["legitimate_packets_passed"] > 100
    assert enforcement["life_critical_cut_off"] == []
    assert {"infusion-pump", "patient-monitor"} <= set(enforcement["monitor_segments"])
    assert enforcement["attack_packets_dropped"] > 1000
    assert enforcement["attack_open_ports"] == {"pacs": [], "hl7-engine": []}
    assert not enforcement["attack_dicom_answered"] and not enforcement["attack_hl7_answered"]
    assert report["metrics_dropped_packets"] >= enforcement["attack_packets_dropped"]  # the endpoint served the kernel's counters
    assert "cleaned up" in result.stdout and report["seconds"] < 180
