"""The daemon on a namespace bridge with real traffic: live classification into segments,
reloads that keep the old policy on error, kill -9 that keeps enforcing, and resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemonproc import stop_and_unload

from medseg_xdp.control import ControlError, request
from medseg_xdp.daemon import control_socket
from medseg_xdp.loader import DEFAULT_PIN_ROOT
from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, InlineBridge
from medseg_xdp.traffic import dicom_associate_request, exchange, send_payload, start_echo_server, wait_until

pytestmark = [pytest.mark.root, pytest.mark.netns]

SERVER = DEFAULT_SERVER.ipv4.split("/")[0]  # type: ignore[union-attr]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

POLICY = """
[bridge]
name = "{bridge}"
ports = ["{port_a}", "{port_b}"]

[settings]
sample_first_packets = 8

[daemon]
state_dir = "{state_dir}"
on_stop = "{on_stop}"

[segments.modalities]
classes = ["imaging_modality"]
mode = "enforce"
default = "drop"

[segments.pacs]
macs = ["{server_mac}"]
mode = "monitor"  # closed by default (drop) but audited: monitor before enforce
default = "drop"

[[rules]]
id = "dicom-store"
from = "modalities"
to = "pacs"
proto = "tcp"
ports = [104]
action = "allow"
"""


@dataclass
class Running:
    ward: InlineBridge
    config: Path
    state_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def ask(self, op: str, **arguments: object) -> object:
        return request(control_socket(self.state_dir), op, **arguments)


def write_policy(path: Path, state_dir: Path, on_stop: str = "detach", **replace: str) -> None:
    text = POLICY.format(
        bridge=f"dtest{os.getpid()}",
        port_a=DEFAULT_CLIENT.port_name,
        port_b=DEFAULT_SERVER.port_name,
        state_dir=state_dir,
        on_stop=on_stop,
        server_mac=DEFAULT_SERVER.mac,
    )
    for old, new in replace.items():
        text = text.replace(old, new)
    path.write_text(text)


def start_daemon(ward: InlineBridge, config: Path, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medseg_xdp.cli", "run", "-c", str(config), "--netns", ward.bridge_ns.name],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def answers() -> bool:
        try:
            request(control_socket(state_dir), "status", timeout=1)
            return True
        except ControlError:
            return process.poll() is not None

    assert wait_until(answers, timeout=60), log.read_text()
    assert process.poll() is None, log.read_text()
    return process


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    state_dir = tmp_path / "state"
    config = tmp_path / "policy.toml"
    write_policy(config, state_dir)
    log = tmp_path / "daemon.log"
    with InlineBridge() as ward:
        start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104, 22])
        process = start_daemon(ward, config, state_dir, log)
        daemon = Running(ward, config, state_dir, process, log)
        try:
            yield daemon
        finally:
            stop_and_unload(daemon.process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")
    assert not (DEFAULT_PIN_ROOT / f"dtest{os.getpid()}").exists()


def ssh_attempt(daemon: Running, timeout: float = 1.0) -> bool:
    return exchange(daemon.ward.client_ns, "tcp", SERVER, 22, timeout=timeout)


def store_image(daemon: Running) -> bool:
    return send_payload(daemon.ward.client_ns, SERVER, 104, dicom_associate_request("CT01", "PACS", CT_IMAGE_STORAGE))


def test_a_device_is_classified_and_lands_in_its_segment_live(running: Running) -> None:
    status = running.ask("status")
    assert status["generation"] >= 1 and {a["mode"] for a in status["attachments"]} == {"native"}  # type: ignore[index]
    # unknown so far: the client is unassigned and the pacs monitors: its ssh passes, audited
    assert ssh_attempt(running)
    assert store_image(running)

    def classified() -> bool:
        devices = {d["mac"]: d for d in running.ask("devices")}  # type: ignore[union-attr]
        client = devices.get(DEFAULT_CLIENT.mac)
        return bool(client) and client["class"] == "imaging_modality" and client["segment"] == "modalities"

    assert wait_until(classified, timeout=10), running.log.read_text()
    audit = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "audit", "--json", "--state-dir", str(running.state_dir)], capture_output=True, text=True, check=True)
    changes = [json.loads(line) for line in audit.stdout.splitlines() if json.loads(line)["action"] == "class change"]
    assert any(c["details"]["mac"] == DEFAULT_CLIENT.mac and c["details"]["new_class"] == "imaging_modality" and c["reason"] == "classifier evidence" for c in changes), changes
    # now in "modalities": DICOM to the pacs passes, anything else is dropped, without a restart
    assert store_image(running)
    assert not ssh_attempt(running)
    flows = running.ask("flows", top=50)
    assert any(f["rule"] == "dicom-store" and f["src_segment"] == "modalities" for f in flows)  # type: ignore[union-attr,index]
    # the denied ssh has no flow entry, but `medseg-xdp drops` names it, its segments and the rule that dropped it
    assert wait_until(lambda: any(r["verdict"] == "drop" and r["dport"] == 22 for r in running.ask("drops", match=DEFAULT_CLIENT.mac)), timeout=5)  # type: ignore[union-attr,index]
    drops = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "drops", DEFAULT_CLIENT.mac, "--state-dir", str(running.state_dir)],
                           capture_output=True, text=True, check=True).stdout
    ssh = next(line for line in drops.splitlines() if line.split()[2:3] == ["drop"] and ":22 " in line)
    assert "modalities->" in ssh and "segment_default" in ssh, drops
    assert running.ask("drops", match="02:00:00:00:99:99") == []


def test_an_invalid_reload_changes_nothing(running: Running) -> None:
    generation = running.ask("status")["generation"]  # type: ignore[index]
    good = running.config.read_text()
    running.config.write_text(good.replace('to = "pacs"', 'to = "nowhere"'))
    running.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in running.log.read_text(), timeout=10)
    assert running.ask("status")["generation"] == generation  # type: ignore[index]
    with pytest.raises(ControlError, match="unknown segment 'nowhere'"):
        running.ask("policy_apply")
    running.config.write_text(good)
    running.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: running.ask("status")["generation"] == generation + 1, timeout=10)  # type: ignore[index]
    # `systemctl reload` is on record like an apply: refused, then applied
    audit = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "audit", "--json", "--state-dir", str(running.state_dir)],
                           capture_output=True, text=True, check=True)
    reloads = [json.loads(line) for line in audit.stdout.splitlines() if json.loads(line)["action"].startswith("policy reload")]
    assert [e["action"] for e in reloads] == ["policy reload refused", "policy reload"], reloads
    assert "unknown segment 'nowhere'" in reloads[0]["details"]["error"] and reloads[1]["details"]["generation"] == generation + 1


def test_policy_diff_and_apply_through_the_cli(running: Running, tmp_path: Path) -> None:
    stricter = tmp_path / "stricter.toml"
    clients = f'[segments.clients]\nmacs = ["{DEFAULT_CLIENT.mac}"]\nmode = "enforce"\ndefault = "drop"\n\n[segments.pacs]\n'
    write_policy(stricter, running.state_dir, **{"[segments.pacs]\n": clients})
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    diff = subprocess.run([*cli, "policy", "diff", str(stricter), "--state-dir", str(running.state_dir)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stderr
    assert "+ segment clients" in diff.stdout and f"~ device {DEFAULT_CLIENT.mac}: unassigned -> clients" in diff.stdout
    assert ssh_attempt(running)
    started = time.monotonic()
    applied = subprocess.run([*cli, "policy", "apply", str(stricter), "--state-dir", str(running.state_dir)], capture_output=True, text=True, check=True)
    assert "in force" in applied.stdout
    assert f"a restart of the daemon loads {running.config} again" in applied.stdout  # not persistent: said so
    assert not ssh_attempt(running)  # enforced at once: the next new flow is dropped
    assert time.monotonic() - started < 10


def test_kill_9_keeps_enforcing_and_a_restart_resumes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = tmp_path / "policy.toml"
    clients = (
        f'[segments.clients]\nmacs = ["{DEFAULT_CLIENT.mac}"]\nmode = "enforce"\ndefault = "drop"\n\n'
        '[[rules]]\nid = "clients-dicom"\nfrom = "clients"\nto = "pacs"\nproto = "tcp"\nports = [104]\naction = "allow"\n\n[segments.pacs]\n'
    )
    write_policy(config, state_dir, on_stop="keep", **{"[segments.pacs]\n": clients})
    log = tmp_path / "daemon.log"
    with InlineBridge() as ward:
        start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104, 22])
        process = start_daemon(ward, config, state_dir, log)
        try:
            generation = request(control_socket(state_dir), "status")["generation"]
            assert exchange(ward.client_ns, "tcp", SERVER, 104) and not exchange(ward.client_ns, "tcp", SERVER, 22, timeout=1.0)
            process.kill()
            process.wait()
            # no manager: the program and its maps stay, drops go on
            assert "prog/xdp" in ward.bridge_ns.run(["ip", "-d", "link", "show", "portA"]).stdout
            assert not exchange(ward.client_ns, "tcp", SERVER, 22, timeout=1.0)
            assert exchange(ward.client_ns, "tcp", SERVER, 104)
            process = start_daemon(ward, config, state_dir, log)
            status = request(control_socket(state_dir), "status")
            assert status["generation"] > generation  # resumed on the pinned maps, not restarted from 1
            assert status["packets"]["drop"] >= 2  # counters survived the restart
            assert "resumed bridge" in log.read_text()
            assert not exchange(ward.client_ns, "tcp", SERVER, 22, timeout=1.0)
        finally:
            stop_and_unload(process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")


def clients_enforcing(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The state dir, policy and log of a daemon whose clients' segment enforces a default drop."""
    state_dir, config = tmp_path / "state", tmp_path / "policy.toml"
    clients = f'[segments.clients]\nmacs = ["{DEFAULT_CLIENT.mac}"]\nmode = "enforce"\ndefault = "drop"\n\n[segments.pacs]\n'
    write_policy(config, state_dir, **{"[segments.pacs]\n": clients})
    return state_dir, config, tmp_path / "daemon.log"


def test_unreadable_placements_start_in_break_glass(tmp_path: Path) -> None:
    """The inventory (pins, asset classes) cannot be read at a start: enforcing without it can cut devices off,
    so the daemon starts in break-glass, audited, until a person has put the placements back."""
    state_dir, config, log = clients_enforcing(tmp_path)
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    with InlineBridge() as ward:
        start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [22])
        process = start_daemon(ward, config, state_dir, log)
        try:
            assert not exchange(ward.client_ns, "tcp", SERVER, 22, timeout=1.0)
            stop_and_unload(process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")
            (state_dir / "inventory.msgpack").write_bytes(b"\xc1 not msgpack")
            process = start_daemon(ward, config, state_dir, log)
            assert request(control_socket(state_dir), "status")["break_glass"] is True
            assert exchange(ward.client_ns, "tcp", SERVER, 22)  # nothing dropped by policy
            assert "BREAK-GLASS ON: placements unreadable at start" in log.read_text()
            audit = subprocess.run([*cli, "audit", "--json", "--state-dir", str(state_dir)], capture_output=True, text=True, check=True)
            last = json.loads(audit.stdout.splitlines()[-1])
            assert last["action"] == "break-glass on" and "inventory.msgpack" in last["reason"], last
        finally:
            stop_and_unload(process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")


def test_break_glass_outlives_a_reboot(tmp_path: Path) -> None:
    """bpffs lives in memory: a daemon starting on fresh maps turns break-glass on again from state_dir's record."""
    state_dir, config, log = clients_enforcing(tmp_path)
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    with InlineBridge() as ward:
        start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104, 22])
        process = start_daemon(ward, config, state_dir, log)
        try:
            assert not exchange(ward.client_ns, "tcp", SERVER, 22, timeout=1.0)
            subprocess.run([*cli, "break-glass", "on", "-c", str(config), "--reason", "code blue, ward 3"], check=True, capture_output=True)
            assert exchange(ward.client_ns, "tcp", SERVER, 22)
            stop_and_unload(process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")  # the reboot: program and maps gone
            process = start_daemon(ward, config, state_dir, log)
            assert request(control_socket(state_dir), "status")["break_glass"] is True
            assert exchange(ward.client_ns, "tcp", SERVER, 22)  # still nothing dropped by policy
            assert "break-glass was on when the maps were lost" in log.read_text()
            subprocess.run([*cli, "break-glass", "off", "-c", str(config), "--reason", "over"], check=True, capture_output=True)
            assert not exchange(ward.client_ns, "tcp", SERVER, 22, timeout=1.0)
            audit = subprocess.run([*cli, "audit", "--json", "--state-dir", str(state_dir)], capture_output=True, text=True, check=True)
            actions = [json.loads(line)["action"] for line in audit.stdout.splitlines()]
            assert actions[-3:] == ["break-glass on", "break-glass restored", "break-glass off"], actions
        finally:
            stop_and_unload(process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")


def test_an_unconfirmed_apply_reverts_and_everything_is_audited(running: Running, tmp_path: Path) -> None:
    """The admin who locked themselves out gets their network back; who did what is on record."""
    stricter = tmp_path / "stricter.toml"
    clients = f'[segments.clients]\nmacs = ["{DEFAULT_CLIENT.mac}"]\nmode = "enforce"\ndefault = "drop"\n\n[segments.pacs]\n'
    write_policy(stricter, running.state_dir, **{"[segments.pacs]\n": clients})
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    state = ["--state-dir", str(running.state_dir)]
    assert ssh_attempt(running)
    applied = subprocess.run([*cli, "policy", "apply", str(stricter), "--confirm-within", "3s", "--reason", "CHG-1234", *state], capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    assert "reverts in 3 s" in applied.stdout
    assert not ssh_attempt(running)
    assert wait_until(lambda: running.ask("status")["awaiting_confirmation_until"] is None, timeout=15)  # type: ignore[index]
    assert ssh_attempt(running)  # reverted

    subprocess.run([*cli, "policy", "apply", str(stricter), "--confirm-within", "3s", *state], check=True, capture_output=True)
    subprocess.run([*cli, "policy", "confirm", "--reason", "works", *state], check=True, capture_output=True)
    time.sleep(4)
    assert not ssh_attempt(running)  # confirmed: it stays
    nothing = subprocess.run([*cli, "policy", "confirm", *state], capture_output=True, text=True)
    assert nothing.returncode == 1 and "no policy apply waits for confirmation" in nothing.stderr

    subprocess.run([*cli, "pin", DEFAULT_CLIENT.mac, "--segment", "pacs", "--reason", "biomed ticket 77", *state], check=True, capture_output=True)
    audit = subprocess.run([*cli, "audit", "--json", *state], capture_output=True, text=True, check=True)
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [e["action"] for e in entries] == ["policy apply", "policy revert", "policy apply", "policy confirm", "pin"]
    assert {e["uid"] for e in entries} == {0} and entries[0]["reason"] == "CHG-1234"
    assert f"~ device {DEFAULT_CLIENT.mac}: unassigned -> clients" in entries[0]["details"]["changes"]


def test_asset_import_through_the_daemon_pins_and_moves_devices_live(running: Running, tmp_path: Path) -> None:
    """The CMDB says the client is a modality: it is pinned so, lands in 'modalities', and its ssh is dropped."""
    csv_file = tmp_path / "assets.csv"
    csv_file.write_text(f"mac,class,location\n{DEFAULT_CLIENT.mac},imaging_modality,CT room 2\n")
    assert ssh_attempt(running)
    result = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "import-assets", str(csv_file), "--state-dir", str(running.state_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    client = {d["mac"]: d for d in running.ask("devices")}[DEFAULT_CLIENT.mac]  # type: ignore[union-attr]
    assert (client["class"], client["segment"], client["pinned"], client["asset"]) == ("imaging_modality", "modalities", True, {"location": "CT room 2"})
    assert not ssh_attempt(running)
    assert store_image(running)


def test_exceptions_expire_by_themselves(running: Running) -> None:
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    state = ["--state-dir", str(running.state_dir)]
    subprocess.run([*cli, "pin", DEFAULT_CLIENT.mac, "--segment", "modalities", *state], check=True, capture_output=True)
    assert not ssh_attempt(running)

    flow = subprocess.run([*cli, "exception", "add", "--id", "vendor-ssh", "--from", "modalities", "--to", "pacs", "--proto", "tcp", "--ports", "22",
                           "--expires", "3s", "--reason", "vendor service call 4711", *state], capture_output=True, text=True)
    assert flow.returncode == 0, flow.stderr
    assert "vendor-ssh: allow modalities -> pacs tcp 22 until" in flow.stdout
    assert ssh_attempt(running)
    assert wait_until(lambda: running.ask("status")["exceptions_expired"] == 1, timeout=15)  # type: ignore[index]
    assert not ssh_attempt(running)

    device = subprocess.run([*cli, "exception", "add", "--mac", DEFAULT_CLIENT.mac, "--segment", "unassigned", "--expires", "3s", *state], capture_output=True, text=True)
    assert device.returncode == 0, device.stderr
    assert ssh_attempt(running)  # unassigned -> pacs: both monitor, passes (audited)
    assert wait_until(lambda: running.ask("status")["exceptions_expired"] == 2, timeout=15)  # type: ignore[index]
    assert not ssh_attempt(running)  # back in its pinned segment

    never = subprocess.run([*cli, "exception", "add", "--mac", DEFAULT_CLIENT.mac, "--segment", "unassigned", *state], capture_output=True, text=True)
    assert never.returncode == 1 and "needs --expires" in never.stderr
    audit = [json.loads(line) for line in subprocess.run([*cli, "audit", "--json", *state], capture_output=True, text=True, check=True).stdout.splitlines()]
    assert [e["action"] for e in audit if e["action"].startswith("exception")] == ["exception add", "exception expired", "exception add", "exception expired"]


HL7_WITH_PATIENT = "MSH|^~\\&|MONITOR|ICU|ADT|HOSP|202611281200||ORU^R01|1|P|2.5\rPID|1||MRN4711^^^HOSP||DOE^JOHN||19400101|M\r"
SEND_UDP = "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), (sys.argv[1], 2575))"


def test_siem_gets_drops_devices_pins_and_break_glass_and_no_patient_data(tmp_path: Path) -> None:
    """rsyslog (RFC 5424 on a unix socket) and a JSON-lines file receive the daemon's events."""
    from rsyslog import Rsyslog

    from medseg_xdp.events import SD_ID

    state_dir = tmp_path / "state"
    config = tmp_path / "policy.toml"
    events_file = tmp_path / "events.jsonl"
    cli = [sys.executable, "-m", "medseg_xdp.cli"]
    with Rsyslog(tmp_path / "rsyslog") as rsyslog, InlineBridge() as ward:
        write_policy(config, state_dir)
        with config.open("a") as out:
            out.write(f'\n[events]\nsyslog = "unix:{rsyslog.socket}"\njson_lines = "{events_file}"\ndrop_events_per_minute = 600\n')
        start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [22])
        process = start_daemon(ward, config, state_dir, tmp_path / "daemon.log")
        try:
            assert ssh_attempt(Running(ward, config, state_dir, process, tmp_path / "daemon.log"))  # unassigned -> pacs (monitor): an audit event
            subprocess.run([*cli, "pin", DEFAULT_CLIENT.mac, "--segment", "modalities", "--reason", "CT 2", "--state-dir", str(state_dir)], check=True, capture_output=True)
            ward.client_ns.run([sys.executable, "-c", SEND_UDP, SERVER, HL7_WITH_PATIENT])  # dropped: modalities enforce
            glass = subprocess.run([*cli, "break-glass", "on", "--reason", "code blue", "-c", str(config)], capture_output=True, text=True)
            assert glass.returncode == 0, glass.stderr
            subprocess.run([*cli, "break-glass", "off", "--reason", "over", "-c", str(config)], check=True, capture_output=True)

            def kinds() -> set[str]:
                return {r.msgid for r in rsyslog.received()}

            assert wait_until(lambda: {"device-new", "audit", "pin", "drop", "break-glass-on", "break-glass-off"} <= kinds(), timeout=15), kinds()
        finally:
            stop_and_unload(process, config, ward, DEFAULT_PIN_ROOT / f"dtest{os.getpid()}")
        received = rsyslog.received()

    by_kind: dict[str, list[Any]] = {}
    for record in received:
        by_kind.setdefault(record.msgid, []).append(record)
    new_devices = " ".join(r.structured_data for r in by_kind["device-new"])
    assert f'mac="{DEFAULT_CLIENT.mac}"' in new_devices and f'mac="{DEFAULT_SERVER.mac}"' in new_devices
    drop = next(r for r in by_kind["drop"] if 'dport="2575"' in r.structured_data)
    assert drop.pri == 20 * 8 + 4 and drop.structured_data.startswith(f"[{SD_ID} ")
    (stopped,) = by_kind["enforcement-stopped"]  # SIGTERM with on_stop = "detach": fail-open, said out loud
    assert stopped.pri == 20 * 8 + 2 and f'ports="{DEFAULT_CLIENT.port_name}, {DEFAULT_SERVER.port_name}"' in stopped.structured_data
    for field in (f'src_ip="{DEFAULT_CLIENT.ipv4.split("/")[0]}"', f'dst_ip="{SERVER}"', 'proto="17"', 'src_segment="modalities"', 'dst_segment="pacs"', 'rule="default:modalities"'):  # type: ignore[union-attr]
        assert field in drop.structured_data, drop
    assert 'dport="22"' in " ".join(r.structured_data for r in by_kind["audit"])
    assert 'uid="0"' in by_kind["pin"][0].structured_data and 'reason="CT 2"' in by_kind["pin"][0].structured_data
    assert by_kind["break-glass-on"][0].pri == 20 * 8 + 2 and 'reason="code blue"' in by_kind["break-glass-on"][0].structured_data

    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert {"device-new", "audit", "pin", "drop", "break-glass-on"} <= {line["kind"] for line in lines}  # break-glass: from the CLI, same config
    everything = rsyslog.output.read_text() + events_file.read_text()
    for patient_data in ("DOE", "JOHN", "MRN4711", "19400101"):
        assert patient_data not in everything


def test_a_port_that_loses_the_program_gets_it_back_and_it_is_reported(running: Running) -> None:
    """`ip link set dev portA xdp off` behind the daemon's back: within seconds the port enforces again."""
    from medseg_xdp import bpfsys
    from medseg_xdp.loader import in_netns

    # a person cannot put a life-critical device into an enforcing segment that does not say so
    with pytest.raises(ControlError, match="life-critical"):
        running.ask("pin", mac="02:77:00:00:00:42", segment="modalities", **{"class": "infusion_pump"})
    assert "02:77:00:00:00:42" not in {d["mac"] for d in running.ask("devices")}  # type: ignore[union-attr, index]
    running.ask("pin", mac=DEFAULT_CLIENT.mac, segment="modalities")
    # a class alone leaves a device where it is: in an enforcing segment, a life-critical class is refused too
    with pytest.raises(ControlError, match="life-critical"):
        running.ask("pin", mac=DEFAULT_CLIENT.mac, **{"class": "infusion_pump"})
    with pytest.raises(ControlError, match=f"cmdb.csv: {DEFAULT_CLIENT.mac}: segment 'modalities' enforces"):
        running.ask("import_assets", csv=f"mac,class\n02:77:00:00:00:43,printer\n{DEFAULT_CLIENT.mac},infusion_pump\n", source="cmdb.csv")
    assert "02:77:00:00:00:43" not in {d["mac"] for d in running.ask("devices")}  # type: ignore[union-attr, index]
    assert not ssh_attempt(running)
    port = DEFAULT_CLIENT.port_name
    with in_netns(running.ward.bridge_ns.name):
        bpfsys.xdp_detach(running.ward.port_a_ifindex, bpfsys.XDP_FLAGS_DRV_MODE)
    assert wait_until(lambda: running.ask("status")["ports_reattached"] == 1, timeout=15)  # type: ignore[index]
    assert running.ask("status")["enforcing"] == {DEFAULT_CLIENT.port_name: True, DEFAULT_SERVER.port_name: True}  # type: ignore[index]
    assert not ssh_attempt(running)
    assert f"{port}: its XDP program was removed (not by medseg-xdp); attached it again" in running.log.read_text()

    # a re-plugged NIC: the same name with a new ifindex, which the ports map is keyed by
    generation = running.ask("status")["generation"]  # type: ignore[index]
    running.ward.replug(DEFAULT_CLIENT.name)
    assert wait_until(lambda: running.ask("status")["ports_reattached"] == 2, timeout=15)  # type: ignore[index]
    assert running.ask("status")["generation"] == generation + 1  # type: ignore[index]
    assert store_image(running)  # enforced again on the new interface: DICOM passes, ssh does not
    assert not ssh_attempt(running)


def test_a_foreign_program_on_a_port_is_reported_not_replaced(running: Running) -> None:
    from bcc import BPF

    from medseg_xdp import bpfsys
    from medseg_xdp.loader import in_netns

    other = BPF(text=b"int xdp_other(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        with in_netns(running.ward.bridge_ns.name):
            bpfsys.xdp_detach(running.ward.port_b_ifindex, bpfsys.XDP_FLAGS_DRV_MODE)
            bpfsys.xdp_attach(running.ward.port_b_ifindex, other.load_func(b"xdp_other", BPF.XDP).fd, bpfsys.XDP_FLAGS_DRV_MODE)
        assert wait_until(lambda: running.ask("status")["enforcing"][DEFAULT_SERVER.port_name] is False, timeout=15)  # type: ignore[index]
        assert running.ask("status")["ports_reattached"] == 0  # type: ignore[index]
        assert f"{DEFAULT_SERVER.port_name}: NOT ENFORCING: it carries another XDP program" in running.log.read_text()
        with in_netns(running.ward.bridge_ns.name):
            bpfsys.xdp_detach(running.ward.port_b_ifindex, bpfsys.XDP_FLAGS_DRV_MODE)  # the other program's owner gives the port back
        assert wait_until(lambda: running.ask("status")["enforcing"][DEFAULT_SERVER.port_name] is True, timeout=15)  # type: ignore[index]
    finally:
        other.cleanup()


def test_the_daemon_refuses_to_start_half_working_and_attaches_nothing(tmp_path: Path) -> None:
    """One port carries another program: the daemon names it and leaves the other port alone too."""
    from bcc import BPF

    from medseg_xdp import bpfsys
    from medseg_xdp.loader import in_netns

    state_dir = tmp_path / "state"
    config = tmp_path / "policy.toml"
    write_policy(config, state_dir)
    other = BPF(text=b"int xdp_other(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        with InlineBridge() as ward:
            with in_netns(ward.bridge_ns.name):
                bpfsys.xdp_attach(ward.port_b_ifindex, other.load_func(b"xdp_other", BPF.XDP).fd, bpfsys.XDP_FLAGS_SKB_MODE)
            run = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "run", "-c", str(config), "--netns", ward.bridge_ns.name], capture_output=True, text=True, timeout=60)
            assert run.returncode == 1
            assert "refusing to start, enforcement would not work as configured" in run.stderr
            assert f"{DEFAULT_SERVER.port_name} already carries another XDP program (xdp_other" in run.stderr
            with in_netns(ward.bridge_ns.name):
                assert bpfsys.xdp_attached_id(ward.port_a_ifindex) == 0
    finally:
        other.cleanup()
    assert not (DEFAULT_PIN_ROOT / f"dtest{os.getpid()}").exists()
