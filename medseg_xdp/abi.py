"""Layouts and constants shared with the XDP program, read from bpf/medseg_abi.h.

The C header is the single source of truth. This module parses the small
subset of C that the header is written in (``#define NAME number``, enums,
structs of u8/u16/u32/u64 scalars, fixed arrays and structs defined before)
into ctypes structures
and integer constants, so Python never restates a layout by hand.
tests/test_abi.py proves that these layouts equal what clang gives the maps.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent
# An installed copy carries bpf/ inside the package (pyproject.toml maps it there); a checkout, and an
# editable install of it, has bpf/ beside the package.
BPF_DIR = _PACKAGE / "bpf" if (_PACKAGE / "bpf" / "medseg_abi.h").is_file() else _PACKAGE.parent / "bpf"
ABI_HEADER = BPF_DIR / "medseg_abi.h"
MAPS_HEADER = BPF_DIR / "maps.h"
PARSE_HEADER = BPF_DIR / "parse.h"

_C_TYPES: dict[str, Any] = {
    "u8": ctypes.c_uint8,
    "u16": ctypes.c_uint16,
    "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64,
}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^#define\s+(\w+)\s+(\d+|0x[0-9a-fA-F]+)\s*$", re.M)
_ENUM = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.S)
_STRUCT = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^((?:struct\s+)?\w+)\s+(\w+)(?:\[(\w+)\])?$")


class AbiError(ValueError):
    """The header uses C that this parser does not read."""


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def parse_header(text: str) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, type]]:
    """Returns (defines, enums, structs) of a header in the supported subset."""
    text = _COMMENT.sub("", text)
    defines = {name: int(value, 0) for name, value in _DEFINE.findall(text)}
    enums: dict[str, dict[str, int]] = {}
    for enum_name, body in _ENUM.findall(text):
        members: dict[str, int] = {}
        next_value = 0
        for item in filter(None, (part.strip() for part in body.split(","))):
            name, _, value = (s.strip() for s in item.partition("="))
            next_value = int(value, 0) if value else next_value
            members[name] = next_value
            next_value += 1
        enums[enum_name] = members
    constants = dict(defines)
    for members in enums.values():
        constants.update(members)
    structs: dict[str, type] = {}
    for struct_name, body in _STRUCT.findall(text):
        fields = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            match = _FIELD.match(" ".join(decl.split()))
            known = {**_C_TYPES, **{f"struct {name}": struct for name, struct in structs.items()}}
            if not match or match.group(1) not in known:
                raise AbiError(f"struct {struct_name}: cannot read field {decl!r}")
            ctype, name, count = match.groups()
            field_type = known[ctype]
            if count is not None:
                length = int(count) if count.isdigit() else constants[count]
                field_type = field_type * length
            fields.append((name, field_type))
        structs[struct_name] = type(_camel(struct_name), (ctypes.Structure,), {"_fields_": fields})
    return defines, enums, structs


@cache
def _parsed() -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, type]]:
    return parse_header(ABI_HEADER.read_text())


def layout_hash(header_text: str, maps_text: str, extra: str = "") -> str:
    """Hash of what the pinned maps' layout depends on: the header's constants, enums and struct
    layouts as parsed, the map declarations (comments and spacing aside), and extra (the table sizes).
    An edited comment keeps the pins; a changed field, map type or size makes new ones."""
    defines, enums, structs = parse_header(header_text)
    layouts = [(name, [(f, t.__name__, ctypes.sizeof(t)) for f, t in struct._fields_]) for name, struct in structs.items()]
    declarations = " ".join(_COMMENT.sub("", maps_text).split())
    text = repr((sorted(defines.items()), sorted(enums.items()), layouts, declarations, extra))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def handoff_layout(parse_header_text: str) -> str:
    """struct packet of bpf/parse.h: part of the handoff between the two programs (maps.h), which a program of
    one build may tail-call into a program of another while a restart swaps them."""
    found = re.search(r"struct\s+packet\s*\{.*?\};", parse_header_text, re.S)
    if found is None:
        raise AbiError("bpf/parse.h: no struct packet")
    return found.group(0)


def abi_hash(extra: str = "") -> str:
    """Names the bpffs directory of this layout (layout_hash of bpf/medseg_abi.h, bpf/maps.h and the struct
    packet that maps.h hands between the programs)."""
    return layout_hash(ABI_HEADER.read_text(), MAPS_HEADER.read_text() + handoff_layout(PARSE_HEADER.read_text()), extra)


DEFINES, ENUMS, STRUCTS = _parsed()


def _int_enum(name: str, c_enum: str, prefix: str) -> type[enum.IntEnum]:
    members = {
        key.removeprefix(prefix).lower(): value
        for key, value in ENUMS[c_enum].items()
        if not key.endswith("_MAX")
    }
    return enum.IntEnum(name, members)  # type: ignore[return-value]


Verdict = _int_enum("Verdict", "medseg_verdict", "VERDICT_")
Reason = _int_enum("Reason", "medseg_reason", "REASON_")
Action = _int_enum("Action", "medseg_action", "ACTION_")
Mode = _int_enum("Mode", "medseg_mode", "MODE_")
SampleKind = _int_enum("SampleKind", "medseg_sample_kind", "SAMPLE_")
Pressure = _int_enum("Pressure", "medseg_pressure", "PRESSURE_")

VERDICT_MAX = ENUMS["medseg_verdict"]["VERDICT_MAX"]
REASON_MAX = ENUMS["medseg_reason"]["REASON_MAX"]
PRESSURE_MAX = ENUMS["medseg_pressure"]["PRESSURE_MAX"]

Settings = STRUCTS["settings"]
DeviceKey = STRUCTS["device_key"]
EndpointInfo = STRUCTS["endpoint_info"]
Prefix4Key = STRUCTS["prefix4_key"]
Prefix6Key = STRUCTS["prefix6_key"]
PortInfo = STRUCTS["port_info"]
PortVlanKey = STRUCTS["port_vlan_key"]
RailHostKey = STRUCTS["rail_host_key"]
SegmentKey = STRUCTS["segment_key"]
SegmentInfo = STRUCTS["segment_info"]
RuleKey = STRUCTS["rule_key"]
RuleExactKey = STRUCTS["rule_exact_key"]
RuleVerdict = STRUCTS["rule_verdict"]
PairKey = STRUCTS["pair_key"]
FlowKey = STRUCTS["flow_key"]
FlowEntry = STRUCTS["flow_entry"]
DenyKey = STRUCTS["deny_key"]
DenyEntry = STRUCTS["deny_entry"]
FragKey = STRUCTS["frag_key"]
FragVerdict = STRUCTS["frag_verdict"]
Counter = STRUCTS["counter"]
Decision = STRUCTS["decision"]
EventBudget = STRUCTS["event_budget"]
BudgetConfig = STRUCTS["budget_config"]
SampleHeader = STRUCTS["sample_header"]


def const(name: str) -> int:
    """A #define of the header, e.g. const("SEGMENT_MGMT")."""
    return DEFINES[name]


def to_bytes(obj: ctypes.Structure) -> bytes:
    return bytes(memoryview(obj).cast("B"))


def stats_index(verdict: int, reason: int) -> int:
    """Index of the stats map for a (verdict, reason) pair, as in finish()."""
    return verdict * REASON_MAX + reason
