"""The Vagrant topology (vagrant/): its files are valid, and run_bench.sh runs with namespaces for VMs.

The VMs themselves cannot run here (no VM host, no pktgen)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_xdp.loader import BPFFS
from medseg_xdp.topology import HOST_IFNAME, HostSpec, InlineBridge, Namespace

VAGRANT_DIR = Path(__file__).resolve().parents[1] / "vagrant"
REPO = VAGRANT_DIR.parent
sys.path.insert(0, str(REPO / "bench"))  # bench/ is no package
import benchlib as B
import pps_vm


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


# ---- vagrant/run_bench.sh, with namespaces for VMs ----

STAND_INS = Path(__file__).resolve().parent / "vagrant_standin"
# the generator and sink NICs of vagrant/Vagrantfile, as bench/pps_vm.py's policy names them
GENERATOR = HostSpec("gen", pps_vm.GENERATOR_MAC, "10.77.0.1/24", port="portA")
SINK = HostSpec("sink", pps_vm.SINK_MAC, "10.77.0.2/24", port="portB")
# what bench/benchlib.py's xdp-filter leaves: its maps, and libxdp's working directory
XDP_FILTER_PINS, LIBXDP_DIR = B.XDP_FILTER_PIN_DIR, B.LIBXDP_DIR


def remove_receiver_leftovers(pins_before: set[Path], xdp_filter_before: set[Path]) -> None:
    """What a receiver killed mid-case would leave: its pins (its pid is gone), xdp-filter's that were not there before."""
    for pin in set(BPFFS.glob("medseg-session-*")) - pins_before:  # medseg-session-<pid>-<id>
        if not Path(f"/proc/{pin.name.split('-')[2]}").exists():  # a live process's is another run's
            shutil.rmtree(pin, ignore_errors=True)
    if XDP_FILTER_PINS not in xdp_filter_before:
        shutil.rmtree(XDP_FILTER_PINS, ignore_errors=True)
    if LIBXDP_DIR not in xdp_filter_before:
        with contextlib.suppress(OSError):  # only if empty: another libxdp user may have come meanwhile
            LIBXDP_DIR.rmdir()


@pytest.mark.root
def test_run_bench_measures_every_receiver_case(tmp_path: Path) -> None:
    """run_bench.sh, step 3 and 4: every receiver case measured, summarised and collected, counters agreeing.

    The VMs are namespaces: gen -- portA [br0] portB -- sink. Stand-ins (tests/vagrant_standin/) take the
    place of vagrant, ssh and sudo, and of pktgen, which this kernel lacks: pktgen.py sends pktgen.sh's
    frames with BPF_PROG_TEST_RUN's live frames. Everything on the bridge is the real thing.
    """
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    pins_before = set(BPFFS.glob("medseg-session-*"))
    xdp_filter_before = {path for path in (XDP_FILTER_PINS, LIBXDP_DIR) if path.exists()}
    try:
        with InlineBridge(client=GENERATOR, server=SINK) as topology:
            # a veth takes redirected frames only with NAPI on its peer: GRO gives it that (a virtio NIC needs none)
            topology.bridge_ns.run(["ethtool", "-K", "portA", "gro", "on"])
            env = {**os.environ, "PATH": f"{STAND_INS}:{os.environ['PATH']}",
                   "STANDIN_NETNS_gen": topology.client_ns.name, "STANDIN_NETNS_bridge": topology.bridge_ns.name,
                   "STANDIN_NETNS_sink": topology.server_ns.name, "STANDIN_PYTHON": sys.executable,
                   "STANDIN_STATE": str(state), "DEV": HOST_IFNAME,
                   "REMOTE_SRC": str(REPO), "REMOTE_PY": sys.executable, "REMOTE_OUT": str(tmp_path / "remote"),
                   "WINDOW": "2", "SKIP_SINGLE_HOST": "1"}
            # its own process group: on a timeout or failure, nothing it started outlives the test
            script = subprocess.Popen(["bash", str(VAGRANT_DIR / "run_bench.sh"), str(out)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                output = script.communicate(timeout=240)[0]  # under pytest's 300 s; about 45 s here
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(script.pid, signal.SIGKILL)
                script.wait()
                if (state / "pid").exists():  # the generator runs in a session of its own
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int((state / "pid").read_text()), signal.SIGKILL)
    finally:
        remove_receiver_leftovers(pins_before, xdp_filter_before)
    assert script.returncode == 0 and "failed" not in output, output

    data = json.loads((out / "pps_vm.json").read_text())
    assert (data.get("pktgen_drop_pps") or 0) > 0 and (data.get("pktgen_pass_pps") or 0) > 0, data  # pktgen-*.txt
    assert not data["notes"], data["notes"]  # xdp-filter comes with the set-up (xdp-tools)
    measured = {result["case"]: result for result in data["results"]}
    assert len(measured) == 9, sorted(measured)  # bench/pps.py's CASES
    for name, result in measured.items():
        round_ = result["median_round"]
        assert result["counters_agree"] == "ok", (name, round_)
        delivered_share = round_["delivered_to_sink"] / round_["received"]
        if result["expect"] == "drop":
            assert delivered_share < 0.01, (name, round_)
        else:  # the bridge's stack may drop some under the flood
            assert delivered_share > 0.9, (name, round_)
    assert "our drop path ÷ XDP_DROP-only" in (out / "pps_vm.md").read_text()
    assert {p.name for p in out.iterdir()} >= {"pps_vm-drop.json", "pps_vm-pass.json", "pktgen-drop.txt", "pktgen-pass.txt"}


# ---- vagrant/provision.sh ----

VM_NICS = {"bridge": {"portA": "52:54:00:77:00:0a", "portB": "52:54:00:77:00:0b"}, "sink": {"sink0": SINK.mac}}  # vagrant/Vagrantfile


@pytest.mark.root
def test_provision_names_nics_by_mac_and_builds_the_bridge_and_the_sink(tmp_path: Path) -> None:
    """provision.sh's bridge and sink roles, each in a namespace whose NICs carry the Vagrantfile's MACs.

    Twice, as `vagrant provision` re-runs it. The gen role loads pktgen, which this kernel lacks. The
    README's set-up (scripts/setup.sh, which the bridge role runs) is a stub here that counts its calls:
    the suite's own set-up is not the test's to change.
    """
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "setup.sh").write_text(f'echo called >> "{tmp_path}/setup-calls"\n')
    with Namespace("vm-bridge") as bridge, Namespace("vm-sink") as sink:
        vms = {"bridge": bridge, "sink": sink}
        sink.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])  # what the sink role must turn off
        for role, nics in VM_NICS.items():
            for index, mac in enumerate(nics.values()):  # named as the kernel might name them
                vms[role].run(["ip", "link", "add", f"ens{index + 5}", "address", mac, "type", "veth", "peer", "name", f"wire{index}"])
        for _ in range(2):
            for role, nics in VM_NICS.items():
                argv = [item for name, mac in nics.items() for item in (name, mac)]
                vms[role].run(["env", f"MEDSEG_SRC={checkout}", f"SYSTEMD_NETWORK_DIR={tmp_path / role}",
                               "bash", str(VAGRANT_DIR / "provision.sh"), role, *argv], timeout=600)
        for role, nics in VM_NICS.items():
            links = {link["ifname"]: link for link in json.loads(vms[role].run(["ip", "-j", "link", "show"]).stdout)}
            for name, mac in nics.items():
                assert links[name]["address"] == mac and "UP" in links[name]["flags"], links[name]
                assert (tmp_path / role / f"10-medseg-{name}.link").read_text() == f"[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n"
        bridge_links = {link["ifname"]: link for link in json.loads(bridge.run(["ip", "-j", "link", "show"]).stdout)}
        assert bridge_links["portA"]["master"] == bridge_links["portB"]["master"] == "br0"
        fdb = json.loads(bridge.run(["bridge", "-j", "fdb", "show", "dev", "portB"]).stdout)
        assert any(entry["mac"] == SINK.mac and entry.get("state") == "static" for entry in fdb), fdb
        addresses = json.loads(sink.run(["ip", "-j", "addr", "show", "sink0"]).stdout)[0]["addr_info"]
        assert {(a["local"], a["prefixlen"]) for a in addresses if a["family"] == "inet"} == {("10.77.0.2", 24)}
        assert sink.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    assert (tmp_path / "setup-calls").read_text() == "called\n" * 2
