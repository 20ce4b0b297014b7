#!/usr/bin/env python3
"""Every benchmark in bench/, one command: `sudo bench/run_all.py [--quick] [--only PART ...]`.

Runs each part in its own process (a crash or a timeout in one part leaves
the others' results), each writing <part>.json and <part>.md into
bench/results/, then writes bench/results/summary.md: every target at a
glance, then each part's tables. About 10 minutes on a 2-vCPU VM; --quick
is a smoke run of a minute or two whose numbers mean little.

Parts (each also runs alone, e.g. `python bench/pps.py`):
  prog_cost   program cost by BPF_PROG_TEST_RUN: packet classes beside an empty program, a parse-only
              program and xdp-filter; flow-table fill 1k/64k/1M; 10/1,000/10,000 rules and devices
  pps         packets per second through a veth from a live-frames generator: no program, XDP_DROP-only,
              xdp-filter, nftables, ours (monitor, drop path, established pass)
  userspace   samples classified per second, flow-table read rate, manager memory with 1M flows
  apply_time  policy apply time for 10,000 devices and 1,000 rules

A part that overruns its time limit gets SIGTERM, which unwinds its context
managers (namespaces, attached programs, pinned maps, nft tables go); after
every part, whatever a killed part left behind is removed here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV_PYTHON = Path(os.environ.get("MEDSEG_VENV", "/opt/medseg-xdp/venv")) / "bin" / "python"


def _in_project_python() -> None:
    """Re-run under the project's venv (scripts/setup.sh) when started with a Python that lacks it."""
    try:
        import pyroute2  # noqa: F401

        import medseg_xdp  # noqa: F401
    except ImportError:
        if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
        sys.exit(f"{sys.argv[0]}: medseg_xdp is not importable; run `sudo bash scripts/setup.sh` first")


# name -> (script, arguments, arguments with --quick, time limit in seconds)
PARTS: dict[str, tuple[str, list[str], list[str], int]] = {
    "prog_cost": ("prog_cost.py", [], ["--quick"], 420),
    "pps": ("pps.py", [], ["--quick"], 360),
    "userspace": ("userspace.py", [], ["--quick"], 240),
    "apply_time": ("apply_time.py", [], ["--rounds", "2"], 120),
}
TITLES = {
    "prog_cost": "Program cost",
    "pps": "Packets per second",
    "userspace": "Userspace",
    "apply_time": "Policy apply time (10,000 devices, 1,000 rules)",
}


def others_running() -> list[str]:
    """Other medseg-xdp test or benchmark processes: they share the CPUs, and their stale-namespace cleanup can remove ours."""
    found = []
    mine = {os.getpid(), os.getppid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if ("pytest" in cmd or "medseg_xdp" in cmd or "medseg-xdp" in cmd) and "bench/" not in cmd:
            found.append(f"{entry.name}: {cmd[:80]}")
    return found


def run_part(name: str, args: argparse.Namespace) -> dict[str, object]:
    result = _run_part_once(name, args)
    for attempt in range(args.retries):
        if result["status"] == "ok":
            break
        print(f"run_all: {name} {result['status']}; trying again ({attempt + 1} of {args.retries})", flush=True)
        first = result["status"]
        result = _run_part_once(name, args)
        result["status"] = f"{result['status']} (after a first attempt: {first})"
    return result


def _run_part_once(name: str, args: argparse.Namespace) -> dict[str, object]:
    script, normal, quick, limit = PARTS[name]
    argv = [sys.executable, str(BENCH / script), "--out", str(args.out), *(quick if args.quick else normal)]
    print(f"\n=== {name}: {' '.join(argv[1:])}", flush=True)
    others = others_running()
    if others:
        print(f"run_all: warning: other medseg-xdp processes are running ({'; '.join(others)}): they share the CPUs", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=BENCH)
    try:
        code = process.wait(timeout=limit)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the part unwinds and cleans up
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        status = f"timed out after {limit} s"
    finally:
        sweep(process.pid)
    return {"part": name, "status": status, "seconds": round(time.perf_counter() - started, 1), "pid": process.pid,
            "others_running": others + [o for o in others_running() if o not in others]}


def sweep(pid: int) -> list[str]:
    """Remove what a killed part (pid) may have left: its namespaces and private pins, xdp-filter's pins if ours."""
    removed = []
    try:
        from pyroute2 import netns

        from medseg_xdp.topology import PREFIX, _remove_namespace

        for ns in netns.listnetns():
            if ns.startswith(f"{PREFIX}{pid}-"):
                _remove_namespace(ns)
                removed.append(f"namespace {ns}")
    except Exception as exc:  # cleanup must not hide the results
        print(f"run_all: cleanup of namespaces failed: {exc}", file=sys.stderr)
    bpffs = Path("/sys/fs/bpf")
    for pattern in (f"medseg-trace-{pid}-*", f"medseg-session-{pid}-*"):
        for path in bpffs.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    if XDP_FILTER_WAS_THERE is False and (bpffs / "xdp-filter").exists():
        # created by the part (its veth and namespace are gone, so nothing uses it any more)
        shutil.rmtree(bpffs / "xdp-filter", ignore_errors=True)
        removed.append(str(bpffs / "xdp-filter"))
    if LIBXDP_WAS_THERE is False and (bpffs / "xdp").is_dir():
        try:
            (bpffs / "xdp").rmdir()  # libxdp's working directory, made for xdp-filter; only when empty
            removed.append(str(bpffs / "xdp"))
        except OSError:
            pass
    if removed:
        print(f"run_all: removed what part {pid} left: {', '.join(removed)}", file=sys.stderr)
    return removed


XDP_FILTER_WAS_THERE: bool | None = None
LIBXDP_WAS_THERE: bool | None = None


def targets_table(out: Path, parts: list[str]) -> list[str]:
    rows = []
    for name in parts:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        for t in json.loads(path.read_text()).get("targets", []):
            value = t["value"]
            shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
            rows.append(f"| {name} | {t['target']} | {shown} | {t['goal']} | {'yes' if t['met'] else 'no'} | {t['note']} |")
    if not rows:
        return []
    return ["| part | target | value | goal | met | note |", "|---|---|---:|---|---|---|", *rows]


def write_summary(out: Path, runs: list[dict[str, object]], started: float, quick: bool) -> Path:
    """summary.md: this run's parts, and the other parts' latest results in `out` (marked as such)."""
    ran = {str(r["part"]): r for r in runs}
    for name in PARTS:
        md = out / f"{name}.md"
        if name not in ran and md.exists():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(md.stat().st_mtime))
            ran[name] = {"part": name, "status": f"not run now: results of {when}", "seconds": "-", "others_running": [], "earlier": True}
    shown = [ran[name] for name in PARTS if name in ran]
    env = {}
    for name in ("prog_cost", "pps", "userspace"):
        path = out / f"{name}.json"
        if path.exists():
            env = json.loads(path.read_text()).get("environment", {})
            break
    lines = [
        "# medseg-xdp benchmarks",
        "",
        f"`sudo bench/run_all.py{' --quick' if quick else ''}`, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"{(time.perf_counter() - started) / 60:.1f} minutes. Linux {env.get('kernel', '?')}, {env.get('cpus_online', '?')} vCPUs "
        f"({env.get('cpu', '?')}), BCC {env.get('bcc', '?')}, {env.get('xdp_tools', '?')}. "
        "Absolute numbers are this VM's; the ratios, all from this one run, are the result.",
        "",
        "| part | status | seconds | other medseg-xdp processes during the part |",
        "|---|---|---:|---|",
        *[f"| {r['part']} | {r['status']} | {r['seconds']} | {len(r['others_running']) or 'none'} |" for r in shown],  # type: ignore[arg-type]
        "",
        "## Targets (from issue 7; reported, never asserted)",
        "",
        *targets_table(out, [str(r["part"]) for r in shown]),
    ]
    for r in shown:
        md = out / f"{r['part']}.md"
        lines += ["", f"## {TITLES[str(r['part'])]}", ""]
        if r["status"] != "ok" and not r.get("earlier"):
            lines.append(f"**{r['status']}**: the tables below may be from an earlier run." if md.exists() else f"**{r['status']}**.")
        if md.exists():
            lines += [line.replace("### ", "#### ", 1) if line.startswith("### ") else line for line in md.read_text().splitlines()]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    global XDP_FILTER_WAS_THERE, LIBXDP_WAS_THERE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts, numbers mean little")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), help="run only these parts")
    parser.add_argument("--retries", type=int, default=1, help="run a failed part again this many times (default 1)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: run as root (BPF, namespaces, nftables)")
    _in_project_python()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    XDP_FILTER_WAS_THERE = Path("/sys/fs/bpf/xdp-filter").exists()
    LIBXDP_WAS_THERE = Path("/sys/fs/bpf/xdp").exists()
    started = time.perf_counter()
    runs = [run_part(name, args) for name in (args.only or list(PARTS))]
    summary = write_summary(args.out, runs, started, args.quick)
    print(f"\n{summary}:\n")
    print(summary.read_text())
    failed = [r for r in runs if r["status"] != "ok"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
