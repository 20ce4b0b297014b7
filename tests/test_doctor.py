"""`medseg-xdp doctor` names what is broken, on a real namespace bridge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_xdp.doctor import Status, check_kernel, kernel_version
from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, InlineBridge


def test_kernel_versions() -> None:
    assert kernel_version("6.18.44-fc-v657") == (6, 18)
    assert kernel_version("5.10.0-28-amd64") == (5, 10)
    assert check_kernel("5.10.0").status is Status.FAIL
    assert check_kernel("6.1.0-56-amd64").status is Status.OK


def doctor(config: Path, netns: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "doctor", "-c", str(config), "--netns", netns], capture_output=True, text=True, timeout=120)


@pytest.mark.root
@pytest.mark.netns
def test_doctor_reports_a_broken_then_a_healthy_set_up(tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(f'[bridge]\nname = "doctor{os.getpid()}"\nports = ["{DEFAULT_CLIENT.port_name}", "{DEFAULT_SERVER.port_name}", "portZ"]\n')
    with InlineBridge() as ward:
        broken = doctor(config, ward.bridge_ns.name)
        assert broken.returncode == 1, broken.stdout
        assert "[FAIL] pinned state: no pinned maps" in broken.stdout
        assert "[FAIL] port portA: no XDP program: traffic crosses unfiltered (fail-open)" in broken.stdout
        assert "[FAIL] port portZ: no such interface" in broken.stdout
        assert "[  ok] kernel" in broken.stdout and "[  ok] bpffs" in broken.stdout

        config.write_text(config.read_text().replace(', "portZ"', ""))
        cli = [sys.executable, "-m", "medseg_xdp.cli"]
        subprocess.run([*cli, "load", "-c", str(config), "--netns", ward.bridge_ns.name, "--ports", "portA", "--generic"], check=True, capture_output=True)
        subprocess.run([*cli, "load", "-c", str(config), "--netns", ward.bridge_ns.name, "--ports", "portB", "--replace"], check=True, capture_output=True)
        try:
            healthy = doctor(config, ward.bridge_ns.name)
            assert healthy.returncode == 0, healthy.stdout
            assert "[warn] port portA: generic (skb) XDP" in healthy.stdout
            assert "[  ok] port portB: native XDP" in healthy.stdout
            assert "[  ok] pinned state" in healthy.stdout
        finally:
            subprocess.run([*cli, "unload", "-c", str(config), "--netns", ward.bridge_ns.name, "--remove-state"], capture_output=True)
