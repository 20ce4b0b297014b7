"""`medseg-xdp doctor`: is this host able to enforce, and is it enforcing as configured?

Every check says what it found and, when something is wrong, what to do.
A kernel update without matching headers, bpffs not mounted, a port in
generic mode or with rx-vlan offload on, an MTU native XDP cannot take, a
pinned state of another layout: each is named here before it surprises
anyone. FAIL means enforcement cannot work as configured; WARN means it
works, worse than it should.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pyroute2 import IPRoute

from medseg_xdp import abi, bpfsys
from medseg_xdp.config import Config
from medseg_xdp.fingerprint.parsers.oui import IEEE_DATA_DIR
from medseg_xdp.loader import (
    BPFFS,
    DEFAULT_PIN_ROOT,
    JUDGE_PROGRAM_NAME,
    NATIVE_XDP_MAX_MTU,
    PROGRAM_NAME,
    Loader,
    ifindex_problem,
    in_netns,
    kernel_headers_problem,
)
from medseg_xdp.samples import HEADER_SIZE

MINIMUM_KERNEL = (5, 18)  # bpf_xdp_load_bytes


class Status(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    found: str
    fix: str = ""

    def line(self) -> str:
        return f"[{self.status.value:>4}] {self.name}: {self.found}" + (f"\n       fix: {self.fix}" if self.fix else "")


def kernel_version(release: str) -> tuple[int, int]:
    major, minor, *_ = (int("".join(c for c in part if c.isdigit()) or 0) for part in release.split(".")[:2] + ["0"])
    return major, minor


def check_kernel(release: str) -> Check:
    version = kernel_version(release)
    if version < MINIMUM_KERNEL:
        return Check("kernel", Status.FAIL, f"{release}", f"the program needs Linux {MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]} or newer")
    return Check("kernel", Status.OK, release)


def check_headers() -> Check:
    problem = kernel_headers_problem()
    if problem:
        return Check("kernel headers", Status.FAIL, problem, "run scripts/setup.sh (it installs the distro's linux-headers and points BCC at them)")
    build = Path("/lib/modules") / platform.release() / "build"
    target = os.path.realpath(build)
    if platform.release() not in target:
        return Check("kernel headers", Status.WARN, f"{build} -> {target}: headers of another kernel", "install the headers of the running kernel when the distro has them")
    return Check("kernel headers", Status.OK, target)


def check_bpffs() -> Check:
    if not os.path.ismount(BPFFS):
        return Check("bpffs", Status.FAIL, f"{BPFFS} is not mounted: pinned state cannot survive a manager restart", f"mount -t bpf bpf {BPFFS} (scripts/setup.sh does)")
    return Check("bpffs", Status.OK, f"{BPFFS} mounted")


def check_btf() -> Check:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return Check("BTF", Status.WARN, "no /sys/kernel/btf/vmlinux", "not needed by BCC, but bpftool and newer tools want it")
    return Check("BTF", Status.OK, "/sys/kernel/btf/vmlinux")


def check_pinned_state(expected: Path) -> Check:
    """expected: this layout's pin directory (Loader.pin_dir)."""
    bridge_dir = expected.parent
    others = sorted(p.name for p in bridge_dir.iterdir() if p != expected) if bridge_dir.is_dir() else []
    if not expected.is_dir():
        found = f"no pinned maps at {expected}"
        if others:
            return Check("pinned state", Status.FAIL, f"{found}, but maps of another layout: {', '.join(others)}", "load this version (medseg-xdp run / load); the old layout's flows and counters are not carried over, then remove the old directory")
        return Check("pinned state", Status.FAIL, found, "medseg-xdp is not loaded for this bridge: medseg-xdp run -c CONFIG")
    if others:
        return Check("pinned state", Status.WARN, f"{expected}, and stale layouts beside it: {', '.join(others)}", f"remove them: rm -r {' '.join(str(bridge_dir / o) for o in others)}")
    return Check("pinned state", Status.OK, str(expected))


def check_judging_program(pin_dir: Path) -> Check:
    """The slot xdp_medseg tail-calls for every packet that is no flow hit: empty, new flows pass unjudged."""
    path = pin_dir / "judge_program"
    try:
        fd = bpfsys.obj_get(str(path))
    except OSError:
        return Check("judging program", Status.FAIL, f"no {path}", "restart medseg-xdp (systemctl restart medseg-xdp)")
    slots = bpfsys.Map(fd, "judge_program", ctypes.c_uint32, ctypes.c_uint32)
    try:
        prog_id = slots.lookup(ctypes.c_uint32(0))
    finally:
        slots.close()
    if prog_id is None:
        return Check("judging program", Status.FAIL, "the judge_program slot is empty: new flows, flows after a policy change and "
                     "idle flows pass unjudged (reason unjudged)", "restart medseg-xdp (systemctl restart medseg-xdp), which fills it")
    return Check("judging program", Status.OK, f"{JUDGE_PROGRAM_NAME}, program {prog_id.value}")  # type: ignore[attr-defined]


def check_port(ifname: str, netns: str | None) -> list[Check]:
    checks = []
    with in_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return [Check(f"port {ifname}", Status.FAIL, "no such interface", "fix bridge.ports in the config")]
        ifindex = found[0]
        mtu = ipr.get_links(ifindex)[0].get_attr("IFLA_MTU")
        native = bpfsys.xdp_attached_id(ifindex, bpfsys.XDP_FLAGS_DRV_MODE)
        generic = bpfsys.xdp_attached_id(ifindex, bpfsys.XDP_FLAGS_SKB_MODE)
        offload = _rx_vlan_offload(ifname)
    attached = native or generic
    name = bpfsys.prog_name_by_id(attached) if attached else None
    problem = ifindex_problem(ifname, ifindex)
    if problem:
        checks.append(Check(f"port {ifname} ifindex", Status.FAIL, problem, "recreate the interface (it gets the lowest free ifindex) or reboot"))
    if not attached:
        checks.append(Check(f"port {ifname}", Status.FAIL, "no XDP program: traffic crosses unfiltered (fail-open)", "medseg-xdp run -c CONFIG"))
    elif name != PROGRAM_NAME:
        checks.append(Check(f"port {ifname}", Status.FAIL, f"another XDP program ({name}, id {attached})", "find who attached it; medseg-xdp never replaces a foreign program"))
    elif generic and not native:
        reason = f"MTU {mtu} is above {NATIVE_XDP_MAX_MTU}" if mtu > NATIVE_XDP_MAX_MTU else "the driver refused native XDP"
        checks.append(Check(f"port {ifname}", Status.WARN, f"generic (skb) XDP, program {attached}: {reason}", "native XDP is several times faster: lower the MTU or use a NIC driver with native XDP"))
    else:
        checks.append(Check(f"port {ifname}", Status.OK, f"native XDP, program {attached}"))
    if mtu > NATIVE_XDP_MAX_MTU:
        checks.append(Check(f"port {ifname} MTU", Status.WARN, f"{mtu}: above {NATIVE_XDP_MAX_MTU}, native XDP without frags cannot take it", "jumbo-frame VLANs (PACS) need generic mode, or an MTU <= 3498"))
    if offload == "on":
        checks.append(Check(f"port {ifname} rx-vlan offload", Status.WARN, "on: the NIC strips VLAN tags before XDP, VLAN identity breaks", f"ethtool -K {ifname} rxvlan off (the loader tries; this NIC kept it)"))
    return checks


def _rx_vlan_offload(ifname: str) -> str:
    if shutil.which("ethtool") is None:
        return "unknown"
    shown = subprocess.run(["ethtool", "-k", ifname], capture_output=True, text=True).stdout
    for line in shown.splitlines():
        if line.strip().startswith("rx-vlan-offload:"):
            return line.split(":", 1)[1].split()[0]
    return "unknown"


# One ring-buffer record: the program's struct sample_record, behind the ring's 8-byte record header.
SAMPLE_RECORD_BYTES = 8 + HEADER_SIZE + abi.const("SAMPLE_SNAPLEN")
PAGE_BYTES = 4096


def check_sample_ring(cfg: Config, cpus: int) -> Check:
    """Does the ring hold a burst of the samples no flow paces from every CPU at once?"""
    budgets = cfg.settings.sample_budgets.values()
    if any(rate == abi.const("EVENTS_UNLIMITED") for rate, _ in budgets):
        return Check("sample ring", Status.WARN, "a sample rate is unlimited: a flood can fill the ring", "set events_per_sec and dhcp_samples_per_sec")
    burst = sum(depth for rate, depth in budgets if rate) * cpus * SAMPLE_RECORD_BYTES
    ring = cfg.tables.ring_pages * PAGE_BYTES
    if burst > ring:
        pages = 1 << (-(-burst // PAGE_BYTES) - 1).bit_length()
        return Check("sample ring", Status.WARN, f"bursts from {cpus} CPUs at once take {burst:,} bytes, the ring has {ring:,}",
                     f"[tables] ring_pages = {pages}, or smaller events_burst / dhcp_samples_burst")
    return Check("sample ring", Status.OK, f"{ring:,} bytes hold the bursts of {cpus} CPUs ({burst:,} bytes)")


def check_vendor_data(directory: Path = IEEE_DATA_DIR) -> Check:
    """The IEEE registries the classifier reads vendors from (a main signal for pumps and monitors)."""
    if not (directory / "oui.csv").is_file():
        return Check("vendor data", Status.WARN, f"no {directory / 'oui.csv'}: devices are classified without their vendor",
                     "apt-get install ieee-data (scripts/setup.sh installs it)")
    return Check("vendor data", Status.OK, f"IEEE registries in {directory}")


def host_checks() -> list[Check]:
    """What the host must offer before anything is loaded; the daemon refuses to start on a FAIL here."""
    return [check_kernel(platform.release()), check_headers(), check_bpffs(), check_btf()]


def run_checks(cfg: Config, netns: str | None = None, pin_root: Path = DEFAULT_PIN_ROOT) -> list[Check]:
    checks = host_checks()
    if checks[2].status is Status.OK:
        pin_dir = Loader(cfg.bridge, pin_root=pin_root, sizes=cfg.tables).pin_dir
        checks.append(check_pinned_state(pin_dir))
        if checks[-1].status is not Status.FAIL:
            checks.append(check_judging_program(pin_dir))
    checks.append(check_sample_ring(cfg, os.cpu_count() or 1))
    checks.append(check_vendor_data())
    for port in cfg.ports:
        checks.extend(check_port(port, netns))
    return checks
