"""What a new policy would change, in the operator's terms: segments, members, rules."""

from __future__ import annotations

from collections.abc import Mapping

from medseg_xdp.config import Config, Rule, protocol_name
from medseg_xdp.policy_image import device_segments


def _rule_text(rule: Rule) -> str:
    if rule.is_pair_default:
        what = "any traffic"
    else:
        proto = protocol_name(rule.proto or 0)
        ports = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in rule.ports) or "any port"
        what = f"{proto} {ports}"
    return f"{rule.src} -> {rule.dst} {what}: {rule.action.name}"


def _segment_text(cfg: Config, name: str) -> str:
    segment = cfg.segments[name]
    members = [*segment.classes, *(str(p) for p in segment.prefixes), *(f"vlan {v}" for v in segment.vlans)]
    management = {"outbound": "management (outbound)", "both": "management (both ways)"}.get(segment.management, "")
    flags = [flag for flag in ("life-critical" if segment.life_critical else "", management) if flag]
    return f"mode {segment.mode.name}, default {segment.default.name}" + (f", {', '.join(flags)}" if flags else "") + (f" ({'; '.join(members)})" if members else "")


def describe_changes(old: Config, new: Config, class_of: Mapping[str, str], pinned: Mapping[str, str]) -> list[str]:
    """Lines '+ ...', '- ...', '~ ...'; empty when nothing changes."""
    lines: list[str] = []
    for name in sorted(old.segments.keys() | new.segments.keys()):
        if name not in new.segments:
            lines.append(f"- segment {name}")
        elif name not in old.segments:
            lines.append(f"+ segment {name}: {_segment_text(new, name)}")
        elif _segment_text(old, name) != _segment_text(new, name):
            lines.append(f"~ segment {name}: {_segment_text(old, name)} -> {_segment_text(new, name)}")
    old_rules = {rule.name: _rule_text(rule) for rule in old.rules}
    new_rules = {rule.name: _rule_text(rule) for rule in new.rules}
    for name in sorted(old_rules.keys() | new_rules.keys()):
        if name not in new_rules:
            lines.append(f"- rule {name}: {old_rules[name]}")
        elif name not in old_rules:
            lines.append(f"+ rule {name}: {new_rules[name]}")
        elif old_rules[name] != new_rules[name]:
            lines.append(f"~ rule {name}: {old_rules[name]} -> {new_rules[name]}")
    new_pins = {mac: segment for mac, segment in pinned.items() if segment in new.segments}
    old_members = device_segments(old, class_of, pinned)
    new_members = device_segments(new, class_of, new_pins)
    for mac in sorted(old_members.keys() | new_members.keys()):
        before, after = old_members.get(mac, "unassigned"), new_members.get(mac, "unassigned")
        if before != after:
            lines.append(f"~ device {mac}: {before} -> {after}")
    if old.settings != new.settings:
        lines.append(f"~ settings: {old.settings} -> {new.settings}")
    if (old.dhcp_servers, old.routers) != (new.dhcp_servers, new.routers):
        lines.append("~ rails: DHCP servers or routers changed")
    return lines
