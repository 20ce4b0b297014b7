"""Part 1, program cost by BPF_PROG_TEST_RUN: ns per packet, by packet class, table fill and policy size.

Run as root: `python bench/prog_cost.py [--out bench/results] [--quick]`.
Writes prog_cost.json and prog_cost.md. Numbers are the kernel's own
average per run (the `duration` of BPF_PROG_TEST_RUN); compare them only
as ratios to the other programs measured in the same run, on the same frames:
- an empty XDP program (XDP_PASS),
- a parse-only program (the program's own bpf/parse.h, nothing else),
- xdp-filter from Debian's xdp-tools (allow policy, all features, one
  `xdp-filter port 22` rule), loaded on a veth in a private namespace and
  run by program id,
- ours, on private maps (Tracer), with the sampling a deployment uses and,
  while timed, without the tracer's decision record (Tracer.deployed()).

Methods, applied to every program alike:
- repeated: one frame, repeat=R, median of 3 interleaved rounds; every run
  after the first sees the state the first left (an established flow, or a
  path without state such as a policy drop: denied flows get no entry).
- rotated in the kernel (benchlib.Rotator): a small XDP program copies the
  next of N frames over the packet and tail-calls the program under test, so
  the code stays hot as on a busy port while the flow entries are spread
  over the table; net = minus the rotator with the empty program. New flows:
  each frame exactly once. xdp-filter cannot be tail-called (the kernel
  refuses libxdp's program in BCC's program array), so it is not in these.
- one syscall per frame: N frames, repeat=1 each, averaged: the kernel's
  per-run timer overhead and Python between packets (cold caches) are in
  every figure; the only distinct-frame method that includes xdp-filter.
- flow table fill: 1k, 64k and 1M established flows written into the table
  (capacity +25%), then rotated over every flow, or over 1,000 active ones.
- policy size: 10, 1,000 and 10,000 devices and rules (MAC identities, rules
  of one port and one 10-port range each), repeated and rotated.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import benchlib as B

from medseg_xdp import abi, bpfsys
from medseg_xdp.config import TableSizes
from medseg_xdp.loader import in_netns
from medseg_xdp.samples import SampleReader
from medseg_xdp.topology import Namespace
from medseg_xdp.trace import Tracer

U32 = ctypes.c_uint32
EVERY_PACKET = 0xFFFFFFFF
ROUNDS = 3


def pin_to_one_cpu() -> int:
    """Run on the last CPU: every test run, its per-CPU maps and caches on one core."""
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def repeat_ns(fd: int, frame: bytes, ifindex: int, repeat: int) -> tuple[int, int]:
    """(XDP action, ns per run) of one frame repeated."""
    return bpfsys.prog_test_run(fd, frame, ifindex, repeat=repeat)


def interleaved(measure: dict[str, Callable[[], tuple[int, int]]], rounds: int = ROUNDS) -> dict[str, dict[str, Any]]:
    """Each measurement once per round, round after round, so that a slow moment of the VM hits all alike.

    Returns name -> {"ns": median, "rounds": [...], "xdp_action": ...}.
    """
    runs: dict[str, list[tuple[int, int]]] = {name: [] for name in measure}
    for _ in range(rounds):
        for name, fn in measure.items():
            runs[name].append(fn())
    return {name: {"ns": float(statistics.median(d for _, d in r)), "rounds": [d for _, d in r], "xdp_action": r[-1][0]}
            for name, r in runs.items()}


def distinct_ns(fd: int, frames: Sequence[bytes], ifindex: int) -> float:
    run = bpfsys.prog_test_run
    return statistics.fmean(run(fd, f, ifindex)[1] for f in frames)


def ours_entry_template(tracer: Tracer, frame: bytes) -> abi.FlowEntry:  # type: ignore[valid-type]
    """A real established entry: run the frame once, read what the program stored, make it a long-lived flow."""
    tracer.run_frame(frame, "portA")
    key, _ = B.flow_key_of(frame)
    entry = tracer.dataplane.maps["flows"].lookup(abi.FlowKey.from_buffer_copy(key))
    if entry is None:
        raise RuntimeError("the program stored no flow entry for an allowed frame: flow_key_of disagrees with make_flow_key")
    entry.packets[0], entry.packets[1] = 100, 100  # past the first-K samples, off the 1-in-N beat
    return entry


def clear_flows(flows: bpfsys.Map) -> None:
    for key in list(flows.keys()):
        flows.delete(key)


def set_sampling(tracer: Tracer, first_packets: int) -> None:
    settings_map = tracer.dataplane.maps["settings"]
    settings = settings_map.lookup(U32(0))
    settings.sample_first_packets = first_packets
    settings_map.update(U32(0), settings)


def pressure(tracer: Tracer) -> dict[str, int]:
    return {p.name: v for p, v in tracer.dataplane.pressure().items() if v}


# ---- packet classes ----

def packet_classes(args: argparse.Namespace, programs: dict[str, int], tracer: Tracer, rotator: B.Rotator) -> dict[str, Any]:
    ifindex = tracer.ifindex["portA"]
    reader = SampleReader(tracer.loader.bpf, lambda sample: None)  # the manager's consumer, drained between measurements
    frames = {
        "non-IP (ARP rail)": B.arp_frame(),
        "established flow (TCP ACK, allowed)": B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 40000, B.DICOM_PORT, "A"),
        "policy drop (TCP SYN to 22, enforced, no entry)": B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 40001, B.SSH_PORT, "S"),
        "audit (monitor segment; an audited flow after the first packet)": B.tcp_frame(B.WATCHED_MAC, B.OTHER_MAC, 40002, B.SSH_PORT, "S", dst_ip=B.OTHER_IP),
        "sampled packet (established flow, every packet sampled)": B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 40003, B.DICOM_PORT, "A"),
    }
    repeat_rows = []
    with in_netns(tracer.namespace.name), tracer.deployed():
        for name, frame in frames.items():
            sampled = name.startswith("sampled")
            repeat = min(args.repeat, args.sampled_repeat) if sampled else args.repeat
            for fd in programs.values():
                bpfsys.prog_test_run(fd, frame, ifindex)  # warm-up; ours opens the flow here

            def measure(fd: int, ours: bool, frame: bytes = frame, repeat: int = repeat, sampled: bool = sampled) -> tuple[int, int]:
                reader.poll(0)
                if sampled and ours:
                    set_sampling(tracer, EVERY_PACKET)
                try:
                    return repeat_ns(fd, frame, ifindex, repeat)
                finally:
                    if sampled and ours:
                        set_sampling(tracer, tracer.config.settings.sample_first_packets)

            result = interleaved({p: partial(measure, fd, p == "ours") for p, fd in programs.items()}, args.rounds)
            repeat_rows.append({"class": name, "method": f"repeat={repeat}", **_by_field(result)})
    reader.poll(0)

    # distinct flows: each frame once for new flows; ours keeps state, so ours goes last on every set
    n = args.distinct
    templates = {
        "new flow (TCP SYN, allowed)": B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 1, B.DICOM_PORT, "S"),
        "policy drop (TCP SYN to 22, enforced)": B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 1, B.SSH_PORT, "S"),
        "audit, new flow (monitor segment)": B.tcp_frame(B.WATCHED_MAC, B.OTHER_MAC, 1, B.SSH_PORT, "S", dst_ip=B.OTHER_IP),
    }
    rotated_rows, syscall_rows = [], []
    with in_netns(tracer.namespace.name), tracer.deployed():
        for method, offset in (("rotated", 1_000_000), ("syscall", 2_000_000)):
            sets = {name: [B.flow_variant(t, offset + 100_000 * k + i) for i in range(n)] for k, (name, t) in enumerate(templates.items())}
            sets["established flow (the new flows again)"] = sets["new flow (TCP SYN, allowed)"]
            for name, frame_set in sets.items():
                row: dict[str, Any] = {"class": name, "ns": {}}
                if method == "rotated":
                    rotator.load(frame_set)
                    rotator.run(programs["empty"], ifindex, n)  # warm-up pass: the frame array in cache as far as it fits
                    once = name.startswith(("new", "audit"))  # state: each frame exactly once
                    row["method"] = f"{n:,} flows rotated in the kernel, repeat={n if once else 5 * n}"
                    for program, fd in programs.items():
                        if program != "xdp-filter":
                            row["ns"][program] = float(rotator.run(fd, ifindex, n if once else 5 * n)[1])
                    rotated_rows.append(row)
                else:
                    row["method"] = f"{n:,} frames, one BPF_PROG_TEST_RUN (repeat=1) each"
                    for program, fd in programs.items():
                        row["ns"][program] = distinct_ns(fd, frame_set, ifindex)
                    syscall_rows.append(row)
                reader.poll(0)
            clear_flows(tracer.dataplane.maps["flows"])
    return {"repeat": repeat_rows, "rotated": rotated_rows, "syscall": syscall_rows, "pressure": pressure(tracer)}


def _by_field(result: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {field: {program: r[field] for program, r in result.items()} for field in ("ns", "rounds", "xdp_action")}


# ---- flow table fill ----

def table_fill(args: argparse.Namespace, empty_fd: int, rotator: B.Rotator) -> list[dict[str, Any]]:
    results = []
    rng = random.Random(11)
    ack_tmpl = B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 1, B.DICOM_PORT, "A")
    syn_tmpl = B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 1, B.DICOM_PORT, "S")
    for entries in args.tables:
        capacity = entries + entries // 4  # LRU maps need headroom: eviction works in batches
        cfg = B.bench_policy(flows=capacity)
        started = time.perf_counter()
        with Tracer(cfg, sizes=cfg.tables) as tracer:
            ifindex, ours = tracer.ifindex["portA"], tracer.loader.prog_fd
            flows = tracer.dataplane.maps["flows"]
            entry = ours_entry_template(tracer, B.flow_variant(ack_tmpl, 0))
            with B.Stopwatch() as fill:
                B.prefill_flows(flows, ack_tmpl, entry, entries)
            stored = sum(count for count, _, _ in flows.lookup_batch_raw(8192))
            check = tracer.trace(B.flow_variant(ack_tmpl, entries - 1), "portA")
            row: dict[str, Any] = {"entries": entries, "capacity": capacity, "stored": stored, "prefill_s": round(fill.elapsed, 2),
                                   "check_last_flow": f"{check.verdict}/{check.reason}"}
            repeat = max(args.rotate_repeat, entries)
            with in_netns(tracer.namespace.name), tracer.deployed():
                # every flow of the table in turn
                rotator.load([B.flow_variant(ack_tmpl, i) for i in range(entries)])
                every = interleaved({"empty": partial(rotator.run, empty_fd, ifindex, repeat), "ours": partial(rotator.run, ours, ifindex, repeat)},
                                    args.rounds)
                # a working set of 1,000 active flows among them
                active = rng.sample(range(entries), min(1000, entries))
                rotator.load([B.flow_variant(ack_tmpl, i) for i in active])
                hot = interleaved({"empty": partial(rotator.run, empty_fd, ifindex, args.rotate_repeat),
                                   "ours": partial(rotator.run, ours, ifindex, args.rotate_repeat)}, args.rounds)
                one = interleaved({"ours": partial(repeat_ns, ours, B.flow_variant(ack_tmpl, active[0]), ifindex, args.repeat)}, args.rounds)
                # new flows into the filled table (each once; LRU evicts when full)
                new_frames = [B.flow_variant(syn_tmpl, entries + i) for i in range(args.distinct)]
                rotator.load(new_frames)
                rotator.run(empty_fd, ifindex, len(new_frames))  # warm-up pass
                new_empty = rotator.run(empty_fd, ifindex, len(new_frames))[1]
                new_ours = rotator.run(ours, ifindex, len(new_frames))[1]
            row.update({
                "every_flow": {"repeat": repeat, "empty_ns": every["empty"]["ns"], "ours_ns": every["ours"]["ns"],
                               "ours_net_ns": every["ours"]["ns"] - every["empty"]["ns"], "rounds": {k: v["rounds"] for k, v in every.items()}},
                "active_1000": {"repeat": args.rotate_repeat, "empty_ns": hot["empty"]["ns"], "ours_ns": hot["ours"]["ns"],
                                "ours_net_ns": hot["ours"]["ns"] - hot["empty"]["ns"], "rounds": {k: v["rounds"] for k, v in hot.items()}},
                "one_flow_repeat_ns": one["ours"]["ns"],
                "new_flows": {"count": len(new_frames), "empty_ns": float(new_empty), "ours_ns": float(new_ours),
                              "ours_net_ns": float(new_ours - new_empty)},
                "pressure": pressure(tracer),
            })
        row["total_s"] = round(time.perf_counter() - started, 1)
        results.append(row)
        print(f"  table {entries:,}: every flow {row['every_flow']['ours_net_ns']:.0f} ns net, 1,000 active "
              f"{row['active_1000']['ours_net_ns']:.0f} ns net ({row['total_s']} s)", flush=True)
    return results


# ---- policy size ----

def pair_frame(rng: random.Random, segments: int, per_segment: int, rule: int, port: int | None, number: int, flags: str = "S") -> bytes:
    """A TCP frame of flow `number` between random devices of rule's segment pair, to rule's port (or `port`)."""
    src_seg, dst_seg = B.scaled_rule_pair(rule, segments)
    src_dev, dst_dev = rng.randrange(per_segment), rng.randrange(per_segment)
    if src_seg == dst_seg and per_segment > 1 and src_dev == dst_dev:
        dst_dev = (dst_dev + 1) % per_segment
    dport = B.scaled_rule_port(rule, segments) if port is None else port
    frame = B.tcp_frame(B.scaled_mac(src_seg, src_dev), B.scaled_mac(dst_seg, dst_dev), 1, dport, flags, src_ip="10.9.0.1", dst_ip="10.9.0.2")
    return B.flow_variant(frame, number)


def policy_scale(args: argparse.Namespace, empty_fd: int, rotator: B.Rotator) -> list[dict[str, Any]]:
    rng = random.Random(13)
    biggest = max(args.scales)
    sizes = TableSizes(devices=max(16384, biggest + 16), rules=max(16384, 8 * biggest), ring_pages=4096)
    results = []
    with Tracer(B.scaled_policy(min(args.scales), min(args.scales)), sizes=sizes) as tracer:
        ifindex, ours = tracer.ifindex["portA"], tracer.loader.prog_fd
        flows = tracer.dataplane.maps["flows"]
        reader = SampleReader(tracer.loader.bpf, lambda sample: None)
        for scale in args.scales:
            cfg = B.scaled_policy(scale, scale)
            with B.Stopwatch() as apply:
                tracer.load_config(cfg)
            clear_flows(flows)
            segments = B.scaled_segments(scale)
            per_segment = max(1, scale // segments)
            rule_entries = {name: sum(1 for _ in tracer.dataplane.maps[name].keys()) for name in ("rules_exact", "rules")}

            n = args.distinct
            frame = partial(pair_frame, rng, segments, per_segment)
            allowed = frame(scale // 2, None, 1, "A")
            denied = frame(scale // 2, 9, 2)  # port 9: no rule anywhere, the segment default drops
            new_frames = [frame(rng.randrange(scale), None, 10 + i) for i in range(n)]
            drop_frames = [frame(rng.randrange(scale), 9, 10 + n + i) for i in range(n)]
            checks = {"allowed": tracer.trace(allowed, "portA"), "denied": tracer.trace(denied, "portA"),
                      "new": tracer.trace(new_frames[-1], "portA"), "drop": tracer.trace(drop_frames[-1], "portA")}
            clear_flows(flows)
            row: dict[str, Any] = {
                "devices": scale, "rules": scale, "segments": segments, "rule_hash_entries": rule_entries["rules_exact"], "rule_trie_entries": rule_entries["rules"],
                "apply_s": round(apply.elapsed, 2), "checks": {k: f"{v.verdict}/{v.reason}" for k, v in checks.items()},
            }
            with in_netns(tracer.namespace.name), tracer.deployed():
                bpfsys.prog_test_run(ours, allowed, ifindex)
                hot = interleaved({"established": partial(repeat_ns, ours, allowed, ifindex, args.repeat),
                                   "drop": partial(repeat_ns, ours, denied, ifindex, args.repeat)}, args.rounds)
                rotator.load(new_frames)
                rotator.run(empty_fd, ifindex, n)  # warm-up pass
                new_empty = rotator.run(empty_fd, ifindex, n)[1]
                new_ours = rotator.run(ours, ifindex, n)[1]  # each flow once: new flows
                est = interleaved({"empty": partial(rotator.run, empty_fd, ifindex, 5 * n), "ours": partial(rotator.run, ours, ifindex, 5 * n)},
                                  args.rounds)
                rotator.load(drop_frames)
                drop = interleaved({"empty": partial(rotator.run, empty_fd, ifindex, 5 * n), "ours": partial(rotator.run, ours, ifindex, 5 * n)},
                                   args.rounds)
            reader.poll(0)
            row.update({
                "established_repeat_ns": hot["established"]["ns"], "drop_repeat_ns": hot["drop"]["ns"],
                "new_flow_net_ns": float(new_ours - new_empty), "new_flow_ns": float(new_ours), "rotator_empty_ns": float(new_empty),
                "established_rotated_net_ns": est["ours"]["ns"] - est["empty"]["ns"],
                "drop_rotated_net_ns": drop["ours"]["ns"] - drop["empty"]["ns"],
                "pressure": pressure(tracer),
            })
            results.append(row)
            print(f"  policy {scale:,}: drop {row['drop_repeat_ns']:.0f} ns hot, {row['drop_rotated_net_ns']:.0f} ns rotated net; "
                  f"new flow {row['new_flow_net_ns']:.0f} ns net", flush=True)
    return results


# ---- report ----

PROGRAM_ORDER = ("empty", "parse-only", "xdp-filter", "ours")


def _cell(ns: dict[str, float], program: str) -> str:
    return B.fmt(ns[program]) if program in ns else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _class_table(rows: list[dict[str, Any]], with_method: bool = True) -> list[str]:
    present = [p for p in PROGRAM_ORDER if any(p in row["ns"] for row in rows)]
    headers = ["packet class", *present, "ours net", "ours ÷ empty"]
    if "xdp-filter" in present:
        headers.append("ours ÷ xdp-filter")
    table = []
    for row in rows:
        ns = row["ns"]
        cells = [row["class"] + (f" ({row['method']})" if with_method else ""), *(_cell(ns, p) for p in present),
                 B.fmt(ns["ours"] - ns["empty"]), _ratio(ns.get("ours"), ns.get("empty"))]
        if "xdp-filter" in present:
            cells.append(_ratio(ns.get("ours"), ns.get("xdp-filter")))
        table.append(cells)
    return B.md_table(headers, table, right=range(1, len(headers)))


def report(data: dict[str, Any]) -> list[str]:
    env, classes, rounds = data["environment"], data["classes"], data["parameters"]["rounds"]
    lines = [
        "### Part 1: program cost (BPF_PROG_TEST_RUN, ns per packet)",
        "",
        f"One run, one process pinned to one CPU, the same frames for every program. Linux {env['kernel']}, "
        f"{env['cpus_online']} vCPUs ({env['cpu']}). xdp-filter: {env['xdp_tools']}, allow policy, all features, "
        "one `xdp-filter port 22` rule. Ours: the policy of `bench/benchlib.py` with the sampling a deployment uses "
        "(first 8 packets of a flow, then 1 in 1000; 100 drop events/s). net = ours − empty program, same method, same frames.",
        "",
        f"**One frame, repeated** (hot caches; median of {rounds} interleaved rounds):",
        "",
        *_class_table(classes["repeat"]),
        "",
        f"**Distinct flows rotated in the kernel** (a small XDP program copies the next of {data['parameters']['distinct']:,} frames "
        "over the packet and tail-calls the program under test: code hot, flow entries spread; xdp-filter cannot be "
        "tail-called from it, see the notes):",
        "",
        *_class_table(classes["rotated"], with_method=False),
        "",
        "**Distinct frames, one syscall each** (repeat=1: the kernel's per-run timer overhead is in every figure, and Python "
        "runs between packets, so caches are cold; the only distinct-frame method that includes xdp-filter):",
        "",
        *_class_table(classes["syscall"], with_method=False),
    ]
    verifier = data.get("verifier", {})
    if verifier.get("programs"):
        limit = verifier["limit"]
        each = "; ".join(f"`{name}` {p['verified_insns']:,} ({p['verified_insns'] / limit:.0%}) and {p['stack_bytes']} bytes"
                         for name, p in verifier["programs"].items())
        lines += ["", f"**Verifier**: processed instructions of the kernel's {limit:,} and stack bytes of 512, per program: {each}. "
                  "`tests/test_program.py` fails a program above half the instructions or 480 bytes."]
    tables = data["tables"]
    if tables:
        base = tables[0]
        lines += ["", "**Flow table fill**: N established flows written into the table, then frames rotated in the kernel over "
                  "every flow of the table, or over 1,000 active flows among them; new flows: "
                  f"{base['new_flows']['count']:,} flows not in the table, each once (net of the rotator with the empty program):", ""]
        rows = [[B.fmt(t["entries"]), B.fmt(t["capacity"]), B.fmt(t["every_flow"]["ours_net_ns"]),
                 _ratio(t["every_flow"]["ours_net_ns"], base["every_flow"]["ours_net_ns"]), B.fmt(t["active_1000"]["ours_net_ns"]),
                 _ratio(t["active_1000"]["ours_net_ns"], base["active_1000"]["ours_net_ns"]), B.fmt(t["one_flow_repeat_ns"]),
                 B.fmt(t["new_flows"]["ours_net_ns"])] for t in tables]
        lines += B.md_table(["flows in table", "capacity", "every flow active", f"× {B.fmt(base['entries'])}", "1,000 active",
                             f"× {B.fmt(base['entries'])}", "one flow, repeated", "new flow"], rows, right=range(8))
    scales = data["scales"]
    if scales:
        base = scales[0]
        lines += ["", f"**Policy size**: devices identified by MAC in up to 50 enforcing segments, rules of one port and one 10-port "
                  f"range; rotated = {data['parameters']['distinct']:,} random device pairs and rules (net of the rotator):", ""]
        rows = [[f"{B.fmt(s['devices'])} / {B.fmt(s['rules'])}", f"{B.fmt(s['rule_hash_entries'])} + {B.fmt(s['rule_trie_entries'])}", B.fmt(s["established_repeat_ns"]),
                 B.fmt(s["drop_repeat_ns"]), B.fmt(s["new_flow_net_ns"]), _ratio(s["new_flow_net_ns"], base["new_flow_net_ns"]),
                 B.fmt(s["established_rotated_net_ns"]), B.fmt(s["drop_rotated_net_ns"]),
                 _ratio(s["drop_rotated_net_ns"], base["drop_rotated_net_ns"])] for s in scales]
        lines += B.md_table(["devices / rules", "rule entries (hash + trie)", "established, repeated", "drop, repeated", "new flow, rotated",
                             "× smallest", "established, rotated", "drop, rotated", "× smallest"], rows, right=range(1, 9))
    lines += ["", "**Targets** (reported, not asserted):", ""]
    lines += B.md_table(["target", "value", "goal", "met", "note"],
                        [[t["target"], f"{t['value']:.2f}", t["goal"], "yes" if t["met"] else "no", t["note"]] for t in data["targets"]])
    lines += [f"\n{note}" for note in data["notes"]]
    return lines


def chart(data: dict[str, Any]) -> str:
    bars = [(f"{program}: {row['class'].split(' (')[0]}", row["ns"][program])
            for row in data["classes"]["repeat"] for program in PROGRAM_ORDER if program in row["ns"] and program != "parse-only"]
    return B.bar_chart_svg("Program cost per packet, one frame repeated (BPF_PROG_TEST_RUN)", "ns", bars)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    result = []
    repeat = {row["class"].split(" (")[0]: row["ns"] for row in data["classes"]["repeat"]}
    est = repeat.get("established flow", {})
    if "xdp-filter" in est:
        ratio = est["ours"] / est["xdp-filter"]  # the same frame, which xdp-filter passes
        result.append(B.target("established flow ÷ xdp-filter's pass path (same frame, repeated)", ratio, "< 1", ratio < 1,
                               f"{est['ours']:.0f} vs {est['xdp-filter']:.0f} ns"))
    syscall = {row["class"].split(" (")[0]: row["ns"] for row in data["classes"]["syscall"]}
    est_d = syscall.get("established flow", {})
    if "xdp-filter" in est_d:
        net, xf_net = est_d["ours"] - est_d["empty"], est_d["xdp-filter"] - est_d["empty"]
        result.append(B.target("established flow ÷ xdp-filter's pass path (distinct frames, one syscall each, net)", net / xf_net, "< 1",
                               net < xf_net, f"{net:.0f} vs {xf_net:.0f} ns net"))
    if data["tables"]:
        small, large = data["tables"][0], data["tables"][-1]
        for key, label in (("active_1000", "1,000 active flows"), ("every_flow", "every flow active")):
            ratio = large[key]["ours_net_ns"] / small[key]["ours_net_ns"]
            result.append(B.target(f"{B.fmt(large['entries'])}-flow table ÷ {B.fmt(small['entries'])}-flow table, {label} (net)", ratio,
                                   "≤ 1.5", ratio <= 1.5, f"{large[key]['ours_net_ns']:.0f} vs {small[key]['ours_net_ns']:.0f} ns"))
    if data["scales"]:
        small, large = data["scales"][0], data["scales"][-1]
        for key, label in (("established_repeat_ns", "established, repeated"), ("drop_repeat_ns", "policy drop, repeated"),
                           ("new_flow_net_ns", "new flow, rotated"), ("drop_rotated_net_ns", "policy drop, rotated")):
            ratio = large[key] / small[key]
            result.append(B.target(f"{label}: {B.fmt(large['rules'])} ÷ {B.fmt(small['rules'])} rules and devices", ratio,
                                   "flat (≤ 1.2)", ratio <= 1.2, f"{large[key]:.0f} vs {small[key]:.0f} ns"))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=B.RESULTS)
    parser.add_argument("--repeat", type=int, default=1_000_000, help="runs per repeated-frame measurement")
    parser.add_argument("--sampled-repeat", type=int, default=20_000, help="repeat for the sampled class (bounded by the ring)")
    parser.add_argument("--distinct", type=int, default=20_000, help="distinct flows per class")
    parser.add_argument("--rotate-repeat", type=int, default=1_000_000, help="runs per rotated measurement (at least one per flow)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--tables", type=int, nargs="+", default=[1_000, 65_536, 1_000_000])
    parser.add_argument("--scales", type=int, nargs="+", default=[10, 1_000, 10_000])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.distinct, args.rotate_repeat, args.tables, args.scales = 100_000, 2_000, 100_000, [1_000, 65_536], [10, 1_000]
    B.require_root()
    started = time.perf_counter()
    data: dict[str, Any] = {"environment": B.environment(), "notes": [], "method": __doc__}
    data["parameters"] = {k: v for k, v in vars(args).items() if k != "out"}
    data["environment"]["pinned_cpu"] = pin_to_one_cpu()
    with contextlib.ExitStack() as stack:
        programs = {
            "empty": stack.enter_context(B.xdp_program(B.EMPTY_PROGRAM, "xdp_empty")),
            "parse-only": stack.enter_context(B.xdp_program(B.PARSE_PROGRAM, "xdp_parse_only")),
        }
        rotator = stack.enter_context(B.Rotator(max(1 << 20, max(args.tables))))
        xf_ns = stack.enter_context(Namespace("xdpfilter"))
        with xf_ns.iproute() as ipr:
            ipr.link("add", ifname="xf0", kind="veth", peer="xf1")
            for ifname in ("xf0", "xf1"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        try:
            programs["xdp-filter"] = stack.enter_context(B.xdp_filter(xf_ns, "xf0"))
        except B.XdpFilterUnavailable as exc:
            data["notes"].append(f"xdp-filter not measured: {exc}")
        cfg = B.bench_policy()
        print("packet classes", flush=True)
        with Tracer(cfg, sizes=cfg.tables) as tracer:
            data["classes"] = packet_classes(args, {**programs, "ours": tracer.loader.prog_fd}, tracer, rotator)
            data["verifier"] = {"limit": bpfsys.VERIFIER_INSN_LIMIT, "programs": {
                name: {"verified_insns": bpfsys.prog_verified_insns(fd), "stack_bytes": tracer.loader.stack_depth(name)}
                for name, fd in tracer.loader.program_fds().items()}}
        print("flow table fill", flush=True)
        data["tables"] = table_fill(args, programs["empty"], rotator)
        print("policy size", flush=True)
        data["scales"] = policy_scale(args, programs["empty"], rotator)
    data["notes"].append("xdp-filter is not in the rotated measurements: the kernel refuses (EINVAL) to put the program libxdp "
                         "loaded into the rotator's program array, so it appears only where it runs directly (repeated frame, "
                         "one syscall per frame).")
    data["targets"] = targets(data)
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    B.write_results(args.out, "prog_cost", data, report(data), chart(data))


if __name__ == "__main__":
    main()
