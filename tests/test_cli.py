"""The command line as a user runs it: trace, load/unload twice, restart on pinned state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, InlineBridge
from medseg_xdp.traffic import exchange, start_echo_server

FIXTURE_CONFIG = Path(__file__).parent / "fixture_policy.toml"


def medseg(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"medseg-xdp {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.root
def test_trace_json_answers_each_packet() -> None:
    allowed = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=1000, dport=104, flags="S")
    denied = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=1001, dport=23, flags="S")
    result = medseg("trace", "-c", str(FIXTURE_CONFIG), "--ingress", "portA", "--json", "--hex", bytes(allowed).hex(), bytes(denied).hex(), check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["verdict"], x["reason"], x["rule"], x["src_segment"], x["dst_segment"]) for x in lines] == [
        ("pass", "rule", "dicom", "modalities", "pacs"),
        ("drop", "segment_default", "default:modalities", "modalities", "pacs"),
    ]


@pytest.mark.root
def test_trace_places_devices_by_the_daemons_inventory(tmp_path: Path) -> None:
    """Class-based segments need the inventory: with --state-dir, trace sees what the live bridge sees."""
    from medseg_xdp.classify import Classifier, load_catalog
    from medseg_xdp.inventory import Inventory, InventoryStore

    policy = tmp_path / "policy.toml"
    policy.write_text('[bridge]\nports = ["portA", "portB"]\n[segments.pumps]\nclasses = ["infusion_pump"]\ndefault = "drop"\n'
                      '[segments.servers]\nprefixes = ["10.0.2.0/24"]\nmode = "enforce"\n')
    inventory = Inventory(Classifier(load_catalog()))
    inventory.pin("02:00:00:00:00:31", device_class="infusion_pump")
    InventoryStore(tmp_path / "state").save(inventory)
    frame = Ether(src="02:00:00:00:00:31", dst="02:00:00:00:00:fe") / IP(src="10.0.3.5", dst="10.0.2.5") / TCP(sport=1000, dport=443, flags="S")
    without = json.loads(medseg("trace", "-c", str(policy), "--json", "--hex", bytes(frame).hex(), check=True).stdout)
    with_inventory = json.loads(medseg("trace", "-c", str(policy), "--state-dir", str(tmp_path / "state"), "--json", "--hex", bytes(frame).hex(), check=True).stdout)
    assert (without["src_segment"], with_inventory["src_segment"]) == ("unassigned", "pumps")
    assert (with_inventory["verdict"], with_inventory["rule"]) == ("audit", "default:pumps")  # monitor: its own default audits


@pytest.mark.root
def test_trace_reads_a_real_capture() -> None:
    capture = Path(__file__).resolve().parents[2] / "shared" / "captures" / "ndpi" / "badpackets.pcap"
    if not capture.exists():
        pytest.skip(f"{capture} not present")
    result = medseg("trace", "-c", str(FIXTURE_CONFIG), "--pcap", str(capture), "--json", check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all("verdict" in x or "error" in x for x in lines)
    assert any(x.get("reason") == "malformed" for x in lines)


def test_trace_refuses_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nfrom = "a"\nto = "b"\naction = "allow"\n')
    result = medseg("trace", "-c", str(bad), "--hex", "00")
    assert result.returncode == 1
    assert "rules[0].from: unknown segment 'a'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def bridge_config(tmp_path: Path) -> Iterator[tuple[InlineBridge, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    policy = f"""
[bridge]
name = "clitest-{os.getpid()}"
ports = ["{DEFAULT_CLIENT.port_name}", "{DEFAULT_SERVER.port_name}"]
[segments.modality]
macs = ["{DEFAULT_CLIENT.mac}"]
mode = "enforce"
default = "drop"
[[rules]]
from = "modality"
to = "unassigned"
proto = "tcp"
ports = [104]
action = "allow"
"""
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    with InlineBridge() as ward:
        try:
            yield ward, path
        finally:
            medseg("unload", "-c", str(path), "--netns", ward.bridge_ns.name, "--remove-state")


@pytest.mark.root
@pytest.mark.netns
def test_load_twice_unload_twice_and_restart_on_pinned_state(bridge_config: tuple[InlineBridge, Path]) -> None:
    ward, path = bridge_config
    netns = ["--netns", ward.bridge_ns.name]
    first = medseg("load", "-c", str(path), *netns, check=True)
    assert "portA: native XDP" in first.stdout

    again = medseg("load", "-c", str(path), *netns)
    assert again.returncode == 1 and "already carries xdp_medseg" in again.stderr and "Traceback" not in again.stderr

    server = DEFAULT_SERVER.ipv4.split("/")[0]  # type: ignore[union-attr]
    start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104, 22])
    assert exchange(ward.client_ns, "tcp", server, 104)
    assert not exchange(ward.client_ns, "tcp", server, 22, timeout=1.0)

    # A new manager swaps the program atomically and keeps the pinned maps.
    replaced = medseg("load", "-c", str(path), *netns, "--replace", check=True)
    assert "policy generation 2" in replaced.stdout
    assert exchange(ward.client_ns, "tcp", server, 104)
    assert not exchange(ward.client_ns, "tcp", server, 22, timeout=1.0)

    assert "portA: detached" in medseg("unload", "-c", str(path), *netns, check=True).stdout
    twice = medseg("unload", "-c", str(path), *netns)
    assert twice.returncode == 1 and "nothing to unload" in twice.stderr and "Traceback" not in twice.stderr
    assert exchange(ward.client_ns, "tcp", server, 22)  # detached: the bridge forwards everything (fail-open)


@pytest.mark.root
@pytest.mark.netns
def test_pinned_state_stays_while_a_port_still_carries_the_program(bridge_config: tuple[InlineBridge, Path]) -> None:
    """The pins keep judge_program filled: removed under a port that still carries xdp_medseg, that port would
    pass every new flow unjudged."""
    from medseg_xdp.loader import DEFAULT_PIN_ROOT

    ward, path = bridge_config
    netns = ["--netns", ward.bridge_ns.name]
    medseg("load", "-c", str(path), *netns, check=True)
    pins = DEFAULT_PIN_ROOT / f"clitest-{os.getpid()}"
    partial = medseg("unload", "-c", str(path), *netns, "--ports", DEFAULT_CLIENT.port_name, "--remove-state")
    assert partial.returncode == 1 and "Traceback" not in partial.stderr
    assert f"{DEFAULT_SERVER.port_name} still carries xdp_medseg" in partial.stderr
    assert pins.is_dir()
    full = medseg("unload", "-c", str(path), *netns, "--remove-state", check=True)
    assert "pinned state removed" in full.stdout and not pins.exists()


@pytest.mark.root
@pytest.mark.netns
def test_load_on_fresh_maps_turns_break_glass_on_again(bridge_config: tuple[InlineBridge, Path], tmp_path: Path) -> None:
    """Without a daemon too: a reboot during break-glass does not quietly put enforcement back."""
    from medseg_xdp.breakglass import BreakGlassRecord

    ward, path = bridge_config
    path.write_text(path.read_text() + f'\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    BreakGlassRecord(tmp_path / "state").record(True, 0, "code blue, ward 3")
    loaded = medseg("load", "-c", str(path), "--netns", ward.bridge_ns.name, check=True)
    assert "break-glass was on when the maps were lost" in loaded.stderr and "code blue, ward 3" in loaded.stderr
    server = DEFAULT_SERVER.ipv4.split("/")[0]  # type: ignore[union-attr]
    start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [22])
    assert exchange(ward.client_ns, "tcp", server, 22)  # the modality segment enforces, but nothing is dropped
    audit = medseg("audit", "--state-dir", str(tmp_path / "state"), check=True)
    assert "break-glass restored" in audit.stdout


@pytest.mark.root
@pytest.mark.netns
def test_never_touches_a_foreign_program(bridge_config: tuple[InlineBridge, Path]) -> None:
    from bcc import BPF

    from medseg_xdp import bpfsys
    from medseg_xdp.loader import in_netns

    ward, path = bridge_config
    other = BPF(text=b"int xdp_other(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        fd = other.load_func(b"xdp_other", BPF.XDP).fd
        with in_netns(ward.bridge_ns.name):
            bpfsys.xdp_attach(ward.port_a_ifindex, fd, bpfsys.XDP_FLAGS_SKB_MODE)
        result = medseg("load", "-c", str(path), "--netns", ward.bridge_ns.name)
        assert result.returncode == 1
        assert "portA already carries another XDP program (xdp_other" in result.stderr
        unload = medseg("unload", "-c", str(path), "--ports", "portA", "--netns", ward.bridge_ns.name)
        assert unload.returncode == 1 and "nothing to unload" in unload.stderr
        with in_netns(ward.bridge_ns.name):
            assert bpfsys.prog_name_by_id(bpfsys.xdp_attached_id(ward.port_a_ifindex)) == "xdp_other"
    finally:
        other.cleanup()


@pytest.mark.root
@pytest.mark.netns
def test_break_glass_with_the_daemon_down(bridge_config: tuple[InlineBridge, Path], tmp_path: Path) -> None:
    """No manager runs (only `load`): break-glass acts on the pinned maps, is logged, and ends."""
    ward, path = bridge_config
    state = tmp_path / "state"
    medseg("load", "-c", str(path), "--netns", ward.bridge_ns.name, check=True)
    server = DEFAULT_SERVER.ipv4.split("/")[0]  # type: ignore[union-attr]
    start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104, 22])
    assert not exchange(ward.client_ns, "tcp", server, 22, timeout=1.0)

    on = medseg("break-glass", "on", "--reason", "OR 3 lost its PACS link", "-c", str(path), "--state-dir", str(state), check=True)
    assert "BREAK-GLASS ON" in on.stdout
    assert exchange(ward.client_ns, "tcp", server, 22)  # passes, as audit
    medseg("break-glass", "off", "--reason", "link restored", "-c", str(path), "--state-dir", str(state), check=True)
    assert not exchange(ward.client_ns, "tcp", server, 22, timeout=1.0)

    log = medseg("audit", "--json", "--state-dir", str(state), check=True)
    entries = [json.loads(line) for line in log.stdout.splitlines()]
    assert [(e["action"], e["reason"], e["uid"]) for e in entries] == [
        ("break-glass on", "OR 3 lost its PACS link", os.getuid()),
        ("break-glass off", "link restored", os.getuid()),
    ]


@pytest.mark.root
@pytest.mark.netns
def test_a_port_beyond_the_port_table_is_refused_before_attach() -> None:
    """The ports map is indexed by ifindex: a port past its end would lose its PVID, so it is refused, saying why."""
    from medseg_xdp import abi
    from medseg_xdp.doctor import Status, check_port
    from medseg_xdp.loader import Loader, LoaderError
    from medseg_xdp.topology import Namespace

    limit = abi.const("PORT_IFINDEX_LIMIT")
    with Namespace("bigindex") as ns:
        ns.run(["ip", "link", "add", "portA", "index", str(limit), "type", "veth", "peer", "name", "peerA"])
        with pytest.raises(LoaderError, match=f"portA has ifindex {limit}: the port table holds ifindexes below {limit}"):
            Loader("bigindex").preflight(["portA"], netns_name=ns.name)
        found = [c for c in check_port("portA", ns.name) if c.name == "port portA ifindex"]
        assert [c.status for c in found] == [Status.FAIL]


def test_python_m_medseg_xdp_is_the_command_and_a_bad_port_is_named() -> None:
    result = subprocess.run([sys.executable, "-m", "medseg_xdp", "exception", "add", "--from", "a", "--to", "b", "--proto", "tcp",
                             "--ports", "abc", "--expires", "1h"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--ports abc: a port or a range low-high" in result.stderr, result.stderr


def test_devices_and_audit_say_when_the_state_dir_is_not_there(tmp_path: Path) -> None:
    for command in ("devices", "audit"):
        result = medseg(command, "--state-dir", str(tmp_path / "nowhere"))
        assert result.returncode == 1 and f"no medseg-xdp state at {tmp_path / 'nowhere'}" in result.stderr, result.stderr
