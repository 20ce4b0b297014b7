"""Part 3, the manager in userspace: samples classified per second, flow-table read rate, memory.

Run as root: `python bench/userspace.py [--out bench/results] [--flows 1000000]`.
Writes userspace.json and userspace.md. Pinned to one CPU.

- Samples/s: the samples the XDP program would take from
  tests/data/ward-clinical.pcap (xray.sampling_model, the program's
  reference model, with the deployed sampling: first 8 packets of a flow,
  then 1 in 1000), fed again and again for a few seconds to
  medseg_xdp.xray.Xray.ingest. Three ways: the X-ray alone; with the
  baseline learner, as the daemon runs it; and the daemon's whole per-sample
  path (decoding the ring-buffer record, then both). The first pass (new
  devices) is reported apart from the steady state.
- Flow-table read: N flows written into a real pinned flow table (Tracer),
  read back four ways: bpfsys.Map.items() (two syscalls per flow),
  Map.items_batch() (BPF_MAP_LOOKUP_BATCH, decoded into the same ctypes
  objects: Dataplane.flows()), Map.lookup_batch_raw() (the kernel's
  buffers, undecoded) and Dataplane.top_flows(20) (what the daemon's
  `flows` command reads: batches, only the 20 largest decoded).
- Memory: a fresh manager process (the same interpreter, medseg_xdp and BCC
  imported) opens the pinned table and holds all N flows: as decoded
  (key, entry) pairs, and as the raw batch buffers. RSS from /proc.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import json
import os
import pstats
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import benchlib as B

from medseg_xdp import abi, config
from medseg_xdp.baseline import Baseline
from medseg_xdp.capture import read_capture
from medseg_xdp.samples import Sample
from medseg_xdp.trace import Tracer
from medseg_xdp.xray import Xray, sampling_model

PCAP = B.REPO / "tests" / "data" / "ward-clinical.pcap"
MONITOR_ONLY = """
[bridge]
name = "ward"
[settings]
sample_first_packets = 8
sample_one_in_n = 1000
"""
TARGET_SAMPLES_PER_S = 50_000


def ward_samples(cfg: config.Config) -> list[tuple[bytes, float]]:
    """(sample, capture time) for every packet of the capture that the program would sample."""
    model = sampling_model(cfg)
    samples = []
    for timestamp, frame in read_capture(PCAP):
        outcome = model.run(frame, 0, now_ns=int(timestamp * 1e9))
        if outcome.sample is not None:
            samples.append((outcome.sample, timestamp))
    return samples


def ring_record(sample: bytes) -> bytes:
    """The ring-buffer record the program would write for this sample (header + captured bytes)."""
    header = abi.SampleHeader(packet_len=len(sample), captured_len=len(sample), kind=int(abi.SampleKind.first_packets))
    return abi.to_bytes(header) + sample


def rate(feed: Callable[[], int], seconds: float) -> tuple[float, int]:
    """Calls feed (which ingests one pass and returns its count) until `seconds` passed: (per second, total)."""
    started, total = time.perf_counter(), 0
    while True:
        total += feed()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return total / elapsed, total


def samples_per_second(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config.parse(MONITOR_ONLY, "monitor only")
    samples = ward_samples(cfg)
    records = [ring_record(s) for s, _ in samples]
    results: dict[str, Any] = {"capture": str(PCAP.relative_to(B.REPO)), "samples_per_pass": len(samples), "ways": {}}

    def xray_alone() -> Xray:
        return Xray.default()

    def with_baseline() -> Xray:
        return Xray.default(learner=Baseline(config=cfg))

    ways: dict[str, tuple[Callable[[], Xray], bool]] = {
        "X-ray alone (Xray.ingest)": (xray_alone, False),
        "X-ray + baseline learner (the daemon's Xray)": (with_baseline, False),
        "daemon path: decode ring record, X-ray + baseline": (with_baseline, True),
    }
    warm = Xray.default(learner=Baseline(config=cfg))  # imports, catalog and parser set-up: not part of any figure
    for sample, _ in samples:
        warm.ingest(sample, time.time())
    for name, (make, decode) in ways.items():
        xray = make()

        def one_pass(xray: Xray = xray, decode: bool = decode) -> int:
            now = time.time()
            if decode:
                for record in records:
                    xray.ingest(Sample.decode(record).data, now)
            else:
                for sample, _ in samples:
                    xray.ingest(sample, now)
            return len(samples)

        with B.Stopwatch() as first:
            one_pass()
        steady, total = rate(one_pass, args.seconds)
        results["ways"][name] = {"first_pass_per_s": len(samples) / first.elapsed, "steady_per_s": steady, "samples": total,
                                 "devices": len(getattr(xray.inventory, "devices", {}) or {})}
        print(f"  {name}: {steady:,.0f} samples/s", flush=True)
    # where the time goes (the X-ray alone), for whoever optimises it
    xray = Xray.default()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        for sample, _ in samples:
            xray.ingest(sample, time.time())
    profile.disable()
    stats = pstats.Stats(profile)
    top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:10]  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    results["profile_top_self_time"] = [
        {"function": f"{Path(file).name}:{line}({func})", "self_share": round(v[2] / total, 3)} for (file, line, func), v in top
    ]
    return results


MEMORY_CHILD = r"""
import ctypes, json, sys
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
from medseg_xdp import bpfsys
from medseg_xdp.dataplane import MAP_LAYOUTS
key_type, value_type, _ = MAP_LAYOUTS["flows"]
flows = bpfsys.Map(bpfsys.obj_get(sys.argv[1]), "flows", key_type, value_type)
how = sys.argv[2]
before = rss()
if how == "decoded":
    held = list(flows.items_batch(8192))
else:
    held = list(flows.lookup_batch_raw(8192))
    held_count = sum(c for c, _, _ in held)
after = rss()
count = len(held) if how == "decoded" else held_count
print(json.dumps({"before": before, "after": after, "count": count}))
"""


def flow_table(args: argparse.Namespace) -> dict[str, Any]:
    n = args.flows
    cfg = B.bench_policy(flows=n + n // 4)
    ack = B.tcp_frame(B.MODALITY_MAC, B.PACS_MAC, 1, B.DICOM_PORT, "A")
    result: dict[str, Any] = {"flows": n, "capacity": n + n // 4, "key_bytes": ctypes.sizeof(abi.FlowKey), "entry_bytes": ctypes.sizeof(abi.FlowEntry)}
    with Tracer(cfg, sizes=cfg.tables) as tracer:
        tracer.run_frame(B.flow_variant(ack, 0), "portA")
        key, _ = B.flow_key_of(B.flow_variant(ack, 0))
        flows = tracer.dataplane.maps["flows"]
        entry = flows.lookup(abi.FlowKey.from_buffer_copy(key))
        with B.Stopwatch() as fill:
            B.prefill_flows(flows, ack, entry, n)
        result["write_batch_per_s"] = n / fill.elapsed
        reads: dict[str, Callable[[], int]] = {
            "Map.items() (key by key)": lambda: sum(1 for _ in flows.items()),
            "Map.items_batch() (BPF_MAP_LOOKUP_BATCH, decoded: Dataplane.flows)": lambda: sum(1 for _ in flows.items_batch(8192)),
            "Map.lookup_batch_raw() (undecoded buffers)": lambda: sum(count for count, _, _ in flows.lookup_batch_raw(8192)),
            "Dataplane.top_flows(20) (the daemon's `flows` command)": lambda: len(tracer.dataplane.top_flows(20)) and n,
        }
        result["reads"] = {}
        for name, read in reads.items():
            with B.Stopwatch() as watch:
                count = read()
            result["reads"][name] = {"flows": count, "seconds": round(watch.elapsed, 3), "flows_per_s": count / watch.elapsed}
            print(f"  {name}: {count / watch.elapsed:,.0f} flows/s", flush=True)
        result["memory"] = {}
        for how in ("decoded", "raw"):
            child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tracer.loader.pin_dir / "flows"), how],
                                   capture_output=True, text=True, timeout=300)
            if child.returncode != 0:
                result["memory"][how] = {"error": child.stderr.strip()[-500:]}
                continue
            m = json.loads(child.stdout.strip().splitlines()[-1])
            held = m["after"]["VmRSS"] - m["before"]["VmRSS"]
            result["memory"][how] = {"flows": m["count"], "rss_before_mb": m["before"]["VmRSS"] / 2**20, "rss_after_mb": m["after"]["VmRSS"] / 2**20,
                                     "peak_mb": m["after"]["VmHWM"] / 2**20, "held_mb": held / 2**20,
                                     "bytes_per_flow": held / max(1, m["count"])}
            print(f"  memory, {how}: {m['after']['VmRSS'] / 2**20:,.0f} MB RSS holding {m['count']:,} flows", flush=True)
    return result


def report(data: dict[str, Any]) -> list[str]:
    s, f = data["samples"], data["flow_table"]
    lines = ["### Part 3: the manager in userspace (one core)", "",
             f"**Samples classified per second**: the {s['samples_per_pass']} samples the program takes from `{s['capture']}` "
             "(first 8 packets of each flow, then 1 in 1000), fed again and again; first pass = devices still unknown.", ""]
    rows = [[name, B.fmt(w["first_pass_per_s"]), B.fmt(w["steady_per_s"]), f"{w['steady_per_s'] / TARGET_SAMPLES_PER_S:.2f}"]
            for name, w in s["ways"].items()]
    lines += B.md_table(["path", "first pass, samples/s", "steady, samples/s", f"÷ target {B.fmt(TARGET_SAMPLES_PER_S)}/s"], rows, right=(1, 2, 3))
    top = ", ".join(f"{p['function']} {p['self_share']:.0%}" for p in s["profile_top_self_time"][:5])
    lines += ["", f"Where the X-ray's time goes (self time): {top}.", "",
              f"**Reading the flow table** ({B.fmt(f['flows'])} flows of {f['key_bytes']} + {f['entry_bytes']} bytes; "
              f"prefilled at {B.fmt(f['write_batch_per_s'])} flows/s, keys built in Python, written by BPF_MAP_UPDATE_BATCH):", ""]
    base = next(iter(f["reads"].values()))["flows_per_s"]
    rows = [[name, B.fmt(r["flows"]), f"{r['seconds']:.2f}", B.fmt(r["flows_per_s"]), f"{r['flows_per_s'] / base:.1f}"] for name, r in f["reads"].items()]
    lines += B.md_table(["read", "flows", "s", "flows/s", "× key by key"], rows, right=(1, 2, 3, 4))
    lines += ["", "**Memory of a manager process holding the whole table read**:", ""]
    rows = []
    for how, m in f["memory"].items():
        label = "decoded (key, entry) ctypes pairs" if how == "decoded" else "raw batch buffers"
        if "error" in m:
            rows.append([label, "error", m["error"], "", "", ""])
        else:
            rows.append([label, B.fmt(m["flows"]), B.fmt(m["rss_before_mb"]), B.fmt(m["rss_after_mb"]), B.fmt(m["held_mb"]), B.fmt(m["bytes_per_flow"])])
    lines += B.md_table(["held as", "flows", "RSS before, MB", "RSS after, MB", "held, MB", "bytes/flow"], rows, right=(1, 2, 3, 4, 5))
    lines += ["", "**Targets** (reported, not asserted):", ""]
    lines += B.md_table(["target", "value", "goal", "met", "note"],
                        [[t["target"], B.fmt(t["value"]), t["goal"], "yes" if t["met"] else "no", t["note"]] for t in data["targets"]])
    return lines


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    result = []
    for name, w in data["samples"]["ways"].items():
        result.append(B.target(f"samples/s on one core: {name}", w["steady_per_s"], f"≥ {B.fmt(TARGET_SAMPLES_PER_S)}",
                               w["steady_per_s"] >= TARGET_SAMPLES_PER_S))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=B.RESULTS)
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=4.0, help="per samples/s measurement")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.flows, args.seconds = 100_000, 1.0
    B.require_root()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    started = time.perf_counter()
    data: dict[str, Any] = {"environment": B.environment(), "method": __doc__, "parameters": {"flows": args.flows, "seconds": args.seconds}}
    print("samples/s", flush=True)
    data["samples"] = samples_per_second(args)
    print("flow table", flush=True)
    data["flow_table"] = flow_table(args)
    data["targets"] = targets(data)
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    B.write_results(args.out, "userspace", data, report(data))


if __name__ == "__main__":
    main()
