"""The layouts abi.py parses from medseg_abi.h equal the ones clang compiles."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest

from medseg_xdp import abi
from medseg_xdp.abi import AbiError, parse_header


def _clang_layouts() -> dict[str, type]:
    """Every ABI struct as clang lays it out, through BCC's map leaf types."""
    from bcc import BPF

    arrays = "\n".join(f"BPF_ARRAY(layout_{name}, struct {name}, 1);" for name in abi.STRUCTS)
    program = f'#include "medseg_abi.h"\n{arrays}\nint noop(struct xdp_md *ctx) {{ return XDP_PASS; }}\n'
    bpf = BPF(text=program.encode(), cflags=[f"-I{abi.BPF_DIR}"])
    try:
        return {name: bpf[f"layout_{name}".encode()].Leaf for name in abi.STRUCTS}
    finally:
        bpf.cleanup()


def _layout(struct: type) -> list[tuple[str, int, int]]:
    return [(name, getattr(struct, name).offset, ctypes.sizeof(ftype)) for name, ftype in struct._fields_]


@pytest.mark.root
def test_every_struct_matches_clang() -> None:
    clang = _clang_layouts()
    assert set(clang) == set(abi.STRUCTS)
    for name, ours in abi.STRUCTS.items():
        assert ctypes.sizeof(ours) == ctypes.sizeof(clang[name]), name
        assert _layout(ours) == _layout(clang[name]), name


@pytest.mark.root
def test_map_layouts_match_the_program() -> None:
    """Each pinned map's key/value types (dataplane.MAP_LAYOUTS) are the program's."""
    from medseg_xdp.dataplane import MAP_LAYOUTS
    from medseg_xdp.loader import BPFFS, Loader

    root = BPFFS / "medseg-test-abi"
    loader = Loader("abi", pin_root=root)
    try:
        loader.compile()
        for name, (key_type, value_type, percpu) in MAP_LAYOUTS.items():
            table = loader.bpf[name.encode()]  # type: ignore[index]
            leaf = table.sLeaf if percpu else table.Leaf  # BCC's per-CPU Leaf is an array
            assert ctypes.sizeof(table.Key) == ctypes.sizeof(key_type), name
            assert ctypes.sizeof(leaf) == ctypes.sizeof(value_type), name
    finally:
        loader.close()
        shutil.rmtree(root, ignore_errors=True)


def test_no_implicit_padding() -> None:
    """Keys are hashed as bytes: a hole clang pads would make equal keys differ."""
    for name, struct in abi.STRUCTS.items():
        assert sum(ctypes.sizeof(t) for _, t in struct._fields_) == ctypes.sizeof(struct), name


@pytest.mark.parametrize(
    "text",
    ["struct bad { int x; };", "struct bad { u32 *p; };", "struct bad { u8 a[UNKNOWN]; };"],
)
def test_parser_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises((AbiError, KeyError)):
        parse_header(text)


def test_the_pin_directory_changes_with_the_layout_not_with_comments() -> None:
    header, maps = abi.ABI_HEADER.read_text(), abi.MAPS_HEADER.read_text()
    same = abi.layout_hash(header, maps, "sizes")
    assert abi.layout_hash(header.replace("struct flow_entry {", "/* reworded */\nstruct  flow_entry {"), maps.replace("/*", "/* note:", 1), "sizes") == same
    assert abi.layout_hash(header.replace("u16 policy_port;   /* the initiator's", "u16 policy_port2;   /* the initiator's"), maps, "sizes") != same
    assert abi.layout_hash(header, maps.replace('"lru_hash", struct flow_key', '"hash", struct flow_key'), "sizes") != same
    assert abi.layout_hash(header, maps, "other sizes") != same


def test_the_pin_directory_changes_with_the_packet_the_programs_hand_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """xdp_medseg of one build may tail-call medseg_judge of the next while a restart swaps them (the program
    array is pinned): struct packet, in the handoff, is part of the layout; the rest of parse.h is not."""
    parse = abi.PARSE_HEADER.read_text()
    packet = abi.handoff_layout(parse)
    assert packet.startswith("struct packet {") and "u32 src[4];" in packet
    before = abi.abi_hash("sizes")
    copy = tmp_path / "parse.h"
    monkeypatch.setattr(abi, "PARSE_HEADER", copy)
    copy.write_text(parse.replace("#define", "/* a comment */\n#define", 1))
    assert abi.abi_hash("sizes") == before
    copy.write_text(parse.replace("u32 frag_id;", "u32 frag_id;\n\tu32 added;"))
    assert abi.abi_hash("sizes") != before
