"""Config parsing and the policy compiler, without root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medseg_xdp import abi, config
from medseg_xdp.config import ConfigError, parse
from medseg_xdp.policy_image import RuleIds, compile_policy, live_stats_slots, pair_counters_by_segment, port_prefixes, stable_stats_slots

FIXTURE_CONFIG = Path(__file__).parent / "fixture_policy.toml"


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_prefixes_cover_exactly_the_range(a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    prefixes = port_prefixes(low, high)
    covered = []
    for value, bits in prefixes:
        size = 1 << (16 - bits)
        assert value % size == 0  # a real prefix
        covered.append((value, value + size - 1))
    covered.sort()
    assert covered[0][0] == low and covered[-1][1] == high
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in zip(covered, covered[1:], strict=False))
    assert len(prefixes) <= 30  # at most 2 * 15 prefixes for 16 bits


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rules]]\nfrom = "a"\nto = "b"\naction = "allow"', "rules[0].from: unknown segment 'a'"),
        ('[segments.x]\nmode = "strict"', "segments.x.mode: 'strict' is not one of monitor, enforce"),
        ('[segments.x]\nmacs = ["00:11"]', "segments.x.macs[0]: '00:11' is not a MAC address"),
        ('[segments.x]\nprefixes = ["10.0.0.1/8"]', "segments.x.prefixes[0]: 10.0.0.1/8 has host bits set"),
        ('[segments.x]\n[[rules]]\nfrom = "x"\nto = "x"\nproto = "tcp"\nports = [70000]\naction = "allow"', "rules[0].ports[0]: 70000 is out of range"),
        ('[segments.x]\n[[rules]]\nfrom = "x"\nto = "x"\nports = [80]\naction = "allow"', "rules[0].ports: ports need a proto"),
        ('[segments.x]\n[[rules]]\nfrom = "x"\nto = "x"\nproto = "tcp"\naction = "permit"', "rules[0].action: 'permit' is not one of allow, drop, audit"),
        ('[segments.x]\nport = "eth9"', "segments.x.port: 'eth9' is not in bridge.ports"),
        ('[segments.x]\nmacs = ["00:11:22:33:44:55"]\n[segments.y]\nmacs = ["00:11:22:33:44:55"]', "segments.y.macs[0]: 00:11:22:33:44:55 is already in segment 'x'"),
        ('[settings]\nsnaplen = 4096', "settings.snaplen: 4096 is out of range 1..512"),
        ("[bridge]\nport = []", "bridge.port: unknown key"),
        ("[segments.unassigned]\nmacs = []", "segments.unassigned.macs: the pseudo-segment 'unassigned' takes only"),
        ("not toml = = 1", "(at line 1, column 5)"),
        ("[settings]\ndhcp_samples_burst = 0", "settings.dhcp_samples_burst: 0 would hold back every sample"),
        ('[segments.x]\nclasses = ["infusion_pump"]\nmode = "enforce"', "segments.x.mode: enforcing a segment of life-critical devices must be explicit"),
        ('[segments.x]\nmacs = ["00:11:22:33:44:55"]\nlife_critical = true\nmode = "enforce"', "segments.x.mode: enforcing a segment of life-critical devices must be explicit"),
        ('[segments.x]\n[[rules]]\nfrom = "x"\nto = "x"\nproto = "icmp"\nports = [300]\naction = "allow"', "rules[0].ports: an ICMP rule's ports are ICMP types, 0..255"),
        ('[segments.x]\nmode = "enforce"\n[[pins]]\nmac = "00:11:22:33:44:55"\nsegment = "x"\nclass = "infusion_pump"', "pins[0]: segment 'x' enforces, and a device of class infusion_pump is life-critical"),
        ('[segments.x]\nmode = "enforce"\nmacs = ["00:11:22:33:44:55"]\n[[pins]]\nmac = "00:11:22:33:44:55"\nclass = "infusion_pump"',
         "pins[0]: segment 'x' enforces, and a device of class infusion_pump is life-critical"),  # a class alone: stays in x
        ('[bridge]\nports = ["portA", "portB"]\nallowed_vlans = { portA = [30] }\n[segments.x]\nport = "portA"\nvlans = [20]',
         "segments.x.vlans[0]: VLAN 20 cannot enter the segment's port 'portA'"),
        ('[bridge]\nports = ["portA"]\nallowed_vlans = { portA = [30] }\n[segments.x]\nprefixes = ["10.0.0.0/8"]\nvlan = 20',
         "segments.x.vlan: VLAN 20 enters no port"),
        ('[segments.x]\nmode = []', "segments.x.mode: [] is not one of monitor, enforce"),
        ('[segments.x]\n[[rules]]\nfrom = ["x"]\nto = "x"\naction = "allow"', "rules[0].from: unknown segment ['x']"),
        ('[segments.x]\n[[rules]]\nid = "default:x"\nfrom = "x"\nto = "x"\naction = "allow"', "rules[0].id: 'default:x': a rule id is not empty"),
        ('[segments.x]\n[[rules]]\nid = ""\nfrom = "x"\nto = "x"\naction = "allow"', "rules[0].id: '': a rule id is not empty"),
        ('[segments.x]\n[[rules]]\nfrom = "x"\nto = "x"\nproto = 47\nports = [1]\naction = "allow"', "rules[0].ports: protocol 47 has no ports"),
        ('[events]\nsyslog = "udp://10.0.0.1:99999"', "events.syslog: 'udp://10.0.0.1:99999' is not udp://host:port"),
        ('[bridge]\nname = "../x"', "bridge.name: '../x': letters, digits"),
        ('[segments.x]\nmacs = ["01:00:5e:00:00:16"]', "segments.x.macs[0]: 01:00:5e:00:00:16 is a group (multicast or broadcast) MAC"),
        ('[[pins]]\nmac = "ff:ff:ff:ff:ff:ff"\nclass = "printer"', "pins[0].mac: ff:ff:ff:ff:ff:ff is a group"),
        ('[bridge]\nports = ["portA"]\n[rails]\ntrusted_ports = ["uplink"]', "rails.trusted_ports[0]: 'uplink' is not a port listed in bridge.ports"),
    ],
)
def test_errors_name_the_file_and_the_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.parse(text, "policy.toml")
    assert re.match(r"policy.toml(:\d+)?: ", str(raised.value))
    assert message in str(raised.value)


def test_equal_specificity_with_different_actions_is_an_error() -> None:
    text = """
[segments.a]
[segments.b]
[[rules]]
id = "web"
from = "a"
to = "b"
proto = "tcp"
ports = ["80-90"]
action = "allow"
[[rules]]
id = "block"
from = "a"
to = "b"
proto = "tcp"
ports = ["88-95"]
action = "drop"
"""
    with pytest.raises(ConfigError, match=r"^policy.toml: rules\[1\] \(block\) and rules\[0\] \(web\)"):
        compile_policy(config.parse(text, "policy.toml"), 1, lambda port: 1)


def test_an_exact_port_inside_a_range_is_more_specific_not_a_conflict() -> None:
    cfg = config.load(FIXTURE_CONFIG)
    compiled = compile_policy(cfg, 1, {"portA": 2, "portB": 3, "portC": 4}.__getitem__)
    assert "dicom-alt" in compiled.rule_names.values()
    assert "dicom-query" in compiled.rule_names.values()


def test_every_key_carries_the_generation() -> None:
    cfg = config.load(FIXTURE_CONFIG)
    compiled = compile_policy(cfg, 7, {"portA": 2, "portB": 3, "portC": 4}.__getitem__)
    from medseg_xdp.dataplane import MAP_LAYOUTS
    from medseg_xdp.policy_image import GENERATIONAL_MAPS

    for name in GENERATIONAL_MAPS:
        key_type = MAP_LAYOUTS[name][0]
        for raw in compiled.contents[name]:
            assert key_type.from_buffer_copy(raw).gen == 7, name
    assert compiled.rule_names[len(cfg.rules) + 1].startswith("default:")
    assert abi.const("MAX_RULE_IDS") > max(compiled.rule_names)


def test_exact_port_wins_over_a_range_piece_of_the_same_port() -> None:
    text = """
[segments.a]
[segments.b]
[[rules]]
id = "range"
from = "a"
to = "b"
proto = "tcp"
ports = ["80-90"]
action = "allow"
[[rules]]
id = "exact"
from = "a"
to = "b"
proto = "tcp"
ports = [90]
action = "drop"
"""
    compiled = compile_policy(config.parse(text), 1, lambda port: 1)
    by_port = {}
    for raw, value in compiled.contents["rules"].items():
        key, verdict = abi.RuleKey.from_buffer_copy(raw), abi.RuleVerdict.from_buffer_copy(value)
        port = int.from_bytes(key.port_be.to_bytes(2, "little"), "big")
        by_port[(port, key.prefixlen - 80)] = compiled.rule_names[verdict.rule_id]
    for raw, value in compiled.contents["rules_exact"].items():  # single ports: the hash in front of the trie
        by_port[(abi.RuleExactKey.from_buffer_copy(raw).port, 16)] = compiled.rule_names[abi.RuleVerdict.from_buffer_copy(value).rule_id]
    assert by_port == {(80, 13): "range", (88, 15): "range", (90, 16): "exact"}


def test_a_rule_that_can_never_match_is_reported() -> None:
    text = """
[segments.a]
[segments.b]
[[rules]]
id = "all-tcp"
from = "a"
to = "b"
proto = "tcp"
action = "allow"
[[rules]]
id = "tcp-again"
from = "a"
to = "b"
proto = "tcp"
action = "allow"
"""
    compiled = compile_policy(config.parse(text), 1, lambda port: 1)
    assert compiled.warnings == ["rules[1] (tcp-again) never matches: earlier or more specific rules cover all its traffic"]


def test_a_table_too_small_is_an_error() -> None:
    text = "[tables]\nsegments = 2\n[segments.a]\n[segments.b]\n[segments.c]\n"
    with pytest.raises(ConfigError, match=r"tables.segments: 6 segments entries do not fit in 2"):
        compile_policy(config.parse(text), 1, lambda port: 1)


def test_membership_precedence_pin_then_macs_then_classes() -> None:
    from medseg_xdp.policy_image import device_segments

    text = """
[segments.pumps]
classes = ["infusion_pump"]
[segments.quarantine]
macs = ["02:00:00:00:00:02"]
[segments.lab]
[[pins]]
mac = "02:00:00:00:00:03"
segment = "lab"
"""
    cfg = config.parse(text)
    class_of = {"02:00:00:00:00:01": "infusion_pump", "02:00:00:00:00:02": "infusion_pump", "02:00:00:00:00:03": "infusion_pump", "02:00:00:00:00:04": "printer"}
    assert device_segments(cfg, class_of) == {
        "02:00:00:00:00:01": "pumps",
        "02:00:00:00:00:02": "quarantine",
        "02:00:00:00:00:03": "lab",
    }
    assert cfg.segments["pumps"].life_critical  # holds a life-critical class


def test_rule_ids_are_stable_across_edits() -> None:
    from medseg_xdp.policy_image import RuleIds

    ids = RuleIds({"dicom": 7, "default:pacs": 3})
    assert (ids("dicom"), ids("default:pacs"), ids("new-rule"), ids("new-rule")) == (7, 3, 8, 8)


def _slots(contents: dict[str, dict[bytes, bytes]]) -> dict[int, int]:
    return {abi.SegmentKey.from_buffer_copy(k).segment: abi.SegmentInfo.from_buffer_copy(v).stats_slot for k, v in contents["segments"].items()}


def test_segments_keep_their_pair_counter_slots_across_generations() -> None:
    """Counters follow the segment by its name (segment_info.name_hash), not its positional id nor its default
    rule id: the second policy is compiled with fresh rule ids, as `medseg-xdp load` of another file does."""
    first = compile_policy(parse("[segments.a]\n[segments.b]\n[segments.c]\n"), 1, lambda port: 0, rule_ids=RuleIds()).contents
    live = live_stats_slots((abi.SegmentKey.from_buffer_copy(k), abi.SegmentInfo.from_buffer_copy(v)) for k, v in first["segments"].items())
    a, b, c = (parse("[segments.a]\n[segments.b]\n[segments.c]\n").segment_id(n) for n in "abc")
    assert sorted(_slots(first).values()) == list(range(1, 7))  # a, b, c, unassigned, multicast, broadcast
    # b removed, d added: a and c keep their slots although c's id moved up; d gets a slot no one used
    second = compile_policy(parse("[segments.zz]\n[segments.a]\n[segments.c]\n[segments.d]\n"), 2, lambda port: 0, rule_ids=RuleIds()).contents
    restamped, new_owners = stable_stats_slots(second["segments"], live, capacity=64)
    slots = _slots({"segments": restamped})
    cfg = parse("[segments.zz]\n[segments.a]\n[segments.c]\n[segments.d]\n")
    assert slots[cfg.segment_id("a")] == _slots(first)[a] and slots[cfg.segment_id("c")] == _slots(first)[c]
    assert new_owners == {slots[cfg.segment_id("zz")], slots[cfg.segment_id("d")]} == {7, 8}
    # when every slot is taken, a new segment reuses the one a removed segment left, to be zeroed
    restamped, new_owners = stable_stats_slots(second["segments"], live, capacity=8)
    assert new_owners == {7, _slots(first)[b]}


def test_pair_counters_read_back_by_segment_and_only_for_live_segments() -> None:
    slots = {0: 1, 7: 2}
    counters = [((1 * 64 + 2) * 3 + 1, 5, 500), ((2 * 64 + 9) * 3 + 0, 1, 60), ((2 * 64 + 2) * 3 + 2, 0, 0)]
    assert pair_counters_by_segment(counters, slots, 64) == {(0, 7, abi.Verdict.drop): (5, 500)}


def test_two_segment_names_that_hash_alike_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_xdp import policy_image

    names = ["pumps", "pacs", *policy_image.PSEUDO_SEGMENTS]
    monkeypatch.setattr(policy_image, "segment_name_hash", lambda name: 5 if name in ("pumps", "pacs") else 100 + names.index(name))
    with pytest.raises(ConfigError, match=r"segments.pacs: its name hashes like segments.pumps's, which would mix their counters"):
        compile_policy(parse("[segments.pumps]\n[segments.pacs]\n"), 1, lambda port: 0)
    monkeypatch.undo()
    contents = compile_policy(parse("[segments.pumps]\n[segments.pacs]\n"), 1, lambda port: 0).contents["segments"]
    key, value = next(iter(contents.items()))
    twin = abi.SegmentKey.from_buffer_copy(key)
    twin.segment += 1000
    with pytest.raises(ValueError, match="distinct, non-zero name_hash"):  # the dataplane's own guard
        stable_stats_slots({**contents, abi.to_bytes(twin): value}, {}, 64)


def test_more_segments_than_pair_counter_slots_is_a_config_error() -> None:
    text = "[tables]\npair_segments = 8\n" + "".join(f"[segments.s{n}]\n" for n in range(5))
    with pytest.raises(ConfigError, match=r"tables.pair_segments: 8 segments \(pseudo-segments included\) need more than 7"):
        compile_policy(parse(text), 1, lambda port: 0)
    with pytest.raises(ConfigError, match=r"tables.pair_segments: 300 is out of range 4..256"):
        parse("[tables]\npair_segments = 300\n")


def test_allowed_vlans_per_port() -> None:
    cfg = parse('[bridge]\nports = ["portA", "portB"]\nallowed_vlans = { portA = [30, 20, 30] }\n')
    assert cfg.allowed_vlans == {"portA": (20, 30)}
    contents = compile_policy(cfg, 1, {"portA": 5, "portB": 6}.__getitem__).contents
    assert [(abi.PortVlanKey.from_buffer_copy(k).ifindex, abi.PortVlanKey.from_buffer_copy(k).vlan) for k in contents["port_vlans"]] == [(5, 20), (5, 30)]
    settings = abi.Settings.from_buffer_copy(contents["settings"][bytes(4)])
    assert settings.flags & abi.const("SETTING_VLAN_FILTER")
    for bad, message in (("{ portZ = [20] }", "not a port listed"), ("{ portA = [] }", "non-empty list"), ("{ portA = [4095] }", "1..4094")):
        with pytest.raises(ConfigError, match=message):
            parse(f'[bridge]\nports = ["portA"]\nallowed_vlans = {bad}\n')
    # a segment's VLAN enters through the list, the PVID (untagged frames), or a port without a list
    bridge = '[bridge]\nports = ["portA", "portB"]\npvid = { portA = 20 }\nallowed_vlans = { portA = [30] }\n'
    assert parse(bridge + '[segments.x]\nport = "portA"\nvlans = [20, 30]\n').segments["x"].vlans == (20, 30)
    assert parse(bridge + '[segments.x]\nvlans = [40]\n').segments["x"].vlans == (40,)  # portB takes any tag


def test_a_config_pins_class_places_the_device_by_class() -> None:
    """`class` in [[pins]] is a person's word on the device's class: it places the device in that class's segment,
    over the inventory's class, while a segment's macs and any pin's segment still come first."""
    from medseg_xdp.policy_image import device_segments

    cfg = parse('[segments.imaging]\nclasses = ["imaging_modality"]\n[segments.printers]\nclasses = ["printer"]\n'
                '[segments.lab]\nmacs = ["02:00:00:00:00:02"]\n'
                '[[pins]]\nmac = "02:00:00:00:00:01"\nclass = "imaging_modality"\n[[pins]]\nmac = "02:00:00:00:00:02"\nclass = "printer"\n')
    members = device_segments(cfg, {"02:00:00:00:00:01": "printer", "02:00:00:00:00:03": "printer"})
    assert members == {"02:00:00:00:00:01": "imaging", "02:00:00:00:00:02": "lab", "02:00:00:00:00:03": "printers"}
    assert device_segments(cfg, {}, {"02:00:00:00:00:01": "lab"})["02:00:00:00:00:01"] == "lab"  # a live pin's segment first


def test_a_life_critical_device_in_an_enforcing_mac_list_is_a_compile_warning() -> None:
    """The classifier finds a pump in an enforcing segment's macs: no person placed it, so nothing was refused,
    and the compiled policy (policy check, simulate, the daemon's log) says it can be cut off."""
    cfg = parse('[segments.lab]\nmacs = ["02:00:00:00:00:01", "02:00:00:00:00:02"]\nmode = "enforce"\n'
                '[segments.icu]\nmacs = ["02:00:00:00:00:03"]\nmode = "enforce"\nlife_critical = true\nallow_enforce_life_critical = true\n')
    classes = {"02:00:00:00:00:01": "infusion_pump", "02:00:00:00:00:02": "printer", "02:00:00:00:00:03": "infusion_pump"}
    warnings = compile_policy(cfg, 1, {}.__getitem__, classes).warnings
    assert warnings == ["device 02:00:00:00:00:01: segment 'lab' enforces, and a device of class infusion_pump is life-critical: place it in "
                        "a monitor segment, or mark 'lab' life_critical = true with allow_enforce_life_critical = true; it can be cut off"]


def test_ports_with_different_untagged_vlans_are_a_compile_warning() -> None:
    """The identity VLAN is in the flow key: VLAN 20 untagged on portA and on a plain bridge's uplink without pvid
    puts a request and its reply in two flows."""
    lopsided = parse('[bridge]\nports = ["portA", "uplink"]\npvid = { portA = 20 }\n')
    (warning,) = compile_policy(lopsided, 1, {"portA": 1, "uplink": 2}.__getitem__).warnings
    assert "bridge.pvid differs between ports (portA 20, uplink none (VLAN 0))" in warning
    even = parse('[bridge]\nports = ["portA", "uplink"]\npvid = { portA = 20, uplink = 20 }\n')
    assert compile_policy(even, 1, {"portA": 1, "uplink": 2}.__getitem__).warnings == []


@pytest.mark.parametrize(("value", "management", "flags"), [
    ("false", "", 0),
    ('"outbound"', "outbound", abi.const("SEGMENT_MGMT")),
    ("true", "both", abi.const("SEGMENT_MGMT") | abi.const("SEGMENT_MGMT_INBOUND")),
])
def test_management_opens_outbound_or_both_ways(value: str, management: str, flags: int) -> None:
    cfg = parse(f"[segments.biomed]\nprefixes = [\"10.0.98.0/24\"]\nmanagement = {value}\n")
    assert cfg.segments["biomed"].management == management
    compiled = compile_policy(cfg, 1, {}.__getitem__)
    info = compiled.contents["segments"][abi.to_bytes(abi.SegmentKey(gen=1, segment=cfg.segments["biomed"].id))]
    assert abi.SegmentInfo.from_buffer_copy(info).flags == flags
    # every device may open any flow towards a management = true segment: said at every compile
    assert [w for w in compiled.warnings if "management = true" in w] == (
        ['segments.biomed: management = true passes every flow any device opens towards it, on any port; management = "outbound" '
         "passes the flows its hosts open (and their replies) and leaves the devices' flows to it to the rules"]
        if management == "both" else [])


@pytest.mark.parametrize("value", ['"inbound"', '"yes"', "1"])
def test_management_takes_true_false_or_outbound(value: str) -> None:
    with pytest.raises(ConfigError, match=r'segments\.x\.management: must be true, false or "outbound"'):
        parse(f"[segments.x]\nmanagement = {value}\n")


@pytest.mark.parametrize("pseudo", ["multicast", "broadcast"])
def test_group_pseudo_segments_open_nothing(pseudo: str) -> None:
    with pytest.raises(ConfigError, match=rf"segments\.{pseudo}\.management: the pseudo-segment '{pseudo}' opens no flow"):
        parse(f'[segments.{pseudo}]\nmanagement = "outbound"\n')
    assert parse(f"[segments.{pseudo}]\nmanagement = true\n").segments[pseudo].management == "both"


def test_whole_vlans_leave_the_prefixes_vlan_alone() -> None:
    """`vlans` and `vlan` are separate keys: a segment's prefixes without `vlan` hold on any VLAN."""
    segment = parse('[segments.x]\nprefixes = ["10.9.0.0/16"]\nvlans = [20, 30]\n').segments["x"]
    assert (segment.vlan, segment.vlans) == (0, (20, 30))
    contents = compile_policy(parse('[segments.x]\nprefixes = ["10.9.0.0/16"]\nvlans = [20]\n'), 1, {}.__getitem__).contents
    prefix_vlans = {abi.Prefix4Key.from_buffer_copy(k).vlan for k, _ in contents["prefixes_v4"].items() if abi.Prefix4Key.from_buffer_copy(k).prefixlen > 48}
    assert prefix_vlans == {0}


def test_a_person_may_not_place_a_life_critical_device_in_an_enforcing_segment_without_the_flag() -> None:
    from medseg_xdp.classify import load_catalog
    from medseg_xdp.config import placement_problem

    cfg = config.parse("""
[segments.lab]
macs = ["02:00:00:00:00:01"]
mode = "enforce"
[segments.ward]
macs = ["02:00:00:00:00:02"]
mode = "monitor"
[segments.icu]
macs = ["02:00:00:00:00:03"]
mode = "enforce"
life_critical = true
allow_enforce_life_critical = true
""")
    criticality = load_catalog().criticality
    problem = placement_problem(cfg, "lab", "infusion_pump", criticality)
    assert problem is not None and "life-critical" in problem and "allow_enforce_life_critical" in problem
    assert placement_problem(cfg, "ward", "infusion_pump", criticality) is None  # monitor mode
    assert placement_problem(cfg, "icu", "infusion_pump", criticality) is None  # said so explicitly
    assert placement_problem(cfg, "lab", "printer", criticality) is None


def test_the_module_docstrings_example_is_a_valid_policy() -> None:
    """The format's reference example (medseg_xdp/config.py) must pass `policy check`: it is what people copy."""
    example = "\n".join(line[4:] for line in (config.__doc__ or "").splitlines() if line.startswith("    "))
    cfg = config.parse(example, "config.py's example")
    assert {"pumps", "pumps-by-class", "pump-server"} <= set(cfg.segments) and cfg.trusted_ports == ("uplink",)


def test_the_monitor_only_starter_config_is_valid_and_drops_nothing() -> None:
    """examples/monitor-only.toml, what a first deployment copies: valid, and no segment enforces."""
    cfg = config.load(Path(__file__).parents[1] / "examples" / "monitor-only.toml")
    assert cfg.segments and all(segment.mode == abi.Mode.monitor for segment in cfg.segments.values())
