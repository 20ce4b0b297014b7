"""The Vagrant topology (vagrant/): its files are valid, and the bridge VM's part of the bench runs on veth.

The VMs themselves cannot run here (no VM host)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from medseg_xdp import bpfsys
from medseg_xdp.loader import BPFFS, in_netns
from medseg_xdp.topology import HOST_IFNAME, HostSpec, InlineBridge

VAGRANT_DIR = Path(__file__).resolve().parents[1] / "vagrant"


@pytest.mark.parametrize("script", sorted(p.name for p in VAGRANT_DIR.glob("*.sh")))
def test_vagrant_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(VAGRANT_DIR / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed (Debian 12 packages it; 13 does not)")
def test_vagrantfile_validates(tmp_path: Path) -> None:
    # vagrant's state (its home, the project's .vagrant) goes where pytest removes it
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile")}
    result = subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "validated successfully" in result.stdout, result.stdout + result.stderr


# ---- the bridge VM's part of vagrant/run_bench.sh, on veth ----

REPO = VAGRANT_DIR.parent
# vagrant/Vagrantfile's generator and sink NICs (bench/pps_vm.py's policy names them)
GENERATOR = HostSpec("gen", "52:54:00:77:00:01", "10.77.0.1/24", port="portA")
SINK = HostSpec("sink", "52:54:00:77:00:02", "10.77.0.2/24", port="portB")
TRAFFIC_PORT = {"drop": 22, "pass": 104}  # vagrant/pktgen.sh


@contextlib.contextmanager
def stand_in_for_pktgen(topology: InlineBridge, traffic: str) -> Iterator[None]:
    """vagrant/pktgen.sh's frames (60-byte UDP to the sink's MAC), sent without pause from the gen namespace.

    BPF_PROG_TEST_RUN's live frames (bench/pps.py's generator) stand in for pktgen, which this kernel lacks.
    """
    from bcc import BPF

    gen_ifindex = topology.client_ns.ifindex(HOST_IFNAME)
    frame = bytes(Ether(src=GENERATOR.mac, dst=SINK.mac) / IP(src="10.77.0.1", dst="10.77.0.99")
                  / UDP(sport=40000, dport=TRAFFIC_PORT[traffic]) / (b"\0" * 18))
    bpf = BPF(text=f"int xdp_gen(struct xdp_md *ctx) {{ return bpf_redirect({gen_ifindex}, 0); }}".encode())
    stop = threading.Event()

    def send() -> None:
        with in_netns(topology.client_ns.name):
            while not stop.is_set():
                bpfsys.prog_test_run(bpf.load_func(b"xdp_gen", BPF.XDP).fd, frame, gen_ifindex, repeat=50_000,
                                     flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(timeout=30)
        bpf.cleanup()


def run_pps_vm(argv: list[str], netns: str | None = None) -> None:
    """bench/pps_vm.py as run_bench.sh runs it on the bridge VM; removes what a killed run would leave pinned."""
    command = [sys.executable, "bench/pps_vm.py", *argv]
    if netns is not None:  # only the network namespace: bpffs stays where the program pins
        command = ["nsenter", f"--net=/run/netns/{netns}", *command]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = child.communicate(timeout=300)
    finally:
        child.kill()
        child.wait()
        for pin in BPFFS.glob(f"medseg-session-{child.pid}-*"):
            shutil.rmtree(pin, ignore_errors=True)
    assert child.returncode == 0, output


@pytest.mark.root
def test_bridge_vm_receiver_runs_on_veth(tmp_path: Path) -> None:
    """pps_vm.py measures every receiver case and summarises them, with the counters agreeing on each."""
    with InlineBridge(client=GENERATOR, server=SINK) as topology:
        # a veth takes redirected frames only with NAPI on its peer: GRO gives it that (a virtio NIC needs none)
        topology.bridge_ns.run(["ethtool", "-K", "portA", "gro", "on"])
        for traffic in ("drop", "pass"):
            with stand_in_for_pktgen(topology, traffic):
                run_pps_vm(["--traffic", traffic, "--window", "2", "--out", str(tmp_path)], topology.bridge_ns.name)
    run_pps_vm(["--summarise", "--out", str(tmp_path)])

    data = json.loads((tmp_path / "pps_vm.json").read_text())
    measured = {result["case"]: result for result in data["results"]}
    assert len(measured) + len(data["notes"]) == 9, (sorted(measured), data["notes"])  # bench/pps.py's CASES
    for name, result in measured.items():
        round_ = result["median_round"]
        assert result["counters_agree"] == "ok", (name, round_)
        delivered_share = round_["delivered_to_sink"] / round_["received"]
        if result["expect"] == "drop":
            assert delivered_share < 0.01, (name, round_)
        else:
            assert delivered_share > 0.9, (name, round_)
    report = (tmp_path / "pps_vm.md").read_text()
    assert "no pktgen report for drop traffic" in report and "our drop path ÷ XDP_DROP-only" in report
