"""What the benchmarks share: frames, policies, comparison programs, result files.

Every benchmark writes <name>.json (all numbers, the method and the machine)
and <name>.md (the table the README quotes) into bench/results/. Numbers
from one run are only compared with each other, as ratios: the VM is small
and shared, so absolute figures move between runs.

Comparison programs come with context managers that remove what they made,
also when the body raises: small XDP programs (BCC), xdp-filter (Debian's
xdp-tools, loaded on a veth in a private namespace) and an nftables netdev
table (inside a namespace, so it goes with it).
"""

from __future__ import annotations

import contextlib
import ctypes
import html
import json
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from medseg_xdp import abi, bpfsys, config
from medseg_xdp.topology import Namespace

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
REPO = BENCH_DIR.parent

# ---- the policy the cost and rate benchmarks judge packets by ----

MODALITY_MAC = "02:00:00:00:00:01"  # a device of the enforcing segment "modalities"
WATCHED_MAC = "02:00:00:00:00:03"  # a device of "watched", a monitor-mode segment
PACS_MAC = "02:00:00:00:00:fe"
OTHER_MAC = "02:00:00:00:00:99"  # no segment: unassigned (monitor, allow)
MODALITY_IP, PACS_IP, OTHER_IP = "10.0.1.5", "10.0.2.5", "10.0.3.5"
DICOM_PORT, SSH_PORT = 104, 22

# Sampling as a deployment runs it (the config defaults); the ring is larger
# than the default so that a measurement never runs into a full ring.
BENCH_SETTINGS = """
[settings]
sample_first_packets = 8
sample_one_in_n = 1000
events_per_sec = 100
events_burst = 200
"""


def bench_policy(ports: Sequence[str] = ("portA", "portB"), mode: str = "enforce", modality_mac: str = MODALITY_MAC,
                 pacs_mac: str = PACS_MAC, ring_pages: int = 4096, flows: int = 65536) -> config.Config:
    """modalities -> pacs: TCP and UDP to 104 allowed, the rest dropped (enforced); watched: a monitor-mode segment."""
    text = f"""
[bridge]
ports = [{", ".join(f'"{p}"' for p in ports)}]
{BENCH_SETTINGS}
[tables]
ring_pages = {ring_pages}
flows = {flows}
[segments.modalities]
macs = ["{modality_mac}"]
mode = "{mode}"
default = "drop"
[segments.watched]
macs = ["{WATCHED_MAC}"]
mode = "monitor"
default = "drop"
[segments.pacs]
macs = ["{pacs_mac}"]
prefixes = ["10.0.2.0/24"]
mode = "{mode}"
default = "drop"
[[rules]]
id = "dicom"
from = "modalities"
to = "pacs"
proto = "tcp"
ports = [{DICOM_PORT}]
action = "allow"
[[rules]]
id = "dicom-watched"
from = "watched"
to = "pacs"
proto = "tcp"
ports = [{DICOM_PORT}]
action = "allow"
[[rules]]
id = "udp-104"
from = "modalities"
to = "pacs"
proto = "udp"
ports = [{DICOM_PORT}]
action = "allow"
"""
    return config.parse(text, "bench policy")


def scaled_policy(devices: int, rules: int, ports: Sequence[str] = ("portA", "portB")) -> config.Config:
    """`devices` MAC-identified devices in up to 50 enforcing segments and `rules` rules between them.

    Each rule allows one exact port and a 10-port range (as bench/apply_time.py),
    so the rule trie holds about 3.5 entries per rule. Rule r goes from
    segment r % S to scaled_rule_pair(r, S)[1]; segment s holds the devices
    scaled_mac(s, 0 .. devices // S - 1).
    """
    segments = scaled_segments(devices)
    per_segment = max(1, devices // segments)
    lines = ["[bridge]", f"ports = [{', '.join(f'{chr(34)}{p}{chr(34)}' for p in ports)}]", BENCH_SETTINGS]
    for s in range(segments):
        macs = ", ".join(f'"{scaled_mac(s, d)}"' for d in range(per_segment))
        lines.append(f'[segments.seg{s}]\nmode = "enforce"\ndefault = "drop"\nmacs = [{macs}]\n')
    for r in range(rules):
        src, dst = scaled_rule_pair(r, segments)
        port, low = scaled_rule_port(r, segments), 20000 + 10 * (r // segments)
        lines.append(f'[[rules]]\nid = "r{r}"\nfrom = "seg{src}"\nto = "seg{dst}"\nproto = "tcp"\n'
                     f'ports = [{port}, "{low}-{low + 9}"]\naction = "allow"\n')
    lines.append(f"[tables]\ndevices = {max(16, devices + 16)}\nrules = {max(64, 8 * rules)}\n")
    return config.parse("\n".join(lines), f"scaled policy ({devices} devices, {rules} rules)")


def scaled_mac(segment: int, device: int) -> str:
    return f"02:00:{segment:02x}:{device >> 8 & 255:02x}:{device & 255:02x}:01"


def scaled_rule_pair(rule: int, segments: int) -> tuple[int, int]:
    return rule % segments, (rule // segments + rule % segments + 1) % segments


def scaled_segments(devices: int) -> int:
    return max(2, min(50, devices))


def scaled_rule_port(rule: int, segments: int) -> int:
    """Unique within the rule's segment pair (rules r and r + segments**2 share a pair)."""
    return 1000 + rule // segments


# ---- frames ----

def tcp_frame(src_mac: str, dst_mac: str, sport: int, dport: int, flags: str = "A", src_ip: str = MODALITY_IP, dst_ip: str = PACS_IP) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / TCP(sport=sport, dport=dport, flags=flags))


def udp_frame(src_mac: str, dst_mac: str, sport: int, dport: int, src_ip: str = MODALITY_IP, dst_ip: str = PACS_IP, size: int = 60) -> bytes:
    base = Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / UDP(sport=sport, dport=dport)
    return bytes(base / (b"\0" * max(0, size - len(base))))


def arp_frame(src_mac: str = MODALITY_MAC) -> bytes:
    return bytes(Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=src_mac, psrc=MODALITY_IP, pdst=PACS_IP))


IPV4_SRC, L4_SPORT = 26, 34  # offsets in an untagged IPv4 frame without options


def flow_variant(template: bytes, number: int) -> bytes:
    """The template with a distinct (source address, source port) for each number < 2**24 * 60000.

    Checksums are left as they are: XDP parsers, ours included, do not check them.
    """
    port, host = 1024 + number % 60000, number // 60000
    return b"".join((template[:IPV4_SRC], socket.inet_aton(f"10.{1 + (host >> 16)}.{host >> 8 & 255}.{host & 255}"),
                     template[IPV4_SRC + 4:L4_SPORT], struct.pack("!H", port), template[L4_SPORT + 2:]))


def flow_key_of(frame: bytes, vlan: int = 0) -> tuple[bytes, bool]:
    """The program's normalised flow key (make_flow_key) for an untagged IPv4 TCP/UDP frame, and src_is_lo."""
    src, dst = frame[IPV4_SRC:IPV4_SRC + 4], frame[IPV4_SRC + 4:IPV4_SRC + 8]
    sport_raw, dport_raw = struct.unpack_from("<HH", frame, L4_SPORT)  # the program compares raw __be16 values
    s, d = struct.unpack("<I", src)[0], struct.unpack("<I", dst)[0]
    src_is_lo = s < d if s != d else sport_raw <= dport_raw
    key = abi.FlowKey(proto=frame[23], family=abi.const("FAMILY_IPV4"), vlan=vlan)
    lo, hi, port_lo, port_hi = (src, dst, sport_raw, dport_raw) if src_is_lo else (dst, src, dport_raw, sport_raw)
    ctypes.memmove(key.addr_lo, lo, 4)
    ctypes.memmove(key.addr_hi, hi, 4)
    key.port_lo, key.port_hi = port_lo, port_hi
    return abi.to_bytes(key), src_is_lo


def prefill_flows(flows: bpfsys.Map, template: bytes, entry: abi.FlowEntry, count: int, chunk: int = 65536) -> None:  # type: ignore[valid-type]
    """Write `count` established flows (flow_variant(template, i)) into the flow table, with entry as their value.

    Batch updates of `chunk` entries; the key is the program's own
    normalisation, so a frame of flow i hits its entry.
    """
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        keys, values = bytearray(), bytearray()
        for i in range(start, start + n):
            frame = flow_variant(template, i)
            key, src_is_lo = flow_key_of(frame)
            entry.initiator_is_lo = int(src_is_lo)
            ends = (frame[6:12], frame[0:6]) if src_is_lo else (frame[0:6], frame[6:12])  # the MACs it is judged with
            ctypes.memmove(entry.mac_lo, ends[0], 6)
            ctypes.memmove(entry.mac_hi, ends[1], 6)
            keys += key
            values += abi.to_bytes(entry)
        flows.update_batch_raw(bytes(keys), bytes(values), n)


# ---- comparison programs ----

EMPTY_PROGRAM = "int xdp_empty(struct xdp_md *ctx) { return XDP_PASS; }"
DROP_PROGRAM = "int xdp_drop_all(struct xdp_md *ctx) { return XDP_DROP; }"
# The program's own parser and nothing else; the result feeds the return
# value so that the compiler keeps every read.
PARSE_PROGRAM = """
#include "parse.h"
int xdp_parse_only(struct xdp_md *ctx)
{
	struct packet pkt = {};
	u8 vlan_tags = 0;
	int r = parse_packet(ctx, &pkt, &vlan_tags);

	if (r == PARSE_MALFORMED || (pkt.proto == 255 && pkt.sport == pkt.dport && pkt.vlan == 4095))
		return XDP_DROP;
	return XDP_PASS;
}
"""


def generator_source(target_ifindex: int) -> str:
    """The live-frames generator: every frame out through target_ifindex."""
    return f"int xdp_gen(struct xdp_md *ctx) {{ return bpf_redirect({target_ifindex}, 0); }}"


@contextlib.contextmanager
def xdp_program(source: str, function: str) -> Iterator[int]:
    """Compile and load a small XDP program with BCC; yields its fd, unloads it on exit."""
    from bcc import BPF

    bpf = BPF(text=source.encode(), cflags=[f"-I{abi.BPF_DIR}"])
    try:
        yield bpf.load_func(function.encode(), BPF.XDP).fd
    finally:
        bpf.cleanup()


# ---- in-kernel rotation ----

FRAME_SLOT = 64  # rotation frames are padded to this (Ethernet padding: parsers use the IP length)

ROTATOR_PROGRAM = r"""
struct frame { u8 data[FRAME_SLOT]; };
BPF_ARRAY(frames, struct frame, MAX_FRAMES);
BPF_ARRAY(cursor, u64, 2);  /* [0]: runs so far, [1]: frames loaded */
BPF_PROG_ARRAY(target, 1);

/* Each run copies the next frame of a fixed permutation of the loaded
 * frames over the packet and tail-calls the program under test. */
int xdp_rotate(struct xdp_md *ctx)
{
	u32 zero = 0, one = 1;
	u64 *next = cursor.lookup(&zero), *count = cursor.lookup(&one);

	if (!next || !count || !*count)
		return XDP_ABORTED;
	u32 index = (*next * STRIDE) % *count;
	*next += 1;
	struct frame *f = frames.lookup(&index);
	if (!f || bpf_xdp_store_bytes(ctx, 0, f->data, FRAME_SLOT))
		return XDP_ABORTED;
	target.call(ctx, 0);
	return XDP_ABORTED;
}
"""


class Rotator:
    """BPF_PROG_TEST_RUN through many distinct frames without a syscall per frame.

    A small XDP program holds up to max_frames frames in an array; run k
    copies frame (k * STRIDE) mod n over the packet (a fixed permutation:
    STRIDE is a prime, so every frame comes once per n runs, in an order
    that jumps around the table) and tail-calls the program under test. The
    code stays hot as on a busy port, while the flow entries are spread
    over the whole table. Its own cost (the copy, the tail call, the frame
    array, which is cold too for big n) is what it shows with the empty
    program as the target: subtract that.

    xdp-filter cannot be a target: the kernel refuses to put a program
    loaded by libxdp into BCC's program array (EINVAL).
    """

    STRIDE = 2654435761

    def __init__(self, max_frames: int = 1 << 20) -> None:
        from bcc import BPF

        self.max_frames = max_frames
        cflags = [f"-DMAX_FRAMES={max_frames}", f"-DFRAME_SLOT={FRAME_SLOT}", f"-DSTRIDE={self.STRIDE}ULL"]
        self._bpf = BPF(text=ROTATOR_PROGRAM.encode(), cflags=cflags)
        self.fd = self._bpf.load_func(b"xdp_rotate", BPF.XDP).fd
        self._frames = bpfsys.Map(self._bpf[b"frames"].map_fd, "frames", ctypes.c_uint32, ctypes.c_uint8 * FRAME_SLOT)
        self._cursor = bpfsys.Map(self._bpf[b"cursor"].map_fd, "cursor", ctypes.c_uint32, ctypes.c_uint64)
        self._target = self._bpf[b"target"]
        self.count = 0

    def load(self, frames: Sequence[bytes], chunk: int = 65536) -> None:
        if not 0 < len(frames) <= self.max_frames:
            raise ValueError(f"{len(frames)} frames: the rotator holds 1 to {self.max_frames}")
        for start in range(0, len(frames), chunk):
            part = frames[start:start + chunk]
            keys = b"".join(struct.pack("<I", start + i) for i in range(len(part)))
            values = b"".join(pad_frame(f) for f in part)
            self._frames.update_batch_raw(keys, values, len(part))
        self.count = len(frames)
        self._cursor.update(ctypes.c_uint32(1), ctypes.c_uint64(self.count))

    def run(self, target_fd: int, ifindex: int, repeat: int) -> tuple[int, int]:
        """(XDP action of the last run, ns per run) of target_fd over `repeat` runs from the first frame of the permutation."""
        self._target[ctypes.c_int(0)] = ctypes.c_int(target_fd)
        self._cursor.update(ctypes.c_uint32(0), ctypes.c_uint64(0))
        return bpfsys.prog_test_run(self.fd, bytes(FRAME_SLOT), ifindex, repeat=repeat)

    def close(self) -> None:
        self._bpf.cleanup()

    def __enter__(self) -> Rotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pad_frame(frame: bytes) -> bytes:
    if len(frame) > FRAME_SLOT:
        raise ValueError(f"a {len(frame)}-byte frame does not fit the rotator's {FRAME_SLOT}-byte slots")
    return frame + bytes(FRAME_SLOT - len(frame))


# ---- xdp-filter ----

XDP_FILTER_PIN_DIR = Path("/sys/fs/bpf/xdp-filter")
LIBXDP_DIR = Path("/sys/fs/bpf/xdp")


class XdpFilterUnavailable(RuntimeError):
    """xdp-filter cannot be used here (not installed, or another user's xdp-filter is loaded)."""


def xdp_filter_version() -> str:
    out = subprocess.run(["xdp-filter", "load", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


class HostNamespace:
    """The network namespace we run in, with the part of topology.Namespace the benchmarks use (real NICs in a VM)."""

    name = None

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def ifindex(self, ifname: str) -> int:
        return socket.if_nametoindex(ifname)


@contextlib.contextmanager
def xdp_filter(ns: Namespace | HostNamespace, ifname: str, drop_ports: Sequence[int] = (SSH_PORT,), mode: str = "native") -> Iterator[int]:
    """xdp-filter (allow policy, all features) on ns/ifname with a deny rule per port; yields its program fd.

    xdp-filter keeps one set of maps for the whole host under
    /sys/fs/bpf/xdp-filter: if that exists already, someone else's
    filter is loaded and we refuse rather than add our rules to it. In a
    namespace it runs under nsenter --net (not `ip netns exec`, whose
    private /sys hides bpffs). On exit: unload, and remove the pin directory
    if it stayed.
    """
    if shutil.which("xdp-filter") is None:
        raise XdpFilterUnavailable("xdp-filter is not installed (Debian package xdp-tools)")
    if XDP_FILTER_PIN_DIR.exists():
        raise XdpFilterUnavailable(f"{XDP_FILTER_PIN_DIR} exists: another xdp-filter is loaded on this host; not touching it")
    prefix = ["nsenter", f"--net=/var/run/netns/{ns.name}"] if ns.name else []
    libxdp_dir_was_there = LIBXDP_DIR.exists()

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*prefix, "xdp-filter", *argv], capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise XdpFilterUnavailable(f"xdp-filter {' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    fd = -1
    try:
        run("load", "--mode", mode, ifname)
        for port in drop_ports:
            run("port", str(port))
        from medseg_xdp.loader import in_netns

        with in_netns(ns.name):
            prog_id = bpfsys.xdp_attached_id(ns.ifindex(ifname))
        if not prog_id:
            raise XdpFilterUnavailable(f"xdp-filter loaded but no XDP program is attached to {ifname}")
        fd = bpfsys.prog_fd_by_id(prog_id)
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)
        run("unload", ifname, check=False)
        # only our own (the directory did not exist before we loaded)
        shutil.rmtree(XDP_FILTER_PIN_DIR, ignore_errors=True)
        if not libxdp_dir_was_there:
            with contextlib.suppress(OSError):  # libxdp's working directory, if it made it for us and nobody uses it
                LIBXDP_DIR.rmdir()


# ---- nftables ----

NFT_TABLE = "medseg_bench"


@contextlib.contextmanager
def nft_port_drop(ns: Namespace | HostNamespace, ifname: str, ports: Sequence[int] = (SSH_PORT,)) -> Iterator[None]:
    """nftables netdev ingress on ns/ifname: `udp dport @ports counter drop`, plus a counter of all packets."""
    elements = ", ".join(str(p) for p in ports)
    ruleset = f"""
table netdev {NFT_TABLE} {{
    set ports {{ type inet_service; elements = {{ {elements} }} }}
    chain ingress {{
        type filter hook ingress device "{ifname}" priority -500; policy accept;
        counter name seen
        udp dport @ports counter name dropped drop
    }}
    counter seen {{ }}
    counter dropped {{ }}
}}
"""
    ns.run(["nft", "-f", "-"], input=ruleset)
    try:
        yield
    finally:
        ns.run(["nft", "delete", "table", "netdev", NFT_TABLE], check=False)


def nft_counters(ns: Namespace | HostNamespace) -> dict[str, int]:
    data = json.loads(ns.run(["nft", "-j", "list", "counters", "table", "netdev", NFT_TABLE]).stdout)
    return {item["counter"]["name"]: item["counter"]["packets"] for item in data["nftables"] if "counter" in item}


# ---- results ----

def environment() -> dict[str, Any]:
    """The machine and versions the numbers came from."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import bcc

        bcc_version = getattr(bcc, "__version__", "?")
    except ImportError:
        bcc_version = "missing"
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus_online": os.cpu_count(),
        "python": platform.python_version(),
        "bcc": bcc_version,
        "xdp_tools": xdp_filter_version() if shutil.which("xdp-filter") else "missing",
        "loadavg_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_results(out: Path, name: str, data: dict[str, Any], markdown: list[str], chart: str | None = None) -> None:
    """<name>.json, <name>.md, and <name>.svg when there is a chart (bar_chart_svg)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text("\n".join(markdown) + "\n")
    if chart is not None:
        (out / f"{name}.svg").write_text(chart)
    print("\n".join(markdown))


def bar_chart_svg(title: str, unit: str, bars: Sequence[tuple[str, float]], digits: int = 0) -> str:
    """One horizontal bar per (label, value), as SVG text: a picture of one table, with no plotting library to
    install. Bars whose label starts with "ours" are drawn in red, the baselines in grey."""
    bar_height, gap, label_width, plot_width, top = 18, 6, 360, 380, 36
    peak = max((value for _, value in bars), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + plot_width + 110}" '
        f'height="{top + len(bars) * (bar_height + gap) + 8}" font-family="sans-serif" font-size="12">',
        f'<text x="8" y="22" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(bars):
        y = top + i * (bar_height + gap)
        width = max(1, round(max(value, 0) / peak * plot_width))
        colour = "#c0392b" if label.startswith("ours") else "#95a5a6"
        parts += [
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">{html.escape(label)}</text>',
            f'<rect x="{label_width}" y="{y}" width="{width}" height="{bar_height}" fill="{colour}"/>',
            f'<text x="{label_width + width + 4}" y="{y + 13}">{value:,.{digits}f} {html.escape(unit)}</text>',
        ]
    return "\n".join([*parts, "</svg>"]) + "\n"


def target(name: str, value: float, goal: str, met: bool, note: str = "") -> dict[str, Any]:
    """A target from issue 7, reported (never asserted)."""
    return {"target": name, "value": round(value, 3), "goal": goal, "met": met, "note": note}


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def shuffled(items: Sequence[Any], seed: int = 7) -> list[Any]:
    result = list(items)
    random.Random(seed).shuffle(result)
    return result


def require_root() -> None:
    """Root or exit; and make SIGTERM (run_all's timeout) unwind the context managers, so that everything is removed."""
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: run as root (BPF, namespaces)")
    main_pid = os.getpid()

    def on_term(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            # a fork without exec (pyroute2 runs netns work in forked children and stops them with
            # SIGTERM): never unwind the parent's context managers there, they would remove its namespaces
            os._exit(128 + signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


@dataclass
class Stopwatch:
    started: float = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.started
