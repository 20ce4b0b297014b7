"""Compile a configuration into the contents of the BPF maps.

The result, MapContents, is plain bytes keyed by map name. The kernel
(dataplane.Dataplane.apply) and the reference model (reference.py) are
filled from the very same bytes, which is what makes the differential test
meaningful.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from medseg_xdp import abi
from medseg_xdp.classify import load_catalog
from medseg_xdp.config import PSEUDO_SEGMENTS, Config, ConfigError, Rule, Segment, placement_problem

MapContents = dict[str, dict[bytes, bytes]]

# Maps whose keys start with the generation (LPM keys right after prefixlen).
GENERATIONAL_MAPS = ("devices", "prefixes_v4", "prefixes_v6", "rail_hosts", "segments", "rules_exact", "rules", "pair_defaults")
# Maps written in place: not part of a policy generation.
IN_PLACE_MAPS = ("ports", "port_vlans", "settings", "sample_budgets")
RULE_KEY_FIXED_BITS = 80  # gen + segments + proto + pad, before the port


@dataclass(frozen=True)
class CompiledPolicy:
    contents: MapContents
    rule_names: dict[int, str]  # rule id -> rule name ("default:<segment>" for defaults)
    warnings: list[str]  # e.g. rules that can never match
    members: dict[str, str]  # MAC -> segment of the devices placed by MAC (device_segments)


def port_prefixes(low: int, high: int) -> list[tuple[int, int]]:
    """Split the inclusive range low..high into (value, prefix bits) over 16 bits."""
    prefixes: list[tuple[int, int]] = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        prefixes.append((low, 16 - size.bit_length() + 1))
        low += size
    return prefixes


def _put(contents: MapContents, name: str, key: ctypes.Structure, value: ctypes.Structure | ctypes._SimpleCData) -> None:
    contents.setdefault(name, {})[abi.to_bytes(key)] = bytes(memoryview(value).cast("B"))


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


class RuleIds:
    """Stable numbers for rule names: the per-rule counters follow a rule across edits.

    The daemon keeps the mapping in its state directory; a name seen for the
    first time gets the next free number, and numbers are never reused.
    """

    def __init__(self, known: Mapping[str, int] | None = None) -> None:
        self.ids: dict[str, int] = dict(known or {})
        self._next = max(self.ids.values(), default=0) + 1

    def __call__(self, name: str) -> int:
        number = self.ids.get(name)
        if number is None:
            if self._next >= abi.const("MAX_RULE_IDS"):
                raise ConfigError(f"rule {name!r}: all {abi.const('MAX_RULE_IDS') - 1} rule ids are used (counters are indexed by them)")
            number = self.ids[name] = self._next
            self._next += 1
        return number


def compile_policy(
    config: Config,
    generation: int,
    ifindex_of: Callable[[str], int],
    class_of: Mapping[str, str] | None = None,
    rule_ids: RuleIds | None = None,
    pinned: Mapping[str, str] | None = None,
) -> CompiledPolicy:
    """Map contents of config at a generation.

    ifindex_of names bridge ports; class_of gives the inventory's class of
    each known MAC (for segments defined by class); pinned, the segments
    pinned live; rule_ids numbers rules.
    """
    contents: MapContents = {name: {} for name in (*GENERATIONAL_MAPS, *IN_PLACE_MAPS)}
    rule_names: dict[int, str] = {}
    ids = rule_ids if rule_ids is not None else RuleIds()
    try:
        members = device_segments(config, class_of or {}, pinned)
        _endpoints(config, generation, ifindex_of, members, contents)
        warnings = _rules(config, generation, contents, rule_names, ids) + unguarded_life_critical(config, members, class_of or {})
        warnings += _untagged_vlans_differ(config) + _open_to_every_device(config)
        _segment_infos(config, generation, contents, rule_names, ids)
        _rails(config, generation, contents)
        _in_place(config, ifindex_of, contents)
        _check_capacity(config, contents)
    except ConfigError as exc:  # found only when the whole policy is laid out: the file, at least, is known
        raise ConfigError(f"{config.source}: {exc}") from exc
    return CompiledPolicy(contents, rule_names, warnings, members)


def unguarded_life_critical(config: Config, members: Mapping[str, str], class_of: Mapping[str, str]) -> list[str]:
    """Devices of a life-critical class that a segment's macs, a pin or an exception put in an enforcing segment
    not marked for them. A person's placement is refused (config.placement_problem); this catches the rest: a
    device in a MAC list that the classifier then finds to be a pump. Devices placed by address or VLAN are not
    seen here (members are by MAC)."""
    criticality = load_catalog().criticality
    classes = {**class_of, **{pin.mac: pin.device_class for pin in config.pins if pin.device_class is not None}}
    warnings = []
    for mac, segment in sorted(members.items()):
        problem = placement_problem(config, segment, classes[mac], criticality) if mac in classes else None
        if problem:
            warnings.append(f"device {mac}: {problem}; it can be cut off")
    return warnings


def _untagged_vlans_differ(config: Config) -> list[str]:
    """Ports whose untagged frames get different identity VLANs: the VLAN is in the flow key, so where a VLAN
    crosses the bridge untagged on both sides (a plain Linux bridge), replies would miss their requests' flows."""
    untagged = {port: config.pvid.get(port, 0) for port in config.ports}
    if len(set(untagged.values())) < 2:
        return []
    listed = ", ".join(f"{port} {vlan or 'none (VLAN 0)'}" for port, vlan in untagged.items())
    return [f"bridge.pvid differs between ports ({listed}): a VLAN that crosses the bridge untagged on both sides needs the "
            "same pvid on both, or its replies miss their requests' flows (a new flow, judged from the server's side); "
            "a VLAN tagged on the other side is fine"]


def _open_to_every_device(config: Config) -> list[str]:
    """Management segments that every device may open any flow to: the hosts that hold the keys to the devices,
    reachable on any port from a compromised one."""
    return [f'segments.{name}: management = true passes every flow any device opens towards it, on any port; '
            'management = "outbound" passes the flows its hosts open (and their replies) and leaves the devices\' '
            'flows to it to the rules'
            for name, segment in sorted(config.segments.items()) if segment.management == "both"]


def _check_capacity(config: Config, contents: MapContents) -> None:
    """Each generation must fit in its half of a map (the maps hold two)."""
    needs = {
        "devices": ("devices", len(contents["devices"])),
        "prefixes": ("prefixes", max(len(contents["prefixes_v4"]), len(contents["prefixes_v6"]))),
        "rules": ("rules", max(len(contents["rules_exact"]), len(contents["rules"]), len(contents["pair_defaults"]))),
        "segments": ("segments", len(contents["segments"])),
    }
    for table, (what, count) in needs.items():
        capacity = getattr(config.tables, table)
        if count > capacity:
            raise ConfigError(f"tables.{table}: {count} {what} entries do not fit in {capacity}: raise tables.{table}")


def device_segments(config: Config, class_of: Mapping[str, str], pinned: Mapping[str, str] | None = None) -> dict[str, str]:
    """MAC -> segment name, by precedence: a live pin (`medseg-xdp pin`), a config pin, a segment's macs, its classes.

    The class is a config pin's, else class_of's (the inventory's)."""
    by_class = {device_class: segment.name for segment in config.segments.values() for device_class in segment.classes}
    classes = {**class_of, **{pin.mac: pin.device_class for pin in config.pins if pin.device_class is not None}}
    members = {mac: by_class[device_class] for mac, device_class in classes.items() if device_class in by_class}
    members.update({mac: segment.name for segment in config.segments.values() for mac in segment.macs})
    members.update({pin.mac: pin.segment for pin in config.pins if pin.segment is not None})
    members.update(pinned or {})
    return members


def _endpoints(config: Config, gen: int, ifindex_of: Callable[[str], int], members: Mapping[str, str], contents: MapContents) -> None:
    def info_of(name: str) -> ctypes.Structure:
        segment = config.segments.get(name)
        bound = ifindex_of(segment.port) if segment is not None and segment.port else 0
        return abi.EndpointInfo(segment=config.segment_id(name), flags=0, ifindex=bound)

    for mac, name in members.items():
        key = abi.DeviceKey(gen=gen)
        key.mac[:] = _mac_bytes(mac)
        _put(contents, "devices", key, info_of(name))
    for segment in config.segments.values():
        info = info_of(segment.name)
        for vlan in segment.vlans:
            whole4 = abi.Prefix4Key(prefixlen=48, gen=gen, vlan=vlan)
            whole6 = abi.Prefix6Key(prefixlen=48, gen=gen, vlan=vlan)
            _put(contents, "prefixes_v4", whole4, info)
            _put(contents, "prefixes_v6", whole6, info)
        for prefix in segment.prefixes:
            if prefix.version == 4:
                key4 = abi.Prefix4Key(prefixlen=48 + prefix.prefixlen, gen=gen, vlan=segment.vlan)
                key4.addr[:] = prefix.network_address.packed
                _put(contents, "prefixes_v4", key4, info)
            else:
                key6 = abi.Prefix6Key(prefixlen=48 + prefix.prefixlen, gen=gen, vlan=segment.vlan)
                key6.addr[:] = prefix.network_address.packed
                _put(contents, "prefixes_v6", key6, info)


def _specificity(low: int, high: int) -> int:
    """0: exact port, 1: port range, 2: any port (the order of precedence)."""
    return 0 if low == high else 2 if (low, high) == (0, 65535) else 1


@dataclass(frozen=True)
class _Claim:
    index: int
    rule_id: int
    rule: Rule
    specificity: int


def _rules(config: Config, gen: int, contents: MapContents, rule_names: dict[int, str], ids: RuleIds) -> list[str]:
    """Rule and pair-default entries; returns warnings for rules that can never match."""
    _check_overlapping_ranges(config)
    port_rules: list[tuple[int, int, int, Rule, int, int]] = []  # (specificity, index, id, rule, low, high)
    claims: dict[bytes, _Claim] = {}
    placed: dict[int, int] = {}  # rule index -> keys it holds
    for index, rule in enumerate(config.rules):
        rule_id = ids(rule.name)
        rule_names[rule_id] = rule.name
        if rule.is_pair_default:
            pair = abi.PairKey(gen=gen, src_segment=config.segment_id(rule.src), dst_segment=config.segment_id(rule.dst))
            placed[index] = _claim(contents, claims, "pair_defaults", pair, _Claim(index, rule_id, rule, 0))
            continue
        for low, high in rule.ports or ((0, 65535),):
            port_rules.append((_specificity(low, high), index, rule_id, rule, low, high))
    # Exact ports first: a range's single-port piece never displaces an exact rule.
    for specificity, index, rule_id, rule, low, high in sorted(port_rules, key=lambda r: r[:2]):
        src, dst = config.segment_id(rule.src), config.segment_id(rule.dst)
        for value, bits in port_prefixes(low, high):
            # a single port in the hash (nothing is more specific, one lookup), the rest in the LPM trie
            key: ctypes.Structure
            if bits == 16:
                table, key = "rules_exact", abi.RuleExactKey(gen=gen, src_segment=src, dst_segment=dst, proto=rule.proto, port=value)
            else:
                table = "rules"
                key = abi.RuleKey(prefixlen=RULE_KEY_FIXED_BITS + bits, gen=gen, src_segment=src, dst_segment=dst, proto=rule.proto, port_be=_be16(value))
            placed[index] = placed.get(index, 0) + _claim(contents, claims, table, key, _Claim(index, rule_id, rule, specificity))
    return [
        f"rules[{index}] ({config.rules[index].name}) never matches: earlier or more specific rules cover all its traffic"
        for index, count in sorted(placed.items())
        if count == 0
    ]


def _claim(contents: MapContents, claims: dict[bytes, _Claim], map_name: str, key: ctypes.Structure, claim: _Claim) -> int:
    """Put a rule's key unless an earlier rule holds it (returns 1 if put); equal specificity must agree."""
    raw = map_name.encode() + abi.to_bytes(key)
    held = claims.get(raw)
    if held is None:
        claims[raw] = claim
        _put(contents, map_name, key, abi.RuleVerdict(rule_id=claim.rule_id, action=claim.rule.action))
        return 1
    if held.specificity == claim.specificity and held.rule.action != claim.rule.action:
        raise _conflict(claim.index, claim.rule, held.index, held.rule)
    return 0  # held by a more specific rule, or by an equal one with the same action


def _conflict(index: int, rule: Rule, first_index: int, first: Rule) -> ConfigError:
    return ConfigError(
        f"rules[{index}] ({rule.name}) and rules[{first_index}] ({first.name}) match the same traffic "
        f"with equal specificity but different actions"
    )


def _check_overlapping_ranges(config: Config) -> None:
    """Overlapping port ranges with different actions have no natural winner."""
    ranges: dict[tuple[str, str, int], list[tuple[int, int, int, Rule]]] = {}
    for index, rule in enumerate(config.rules):
        for low, high in rule.ports:
            if rule.proto is not None and _specificity(low, high) == 1:
                ranges.setdefault((rule.src, rule.dst, rule.proto), []).append((low, high, index, rule))
    for entries in ranges.values():
        entries.sort(key=lambda e: e[0])
        for i, (_low, high, index, rule) in enumerate(entries):
            for other_low, _, other_index, other in entries[i + 1 :]:
                if other_low > high:
                    break
                if other.action != rule.action:
                    raise _conflict(max(index, other_index), config.rules[max(index, other_index)], min(index, other_index), config.rules[min(index, other_index)])


def _be16(port: int) -> int:
    """The u16 whose memory holds port in network byte order."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def _segment_infos(config: Config, gen: int, contents: MapContents, rule_names: dict[int, str], ids: RuleIds) -> None:
    """Every segment's mode, default and stats slot; multicast and broadcast get an entry for their slot only
    (the program's default for a segment without one: monitor, allow, no rule)."""
    segments = dict(config.segments)
    if "unassigned" not in segments:
        segments["unassigned"] = Segment(name="unassigned", id=abi.const("SEGMENT_UNASSIGNED"))
    slots = {segment_id: slot for slot, segment_id in enumerate(sorted({s.id for s in segments.values()} | set(PSEUDO_SEGMENTS.values())), 1)}
    if len(slots) >= config.tables.pair_segments:
        raise ConfigError(f"tables.pair_segments: {len(slots)} segments (pseudo-segments included) need more than {config.tables.pair_segments - 1} "
                          "segment-pair counter slots: raise tables.pair_segments")
    hashes: dict[int, str] = {}
    for name in [*segments, *(n for n in PSEUDO_SEGMENTS if n not in segments)]:
        other = hashes.setdefault(segment_name_hash(name), name)
        if other != name:  # about one policy in ten million with 64 segments
            raise ConfigError(f"segments.{name}: its name hashes like segments.{other}'s, which would mix their counters: rename one")
    for segment in segments.values():
        name = f"default:{segment.name}"
        rule_id = ids(name)
        rule_names[rule_id] = name
        flags = ((abi.const("SEGMENT_MGMT") if segment.management else 0)
                 | (abi.const("SEGMENT_MGMT_INBOUND") if segment.management == "both" else 0)
                 | (abi.const("SEGMENT_LIFE_CRITICAL") if segment.life_critical else 0))
        info = abi.SegmentInfo(default_rule_id=rule_id, name_hash=segment_name_hash(segment.name), mode=segment.mode,
                               default_action=segment.default, flags=flags, stats_slot=slots[segment.id])
        _put(contents, "segments", abi.SegmentKey(gen=gen, segment=segment.id), info)
    for name, segment_id in PSEUDO_SEGMENTS.items():
        if segment_id not in {s.id for s in segments.values()}:
            info = abi.SegmentInfo(name_hash=segment_name_hash(name), mode=abi.Mode.monitor, default_action=abi.Action.allow, stats_slot=slots[segment_id])
            _put(contents, "segments", abi.SegmentKey(gen=gen, segment=segment_id), info)


def pair_counters_by_segment(counters: Iterable[tuple[int, int, int]], slots: Mapping[int, int], pair_segments: int) -> dict[tuple[int, int, abi.Verdict], tuple[int, int]]:
    """(src segment id, dst segment id, verdict) -> (packets, bytes), from (pair_stats index, packets, bytes)
    and the live generation's segment -> stats slot: pairs of segments that are gone are left out."""
    segment_of = {slot: segment_id for segment_id, slot in slots.items()}
    result = {}
    for index, packets, octets in counters:
        pair, verdict = divmod(index, abi.VERDICT_MAX)
        src, dst = divmod(pair, pair_segments)
        if src in segment_of and dst in segment_of and packets:
            result[(segment_of[src], segment_of[dst], abi.Verdict(verdict))] = (packets, octets)
    return result


def segment_name_hash(name: str) -> int:
    """What makes a segment the same one across generations and across loads of other configurations: its name
    (segment ids are positional in the config). 32 bits, never 0; _segment_infos refuses a collision."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little") or 1


def live_stats_slots(entries: Iterable[tuple[abi.SegmentKey, abi.SegmentInfo]]) -> dict[int, int]:  # type: ignore[valid-type]
    """segment name hash -> stats slot, of one generation's segment entries."""
    return {info.name_hash: info.stats_slot for _, info in entries}  # type: ignore[attr-defined]


def stable_stats_slots(segments: dict[bytes, bytes], live: Mapping[int, int], capacity: int) -> tuple[dict[bytes, bytes], set[int]]:
    """Re-number the stats slots of a generation's segment entries so that a segment keeps the slot it has
    in the live generation (live_stats_slots: its pair counters stay its own), and a new segment gets a slot
    nobody uses live if there is one, else one a removed segment left. Returns the entries and the slots
    that change owner (their counters must be zeroed before the flip)."""
    entries = sorted(((abi.SegmentKey.from_buffer_copy(k), abi.SegmentInfo.from_buffer_copy(v)) for k, v in segments.items()), key=lambda e: e[0].segment)
    identities = {info.name_hash for _, info in entries}
    if 0 in identities or len(identities) != len(entries):
        raise ValueError("segment entries need distinct, non-zero name_hash values (as compile_policy writes them)")
    taken = set(live.values())
    fresh = (slot for slot in range(1, capacity) if slot not in taken)
    freed = sorted(slot for identity, slot in live.items() if identity not in identities)
    result: dict[bytes, bytes] = {}
    new_owners: set[int] = set()
    for key, info in entries:
        identity = info.name_hash
        if identity in live:
            info.stats_slot = live[identity]
        else:
            info.stats_slot = next(fresh, None) or freed.pop(0)
            new_owners.add(info.stats_slot)
        result[abi.to_bytes(key)] = abi.to_bytes(info)
    return result, new_owners


def _rails(config: Config, gen: int, contents: MapContents) -> None:
    flags_of: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
    for address in config.dhcp_servers:
        flags_of[address] = flags_of.get(address, 0) | abi.const("RAIL_HOST_DHCP_SERVER")
    for address in config.routers:
        flags_of[address] = flags_of.get(address, 0) | abi.const("RAIL_HOST_ROUTER")
    for address, flags in flags_of.items():
        key = abi.RailHostKey(gen=gen, family=address.version if address.version == 4 else 6)
        ctypes.memmove(key.addr, address.packed, len(address.packed))
        _put(contents, "rail_hosts", key, ctypes.c_uint32(flags))


def with_setting_flags(contents: MapContents, flags: int) -> MapContents:
    """contents with SETTING_* flags added to its settings."""
    key = bytes(ctypes.c_uint32(0))
    raw = contents.get("settings", {}).get(key)
    if raw is not None:
        settings = abi.Settings.from_buffer_copy(raw)
        settings.flags |= flags
        contents["settings"][key] = abi.to_bytes(settings)
    return contents


def _in_place(config: Config, ifindex_of: Callable[[str], int], contents: MapContents) -> None:
    for port in sorted(config.pvid.keys() | config.allowed_vlans.keys() | set(config.trusted_ports)):
        info = abi.PortInfo(pvid=config.pvid.get(port, 0), vlan_filter=int(port in config.allowed_vlans), trusted=int(port in config.trusted_ports))
        _put(contents, "ports", ctypes.c_uint32(ifindex_of(port)), info)
        for vlan in config.allowed_vlans.get(port, ()):
            _put(contents, "port_vlans", abi.PortVlanKey(ifindex=ifindex_of(port), vlan=vlan), ctypes.c_uint8(1))
    s = config.settings
    flags = (
        (abi.const("SETTING_VLAN_FILTER") if config.allowed_vlans else 0)
        | (abi.const("SETTING_DROP_UNKNOWN_ETHERTYPE") if s.drop_unknown_ethertype else 0)
        | (abi.const("SETTING_DHCP_SERVERS_LISTED") if config.dhcp_servers else 0)
        | (abi.const("SETTING_ROUTERS_LISTED") if config.routers else 0)
        | (abi.const("SETTING_TRUSTED_PORTS") if config.trusted_ports else 0)
    )
    settings = abi.Settings(
        sample_first_packets=s.sample_first_packets,
        sample_one_in_n=s.sample_one_in_n,
        flags=flags,
        snaplen=s.snaplen,
        tcp_idle_timeout_s=s.tcp_idle_timeout,
        idle_timeout_s=s.idle_timeout,
    )
    _put(contents, "settings", ctypes.c_uint32(0), settings)
    for budget, (per_sec, burst) in s.sample_budgets.items():
        _put(contents, "sample_budgets", ctypes.c_uint32(budget), abi.BudgetConfig(per_sec=per_sec, burst=burst))
