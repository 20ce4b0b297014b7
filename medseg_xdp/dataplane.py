"""Typed access to a bridge's pinned maps: policy generations, counters, flows.

Works on the pinned state alone (no compile), so a restarted manager, the
CLI and the tests all see the same maps the attached program uses.
"""

from __future__ import annotations

import ctypes
import fcntl
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_xdp import abi, bpfsys
from medseg_xdp.policy_image import (
    GENERATIONAL_MAPS,
    IN_PLACE_MAPS,
    MapContents,
    live_stats_slots,
    pair_counters_by_segment,
    stable_stats_slots,
    with_setting_flags,
)

U32 = ctypes.c_uint32
U64 = ctypes.c_uint64

# name -> (key type, value type, per-CPU); the ring buffer is not pinned.
MAP_LAYOUTS: dict[str, tuple[type, type, bool]] = {
    "active_gen": (U32, U32, False),
    "settings": (U32, abi.Settings, False),
    "ports": (U32, abi.PortInfo, False),
    "port_vlans": (abi.PortVlanKey, ctypes.c_uint8, False),
    "devices": (abi.DeviceKey, abi.EndpointInfo, False),
    "prefixes_v4": (abi.Prefix4Key, abi.EndpointInfo, False),
    "prefixes_v6": (abi.Prefix6Key, abi.EndpointInfo, False),
    "rail_hosts": (abi.RailHostKey, U32, False),
    "segments": (abi.SegmentKey, abi.SegmentInfo, False),
    "rules_exact": (abi.RuleExactKey, abi.RuleVerdict, False),
    "rules": (abi.RuleKey, abi.RuleVerdict, False),
    "pair_defaults": (abi.PairKey, abi.RuleVerdict, False),
    "flows": (abi.FlowKey, abi.FlowEntry, False),
    "frags": (abi.FragKey, abi.FragVerdict, False),
    "denied": (abi.DenyKey, abi.DenyEntry, False),
    "stats": (U32, abi.Counter, True),
    "pair_stats": (U32, abi.Counter, True),
    "rule_hits": (U32, abi.Counter, True),
    "pressure": (U32, U64, True),
    "last_decision": (U32, abi.Decision, True),
    "sample_budgets": (U32, abi.BudgetConfig, False),
    "event_budget": (U32, abi.EventBudget, True),
}


@dataclass(frozen=True)
class CounterValue:
    packets: int
    bytes: int


def _keep_break_glass(contents: MapContents, on: bool) -> MapContents:
    """A policy apply never ends a break-glass: the operator ends it."""
    return with_setting_flags(contents, abi.const("SETTING_BREAK_GLASS")) if on else contents


def key_generation(key: ctypes.Structure) -> int:
    return key.gen  # type: ignore[attr-defined, no-any-return]


class Dataplane:
    """The pinned maps of one bridge (Loader.pin_dir)."""

    def __init__(self, pin_dir: Path, sleep: Callable[[float], None] = time.sleep) -> None:
        self.pin_dir = pin_dir
        self._sleep = sleep
        self.maps: dict[str, bpfsys.Map] = {}
        for name, (key_type, value_type, percpu) in MAP_LAYOUTS.items():
            fd = bpfsys.obj_get(str(pin_dir / name))
            self.maps[name] = bpfsys.Map(fd, name, key_type, value_type, percpu)
        # pair_stats holds pair_segments^2 * VERDICT_MAX counters
        self.pair_segments = math.isqrt(bpfsys.map_max_entries(self.maps["pair_stats"].fd) // abi.VERDICT_MAX)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> Dataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- policy ----

    def active_generation(self) -> int:
        value = self.maps["active_gen"].lookup(U32(0))
        return value.value if value is not None else 0  # type: ignore[attr-defined]

    def apply(self, compile_for: Callable[[int], MapContents], grace_s: float = 0.05) -> int:
        """Write the next generation beside the live one, flip, then retire the old.

        compile_for(gen) gives the map contents of the new generation. A
        packet reads the active generation once and uses it for every
        lookup, so no packet is judged by a mix of two policies. The old
        generation is deleted after grace_s, when packets that read it
        before the flip are long done.
        """
        with self._writer():
            old = self.active_generation()
            new = (old + 1) & 0xFFFFFFFF or 1
            contents = _keep_break_glass(compile_for(new), self.break_glass())
            contents["segments"], new_owners = stable_stats_slots(contents.get("segments", {}), live_stats_slots(self._live_segments()), self.pair_segments)
            if old:  # fresh maps (no generation yet) hold zeros already
                self._zero_pair_counters(new_owners)
            # Leftovers of a writer that died mid-apply: never let them go live.
            self.retire_generations(keep=old)
            try:
                for name in GENERATIONAL_MAPS:
                    m = self.maps[name]
                    for key, value in contents.get(name, {}).items():
                        m.update_raw(key, value)
            except BaseException:
                self.retire_generations(keep=old)
                raise
            for name in IN_PLACE_MAPS:
                self._replace(self.maps[name], contents.get(name, {}))
            self._flip(new, grace_s)
        return new

    @staticmethod
    def _replace(m: bpfsys.Map, wanted: dict[bytes, bytes]) -> None:
        """Make m hold exactly wanted (an array: zeros elsewhere)."""
        for key, value in wanted.items():
            m.update_raw(key, value)
        for key, _ in list(m.present_raw()):
            if key not in wanted:
                m.erase(key)

    def _flip(self, new: int, grace_s: float) -> None:
        self.maps["active_gen"].update(U32(0), U32(new))
        self._sleep(grace_s)
        self.retire_generations(keep=new)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """One writer at a time per bridge (daemon, CLI, break-glass): flock on the pin directory."""
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def break_glass(self) -> bool:
        """Is break-glass on: every segment in monitor mode, nothing dropped by policy?"""
        settings = self.maps["settings"].lookup(U32(0))
        return bool(settings is not None and settings.flags & abi.const("SETTING_BREAK_GLASS"))  # type: ignore[attr-defined]

    def set_setting_flag(self, flag: int, on: bool) -> None:
        """One SETTING_* bit, read from the program with the next packet."""
        settings = self.maps["settings"].lookup(U32(0)) or abi.Settings()
        settings.flags = settings.flags | flag if on else settings.flags & ~flag  # type: ignore[attr-defined]
        self.maps["settings"].update(U32(0), settings)

    def set_break_glass(self, on: bool, grace_s: float = 0.05) -> None:
        """Set the flag, then re-stamp the live policy as a new generation.

        Every packet after the flag write is judged with it; the new
        generation makes every cached flow verdict be judged again too, so
        flows opened during break-glass do not outlive it.
        """
        with self._writer():
            self.set_setting_flag(abi.const("SETTING_BREAK_GLASS"), on)
            old = self.active_generation()
            new = (old + 1) & 0xFFFFFFFF or 1
            for name in GENERATIONAL_MAPS:
                m = self.maps[name]
                for key, value in list(m.items()):
                    if key_generation(key) == old:
                        key.gen = new  # type: ignore[attr-defined]
                        m.update(key, value)
            self._flip(new, grace_s)

    def retire_generations(self, keep: int) -> int:
        """Delete every policy entry of another generation than keep."""
        removed = 0
        for name in GENERATIONAL_MAPS:
            m = self.maps[name]
            for key in list(m.keys()):
                if key_generation(key) != keep and m.delete(key):
                    removed += 1
        return removed

    # ---- counters ----

    def stats(self) -> dict[tuple[abi.Verdict, abi.Reason], CounterValue]:
        """Non-zero packet/byte counters by (verdict, reason), summed over CPUs."""
        result = {}
        for key, packets, octets in self.maps["stats"].summed_counters():
            verdict, reason = divmod(int.from_bytes(key, "little"), abi.REASON_MAX)
            if packets and verdict < abi.VERDICT_MAX:
                result[(abi.Verdict(verdict), abi.Reason(reason))] = CounterValue(packets, octets)
        return result

    def rule_hits(self, rule_ids: list[int]) -> dict[int, CounterValue]:
        """Non-zero counters of these rule ids, summed over CPUs."""
        wanted = set(rule_ids)
        result = {}
        for key, packets, octets in self.maps["rule_hits"].summed_counters():
            rule_id = int.from_bytes(key, "little")
            if packets and rule_id in wanted:
                result[rule_id] = CounterValue(packets, octets)
        return result

    def pressure(self) -> dict[abi.Pressure, int]:
        result = {}
        for what in abi.Pressure:
            summed = self.maps["pressure"].sum_percpu(U32(what))
            result[what] = summed[0] if summed else 0
        return result

    def _live_segments(self) -> list[tuple[abi.SegmentKey, abi.SegmentInfo]]:  # type: ignore[valid-type]
        live = self.active_generation()
        return [(key, info) for key, info in self.maps["segments"].items() if key.gen == live]  # type: ignore[attr-defined]

    def stats_slots(self) -> dict[int, int]:
        """Segment id -> its row and column in pair_stats, in the live generation."""
        return {key.segment: info.stats_slot for key, info in self._live_segments()}  # type: ignore[attr-defined]

    def _zero_pair_counters(self, slots: set[int]) -> None:
        """A slot that changes owner starts from zero: its row and its column, every verdict."""
        n, verdicts = self.pair_segments, abi.VERDICT_MAX
        pairs = {slot * n + other for slot in slots for other in range(n)} | {other * n + slot for slot in slots for other in range(n)}
        self.maps["pair_stats"].zero_percpu(sorted(pair * verdicts + verdict for pair in pairs for verdict in range(verdicts)))

    def pair_stats(self) -> dict[tuple[int, int, abi.Verdict], CounterValue]:
        """Packets and bytes by (src segment id, dst segment id, verdict), summed over CPUs.

        Only pairs of segments in the live generation: a removed segment's counters go with it."""
        counters = ((int.from_bytes(key, "little"), packets, octets) for key, packets, octets in self.maps["pair_stats"].summed_counters())
        pairs = pair_counters_by_segment(counters, self.stats_slots(), self.pair_segments)
        return {pair: CounterValue(*value) for pair, value in pairs.items()}

    def last_decisions(self) -> list[abi.Decision]:  # type: ignore[valid-type]
        """The last decision on each CPU (trace finds the one whose seq moved)."""
        return self.maps["last_decision"].lookup_percpu(U32(0)) or []

    def flows(self) -> Iterator[tuple[abi.FlowKey, abi.FlowEntry]]:  # type: ignore[valid-type]
        """Every flow in the table, read in batches."""
        return self.maps["flows"].items_batch()

    def top_flows(self, count: int) -> list[tuple[abi.FlowKey, abi.FlowEntry]]:  # type: ignore[valid-type]
        """The `count` flows with the most bytes (both directions), most first.

        The table is read in batches and only the chosen entries are decoded:
        the daemon answers `medseg-xdp flows` from its one loop, which must not
        stall on a table of a million flows (bench/userspace.py measures both)."""
        flows = self.maps["flows"]
        key_size, entry_size = ctypes.sizeof(abi.FlowKey), ctypes.sizeof(abi.FlowEntry)
        column = abi.FlowEntry.bytes.offset // 8  # bytes[0], bytes[1]: u64, 8-aligned
        best: list[tuple[int, bytes, bytes]] = []
        for n, keys, values in flows.lookup_batch_raw():
            words = np.frombuffer(values, dtype=np.uint64).reshape(n, entry_size // 8)
            totals = words[:, column] + words[:, column + 1]
            chosen = np.argsort(totals)[::-1][:count] if n > count else range(n)
            best += [(int(totals[i]), keys[i * key_size : (i + 1) * key_size], values[i * entry_size : (i + 1) * entry_size]) for i in chosen]
            best = sorted(best, key=lambda item: item[0], reverse=True)[:count]
        return [(abi.FlowKey.from_buffer_copy(key), abi.FlowEntry.from_buffer_copy(entry)) for _, key, entry in best]
