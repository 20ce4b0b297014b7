"""Replay the baseline's flows through the reference model under a candidate policy.

For each record of the baseline, each example endpoint pair's first packet
(a TCP SYN, a UDP datagram or an ICMP echo request to the record's port, on
the example's VLAN) is built and judged by reference.ReferenceDataplane,
loaded with the candidate configuration compiled against the inventory's
classes, with an empty flow table for every packet. A verdict `drop` is
"dropped now" (an enforcing segment); `audit` is "would drop when enforced"
(a monitored segment whose policy denies the flow). Both are reported, per
rule, per segment pair and per device, with the flow counts of the endpoint
pairs replayed. A TCP connection first seen mid-stream replays as a SYN from
the end the baseline inferred opened it: what its reconnection meets, and
what a policy flip judges the open connection by (the program takes the same
end for the initiator when both ends judge alike); it is marked midstream. A device that would lose a flow and is life-critical (its
class's criticality, or a segment marked life_critical) is listed first.

Only the examples are replayed (at most baseline.MAX_EXAMPLES endpoint pairs
per record): the flows of other endpoint pairs are counted as not replayed.
The bridge is modelled without ports (ingress ifindex 0, as `classify
--pcap` does), so no frame is judged spoofed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medseg_xdp import abi
from medseg_xdp.baseline import Baseline, Example, FlowRecord
from medseg_xdp.classify import LIFE_CRITICAL, UNKNOWN, Catalog
from medseg_xdp.config import Config, protocol_name
from medseg_xdp.fingerprint.frame import ICMP, ICMPV6, TCP, UDP
from medseg_xdp.inventory import Inventory
from medseg_xdp.policy_image import compile_policy
from medseg_xdp.reference import C, ReferenceDataplane

VERDICT_NAMES = {C.VERDICT_PASS: "pass", C.VERDICT_DROP: "drop", C.VERDICT_AUDIT: "audit"}
MAX_LOST_PER_DEVICE = 16  # distinct (proto, peer) listed per device, each with its ports
TEXT_ROWS = 40  # rows per table in to_text()
TCP_SYN = 0x02


def first_packet(proto: int, port: int, example: Example) -> bytes:
    """The Ethernet frame that starts the example's flow: a TCP SYN, a UDP datagram or an ICMP echo request."""
    src, dst = ipaddress.ip_address(example.src_ip), ipaddress.ip_address(example.dst_ip)
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", example.sport, port, 0, 0, 5 << 4, TCP_SYN, 65535, 0, 0)
    elif proto == UDP:
        l4 = struct.pack("!HHHH", example.sport, port, 8, 0)
    elif proto in (ICMP, ICMPV6):
        l4 = struct.pack("!BBHHH", port, 0, 0, example.sport, 1)  # type, code, checksum, identifier, sequence
    else:
        l4 = b""
    # Checksums are left zero: neither the program nor its model verifies them.
    if src.version == 4:
        l3 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src.packed, dst.packed)
        ethertype = 0x0800
    else:
        l3 = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src.packed, dst.packed)
        ethertype = 0x86DD
    eth = bytes.fromhex(example.dst_mac.replace(":", "")) + bytes.fromhex(example.src_mac.replace(":", ""))
    if example.vlan:
        eth += struct.pack("!HH", 0x8100, example.vlan & 0x0FFF)
    return eth + struct.pack("!H", ethertype) + l3 + l4


@dataclass
class Tally:
    flows: int = 0
    passed: int = 0
    dropped: int = 0  # dropped now: an endpoint's segment enforces
    would_drop: int = 0  # audit: dropped once enforced

    def add(self, verdict: str, flows: int) -> None:
        self.flows += flows
        if verdict == "drop":
            self.dropped += flows
        elif verdict == "audit":
            self.would_drop += flows
        else:
            self.passed += flows

    @property
    def lost(self) -> int:
        return self.dropped + self.would_drop


@dataclass(frozen=True)
class ReplayedFlow:
    """One example endpoint pair of one record, and what the candidate policy does with it."""

    proto: str
    port: int
    src_mac: str
    src_ip: str
    dst_mac: str
    dst_ip: str
    vlan: int
    flows: int
    verdict: str  # pass | drop | audit
    reason: str
    rule: str
    src_segment: str
    dst_segment: str
    midstream: bool = False  # some of the flows were connections first seen mid-stream (the opener inferred)


@dataclass
class DeviceImpact:
    """A device that would lose flows."""

    mac: str
    device_class: str
    criticality: str
    life_critical: bool
    hostname: str | None = None
    ips: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    lost_ports: dict[str, set[int]] = field(default_factory=dict)  # "tcp to 10.0.0.2 (pacs)" -> ports, bounded

    @property
    def lost(self) -> list[str]:
        """What the device would lose, e.g. "tcp/1-100,443 to 10.30.0.2 (pacs)"."""
        lines = []
        for what, ports in sorted(self.lost_ports.items()):
            proto, _, peer = what.partition(" ")
            lines.append(f"{proto}/{port_ranges(ports)} {peer}")
        return lines

    def describe(self) -> str:
        name = f" ({self.hostname})" if self.hostname else ""
        return f"{self.mac} {' '.join(self.ips) or '-'} {self.device_class}{name}"


@dataclass
class SimulationReport:
    records: int = 0
    flows: int = 0  # every flow start in the baseline
    first_seen: float = 0.0  # the baseline's window: its oldest and newest flow start (0: none)
    last_seen: float = 0.0
    replayed: Tally = field(default_factory=Tally)  # the flows of the replayed endpoint pairs
    by_rule: dict[str, Tally] = field(default_factory=dict)
    by_segment_pair: dict[tuple[str, str], Tally] = field(default_factory=dict)
    devices: dict[str, DeviceImpact] = field(default_factory=dict)  # MAC -> impact, only devices that lose flows
    cut: list[ReplayedFlow] = field(default_factory=list)  # every replayed flow that is dropped or would be
    unused_rules: list[str] = field(default_factory=list)  # rules of the policy that no replayed flow reached
    warnings: list[str] = field(default_factory=list)  # the compiler's

    @property
    def not_replayed(self) -> int:
        return self.flows - self.replayed.flows

    @property
    def life_critical(self) -> list[DeviceImpact]:
        return [self.devices[mac] for mac in sorted(self.devices) if self.devices[mac].life_critical]

    @property
    def cuts_life_critical(self) -> bool:
        return bool(self.life_critical)

    @property
    def clean(self) -> bool:
        """No replayed flow is dropped now or would be once enforced."""
        return self.replayed.lost == 0

    @property
    def no_evidence(self) -> bool:
        """Nothing was replayed: an empty baseline (a fresh install, the wrong state directory) proves nothing."""
        return self.replayed.flows == 0

    def window(self) -> str:
        if not self.first_seen:
            return "no learned flows"
        days = (self.last_seen - self.first_seen) / 86400
        stamp = "%Y-%m-%d %H:%M"
        return f"flows learned from {time.strftime(stamp, time.localtime(self.first_seen))} to {time.strftime(stamp, time.localtime(self.last_seen))} ({days:.1f} days)"

    def to_json(self) -> str:
        return json.dumps(
            {
                "clean": self.clean,
                "no_evidence": self.no_evidence,
                "first_seen": self.first_seen,
                "last_seen": self.last_seen,
                "cuts_life_critical": self.cuts_life_critical,
                "records": self.records,
                "flows": self.flows,
                "not_replayed": self.not_replayed,
                "replayed": asdict(self.replayed),
                "life_critical": [_device_json(d) for d in self.life_critical],
                "by_rule": {name: asdict(tally) for name, tally in sorted(self.by_rule.items())},
                "by_segment_pair": [
                    {"from": src, "to": dst, **asdict(tally)} for (src, dst), tally in sorted(self.by_segment_pair.items())
                ],
                "devices": [_device_json(self.devices[mac]) for mac in sorted(self.devices)],
                "cut": [asdict(flow) for flow in self.cut],
                "unused_rules": self.unused_rules,
                "warnings": self.warnings,
            },
            indent=2,
        )

    def to_text(self) -> str:
        lines: list[str] = []
        critical = self.life_critical
        if critical:
            lines += [
                "!" * 78,
                f"!!! LIFE-CRITICAL: {len(critical)} life-critical device{'s' if len(critical) != 1 else ''} would lose flows under this policy",
                "!" * 78,
            ]
            for device in critical:
                lines.append(f"  {device.describe()} [{device.criticality}]: {_losses(device.tally)}")
                lines += [f"      {lost}" for lost in device.lost]
            lines.append("")
        r = self.replayed
        lines.append(
            f"Replayed {r.flows} flows of {self.records} records: {r.passed} pass, {r.dropped} dropped now, "
            f"{r.would_drop} would drop when enforced."
        )
        if self.not_replayed:
            lines.append(f"{self.not_replayed} flows between other endpoint pairs were not replayed (the baseline keeps examples only).")
        lines.append(f"Baseline: {self.window()}.")
        lines.append("Not modelled: bridge ports (a segment's port binding, trusted ports, per-port VLANs and PVIDs), replies, "
                     "and endpoint pairs beyond the examples: check those on the bridge, in monitor mode, before enforcing.")
        if self.no_evidence:
            lines.append("NO EVIDENCE: there was nothing to replay (a fresh install, or the wrong --state-dir?), so nothing is known "
                         "about what this policy would drop. Learn first, or pass --pcap.")
        else:
            lines.append("CLEAN: no learned flow is dropped, now or once enforced." if self.clean else "NOT CLEAN: see below.")
        lines += [f"warning: {w}" for w in self.warnings]
        rules = sorted(self.by_rule.items(), key=lambda item: (-item[1].lost, item[0]))
        pairs = sorted(self.by_segment_pair.items(), key=lambda item: (-item[1].lost, item[0]))
        devices = sorted(self.devices.values(), key=lambda d: (not d.life_critical, -d.tally.lost, d.mac))
        lines += _table("By rule", ["rule"], [([name], t) for name, t in rules])
        lines += _table("By segment pair", ["from", "to"], [([src, dst], t) for (src, dst), t in pairs])
        if devices:
            lines += _table(
                "Devices that would lose flows",
                ["device", "criticality"],
                [([d.describe(), d.criticality.upper() if d.life_critical else d.criticality], d.tally) for d in devices],
            )
        if self.unused_rules:
            lines += ["", f"Rules no learned flow reached ({len(self.unused_rules)}): {', '.join(self.unused_rules)}"]
        return "\n".join(lines) + "\n"


def port_ranges(ports: Iterable[int]) -> str:
    """[1, 2, 3, 443] -> "1-3,443"."""
    ranges: list[list[int]] = []
    for port in sorted(set(ports)):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1][1] = port
        else:
            ranges.append([port, port])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def _losses(tally: Tally) -> str:
    return f"{tally.dropped} flows dropped now, {tally.would_drop} would drop when enforced"


def _device_json(device: DeviceImpact) -> dict[str, Any]:
    body = asdict(device)
    body["class"] = body.pop("device_class")
    body["lost"] = device.lost
    del body["lost_ports"]
    return body


def _table(title: str, columns: list[str], rows: list[tuple[list[str], Tally]]) -> list[str]:
    header = [*columns, "flows", "pass", "dropped-now", "would-drop"]
    cells = [[*names, str(t.flows), str(t.passed), str(t.dropped), str(t.would_drop)] for names, t in rows[:TEXT_ROWS]]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["", f"{title}:"]
    for row in [header, *cells]:
        lines.append("  " + "  ".join(cell.ljust(w) if i < len(columns) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    if len(rows) > TEXT_ROWS:
        lines.append(f"  ... and {len(rows) - TEXT_ROWS} more (see --json)")
    return lines


class _Simulation:
    def __init__(self, config: Config, inventory: Inventory, catalog: Catalog) -> None:
        self.config = config
        self.inventory = inventory
        self.catalog = catalog
        class_of = inventory.placement_classes()
        # No ports here (every example replays at ingress 0): trusted ports would make every listed server's
        # reply look untrusted, or every rogue one trusted. Replies are taken to enter where they should.
        compiled = compile_policy(dataclasses.replace(config, trusted_ports=()), 1, lambda port: 0, class_of)
        contents = compiled.contents
        contents["active_gen"] = {bytes(ctypes.c_uint32(0)): bytes(ctypes.c_uint32(1))}
        self.rule_names: Mapping[int, str] = compiled.rule_names
        self.model = ReferenceDataplane(contents)
        self.report = SimulationReport(warnings=list(compiled.warnings))

    def run(self, baseline: Baseline) -> SimulationReport:
        report = self.report
        for record in sorted(baseline, key=lambda r: r.key):
            report.records += 1
            report.flows += record.flows
            report.first_seen = min(report.first_seen or record.first_seen, record.first_seen)
            report.last_seen = max(report.last_seen, record.last_seen)
            for example in record.examples:
                self.replay(record, example)
        reached = set(report.by_rule)
        report.unused_rules = [rule.name for rule in self.config.rules if rule.name not in reached]
        return report

    def replay(self, record: FlowRecord, example: Example) -> None:
        self.model.flows.clear()  # every example is the first packet of its flow
        self.model.frags.clear()
        flows = example.flows
        d: Any = self.model.run(first_packet(record.proto, record.port, example), 0).decision
        verdict = VERDICT_NAMES[d.verdict]
        reason = abi.Reason(d.reason).name
        rule = self.rule_names.get(d.rule_id) or f"reason:{reason}"  # rule id 0: a rail decided
        src_segment, dst_segment = self.config.segment_name(d.src_segment), self.config.segment_name(d.dst_segment)
        report = self.report
        report.replayed.add(verdict, flows)
        report.by_rule.setdefault(rule, Tally()).add(verdict, flows)
        if not reason.startswith("rail"):  # a rail decides before identity: no segments
            report.by_segment_pair.setdefault((src_segment, dst_segment), Tally()).add(verdict, flows)
        if verdict == "pass":
            return
        proto = protocol_name(record.proto)
        flow = ReplayedFlow(
            proto=proto,
            port=record.port,
            src_mac=example.src_mac,
            src_ip=example.src_ip,
            dst_mac=example.dst_mac,
            dst_ip=example.dst_ip,
            vlan=example.vlan,
            flows=flows,
            verdict=verdict,
            reason=reason,
            rule=rule,
            src_segment=src_segment,
            dst_segment=dst_segment,
            midstream=example.midstream > 0,
        )
        report.cut.append(flow)
        self.impact(example.src_mac, example.src_ip, src_segment, flow, f"{proto} to {example.dst_ip} ({dst_segment})")
        self.impact(example.dst_mac, example.dst_ip, dst_segment, flow, f"{proto} from {example.src_ip} ({src_segment})")

    def impact(self, mac: str, ip: str, segment: str, flow: ReplayedFlow, lost: str) -> None:
        if int(mac[:2], 16) & 1:
            return  # broadcast and multicast are not devices
        device = self.report.devices.get(mac)
        if device is None:
            known = self.inventory.devices.get(mac)
            device_class = known.device_class if known is not None else UNKNOWN
            criticality = self.catalog.criticality(device_class)
            in_segment = self.config.segments.get(segment)
            life_critical = criticality == LIFE_CRITICAL or (in_segment is not None and in_segment.life_critical)
            hostname = known.hostname if known is not None else None
            device = self.report.devices[mac] = DeviceImpact(mac, device_class, criticality, life_critical, hostname)
        if ip not in device.ips:
            device.ips.append(ip)
            device.ips.sort()
        device.tally.add(flow.verdict, flow.flows)
        if lost in device.lost_ports or len(device.lost_ports) < MAX_LOST_PER_DEVICE:
            device.lost_ports.setdefault(lost, set()).add(flow.port)


def simulate(config: Config, baseline: Baseline, inventory: Inventory, catalog: Catalog) -> SimulationReport:
    """What config would do to the baseline's flows; see the module's docstring.

    Raises config.ConfigError when the policy does not compile (e.g. it does not fit its tables).
    """
    return _Simulation(config, inventory, catalog).run(baseline)
