"""The baseline: which groups of devices start which flows, learned from sampled frames.

Fed with the manager's samples (the first packets of every flow), the
baseline keeps one record per (source group, destination group, protocol,
port), where a group is a device class from the inventory ("class:<name>",
by MAC; a MAC the inventory does not know, e.g. a host beyond a router, is
"class:unknown") or, for a group destination, "broadcast" / "multicast"
(the dataplane's pseudo-segments). The port is the responder's: the TCP or
UDP destination port, or the ICMP type (echo request: 8, ICMPv6: 128), as
the dataplane's rules read it.

What counts as a flow start:

- TCP: a SYN without ACK; or, for a connection already open when learning
  began (a long-lived HL7 or monitor link), the first of the first-packets
  samples (SAMPLE_FIRST_PACKETS) the program takes when it picks the
  connection up mid-stream: a segment without SYN of a connection not seen
  within FLOW_IDLE_SECONDS. Such a start is counted in `midstream`; the
  program picks a connection up again after its idle timeout, an eviction
  or a restart on fresh maps, and each pickup is a start. Which end opened
  it is unknown: a record of either direction between the two groups on
  either port decides, else the ports do (reference.listens_at_dst, the
  program's own tie-break at a pickup);
- UDP: a datagram whose 5-tuple was not seen, in either direction, within
  FLOW_IDLE_SECONDS; later datagrams of the flow and its replies are not
  counted again (a small bounded table of recent flows, not persisted);
- ICMP and ICMPv6: an echo request, with the same idle rule by identifier.

A SYN retransmitted within the idle time is the same flow. A TCP start is
"answered" once the other end sends a segment without RST (for a SYN, its
SYN-ACK): a scan's probes of closed ports, SYN or ACK, are not. Each record keeps
its flow count, first and last seen, and up to MAX_EXAMPLES example endpoint
pairs (MACs, IPs, VLAN, one source port), each with its own count: the
examples are what `policy simulate` replays, and what lets records be
regrouped when the inventory learns a device's class after its first flows
(see regrouped()).

Bounds: at most max_records records. When full, a new record replaces the
oldest record that has seen a single flow (a scan's trace; counted in
`evicted`); when none has, the flow start is counted in `overflow`. Records
last seen more than learning_days ago are removed by expire(). The store is
a statefile.StateFile: state_dir/baseline.msgpack.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg_xdp import abi
from medseg_xdp.classify import UNKNOWN
from medseg_xdp.config import PSEUDO_SEGMENTS, Config
from medseg_xdp.fingerprint.frame import ICMP, ICMPV6, TCP, UDP, Frame
from medseg_xdp.inventory import Inventory
from medseg_xdp.policy_image import compile_policy, device_segments
from medseg_xdp.reference import (
    DHCP6_CLIENT_PORT,
    DHCP6_SERVER_PORT,
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
    ICMP_ECHO,
    ICMPV6_ECHO_REQUEST,
    ReferenceDataplane,
    listens_at_dst,
)
from medseg_xdp.statefile import StateFile
from medseg_xdp.xray import Xray, xray_capture

STATE_VERSION = 1
MAX_RECORDS = 20_000
MAX_EXAMPLES = 8
FLOW_IDLE_SECONDS = 120.0
TCP_RST = 0x04
FIRST_PACKETS = abi.SampleKind.first_packets
MAX_TRACKED_FLOWS = 8192
SECONDS_PER_DAY = 86_400
UNKNOWN_GROUP = f"class:{UNKNOWN}"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
# UDP (source port, destination port) pairs that the dataplane's DHCP rail passes under any policy.
DHCP_RAIL_PORTS = frozenset(
    {
        (DHCP_CLIENT_PORT, DHCP_SERVER_PORT),
        (DHCP6_CLIENT_PORT, DHCP6_SERVER_PORT),
        (DHCP_SERVER_PORT, DHCP_CLIENT_PORT),
        (DHCP6_SERVER_PORT, DHCP6_CLIENT_PORT),
    }
)
ECHO_REQUEST = {ICMP: ICMP_ECHO, ICMPV6: ICMPV6_ECHO_REQUEST}
TFTP_PORT = 69
# How long after a TFTP request its server's answer from a new port belongs to it: the dataplane relates the two
# while the request's flow entry lives (UDP idle timeout, 5 minutes by default).
TFTP_ANSWER_SECONDS = 300.0

RecordKey = tuple[str, str, int, int]  # (src group, dst group, proto, port)


def group_of(mac: str, inventory: Inventory) -> str:
    """The group of an endpoint: its class by MAC, or the broadcast/multicast pseudo-segment."""
    if mac == BROADCAST_MAC:
        return "broadcast"
    if mac and int(mac[:2], 16) & 1:
        return "multicast"
    device = inventory.devices.get(mac)
    if device is None or device.is_gateway:
        return UNKNOWN_GROUP  # a gateway's MAC stands for the routed hosts behind it, not for one class
    return f"class:{device.device_class}"


def is_rail(proto: int, sport: int, dport: int) -> bool:
    """True when the dataplane's rails pass this flow under any policy (DHCP and DHCPv6)."""
    return proto == UDP and (sport, dport) in DHCP_RAIL_PORTS


@dataclass
class Example:
    """One endpoint pair of a record, with its own flow count."""

    src_mac: str
    src_ip: str
    dst_mac: str
    dst_ip: str
    sport: int  # the first flow's source port (ICMP: the echo identifier)
    vlan: int
    flows: int
    first_seen: float
    last_seen: float
    src_segment: str | None = None  # under the configuration given to the Baseline, if any
    dst_segment: str | None = None
    answered: int = 0  # TCP: this pair's flow starts the responder answered (SYN-ACK)
    midstream: int = 0  # TCP: this pair's flows first seen mid-stream (open before learning began)

    @property
    def endpoints(self) -> tuple[str, str, str, str, int]:
        return self.src_mac, self.src_ip, self.dst_mac, self.dst_ip, self.vlan

    def to_list(self) -> list[Any]:
        """Compact: MACs and addresses as their bytes."""
        src = [_mac_bytes(self.src_mac), ipaddress.ip_address(self.src_ip).packed]
        dst = [_mac_bytes(self.dst_mac), ipaddress.ip_address(self.dst_ip).packed]
        return [*src, *dst, self.sport, self.vlan, self.flows, self.first_seen, self.last_seen, self.src_segment, self.dst_segment, self.answered,
                self.midstream]

    @classmethod
    def from_list(cls, items: list[Any]) -> Example:
        src_mac, src_ip, dst_mac, dst_ip, *rest = items
        return cls(_mac_text(src_mac), str(ipaddress.ip_address(src_ip)), _mac_text(dst_mac), str(ipaddress.ip_address(dst_ip)), *rest)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_text(raw: bytes) -> str:
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {raw!r}")
    return ":".join(f"{b:02x}" for b in raw)


@dataclass
class FlowRecord:
    src_group: str
    dst_group: str
    proto: int
    port: int
    flows: int
    first_seen: float
    last_seen: float
    examples: list[Example] = field(default_factory=list)
    answered: int = 0  # TCP: flow starts the responder answered (SYN-ACK); a scan's are not
    midstream: int = 0  # TCP: flows first seen mid-stream

    @property
    def key(self) -> RecordKey:
        return self.src_group, self.dst_group, self.proto, self.port

    @property
    def other_flows(self) -> int:
        """Flows of endpoint pairs that are not (or no longer) among the examples."""
        return self.flows - sum(example.flows for example in self.examples)

    @property
    def is_rail(self) -> bool:
        """Every example passes on a rail (DHCP): no rule needed."""
        return bool(self.examples) and all(is_rail(self.proto, e.sport, self.port) for e in self.examples)

    def add(self, example: Example) -> None:
        """One flow start of this record's key."""
        self.flows += 1
        self.midstream += example.midstream
        self.first_seen = min(self.first_seen, example.first_seen)
        self.last_seen = max(self.last_seen, example.last_seen)
        for known in self.examples:
            if known.endpoints == example.endpoints:
                known.flows += 1
                known.midstream += example.midstream
                known.last_seen = max(known.last_seen, example.last_seen)
                known.src_segment, known.dst_segment = example.src_segment, example.dst_segment
                return
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def to_list(self) -> list[Any]:
        return [self.src_group, self.dst_group, self.proto, self.port, self.flows, self.first_seen, self.last_seen, [e.to_list() for e in self.examples],
                self.answered, self.midstream]

    @classmethod
    def from_list(cls, items: list[Any]) -> FlowRecord:
        src_group, dst_group, proto, port, flows, first_seen, last_seen, examples, *later = items  # later fields: absent in older files
        answered = later[:1]
        record = cls(src_group, dst_group, proto, port, flows, first_seen, last_seen, [Example.from_list(e) for e in examples],
                     answered[0] if answered else flows, later[1] if len(later) > 1 else 0)
        if not answered:  # written before answers were counted: every flow counts as answered
            for example in record.examples:
                example.answered = example.flows
        return record


@dataclass(frozen=True)
class _Start:
    proto: int
    port: int
    sport: int


def flow_start(frame: Frame) -> _Start | None:
    """The (proto, responder port, source port) of a frame that may start a flow, else None."""
    if not (frame.src_ip and frame.dst_ip and frame.src_mac and frame.dst_mac):
        return None
    if frame.proto == TCP:
        return _Start(TCP, frame.dport, frame.sport) if frame.is_syn and frame.dport else None
    if frame.proto == UDP:
        return _Start(UDP, frame.dport, frame.sport) if frame.dport else None  # port 0: a later fragment
    if frame.proto in ECHO_REQUEST and frame.icmp_type == ECHO_REQUEST[frame.proto] and len(frame.payload) >= 2:
        return _Start(frame.proto, frame.icmp_type, int.from_bytes(frame.payload[:2], "big"))
    return None


def is_midstream(frame: Frame) -> bool:
    """A TCP segment of an open connection (ACK, neither SYN nor RST), between known endpoints."""
    return (frame.proto == TCP and frame.tcp_flags & 0x16 == 0x10 and bool(frame.sport and frame.dport)
            and bool(frame.src_ip and frame.dst_ip and frame.src_mac and frame.dst_mac))


def flow_id(proto: int, vlan: int, a: tuple[Any, int], b: tuple[Any, int]) -> tuple[Any, ...]:
    """A flow whichever way a frame goes: (proto, VLAN, both (address, port) ends in order)."""
    return (proto, vlan, a, b) if a <= b else (proto, vlan, b, a)


class _RecentFlows:
    """A bounded LRU of recently seen flows: tells a new flow from its later packets and replies."""

    def __init__(self, capacity: int = MAX_TRACKED_FLOWS) -> None:
        self.capacity = capacity
        self.flows: OrderedDict[tuple[Any, ...], float] = OrderedDict()

    def is_new(self, key: tuple[Any, ...], now: float) -> bool:
        """Whether the flow (flow_id) was not seen within FLOW_IDLE_SECONDS; it is refreshed either way."""
        seen = self.flows.get(key)
        self.flows[key] = now
        self.flows.move_to_end(key)
        if len(self.flows) > self.capacity:
            self.flows.popitem(last=False)
        return seen is None or now - seen > FLOW_IDLE_SECONDS


class _SegmentNames:
    """Segment names under a configuration, by its precedence: pin or MAC, class, prefix or VLAN."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.direct = device_segments(config, {})  # pins and segments' macs
        self.by_class = {c: segment.name for segment in config.segments.values() for c in segment.classes}
        contents = compile_policy(config, 1, lambda port: 0).contents
        self.model = ReferenceDataplane(contents)  # its identify() answers prefixes and VLANs

    def name(self, mac: str, ip: str, vlan: int, inventory: Inventory) -> str:
        group = group_of(mac, inventory)
        if group in PSEUDO_SEGMENTS:
            return group
        if mac in self.direct:
            return self.direct[mac]
        device = inventory.devices.get(mac)
        if device is not None and device.device_class in self.by_class:
            return self.by_class[device.device_class]
        address = ipaddress.ip_address(ip)
        family = abi.const("FAMILY_IPV4") if address.version == 4 else abi.const("FAMILY_IPV6")
        raw = address.packed.ljust(16, b"\0")
        info: Any = self.model.identify(1, vlan, _mac_bytes(mac), raw, family)
        return self.config.segment_name(info.segment)


class Baseline:
    """Aggregated flow starts over a learning window; see the module's docstring."""

    def __init__(self, learning_days: int = 14, max_records: int = MAX_RECORDS, config: Config | None = None) -> None:
        self.learning_days = learning_days
        self.max_records = max_records
        self.records: dict[RecordKey, FlowRecord] = {}
        self.overflow = 0  # flow starts not recorded: full, and nothing to evict
        self.evicted = 0  # single-flow records replaced when full
        self._singles: OrderedDict[RecordKey, None] = OrderedDict()  # records with one flow, oldest first
        self._recent = _RecentFlows()
        # TCP starts not answered yet: flow id -> (record, endpoints, the (address, port) that sent the start)
        self._awaiting: OrderedDict[tuple[Any, ...], tuple[RecordKey, tuple[str, str, str, str, int], tuple[str, int]]] = OrderedDict()
        # TFTP requests: (client address, client port, server address) -> when
        self._tftp_requests: OrderedDict[tuple[str, int, str], float] = OrderedDict()
        self._segments = _SegmentNames(config) if config is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(self.records.values())

    @property
    def flows(self) -> int:
        return sum(record.flows for record in self.records.values())

    def observe(self, frame: Frame, inventory: Inventory, now: float, kind: int = FIRST_PACKETS) -> bool:
        """One sampled frame (kind: its SampleKind); True when it started a flow that was recorded."""
        tcp_id = None
        if frame.proto == TCP:
            # no VLAN: answers may come tagged through a trunk, the requests untagged through an access port
            tcp_id = flow_id(TCP, 0, (frame.src_ip, frame.sport), (frame.dst_ip, frame.dport))
            if self._awaiting:
                self._answer(frame, tcp_id)
        start = flow_start(frame)
        midstream = start is None and kind == FIRST_PACKETS and is_midstream(frame)
        if start is None and not midstream:
            return False
        if start is not None and start.proto == UDP and self._tftp_answer(frame, now):
            return False
        flow = tcp_id
        if flow is None:
            assert start is not None
            dport = start.sport if start.proto in ECHO_REQUEST else start.port  # echo: both ports are the id
            flow = flow_id(start.proto, frame.vlan, (frame.src_ip, start.sport), (frame.dst_ip, dport))
        if not self._recent.is_new(flow, now):
            return False
        assert frame.src_ip is not None and frame.dst_ip is not None  # flow_start and is_midstream checked
        src, dst = (frame.src_mac, frame.src_ip), (frame.dst_mac, frame.dst_ip)
        port, sport = frame.dport, frame.sport
        if start is not None:
            port, sport = start.port, start.sport
        elif not self._opened_by_src(frame, inventory):
            src, dst, port, sport = dst, src, sport, port
        key = (group_of(src[0], inventory), group_of(dst[0], inventory), start.proto if start else TCP, port)
        example = Example(*src, *dst, sport, frame.vlan, 1, now, now, midstream=int(midstream))
        if self._segments is not None:
            example.src_segment = self._segments.name(*src, frame.vlan, inventory)
            example.dst_segment = self._segments.name(*dst, frame.vlan, inventory)
        added = self._add(key, example)
        if added and tcp_id is not None:
            self._awaiting[tcp_id] = (key, example.endpoints, (frame.src_ip, frame.sport))
            if len(self._awaiting) > MAX_TRACKED_FLOWS:
                self._awaiting.popitem(last=False)
        return added

    def _tftp_answer(self, frame: Frame, now: float) -> bool:
        """Notes a TFTP request; True for the transfer it starts (RFC 1350): the server's answer from a new port
        to the request's port, and the client's acknowledgements back to that port, which the dataplane passes
        with the request (related_tftp). Learned as flows of their own, they would become rules on a random
        port, one per transfer. No VLAN: the answer may come tagged through a trunk."""
        if TFTP_PORT in (frame.sport, frame.dport):
            if frame.dport == TFTP_PORT:
                request = (str(frame.src_ip), frame.sport, str(frame.dst_ip))
                self._tftp_requests[request] = now
                self._tftp_requests.move_to_end(request)
                if len(self._tftp_requests) > MAX_TRACKED_FLOWS:
                    self._tftp_requests.popitem(last=False)
            return False
        for client, port, server in ((frame.dst_ip, frame.dport, frame.src_ip), (frame.src_ip, frame.sport, frame.dst_ip)):
            asked = self._tftp_requests.get((str(client), port, str(server)))
            if asked is not None and now - asked <= TFTP_ANSWER_SECONDS:
                return True
        return False

    def _opened_by_src(self, frame: Frame, inventory: Inventory) -> bool:
        """Which end opened a connection seen mid-stream: the direction already learned between the two groups
        (on the port it listens on), else the ports' say, as the program reads them (listens_at_dst)."""
        src_group, dst_group = group_of(frame.src_mac, inventory), group_of(frame.dst_mac, inventory)
        if (src_group, dst_group, TCP, frame.dport) in self.records:
            return True
        if (dst_group, src_group, TCP, frame.sport) in self.records:
            return False
        return listens_at_dst(frame.sport, frame.dport)

    def _answer(self, frame: Frame, tcp_id: tuple[Any, ...]) -> None:
        """A segment without RST from the other end of an awaited start (for a SYN, its SYN-ACK): the flow was a
        real connection, not a scan's probe of a closed port."""
        if frame.tcp_flags & TCP_RST:
            return
        awaited = self._awaiting.get(tcp_id)
        if awaited is None or awaited[2] == (frame.src_ip, frame.sport):
            return
        del self._awaiting[tcp_id]
        record = self.records.get(awaited[0])
        if record is None:
            return
        record.answered += 1
        for example in record.examples:
            if example.endpoints == awaited[1]:
                example.answered += 1

    def _add(self, key: RecordKey, example: Example) -> bool:
        record = self.records.get(key)
        if record is None:
            if len(self.records) >= self.max_records:
                if not self._singles:
                    self.overflow += 1
                    return False
                self._remove(next(iter(self._singles)))
                self.evicted += 1
            record = self.records[key] = FlowRecord(*key, flows=0, first_seen=example.first_seen, last_seen=example.last_seen)
        record.add(example)
        if record.flows == 1:
            self._singles[key] = None
        else:
            self._singles.pop(key, None)
        return True

    def _remove(self, key: RecordKey) -> None:
        del self.records[key]
        self._singles.pop(key, None)

    def expire(self, now: float) -> int:
        """Forget records, and examples, last seen before the learning window; returns the records removed."""
        horizon = now - self.learning_days * SECONDS_PER_DAY
        old = [key for key, record in self.records.items() if record.last_seen < horizon]
        for key in old:
            self._remove(key)
        for record in self.records.values():
            record.examples = [e for e in record.examples if e.last_seen >= horizon]
        return len(old)

    def regrouped(self, inventory: Inventory) -> Baseline:
        """The records keyed by the devices' classes now.

        A record's key holds the classes its endpoints had when its flows
        started, and a device's first flows often come before the samples
        that classify it. Each example moves, with its flows, to the key its
        endpoints have now; flows of endpoint pairs not among the examples
        stay with the key that gets most of the record's example flows.
        """
        result = Baseline(self.learning_days, self.max_records)
        result.overflow, result.evicted = self.overflow, self.evicted
        for record in sorted(self.records.values(), key=lambda r: r.key):
            moved: dict[RecordKey, list[Example]] = {}
            for example in record.examples:
                key = (group_of(example.src_mac, inventory), group_of(example.dst_mac, inventory), record.proto, record.port)
                moved.setdefault(key, []).append(example)
            if not moved:
                moved[record.key] = []
            main = max(sorted(moved), key=lambda k: sum(e.flows for e in moved[k]))
            for key, examples in moved.items():
                first = min((e.first_seen for e in examples), default=record.first_seen)
                last = max((e.last_seen for e in examples), default=record.last_seen)
                flows = sum(e.flows for e in examples)
                if key == main and record.other_flows:
                    flows += record.other_flows
                    first, last = min(first, record.first_seen), max(last, record.last_seen)
                answered = sum(e.answered for e in examples)
                midstream = sum(e.midstream for e in examples)
                if key == main:  # answers and pickups of pairs that are not among the examples stay with the main part
                    answered += record.answered - sum(e.answered for e in record.examples)
                    midstream += record.midstream - sum(e.midstream for e in record.examples)
                part = FlowRecord(*key, flows=flows, first_seen=first, last_seen=last, examples=[Example(**vars(e)) for e in examples],
                                  answered=answered, midstream=midstream)
                result._merge(part)
        return result

    def _merge(self, part: FlowRecord) -> None:
        record = self.records.get(part.key)
        if record is None:
            self.load_records([part])
            return
        self._singles.pop(part.key, None)
        record.flows += part.flows
        record.answered += part.answered
        record.midstream += part.midstream
        record.first_seen = min(record.first_seen, part.first_seen)
        record.last_seen = max(record.last_seen, part.last_seen)
        for example in part.examples:
            known = next((e for e in record.examples if e.endpoints == example.endpoints), None)
            if known is not None:
                known.flows += example.flows
                known.answered += example.answered
                known.midstream += example.midstream
                known.first_seen = min(known.first_seen, example.first_seen)
                known.last_seen = max(known.last_seen, example.last_seen)
            elif len(record.examples) < MAX_EXAMPLES:
                record.examples.append(example)

    def load_records(self, records: Iterable[FlowRecord]) -> None:
        """Add records of new keys (from a store, oldest first)."""
        for record in records:
            self.records[record.key] = record
            if record.flows == 1:
                self._singles[record.key] = None


class BaselineStore:
    """baseline.msgpack in a state directory (see statefile)."""

    def __init__(self, state_dir: Path) -> None:
        self.file = StateFile(state_dir / "baseline.msgpack", STATE_VERSION)
        self.path = self.file.path

    def save(self, baseline: Baseline) -> None:
        records = [record.to_list() for record in sorted(baseline.records.values(), key=lambda r: r.first_seen)]
        self.file.write({"records": records, "overflow": baseline.overflow, "evicted": baseline.evicted})

    def load(self, baseline: Baseline) -> str | None:
        """Fill baseline from disk. Returns a problem report when the file was kept aside."""
        body, problem = self.file.read()
        if body is None:
            return problem
        try:
            records = [FlowRecord.from_list(items) for items in body["records"]]
            overflow, evicted = int(body["overflow"]), int(body["evicted"])
        except (TypeError, KeyError, ValueError) as exc:
            return self.file.keep_aside(f"not a baseline: {exc}")
        baseline.load_records(records)  # oldest first: the eviction order survives a restart
        baseline.overflow += overflow
        baseline.evicted += evicted
        return None


def learn_from_capture(pcap: Path, config: Config) -> tuple[Xray, Baseline]:
    """A capture through the sampling rules, into the X-ray's inventory and a baseline.

    The same packets are sampled as on a running bridge (xray.xray_capture),
    with the capture's timestamps. Raises capture.CaptureError for unreadable files.
    """
    baseline = Baseline(config.daemon.learning_days, config=config)
    xray = Xray.default(learner=baseline)
    xray_capture(pcap, config, xray)
    return xray, baseline
