"""Kernel vs reference model on generated packets: same verdicts, same counters, same tables.

At least 100,000 random and adversarial frames (tests/packetgen.py) go
through the real program (BPF_PROG_TEST_RUN) and through
medseg_xdp.reference, under the fixture policy, with policy flips between
two variants along the way (so stale flow entries are judged again), one
stretch in four under break-glass. Every
packet's action and decision record must agree; counters and the flow and
fragment tables are compared at checkpoints. The seed is printed and can
be fixed with MEDSEG_DIFF_SEED; MEDSEG_DIFF_PACKETS changes the count.
"""

from __future__ import annotations

import ctypes
import os
import random
from pathlib import Path

import pytest
from packetgen import FrameGenerator

from medseg_xdp import abi, config
from medseg_xdp.config import TableSizes
from medseg_xdp.policy_image import compile_policy, pair_counters_by_segment, with_setting_flags
from medseg_xdp.reference import ReferenceDataplane
from medseg_xdp.trace import Tracer

pytestmark = pytest.mark.root

FIXTURE_CONFIG = Path(__file__).parent / "fixture_policy.toml"
PACKETS = int(os.environ.get("MEDSEG_DIFF_PACKETS", "100000"))
CHECKPOINTS = 8
# Ring-buffer overflow is a kernel-only outcome (nobody consumes samples here).
KERNEL_ONLY_PRESSURE = {abi.Pressure.ring_full}
DECISION_FIELDS = [name for name, _ in abi.Decision._fields_ if name != "seq"]


def _policies() -> list[config.Config]:
    text = FIXTURE_CONFIG.read_text()
    stricter = text.replace('action = "allow"  # dicom', 'action = "drop"  # dicom').replace('[segments.pacs]', '[segments.pacs]\nid = 40')
    # the management segments swap directions: a flip re-judges their flows and mid-stream pickups
    swapped = text.replace('management = true', 'management = "swap"').replace('management = "outbound"', 'management = true').replace(
        'management = "swap"', 'management = "outbound"')
    return [config.load(FIXTURE_CONFIG), config.parse(stricter, "stricter fixture"), config.parse(swapped, "management swapped")]


def _reference_contents(cfg: config.Config, gen: int, ifindex: dict[str, int], break_glass: bool = False) -> dict[str, dict[bytes, bytes]]:
    contents = compile_policy(cfg, gen, ifindex.__getitem__).contents
    contents["active_gen"] = {bytes(ctypes.c_uint32(0)): bytes(ctypes.c_uint32(gen))}
    flags = abi.const("SETTING_RECORD_DECISION") | (abi.const("SETTING_BREAK_GLASS") if break_glass else 0)
    return with_setting_flags(contents, flags)


def _fields(struct: ctypes.Structure, skip: tuple[str, ...] = ()) -> dict[str, object]:
    return {name: (list(getattr(struct, name)) if hasattr(getattr(struct, name), "__len__") else getattr(struct, name)) for name, _ in struct._fields_ if name not in skip}


def _compare_state(tracer: Tracer, ref: ReferenceDataplane, rule_ids: list[int], where: str) -> None:
    dp = tracer.dataplane
    assert dp is not None
    kernel_stats = {abi.stats_index(v, r): (c.packets, c.bytes) for (v, r), c in dp.stats().items()}
    ref_stats = {i: (c.packets, c.bytes) for i, c in ref.stats.items() if c.packets}
    assert kernel_stats == ref_stats, f"stats differ {where}"
    kernel_hits = {i: (c.packets, c.bytes) for i, c in dp.rule_hits(rule_ids).items()}
    ref_hits = {i: (c.packets, c.bytes) for i, c in ref.rule_hits.items() if c.packets}
    assert kernel_hits == ref_hits, f"rule hits differ {where}"
    kernel_pairs = {(a, b, v): (c.packets, c.bytes) for (a, b, v), c in dp.pair_stats().items()}
    ref_slots = {abi.SegmentKey.from_buffer_copy(key).segment: info.stats_slot for key, info in ref.segments.items()}
    ref_pairs = pair_counters_by_segment(((i, c.packets, c.bytes) for i, c in ref.pair_stats.items()), ref_slots, ref.pair_segments)
    assert kernel_pairs == ref_pairs, f"segment-pair counters differ {where}"
    kernel_pressure = {p: n for p, n in dp.pressure().items() if n and p not in KERNEL_ONLY_PRESSURE}
    assert kernel_pressure == {p: n for p, n in ref.pressure.items() if n}, f"pressure differs {where}"
    timeless = ("first_seen_ns", "last_seen_ns")
    kernel_flows = {abi.to_bytes(k): _fields(e, timeless) for k, e in dp.flows()}
    ref_flows = {k: _fields(e, timeless) for k, e in ref.flows.items()}
    assert kernel_flows.keys() == ref_flows.keys(), f"flow keys differ {where}"
    assert kernel_flows == ref_flows, f"flow entries differ {where}"
    kernel_frags = {abi.to_bytes(k): _fields(v) for k, v in dp.maps["frags"].items()}
    assert kernel_frags == {k: _fields(v) for k, v in ref.frags.items()}, f"fragment tables differ {where}"


def test_kernel_and_reference_agree(on_cpu0: None) -> None:
    seed = int(os.environ.get("MEDSEG_DIFF_SEED", random.SystemRandom().randrange(2**32)))
    print(f"differential seed {seed} (MEDSEG_DIFF_SEED={seed} reproduces), {PACKETS} packets")
    generator = FrameGenerator(seed)
    choose = random.Random(seed ^ 0x5EED)
    policies = _policies()
    # Tables large enough that the kernel's LRU never evicts: the reference never does.
    with Tracer(policies[0], sizes=TableSizes(flows=262144, frags=65536)) as tracer:
        ports = list(tracer.ifindex)
        ref = ReferenceDataplane(_reference_contents(policies[0], tracer.dataplane.active_generation(), tracer.ifindex))  # type: ignore[union-attr]
        flip_every = PACKETS // CHECKPOINTS
        policy_index = 0
        dropped_before: set[tuple[bytes, str]] = set()  # this generation's drops: a repeat is a deny-cache hit
        cache_hits = 0
        for number in range(PACKETS):
            if number and number % flip_every == 0:
                _compare_state(tracer, ref, list(tracer.rule_names), f"before packet {number} (seed {seed})")
                policy_index = (policy_index + 1) % len(policies)
                break_glass = number // flip_every % 4 == 3  # one stretch in four runs under break-glass
                tracer.load_config(policies[policy_index])
                tracer.dataplane.set_break_glass(break_glass)  # type: ignore[union-attr]  # re-stamps: one more generation
                gen = tracer.dataplane.active_generation()  # type: ignore[union-attr]
                ref.load(_reference_contents(policies[policy_index], gen, tracer.ifindex, break_glass))
                dropped_before.clear()
            frame = generator.frame()
            ingress = choose.choice(ports)
            if dropped_before and choose.random() < 0.05:  # a denied packet again: the deny cache's path
                frame, ingress = choose.choice(sorted(dropped_before))
            kernel, action, _ = tracer.run_frame(frame, ingress)
            expected = ref.run(frame, tracer.ifindex[ingress])
            got = (action, _fields(kernel, ("seq",)))
            want = (expected.action, _fields(expected.decision, ("seq",)))
            assert got == want, f"packet {number} (seed {seed}) on {ingress}: {frame.hex()}\nkernel    {got}\nreference {want}"
            if expected.decision.verdict == abi.Verdict.drop and expected.decision.flags & abi.const("DECISION_SEGMENTS"):
                cache_hits += (frame, ingress) in dropped_before
                dropped_before.add((frame, ingress))
        _compare_state(tracer, ref, list(tracer.rule_names), f"at the end (seed {seed})")
        assert sum(c.packets for c in ref.stats.values()) == PACKETS
        assert cache_hits >= PACKETS // 1000, f"only {cache_hits} repeated denials: the deny cache was hardly exercised"
