"""`medseg-xdp doctor` names what is broken, on a real namespace bridge."""

from __future__ import annotations

import ctypes
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


def test_the_sample_ring_must_hold_a_burst_from_every_cpu() -> None:
    from medseg_xdp import config as config_mod
    from medseg_xdp.doctor import check_sample_ring

    cfg = config_mod.parse('[bridge]\nports = ["a"]\n')  # bursts of 200 + 200 samples of 560 bytes, a 1 MiB ring
    assert check_sample_ring(cfg, 2).status is Status.OK
    many = check_sample_ring(cfg, 16)
    assert many.status is Status.WARN and "ring_pages = 1024" in many.fix
    unlimited = config_mod.parse('[bridge]\nports = ["a"]\n[settings]\ndhcp_samples_per_sec = 4294967295\n')
    assert check_sample_ring(unlimited, 2).status is Status.WARN


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
            assert "[  ok] judging program: medseg_judge, program" in healthy.stdout
            # the slot xdp_medseg tail-calls, emptied: new flows would pass unjudged
            from medseg_xdp import bpfsys
            from medseg_xdp import config as config_mod
            from medseg_xdp.loader import Loader

            cfg = config_mod.load(config)
            slots_fd = bpfsys.obj_get(str(Loader(cfg.bridge, sizes=cfg.tables).pin_dir / "judge_program"))
            slots = bpfsys.Map(slots_fd, "judge_program", ctypes.c_uint32, ctypes.c_uint32)
            slots.delete(ctypes.c_uint32(0))
            slots.close()
            empty = doctor(config, ward.bridge_ns.name)
            assert empty.returncode == 1 and "[FAIL] judging program: the judge_program slot is empty" in empty.stdout
        finally:
            subprocess.run([*cli, "unload", "-c", str(config), "--netns", ward.bridge_ns.name, "--remove-state"], capture_output=True)


@pytest.mark.root
def test_the_daemon_refuses_to_start_on_a_host_check_failure(tmp_path: Path) -> None:
    """A kernel update without headers: the daemon says so and what to do, before compiling anything."""
    from medseg_xdp.daemon import Daemon, StartRefused
    from medseg_xdp.doctor import Check

    config = tmp_path / "policy.toml"
    config.write_text(f'[bridge]\nname = "refuse{os.getpid()}"\nports = ["portZ"]\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    headers_gone = Check("kernel headers", Status.FAIL, "no kernel headers at /lib/modules/7.0.0/build", "run scripts/setup.sh")
    daemon = Daemon(config, host_checks=lambda: [Check("kernel", Status.OK, "7.0.0"), headers_gone])
    with pytest.raises(StartRefused) as refused:
        daemon.start()
    daemon.events.close()
    assert str(refused.value).splitlines() == [
        "refusing to start, enforcement would not work as configured:",
        "[FAIL] kernel headers: no kernel headers at /lib/modules/7.0.0/build",
        "       fix: run scripts/setup.sh",
        "[FAIL] ports: no interface portZ",
        "       fix: check bridge.ports; `medseg-xdp doctor -c CONFIG` shows every port",
    ]
    assert daemon.loader.prog_fd < 0 and not daemon.loader.pin_dir.exists()


def test_missing_vendor_data_is_a_warning(tmp_path: Path) -> None:
    """Without ieee-data the classifier loses its vendor signal: doctor says so, and how to fix it."""
    from medseg_xdp.doctor import check_vendor_data

    missing = check_vendor_data(tmp_path)
    assert missing.status is Status.WARN and "ieee-data" in missing.fix
    assert check_vendor_data().status is Status.OK  # setup.sh installs it
