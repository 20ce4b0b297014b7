"""Run packets through the real kernel program and say what it did, and why.

A Tracer compiles the program against a private pin directory, fills the
maps from a configuration, and runs each frame with BPF_PROG_TEST_RUN in a
private network namespace whose interfaces carry the names of the
configured bridge ports (so ingress ports, PVIDs and port bindings are
real). It never touches a live daemon's state, and removes everything it
made.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from medseg_xdp import abi, bpfsys
from medseg_xdp.config import Config, TableSizes
from medseg_xdp.dataplane import Dataplane
from medseg_xdp.loader import BPFFS, Loader, in_netns
from medseg_xdp.policy_image import compile_policy, with_setting_flags
from medseg_xdp.topology import Namespace

XDP_ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
RECORD_DECISION = abi.const("SETTING_RECORD_DECISION")


@dataclass(frozen=True)
class TraceResult:
    verdict: str
    reason: str
    rule: str
    src_segment: str
    dst_segment: str
    xdp_action: str
    sample: str
    flags: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "rule": self.rule,
            "src_segment": self.src_segment,
            "dst_segment": self.dst_segment,
            "xdp_action": self.xdp_action,
            "sample": self.sample,
            "flags": list(self.flags),
        }


_FLAG_NAMES = {
    abi.const("DECISION_NEW_FLOW"): "new_flow",
    abi.const("DECISION_MIDSTREAM"): "midstream",
    abi.const("DECISION_REVALIDATED"): "revalidated",
    abi.const("DECISION_NO_FLOW_ENTRY"): "no_flow_entry",
}


class Tracer:
    """The real program on private maps, driven by BPF_PROG_TEST_RUN."""

    def __init__(self, config: Config, sizes: TableSizes = TableSizes(), class_of: Mapping[str, str] | None = None,
                 pinned: Mapping[str, str] | None = None) -> None:
        """class_of and pinned: the inventory's classes and pins (MAC -> class, segment), for class-based segments."""
        self.config = config
        self.class_of = class_of
        self.pinned = pinned
        self.pin_root = BPFFS / f"medseg-trace-{os.getpid()}-{id(self):x}"
        self.loader = Loader(config.bridge, pin_root=self.pin_root, sizes=sizes)
        self.namespace = Namespace("trace")
        self.dataplane: Dataplane | None = None
        self.rule_names: dict[int, str] = {}
        self.ifindex: dict[str, int] = {}

    def __enter__(self) -> Self:
        try:
            self.namespace.__enter__()
            with self.namespace.iproute() as ipr:
                # veth, not dummy: some kernels are built without the dummy driver
                for number, port in enumerate(self.config.ports):
                    ipr.link("add", ifname=port, kind="veth", peer=f"msx-peer{number}")
                    index = ipr.link_lookup(ifname=port)[0]
                    ipr.link("set", index=index, state="up")
                    self.ifindex[port] = index
            self.loader.compile()
            self.loader.arm()
            self.dataplane = Dataplane(self.loader.pin_dir)
            self.load_config(self.config)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.dataplane is not None:
            self.dataplane.close()
            self.dataplane = None
        self.loader.close()
        shutil.rmtree(self.pin_root, ignore_errors=True)
        self.namespace.__exit__(exc_type, exc, tb)

    def load_config(self, config: Config, grace_s: float = 0.01) -> int:
        """Apply config as the next policy generation (the live flip)."""
        assert self.dataplane is not None
        self.config = config
        compiled = {}

        def compile_for(gen: int) -> dict[str, dict[bytes, bytes]]:
            policy = compile_policy(config, gen, self.ifindex.__getitem__, self.class_of, pinned=self.pinned)
            compiled["names"] = policy.rule_names
            return with_setting_flags(policy.contents, RECORD_DECISION)

        gen = self.dataplane.apply(compile_for, grace_s=grace_s)
        self.rule_names = compiled["names"]
        return gen

    @contextmanager
    def deployed(self) -> Iterator[None]:
        """The program as a live bridge runs it, without decision records (for benchmarks); run_frame needs them."""
        assert self.dataplane is not None
        self.dataplane.set_setting_flag(RECORD_DECISION, False)
        try:
            yield
        finally:
            self.dataplane.set_setting_flag(RECORD_DECISION, True)

    def run_frame(self, frame: bytes, ingress: str | None = None, repeat: int = 1) -> tuple[abi.Decision, int, int]:  # type: ignore[valid-type]
        """One BPF_PROG_TEST_RUN: (decision record, XDP action, ns per run)."""
        assert self.dataplane is not None
        ifindex = self.ifindex[ingress] if ingress else 0
        before = {cpu: d.seq for cpu, d in enumerate(self.dataplane.last_decisions())}
        with in_netns(self.namespace.name):
            action, duration = bpfsys.prog_test_run(self.loader.prog_fd, frame, ifindex, repeat=repeat)
        for cpu, decision in enumerate(self.dataplane.last_decisions()):
            if decision.seq != before.get(cpu):
                return decision, action, duration
        raise RuntimeError("the program ran but recorded no decision (inside Tracer.deployed()?)")

    def trace(self, frame: bytes, ingress: str | None = None) -> TraceResult:
        decision, action, _ = self.run_frame(frame, ingress)
        return self.explain(decision, action)

    def explain(self, decision: abi.Decision, action: int) -> TraceResult:  # type: ignore[valid-type]
        rule = self.rule_names.get(decision.rule_id, "-") if decision.rule_id else "-"
        known_segments = decision.flags & abi.const("DECISION_SEGMENTS")
        return TraceResult(
            verdict=abi.Verdict(decision.verdict).name,
            reason=abi.Reason(decision.reason).name,
            rule=rule,
            src_segment=self.config.segment_name(decision.src_segment) if known_segments else "-",
            dst_segment=self.config.segment_name(decision.dst_segment) if known_segments else "-",
            xdp_action=XDP_ACTIONS.get(action, str(action)),
            sample=abi.SampleKind(decision.sample_kind).name,
            flags=tuple(name for bit, name in _FLAG_NAMES.items() if decision.flags & bit),
        )




def parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "")
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise ValueError(f"not a hex frame: {text[:40]!r}: {exc}") from None

