"""Part 2, packets per second through a veth: generator -> [program under test on portA] -> bridge -> sink.

Run as root: `python bench/pps.py [--out bench/results] [--frames 5000000]`.
Writes pps.json and pps.md.

Topology (medseg_xdp.topology.InlineBridge): the client namespace is the
generator, the bridge namespace carries br0 with portA and portB, the
server namespace is the sink. The generator is a tiny XDP program returning
bpf_redirect(client eth0), run by BPF_PROG_TEST_RUN with
BPF_F_TEST_XDP_LIVE_FRAMES (repeat = frame count, batch_size 64) inside the
client namespace: the frames really leave through eth0 and arrive on portA,
where each case puts its filter:

- no program (the stack: bridge forwarding to the sink), an XDP_PASS-only
  program, an XDP_DROP-only program;
- xdp-filter with `xdp-filter port 22`, dropping and passing;
- nftables netdev ingress on portA, `udp dport @ports drop` with a set of {22};
- ours in monitor mode (the port-22 traffic passes as audit), ours enforcing
  (the port-22 traffic is the drop path), ours enforcing with an allowed flow
  (one established flow, passing).

Trap: a veth takes redirected frames only while an XDP program is attached
to the receiving end or GRO is on there, otherwise they vanish and the
generator reports absurd rates; so GRO is on at portA in every case.

Counted on the receiver: frames portA's NAPI took (ethtool -S
rx_queue_0_xdp_packets), XDP drops (rx_queue_0_xdp_drops), nftables'
counters, our program's own counters (verdict x reason), frames delivered to
the sink (its eth0), and frames lost before portA (the generator's
tx_queue_0_xdp_xmit_errors: the veth ring was full). Rate = frames portA
took / wall time of the generator run. The generator and the receiver run on
the same core (the receiving NAPI runs in the generator's softirq), so each
rate is one core's worth of generator + receiver: compare ratios only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as B

from medseg_xdp import bpfsys
from medseg_xdp.loader import in_netns
from medseg_xdp.samples import SampleReader
from medseg_xdp.session import ProgramOnBridge
from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, InlineBridge, Namespace

SINK_IP = "10.77.0.99"  # on the sink's link, not its address: passed frames end in its IP layer, no replies
ROUNDS = 3


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # none | pass | drop | xdp-filter | nft | ours
    traffic: str  # "drop" (UDP to 22) or "pass" (UDP to 104)
    expect: str  # what the receiver should do with the frames: "drop" or "pass"
    mode: str = ""  # ours: monitor | enforce


CASES = (
    Case("no program (the stack: bridge forwarding)", "none", "pass", "pass"),
    Case("XDP_PASS-only program", "pass", "pass", "pass"),
    Case("XDP_DROP-only program", "drop", "drop", "drop"),
    Case("xdp-filter, drop (port 22 rule)", "xdp-filter", "drop", "drop"),
    Case("xdp-filter, pass (no rule matches)", "xdp-filter", "pass", "pass"),
    Case("nftables netdev ingress, drop (port set)", "nft", "drop", "drop"),
    Case("ours, monitor mode (would-drop passes as audit)", "ours", "drop", "pass", "monitor"),
    Case("ours, enforcing: drop path", "ours", "drop", "drop", "enforce"),
    Case("ours, enforcing: established flow passing", "ours", "pass", "pass", "enforce"),
)


def frame_for(traffic: str) -> bytes:
    dport = B.SSH_PORT if traffic == "drop" else B.DICOM_PORT
    return B.udp_frame(DEFAULT_CLIENT.mac, DEFAULT_SERVER.mac, 40000, dport, src_ip="10.77.0.1", dst_ip=SINK_IP, size=60)


def policy(mode: str) -> Any:
    # modalities = the generator (client), pacs = the sink (server): UDP allowed, everything else dropped
    return B.bench_policy(ports=("portA", "portB"), mode=mode, modality_mac=DEFAULT_CLIENT.mac, pacs_mac=DEFAULT_SERVER.mac, ring_pages=256)


def link_counters(ns: Namespace, ifname: str) -> dict[str, int]:
    stats = json.loads(ns.run(["ip", "-s", "-j", "link", "show", ifname]).stdout)[0]["stats64"]
    counters = {f"rx_{k}": v for k, v in stats["rx"].items()} | {f"tx_{k}": v for k, v in stats["tx"].items()}
    for line in ns.run(["ethtool", "-S", ifname], check=False).stdout.splitlines()[1:]:
        name, _, value = line.partition(":")
        if value.strip().isdigit():
            counters[name.strip()] = int(value)
    return counters


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def ours_counters(program: ProgramOnBridge) -> dict[str, int]:
    assert program.dataplane is not None
    return {f"{v.name}/{r.name}": c.packets for (v, r), c in program.dataplane.stats().items()}


def with_ours(result: dict[str, Any], program: ProgramOnBridge, samples: list[int]) -> dict[str, Any]:
    """A measurement of our program, with what it consumed, its map pressure and its attach modes."""
    assert program.dataplane is not None
    result["samples_consumed"] = samples[0]
    result["pressure"] = {p.name: v for p, v in program.dataplane.pressure().items() if v}
    result["attach_modes"] = [a.mode for a in program.attachments]
    return result


@contextlib.contextmanager
def consuming(program: ProgramOnBridge) -> Iterator[list[int]]:
    """The manager's part while traffic runs: drain the sample ring buffer in a thread."""
    count = [0]
    reader = SampleReader(program.loader.bpf, lambda sample: count.__setitem__(0, count[0] + 1))
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            reader.poll(50)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join()
        reader.poll(0)


class Bench:
    def __init__(self, topology: InlineBridge, generator_fd: int, frames: int, cpu: int) -> None:
        self.topology = topology
        self.generator_fd = generator_fd
        self.frames = frames
        self.cpu = cpu
        self.client, self.bridge, self.server = topology.client_ns, topology.bridge_ns, topology.server_ns
        self.gen_ifindex = self.client.ifindex("eth0")

    def generate(self, frame: bytes, frames: int | None = None) -> float:
        """Send `frames` (default self.frames) copies of frame from the generator; returns the wall time."""
        with in_netns(self.client.name):
            started = time.perf_counter()
            bpfsys.prog_test_run(self.generator_fd, frame, self.gen_ifindex, repeat=frames or self.frames,
                                 flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)
            return time.perf_counter() - started

    def measure(self, case: Case, extra: Callable[[], dict[str, int]] | None = None) -> dict[str, Any]:
        frame = frame_for(case.traffic)
        self.generate(frame, max(1, self.frames // 10))  # warm-up: opens our flow, fills caches, lets the bridge settle
        time.sleep(0.2)
        rounds = []
        for _ in range(ROUNDS):
            before = (link_counters(self.bridge, "portA"), link_counters(self.client, "eth0"), link_counters(self.server, "eth0"),
                      extra() if extra else {})
            elapsed = self.generate(frame)
            time.sleep(0.3)  # the last frames through the ring and the bridge
            after = (link_counters(self.bridge, "portA"), link_counters(self.client, "eth0"), link_counters(self.server, "eth0"),
                     extra() if extra else {})
            port, gen, sink, own = (delta(a, b) for a, b in zip(after, before, strict=True))
            took = port.get("rx_queue_0_xdp_packets", 0)
            rounds.append({
                "elapsed_s": elapsed,
                "generated": self.frames,
                "lost_before_receiver": gen.get("tx_queue_0_xdp_xmit_errors", 0),
                "received": took,
                "xdp_drops": port.get("rx_queue_0_xdp_drops", 0),
                "delivered_to_sink": sink.get("rx_packets", 0),
                "counters": {k: v for k, v in own.items() if v},
                "mpps": took / elapsed / 1e6,
                "offered_mpps": self.frames / elapsed / 1e6,
            })
        median = sorted(rounds, key=lambda r: r["mpps"])[len(rounds) // 2]
        return {"case": case.name, "kind": case.kind, "traffic": case.traffic, "expect": case.expect,
                "mpps": median["mpps"], "median_round": median, "rounds": rounds,
                "mpps_rounds": [round(r["mpps"], 3) for r in rounds]}


def set_gro(ns: Namespace, ifname: str, on: bool) -> None:
    ns.run(["ethtool", "-K", ifname, "gro", "on" if on else "off"])


def run_cases(args: argparse.Namespace, notes: list[str]) -> list[dict[str, Any]]:
    results = []
    with contextlib.ExitStack() as stack:
        topology = stack.enter_context(InlineBridge())
        bridge = topology.bridge_ns
        # the sink is known to the bridge: frames are forwarded to portB, never flooded
        bridge.run(["bridge", "fdb", "replace", DEFAULT_SERVER.mac, "dev", "portB", "master", "static"])
        set_gro(bridge, "portA", True)
        port_a = topology.port_a_ifindex
        gen_ifindex = topology.client_ns.ifindex("eth0")
        generator = stack.enter_context(B.xdp_program(B.generator_source(gen_ifindex), "xdp_gen"))
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # generator, and with it the receiving softirq, on one core
        bench = Bench(topology, generator, args.frames, cpu)
        programs = {"pass": stack.enter_context(B.xdp_program(B.EMPTY_PROGRAM, "xdp_empty")),
                    "drop": stack.enter_context(B.xdp_program(B.DROP_PROGRAM, "xdp_drop_all"))}
        for case in CASES:
            if args.only and not any(word in case.name for word in args.only):
                continue
            print(f"  {case.name}", flush=True)
            try:
                results.append(run_case(case, bench, programs, port_a, args))
            except B.XdpFilterUnavailable as exc:
                notes.append(f"{case.name}: not measured: {exc}")
            print(f"    {results[-1]['mpps']:.2f} Mpps" if results and results[-1]["case"] == case.name else "    skipped", flush=True)
    return results


def run_case(case: Case, bench: Bench, programs: dict[str, int], port_a: int, args: argparse.Namespace) -> dict[str, Any]:
    bridge = bench.bridge
    if case.kind == "none":
        return bench.measure(case)
    if case.kind in ("pass", "drop"):
        with in_netns(bridge.name):
            bpfsys.xdp_attach(port_a, programs[case.kind], bpfsys.XDP_FLAGS_DRV_MODE)
        try:
            return bench.measure(case)
        finally:
            with in_netns(bridge.name):
                bpfsys.xdp_detach(port_a, bpfsys.XDP_FLAGS_DRV_MODE)
    if case.kind == "xdp-filter":
        with B.xdp_filter(bridge, "portA"):
            return bench.measure(case)
    if case.kind == "nft":
        with B.nft_port_drop(bridge, "portA"):
            result = bench.measure(case, extra=lambda: B.nft_counters(bridge))
        return result
    if case.kind == "ours":
        with ProgramOnBridge(bench.topology, policy(case.mode)) as program, consuming(program) as samples:
            return with_ours(bench.measure(case, extra=lambda: ours_counters(program)), program, samples)
    raise ValueError(case.kind)


def handled_as_expected(result: dict[str, Any], tolerance: float = 0.01) -> str:
    """A check on the counters (not on time): did the receiver do to the frames what the case says, but for a
    `tolerance` share of them?"""
    r = result["median_round"]
    received = r["received"]
    if not received:
        return "nothing received"
    if result["kind"] == "nft":
        dropped = r["counters"].get("dropped", 0)
    elif result["kind"] == "ours":
        dropped = sum(v for k, v in r["counters"].items() if k.startswith("drop/"))
    else:
        dropped = r["xdp_drops"]
    share = dropped / received
    if result["expect"] == "drop":
        return "ok" if share > 1 - tolerance else f"only {share:.1%} dropped"
    return "ok" if share < tolerance else f"{share:.1%} dropped"


def report(data: dict[str, Any], per_frame: str = "ns/frame (gen + rx)") -> list[str]:
    results = {r["case"]: r for r in data["results"]}
    env = data["environment"]

    def mpps(prefix: str) -> float | None:
        for name, r in results.items():
            if name.startswith(prefix):
                return float(r["mpps"])
        return None

    drop_only, nft = mpps("XDP_DROP-only"), mpps("nftables")
    lines = [
        "### Part 2: packets per second through a veth (live-frames generator)",
        "",
        f"{data['parameters']['frames']:,} frames of 60 bytes per round, median of {ROUNDS} rounds, Linux {env['kernel']}, "
        f"{env['cpus_online']} vCPUs. Generator and receiver share one core (the receiving NAPI runs in the generator's "
        "softirq), so a rate is generator + receiver on one core: read the ratios. Received = frames portA's NAPI took; "
        "lost = the veth ring was full.",
        "",
    ]
    rows = []
    for name, r in results.items():
        m = r["median_round"]
        lost = m["lost_before_receiver"]
        rows.append([name, f"{r['mpps']:.2f}", f"{1000 / r['mpps']:.0f}" if r["mpps"] else "-", _x(r["mpps"], drop_only), _x(r["mpps"], nft),
                     B.fmt(m["received"]), "-" if lost is None else B.fmt(lost), B.fmt(m["delivered_to_sink"]), handled_as_expected(r)])
    lines += B.md_table(["receiver on portA", "Mpps", per_frame, "× XDP_DROP-only", "× nftables", "received", "lost before portA",
                         "delivered to sink", "counters agree"], rows, right=range(1, 8))
    lines += ["", "**Targets** (reported, not asserted):", ""]
    lines += B.md_table(["target", "value", "goal", "met", "note"],
                        [[t["target"], f"{t['value']:.2f}", t["goal"], "yes" if t["met"] else "no", t["note"]] for t in data["targets"]])
    lines += [f"\n{note}" for note in data["notes"]]
    return lines


def chart(data: dict[str, Any]) -> str:
    return B.bar_chart_svg(f"Packets per second through a veth, generator and receiver on one core ({data['parameters']['frames']:,} 60-byte frames)",
                           "Mpps", [(r["case"], r["mpps"]) for r in data["results"]], digits=2)


def _x(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value and base else "-"


def targets(data: dict[str, Any], medium: str = "veth") -> list[dict[str, Any]]:
    rates = {r["case"]: r["mpps"] for r in data["results"]}
    drop_only = rates.get("XDP_DROP-only program")
    nft = rates.get("nftables netdev ingress, drop (port set)")
    ours_drop = rates.get("ours, enforcing: drop path")
    ours_pass = rates.get("ours, enforcing: established flow passing")
    xf_pass = rates.get("xdp-filter, pass (no rule matches)")
    result = []
    xf_drop = rates.get("xdp-filter, drop (port 22 rule)")
    if ours_drop and drop_only:
        budget_ns = 1000 / (0.9 * drop_only) - 1000 / drop_only
        reference = f"0.9× leaves a program {budget_ns:.0f} ns per frame" + (
            f"; xdp-filter's drop path (port lookups, no flow state) reaches {xf_drop / drop_only:.2f}×" if xf_drop else "")
        result.append(B.target("our drop path ÷ XDP_DROP-only", ours_drop / drop_only, "≥ 0.9", ours_drop / drop_only >= 0.9, reference))
    if ours_drop and nft:
        ceiling = drop_only / nft if drop_only else 0
        result.append(B.target("our drop path ÷ nftables", ours_drop / nft, "≥ 5 (real NICs)", ours_drop / nft >= 5,
                               f"on {medium} the ceiling itself (XDP_DROP-only ÷ nftables) is {ceiling:.2f} here"
                               + (": 5x cannot be reached" if ceiling < 5 else "")))
    if ours_pass and xf_pass:
        result.append(B.target("our established-flow pass path ÷ xdp-filter's pass path", ours_pass / xf_pass, "> 1", ours_pass > xf_pass,
                               "both pass into the same bridge and sink, whose stack cost dominates"))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=B.RESULTS)
    parser.add_argument("--frames", type=int, default=5_000_000, help="frames per round")
    parser.add_argument("--only", nargs="*", help="run only the cases whose name contains one of these words")
    parser.add_argument("--quick", action="store_true", help="500,000 frames per round")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames = 500_000
    B.require_root()
    started = time.perf_counter()
    data: dict[str, Any] = {"environment": B.environment(), "method": __doc__, "notes": [],
                            "parameters": {"frames": args.frames, "rounds": ROUNDS, "frame_bytes": 60, "batch_size": 64}}
    data["results"] = run_cases(args, data["notes"])
    for result in data["results"]:
        result["counters_agree"] = handled_as_expected(result)
    data["targets"] = targets(data)
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    B.write_results(args.out, "pps", data, report(data), chart(data))


if __name__ == "__main__":
    main()
