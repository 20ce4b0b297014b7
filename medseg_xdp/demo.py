"""`medseg-xdp demo`: a virtual hospital ward, from the X-ray to enforcement.

The ward (medseg_xdp.ward) is real software in network namespaces around a
real bridge; the real XDP program sits on every bridge port. The demo walks
the path a hospital walks: discover and classify, learn, propose, simulate,
enforce; then a compromised infusion pump scans and reaches for the PACS and
the interface engine. Everything it builds is removed on exit, Ctrl-C too.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg_xdp import abi, config
from medseg_xdp.baseline import Baseline
from medseg_xdp.classify import LIFE_CRITICAL, UNKNOWN, load_catalog
from medseg_xdp.config import Config, protocol_name
from medseg_xdp.dataplane import CounterValue, Dataplane
from medseg_xdp.events import EventExporter
from medseg_xdp.loader import Attachment, Loader
from medseg_xdp.metrics import Metrics
from medseg_xdp.propose import propose
from medseg_xdp.samples import Sample, SampleReader
from medseg_xdp.session import ProgramOnBridge
from medseg_xdp.simulate import simulate
from medseg_xdp.ward import HOSTS_BY_NAME, Ward
from medseg_xdp.xray import Xray

BRIDGE_SETTINGS = """
[bridge]
name = "ward"

[settings]
sample_first_packets = 8
sample_one_in_n = 1000
"""
LEARNING_ROUNDS = 2
METRICS_PORT = 9479
Stats = dict[tuple[abi.Verdict, abi.Reason], CounterValue]


class Demo:
    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say
        self.catalog = load_catalog()
        self.baseline = Baseline()
        self.xray = Xray.default(learner=self.baseline)
        self.report: dict[str, Any] = {}
        self.started = time.monotonic()

    def phase(self, number: int, title: str) -> None:
        self.say(f"\n== {number}. {title}  [{time.monotonic() - self.started:5.1f} s]")

    def _ingest(self, sample: Sample) -> None:
        self.xray.ingest(sample.data, sample.timestamp_ns / 1e9, sample.kind)

    def run(self, keep_running: bool = False) -> dict[str, Any]:
        self.say("building the ward: 11 hosts in network namespaces around a Linux bridge, real servers starting ...")
        with Ward() as ward, ProgramOnBridge(ward.topology, config.parse(BRIDGE_SETTINGS, "monitor only")) as program:
            modes = {a.mode for a in program.attachments}
            self.say(f"XDP program on {len(program.attachments)} bridge ports ({', '.join(sorted(modes))}), no policy yet: it only looks")
            reader = SampleReader(program.loader.bpf, self._ingest)
            metrics = Metrics(_DemoMetricsSource(program, self.xray))
            try:
                port = metrics.serve("127.0.0.1", METRICS_PORT)
            except OSError:
                port = metrics.serve("127.0.0.1", 0)  # the usual port is taken (a daemon runs): any free one
            self.say(f"Prometheus metrics: http://127.0.0.1:{port}/metrics")
            self.report["metrics_port"] = port
            try:
                self.discover(ward, reader)
                self.learn()
                _, proposed = self.propose()
                self.simulate(proposed)
                self.enforce(ward, program, reader, proposed)
                self.report["metrics_dropped_packets"] = _scraped_drops(port)
                self.say(f"   the metrics endpoint agrees: medseg_packets_total{{verdict=\"drop\"}} = {self.report['metrics_dropped_packets']:.0f}")
                self.report["seconds"] = round(time.monotonic() - self.started, 1)
                if keep_running:
                    self.say(f"\nthe ward stays up; namespaces: {', '.join(ward.topology.namespace_names.values())}. Ctrl-C cleans up.")
                    try:
                        while True:
                            reader.poll(1000)
                    except KeyboardInterrupt:
                        pass
            finally:
                metrics.close()
        self.say(f"\ncleaned up: namespaces, servers, XDP programs and pinned maps removed ({self.report['seconds']} s)")
        return self.report

    # ---- 1. discover and classify ----

    def discover(self, ward: Ward, reader: SampleReader) -> None:
        self.phase(1, "Discover and classify: the X-ray")
        for round_number in range(1, LEARNING_ROUNDS + 1):
            traffic = ward.run_clinical_traffic(rounds=1)
            reader.poll(100)
            self.say(f"   clinical traffic round {round_number}: {len(traffic.exchanges)} exchanges, {len(traffic.failures)} failed; {self.xray.samples} samples so far")
        inventory = self.xray.inventory
        rows = []
        self.say(f"   {'host':<12} {'MAC':<17} {'IP':<13} {'vendor':<26} {'class':<21} {'conf':>4}  key evidence")
        for host in HOSTS_BY_NAME.values():
            device = inventory.devices.get(host.mac)
            if device is None:
                continue
            evidence = "; ".join(f"{e['signal']}={e['value']}" for e in device.evidence[:2]) or "-"
            vendor = (device.vendor or "-")[:26]
            critical = " (life-critical)" if self.catalog.criticality(device.device_class) == LIFE_CRITICAL else ""
            self.say(f"   {host.name:<12} {host.mac:<17} {host.ipv4:<13} {vendor:<26} {device.device_class:<21} {device.confidence:>4.2f}  {evidence}{critical}")
            rows.append({"host": host.name, **device.summary()})
        self.report["inventory"] = rows

    # ---- 2. learn ----

    def learn(self) -> None:
        self.phase(2, "Learn: who talks to whom (device classes, service ports)")
        regrouped = self.baseline.regrouped(self.xray.inventory)
        matrix: dict[tuple[str, str], set[str]] = {}
        for record in regrouped:
            if record.is_rail:
                continue
            key = (record.src_group.removeprefix("class:"), record.dst_group.removeprefix("class:"))
            matrix.setdefault(key, set()).add(f"{protocol_name(record.proto)}/{record.port}")
        sources = sorted({src for src, _ in matrix})
        targets = sorted({dst for _, dst in matrix})
        corner = "from \\ to"
        self.say(f"   {corner:<21}" + "".join(f"{t[:14]:<15}" for t in targets))
        for src in sources:
            cells = [",".join(sorted(matrix.get((src, dst), set())))[:14] or "." for dst in targets]
            self.say(f"   {src:<21}" + "".join(f"{cell:<15}" for cell in cells))
        self.report["matrix"] = [{"from": s, "to": d, "services": sorted(p)} for (s, d), p in sorted(matrix.items())]
        self.baseline_regrouped = regrouped

    # ---- 3. propose ----

    def propose(self) -> tuple[str, Config]:
        self.phase(3, "Propose: a least-privilege policy from the baseline")
        text = propose(self.baseline_regrouped, self.xray.inventory, self.catalog)
        proposed = config.parse(BRIDGE_SETTINGS + text, "proposed policy")
        for rule in proposed.rules:
            ports = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in rule.ports) or "any"
            self.say(f"   allow {rule.src:>21} -> {rule.dst:<21} {protocol_name(rule.proto or 0)} {ports}")
        self.say(f"   {len(proposed.segments)} segments (one per device class, all in monitor mode), {len(proposed.rules)} rules")
        self.report["proposed_policy"] = text
        return text, proposed

    # ---- 4. simulate ----

    def simulate(self, proposed: Config) -> None:
        self.phase(4, "Simulate: the proposal replayed over the recorded flows")
        result = simulate(proposed, self.baseline_regrouped, self.xray.inventory, self.catalog)
        tally = result.replayed
        self.say(f"   {tally.flows} learned flows replayed: {tally.passed} pass, {tally.dropped} dropped now, {tally.would_drop} would drop once enforced")
        self.say("   clean: nothing legitimate would be dropped" if result.clean else "   NOT CLEAN: see the report")
        self.report["simulation"] = json.loads(result.to_json())

    # ---- 5. enforce ----

    def enforce(self, ward: Ward, program: ProgramOnBridge, reader: SampleReader, proposed: Config) -> None:
        self.phase(5, "Enforce: apply live; life-critical segments stay in monitor")
        enforced = _enforce_where_safe(proposed)
        monitor = sorted(name for name, s in enforced.segments.items() if s.mode == abi.Mode.monitor)
        started = time.perf_counter()
        generation = program.apply(enforced, self.xray.inventory.placement_classes())
        self.say(f"   policy generation {generation} in force after {(time.perf_counter() - started) * 1000:.0f} ms; monitor only: {', '.join(monitor)}")
        assert program.dataplane is not None
        before = program.dataplane.stats()
        traffic = ward.run_clinical_traffic(rounds=1)
        reader.poll(100)
        clinical = _delta(before, program.dataplane.stats())
        passed = sum(v.packets for (verdict, _), v in clinical.items() if verdict != abi.Verdict.drop)
        dropped = sum(v.packets for (verdict, _), v in clinical.items() if verdict == abi.Verdict.drop)
        self.say(f"   clinical traffic: {len(traffic.exchanges) - len(traffic.failures)}/{len(traffic.exchanges)} exchanges completed; {passed} packets passed, {dropped} dropped")

        classes = self.xray.inventory.placement_classes()
        life_critical = {h.name for h in HOSTS_BY_NAME.values() if self.catalog.criticality(classes.get(h.mac, UNKNOWN)) == LIFE_CRITICAL}
        cut = [e.key for e in traffic.exchanges if not e.ok and (e.source in life_critical or e.target in life_critical)]
        self.say(f"   life-critical devices ({', '.join(sorted(life_critical))}): {'never cut off' if not cut else 'CUT OFF: ' + ', '.join(cut)}")

        self.say("   now the infusion pump is compromised: it scans the PACS and the HL7 engine, then tries DICOM and HL7 ...")
        hits_before = program.dataplane.rule_hits(list(program.rule_names))
        before = program.dataplane.stats()
        attack = ward.run_attack(ports="1-1024", host_timeout=20.0)
        reader.poll(100)
        attack_stats = _delta(before, program.dataplane.stats())
        hits_after = program.dataplane.rule_hits(list(program.rule_names))
        attack_drops = sum(v.packets for (verdict, _), v in attack_stats.items() if verdict == abi.Verdict.drop)
        by_rule = {
            program.rule_names[rule]: hits_after[rule].packets - (hits_before[rule].packets if rule in hits_before else 0)
            for rule in hits_after
            if hits_after[rule] != hits_before.get(rule)
        }
        open_ports = {target: list(ports) for target, ports in attack.open_ports.items()}
        self.say(f"   attack: {attack_drops} packets dropped in the kernel; ports the scan found open: {open_ports}")
        self.say(f"   direct DICOM from the pump answered: {attack.dicom_answered}; direct HL7 answered: {attack.hl7_answered}")
        for rule, packets in sorted(by_rule.items(), key=lambda item: -item[1]):
            self.say(f"      {rule:<40} {packets:>6} packets")
        self.report["enforcement"] = {
            "generation": generation,
            "monitor_segments": monitor,
            "clinical_exchanges": {"completed": len(traffic.exchanges) - len(traffic.failures), "total": len(traffic.exchanges), "failed": [e.key for e in traffic.failures]},
            "legitimate_packets_passed": passed,
            "legitimate_packets_dropped": dropped,
            "life_critical_cut_off": cut,
            "attack_packets_dropped": attack_drops,
            "attack_open_ports": open_ports,
            "attack_dicom_answered": attack.dicom_answered,
            "attack_hl7_answered": attack.hl7_answered,
            "attack_packets_by_rule": by_rule,
        }


class _DemoMetricsSource:
    """The metrics collector's MetricsSource, from the demo's own pieces (no daemon runs in the demo)."""

    def __init__(self, program: ProgramOnBridge, xray: Xray) -> None:
        self._program = program
        self.xray = xray
        self.inventory = xray.inventory
        self.last_apply = None
        self.enforcing = {attachment.ifname: True for attachment in program.attachments}  # the demo does not watch its ports
        self.reattached = 0
        self.events = EventExporter([], drop_events_per_minute=0)  # no SIEM in the demo

    # read at each scrape: the demo re-applies policies as it goes
    @property
    def last_loop(self) -> float:
        return time.time()  # the demo has no main loop to stall

    @property
    def loader(self) -> Loader:
        return self._program.loader

    @property
    def attachments(self) -> list[Attachment]:
        return self._program.attachments

    @property
    def config(self) -> Config:
        return self._program.config

    @property
    def dataplane(self) -> Dataplane | None:
        return self._program.dataplane

    @property
    def rule_names(self) -> dict[int, str]:
        return self._program.rule_names


def _scraped_drops(port: int) -> float:
    """Packets dropped, as Prometheus would read them from the endpoint."""
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("medseg_packets_total{") and 'verdict="drop"' in line
    )


def _enforce_where_safe(proposed: Config) -> Config:
    """Enforce every segment except the life-critical ones and 'unassigned' (monitor before enforce)."""
    segments = {
        name: dataclasses.replace(segment, mode=abi.Mode.enforce) if not segment.life_critical and name != "unassigned" else segment
        for name, segment in proposed.segments.items()
    }
    return dataclasses.replace(proposed, segments=segments)


def _delta(before: Stats, after: Stats) -> Stats:
    result = {}
    for key, value in after.items():
        old = before.get(key, CounterValue(0, 0))
        if value != old:
            result[key] = CounterValue(value.packets - old.packets, value.bytes - old.bytes)
    return result


def run_demo(keep_running: bool = False, json_report: Path | None = None) -> int:
    report = Demo().run(keep_running)
    if json_report is not None:
        json_report.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"report written to {json_report}")
    enforcement = report["enforcement"]
    ok = not enforcement["life_critical_cut_off"] and enforcement["legitimate_packets_dropped"] == 0 and enforcement["attack_packets_dropped"] > 0
    return 0 if ok else 1

