"""Compile the XDP program with BCC, pin its maps, attach it to bridge ports.

The loader owns three facts: where the pinned state of a bridge lives
(/sys/fs/bpf/medseg/<bridge>/<abi-hash>), how the program is compiled for
it, and which interfaces carry it. A program is ours when its name is
xdp_medseg: detach never touches anything else.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from medseg_xdp import abi, bpfsys
from medseg_xdp.config import TableSizes

log = logging.getLogger(__name__)

PROGRAM_NAME = "xdp_medseg"  # attached to the ports
JUDGE_PROGRAM_NAME = "medseg_judge"  # tail-called by it for what is no flow hit (judge_program, slot 0)
PROGRAM_NAMES = (PROGRAM_NAME, JUDGE_PROGRAM_NAME)
PROGRAM_SOURCE = abi.BPF_DIR / "medseg_xdp.c"
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/medseg")
BPFFS = Path("/sys/fs/bpf")
# Without XDP frags (BCC sets no program flags) a frame must fit a page:
# 4096 - headroom - skb_shared_info leaves about this much for the MTU.
NATIVE_XDP_MAX_MTU = 3498
MODE_FLAGS = {"native": bpfsys.XDP_FLAGS_DRV_MODE, "generic": bpfsys.XDP_FLAGS_SKB_MODE}


class LoaderError(RuntimeError):
    """A load, attach or detach that cannot go ahead; the message says why."""


# BPF instruction encoding (linux/bpf.h), for stack_depth
BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
BPF_MOV64_X, BPF_ADD64_K, BPF_SUB64_K, BPF_CALL, BPF_EXIT, BPF_JA, BPF_JA32, BPF_LD_IMM64 = 0xBF, 0x07, 0x17, 0x85, 0x95, 0x05, 0x06, 0x18
BPF_PSEUDO_CALL = 1  # src_reg of a call to another BPF function
STACK_LIMIT = 512
BPF_OP_MASK, BPF_MOV = 0xF0, 0xB0
BPF_REG_FP = 10
CALLER_SAVED = range(6)  # r0 (the result) and r1-r5 (the arguments): a call leaves them undefined


def table_cflags(sizes: TableSizes) -> list[str]:
    names = {
        "flows": "FLOW_TABLE_SIZE",
        "devices": "DEVICE_TABLE_SIZE",
        "prefixes": "PREFIX_TABLE_SIZE",
        "rules": "RULE_TABLE_SIZE",
        "segments": "SEGMENT_TABLE_SIZE",
        "frags": "FRAG_TABLE_SIZE",
        "denied": "DENIED_TABLE_SIZE",
        "ring_pages": "RING_PAGES",
        "pair_segments": "PAIR_SEGMENTS",
    }
    return [f"-D{names[field]}={value}" for field, value in asdict(sizes).items()]


@dataclass(frozen=True)
class Attachment:
    ifname: str
    ifindex: int
    prog_id: int
    mode: str  # "native" or "generic"


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body in a network namespace (this thread), or where we are."""
    if name is None:
        yield
        return
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


def ensure_bpffs() -> None:
    if not os.path.ismount(BPFFS):
        BPFFS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)


def kernel_headers_problem() -> str | None:
    """Why BCC cannot compile here, or None."""
    build = Path("/lib/modules") / platform.release() / "build"
    if not (build / "include").is_dir():
        return f"no kernel headers at {build}: run scripts/setup.sh (it points BCC at the distro's linux-headers)"
    return None


def stack_depth(raw: bytes) -> int:
    """The deepest stack offset raw (BPF instructions, one function) touches, following the control flow.

    A register points into the stack (at r10 + offset) where every path to an instruction makes it one; where
    paths give it different offsets, the deepest counts. Its value is worked out over all paths first, then
    each instruction is read once: ALU on a stack pointer other than adding or subtracting a constant, and
    calls to other BPF functions, are refused (the scan cannot follow them).
    """
    insns = list(struct.iter_unpack("<BBhi", raw))
    states: list[dict[int, int] | None] = [None] * len(insns)  # register -> stack offset, before each instruction
    states[0] = {BPF_REG_FP: 0}
    work = [0]
    while work:
        index = work.pop()
        after, successors = _stack_step(insns, index, dict(states[index]))  # type: ignore[arg-type]
        for successor in successors:
            known = states[successor]
            merged = after if known is None else {
                reg: max(min(value, after[reg]), -STACK_LIMIT) for reg, value in known.items() if reg in after}
            if merged != known:
                states[successor] = merged
                work.append(successor)
    deepest = 0
    for index, state in enumerate(states):
        if state is None:
            continue  # unreachable, or the second slot of a 16-byte instruction
        code, regs, offset, imm = insns[index]
        dst, src, kind = regs & 0xF, regs >> 4, code & 0x07
        base = dst if kind in (BPF_ST, BPF_STX) else src if kind == BPF_LDX else None
        if base in state:
            deepest = min(deepest, state[base] + offset)
        if code in (BPF_ADD64_K, BPF_SUB64_K) and dst in state:
            deepest = min(deepest, state[dst] + (imm if code == BPF_ADD64_K else -imm))
        elif kind == BPF_ALU64 and dst in state and code & BPF_OP_MASK != BPF_MOV:  # 32-bit ALU ends a pointer
            raise LoaderError(f"stack_depth: instruction {index} ({code:#x}) moves a stack pointer by an amount this scan cannot follow")
        elif code == BPF_CALL and src == BPF_PSEUDO_CALL:
            raise LoaderError(f"stack_depth: instruction {index} calls another BPF function, whose frame this scan does not follow")
    return -deepest


def _stack_step(insns: list[tuple[int, int, int, int]], index: int, at: dict[int, int]) -> tuple[dict[int, int], list[int]]:
    """One instruction's effect on the stack pointers in registers, and where control goes next."""
    code, regs, offset, imm = insns[index]
    dst, src, kind = regs & 0xF, regs >> 4, code & 0x07
    if code == BPF_LD_IMM64:
        at.pop(dst, None)
        return at, [index + 2]  # the instruction takes two slots
    if kind == BPF_LDX:
        at.pop(dst, None)
    elif code == BPF_CALL:
        for reg in CALLER_SAVED:
            at.pop(reg, None)
    elif code == BPF_EXIT:
        return at, []
    elif code == BPF_JA:
        return at, [index + 1 + offset]
    elif code == BPF_JA32:  # gotol: the offset is in imm
        return at, [index + 1 + imm]
    elif kind in (BPF_JMP, BPF_JMP32):
        return at, [index + 1, index + 1 + offset]
    elif code == BPF_MOV64_X:
        if src in at:
            at[dst] = at[src]
        else:
            at.pop(dst, None)
    elif code in (BPF_ADD64_K, BPF_SUB64_K) and dst in at:
        at[dst] += imm if code == BPF_ADD64_K else -imm
    elif kind in (BPF_ALU, BPF_ALU64):
        at.pop(dst, None)  # overwritten, cut to 32 bits, or moved by an amount unknown here (refused above)
    return at, [index + 1]


class Loader:
    """Compiles and attaches the program of one bridge."""

    def __init__(self, bridge: str, pin_root: Path = DEFAULT_PIN_ROOT, sizes: TableSizes = TableSizes()) -> None:
        self.bridge = bridge
        self.sizes = sizes
        self.pin_dir = pin_root / bridge / abi.abi_hash(repr(sizes))
        self._bpf: object | None = None
        self.prog_fd = -1
        self.judge_fd = -1

    def compile(self) -> int:
        """Compile and load the program; maps are created or reopened pinned."""
        problem = kernel_headers_problem()
        if problem:
            raise LoaderError(problem)
        ensure_bpffs()
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        from bcc import BPF  # imported late: tools that only read maps skip BCC's start-up

        cflags = [f"-I{abi.BPF_DIR}", f'-DMEDSEG_PIN_DIR="{self.pin_dir}"', *table_cflags(self.sizes)]
        try:
            self._bpf = BPF(src_file=str(PROGRAM_SOURCE).encode(), cflags=cflags)
            self.judge_fd = self._bpf.load_func(JUDGE_PROGRAM_NAME.encode(), BPF.XDP).fd
            self.prog_fd = self._bpf.load_func(PROGRAM_NAME.encode(), BPF.XDP).fd
        except Exception as exc:  # BCC raises bare Exception for compile and verifier errors
            raise LoaderError(f"cannot load {PROGRAM_SOURCE.name}: {exc}") from exc
        return self.prog_fd

    def arm(self) -> None:
        """Put this load's medseg_judge in the pinned judge_program slot, which every xdp_medseg on these maps
        tail-calls. Right before attaching, after the ports' checks: a program still attached from before the
        restart then calls it too (the handoff is one pinned map and the layouts agree: same directory), for as
        short a time as possible, and a start that fails before (or at) those checks leaves the slot to the
        program that filled it."""
        self.bpf[b"judge_program"][ctypes.c_int(0)] = ctypes.c_int(self.judge_fd)  # type: ignore[index]

    def program_fds(self) -> dict[str, int]:
        """Each loaded program by name: the attached one and the one it tail-calls."""
        return {PROGRAM_NAME: self.prog_fd, JUDGE_PROGRAM_NAME: self.judge_fd}

    def stack_depth(self, name: str = PROGRAM_NAME) -> int:
        """Bytes of the 512-byte BPF stack a compiled program uses (see stack_depth()). LLVM versions lay the
        stack out differently, so the tests keep a margin below the limit."""
        return stack_depth(self.bpf.dump_func(name.encode()))  # type: ignore[attr-defined]

    @property
    def bpf(self) -> object:
        if self._bpf is None:
            raise LoaderError("program not compiled")
        return self._bpf

    def attach(
        self,
        ifnames: Sequence[str],
        netns_name: str | None = None,
        replace: bool = False,
        force_generic: bool = False,
    ) -> list[Attachment]:
        """Attach to each interface: native XDP, else generic with a warning.

        An interface that already carries xdp_medseg is refused unless
        replace, and then swapped atomically (XDP_FLAGS_REPLACE); one that
        carries another program is always refused. All or none: when one
        interface fails, the fresh attachments made before it are undone
        (a swapped program stays: it shares the maps of the one it replaced),
        so the bridge is never left enforcing on some ports only.
        """
        if self.prog_fd < 0:
            self.compile()
        self.preflight(ifnames, netns_name, replace)
        self.arm()
        done: list[Attachment] = []
        fresh: list[Attachment] = []
        with in_netns(netns_name):
            for ifname in ifnames:
                try:
                    attachment, swapped = self._attach_one(ifname, replace, force_generic)
                except Exception:
                    for undo in fresh:
                        try:
                            bpfsys.xdp_detach(undo.ifindex, MODE_FLAGS[undo.mode])
                            log.warning("%s: detached again, because %s could not be attached", undo.ifname, ifname)
                        except OSError as exc:
                            log.error("%s: could not detach it again (%s): it enforces alone", undo.ifname, exc)
                    raise
                done.append(attachment)
                if not swapped:
                    fresh.append(attachment)
        return done

    def attached_program(self, ifname: str, netns_name: str | None = None) -> tuple[int, int] | None:
        """(ifindex, id of the XDP program on it or 0) for an interface, None when it does not exist."""
        with in_netns(netns_name):
            try:
                ifindex, _ = _link(ifname)
            except LoaderError:
                return None
            return ifindex, bpfsys.xdp_attached_id(ifindex)

    def preflight(self, ifnames: Sequence[str], netns_name: str | None = None, replace: bool = False) -> None:
        """Raise LoaderError now if attach would refuse an interface."""
        with in_netns(netns_name):
            for ifname in ifnames:
                _attachable(ifname, replace)

    def _attach_one(self, ifname: str, replace: bool, force_generic: bool) -> tuple[Attachment, bool]:
        """The attachment, and whether it swapped a program of ours."""
        ifindex, mtu, current = _attachable(ifname, replace)
        old_fd = bpfsys.prog_fd_by_id(current) if current else -1
        _disable_rx_vlan_offload(ifname)
        modes = [("generic", bpfsys.XDP_FLAGS_SKB_MODE)]
        if current and bpfsys.xdp_attached_id(ifindex, bpfsys.XDP_FLAGS_SKB_MODE) == current:
            pass  # replacing a generic attachment: the kernel swaps within the same mode only
        elif not force_generic:
            if mtu > NATIVE_XDP_MAX_MTU:
                log.warning("%s: MTU %d is above %d, which native XDP without frags cannot take: generic mode", ifname, mtu, NATIVE_XDP_MAX_MTU)
            else:
                modes.insert(0, ("native", bpfsys.XDP_FLAGS_DRV_MODE))
        try:
            for mode, flags in modes:
                try:
                    bpfsys.xdp_attach(ifindex, self.prog_fd, flags, old_fd)
                except bpfsys.BpfError as exc:
                    if mode == "native" and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.EBUSY):
                        log.warning("%s: native XDP refused (%s): falling back to generic XDP, which is slower", ifname, exc.strerror)
                        continue
                    raise LoaderError(f"cannot attach to {ifname}: {exc}") from exc
                prog_id, _ = bpfsys.prog_info(self.prog_fd)
                return Attachment(ifname, ifindex, prog_id, mode), bool(current)
        finally:
            if old_fd >= 0:
                os.close(old_fd)
        raise LoaderError(f"cannot attach to {ifname}")

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()  # type: ignore[attr-defined]
            self._bpf = None
            self.prog_fd = self.judge_fd = -1

    def remove_pinned_state(self, netns_name: str | None = None) -> None:
        """Delete this bridge's pinned maps (all layouts), and the root if now empty. Refused while an xdp_medseg
        uses them, in any namespace (attached, or held by a running manager): the pin is what keeps
        judge_program filled, and without it such a program would pass every new flow unjudged."""
        bridge_dir = self.pin_dir.parent
        maps = pinned_map_ids(bridge_dir)
        users = programs_on(maps, netns_name)
        if users:
            raise LoaderError(f"{', '.join(users)} still carr{'ies' if len(users) == 1 else 'y'} {PROGRAM_NAME} on this "
                              "bridge's pinned maps: unload those interfaces first (without the pins their new flows "
                              "would pass unjudged)")
        elsewhere = [prog_id for prog_id in bpfsys.loaded_program_ids()
                     if bpfsys.prog_name_by_id(prog_id) == PROGRAM_NAME and _uses(prog_id, maps)]
        if elsewhere:
            raise LoaderError(f"{PROGRAM_NAME} (program id {', '.join(map(str, elsewhere))}) still uses this bridge's pinned "
                              "maps: on ports of another namespace (unload --netns), or held by a running medseg-xdp "
                              "(stop it); without the pins its new flows would pass unjudged")
        shutil.rmtree(bridge_dir, ignore_errors=True)
        try:
            bridge_dir.parent.rmdir()
        except OSError:
            pass  # other bridges' state, or already gone


def pinned_map_ids(directory: Path) -> set[int]:
    """Ids of the maps pinned under a directory (any depth)."""
    ids = set()
    for path in directory.rglob("*") if directory.is_dir() else ():
        if path.is_file():
            try:
                fd = bpfsys.obj_get(str(path))
            except OSError:
                continue  # not a map (a program pin, say)
            try:
                ids.add(bpfsys.map_id(fd))
            except OSError:
                pass
            finally:
                os.close(fd)
    return ids


def _uses(prog_id: int, map_ids: set[int]) -> bool:
    """The program uses any of these maps (False for one that went away meanwhile)."""
    try:
        return bool(bpfsys.prog_map_ids(prog_id) & map_ids)
    except OSError:
        return False


def programs_on(map_ids: set[int], netns_name: str | None = None) -> list[str]:
    """The interfaces of a namespace whose attached XDP program uses any of these maps."""
    if not map_ids:
        return []
    users = []
    with in_netns(netns_name), IPRoute() as ipr:
        for link in ipr.get_links():
            for flags in (bpfsys.XDP_FLAGS_DRV_MODE, bpfsys.XDP_FLAGS_SKB_MODE):
                prog_id = bpfsys.xdp_attached_id(link["index"], flags)
                if prog_id and _uses(prog_id, map_ids):
                    users.append(link.get_attr("IFLA_IFNAME"))
                    break
    return users


def detach(ifnames: Sequence[str], netns_name: str | None = None) -> list[str]:
    """Detach xdp_medseg from each interface that carries it.

    Returns the interfaces it detached from. An interface without our
    program is an error naming it, so that unloading twice says so.
    """
    detached: list[str] = []
    missing: list[str] = []
    with in_netns(netns_name):
        for ifname in ifnames:
            ifindex, _ = _link(ifname)
            for flags in (bpfsys.XDP_FLAGS_DRV_MODE, bpfsys.XDP_FLAGS_SKB_MODE):
                prog_id = bpfsys.xdp_attached_id(ifindex, flags)
                if prog_id and bpfsys.prog_name_by_id(prog_id) == PROGRAM_NAME:
                    bpfsys.xdp_detach(ifindex, flags)
                    detached.append(ifname)
                    break
            else:
                missing.append(ifname)
    if missing and not detached:
        raise LoaderError(f"no {PROGRAM_NAME} attached to {', '.join(missing)}: nothing to unload")
    if missing:
        log.warning("no %s was attached to %s", PROGRAM_NAME, ", ".join(missing))
    return detached


def _attachable(ifname: str, replace: bool) -> tuple[int, int, int]:
    """(ifindex, MTU, id of our attached program or 0), or LoaderError."""
    ifindex, mtu = _link(ifname)
    problem = ifindex_problem(ifname, ifindex)
    if problem:
        raise LoaderError(problem)
    current = bpfsys.xdp_attached_id(ifindex)
    if current:
        name = bpfsys.prog_name_by_id(current)
        if name != PROGRAM_NAME:
            raise LoaderError(f"{ifname} already carries another XDP program ({name or '?'}, id {current}); not touching it")
        if not replace:
            raise LoaderError(f"{ifname} already carries {PROGRAM_NAME} (id {current}); use --replace to swap it or unload first")
    return ifindex, mtu, current


def ifindex_problem(ifname: str, ifindex: int) -> str | None:
    """Why a port cannot be one of ours by its ifindex (the ports map is an array indexed by it), or None."""
    limit = abi.const("PORT_IFINDEX_LIMIT")
    if ifindex < limit:
        return None
    return f"{ifname} has ifindex {ifindex}: the port table holds ifindexes below {limit} (recreate the interface, or reboot the bridge host, for a lower one)"


def _link(ifname: str) -> tuple[int, int]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LoaderError(f"no interface {ifname}")
        link = ipr.get_links(found[0])[0]
        return found[0], link.get_attr("IFLA_MTU")


def _disable_rx_vlan_offload(ifname: str) -> None:
    """Real NICs strip VLAN tags before XDP; identity needs them."""
    if shutil.which("ethtool") is None:
        log.warning("%s: ethtool missing, cannot turn rx-vlan offload off", ifname)
        return
    subprocess.run(["ethtool", "-K", ifname, "rxvlan", "off"], capture_output=True)
    shown = subprocess.run(["ethtool", "-k", ifname], capture_output=True, text=True).stdout
    if "rx-vlan-offload: on" in shown:
        log.warning("%s: rx-vlan offload is still on: VLAN tags may be stripped before XDP", ifname)
