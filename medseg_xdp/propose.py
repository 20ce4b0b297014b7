"""A least-privilege policy proposal from the baseline, for a person to review.

The proposal is TOML that config.parse() accepts: one segment per device
class (from the baseline and the inventory; the segment is named after the
class, '_' written '-'), devices the inventory has not classified in the
pseudo-segment "unassigned", and one allow rule per learned (source,
destination, protocol, port) with at least min_flows flow starts, each
preceded by its evidence: flow count, first and last seen (UTC), and the
example devices (MAC, IP, hostname when known). At most max_rules rules
(the best-evidenced); what is left out, and flows that pass on the rails,
are listed in a closing comment.

Every segment, "unassigned" included, is in monitor mode with default
"drop": nothing is dropped until a reviewer switches a segment to enforce,
and meanwhile whatever the rules do not allow is counted as audit (would
drop), which is what a reviewer needs to see. Patient safety over least
privilege for unknown devices is therefore a decision taken at enforce time,
per segment, not here. The output is deterministic: the same baseline and
inventory give the same text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from medseg_xdp.baseline import Baseline, Example, FlowRecord
from medseg_xdp.classify import LIFE_CRITICAL, UNKNOWN, Catalog
from medseg_xdp.config import PROTOCOLS, PSEUDO_SEGMENTS, protocol_name
from medseg_xdp.inventory import Inventory, subnet_of

MAX_LISTED = 20  # left-out records listed by name in the closing comment
# Rules proposed at most, the best-evidenced first: a scan during learning must not yield a policy that
# exhausts the dataplane's rule ids (abi MAX_RULE_IDS, shared with segment defaults and never reused),
# and no person reviews more.
MAX_PROPOSED_RULES = 4096
MAX_COMMENT_TEXT = 64


def segment_name(device_class: str) -> str:
    return device_class.replace("_", "-")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def safe_comment(text: str) -> str:
    """Text from the network (hostnames) made safe for one comment line."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:MAX_COMMENT_TEXT] + ("..." if len(cleaned) > MAX_COMMENT_TEXT else "")


def routed_segment(address: str) -> tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The proposal's segment for hosts routed behind a gateway: the address's subnet (subnet_of)."""
    prefix = subnet_of(address)
    return f"routed-{str(prefix.network_address).replace('.', '-').replace(':', '-')}-{prefix.prefixlen}", prefix


@dataclass(frozen=True)
class _RuleKey:
    src: str
    dst: str
    proto: int
    port: int

    @property
    def proto_name(self) -> str:
        return protocol_name(self.proto)

    @property
    def rule_id(self) -> str:
        return f"{self.src}-to-{self.dst}-{self.proto_name}-{self.port}"

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst} {self.proto_name}/{self.port}"


class _Proposal:
    def __init__(self, baseline: Baseline, inventory: Inventory, catalog: Catalog, min_flows: int, max_rules: int) -> None:
        self.learned = baseline.regrouped(inventory)
        self.inventory = inventory
        self.catalog = catalog
        self.min_flows = min_flows
        self.source = baseline
        self.gateways = frozenset(mac for mac, device in inventory.devices.items() if device.is_gateway)
        self.routed: dict[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, set[str], int]] = {}  # segment -> prefix, gateways, flows
        seen = {group.removeprefix("class:") for record in self.learned for group in (record.src_group, record.dst_group)}
        seen |= {device.device_class for mac, device in inventory.devices.items() if mac not in self.gateways}
        self.classes = sorted(c for c in seen if c in catalog.classes and c != UNKNOWN)
        self.rules: dict[_RuleKey, list[FlowRecord]] = {}
        self.rails: dict[_RuleKey, list[FlowRecord]] = {}
        self.too_few: dict[_RuleKey, list[FlowRecord]] = {}
        self.unanswered: dict[_RuleKey, list[FlowRecord]] = {}
        for record, key in (part for whole in self.learned for part in self.routed_parts(whole)):
            if record.is_rail:
                wanted = self.rails
            elif record.proto == PROTOCOLS["tcp"] and not record.answered:
                wanted = self.unanswered  # a scan's probes, a closed port: nothing a device needs
            else:
                wanted = self.rules
            wanted.setdefault(key, []).append(record)
        for key in [k for k in self.unanswered if k in self.rules]:  # answered elsewhere under the same rule
            self.rules[key] += self.unanswered.pop(key)
        for key in [k for k, records in self.rules.items() if _flows(records) < min_flows]:
            self.too_few[key] = self.rules.pop(key)
        self.over_budget: dict[_RuleKey, list[FlowRecord]] = {}
        if len(self.rules) > max_rules:
            ranked = sorted(self.rules, key=lambda k: (-_flows(self.rules[k]), -max(r.last_seen for r in self.rules[k]), _order(k)))
            self.over_budget = {key: self.rules.pop(key) for key in ranked[max_rules:]}

    def routed_parts(self, record: FlowRecord) -> Iterator[tuple[FlowRecord, _RuleKey]]:
        """The record under its groups' segments, less the examples with an end behind a gateway: those go to
        the segment of that end's routed prefix (routed_segment), one part per segment pair."""
        parts: dict[tuple[str, str], list[Example]] = {}
        rest: list[Example] = []
        for example in record.examples:
            ends = (self.routed_end(example.src_mac, example.src_ip, example.flows), self.routed_end(example.dst_mac, example.dst_ip, example.flows))
            if ends == (None, None):
                rest.append(example)
            else:
                parts.setdefault((ends[0] or self.segment_of(record.src_group), ends[1] or self.segment_of(record.dst_group)), []).append(example)
        moved = [example for examples in parts.values() for example in examples]
        if rest or record.flows > sum(example.flows for example in moved):
            remainder = _part(record, rest, record.flows - sum(e.flows for e in moved), record.answered - sum(e.answered for e in moved),
                              record.midstream - sum(e.midstream for e in moved))
            yield remainder, _RuleKey(self.segment_of(record.src_group), self.segment_of(record.dst_group), record.proto, record.port)
        for (src, dst), examples in parts.items():
            yield (_part(record, examples, sum(e.flows for e in examples), sum(e.answered for e in examples), sum(e.midstream for e in examples)),
                   _RuleKey(src, dst, record.proto, record.port))

    def routed_end(self, mac: str, ip: str, flows: int) -> str | None:
        """The routed segment of an end whose MAC is a gateway's, else None."""
        if mac not in self.gateways:
            return None
        name, prefix = routed_segment(ip)
        _, gateways, seen = self.routed.get(name, (prefix, set(), 0))
        self.routed[name] = (prefix, gateways | {mac}, seen + flows)
        return name

    def segment_of(self, group: str) -> str:
        if group in PSEUDO_SEGMENTS:
            return group
        device_class = group.removeprefix("class:")
        return segment_name(device_class) if device_class in self.classes else "unassigned"

    def text(self) -> str:
        lines = self.header()
        for device_class in self.classes:
            lines += self.segment(device_class)
        for name in sorted(self.routed):
            prefix, gateways, flows = self.routed[name]
            lines += [
                f"# Hosts in {prefix}, routed behind {', '.join(sorted(gateways))} ({count(flows, 'flow')} learned): rename",
                "# the segment after the servers it holds (the PACS, the EHR), and narrow the prefix to them.",
                f"[segments.{name}]",
                f'prefixes = ["{prefix}"]',
                'mode = "monitor"',
                'default = "drop"',
                "",
            ]
        lines += [
            "# Devices the inventory has not classified, and hosts it does not know (e.g. beyond a router).",
            "[segments.unassigned]",
            'mode = "monitor"',
            'default = "drop"',
            "",
        ]
        for key in sorted(self.rules, key=_order):
            lines += self.rule(key, self.rules[key])
        lines += self.left_out()
        return "\n".join(lines).rstrip("\n") + "\n"

    def header(self) -> list[str]:
        learned = list(self.learned)
        lines = ["# medseg-xdp policy proposal: least privilege, learned from the flows the baseline recorded."]
        if learned:
            first = min(r.first_seen for r in learned)
            last = max(r.last_seen for r in learned)
            lines.append(f"# Baseline: {sum(r.flows for r in learned)} flow starts in {len(learned)} records, {iso(first)} to {iso(last)}.")
        else:
            lines.append("# Baseline: empty (no flow starts recorded): every flow would be audited.")
        if self.source.overflow or self.source.evicted:
            lines.append(
                f"# WARNING: the baseline was full: {self.source.overflow} flow starts not recorded, "
                f"{self.source.evicted} single-flow records replaced. Some real flows may have no rule."
            )
        lines += [
            "#",
            "# A person reviews this before it is applied: each rule allows what the baseline saw, and that can",
            "# include mistakes, one-off maintenance and scans. Check the evidence above each rule.",
            "# Every segment starts in monitor mode: nothing is dropped, and what the rules do not allow is counted",
            "# as audit (would drop). Run `medseg-xdp policy simulate` on this file, then switch segments to",
            '# mode = "enforce" one at a time. Segments of life-critical devices also need',
            "# allow_enforce_life_critical = true to enforce.",
            "# The rails pass under any policy and need no rules: ARP, IPv6 ND/RA/MLD, DHCP and DHCPv6,",
            "# STP/LACP/LLDP/EAPOL, and ICMP errors of allowed flows.",
            "# A TCP connection already open when learning began (e.g. a long-lived HL7 link) is learned from",
            "# its first segments after the bridge picked it up; which end listens is then inferred (from a",
            "# direction seen opened, else from the ports): check rules whose evidence says 'mid-stream'.",
            "# [bridge], [settings], [rails], [[pins]], [tables] and [daemon] come from the running",
            "# configuration: merge them in.",
        ]
        if self.gateways:
            lines += [
                "#",
                "# Gateways: these MACs send from addresses in several subnets, so they carry routed hosts' packets.",
                "# A gateway's MAC places no one: the hosts behind it are placed by address. This proposal gives",
                "# each /24 (IPv6: /64) it saw behind one a segment of its own (routed-...); rename them after the",
                "# servers they hold. Pin a MAC's class if it is not a gateway.",
            ]
            for mac in sorted(self.gateways):
                device = self.inventory.devices[mac]
                lines.append(f"#   {mac}: {len(device.ips)} addresses, e.g. {', '.join(sorted(device.ips)[:3])}")
        return [*lines, ""]

    def segment(self, device_class: str) -> list[str]:
        info = self.catalog.classes[device_class]
        members = sum(1 for mac, d in self.inventory.devices.items() if d.device_class == device_class and mac not in self.gateways)
        lines = [f"# {safe_comment(info.label)} (criticality {info.criticality}): {count(members, 'device')} in the inventory."]
        life_critical = info.criticality == LIFE_CRITICAL
        if life_critical:
            lines.append('# LIFE-CRITICAL: to enforce, set mode = "enforce" and allow_enforce_life_critical = true.')
        lines += [
            f"[segments.{segment_name(device_class)}]",
            f'classes = ["{device_class}"]',
            'mode = "monitor"',
            'default = "drop"',
        ]
        if life_critical:
            lines.append("allow_enforce_life_critical = false")
        return [*lines, ""]

    def rule(self, key: _RuleKey, records: list[FlowRecord]) -> list[str]:
        flows = _flows(records)
        first = min(r.first_seen for r in records)
        last = max(r.last_seen for r in records)
        lines = [f"# {count(flows, 'flow')}, first seen {iso(first)}, last seen {iso(last)}"]
        examples = sorted((e for r in records for e in r.examples), key=lambda e: (-e.flows, e.src_mac, e.dst_mac, e.src_ip, e.dst_ip))
        for example in examples[:8]:
            lines.append(f"#   {self.device(example.src_mac, example.src_ip)} -> {self.device(example.dst_mac, example.dst_ip)}: {count(example.flows, 'flow')}, last {iso(example.last_seen)}")
        others = flows - sum(e.flows for e in examples[:8])
        if others:
            lines.append(f"#   and {count(others, 'flow')} between other devices")
        midstream = sum(r.midstream for r in records)
        if midstream:
            lines.append(f"#   {midstream} of them seen mid-stream (open before learning began): the listening end was inferred;")
            lines.append("#   check the direction, a reconnection from the other end would meet no rule")
        lines += [
            "[[rules]]",
            f'id = "{key.rule_id}"',
            f'from = "{key.src}"',
            f'to = "{key.dst}"',
            f'proto = "{key.proto_name}"' if key.proto in PROTOCOLS.values() else f"proto = {key.proto}",
            f"ports = [{key.port}]",
            'action = "allow"',
            "",
        ]
        return lines

    def device(self, mac: str, ip: str) -> str:
        known = self.inventory.devices.get(mac)
        hostname = f" ({safe_comment(known.hostname)})" if known is not None and known.hostname else ""
        return f"{mac} {ip}{hostname}"

    def left_out(self) -> list[str]:
        lines: list[str] = []
        for title, table in (
            ("Passing on the rails (no rule needed)", self.rails),
            ("Not proposed: TCP the other end never answered (a scan, a closed port; add by hand if real)", self.unanswered),
            (f"Not proposed: fewer than {self.min_flows} flow starts (add them by hand if they are real)", self.too_few),
            (f"Not proposed: beyond {len(self.rules)} rules, the fewest flows (a scan while learning?)", self.over_budget),
        ):
            if not table:
                continue
            lines.append(f"# {title}:")
            keys = sorted(table, key=_order)
            for key in keys[:MAX_LISTED]:
                lines.append(f"#   {key.label}: {count(_flows(table[key]), 'flow')}, last seen {iso(max(r.last_seen for r in table[key]))}")
            if len(keys) > MAX_LISTED:
                lines.append(f"#   and {len(keys) - MAX_LISTED} more")
            lines.append("")
        return lines


def _part(record: FlowRecord, examples: list[Example], flows: int, answered: int, midstream: int) -> FlowRecord:
    """A share of a record: some of its examples, and the flows they (or the rest) stand for."""
    first = min((e.first_seen for e in examples), default=record.first_seen)
    last = max((e.last_seen for e in examples), default=record.last_seen)
    return FlowRecord(record.src_group, record.dst_group, record.proto, record.port, flows, first, last, examples, answered, midstream)


def _order(key: _RuleKey) -> tuple[str, str, int, int]:
    return key.src, key.dst, key.proto, key.port


def _flows(records: Iterable[FlowRecord]) -> int:
    return sum(r.flows for r in records)


def propose(baseline: Baseline, inventory: Inventory, catalog: Catalog, min_flows: int = 1, max_rules: int = MAX_PROPOSED_RULES) -> str:
    """The proposed policy as TOML text (config.parse accepts it); see the module's docstring.

    At most max_rules rules, those with the most flows; the rest are listed in a closing comment.
    """
    if min_flows < 1 or max_rules < 0:
        raise ValueError("min_flows must be at least 1, max_rules at least 0")
    return _Proposal(baseline, inventory, catalog, min_flows, max_rules).text()

