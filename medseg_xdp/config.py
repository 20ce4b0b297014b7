"""The TOML configuration: bridge ports, settings, rails, segments, rules.

docs/configuration.md is the reference of every key; the example below is a valid policy.

This is the format `medseg-xdp trace` reads; the policy issue extends it
(device classes, VLAN segments, stable rule ids from the inventory) without
replacing it. Every error names the file, the line where it can, and the path of the bad
value, e.g. ``policy.toml:41: rules[3].to: unknown segment 'pacs'``.

Membership precedence, most specific first: a pin, a segment's `macs`, its
`classes` (through the inventory); for hosts known by address: prefixes on
the frame's VLAN (longest first), then whole VLANs (`vlans`), then prefixes
valid on any VLAN (longest first); else `unassigned`. A whole VLAN beats an
any-VLAN prefix on purpose: a host on a device VLAN stays in that VLAN's
segment whatever address it claims.

    [bridge]
    name = "br0"
    ports = ["portA", "portB", "uplink"]
    pvid = { portA = 20 }            # VLAN of untagged frames, per port
    allowed_vlans = { portB = [20, 30] }  # the only tags a port takes, and no second tag (untagged frames always enter)

    [settings]
    sample_first_packets = 8          # K
    sample_one_in_n = 1000            # N (0: off)
    events_per_sec = 100              # drop-event and flowless samples
    events_burst = 200
    dhcp_samples_per_sec = 500        # DHCP samples (each CPU; 0: none): a DHCP flood cannot fill the ring
    dhcp_samples_burst = 200
    snaplen = 512
    unknown_ethertype = "pass"        # or "drop"
    tcp_idle_timeout = 7200           # seconds a flow may idle before it is judged anew (0: never);
    idle_timeout = 300                # an address handed to another device inherits no flows

    [rails]
    dhcp_servers = ["10.0.0.1"]       # when set, other servers' replies meet policy (list DHCP relays too)
    routers = ["fe80::1"]             # when set, other routers' RAs meet policy
    trusted_ports = ["uplink"]        # when set, server replies and RAs count only through these ports

    [segments.pumps]
    mode = "monitor"                  # or "enforce"
    default = "drop"                  # the segment's default action
    life_critical = true
    macs = ["00:1a:2b:00:00:01"]
    prefixes = ["10.20.0.0/16"]
    vlan = 20                         # the prefixes hold on this VLAN only
    port = "portA"                    # anti-spoofing: seen only behind this port

    [segments.pumps-by-class]
    classes = ["infusion_pump"]       # devices the classifier (or a pin) puts in these classes
    vlans = [20]                      # everything on VLAN 20 that nothing more specific claims
    allow_enforce_life_critical = false  # enforce mode on life-critical classes must be explicit

    [segments.pump-server]
    prefixes = ["10.30.0.0/24"]       # the drug-library server; mode and default: monitor, allow

    [[pins]]                          # a person's word: never changed automatically
    mac = "00:1a:2b:00:00:09"
    segment = "pumps"
    class = "infusion_pump"           # optional

    [tables]                          # map capacities (a change means new pinned maps)
    flows = 65536
    pair_segments = 64                # segments a policy can have, the 3 pseudo-segments included

    [daemon]
    state_dir = "/var/lib/medseg-xdp"
    on_stop = "detach"                # or "keep": leave enforcement running on SIGTERM
    learning_days = 14
    max_devices = 65536               # inventory size; a MAC flood's unknown devices are forgotten first
    reclassify = "report"             # a classified device that looks like another class is reported
                                      # (audit, SIEM, alert), not moved; "move" moves it
    metrics = "127.0.0.1:9479"        # Prometheus endpoint, read at start; another address must be
                                      # set explicitly ("0.0.0.0:9479", "[::1]:9479"); "" turns it off

    [events]                          # security events for a SIEM (medseg_xdp.events); both off by default
    syslog = "udp://127.0.0.1:514"    # RFC 5424: udp://host:port, tcp://host:port (octet counting), unix:/dev/log
    json_lines = "/var/log/medseg-xdp/events.jsonl"
    facility = "local4"
    drop_events_per_minute = 60       # drop and audit events; the rest are counted, not sent

    [[rules]]
    id = "pumps-to-server"            # stable name: counters and metrics follow it across edits
    from = "pumps"
    to = "pump-server"
    proto = "tcp"                     # omit proto (and ports): the pair's default
    ports = [443, "8000-8099"]        # omit: any port; for ICMP, ICMP types
    action = "allow"                  # allow | drop | audit
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg_xdp import abi
from medseg_xdp.classify import LIFE_CRITICAL, load_catalog

PSEUDO_SEGMENTS = {
    "unassigned": abi.const("SEGMENT_UNASSIGNED"),
    "multicast": abi.const("SEGMENT_MULTICAST"),
    "broadcast": abi.const("SEGMENT_BROADCAST"),
}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}


def protocol_name(number: int) -> str:
    """'tcp' for 6; the number itself for protocols without a config name."""
    return next((name for name, value in PROTOCOLS.items() if value == number), str(number))
ACTIONS = {action.name: action for action in abi.Action}
# A segment's `management` value -> which flows with it pass as plumbing: none, the ones it opens, or every one.
MANAGEMENT = {False: "", "outbound": "outbound", True: "both"}
MODES = {mode.name: mode for mode in abi.Mode}
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SEGMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
MAX_SEGMENT_ID = abi.const("SEGMENT_MULTICAST") - 1


class ConfigError(ValueError):
    """A configuration that must not be applied; the message says where and why."""


@dataclass(frozen=True)
class Segment:
    name: str
    id: int
    mode: abi.Mode = abi.Mode.monitor
    default: abi.Action = abi.Action.allow
    life_critical: bool = False
    management: str = ""  # a MANAGEMENT value: "", "outbound" or "both"
    macs: tuple[str, ...] = ()
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    vlan: int = 0
    port: str | None = None
    classes: tuple[str, ...] = ()
    vlans: tuple[int, ...] = ()
    allow_enforce_life_critical: bool = False


@dataclass(frozen=True)
class Pin:
    mac: str
    segment: str | None = None
    device_class: str | None = None


@dataclass(frozen=True)
class TableSizes:
    """Map capacities, compiled into the program; part of the pinned layout."""

    flows: int = 65536
    devices: int = 16384
    prefixes: int = 4096
    rules: int = 16384
    segments: int = 1024
    frags: int = 4096
    denied: int = 8192  # recent denied judgements, so a repeated dropped packet costs a lookup
    ring_pages: int = 256
    # Segment-pair counters are a per-CPU array of pair_segments^2 * 3 (verdicts) counters of
    # 16 bytes: 196 KB per CPU at 64. It bounds the segments (pseudo ones included) a policy can have.
    pair_segments: int = abi.const("PAIR_SEGMENTS_DEFAULT")


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: Path = Path("/var/lib/medseg-xdp")
    on_stop: str = "detach"  # or "keep"
    learning_days: int = 14
    metrics: str = "127.0.0.1:9479"  # host:port of the Prometheus endpoint; "" turns it off
    max_devices: int = 65536  # the inventory's size; a MAC flood's unknown devices are forgotten first
    reclassify: str = "report"  # a classified device that looks like another class: "report", or "move" it

    def metrics_listen(self) -> tuple[str, int] | None:
        """(address, port) the metrics endpoint binds, or None when it is off."""
        if not self.metrics:
            return None
        host, _, port = self.metrics.rpartition(":")
        return host.strip("[]"), int(port)


SYSLOG_FACILITIES = {name: code for code, name in enumerate(
    "kern user mail daemon auth syslog lpr news uucp cron authpriv ftp ntp audit alert clock".split() + [f"local{n}" for n in range(8)]
)}


@dataclass(frozen=True)
class EventSettings:
    syslog: str = ""  # udp://host:port, tcp://host:port or unix:/path; "" off
    json_lines: Path | None = None
    facility: int = SYSLOG_FACILITIES["local4"]
    drop_events_per_minute: int = 60
    queue: int = 10000  # events waiting per destination while it is slow or down

    @property
    def enabled(self) -> bool:
        return bool(self.syslog) or self.json_lines is not None


@dataclass(frozen=True)
class Rule:
    name: str
    src: str
    dst: str
    action: abi.Action
    proto: int | None = None  # None: the segment pair's default
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; empty: any

    @property
    def is_pair_default(self) -> bool:
        return self.proto is None


# Every key the format has, by table ("" the top level; "segments" each [segments.NAME], "rules" and "pins"
# each entry): the parser refuses any other, and docs/configuration.md documents exactly these.
KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"bridge", "settings", "rails", "segments", "rules", "pins", "tables", "daemon", "events"}),
    "bridge": frozenset({"name", "ports", "pvid", "allowed_vlans"}),
    "settings": frozenset({"sample_first_packets", "sample_one_in_n", "events_per_sec", "events_burst", "dhcp_samples_per_sec",
                           "dhcp_samples_burst", "snaplen", "unknown_ethertype", "tcp_idle_timeout", "idle_timeout"}),
    "rails": frozenset({"dhcp_servers", "routers", "trusted_ports"}),
    "segments": frozenset({"id", "mode", "default", "life_critical", "management", "macs", "prefixes", "vlan", "port", "classes",
                           "vlans", "allow_enforce_life_critical"}),
    "rules": frozenset({"id", "from", "to", "proto", "ports", "action"}),
    "pins": frozenset({"mac", "segment", "class"}),
    "tables": frozenset(TableSizes.__dataclass_fields__),
    "daemon": frozenset({"state_dir", "on_stop", "learning_days", "metrics", "max_devices", "reclassify"}),
    "events": frozenset({"syslog", "json_lines", "facility", "drop_events_per_minute", "queue"}),
}


# The token buckets (BUDGET_*) of the samples that no flow paces, by their [settings] keys: (rate, burst).
SAMPLE_BUDGET_KEYS = {
    abi.const("BUDGET_EVENTS"): ("events_per_sec", "events_burst"),
    abi.const("BUDGET_DHCP"): ("dhcp_samples_per_sec", "dhcp_samples_burst"),
}


@dataclass(frozen=True)
class Settings:
    sample_first_packets: int = 8
    sample_one_in_n: int = 1000
    events_per_sec: int = 100
    events_burst: int = 200
    # DHCP is the richest fingerprint and rare (a lease, a renewal): sampled up to this rate per CPU, so that a
    # DHCP flood (starvation, a DHCP fuzzer) cannot fill the ring buffer and blind the X-ray to everything else
    dhcp_samples_per_sec: int = 500
    dhcp_samples_burst: int = 200
    snaplen: int = abi.const("SAMPLE_SNAPLEN")
    drop_unknown_ethertype: bool = False
    tcp_idle_timeout: int = 7200  # seconds; TCP resumes through mid-stream pickup
    idle_timeout: int = 300

    @property
    def sample_budgets(self) -> dict[int, tuple[int, int]]:
        """(rate per second, burst) of each token bucket (BUDGET_*) of the samples that no flow paces."""
        return {budget: (getattr(self, rate), getattr(self, burst)) for budget, (rate, burst) in SAMPLE_BUDGET_KEYS.items()}


@dataclass(frozen=True)
class Config:
    bridge: str = "br0"
    ports: tuple[str, ...] = ()
    pvid: dict[str, int] = field(default_factory=dict)
    allowed_vlans: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per port; absent: any tag
    settings: Settings = Settings()
    dhcp_servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    routers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    trusted_ports: tuple[str, ...] = ()  # where DHCP server replies and RAs may enter; empty: any port
    segments: dict[str, Segment] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    pins: tuple[Pin, ...] = ()
    tables: TableSizes = TableSizes()
    daemon: DaemonSettings = DaemonSettings()
    events: EventSettings = EventSettings()
    source: str = field(default="<config>", compare=False)  # the file, for errors found after parsing

    def segment_id(self, name: str) -> int:
        return PSEUDO_SEGMENTS[name] if name in PSEUDO_SEGMENTS else self.segments[name].id

    def segment_name(self, segment_id: int) -> str:
        for name, number in PSEUDO_SEGMENTS.items():
            if number == segment_id:
                return name
        for segment in self.segments.values():
            if segment.id == segment_id:
                return segment.name
        return f"segment-{segment_id}"


class _Reader:
    """Typed access to one TOML document, with the line and path in every error."""

    def __init__(self, source: str, text: str = "") -> None:
        self.source = source
        self.lines = text.splitlines()

    def fail(self, path: str, message: str) -> ConfigError:
        line = self.line_of(path)
        return ConfigError(f"{self.source}{f':{line}' if line else ''}: {path}: {message}")

    def line_of(self, path: str) -> int | None:
        """The line a path was written on, found in the text (tomllib keeps no positions)."""
        parts = path.split(".")
        indexed = re.fullmatch(r"(\w+)\[(\d+)\]", parts[0])
        if indexed:
            header = re.compile(rf"^\s*\[\[\s*{indexed.group(1)}\s*\]\]")
            wanted, rest = int(indexed.group(2)), parts[1:]
        elif parts[0] == "segments" and len(parts) > 1:
            header = re.compile(rf"^\s*\[\s*segments\.{re.escape(parts[1])}\s*\]")
            wanted, rest = 0, parts[2:]
        else:
            header = re.compile(rf"^\s*\[\s*{re.escape(parts[0])}\s*\]")
            wanted, rest = 0, parts[1:]
        starts = [number for number, text in enumerate(self.lines) if header.match(text)]
        if len(starts) <= wanted:
            return None
        start = starts[wanted]
        if rest:
            name = re.sub(r"\[\d+\]$", "", rest[0])
            key = re.compile(rf"^\s*{re.escape(name)}\s*=")
            for number in range(start + 1, len(self.lines)):
                if self.lines[number].lstrip().startswith("["):
                    break
                if key.match(self.lines[number]):
                    return number + 1
        return start + 1

    def table(self, data: dict[str, Any], key: str, path: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(path, "must be a table")
        return value

    def get(self, data: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = data.get(key, default)
        if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = " or ".join(t.__name__ for t in _as_tuple(kind))
            raise self.fail(path, f"must be {names}, not {type(value).__name__}")
        return value

    def integer(self, data: dict[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
        value = self.get(data, key, path, int, default)
        if not low <= value <= high:
            raise self.fail(path, f"{value} is out of range {low}..{high}")
        return value

    def choice(self, data: dict[str, Any], key: str, path: str, choices: dict[str, Any], default: Any) -> Any:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            raise self.fail(path, f"{value!r} is not one of {', '.join(choices)}")
        return choices[value]

    def unknown_keys(self, data: dict[str, Any], allowed: frozenset[str], path: str) -> None:
        extra = sorted(set(data) - allowed)
        if extra:
            raise self.fail(f"{path}.{extra[0]}" if path else extra[0], "unknown key")


def _management(r: _Reader, body: dict[str, Any], path: str, segment: str) -> str:
    value = body.get("management", False)
    if not isinstance(value, (bool, str)) or value not in MANAGEMENT:
        raise r.fail(path, f'must be true, false or "outbound", not {value!r}')
    if value == "outbound" and segment in ("multicast", "broadcast"):
        # a group MAC is only ever a destination: these pseudo-segments open nothing
        raise r.fail(path, f'the pseudo-segment {segment!r} opens no flow: "outbound" would do nothing (true passes every flow to it)')
    return MANAGEMENT[value]


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def load(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    r = _Reader(source, text)
    r.unknown_keys(data, KEYS[""], "")

    bridge = r.table(data, "bridge", "bridge")
    r.unknown_keys(bridge, KEYS["bridge"], "bridge")
    ports = tuple(_strings(r, bridge, "ports", "bridge.ports"))
    pvid_table = r.table(bridge, "pvid", "bridge.pvid")
    pvid = {}
    for port, _ in pvid_table.items():
        if port not in ports:
            raise r.fail(f"bridge.pvid.{port}", "not a port listed in bridge.ports")
        pvid[port] = r.integer(pvid_table, port, f"bridge.pvid.{port}", 0, 1, 4094)
    vlans_table = r.table(bridge, "allowed_vlans", "bridge.allowed_vlans")
    allowed_vlans = {}
    for port, vlans in vlans_table.items():
        path = f"bridge.allowed_vlans.{port}"
        if port not in ports:
            raise r.fail(path, "not a port listed in bridge.ports")
        if not isinstance(vlans, list) or not vlans or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4094 for v in vlans):
            raise r.fail(path, "must be a non-empty list of VLAN ids 1..4094")
        allowed_vlans[port] = tuple(sorted(set(vlans)))

    settings = _settings(r, r.table(data, "settings", "settings"))
    rails = r.table(data, "rails", "rails")
    r.unknown_keys(rails, KEYS["rails"], "rails")
    dhcp_servers = tuple(_address(r, a, f"rails.dhcp_servers[{i}]") for i, a in enumerate(_strings(r, rails, "dhcp_servers", "rails.dhcp_servers")))
    routers = tuple(_address(r, a, f"rails.routers[{i}]") for i, a in enumerate(_strings(r, rails, "routers", "rails.routers")))
    trusted_ports = tuple(_strings(r, rails, "trusted_ports", "rails.trusted_ports"))
    for i, port in enumerate(trusted_ports):
        if port not in ports:
            raise r.fail(f"rails.trusted_ports[{i}]", f"{port!r} is not a port listed in bridge.ports")

    segments = _segments(r, r.table(data, "segments", "segments"), ports)
    _check_segment_vlans_enter(r, segments, ports, pvid, allowed_vlans)
    rules_data = data.get("rules", [])
    if not isinstance(rules_data, list):
        raise r.fail("rules", "must be an array of tables ([[rules]])")
    known = set(segments) | set(PSEUDO_SEGMENTS)
    rules = tuple(_rule(r, item, index, known) for index, item in enumerate(rules_data))
    names = [rule.name for rule in rules]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise r.fail(f"rules[{index}].id", f"duplicate rule id {name!r}")
    pins = _pins(r, data.get("pins", []), segments)
    return Config(
        bridge=_bridge_name(r, r.get(bridge, "name", "bridge.name", str, "br0")),
        ports=ports,
        pvid=pvid,
        allowed_vlans=allowed_vlans,
        settings=settings,
        dhcp_servers=dhcp_servers,
        routers=routers,
        trusted_ports=trusted_ports,
        segments=segments,
        rules=rules,
        pins=pins,
        tables=_tables(r, r.table(data, "tables", "tables")),
        daemon=_daemon(r, r.table(data, "daemon", "daemon")),
        events=_events(r, r.table(data, "events", "events")),
        source=source,
    )


def _check_segment_vlans_enter(r: _Reader, segments: dict[str, Segment], ports: tuple[str, ...], pvid: dict[str, int],
                               allowed_vlans: dict[str, tuple[int, ...]]) -> None:
    """A segment's VLAN must be able to enter its port (or, unbound, some port); otherwise every frame of it is
    dropped as vlan_not_allowed, a typo that cuts a whole segment off."""
    def enters(port: str, vlan: int) -> bool:
        return port not in allowed_vlans or vlan in allowed_vlans[port] or pvid.get(port) == vlan

    for segment in segments.values():
        placed = [("vlan", segment.vlan)] if segment.vlan else []
        placed += [(f"vlans[{index}]", vlan) for index, vlan in enumerate(segment.vlans)]
        for key, vlan in placed:
            path = f"segments.{segment.name}.{key}"
            if segment.port is not None and not enters(segment.port, vlan):
                raise r.fail(path, f"VLAN {vlan} cannot enter the segment's port {segment.port!r}: it is not in "
                                   f"bridge.allowed_vlans.{segment.port} and not the port's PVID")
            if segment.port is None and ports and not any(enters(port, vlan) for port in ports):
                raise r.fail(path, f"VLAN {vlan} enters no port: every port has bridge.allowed_vlans, none lists it, "
                                   f"and it is no port's PVID")


def _bridge_name(r: _Reader, name: str) -> str:
    """The bridge's name is a directory of the pinned maps (/sys/fs/bpf/medseg/<name>/): an interface-like name."""
    if not _BRIDGE_NAME.match(name):
        raise r.fail("bridge.name", f"{name!r}: letters, digits, '_', '.', '-', at most 15, not starting with '.' or '-'")
    return name


def _pins(r: _Reader, data: Any, segments: dict[str, Segment]) -> tuple[Pin, ...]:
    if not isinstance(data, list):
        raise r.fail("pins", "must be an array of tables ([[pins]])")
    catalog = load_catalog()
    classes = catalog.classes
    pins = []
    seen: set[str] = set()
    for index, body in enumerate(data):
        path = f"pins[{index}]"
        if not isinstance(body, dict):
            raise r.fail(path, "must be a table")
        r.unknown_keys(body, KEYS["pins"], path)
        mac = _mac(r, body.get("mac"), f"{path}.mac")
        if mac in seen:
            raise r.fail(f"{path}.mac", f"{mac} is pinned twice")
        seen.add(mac)
        segment = r.get(body, "segment", f"{path}.segment", str, None)
        if segment is not None and segment not in segments and segment not in PSEUDO_SEGMENTS:
            raise r.fail(f"{path}.segment", f"unknown segment {segment!r}")
        device_class = r.get(body, "class", f"{path}.class", str, None)
        if device_class is not None and device_class not in classes:
            raise r.fail(f"{path}.class", f"unknown device class {device_class!r} (one of {', '.join(classes)})")
        if segment is None and device_class is None:
            raise r.fail(path, "a pin names a segment, a class, or both")
        # a pin without a segment leaves the device where a segment's macs put it
        placed_in = segment or next((s.name for s in segments.values() if mac in s.macs), "")
        problem = _placement_problem(segments.get(placed_in), placed_in, device_class or "", catalog.criticality)
        if problem:
            raise r.fail(path, problem)
        pins.append(Pin(mac, segment, device_class))
    return tuple(pins)


def _tables(r: _Reader, data: dict[str, Any]) -> TableSizes:
    defaults = TableSizes()
    r.unknown_keys(data, KEYS["tables"], "tables")
    values = {name: r.integer(data, name, f"tables.{name}", getattr(defaults, name), 1, 1 << 24) for name in defaults.__dataclass_fields__}
    if values["ring_pages"] & (values["ring_pages"] - 1):
        raise r.fail("tables.ring_pages", f"{values['ring_pages']} is not a power of two")
    if not 4 <= values["pair_segments"] <= 256:
        raise r.fail("tables.pair_segments", f"{values['pair_segments']} is out of range 4..256 (the pair counters grow with its square)")
    return TableSizes(**values)


def _daemon(r: _Reader, data: dict[str, Any]) -> DaemonSettings:
    r.unknown_keys(data, KEYS["daemon"], "daemon")
    defaults = DaemonSettings()
    return DaemonSettings(
        state_dir=Path(r.get(data, "state_dir", "daemon.state_dir", str, str(defaults.state_dir))),
        on_stop=r.choice(data, "on_stop", "daemon.on_stop", {"detach": "detach", "keep": "keep"}, defaults.on_stop),
        learning_days=r.integer(data, "learning_days", "daemon.learning_days", defaults.learning_days, 1, 365),
        max_devices=r.integer(data, "max_devices", "daemon.max_devices", defaults.max_devices, 100, 10_000_000),
        reclassify=r.choice(data, "reclassify", "daemon.reclassify", {"report": "report", "move": "move"}, defaults.reclassify),
        metrics=_listen_address(r, r.get(data, "metrics", "daemon.metrics", str, defaults.metrics), "daemon.metrics"),
    )


def _events(r: _Reader, data: dict[str, Any]) -> EventSettings:
    r.unknown_keys(data, KEYS["events"], "events")
    defaults = EventSettings()
    syslog = r.get(data, "syslog", "events.syslog", str, "")
    network = re.fullmatch(r"(udp|tcp)://(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})", syslog)
    if syslog and not (network and 1 <= int(network.group(3)) <= 65535 or re.fullmatch(r"unix:/\S+", syslog)):
        raise r.fail("events.syslog", f'{syslog!r} is not udp://host:port, tcp://host:port or unix:/path (or "" for off)')
    json_lines = r.get(data, "json_lines", "events.json_lines", str, "")
    return EventSettings(
        syslog=syslog,
        json_lines=Path(json_lines) if json_lines else None,
        facility=r.choice(data, "facility", "events.facility", SYSLOG_FACILITIES, defaults.facility),
        drop_events_per_minute=r.integer(data, "drop_events_per_minute", "events.drop_events_per_minute", defaults.drop_events_per_minute, 0, 100000),
        queue=r.integer(data, "queue", "events.queue", defaults.queue, 1, 1000000),
    )


def _listen_address(r: _Reader, text: str, path: str) -> str:
    """An IP address and a port ("127.0.0.1:9479", "[::1]:9479"), or "" for off."""
    if not text:
        return ""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
    try:
        if match is None:
            raise ValueError
        address = ipaddress.ip_address(match.group(1) or match.group(3))
        if (address.version == 6) != bool(match.group(1)) or not 1 <= int(match.group(2) or match.group(4)) <= 65535:
            raise ValueError
    except ValueError:
        raise r.fail(path, f'{text!r} is not address:port (e.g. "127.0.0.1:9479" or "[::1]:9479"), or "" for off') from None
    return text


def _mac(r: _Reader, value: Any, path: str) -> str:
    """A device's MAC: a group (multicast or broadcast) MAC is none, and the program places it in a pseudo-segment."""
    if not isinstance(value, str) or not _MAC.match(value.lower().replace("-", ":")):
        raise r.fail(path, f"{value!r} is not a MAC address")
    if int(value[:2], 16) & 1:
        raise r.fail(path, f"{value} is a group (multicast or broadcast) MAC: no device sends from it, and as a destination it is "
                           "the pseudo-segment 'multicast' or 'broadcast'")
    return value.lower().replace("-", ":")


def _strings(r: _Reader, data: dict[str, Any], key: str, path: str) -> list[str]:
    values = r.get(data, key, path, list, [])
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise r.fail(f"{path}[{index}]", "must be a string")
    return values


def _address(r: _Reader, text: str, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise r.fail(path, f"{text!r} is not an IP address") from None


def placement_problem(config: Config, segment: str, device_class: str, criticality: Callable[[str], str]) -> str | None:
    """Why a person may not place a device of device_class in segment (a pin, a device exception), or None.

    The rule for segments of life-critical classes, for one device: enforcing on it must be explicit."""
    return _placement_problem(config.segments.get(segment), segment, device_class, criticality)


def _placement_problem(target: Segment | None, segment: str, device_class: str, criticality: Callable[[str], str]) -> str | None:
    if target is None or target.mode != abi.Mode.enforce or criticality(device_class) != LIFE_CRITICAL:
        return None
    if target.life_critical and target.allow_enforce_life_critical:
        return None
    return (f"segment {segment!r} enforces, and a device of class {device_class} is life-critical: place it in a "
            f"monitor segment, or mark {segment!r} life_critical = true with allow_enforce_life_critical = true")


def _settings(r: _Reader, data: dict[str, Any]) -> Settings:
    r.unknown_keys(data, KEYS["settings"], "settings")
    defaults = Settings()
    u32 = 2**32 - 1
    settings = Settings(
        sample_first_packets=r.integer(data, "sample_first_packets", "settings.sample_first_packets", defaults.sample_first_packets, 0, u32),
        sample_one_in_n=r.integer(data, "sample_one_in_n", "settings.sample_one_in_n", defaults.sample_one_in_n, 0, u32),
        events_per_sec=r.integer(data, "events_per_sec", "settings.events_per_sec", defaults.events_per_sec, 0, u32),
        events_burst=r.integer(data, "events_burst", "settings.events_burst", defaults.events_burst, 0, u32),
        dhcp_samples_per_sec=r.integer(data, "dhcp_samples_per_sec", "settings.dhcp_samples_per_sec", defaults.dhcp_samples_per_sec, 0, u32),
        dhcp_samples_burst=r.integer(data, "dhcp_samples_burst", "settings.dhcp_samples_burst", defaults.dhcp_samples_burst, 0, u32),
        snaplen=r.integer(data, "snaplen", "settings.snaplen", defaults.snaplen, 1, abi.const("SAMPLE_SNAPLEN")),
        drop_unknown_ethertype=r.choice(data, "unknown_ethertype", "settings.unknown_ethertype", {"pass": False, "drop": True}, False),
        tcp_idle_timeout=r.integer(data, "tcp_idle_timeout", "settings.tcp_idle_timeout", defaults.tcp_idle_timeout, 0, u32),
        idle_timeout=r.integer(data, "idle_timeout", "settings.idle_timeout", defaults.idle_timeout, 0, u32),
    )
    for rate, burst in SAMPLE_BUDGET_KEYS.values():
        if getattr(settings, rate) and not getattr(settings, burst):
            raise r.fail(f"settings.{burst}", f"0 would hold back every sample while {rate} lets some through: at least 1, or {rate} = 0")
    return settings


def _segments(r: _Reader, data: dict[str, Any], ports: tuple[str, ...]) -> dict[str, Segment]:
    segments: dict[str, Segment] = {}
    used_ids: dict[int, str] = {}
    owner_of_mac: dict[str, str] = {}
    owner_of_class: dict[str, str] = {}
    owner_of_vlan: dict[int, str] = {}
    owner_of_prefix: dict[tuple[int, Any], str] = {}
    catalog = load_catalog()
    next_id = 1
    for name, body in data.items():
        path = f"segments.{name}"
        if not isinstance(body, dict):
            raise r.fail(path, "must be a table")
        if not _SEGMENT_NAME.match(name):
            raise r.fail(path, "a segment name is letters, digits, '_', '.', '-' (at most 63)")
        r.unknown_keys(body, KEYS["segments"], path)
        if name in PSEUDO_SEGMENTS:
            number = PSEUDO_SEGMENTS[name]
            for key in ("id", "macs", "prefixes", "vlan", "port", "classes", "vlans"):
                if key in body:
                    raise r.fail(f"{path}.{key}", f"the pseudo-segment {name!r} takes only mode, default and flags")
        else:
            while next_id in used_ids:
                next_id += 1
            number = r.integer(body, "id", f"{path}.id", next_id, 1, MAX_SEGMENT_ID)
        if number in used_ids:
            raise r.fail(f"{path}.id", f"id {number} is already segment {used_ids[number]!r}")
        used_ids[number] = name
        macs = []
        for index, text in enumerate(_strings(r, body, "macs", f"{path}.macs")):
            mac = _mac(r, text, f"{path}.macs[{index}]")
            if mac in owner_of_mac:
                raise r.fail(f"{path}.macs[{index}]", f"{mac} is already in segment {owner_of_mac[mac]!r}")
            owner_of_mac[mac] = name
            macs.append(mac)
        prefixes = []
        vlan = r.integer(body, "vlan", f"{path}.vlan", 0, 0, 4094)
        for index, text in enumerate(_strings(r, body, "prefixes", f"{path}.prefixes")):
            try:
                prefix = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise r.fail(f"{path}.prefixes[{index}]", str(exc)) from None
            if (vlan, prefix) in owner_of_prefix:
                raise r.fail(f"{path}.prefixes[{index}]", f"{prefix} (VLAN {vlan or 'any'}) is already in segment {owner_of_prefix[(vlan, prefix)]!r}")
            owner_of_prefix[(vlan, prefix)] = name
            prefixes.append(prefix)
        port = r.get(body, "port", f"{path}.port", str, None)
        if port is not None and port not in ports:
            raise r.fail(f"{path}.port", f"{port!r} is not in bridge.ports")
        classes = _strings(r, body, "classes", f"{path}.classes")
        for index, device_class in enumerate(classes):
            if device_class not in catalog.classes:
                raise r.fail(f"{path}.classes[{index}]", f"unknown device class {device_class!r} (one of {', '.join(catalog.classes)})")
            if device_class in owner_of_class:
                raise r.fail(f"{path}.classes[{index}]", f"{device_class} is already in segment {owner_of_class[device_class]!r}")
            owner_of_class[device_class] = name
        vlans = r.get(body, "vlans", f"{path}.vlans", list, [])
        for index, whole_vlan in enumerate(vlans):
            if not isinstance(whole_vlan, int) or isinstance(whole_vlan, bool) or not 1 <= whole_vlan <= 4094:
                raise r.fail(f"{path}.vlans[{index}]", f"{whole_vlan!r} is not a VLAN id 1..4094")
            if whole_vlan in owner_of_vlan:
                raise r.fail(f"{path}.vlans[{index}]", f"VLAN {whole_vlan} is already segment {owner_of_vlan[whole_vlan]!r}")
            owner_of_vlan[whole_vlan] = name
        mode = r.choice(body, "mode", f"{path}.mode", MODES, abi.Mode.monitor)
        # life-critical by its classes, or because the config says so (a segment of MACs or prefixes)
        life_critical = any(catalog.criticality(c) == LIFE_CRITICAL for c in classes) or r.get(
            body, "life_critical", f"{path}.life_critical", bool, False)
        allow_enforce = r.get(body, "allow_enforce_life_critical", f"{path}.allow_enforce_life_critical", bool, False)
        if life_critical and mode == abi.Mode.enforce and not allow_enforce:
            raise r.fail(f"{path}.mode", "enforcing a segment of life-critical devices must be explicit: set allow_enforce_life_critical = true")
        segments[name] = Segment(
            name=name,
            id=number,
            mode=mode,
            default=r.choice(body, "default", f"{path}.default", ACTIONS, abi.Action.allow),
            life_critical=life_critical,
            management=_management(r, body, f"{path}.management", name),
            macs=tuple(macs),
            prefixes=tuple(prefixes),
            vlan=vlan,
            port=port,
            classes=tuple(classes),
            vlans=tuple(vlans),
            allow_enforce_life_critical=allow_enforce,
        )
    return segments


def _rule(r: _Reader, data: Any, index: int, known: set[str]) -> Rule:
    path = f"rules[{index}]"
    if not isinstance(data, dict):
        raise r.fail(path, "must be a table")
    r.unknown_keys(data, KEYS["rules"], path)
    for key in ("from", "to", "action"):
        if key not in data:
            raise r.fail(f"{path}.{key}", "missing")
    for key in ("from", "to"):
        if not isinstance(data[key], str) or data[key] not in known:
            raise r.fail(f"{path}.{key}", f"unknown segment {data[key]!r}")
    proto_value = data.get("proto")
    proto: int | None
    if proto_value is None:
        proto = None
    elif isinstance(proto_value, str) and proto_value in PROTOCOLS:
        proto = PROTOCOLS[proto_value]
    elif isinstance(proto_value, int) and not isinstance(proto_value, bool) and 0 <= proto_value <= 255:
        proto = proto_value
    else:
        raise r.fail(f"{path}.proto", f"{proto_value!r} is not one of {', '.join(PROTOCOLS)} or 0..255")
    ports = tuple(_port_range(r, value, f"{path}.ports[{i}]") for i, value in enumerate(r.get(data, "ports", f"{path}.ports", list, [])))
    if ports and proto is None:
        raise r.fail(f"{path}.ports", "ports need a proto")
    if ports and proto not in PROTOCOLS.values():
        raise r.fail(f"{path}.ports", f"protocol {proto} has no ports the program reads (only {', '.join(PROTOCOLS)} do): leave ports out")
    if proto in (PROTOCOLS["icmp"], PROTOCOLS["icmpv6"]) and any(high > 255 for _, high in ports):
        raise r.fail(f"{path}.ports", "an ICMP rule's ports are ICMP types, 0..255")
    name = r.get(data, "id", f"{path}.id", str, None)
    if name is not None and (not name or name.startswith("default:")):
        raise r.fail(f"{path}.id", f"{name!r}: a rule id is not empty and does not start with 'default:' (the segments' defaults' counters)")
    name = name or f"rule{index + 1}"
    return Rule(
        name=name,
        src=data["from"],
        dst=data["to"],
        action=r.choice(data, "action", f"{path}.action", ACTIONS, None),
        proto=proto,
        ports=ports,
    )


def port_range(value: Any) -> tuple[int, int]:
    """A port (a number, or its text) or a range 'low-high' -> (low, high); ValueError says what is wrong."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d+(-\d+)?", value):
        low_text, _, high_text = value.partition("-")
        low, high = int(low_text), int(high_text or low_text)
    else:
        raise ValueError(f"{value!r} is not a port or a range 'low-high'")
    if not 0 <= low <= high <= 65535:
        raise ValueError(f"{value!r} is out of range 0..65535 (low <= high)")
    return low, high


def _port_range(r: _Reader, value: Any, path: str) -> tuple[int, int]:
    try:
        return port_range(value)
    except ValueError as exc:
        raise r.fail(path, str(exc)) from None
