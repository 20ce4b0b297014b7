"""Baseline, proposal and simulation, without root: learn, propose, replay, and catch a scan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from medseg_xdp import abi, config
from medseg_xdp.baseline import MAX_EXAMPLES, Baseline, BaselineStore, Example, FlowRecord, learn_from_capture
from medseg_xdp.classify import Catalog, Classifier, load_catalog
from medseg_xdp.fingerprint.frame import Frame, decode
from medseg_xdp.inventory import Inventory
from medseg_xdp.propose import propose
from medseg_xdp.simulate import first_packet, simulate
from medseg_xdp.statefile import StateFile
from medseg_xdp.traffic import dicom_associate_request

DATA = Path(__file__).parent / "data"
T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
DAY = 86_400.0


@dataclass(frozen=True)
class Host:
    mac: str
    ip: str
    ip6: str = ""


CT = Host("00:1b:2c:00:00:01", "10.20.0.10")
PACS = Host("00:1b:2c:00:00:02", "10.30.0.2")
PUMP = Host("00:1a:2b:00:00:07", "10.40.0.7")
PUMP_SERVER = Host("00:1a:2b:00:00:f0", "10.40.0.250")
MONITOR = Host("00:09:fb:00:00:03", "10.50.0.3")
HL7 = Host("00:50:56:00:00:10", "10.60.0.10")
WORKSTATION = Host("00:50:56:00:00:20", "10.70.0.20", "fd00:70::20")
WEB = Host("00:50:56:00:00:30", "10.70.0.30", "fd00:70::30")
DNS = Host("00:50:56:00:00:53", "10.70.0.53")
REMOTE = Host("00:00:5e:00:01:01", "192.168.9.9")  # behind the router: its MAC is not in the inventory
CLASSES = {
    CT: "imaging_modality",
    PACS: "pacs",
    PUMP: "infusion_pump",
    PUMP_SERVER: "web_server",
    MONITOR: "patient_monitor",
    HL7: "hl7_interface_engine",
    WORKSTATION: "workstation",
    WEB: "web_server",
    DNS: "dns_server",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def inventory_of(catalog: Catalog, classes: dict[Host, str] = CLASSES) -> Inventory:
    inventory = Inventory(Classifier(catalog), clock=lambda: T0)
    for host, device_class in classes.items():
        inventory.pin(host.mac, device_class=device_class)
    return inventory


def frame(packet: Packet) -> Frame:
    return decode(bytes(packet))


def tcp(src: Host, dst: Host, dport: int, sport: int, flags: str = "S", v6: bool = False) -> Frame:
    l3 = IPv6(src=src.ip6, dst=dst.ip6) if v6 else IP(src=src.ip, dst=dst.ip)
    return frame(Ether(src=src.mac, dst=dst.mac) / l3 / TCP(sport=sport, dport=dport, flags=flags))


def connection(src: Host, dst: Host, dport: int, sport: int, v6: bool = False) -> list[Frame]:
    """What the sampler gives of a TCP connection: SYN, SYN-ACK, ACK, data."""
    return [
        tcp(src, dst, dport, sport, "S", v6),
        tcp(dst, src, sport, dport, "SA", v6),
        tcp(src, dst, dport, sport, "A", v6),
        tcp(src, dst, dport, sport, "PA", v6),
    ]


def udp(src: Host, dst: Host, dport: int, sport: int, dst_mac: str | None = None, dst_ip: str | None = None) -> Frame:
    return frame(Ether(src=src.mac, dst=dst_mac or dst.mac) / IP(src=src.ip, dst=dst_ip or dst.ip) / UDP(sport=sport, dport=dport))


def ping(src: Host, dst: Host, ident: int, reply: bool = False) -> Frame:
    if reply:
        return frame(Ether(src=dst.mac, dst=src.mac) / IP(src=dst.ip, dst=src.ip) / ICMP(type=0, id=ident))
    return frame(Ether(src=src.mac, dst=dst.mac) / IP(src=src.ip, dst=dst.ip) / ICMP(type=8, id=ident))


def clinical_frames() -> list[Frame]:
    """A ward's day, as sampled frames: several flows per learned pair."""
    frames: list[Frame] = []
    for n in range(3):
        frames += connection(CT, PACS, 104, 40000 + n)
        frames += connection(PUMP, PUMP_SERVER, 443, 41000 + n)
        frames += connection(MONITOR, HL7, 2575, 42000 + n)
        frames += connection(WORKSTATION, WEB, 443, 43000 + n, v6=True)
        frames += connection(REMOTE, PACS, 104, 44000 + n)
        frames += [udp(WORKSTATION, DNS, 53, 50000 + n), udp(DNS, WORKSTATION, 50000 + n, 53)]
        frames += [ping(WORKSTATION, PACS, 7 + n), ping(WORKSTATION, PACS, 7 + n, reply=True)]
    frames.append(udp(PUMP, PUMP, 67, 68, dst_mac="ff:ff:ff:ff:ff:ff", dst_ip="255.255.255.255"))  # DHCP: a rail
    return frames


def learn(frames: list[Frame], inventory: Inventory, baseline: Baseline | None = None, start: float = T0) -> Baseline:
    baseline = baseline if baseline is not None else Baseline()
    for index, item in enumerate(frames):
        baseline.observe(item, inventory, start + index)
    return baseline


def scan(src: Host, dst: Host, ports: range) -> list[Frame]:
    frames = []
    for port in ports:
        frames += [tcp(src, dst, port, 55555), tcp(dst, src, 55555, port, "RA")]
    return frames


# ---- the baseline ----


def test_flow_starts_are_counted_once(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = learn(clinical_frames(), inventory)
    by_key = {record.key: record for record in baseline}
    assert by_key["class:imaging_modality", "class:pacs", 6, 104].flows == 3  # SYN-ACKs, ACKs and data ignored
    assert by_key["class:workstation", "class:dns_server", 17, 53].flows == 3  # replies are not flows
    assert by_key["class:workstation", "class:pacs", 1, 8].flows == 3  # ICMP: the port is the type
    assert by_key["class:unknown", "class:pacs", 6, 104].flows == 3
    assert by_key["class:infusion_pump", "broadcast", 17, 67].is_rail
    assert by_key["class:workstation", "class:web_server", 6, 443].examples[0].src_ip == WORKSTATION.ip6
    assert not any(record.dst_group == "class:workstation" for record in baseline)
    assert len(baseline) == 8 and baseline.flows == 22


def test_a_tftp_servers_answer_from_a_new_port_belongs_to_its_request(catalog: Catalog) -> None:
    """RFC 1350: the server sends the file from a port of its own to the request's port, and the client
    acknowledges to that port. The dataplane passes both with the request (related_tftp), so the baseline learns
    the request only: learned as flows of their own, they became rules on a random port, one per transfer."""
    inventory = inventory_of(catalog)
    baseline = Baseline()
    for n in range(3):
        assert baseline.observe(udp(PUMP, PUMP_SERVER, 69, 41000 + n), inventory, T0 + n)
        assert not baseline.observe(udp(PUMP_SERVER, PUMP, 41000 + n, 50000 + n), inventory, T0 + n + 0.1)
        assert not baseline.observe(udp(PUMP, PUMP_SERVER, 50000 + n, 41000 + n), inventory, T0 + n + 0.2)  # ACK
    assert [record.key for record in baseline] == [("class:infusion_pump", "class:web_server", 17, 69)]
    # long after its request, or to a port that asked another host, an answer is a flow of its own
    assert baseline.observe(udp(PUMP_SERVER, PUMP, 41000, 50100), inventory, T0 + 3600)
    assert baseline.observe(udp(WEB, PUMP, 41001, 50101), inventory, T0 + 3)


def test_retransmits_and_idle_flows(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = Baseline()
    assert baseline.observe(tcp(CT, PACS, 104, 40000), inventory, T0)
    assert not baseline.observe(tcp(CT, PACS, 104, 40000), inventory, T0 + 1)  # a retransmitted SYN
    assert baseline.observe(udp(WORKSTATION, DNS, 53, 50000), inventory, T0)
    assert not baseline.observe(udp(WORKSTATION, DNS, 53, 50000), inventory, T0 + 60)
    assert baseline.observe(udp(WORKSTATION, DNS, 53, 50000), inventory, T0 + 600)  # idle long enough: a new flow
    record = next(r for r in baseline if r.proto == 17)
    assert record.flows == 2 and record.examples[0].flows == 2 and len(record.examples) == 1


def test_examples_are_bounded_per_record(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = Baseline()
    for n in range(MAX_EXAMPLES + 4):
        baseline.observe(tcp(Host(f"02:00:00:00:01:{n:02x}", f"10.1.0.{n + 1}"), PACS, 104, 40000), inventory, T0 + n)
    (record,) = list(baseline)
    assert record.flows == MAX_EXAMPLES + 4 and len(record.examples) == MAX_EXAMPLES and record.other_flows == 4


def test_the_learning_window_expires_old_records(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = Baseline(learning_days=14)
    baseline.observe(tcp(CT, PACS, 104, 40000), inventory, T0)
    baseline.observe(tcp(MONITOR, HL7, 2575, 40000), inventory, T0 + 10 * DAY)
    baseline.observe(tcp(WORKSTATION, PACS, 104, 40000), inventory, T0)
    baseline.observe(tcp(WORKSTATION, PACS, 104, 40001), inventory, T0 + 12 * DAY)
    assert baseline.expire(T0 + 13 * DAY) == 0
    assert baseline.expire(T0 + 15 * DAY) == 1
    assert {r.src_group for r in baseline} == {"class:patient_monitor", "class:workstation"}
    workstation = next(r for r in baseline if r.src_group == "class:workstation")
    assert workstation.flows == 2 and workstation.examples[0].last_seen == T0 + 12 * DAY


def test_the_size_is_bounded_and_scans_make_room(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = Baseline(max_records=10)
    for port in range(1, 6):  # five real services, two flows each
        for sport in (40000, 40001):
            baseline.observe(tcp(CT, PACS, port, sport), inventory, T0)
    learn(scan(PUMP, PACS, range(100, 120)), inventory, baseline)  # twenty single-flow records
    assert len(baseline) == 10 and baseline.evicted == 15 and baseline.overflow == 0
    assert all(r.flows == 2 for r in baseline if r.src_group == "class:imaging_modality")
    for record in baseline:  # now nothing can be evicted: new records overflow
        if record.flows == 1:
            baseline.observe(tcp(PUMP, PACS, record.port, 55556), inventory, T0 + 1)
    assert not baseline.observe(tcp(WORKSTATION, PACS, 104, 40000), inventory, T0 + 2)
    assert len(baseline) == 10 and baseline.overflow == 1


def open_connection(client: Host, server: Host, port: int, sport: int) -> list[Frame]:
    """What the sampler gives of a connection open before learning began: its segments, the server's first."""
    return [tcp(server, client, sport, port, "PA"), tcp(client, server, port, sport, "A"), tcp(client, server, port, sport, "PA")]


def test_a_connection_open_before_learning_is_learned_from_its_segments(catalog: Catalog) -> None:
    """A monitor's HL7 link up for weeks never shows its SYN: picked up mid-stream, the server's segment first."""
    inventory = inventory_of(catalog)
    baseline = learn(open_connection(MONITOR, HL7, 2575, 42100), inventory)
    (record,) = baseline
    assert record.key == ("class:patient_monitor", "class:hl7_interface_engine", 6, 2575)
    assert (record.flows, record.midstream, record.answered) == (1, 1, 1)
    (example,) = record.examples
    assert (example.src_ip, example.dst_ip, example.sport, example.midstream) == (MONITOR.ip, HL7.ip, 42100, 1)
    # its 1-in-N samples later are no new flow, however long after; the program's next pickup of it is
    one_in_n = abi.SampleKind.one_in_n
    assert not baseline.observe(tcp(MONITOR, HL7, 2575, 42100, "A"), inventory, T0 + 3600, one_in_n)
    assert not baseline.observe(tcp(MONITOR, HL7, 2575, 42100, "A"), inventory, T0 + 3 * 3600, one_in_n)
    assert baseline.observe(tcp(HL7, MONITOR, 42100, 2575, "A"), inventory, T0 + 5 * 3600)  # a first-packets sample
    assert (record.flows, record.midstream) == (2, 2) and len(baseline) == 1


def test_the_listening_end_of_a_connection_seen_midstream(catalog: Catalog) -> None:
    """A well-known port, else a port below the ephemeral range; else the direction already learned between the groups."""
    from medseg_xdp.reference import listens_at_dst

    assert listens_at_dst(42100, 2575) and not listens_at_dst(2575, 42100)
    assert listens_at_dst(5000, 443) and not listens_at_dst(104, 11112)
    assert listens_at_dst(50000, 40000)  # both ephemeral: the lower port
    inventory = inventory_of(catalog)
    # a server listening on 50000, seen opened once: its connection picked up later goes the same way
    baseline = learn(connection(WORKSTATION, WEB, 50000, 60000)[:2], inventory)
    learn(open_connection(WORKSTATION, WEB, 50000, 40000), inventory, baseline, T0 + 100)
    assert [(r.key, r.flows, r.midstream) for r in baseline] == [(("class:workstation", "class:web_server", 6, 50000), 2, 1)]


def test_an_ack_scan_proposes_nothing(catalog: Catalog) -> None:
    """ACK probes (nmap -sA) look like open connections, but the target answers each with a RST."""
    inventory = inventory_of(catalog)
    probes = [f for port in range(1000, 1020) for f in (tcp(PUMP, PACS, port, 55555, "A"), tcp(PACS, PUMP, 55555, port, "R"))]
    baseline = learn(clinical_frames() + probes, inventory)
    assert sum(r.midstream for r in baseline) == 20 and all(r.answered == 0 for r in baseline if r.midstream)
    text = propose(baseline, inventory, catalog)
    assert "# Not proposed: TCP the other end never answered" in text
    assert not [rule for rule in config.parse(text).rules if rule.src == "infusion-pump" and rule.dst == "pacs"]


def test_simulate_replays_open_connections_from_the_end_that_opened_them(catalog: Catalog) -> None:
    """A SYN from the inferred opener, as a reconnection meets the policy: the proposal passes it, and a policy
    without its rule cuts it (and says it was seen as an open connection)."""
    inventory = inventory_of(catalog)
    baseline = learn(open_connection(MONITOR, HL7, 2575, 42100), inventory)
    text = propose(baseline, inventory, catalog)
    assert "#   1 of them seen mid-stream (open before learning began)" in text
    assert config.parse(text).rules[0].name == "patient-monitor-to-hl7-interface-engine-tcp-2575"
    report = simulate(config.parse(text), baseline, inventory, catalog)
    assert report.clean and report.replayed.passed == 1
    without = simulate(config.parse(text.split("[[rules]]")[0]), baseline, inventory, catalog)
    (cut,) = without.cut
    assert cut.midstream and cut.verdict == "audit" and (cut.src_ip, cut.port) == (MONITOR.ip, 2575)
    assert without.cuts_life_critical  # a monitor's link


GATEWAY_MAC = "00:00:0c:07:ac:28"  # an HSRP virtual MAC: the pumps' default gateway


def routed_frames() -> list[Frame]:
    """Pumps talking to servers in three other subnets, through their gateway: every reply comes from its MAC."""
    frames = []
    for n, server in enumerate(("10.100.1.5", "10.101.0.53", "10.102.0.9")):
        routed = Host(GATEWAY_MAC, server)
        frames += [tcp(PUMP, routed, 443, 45000 + n), tcp(routed, PUMP, 45000 + n, 443, "SA")]
    return frames


def test_a_gateways_mac_places_no_one_and_the_proposal_says_so(catalog: Catalog) -> None:
    """The classifier took the gateway for a lab analyzer (it carries an analyzer server's replies). Its MAC fronts
    three subnets: it gets no class-based placement, its flows are learned as to 'unknown' (the routed hosts,
    placed by address), and the proposal names it, and gives each routed /24 a prefix segment, instead of giving
    it a segment."""
    inventory = inventory_of(catalog)
    inventory.device(GATEWAY_MAC, T0).device_class = "lab_analyzer"
    frames = routed_frames()
    for index, item in enumerate(frames):
        inventory.observe(item, [], T0 + index)
    gateway = inventory.devices[GATEWAY_MAC]
    assert gateway.fronts_others and len(gateway.ips) == 3
    assert not inventory.devices[PUMP.mac].fronts_others
    assert GATEWAY_MAC not in inventory.placement_classes()
    baseline = learn(frames, inventory)
    assert [r.key for r in baseline] == [("class:infusion_pump", "class:unknown", 6, 443)]
    text = propose(baseline, inventory, catalog)
    assert f"#   {GATEWAY_MAC}: 3 addresses, e.g. 10.100.1.5, 10.101.0.53, 10.102.0.9" in text
    policy = config.parse(text)
    routed = ["routed-10-100-1-0-24", "routed-10-101-0-0-24", "routed-10-102-0-0-24"]
    assert "lab-analyzer" not in policy.segments and [str(p) for name in routed for p in policy.segments[name].prefixes] == [
        "10.100.1.0/24", "10.101.0.0/24", "10.102.0.0/24"]
    assert sorted(r.name for r in policy.rules) == [f"infusion-pump-to-{name}-tcp-443" for name in routed]
    report = simulate(policy, baseline, inventory, catalog)
    assert report.clean and report.replayed.passed == 3


def test_a_device_keeps_its_most_recent_addresses() -> None:
    """A gateway's MAC would otherwise hold every routed host's address, in memory and in the state file."""
    from medseg_xdp.inventory import MAX_IPS, fronts_others

    inventory = Inventory(Classifier(load_catalog()), clock=lambda: T0)
    for n in range(MAX_IPS + 36):
        inventory.observe(udp(Host(GATEWAY_MAC, f"10.{n}.0.1"), DNS, 53, 5000), [], T0 + n)
    ips = inventory.devices[GATEWAY_MAC].ips
    assert len(ips) == MAX_IPS and "10.0.0.1" not in ips and f"10.{MAX_IPS + 35}.0.1" in ips
    assert not fronts_others(["10.20.0.7", "10.21.0.7", "fe80::1", "fd00:20::7", "fd00:20::8"])  # a host: two subnets
    assert fronts_others(["10.20.0.1", "10.30.0.5", "10.31.0.9"])


def test_persistence_survives_a_restart(tmp_path: Path, catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = learn(clinical_frames() + open_connection(MONITOR, HL7, 2575, 42100), inventory)
    assert any(record.midstream for record in baseline)
    baseline.overflow, baseline.evicted = 3, 4
    store = BaselineStore(tmp_path)
    store.save(baseline)
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    restored = Baseline()
    assert store.load(restored) is None
    assert restored.records == baseline.records
    assert (restored.overflow, restored.evicted) == (3, 4)
    assert propose(restored, inventory, catalog) == propose(baseline, inventory, catalog)


def test_an_unreadable_baseline_is_kept_aside(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.path.write_bytes(b"\xc1 not msgpack")
    problem = store.load(Baseline())
    assert problem is not None and "kept aside" in problem
    assert not store.path.exists() and list(tmp_path.glob("baseline.msgpack.unreadable-*"))


def test_a_baseline_of_the_wrong_shape_is_kept_aside(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    StateFile(store.path, 1).write({"records": [["class:x", "class:y", 6]], "overflow": 0, "evicted": 0})
    baseline = Baseline()
    problem = store.load(baseline)
    assert problem is not None and "not a baseline" in problem and len(baseline) == 0


def test_segments_are_kept_when_a_config_is_given(catalog: Catalog) -> None:
    policy = config.parse(
        """
        [segments.imaging]
        classes = ["imaging_modality"]
        [segments.archive]
        prefixes = ["10.30.0.0/16"]
        """
    )
    baseline = Baseline(config=policy)
    baseline.observe(tcp(CT, PACS, 104, 40000), inventory_of(catalog, {CT: "imaging_modality"}), T0)
    (example,) = next(iter(baseline)).examples
    assert (example.src_segment, example.dst_segment) == ("imaging", "archive")


# ---- propose, then simulate ----


def test_propose_then_simulate_the_learned_flows_is_clean(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = learn(clinical_frames(), inventory)
    text = propose(baseline, inventory, catalog)
    policy = config.parse(text, "proposal")
    assert {segment.mode.name for segment in policy.segments.values()} == {"monitor"}
    assert {segment.default.name for segment in policy.segments.values()} == {"drop"}
    assert policy.segments["infusion-pump"].life_critical and not policy.segments["infusion-pump"].allow_enforce_life_critical
    assert policy.segments["imaging-modality"].classes == ("imaging_modality",)
    assert {rule.name for rule in policy.rules} == {
        "imaging-modality-to-pacs-tcp-104",
        "unassigned-to-pacs-tcp-104",
        "infusion-pump-to-web-server-tcp-443",
        "patient-monitor-to-hl7-interface-engine-tcp-2575",
        "workstation-to-web-server-tcp-443",
        "workstation-to-dns-server-udp-53",
        "workstation-to-pacs-icmp-8",
    }  # DHCP passes on the rails: no rule
    assert "# 3 flows, first seen 2024-05-01T08:00:00Z" in text
    assert f"#   {CT.mac} {CT.ip} -> {PACS.mac} {PACS.ip}: 3 flows" in text
    assert "allow_enforce_life_critical = true" in text and "Passing on the rails" in text

    report = simulate(policy, baseline, inventory, catalog)
    assert report.clean and not report.cuts_life_critical and not report.cut
    assert report.replayed.flows == report.flows == 22
    assert report.by_rule["imaging-modality-to-pacs-tcp-104"].passed == 3
    assert report.by_rule["reason:rail_dhcp"].passed == 1
    assert report.unused_rules == []
    assert "CLEAN" in report.to_text() and json.loads(report.to_json())["clean"] is True
    assert "Baseline: flows learned from 2024-05-01" in report.to_text() and not report.no_evidence


def test_the_proposal_is_deterministic(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    frames = clinical_frames()
    forward = propose(learn(frames, inventory), inventory, catalog)
    assert forward == propose(learn(frames, inventory), inventory, catalog)
    assert forward.index("[segments.dns-server]") < forward.index("[segments.imaging-modality]")


def test_a_scan_by_a_pump_is_reported_and_cuts_a_life_critical_device(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    clinical = clinical_frames()
    policy = config.parse(propose(learn(clinical, inventory), inventory, catalog))
    attacked = learn(clinical + scan(PUMP, PACS, range(1, 101)), inventory)
    report = simulate(policy, attacked, inventory, catalog)
    assert not report.clean and report.cuts_life_critical
    assert (report.replayed.would_drop, report.replayed.dropped) == (100, 0)
    assert {flow.port for flow in report.cut} == set(range(1, 101))
    assert {flow.verdict for flow in report.cut} == {"audit"}
    assert report.by_rule["default:infusion-pump"].would_drop == 100
    assert report.by_segment_pair["infusion-pump", "pacs"].would_drop == 100
    (pump,) = report.life_critical
    assert (pump.mac, pump.device_class, pump.criticality, pump.tally.would_drop) == (PUMP.mac, "infusion_pump", "life_critical", 100)
    assert report.devices[PACS.mac].tally.would_drop == 100 and not report.devices[PACS.mac].life_critical
    assert report.by_rule["imaging-modality-to-pacs-tcp-104"].passed == 3  # the clinical flows still pass
    text = report.to_text()
    assert text.startswith("!!!") and "LIFE-CRITICAL" in text and PUMP.mac in text.splitlines()[3]
    body = json.loads(report.to_json())
    assert body["cuts_life_critical"] is True and body["life_critical"][0]["mac"] == PUMP.mac
    assert len(body["cut"]) == 100


def test_enforcing_turns_would_drop_into_dropped_now(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    clinical = clinical_frames()
    text = propose(learn(clinical, inventory), inventory, catalog)
    enforced = text.replace('[segments.pacs]\nclasses = ["pacs"]\nmode = "monitor"', '[segments.pacs]\nclasses = ["pacs"]\nmode = "enforce"')
    assert enforced != text
    report = simulate(config.parse(enforced), learn(clinical + scan(WORKSTATION, PACS, range(1000, 1010)), inventory), inventory, catalog)
    assert (report.replayed.dropped, report.replayed.would_drop) == (10, 0)
    assert not report.cuts_life_critical and report.devices[WORKSTATION.mac].tally.dropped == 10


def test_rare_flows_are_left_out_with_min_flows_and_then_reported(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = learn([*clinical_frames(), tcp(MONITOR, PACS, 104, 45000)], inventory)
    text = propose(baseline, inventory, catalog, min_flows=2)
    policy = config.parse(text)
    assert "patient-monitor-to-pacs-tcp-104" not in {rule.name for rule in policy.rules}
    assert "#   patient-monitor -> pacs tcp/104: 1 flow, last seen" in text
    report = simulate(policy, baseline, inventory, catalog)
    assert report.cuts_life_critical and [d.mac for d in report.life_critical] == [MONITOR.mac]
    assert report.by_rule["default:patient-monitor"].would_drop == 1


def test_flows_seen_before_a_device_was_classified_are_regrouped(catalog: Catalog) -> None:
    inventory = Inventory(Classifier(catalog), clock=lambda: T0)
    baseline = Baseline()
    baseline.observe(tcp(CT, PACS, 104, 40000), inventory, T0)  # nobody is classified yet
    baseline.observe(tcp(PACS, CT, 40000, 104, "SA"), inventory, T0)
    assert next(iter(baseline)).key == ("class:unknown", "class:unknown", 6, 104)
    inventory.pin(CT.mac, device_class="imaging_modality")
    inventory.pin(PACS.mac, device_class="pacs")
    policy = config.parse(propose(baseline, inventory, catalog))
    assert [rule.name for rule in policy.rules] == ["imaging-modality-to-pacs-tcp-104"]
    assert simulate(policy, baseline, inventory, catalog).clean


def test_the_number_of_proposed_rules_is_bounded(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    busy = [frame for port in range(1, 51) for frame in connection(PUMP, PACS, port, 55555)]
    baseline = learn(clinical_frames() + busy, inventory)
    text = propose(baseline, inventory, catalog, max_rules=7)
    policy = config.parse(text)
    assert len(policy.rules) == 7 and "infusion-pump-to-pacs" not in " ".join(rule.name for rule in policy.rules)
    assert "# Not proposed: beyond 7 rules" in text and "#   and 30 more" in text


def test_a_scan_while_learning_proposes_no_rules(catalog: Catalog) -> None:
    """Probes nobody answered with a SYN-ACK (closed ports, RST) are listed, not allowed."""
    inventory = inventory_of(catalog)
    baseline = learn(clinical_frames() + scan(PUMP, PACS, range(1, 101)), inventory)
    text = propose(baseline, inventory, catalog)
    names = {rule.name for rule in config.parse(text).rules}
    assert not any(name.startswith("infusion-pump-to-pacs") for name in names)
    assert "imaging-modality-to-pacs-tcp-104" in names and "infusion-pump-to-web-server-tcp-443" in names
    assert "# Not proposed: TCP the other end never answered" in text and "#   and 80 more" in text
    # what simulate replays still holds the scan: enforcing would drop it, and a life-critical pump is named
    assert simulate(config.parse(text), baseline, inventory, catalog).replayed.would_drop == 100


def test_answers_follow_their_pairs_through_regrouping_and_across_vlans(catalog: Catalog) -> None:
    """A scan of unclassified devices regroups into one record per class: only the pair that answered is
    proposed. A SYN-ACK tagged through a trunk answers a SYN that came untagged through an access port."""
    inventory = Inventory(Classifier(catalog), clock=lambda: T0)
    baseline = Baseline()
    for sport, target in enumerate((PACS, HL7, WEB), start=41000):  # nobody is classified yet
        baseline.observe(tcp(CT, target, 22, sport), inventory, T0)
    tagged = frame(Ether(src=PACS.mac, dst=CT.mac) / Dot1Q(vlan=20) / IP(src=PACS.ip, dst=CT.ip) / TCP(sport=22, dport=41000, flags="SA"))
    baseline.observe(tagged, inventory, T0)
    for host, device_class in ((CT, "imaging_modality"), (PACS, "pacs"), (HL7, "hl7_interface_engine"), (WEB, "web_server")):
        inventory.pin(host.mac, device_class=device_class)
    text = propose(baseline, inventory, catalog)
    assert [rule.name for rule in config.parse(text).rules] == ["imaging-modality-to-pacs-tcp-22"]
    assert "imaging-modality -> hl7-interface-engine tcp/22" in text and "imaging-modality -> web-server tcp/22" in text


def test_simulate_takes_a_listed_servers_dhcp_replies_as_plumbing_with_trusted_ports(catalog: Catalog) -> None:
    """simulate has no ports: trusted_ports must not turn the listed server's replies into drops."""
    policy = config.load(Path(__file__).parent / "fixture_policy.toml")
    assert policy.trusted_ports
    baseline = Baseline()
    reply = Example("02:00:00:00:00:10", "10.0.0.1", "02:00:00:00:00:01", "10.0.1.5", 67, 0, 5, T0, T0)
    baseline.load_records([FlowRecord("class:unknown", "class:unknown", 17, 68, 5, T0, T0, [reply])])
    report = simulate(policy, baseline, inventory_of(catalog), catalog)
    assert report.clean and report.by_rule["reason:rail_dhcp"].passed == 5


def test_hostnames_cannot_inject_toml(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    inventory.devices[CT.mac].hostname = 'ct\n[[rules]]\nid = "evil"\nfrom = "unassigned"\nto = "pacs"\naction = "allow"'
    text = propose(learn(clinical_frames(), inventory), inventory, catalog)
    assert "evil" not in {rule.name for rule in config.parse(text).rules}


def test_an_empty_baseline_proposes_a_valid_policy(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    text = propose(Baseline(), inventory, catalog)
    policy = config.parse(text)
    assert policy.rules == () and "unassigned" in policy.segments
    report = simulate(policy, Baseline(), inventory, catalog)
    assert report.no_evidence and "NO EVIDENCE" in report.to_text() and "CLEAN" not in report.to_text()
    assert json.loads(report.to_json())["no_evidence"] is True


def test_simulate_says_when_there_is_nothing_to_replay(tmp_path: Path) -> None:
    """A wrong --state-dir or a fresh install must not read as an all-clear: exit 5, not 0."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[segments.pumps]\nmacs = ["02:00:00:00:00:01"]\nlife_critical = true\ndefault = "drop"\n')
    result = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "policy", "simulate", str(policy), "--state-dir", str(tmp_path / "empty")],
                            capture_output=True, text=True)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "NO EVIDENCE" in result.stdout and "Baseline: no learned flows." in result.stdout


def test_icmpv6_echo_is_learned_by_its_type(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    request = frame(Ether(src=WORKSTATION.mac, dst=WEB.mac) / IPv6(src=WORKSTATION.ip6, dst=WEB.ip6) / ICMPv6EchoRequest(id=9))
    reply = frame(Ether(src=WEB.mac, dst=WORKSTATION.mac) / IPv6(src=WEB.ip6, dst=WORKSTATION.ip6) / ICMPv6EchoReply(id=9))
    baseline = learn([request, reply, request], inventory)
    assert [(r.key, r.flows) for r in baseline] == [(("class:workstation", "class:web_server", 58, 128), 1)]
    policy = config.parse(propose(baseline, inventory, catalog))
    assert [(rule.name, rule.proto, rule.ports) for rule in policy.rules] == [("workstation-to-web-server-icmpv6-128", 58, ((128, 128),))]
    assert simulate(policy, baseline, inventory, catalog).clean
    assert not simulate(config.parse(""), baseline, inventory, catalog).cut  # no segments: unassigned allows


def test_first_packets_decode_as_the_flow_they_stand_for(catalog: Catalog) -> None:
    inventory = inventory_of(catalog)
    baseline = learn(clinical_frames(), inventory)
    for record in baseline:
        for example in record.examples:
            decoded = decode(first_packet(record.proto, record.port, example))
            assert (decoded.src_mac, decoded.dst_mac, decoded.src_ip, decoded.dst_ip) == (example.src_mac, example.dst_mac, example.src_ip, example.dst_ip)
            assert decoded.proto == record.proto
            assert (decoded.icmp_type if record.proto == 1 else decoded.dport) == record.port
            assert decoded.is_syn == (record.proto == 6)
    tagged = frame(Ether(src=CT.mac, dst=PACS.mac) / Dot1Q(vlan=30) / IP(src=CT.ip, dst=PACS.ip) / TCP(dport=104, flags="S"))
    single = Baseline()
    single.observe(tagged, inventory, T0)
    (record,) = list(single)
    assert decode(first_packet(record.proto, record.port, record.examples[0])).vlan == 30


def test_learning_from_a_capture_classifies_and_learns(tmp_path: Path, catalog: Catalog) -> None:
    """The X-ray classifies the CT and the PACS from the association that follows the SYN: the rule names their classes."""
    request = dicom_associate_request("CT01", "PACS", "1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    packets: list[Packet] = []
    for n in range(2):
        sport = 40000 + n
        ether, back = Ether(src=CT.mac, dst=PACS.mac) / IP(src=CT.ip, dst=PACS.ip), Ether(src=PACS.mac, dst=CT.mac) / IP(src=PACS.ip, dst=CT.ip)
        packets += [
            ether / TCP(sport=sport, dport=104, flags="S", seq=100),
            back / TCP(sport=104, dport=sport, flags="SA", seq=500, ack=101),
            ether / TCP(sport=sport, dport=104, flags="A", seq=101, ack=501),
            ether / TCP(sport=sport, dport=104, flags="PA", seq=101, ack=501) / Raw(request),
        ]
    for index, packet in enumerate(packets):
        packet.time = T0 + index
    pcap = tmp_path / "store.pcap"
    wrpcap(str(pcap), packets)
    xray, baseline = learn_from_capture(pcap, config.parse(""))
    assert xray.samples == len(packets)
    assert xray.inventory.devices[CT.mac].device_class == "imaging_modality"
    assert xray.inventory.devices[PACS.mac].device_class == "pacs"
    assert baseline.flows == 2
    policy = config.parse(propose(baseline, xray.inventory, catalog))
    assert [rule.name for rule in policy.rules] == ["imaging-modality-to-pacs-tcp-104"]
    assert simulate(policy, baseline, xray.inventory, catalog).clean


# ---- captures from the virtual ward (recorded by scripts/record_ward_pcaps.py) ----

CLINICAL_PCAP = DATA / "ward-clinical.pcap"
ATTACK_PCAP = DATA / "ward-attack.pcap"


@pytest.mark.skipif(not CLINICAL_PCAP.exists(), reason="tests/data/ward-clinical.pcap not recorded yet")
def test_a_policy_learned_from_the_ward_capture_is_clean_on_it(catalog: Catalog) -> None:
    settings = config.parse("")
    xray, baseline = learn_from_capture(CLINICAL_PCAP, settings)
    assert baseline.flows > 0
    policy = config.parse(propose(baseline, xray.inventory, catalog), "ward proposal")
    assert policy.rules
    report = simulate(policy, baseline, xray.inventory, catalog)
    assert report.clean, report.to_text()
    if ATTACK_PCAP.exists():
        _, attack = learn_from_capture(ATTACK_PCAP, settings)
        attacked = simulate(policy, attack, xray.inventory, catalog)
        assert attacked.replayed.lost > 0 and attacked.cuts_life_critical, attacked.to_text()  # the ward's attacker is its pump
