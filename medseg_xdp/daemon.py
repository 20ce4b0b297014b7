"""`medseg-xdp run`: the manager of one bridge.

It attaches the program to the bridge ports (or resumes the one already
there, on the pinned maps: no flush of flows or verdicts), consumes samples
into the X-ray (inventory, classes) and the baseline, moves devices into
their segments live as they are classified, and answers the CLI on the
control socket. SIGHUP reloads the config (an invalid one changes nothing),
SIGTERM detaches, or leaves enforcement running when daemon.on_stop = "keep".
A kill -9 leaves the program attached and its maps pinned: the network stays
enforced, and the next start resumes. Prometheus metrics are served on
`[daemon] metrics` (medseg_xdp.metrics), and under systemd (Type=notify) the
daemon reports ready once the ports are enforced.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pyroute2 import IPRoute

from medseg_xdp import abi, doctor
from medseg_xdp import config as config_mod
from medseg_xdp.assets import import_assets, parse_assets
from medseg_xdp.audit import AuditLog
from medseg_xdp.baseline import Baseline, BaselineStore
from medseg_xdp.breakglass import describe as describe_restored
from medseg_xdp.breakglass import restore as restore_break_glass
from medseg_xdp.breakglass import switch as switch_break_glass
from medseg_xdp.config import Config, ConfigError
from medseg_xdp.control import ControlServer
from medseg_xdp.dataplane import Dataplane
from medseg_xdp.doctor import Check, Status
from medseg_xdp.events import EventExporter, Severity
from medseg_xdp.exceptions import ExceptionStore, PolicyException, device_moves, validate, with_exceptions
from medseg_xdp.fingerprint.frame import Frame
from medseg_xdp.inventory import ClassChange, Device, InventoryStore
from medseg_xdp.loader import DEFAULT_PIN_ROOT, Attachment, Loader, LoaderError, detach, ensure_bpffs, ifindex_problem, in_netns
from medseg_xdp.metrics import Metrics
from medseg_xdp.policy_diff import describe_changes
from medseg_xdp.policy_image import RuleIds, compile_policy, device_segments, unguarded_life_critical
from medseg_xdp.samples import Sample, SampleReader
from medseg_xdp.statefile import StateFile
from medseg_xdp.xray import Xray

log = logging.getLogger(__name__)

SAVE_EVERY_S = 10.0
ENFORCEMENT_CHECK_S = 5.0  # how often the ports are checked for our program
REPORT_FLOW_EVERY_S = 60.0  # a drop or audit event per flow at most this often
REPORTED_FLOWS = 4096
RECENT_DROPS = 1000  # drop and audit records `medseg-xdp drops` can show (one per flow and REPORT_FLOW_EVERY_S)
APPLY_DEBOUNCE_S = 0.5  # class changes arrive in bursts: one apply for the burst
POLL_MS = 100
RULE_IDS_VERSION = 1


@dataclass
class ApplyRecord:
    generation: int
    at: float
    duration_ms: float
    reason: str
    devices: int


@dataclass
class PendingConfirmation:
    """An apply that reverts at deadline unless `medseg-xdp policy confirm` comes first."""

    deadline: float
    generation: int
    previous: Config
    previous_path: Path
    uid: int


class StartRefused(RuntimeError):
    """The host cannot enforce as configured; the message lists what to fix. Nothing was attached."""


def control_socket(state_dir: Path) -> Path:
    return state_dir / "control.sock"


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) our state; nothing without $NOTIFY_SOCKET.

    Never blocks: a listener that stopped reading must not stall the loop."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):  # a full queue, a gone listener
        sock.sendto(state.encode(), socket.MSG_DONTWAIT, "\0" + address[1:] if address.startswith("@") else address)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings when systemd's WatchdogSec= is set (half its period), else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Daemon:
    def __init__(
        self,
        config_path: Path,
        netns: str | None = None,
        pin_root: Path = DEFAULT_PIN_ROOT,
        clock: Callable[[], float] = time.time,
        host_checks: Callable[[], list[Check]] = doctor.host_checks,
        watchdog_s: float | None = None,
    ) -> None:
        self.config_path = config_path
        self.startup_path = config_path  # what a restart (systemd's -c) loads again
        self.host_checks = host_checks
        self.watchdog_s = watchdog_s  # systemd's watchdog: ping this often from the loop, or never
        self._next_watchdog = 0.0
        self.netns = netns
        self.pin_root = pin_root
        self.clock = clock
        self.config: Config = config_mod.load(config_path)
        self.state_dir = self.config.daemon.state_dir
        self.baseline = Baseline(self.config.daemon.learning_days, config=self.config)
        self.baseline_store = BaselineStore(self.state_dir)
        self.events = EventExporter.from_settings(self.config.events, clock)
        self._new_devices: list[str] = []
        self._reported_flows: OrderedDict[tuple[Any, ...], float] = OrderedDict()  # drop/audit events: flow -> when
        self.recent_drops: deque[dict[str, Any]] = deque(maxlen=RECENT_DROPS)  # what `medseg-xdp drops` shows
        self.xray = Xray.default(learner=self.baseline, on_discovered=self._new_devices.append, max_devices=self.config.daemon.max_devices)
        self.inventory = self.xray.inventory
        self.inventory_store = InventoryStore(self.state_dir)
        self.rule_ids_file = StateFile(self.state_dir / "rule-ids.msgpack", RULE_IDS_VERSION)
        self.rule_ids = RuleIds()
        self.rule_names: dict[int, str] = {}
        self.compile_warnings: set[str] = set()  # logged once each
        self.loader = Loader(self.config.bridge, pin_root=pin_root, sizes=self.config.tables)
        self.dataplane: Dataplane | None = None
        self.reader: SampleReader | None = None
        self.control: ControlServer | None = None
        self.attachments: list[Attachment] = []
        self.ifindex: dict[str, int] = {}
        self.last_apply: ApplyRecord | None = None
        self.started = clock()
        self.last_loop = self.started  # a stalled loop shows in the metrics (medseg_main_loop_last_run_timestamp_seconds)
        self._stop = False
        self._reload = False
        self._apply_due: float | None = None
        self._dirty = False
        self._last_save = clock()
        self.audit = AuditLog(self.state_dir, self.events)
        self.exceptions = ExceptionStore(self.state_dir, clock)
        self.pending: PendingConfirmation | None = None
        self.metrics = Metrics(self)  # the endpoint starts in start(); applies are timed from the first
        self.enforcing: dict[str, bool] = {}  # per port: our program is on it
        self.reattached = 0
        self._next_enforcement_check = clock()

    # ---- life cycle ----

    def preflight(self) -> None:
        """Refuse to start half-working: a host that cannot compile or pin, a port that cannot be attached."""
        ensure_bpffs()  # the loader would mount it anyway; the check below then sees it
        failed = [check for check in self.host_checks() if check.status is Status.FAIL]
        try:
            self.loader.preflight(list(self.config.ports), self.netns, replace=True)
        except LoaderError as exc:
            failed.append(Check("ports", Status.FAIL, str(exc), "check bridge.ports; `medseg-xdp doctor -c CONFIG` shows every port"))
        if failed:
            raise StartRefused("refusing to start, enforcement would not work as configured:\n" + "\n".join(check.line() for check in failed))

    def start(self) -> None:
        self.preflight()
        placements_lost = [problem for problem in (self.inventory_store.load(self.inventory), self.exceptions.load()) if problem]
        for problem in (*placements_lost, self.baseline_store.load(self.baseline), self._load_rule_ids()):
            if problem:
                log.error("%s", problem)
        self.ifindex = self._port_indexes(self.config)
        self.loader.compile()
        self.dataplane = Dataplane(self.loader.pin_dir)
        resumed = self.dataplane.active_generation() != 0
        self.apply("start")
        if not resumed:  # maps that survived hold the flag themselves
            self._restore_break_glass()
        if placements_lost:
            self._break_glass_for_lost_placements(placements_lost)
        # replace=True: a program left by a killed daemon is swapped atomically, maps kept
        self.attachments = self.loader.attach(list(self.config.ports), netns_name=self.netns, replace=True)
        self.enforcing = {a.ifname: True for a in self.attachments}
        self.reader = SampleReader(self.loader.bpf, self._on_sample)
        self.control = ControlServer(control_socket(self.state_dir), self.handle)
        listen = self.config.daemon.metrics_listen()
        if listen is not None:
            try:
                self.metrics.serve(*listen)
            except OSError as exc:  # enforcement matters more than its metrics: go on, loudly
                log.error("metrics endpoint %s not started: %s", self.config.daemon.metrics, exc)
        for attachment in self.attachments:
            log.info("%s: %s XDP (program %d)", attachment.ifname, attachment.mode, attachment.prog_id)
        log.info("%s bridge %s, policy generation %d", "resumed" if resumed else "started", self.config.bridge, self.dataplane.active_generation())
        sd_notify("READY=1")  # systemd (Type=notify): the ports are enforced now

    def _restore_break_glass(self) -> None:
        """Maps lost with break-glass on (a reboot during an emergency): on again, loudly, never silently off."""
        assert self.dataplane is not None
        state = restore_break_glass(self.dataplane, self.state_dir, self.audit, self.config.bridge, os.getuid(), self.clock)
        if state is not None:
            log.warning("%s", describe_restored(state))

    def _break_glass_for_lost_placements(self, problems: list[str]) -> None:
        """The inventory or the exceptions could not be read: pins, imported and learned classes and device
        exceptions are gone, and enforcing without them can cut devices off (a pinned pump falls back to its
        address). Break-glass, before the ports are attached, until a person has put them back."""
        assert self.dataplane is not None
        if self.dataplane.break_glass():
            return
        reason = "placements unreadable at start (" + "; ".join(problems) + ")"
        switch_break_glass(self.dataplane, True, self.state_dir, self.audit, self.config.bridge, os.getuid(), reason, self.clock)
        log.critical("BREAK-GLASS ON: %s; nothing is dropped by policy until `medseg-xdp break-glass off` after the pins, "
                     "asset classes and exceptions are back", reason)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, number: int, _frame: FrameType | None) -> None:
        if number == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def run_forever(self) -> None:
        while not self._stop:
            self.step()
        self.stop()

    def step(self) -> None:
        """One turn of the loop: samples, control requests, reloads, due applies, saves."""
        assert self.reader is not None and self.control is not None
        self.reader.poll(POLL_MS)
        self.control.serve(0)
        if self._reload:
            self._reload = False
            self._reload_on_signal()
        now = self.clock()
        if self._apply_due is not None and now >= self._apply_due:
            self._apply_due = None
            try:
                self.apply("devices classified")
            except (ConfigError, OSError) as exc:
                log.error("devices were classified, but their segments could not be applied (the running policy stays): %s", exc)
        if self.pending is not None and now >= self.pending.deadline:
            self._revert_unconfirmed()
        if any(e.expires_at <= now for e in self.exceptions.items):
            self._retire_expired_exceptions()
        if now >= self._next_enforcement_check:
            self._next_enforcement_check = now + ENFORCEMENT_CHECK_S
            try:
                self.check_enforcement()
            except Exception:  # an interface vanishing mid-check: the next check sees it settled
                log.exception("the enforcement check failed; trying again in %.0f s", ENFORCEMENT_CHECK_S)
        if self._dirty and now - self._last_save >= SAVE_EVERY_S:
            self.save()
        self.last_loop = now
        tick = time.monotonic()  # not the wall clock: NTP stepping it back must not stop the pings
        if self.watchdog_s is not None and tick >= self._next_watchdog:
            self._next_watchdog = tick + self.watchdog_s
            sd_notify("WATCHDOG=1")  # a loop that hangs stops pinging: systemd restarts it, enforcement stays

    def check_enforcement(self) -> None:
        """Is our program still on every port? Put it back where a port lost it, loudly.

        A port can lose it to `ip link set dev X xdp off`, or to a NIC re-created
        (a USB adapter re-plugged, a driver reloaded). A port that carries another
        program is left alone and reported: someone else owns it now.
        """
        for index, attachment in enumerate(self.attachments):
            found = self.loader.attached_program(attachment.ifname, self.netns)
            ok = found == (attachment.ifindex, attachment.prog_id)
            if not ok and found is not None and found[1] == 0:
                ok = self._reattach(index, found[0])
            if ok != self.enforcing.get(attachment.ifname):
                self.enforcing[attachment.ifname] = ok
                if ok:
                    log.warning("%s: enforcing again", attachment.ifname)
                    self.events.emit("enforcement-restored", Severity.notice, f"port {attachment.ifname} enforces again", port=attachment.ifname)
                else:
                    why = "the interface is gone" if found is None else f"it carries another XDP program (id {found[1]})"
                    log.error("%s: NOT ENFORCING: %s; traffic on it crosses unfiltered", attachment.ifname, why)
                    self.events.emit("enforcement-lost", Severity.critical, f"port {attachment.ifname} is not enforcing: {why}", port=attachment.ifname)

    def _reattach(self, index: int, ifindex: int) -> bool:
        old = self.attachments[index]
        try:
            problem = ifindex_problem(old.ifname, ifindex)
            if problem:
                raise LoaderError(problem)
            if ifindex != old.ifindex:  # a re-created interface: the port maps are keyed by ifindex, write them first
                self.apply(f"port {old.ifname} re-created", ifindex=self._port_indexes(self.config))
            (new,) = self.loader.attach([old.ifname], netns_name=self.netns)
        except Exception as exc:  # any failure leaves the port reported as not enforcing
            log.error("%s: lost its XDP program and cannot get it back: %s", old.ifname, exc)
            return False
        self.attachments[index] = new
        self.reattached += 1
        log.error("%s: its XDP program was removed (not by medseg-xdp); attached it again", old.ifname)
        self.events.emit("enforcement-reattached", Severity.critical, f"port {old.ifname} lost its XDP program; attached it again", port=old.ifname)
        return True

    def stop(self) -> None:
        self.metrics.close()
        self.save()
        if self.control is not None:
            self.control.close()
        if self.config.daemon.on_stop == "detach" and self.attachments:
            ports = ", ".join(a.ifname for a in self.attachments)
            detach([a.ifname for a in self.attachments], netns_name=self.netns)
            # fail-open, as designed, but never quietly: the bridge forwards unfiltered until the next start
            log.warning("detached from %s: the bridge forwards unfiltered until the next start", ports)
            self.events.emit("enforcement-stopped", Severity.critical, f"stopped: detached from {ports}; the bridge forwards unfiltered until "
                             "the next start", ports=ports)
        else:
            log.info("left enforcement running on %s (pinned state in %s)", ", ".join(self.config.ports), self.loader.pin_dir)
        if self.dataplane is not None:
            self.dataplane.close()
        self.loader.close()
        self.events.close()

    def save(self) -> None:
        self.baseline.expire(self.clock())
        self.baseline_store.save(self.baseline)
        self.inventory_store.save(self.inventory)
        self.rule_ids_file.write(self.rule_ids.ids)
        self._dirty = False
        self._last_save = self.clock()

    def _load_rule_ids(self) -> str | None:
        known, problem = self.rule_ids_file.read()
        if isinstance(known, dict):
            self.rule_ids = RuleIds(known)
        return problem

    def _port_indexes(self, cfg: Config) -> dict[str, int]:
        with in_netns(self.netns), IPRoute() as ipr:
            indexes = {}
            for port in cfg.ports:
                found = ipr.link_lookup(ifname=port)
                if not found:
                    raise ConfigError(f"bridge.ports: no interface {port}" + (f" in netns {self.netns}" if self.netns else ""))
                indexes[port] = found[0]
            return indexes

    # ---- policy ----

    def compile_for(self, cfg: Config, ifindex: dict[str, int]) -> Callable[[int], dict[str, dict[bytes, bytes]]]:
        def compile_generation(gen: int) -> dict[str, dict[bytes, bytes]]:
            exceptions = self.exceptions.items
            pins = {**self.inventory.live_pins(cfg), **device_moves(exceptions)}
            effective, placed = with_exceptions(cfg, exceptions), self.inventory.placement_classes()
            compiled = compile_policy(effective, gen, ifindex.__getitem__, placed, self.rule_ids, pins)
            self.rule_names = compiled.rule_names
            # the class a device shows now too: with reclassify = "report" it stays placed by its first one
            warnings = {*compiled.warnings, *unguarded_life_critical(effective, compiled.members, self.inventory.current_classes())}
            for warning in sorted(warnings - self.compile_warnings):  # each once, not at every apply
                log.warning("policy: %s", warning)
            self.compile_warnings = warnings
            return compiled.contents

        return compile_generation

    def apply(self, reason: str, cfg: Config | None = None, ifindex: dict[str, int] | None = None) -> ApplyRecord:
        """Compile and flip a new generation; an invalid config raises and changes nothing."""
        assert self.dataplane is not None
        cfg = cfg or self.config
        ifindex = ifindex or self.ifindex
        started = time.perf_counter()
        generation = self.dataplane.apply(self.compile_for(cfg, ifindex))
        self.config, self.ifindex = cfg, ifindex
        self._update_device_segments()
        elapsed = time.perf_counter() - started
        self.metrics.apply_duration.observe(elapsed)
        self.last_apply = ApplyRecord(generation, self.clock(), elapsed * 1000, reason, len(self.inventory.devices))
        self._dirty = True
        log.info("policy generation %d applied (%s) in %.1f ms", generation, reason, self.last_apply.duration_ms)
        return self.last_apply

    def _update_device_segments(self) -> None:
        members = device_segments(self.config, self.inventory.placement_classes(), self.inventory.live_pins(self.config))
        for mac, device in self.inventory.devices.items():
            if not device.pinned_segment:
                device.segment = members.get(mac)

    def _reload_on_signal(self) -> None:
        """SIGHUP (`systemctl reload`): applied or refused, it goes into the audit trail like an apply."""
        previous, path = self.config, self.config_path
        try:
            record = self.reload(path)
        except (ConfigError, OSError) as exc:  # logged by reload(); the running policy stays
            self.audit.append("policy reload refused", os.getuid(), "SIGHUP", {"path": str(path), "error": str(exc)})
            return
        changes = describe_changes(previous, self.config, self.inventory.placement_classes(), self.inventory.live_pins(previous))
        self.audit.append("policy reload", os.getuid(), "SIGHUP", {"path": str(path), "generation": record.generation, "changes": changes})

    def reload(self, path: Path | None = None) -> ApplyRecord:
        """Read the config again and apply it; on any error the running policy stays."""
        path = path or self.config_path
        try:
            candidate = config_mod.load(path)
            if candidate.bridge != self.config.bridge or candidate.tables != self.config.tables or candidate.ports != self.config.ports:
                raise ConfigError(f"{path}: bridge name, ports and table sizes change only with a restart")
            if candidate.daemon.metrics != self.config.daemon.metrics:
                log.warning("daemon.metrics changes only with a restart: the endpoint stays on %r", self.config.daemon.metrics)
            if candidate.events != self.config.events:
                log.warning("[events] changes only with a restart: events still go to %s", ", ".join(self.events.destinations) or "nowhere")
            record = self.apply(f"reload of {path}", candidate, self._port_indexes(candidate))
        except (ConfigError, OSError) as exc:
            log.error("reload refused, the running policy stays: %s", exc)
            raise
        self.config_path = path
        return record

    def _on_sample(self, sample: Sample) -> None:
        frame, changes = self.xray.observe(sample.data, self.clock(), sample.kind)
        self._dirty = True
        if self._new_devices:
            new, self._new_devices[:] = list(self._new_devices), []
            self._update_device_segments()  # a new device: its MAC or a pin may place it already
            for mac in new:
                self._device_event(mac)
        moved = False
        for change in changes:
            device = self.inventory.devices.get(change.mac)
            if device is None:
                continue
            followed = device.follow(change, self.config.daemon.reclassify == "move")
            moved |= followed
            self._audit_class_change(device, change, followed)
        if sample.verdict in (abi.Verdict.drop, abi.Verdict.audit):
            self._drop_event(sample, frame)
        if moved and any(segment.classes for segment in self.config.segments.values()):
            self._apply_due = self._apply_due or self.clock() + APPLY_DEBOUNCE_S

    # ---- SIEM events (medseg_xdp.events): addresses, classes and names only, never payload or hostnames ----

    def _device_event(self, mac: str) -> None:
        device = self.inventory.devices.get(mac)
        if device is None:
            return  # forgotten already (a full inventory)
        ips = ", ".join(device.ips) or "no IP yet"
        self.events.emit("device-new", Severity.notice, f"new device {mac} ({device.vendor or 'unknown vendor'}, {ips}) in segment {device.segment or 'none'}",
                         mac=mac, ip=next(iter(device.ips), ""), vendor=device.vendor or "", segment=device.segment or "")

    def _audit_class_change(self, device: Device, change: ClassChange, followed: bool) -> None:
        """The classifier's own changes are audited (and so reach the SIEM) like a person's pin."""
        mac, new, placed_as = change.mac, change.new, device.placement_class
        if not followed and placed_as != new:
            log.warning("device %s now looks like %s, but stays placed as %s: a classified device is not moved by the classifier "
                        "([daemon] reclassify = \"report\"); `medseg-xdp pin %s --class %s` moves it", mac, new, placed_as, mac, new)
        self.audit.append("class change", os.getuid(), "classifier evidence", {
            "mac": mac, "ip": next(iter(device.ips), ""), "old_class": change.old, "new_class": new,
            "confidence": round(change.confidence, 2), "criticality": self.inventory.classifier.catalog.criticality(new),
            "placed_as": placed_as,
        })

    def _drop_event(self, sample: Sample, frame: Frame) -> None:
        """One event per flow and minute: a flow's first packets are all sampled, a retried SYN comes again."""
        kind = "drop" if sample.verdict is abi.Verdict.drop else "audit"
        flow = (kind, frame.src_ip or frame.src_mac, frame.dst_ip or frame.dst_mac, frame.proto, frame.dport)
        now = self.clock()
        if now - self._reported_flows.get(flow, -REPORT_FLOW_EVERY_S) < REPORT_FLOW_EVERY_S:
            self.events.counters.suppressed[kind] += 1
            return
        self._reported_flows[flow] = now
        self._reported_flows.move_to_end(flow)
        if len(self._reported_flows) > REPORTED_FLOWS:
            self._reported_flows.popitem(last=False)
        src_segment, dst_segment = self.config.segment_name(sample.src_segment), self.config.segment_name(sample.dst_segment)
        rule = self.rule_names.get(sample.rule_id, "-")
        protocol = config_mod.protocol_name(frame.proto) if frame.proto else f"ethertype 0x{frame.ethertype:04x}"
        ends = f"{frame.src_ip or frame.src_mac}{f':{frame.sport}' if frame.sport else ''} -> {frame.dst_ip or frame.dst_mac}{f':{frame.dport}' if frame.dport else ''}"
        port = next((name for name, index in self.ifindex.items() if index == sample.ifindex), str(sample.ifindex))
        self.recent_drops.append({
            "time": now, "verdict": kind, "proto": protocol, "src_mac": frame.src_mac, "dst_mac": frame.dst_mac,
            "src_ip": frame.src_ip or "", "sport": frame.sport, "dst_ip": frame.dst_ip or "", "dport": frame.dport,
            "vlan": frame.vlan, "port": port, "src_segment": src_segment, "dst_segment": dst_segment, "rule": rule,
            "reason": sample.reason.name, "generation": sample.generation,
        })
        self.events.emit(kind, Severity.warning if kind == "drop" else Severity.notice,
                         f"{kind} {protocol} {ends} ({src_segment} -> {dst_segment}, {sample.reason.name}, rule {rule})",
                         src_mac=frame.src_mac, dst_mac=frame.dst_mac, src_ip=frame.src_ip or "", dst_ip=frame.dst_ip or "",
                         proto=frame.proto, sport=frame.sport, dport=frame.dport, vlan=frame.vlan, port=port,
                         src_segment=src_segment, dst_segment=dst_segment, rule=rule, reason=sample.reason.name, generation=sample.generation)

    # ---- control requests ----

    def handle(self, req: dict[str, Any], uid: int) -> Any:
        op = req["op"]
        if op == "status":
            return self.status()
        if op == "devices":
            return self.inventory.summaries()
        if op == "flows":
            return self.flows(int(req.get("top", 20)))
        if op == "drops":
            return self.drops(req.get("match"), int(req.get("last", 50)))
        if op == "policy_diff":
            candidate = config_mod.load(Path(req["path"])) if req.get("path") else config_mod.load(self.config_path)
            return describe_changes(self.config, candidate, self.inventory.placement_classes(), self.inventory.live_pins(self.config))
        if op == "policy_apply":
            return self.policy_apply(Path(req["path"]) if req.get("path") else None, uid, req.get("confirm_within"), str(req.get("reason", "")))
        if op == "policy_confirm":
            if self.pending is None:
                raise ValueError("no policy apply waits for confirmation")
            self.audit.append("policy confirm", uid, str(req.get("reason", "")), {"generation": self.pending.generation})
            self.pending = None
            return {"confirmed": True}
        if op == "exception_add":
            fields = {k: req.get(k) for k in ("id", "mac", "segment", "src", "dst", "proto")}
            ports = tuple(tuple(pair) for pair in req.get("ports") or ())
            return self.add_exception(PolicyException(expires_at=self.clock() + float(req["expires_in"]), reason=str(req.get("reason", "")), uid=uid, ports=ports, **fields))  # type: ignore[arg-type]
        if op == "exception_remove":
            removed = self.exceptions.remove(str(req["id"]))
            self.exceptions.save()
            self.apply(f"exception {removed.id} removed")
            self.audit.append("exception remove", uid, str(req.get("reason", "")), {"exception": removed.describe()})
            return {"removed": removed.describe()}
        if op == "exception_list":
            return [e.describe() for e in self.exceptions.items]
        if op == "import_assets":
            assets = parse_assets(str(req["csv"]), set(self.inventory.classifier.catalog.classes), str(req.get("source", "<csv>")))
            pins = self.inventory.live_pins(self.config)  # once, not per row
            for asset in assets:  # all or nothing: checked before any is pinned
                try:
                    self._check_placement(asset.mac, None, asset.device_class, pins)
                except ConfigError as exc:
                    raise ConfigError(f"{req.get('source', '<csv>')}: {asset.mac}: {exc}") from None
            disagreements = import_assets(self.inventory, assets)
            self.audit.append("asset import", uid, str(req.get("reason", "")), {"source": req.get("source"), "devices": len(assets), "disagreements": [d.line() for d in disagreements]})
            self.apply(f"asset import of {len(assets)} devices")
            return {"imported": len(assets), "disagreements": [d.line() for d in disagreements]}
        if op == "pin":
            segment = req.get("segment")
            if segment is not None and segment not in self.config.segments and segment not in config_mod.PSEUDO_SEGMENTS:
                raise ConfigError(f"unknown segment {segment!r}")
            self._check_placement(str(req["mac"]), segment, req.get("class"))
            device = self.inventory.pin(req["mac"], device_class=req.get("class"), segment=segment)
            self.audit.append("pin", uid, str(req.get("reason", "")), {"mac": device.mac, "class": req.get("class"), "segment": segment})
            self.apply(f"pin of {device.mac}")
            return device.summary()
        raise ValueError(f"unknown request {op!r}")

    def policy_apply(self, path: Path | None, uid: int, confirm_within: float | None, reason: str) -> dict[str, Any]:
        """Apply a policy file (or reload ours); with confirm_within, revert unless confirmed in time."""
        previous, previous_path = self.config, self.config_path
        candidate = config_mod.load(path or self.config_path)
        changes = describe_changes(previous, candidate, self.inventory.placement_classes(), self.inventory.live_pins(previous))
        record = self.reload(path)
        details: dict[str, Any] = {"path": str(path or previous_path), "generation": record.generation, "changes": changes}
        if confirm_within:
            self.pending = PendingConfirmation(self.clock() + float(confirm_within), record.generation, previous, previous_path, uid)
            details["confirm_within_s"] = float(confirm_within)
        if self.config_path.resolve() != self.startup_path.resolve():
            details["restart_loads"] = str(self.startup_path)
        self.audit.append("policy apply", uid, reason, details)
        return {**record.__dict__, "confirm_by": self.pending.deadline if confirm_within and self.pending else None,
                "restart_loads": details.get("restart_loads")}

    def _retire_expired_exceptions(self) -> None:
        gone = self.exceptions.expire()
        self.exceptions.save()
        try:
            self.apply(f"{len(gone)} exceptions expired")
        except (ConfigError, OSError) as exc:
            log.error("exceptions expired, but the policy could not be applied: %s", exc)
        for exception in gone:
            log.info("exception expired: %s", exception.describe())
            self.audit.append("exception expired", exception.uid, exception.reason, {"exception": exception.describe()})

    def _check_placement(self, mac: str, segment: str | None, device_class: str | None = None, pins: dict[str, str] | None = None) -> None:
        """ConfigError when a person would place a life-critical device in an enforcing segment without the flag.

        Without a segment, the device stays where a pin or a segment's macs put it (or goes to its class's)."""
        mac = mac.lower()
        known = self.inventory.devices.get(mac)
        device_class = device_class or (known.device_class if known is not None else None)
        if device_class is None:
            return
        if pins is None:
            pins = self.inventory.live_pins(self.config)
        segment = segment or device_segments(self.config, {mac: device_class}, pins).get(mac)
        if segment is None:
            return
        problem = config_mod.placement_problem(self.config, segment, device_class, self.inventory.classifier.catalog.criticality)
        if problem:
            raise ConfigError(problem)

    def add_exception(self, exception: PolicyException) -> dict[str, Any]:
        validate(exception, self.config)
        if exception.is_device and exception.mac and exception.segment:
            self._check_placement(exception.mac, exception.segment)
        self.exceptions.add(exception)
        try:
            self.apply(f"exception {exception.id}")
        except (ConfigError, OSError):
            self.exceptions.remove(exception.id)  # it does not compile: nothing changes
            raise
        self.exceptions.save()
        self.audit.append("exception add", exception.uid, exception.reason, {"exception": exception.describe()})
        return {"exception": exception.describe()}

    def _revert_unconfirmed(self) -> None:
        pending, self.pending = self.pending, None
        assert pending is not None
        try:
            record = self.apply("revert: the apply was not confirmed in time", pending.previous, self._port_indexes(pending.previous))
        except (ConfigError, OSError) as exc:
            log.error("could not revert the unconfirmed policy: %s", exc)
            return
        self.config_path = pending.previous_path
        log.warning("policy generation %d was not confirmed in time: reverted to %s (generation %d)", pending.generation, pending.previous_path, record.generation)
        self.audit.append("policy revert", pending.uid, "not confirmed in time", {"reverted_generation": pending.generation, "generation": record.generation, "path": str(pending.previous_path)})

    def status(self) -> dict[str, Any]:
        assert self.dataplane is not None
        totals = {verdict.name: 0 for verdict in abi.Verdict}
        for (verdict, _), value in self.dataplane.stats().items():
            totals[verdict.name] += value.packets
        return {
            "bridge": self.config.bridge,
            "config": str(self.config_path),
            "generation": self.dataplane.active_generation(),
            "break_glass": self.dataplane.break_glass(),
            "attachments": [a.__dict__ for a in self.attachments],
            "pin_dir": str(self.loader.pin_dir),
            "devices": len(self.inventory.devices),
            "samples": self.xray.samples,
            "packets": totals,
            "pressure": {p.name: n for p, n in self.dataplane.pressure().items()},
            "last_apply": self.last_apply.__dict__ if self.last_apply else None,
            "awaiting_confirmation_until": self.pending.deadline if self.pending else None,
            "exceptions": len(self.exceptions.items),
            "exceptions_expired": self.exceptions.expired_total,
            "enforcing": dict(self.enforcing),
            "ports_reattached": self.reattached,
            "events": {"destinations": self.events.destinations, "sent": dict(self.events.counters.sent), "dropped": {f"{d}/{why}": n for (d, why), n in self.events.counters.dropped.items()}},
            "uptime_s": round(self.clock() - self.started, 1),
        }

    def flows(self, top: int) -> list[dict[str, Any]]:
        assert self.dataplane is not None
        return [_flow_row(key, entry, self.config, self.rule_names) for key, entry in self.dataplane.top_flows(top)]

    def drops(self, match: str | None, last: int) -> list[dict[str, Any]]:
        """The newest `last` drop and audit records (one per flow and minute), oldest first; with match, only
        those where a MAC, an address, a segment or the rule equals it."""
        fields = ("src_mac", "dst_mac", "src_ip", "dst_ip", "src_segment", "dst_segment", "rule")
        rows = [r for r in self.recent_drops if match is None or match.lower() in (str(r[f]).lower() for f in fields)]
        return rows[-last:] if last > 0 else []


def _flow_row(key: Any, entry: Any, cfg: Config, rule_names: dict[int, str]) -> dict[str, Any]:
    width = 4 if key.family == abi.const("FAMILY_IPV4") else 16
    lo = ipaddress.ip_address(bytes(key.addr_lo)[:width])
    hi = ipaddress.ip_address(bytes(key.addr_hi)[:width])
    port_lo, port_hi = (int.from_bytes(p.to_bytes(2, "little"), "big") for p in (key.port_lo, key.port_hi))
    mac_lo, mac_hi = (":".join(f"{b:02x}" for b in bytes(mac)) for mac in (entry.mac_lo, entry.mac_hi))
    initiator, responder = ((lo, port_lo, mac_lo), (hi, port_hi, mac_hi)) if entry.initiator_is_lo else ((hi, port_hi, mac_hi), (lo, port_lo, mac_lo))
    return {
        "proto": key.proto,
        "vlan": key.vlan,
        "initiator": f"{initiator[0]}:{initiator[1]}" if width == 4 else f"[{initiator[0]}]:{initiator[1]}",
        "responder": f"{responder[0]}:{responder[1]}" if width == 4 else f"[{responder[0]}]:{responder[1]}",
        "initiator_mac": initiator[2],
        "responder_mac": responder[2],
        "src_segment": cfg.segment_name(entry.src_segment),
        "dst_segment": cfg.segment_name(entry.dst_segment),
        "verdict": abi.Verdict(entry.verdict).name,
        "rule": rule_names.get(entry.rule_id, "-"),
        "packets": entry.packets[0] + entry.packets[1],
        "bytes": entry.bytes[0] + entry.bytes[1],
    }
