"""The device inventory: what each device is, what it speaks, and to whom.

Devices are keyed by MAC address. Observations from the fingerprint parsers
are folded in (bounded per signal), the classifier runs whenever a device
shows something new, and every class change is kept with its evidence.
The store is a statefile.StateFile: atomic, private, and a file it cannot
read is moved aside and reported, never discarded.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medseg_xdp.classify import UNKNOWN, Classifier, Decision, Evidence
from medseg_xdp.config import PSEUDO_SEGMENTS, Config
from medseg_xdp.fingerprint.frame import Frame, Observation, Side
from medseg_xdp.statefile import StateFile

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_VALUES_PER_SIGNAL = 16  # a device that shows endless values (random ports, scans) stays bounded
MAX_PEERS = 256
# Addresses kept per device, the least recently seen forgotten first: a gateway's MAC carries every routed host's.
MAX_IPS = 64
# A MAC that sends from addresses in this many subnets of one family (IPv4 /24s, IPv6 /64s) fronts other hosts:
# a router or gateway, whose MAC must not place the routed hosts (see Device.fronts_others).
GATEWAY_MIN_SUBNETS = 3
MAX_CHANGES = 1000
# Signals that name a protocol the device speaks, and in which role.
_ROLE_SIGNALS = {
    "dicom.role": {"scu": ("client", "dicom"), "scp": ("server", "dicom")},
    "hl7.role": {"sender": ("client", "hl7"), "receiver": ("server", "hl7")},
    "http.role": {"client": ("client", "http"), "server": ("server", "http")},
    "tls.role": {"server": ("server", "tls")},
    "dhcp.role": {"server": ("server", "dhcp")},
}
_HOSTNAME_SIGNALS = ("dhcp.hostname", "dhcpv6.fqdn", "mdns.hostname", "lldp.system_name")


@dataclass
class Device:
    mac: str
    first_seen: float
    last_seen: float
    ips: dict[str, list[float]] = field(default_factory=dict)  # address -> [first seen, last seen]
    vendor: str | None = None
    hostname: str | None = None
    device_class: str = UNKNOWN
    confidence: float = 0.0
    evidence: list[dict[str, object]] = field(default_factory=list)
    observations: dict[str, dict[str, int]] = field(default_factory=dict)
    protocols_client: list[str] = field(default_factory=list)
    protocols_server: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    pinned_class: bool = False
    segment: str | None = None
    pinned_segment: bool = False
    asset: dict[str, str] = field(default_factory=dict)  # model, location, owner from an asset import
    placed_class: str | None = None  # the class its segment placement follows (see placement_class)
    fronts_others: bool = False  # sends from addresses in GATEWAY_MIN_SUBNETS subnets or more: a router or gateway

    @property
    def is_gateway(self) -> bool:
        """Its MAC stands for the hosts routed behind it, not for one class: it fronts others, and no person
        pinned its class."""
        return self.fronts_others and not self.pinned_class

    @property
    def placement_class(self) -> str:
        """The class that places the device in a class-based segment: a pinned class; else the class it
        was placed by (a classified device that looks like another class later is reported, not moved,
        unless [daemon] reclassify = "move"); else its class."""
        if self.pinned_class:
            return self.device_class
        return self.placed_class or self.device_class

    def follow(self, change: ClassChange, move_classified: bool) -> bool:
        """Take a class change into the placement, or not: a first classification (from unknown) always;
        a classified device's change only with move_classified. Returns whether the placement moved."""
        placed = self.placed_class or change.old  # an inventory saved before placed_class: placed as it was
        if self.pinned_class or move_classified or placed == UNKNOWN:
            moved = self.placed_class != change.new
            self.placed_class = change.new
            return moved
        return False

    def summary(self) -> dict[str, Any]:
        """The exported view (JSON, CSV, `devices`)."""
        return {
            "mac": self.mac,
            "ips": sorted(self.ips),
            "vendor": self.vendor,
            "hostname": self.hostname,
            "class": self.device_class,
            "placed_as": self.placement_class,
            "confidence": self.confidence,
            "evidence": self.evidence,
            "protocols_client": self.protocols_client,
            "protocols_server": self.protocols_server,
            "peers": self.peers,
            "pinned": self.pinned_class or self.pinned_segment,
            "fronts_others": self.fronts_others,
            "segment": self.segment,
            "asset": self.asset,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


@dataclass(frozen=True)
class ClassChange:
    time: float
    mac: str
    old: str
    new: str
    confidence: float
    evidence: tuple[Evidence, ...]


def _unicast(mac: str) -> bool:
    return bool(mac) and not int(mac[:2], 16) & 1


def _usable_ip(address: str | None) -> bool:
    return bool(address) and _usable_address(address)  # type: ignore[arg-type]


@lru_cache(maxsize=65536)  # a sample's addresses are mostly ones seen before
def _usable_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"))


def _add_address(device: Device, address: str, now: float) -> None:
    """A new address of the device: bounded (MAX_IPS), and whether it now fronts other hosts."""
    if len(device.ips) >= MAX_IPS:
        del device.ips[min(device.ips, key=lambda a: device.ips[a][1])]
    device.ips[address] = [now, now]
    if not device.fronts_others:
        device.fronts_others = fronts_others(device.ips)


def fronts_others(addresses: Iterable[str]) -> bool:
    """Addresses in GATEWAY_MIN_SUBNETS subnets or more of one family (IPv4 /24s, or IPv6 /64s, link-local ones
    aside): the MAC of a router or gateway, carrying routed hosts' packets, not one host's (a dual-stack host that
    moved to another VLAN, or its IPv6 privacy addresses, stay below)."""
    subnets: dict[int, set[Any]] = {4: set(), 6: set()}
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not ip.is_link_local:
            subnets[ip.version].add(subnet_of(address))
    return max(len(family) for family in subnets.values()) >= GATEWAY_MIN_SUBNETS


def subnet_of(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The subnet a host address is taken to be in: its /24, or for IPv6 its /64."""
    ip = ipaddress.ip_address(address)
    return ipaddress.ip_network(f"{address}/{24 if ip.version == 4 else 64}", strict=False)


def _add_bounded(items: list[str], value: str, limit: int) -> None:
    if value not in items and len(items) < limit:
        items.append(value)


MAX_DEVICES = 65536


class Inventory:
    def __init__(
        self,
        classifier: Classifier,
        clock: Callable[[], float] = time.time,
        on_discovered: Callable[[str], None] | None = None,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.classifier = classifier
        self.clock = clock
        self.on_discovered = on_discovered  # called with the MAC of each device seen for the first time
        self.max_devices = max_devices
        self.evicted = 0  # unknown devices forgotten to make room (see _make_room)
        self._make_room_at = max_devices  # inventory size that calls _make_room next
        self.devices: dict[str, Device] = {}
        self.changes: list[ClassChange] = []
        # Monotonic, for the metrics (changes keeps only the last MAX_CHANGES): devices first seen
        # by this process, and class changes by (old class, new class).
        self.discovered = 0
        self.change_counts: Counter[tuple[str, str]] = Counter()

    def device(self, mac: str, now: float) -> Device:
        found = self.devices.get(mac)
        if found is None:
            if len(self.devices) >= self._make_room_at:
                self._make_room(now)
            found = self.devices[mac] = Device(mac=mac, first_seen=now, last_seen=now)
            self.discovered += 1
            if self.on_discovered is not None:
                self.on_discovered(mac)
        found.last_seen = max(found.last_seen, now)
        return found

    def _make_room(self, now: float) -> None:
        """A full inventory forgets the least recently seen tenth of its unpinned devices of class unknown.

        A MAC flood (random source MACs) must not exhaust the manager, and the devices it adds are all
        unknown. Classified and pinned devices are never forgotten: policy places them. An inventory full
        of those grows past max_devices (logged): raise [daemon] max_devices."""
        # never a device of the sample being folded in (seen at now): its caller still holds it
        unknown = sorted(
            (d for d in self.devices.values() if d.device_class == UNKNOWN and not d.pinned_class and not d.pinned_segment and d.last_seen < now),
            key=lambda d: d.last_seen,
        )
        tenth = max(1, self.max_devices // 10)
        forgotten = unknown[:tenth]
        for device in forgotten:
            del self.devices[device.mac]
        self.evicted += len(forgotten)
        # This scan reads every device: when it found less than a tenth to forget, the next one waits until a
        # tenth more devices came, so an inventory full of classified devices costs one scan per tenth, not
        # one per new device.
        self._make_room_at = self.max_devices if len(forgotten) == tenth else len(self.devices) + tenth
        if len(self.devices) >= self.max_devices:
            log.warning("inventory: %d devices, %d over max_devices %d, the rest classified or pinned: growing (raise [daemon] max_devices)",
                        len(self.devices), len(self.devices) - self.max_devices + 1, self.max_devices)

    def observe(self, frame: Frame, observations: Iterable[Observation], now: float | None = None) -> list[ClassChange]:
        """Fold one sampled frame and its observations in; returns the class changes it caused."""
        now = self.clock() if now is None else now
        src_mac, dst_mac = frame.src_mac, frame.dst_mac
        src = self.device(src_mac, now) if _unicast(src_mac) else None
        dst_unicast = _unicast(dst_mac)
        dst: Device | None = None  # looked up with its first observation
        src_learned = dst_learned = False  # something new about that side
        if src is not None:
            if _usable_ip(frame.src_ip):
                seen = src.ips.get(frame.src_ip)  # type: ignore[arg-type]
                if seen is None:
                    _add_address(src, frame.src_ip, now)  # type: ignore[arg-type]
                else:
                    seen[1] = now
            if dst_unicast:
                _add_bounded(src.peers, dst_mac, MAX_PEERS)
        for observation in observations:
            if observation.side is Side.SRC:
                if src is not None and self._record(src, observation.signal, observation.value):
                    src_learned = True
            elif dst_unicast:
                if dst is None:
                    dst = self.device(dst_mac, now)
                if self._record(dst, observation.signal, observation.value):
                    dst_learned = True
        if dst_mac == src_mac:  # one device on both sides: classified once
            src_learned, dst_learned = src_learned or dst_learned, False
        changes = []
        for mac, learned in ((src_mac, src_learned), (dst_mac, dst_learned)):
            if learned and mac in self.devices:
                change = self._classify(self.devices[mac], now)
                if change:
                    changes.append(change)
        return changes

    def _record(self, device: Device, signal: str, value: str) -> bool:
        values = device.observations.setdefault(signal, {})
        if value in values:
            values[value] += 1
            return False
        if len(values) >= MAX_VALUES_PER_SIGNAL:
            return False
        values[value] = 1
        if signal == "oui.vendor" and device.vendor is None:
            device.vendor = value
        elif signal in _HOSTNAME_SIGNALS and device.hostname is None:
            device.hostname = value
        elif signal in _ROLE_SIGNALS and value in _ROLE_SIGNALS[signal]:
            role, protocol = _ROLE_SIGNALS[signal][value]
            _add_bounded(device.protocols_client if role == "client" else device.protocols_server, protocol, 64)
        elif signal in ("service.uses", "service.serves"):
            _add_bounded(device.protocols_client if signal == "service.uses" else device.protocols_server, value, 64)
        return True

    def _classify(self, device: Device, now: float) -> ClassChange | None:
        decision: Decision = self.classifier.decide(device.device_class, device.pinned_class, device.observations, device.confidence)
        old = device.device_class
        device.device_class = decision.device_class
        device.confidence = decision.confidence
        device.evidence = [e.as_dict() for e in decision.evidence]
        if not decision.changed:
            return None
        change = ClassChange(now, device.mac, old, decision.device_class, decision.confidence, decision.evidence)
        self.changes = [*self.changes[-(MAX_CHANGES - 1) :], change]
        self.change_counts[old, decision.device_class] += 1
        log.info("device %s: class %s -> %s (confidence %.2f; %s)", device.mac, old, decision.device_class, decision.confidence, "; ".join(f"{e.signal}={e.value}" for e in decision.evidence))
        return change

    def current_classes(self) -> dict[str, str]:
        """MAC -> the class each device shows now (which placement may not follow: Device.placement_class)."""
        return {mac: device.device_class for mac, device in self.devices.items()}

    def placement_classes(self) -> dict[str, str]:
        """MAC -> the class segment placement follows (Device.placement_class). A gateway's MAC (fronts_others)
        has none unless a person pinned its class: by MAC, it would place every host routed behind it."""
        return {mac: device.placement_class for mac, device in self.devices.items() if not device.is_gateway}

    def live_pins(self, config: Config) -> dict[str, str]:
        """MAC -> segment of the devices pinned to a segment that config has (others are logged and ignored)."""
        pins = {}
        for mac, device in self.devices.items():
            if device.pinned_segment and device.segment is not None:
                if device.segment in config.segments or device.segment in PSEUDO_SEGMENTS:
                    pins[mac] = device.segment
                else:
                    log.warning("device %s is pinned to segment %r, which the config no longer has: pin ignored", mac, device.segment)
        return pins

    def pin(self, mac: str, device_class: str | None = None, segment: str | None = None) -> Device:
        """A person's word: a pinned class or segment never changes automatically."""
        if device_class is not None and device_class not in self.classifier.catalog.classes:
            raise ValueError(f"unknown device class {device_class!r}")
        device = self.device(mac, self.clock())
        if device_class is not None:
            old = device.device_class
            device.device_class, device.pinned_class, device.confidence = device_class, True, 1.0
            if old != device_class:
                self.changes.append(ClassChange(self.clock(), mac, old, device_class, 1.0, ()))
                self.change_counts[old, device_class] += 1
        if segment is not None:
            device.segment, device.pinned_segment = segment, True
        return device

    # ---- export ----

    def summaries(self) -> list[dict[str, Any]]:
        return [self.devices[mac].summary() for mac in sorted(self.devices)]

    def to_json(self) -> str:
        return summaries_json(self.summaries())

    def to_csv(self) -> str:
        return summaries_csv(self.summaries())


def summaries_json(summaries: list[dict[str, Any]]) -> str:
    return json.dumps({"devices": summaries}, indent=2)


def summaries_csv(summaries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = ["mac", "ips", "vendor", "hostname", "class", "confidence", "segment", "pinned", "protocols_client", "protocols_server", "evidence"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for summary in summaries:
        row = dict(summary)
        for joined in ("ips", "protocols_client", "protocols_server"):
            row[joined] = " ".join(row[joined])
        row["evidence"] = "; ".join(f"{e['signal']}={e['value']} (+{e['weight']:g})" for e in row["evidence"])
        writer.writerow(row)
    return out.getvalue()


class InventoryStore:
    """inventory.msgpack in a state directory (see statefile)."""

    def __init__(self, state_dir: Path) -> None:
        self.file = StateFile(state_dir / "inventory.msgpack", STATE_VERSION)
        self.path = self.file.path

    def save(self, inventory: Inventory) -> None:
        self.file.write([asdict(d) for d in inventory.devices.values()])

    def load(self, inventory: Inventory) -> str | None:
        """Fill inventory from disk. Returns a problem report when the file was kept aside."""
        records, problem = self.file.read()
        if records is None:
            return problem
        try:
            devices = {record["mac"]: Device(**record) for record in records}
        except (TypeError, KeyError) as exc:
            return self.file.keep_aside(f"not an inventory: {exc}")
        for device in devices.values():  # a file from before fronts_others, or before its addresses were bounded
            device.fronts_others = device.fronts_others or fronts_others(device.ips)
        inventory.devices.update(devices)
        return None
