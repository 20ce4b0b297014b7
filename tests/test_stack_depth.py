"""Loader's stack_depth scan on hand-written BPF instructions (no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from medseg_xdp.loader import LoaderError, stack_depth


def insn(code: int, dst: int = 0, src: int = 0, offset: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, offset, imm)


MOV64_X, ADD64_K, LSH64_K, STX_DW, MOV64_K, JEQ_K, JA, CALL, EXIT = 0xBF, 0x07, 0x67, 0x7B, 0xB7, 0x15, 0x05, 0x85, 0x95


def test_direct_and_register_offsets() -> None:
    program = [
        insn(STX_DW, dst=10, src=1, offset=-16),  # *(r10 - 16) = r1
        insn(MOV64_X, dst=2, src=10),
        insn(ADD64_K, dst=2, imm=-40),            # r2 = r10 - 40
        insn(STX_DW, dst=2, src=1, offset=8),     # *(r2 + 8): r10 - 32
        insn(EXIT),
    ]
    assert stack_depth(b"".join(program)) == 40


def test_a_register_that_is_a_pointer_on_one_path_only_is_not_one_after_they_meet() -> None:
    program = [
        insn(JEQ_K, dst=1, imm=0, offset=2),      # if r1 == 0 goto 3
        insn(MOV64_X, dst=7, src=10),
        insn(ADD64_K, dst=7, imm=-8),             # r7 = r10 - 8 on this path
        insn(LSH64_K, dst=7, imm=32),             # where both paths meet r7 is not known: a shift is fine
        insn(EXIT),
    ]
    assert stack_depth(b"".join(program)) == 8


def test_a_call_leaves_r1_to_r5_undefined() -> None:
    program = [
        insn(MOV64_X, dst=1, src=10),
        insn(ADD64_K, dst=1, imm=-24),
        insn(CALL, imm=1),
        insn(LSH64_K, dst=1, imm=3),              # r1 is no stack pointer after the call
        insn(EXIT),
    ]
    assert stack_depth(b"".join(program)) == 24


def test_a_variable_offset_on_a_known_stack_pointer_is_refused() -> None:
    program = [insn(MOV64_X, dst=3, src=10), insn(LSH64_K, dst=3, imm=1), insn(EXIT)]
    with pytest.raises(LoaderError, match="cannot follow"):
        stack_depth(b"".join(program))


def test_where_paths_give_a_register_different_offsets_the_deepest_counts() -> None:
    program = [
        insn(MOV64_X, dst=6, src=10),
        insn(ADD64_K, dst=6, imm=-80),             # r6 = r10 - 80
        insn(JEQ_K, dst=1, imm=0, offset=1),       # if r1 == 0 goto 4
        insn(ADD64_K, dst=6, imm=-16),             # r6 = r10 - 96 on this path
        insn(STX_DW, dst=6, src=1, offset=0),      # *(r6): r10 - 80 or r10 - 96
        insn(EXIT),
    ]
    assert stack_depth(b"".join(program)) == 96


def test_a_pointer_made_on_the_jump_path_only_does_not_stop_a_shift_where_paths_meet() -> None:
    program = [
        insn(JEQ_K, dst=1, imm=0, offset=1),       # if r1 == 0 goto 2
        insn(JA, offset=2),                        # goto 4: r7 not a pointer on this path
        insn(MOV64_X, dst=7, src=10),
        insn(ADD64_K, dst=7, imm=-8),              # r7 = r10 - 8 on the jump path
        insn(LSH64_K, dst=7, imm=32),
        insn(EXIT),
    ]
    assert stack_depth(b"".join(program)) == 8


def test_gotol_is_followed_and_calls_to_other_bpf_functions_are_refused() -> None:
    gotol = insn(0x06, imm=1)                      # JMP32 | JA: the target is in imm
    program = [gotol, insn(EXIT), insn(STX_DW, dst=10, src=1, offset=-64), insn(EXIT)]
    assert stack_depth(b"".join(program)) == 64
    with pytest.raises(LoaderError, match="another BPF function"):
        stack_depth(b"".join([insn(CALL, src=1, imm=2), insn(EXIT)]))
