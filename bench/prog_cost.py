"""Program cost by BPF_PROG_TEST_RUN: ns per packet, ours beside an empty XDP program.

Run as root: `python bench/prog_cost.py [--out bench/results]`. Writes
prog_cost.json and prog_cost.md. Numbers are the kernel's own average per
run (the `duration` of BPF_PROG_TEST_RUN); compare them only as ratios to
the empty program measured in the same run.

Two methods, each applied to every program alike:
- repeat: one frame, repeat=R; every run after the first sees the state the
  first left (so this is the established-flow path, or a path without state).
- distinct: D distinct frames, repeat=1 each, averaged; each frame opens a
  new flow (the slow path: identity, policy, flow insert).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from medseg_xdp import bpfsys, config
from medseg_xdp.loader import in_netns
from medseg_xdp.trace import Tracer

POLICY = """
[bridge]
ports = ["portA", "portB"]
[settings]
sample_first_packets = 0
sample_one_in_n = 0
events_per_sec = 0
[segments.modalities]
macs = ["02:00:00:00:00:01"]
mode = "enforce"
default = "drop"
[segments.pacs]
prefixes = ["10.0.2.0/24"]
mode = "enforce"
default = "drop"
[[rules]]
id = "dicom"
from = "modalities"
to = "pacs"
proto = "tcp"
ports = [104]
action = "allow"
[[rules]]
id = "udp"
from = "modalities"
to = "pacs"
proto = "udp"
action = "allow"
"""

EMPTY_PROGRAM = b"int xdp_empty(struct xdp_md *ctx) { return XDP_PASS; }"


def frame(sport: int, dport: int = 104, proto: str = "tcp") -> bytes:
    l4 = TCP(sport=sport, dport=dport, flags="A") if proto == "tcp" else UDP(sport=sport, dport=dport)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP(src="10.0.1.5", dst="10.0.2.5") / l4)


def repeat_ns(prog_fd: int, data: bytes, ifindex: int, repeat: int) -> float:
    bpfsys.prog_test_run(prog_fd, data, ifindex)  # warm: the first run may open a flow
    return float(bpfsys.prog_test_run(prog_fd, data, ifindex, repeat=repeat)[1])


def distinct_ns(prog_fd: int, frames: list[bytes], ifindex: int) -> float:
    return statistics.fmean(bpfsys.prog_test_run(prog_fd, f, ifindex)[1] for f in frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeat", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=20_000)
    args = parser.parse_args()
    from bcc import BPF

    empty = BPF(text=EMPTY_PROGRAM)
    empty_fd = empty.load_func(b"xdp_empty", BPF.XDP).fd
    results: dict[str, float] = {}
    with Tracer(config.parse(POLICY, "bench policy")) as tracer, in_netns(tracer.namespace.name):
        ifindex, ours = tracer.ifindex["portA"], tracer.loader.prog_fd
        new_flows = [frame(1024 + i % 60000, proto="udp" if i >= 60000 else "tcp") for i in range(args.distinct)]
        non_ip = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP())
        results["empty XDP program (repeat)"] = repeat_ns(empty_fd, frame(999), ifindex, args.repeat)
        results["ours: established flow (repeat)"] = repeat_ns(ours, frame(999), ifindex, args.repeat)
        results["ours: policy drop, no entry (repeat)"] = repeat_ns(ours, frame(999, dport=22), ifindex, args.repeat)
        results["ours: ARP rail (repeat)"] = repeat_ns(ours, non_ip, ifindex, args.repeat)
        results["empty XDP program (distinct)"] = distinct_ns(empty_fd, new_flows, ifindex)
        results["ours: new flow (distinct)"] = distinct_ns(ours, new_flows, ifindex)
        results["ours: established flow (distinct)"] = distinct_ns(ours, new_flows, ifindex)
    empty.cleanup()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prog_cost.json").write_text(json.dumps({"ns_per_packet": results, "repeat": args.repeat, "distinct": args.distinct}, indent=2) + "\n")
    lines = ["| program and path | ns/packet | × empty (same method) |", "|---|---:|---:|"]
    for name, ns in results.items():
        baseline = results["empty XDP program (repeat)" if "(repeat)" in name else "empty XDP program (distinct)"]
        lines.append(f"| {name} | {ns:.0f} | {ns / baseline:.1f} |")
    (args.out / "prog_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
