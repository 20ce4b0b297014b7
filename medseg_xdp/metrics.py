"""Prometheus metrics of the daemon, read from the BPF maps at scrape time.

A custom collector turns the kernel's counters (per verdict and reason, per
segment pair, per rule, map pressure), the flow table's fill, the inventory
and the policy state into metric families each time Prometheus scrapes.
Nothing is kept per flow, and every label value comes from the configuration
or the class catalog, never from traffic: no addresses, MACs or hostnames
(hostnames can carry patient or staff names), so the series stay bounded.

The endpoint is served by prometheus_client's HTTP server on a registry of
its own (not the process-global one), on `[daemon] metrics`, 127.0.0.1:9479
by default.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from threading import Thread
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from medseg_xdp import abi
from medseg_xdp.classify import UNKNOWN
from medseg_xdp.config import Config, protocol_name
from medseg_xdp.events import RATE_LIMITED_KINDS, EventExporter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from medseg_xdp.daemon import ApplyRecord
    from medseg_xdp.dataplane import Dataplane
    from medseg_xdp.inventory import Inventory
    from medseg_xdp.loader import Attachment, Loader
    from medseg_xdp.xray import Xray

log = logging.getLogger(__name__)

ACTIVE_FLOW_S = 60  # a flow with a packet in the last minute is active
APPLY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NO_SEGMENT = "none"  # a device that no MAC, class or pin places (a prefix or VLAN may still)
# Sample losses come from these pressure counters; the others are map pressure.
SAMPLE_LOSSES = {abi.Pressure.ring_full: "ring_full", abi.Pressure.event_rate_limited: "rate_limited",
                 abi.Pressure.dhcp_rate_limited: "dhcp_rate_limited"}


def _version() -> str:
    try:
        return importlib.metadata.version("medseg-xdp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def rule_labels(cfg: Config, name: str) -> tuple[str, str, str]:
    """(protocol, ports, action) of a rule name, from the config; defaults are "any" "any"."""
    for rule in cfg.rules:
        if rule.name == name:
            protocol = "any" if rule.proto is None else protocol_name(rule.proto)
            ports = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in rule.ports) or "any"
            return protocol, ports, rule.action.name
    segment = cfg.segments.get(name.removeprefix("default:"))
    return "any", "any", segment.default.name if segment is not None else abi.Action.allow.name


class MetricsSource(Protocol):
    """What the collector reads: the daemon's state, or the demo's pieces standing for it."""

    @property
    def config(self) -> Config: ...
    @property
    def dataplane(self) -> Dataplane | None: ...
    @property
    def loader(self) -> Loader: ...
    @property
    def rule_names(self) -> Mapping[int, str]: ...
    @property
    def inventory(self) -> Inventory: ...
    @property
    def xray(self) -> Xray: ...
    @property
    def enforcing(self) -> Mapping[str, bool]: ...  # port -> still carries our program
    @property
    def reattached(self) -> int: ...
    @property
    def events(self) -> EventExporter: ...
    @property
    def last_loop(self) -> float: ...  # when the main loop last ran (time.time())
    @property
    def attachments(self) -> Sequence[Attachment]: ...
    @property
    def last_apply(self) -> ApplyRecord | None: ...


class DaemonCollector(Collector):
    """Every metric family except the apply histogram, built on each scrape."""

    def __init__(self, daemon: MetricsSource) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._dataplane()) if self.daemon.dataplane is not None else []
            up = 1 if self.daemon.dataplane is not None else 0
        except OSError as exc:  # a map that cannot be read: say so, serve the rest
            log.warning("metrics: cannot read the data plane's maps: %s", exc)
            families, up = [], 0
        yield from families
        yield from self._inventory()
        yield from self._state()
        yield GaugeMetricFamily("medseg_up", "1 when this scrape read the data plane's maps, else 0.", value=up)
        yield GaugeMetricFamily("medseg_main_loop_last_run_timestamp_seconds",
                                "When the daemon's main loop (samples, control requests, applies, expiries) last ran; "
                                "the endpoint is served from its own thread, so a hung loop shows here.", value=self.daemon.last_loop)
        info = GaugeMetricFamily("medseg_build_info", "The daemon's version and the pinned maps' layout hash; value 1.", labels=["version", "abi"])
        info.add_metric([_version(), self.daemon.loader.pin_dir.name], 1)
        yield info

    def _dataplane(self) -> Iterator[Metric]:
        dataplane = self.daemon.dataplane
        assert dataplane is not None
        cfg = self.daemon.config
        packets = CounterMetricFamily("medseg_packets", "Packets judged by the XDP program, by verdict and reason.", labels=["verdict", "reason"])
        octets = CounterMetricFamily("medseg_bytes", "Bytes judged by the XDP program, by verdict and reason.", labels=["verdict", "reason"])
        stats = dataplane.stats()
        for verdict in abi.Verdict:
            for reason in abi.Reason:
                value = stats.get((verdict, reason))
                packets.add_metric([verdict.name, reason.name], value.packets if value else 0)
                octets.add_metric([verdict.name, reason.name], value.bytes if value else 0)
        yield packets
        yield octets

        pairs: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for (src, dst, verdict), value in dataplane.pair_stats().items():
            summed = pairs[cfg.segment_name(src), cfg.segment_name(dst), verdict.name]
            summed[0] += value.packets
            summed[1] += value.bytes
        pair_help = "by source and destination segment and verdict; replies count under the initiator's pair (audit: would have been dropped, passed in monitor mode)."
        pair_packets = CounterMetricFamily("medseg_segment_pair_packets", f"Packets {pair_help}", labels=["src_segment", "dst_segment", "verdict"])
        pair_bytes = CounterMetricFamily("medseg_segment_pair_bytes", f"Bytes {pair_help}", labels=["src_segment", "dst_segment", "verdict"])
        for labels, (n_packets, n_bytes) in sorted(pairs.items()):
            pair_packets.add_metric(list(labels), n_packets)
            pair_bytes.add_metric(list(labels), n_bytes)
        yield pair_packets
        yield pair_bytes

        names = dict(self.daemon.rule_names)
        hits = dataplane.rule_hits(sorted(names))
        rule_packets = CounterMetricFamily("medseg_rule_packets", "Packets per policy rule (defaults: default:<segment>), by the rule's protocol, ports and action.", labels=["rule", "protocol", "ports", "action"])
        rule_bytes = CounterMetricFamily("medseg_rule_bytes", "Bytes per policy rule (defaults: default:<segment>), by the rule's protocol, ports and action.", labels=["rule", "protocol", "ports", "action"])
        for rule_id, name in sorted(names.items(), key=lambda item: item[1]):
            rule = [name, *rule_labels(cfg, name)]
            value = hits.get(rule_id)
            rule_packets.add_metric(rule, value.packets if value else 0)
            rule_bytes.add_metric(rule, value.bytes if value else 0)
        yield rule_packets
        yield rule_bytes

        entries, active = self._flow_table()
        yield GaugeMetricFamily("medseg_flow_table_entries", "Entries in the flow table (an LRU: it evicts when full).", value=entries)
        yield GaugeMetricFamily("medseg_flow_table_capacity", "Capacity of the flow table ([tables] flows).", value=cfg.tables.flows)
        yield GaugeMetricFamily("medseg_flows_active", f"Flows with a packet in the last {ACTIVE_FLOW_S} seconds.", value=active)

        pressure = dataplane.pressure()
        events = CounterMetricFamily("medseg_map_pressure", "Map pressure events: failed or raced flow inserts, failed fragment inserts.", labels=["event"])
        lost = CounterMetricFamily("medseg_samples_lost", "Samples the program could not send: ring buffer full, or over the drop-event or DHCP sample rate limit.", labels=["reason"])
        for what, count in pressure.items():
            if what in SAMPLE_LOSSES:
                lost.add_metric([SAMPLE_LOSSES[what]], count)
            else:
                events.add_metric([what.name], count)
        yield events
        yield lost
        yield GaugeMetricFamily("medseg_policy_generation", "The active policy generation.", value=dataplane.active_generation())
        yield GaugeMetricFamily("medseg_break_glass", "1 while break-glass is on: every segment in monitor mode, nothing dropped by policy.", value=int(dataplane.break_glass()))

    def _flow_table(self) -> tuple[int, int]:
        """(entries, entries seen in the last ACTIVE_FLOW_S), read in batches."""
        assert self.daemon.dataplane is not None
        flows = self.daemon.dataplane.maps["flows"]
        size = ctypes.sizeof(abi.FlowEntry)
        column = abi.FlowEntry.last_seen_ns.offset // 8
        since = time.monotonic_ns() - ACTIVE_FLOW_S * 1_000_000_000  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        entries = active = 0
        for count, _keys, values in flows.lookup_batch_raw():
            last_seen = np.frombuffer(values, dtype=np.uint64).reshape(count, size // 8)[:, column]
            entries += count
            active += int(np.count_nonzero(last_seen >= since))
        return entries, active

    def _inventory(self) -> Iterator[Metric]:
        inventory = self.daemon.inventory
        catalog = inventory.classifier.catalog
        groups: dict[tuple[str, str, str], int] = defaultdict(int)
        for device in list(inventory.devices.values()):
            groups[device.device_class, device.segment or NO_SEGMENT, catalog.criticality(device.device_class)] += 1
        devices = GaugeMetricFamily("medseg_devices", f"Devices in the inventory by class, segment ({NO_SEGMENT}: not placed by MAC, class or pin) and criticality.", labels=["class", "segment", "criticality"])
        for labels, count in sorted(groups.items()):
            devices.add_metric(list(labels), count)
        yield devices
        yield CounterMetricFamily("medseg_devices_discovered", f"Devices seen for the first time by this daemon (each starts as class {UNKNOWN}).", value=inventory.discovered)
        yield CounterMetricFamily("medseg_devices_evicted", f"Unpinned devices of class {UNKNOWN} forgotten because the inventory was full ([daemon] max_devices): a MAC flood.", value=inventory.evicted)
        changes = CounterMetricFamily("medseg_classification_changes", "Device class changes by old and new class (a first classification is a change from unknown).", labels=["from_class", "to_class"])
        for (old, new), count in sorted(dict(inventory.change_counts).items()):
            changes.add_metric([old, new], count)
        yield changes
        yield CounterMetricFamily("medseg_samples_received", "Samples received from the ring buffer by the daemon.", value=self.daemon.xray.samples)

    def _state(self) -> Iterator[Metric]:
        cfg = self.daemon.config
        segments = GaugeMetricFamily("medseg_segment_info", "Configured segments, with their life_critical flag and mode; value 1.", labels=["segment", "life_critical", "mode"])
        for name, segment in sorted(cfg.segments.items()):
            segments.add_metric([name, str(segment.life_critical).lower(), segment.mode.name], 1)
        if "unassigned" not in cfg.segments:  # what the policy gives a segment nobody configured
            segments.add_metric(["unassigned", "false", abi.Mode.monitor.name], 1)
        yield segments
        enforcing = GaugeMetricFamily("medseg_port_enforcing", "1 while the port carries the daemon's XDP program, 0 when it lost it (checked every few seconds): traffic on it crosses unfiltered.", labels=["interface"])
        for ifname, ok in sorted(self.daemon.enforcing.items()):
            enforcing.add_metric([ifname], int(ok))
        yield enforcing
        yield CounterMetricFamily("medseg_port_reattached", "Times a port lost the XDP program (removed by someone else, or the interface re-created) and the daemon attached it again.", value=self.daemon.reattached)
        events = self.daemon.events.counters
        sent = CounterMetricFamily("medseg_events_sent", "SIEM events delivered, by destination ([events]).", labels=["destination"])
        failures = CounterMetricFamily("medseg_events_send_failures", "Failed attempts to deliver a SIEM event (each is retried).", labels=["destination"])
        lost = CounterMetricFamily("medseg_events_lost", "SIEM events never delivered: queue full while the destination was down, or still queued at exit.", labels=["destination", "reason"])
        suppressed = CounterMetricFamily("medseg_events_suppressed", "Drop and audit events over events.drop_events_per_minute, or repeating a flow reported in the last minute: counted instead of sent.", labels=["kind"])
        for destination in self.daemon.events.destinations:
            sent.add_metric([destination], events.sent[destination])
            failures.add_metric([destination], events.failures[destination])
            for reason in ("queue_full", "unsent_at_exit"):
                lost.add_metric([destination, reason], events.dropped[destination, reason])
        for kind in RATE_LIMITED_KINDS:
            suppressed.add_metric([kind], events.suppressed[kind])
        yield from (sent, failures, lost, suppressed)
        attached = GaugeMetricFamily("medseg_attachment_info", "The XDP attach mode of each bridge port (native or generic); value 1.", labels=["interface", "mode"])
        for attachment in list(self.daemon.attachments):
            attached.add_metric([attachment.ifname, attachment.mode], 1)
        yield attached
        record = self.daemon.last_apply
        if record is not None:
            yield GaugeMetricFamily("medseg_policy_last_apply_timestamp_seconds", "When the last policy generation was applied (unix time).", value=record.at)


class Metrics:
    """The daemon's registry: the collector, the apply-duration histogram, the HTTP server."""

    def __init__(self, daemon: MetricsSource) -> None:
        disable_created_metrics()  # no <histogram>_created series: the daemon's start time is no metric of ours
        self.registry = CollectorRegistry()
        self.apply_duration = Histogram(
            "medseg_policy_apply_duration_seconds",
            "Time to compile, write and flip a policy generation.",
            buckets=APPLY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(DaemonCollector(daemon))
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def serve(self, address: str, port: int) -> int:
        """Start the endpoint; returns the port it listens on (port 0: any free one)."""
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        port = self._server.server_port
        log.info("metrics on http://%s/metrics", f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
