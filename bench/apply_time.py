"""Policy apply time at hospital scale: 10,000 devices and 1,000 rules, on the real maps.

Run as root: `python bench/apply_time.py [--devices N] [--rules N]`. Writes
bench/results/apply_time.{json,md}. Apply = compile the config into map
entries, write the new generation beside the live one, flip the one slot
(from then on every new packet is judged by the new policy: the time to
enforcement), then retire the old generation after the grace period.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from medseg_xdp import config
from medseg_xdp.config import TableSizes
from medseg_xdp.dataplane import Dataplane
from medseg_xdp.policy_image import compile_policy
from medseg_xdp.trace import RECORD_DECISION, Tracer

GRACE_S = 0.05


def hospital_policy(devices: int, rules: int) -> config.Config:
    segments = 50
    lines = ['[bridge]\nports = ["portA", "portB"]\n']
    for s in range(segments):
        lines.append(f'[segments.seg{s}]\nmode = "enforce"\ndefault = "drop"\nmacs = [{", ".join(f"{chr(34)}02:00:{s:02x}:{d >> 8 & 255:02x}:{d & 255:02x}:01{chr(34)}" for d in range(devices // segments))}]\n')
    for r in range(rules):
        lines.append(f'[[rules]]\nid = "r{r}"\nfrom = "seg{r % segments}"\nto = "seg{(r // segments) % segments}"\nproto = "tcp"\nports = [{1000 + r}, "{20000 + 10 * r}-{20000 + 10 * r + 9}"]\naction = "allow"\n')
    text = "\n".join(lines) + f"\n[tables]\ndevices = {devices + 16}\nrules = {8 * rules}\n"
    return config.parse(text, "bench policy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    cfg = hospital_policy(args.devices, args.rules)
    sizes = TableSizes(devices=args.devices + 16, rules=8 * args.rules)
    rounds: list[dict[str, float]] = []
    with Tracer(cfg, sizes=sizes) as tracer:
        marks: dict[str, float] = {}
        dataplane = Dataplane(tracer.loader.pin_dir, sleep=lambda s: (marks.__setitem__("flipped", time.perf_counter()), time.sleep(s)))
        ifindex = tracer.ifindex
        for _ in range(args.rounds):
            def compile_for(gen: int) -> dict[str, dict[bytes, bytes]]:
                contents = compile_policy(cfg, gen, ifindex.__getitem__).contents
                marks["compiled"] = time.perf_counter()
                return contents

            start = time.perf_counter()
            dataplane.apply(compile_for, grace_s=GRACE_S)
            done = time.perf_counter()
            rounds.append({
                "compile_ms": (marks["compiled"] - start) * 1000,
                "write_and_flip_ms": (marks["flipped"] - marks["compiled"]) * 1000,
                "apply_to_enforcement_ms": (marks["flipped"] - start) * 1000,
                "retire_old_generation_ms": (done - marks["flipped"] - GRACE_S) * 1000,
                "total_ms": (done - start) * 1000,
            })
        # the new generation is in force right after the flip: a new flow is judged by it
        # seg0 -> seg1 on port 1050 is rule r50's
        frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:01:00:00:01") / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=1050, flags="S"))
        dataplane.set_setting_flag(RECORD_DECISION, True)  # the daemon's apply writes none; trace reads one
        result = tracer.trace(frame, "portA")
        assert (result.verdict, result.rule) == ("pass", "r50"), result
        dataplane.close()
        entries = {name: len(values) for name, values in compile_policy(cfg, 1, ifindex.__getitem__).contents.items()}
    summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "apply_time.json").write_text(json.dumps({"devices": args.devices, "rules": args.rules, "entries": entries, "median": summary, "rounds": rounds}, indent=2) + "\n")
    lines = [f"{args.devices} devices, {args.rules} rules ({entries['rules_exact']} + {entries['rules']} rule entries in hash + trie), median of {args.rounds} applies:", "", "| step | ms |", "|---|---:|"]
    lines += [f"| {key.replace('_ms', '').replace('_', ' ')} | {value:.1f} |" for key, value in summary.items()]
    (args.out / "apply_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
