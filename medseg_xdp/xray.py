"""The X-ray: sampled frames -> fingerprint parsers -> classified inventory.

One path for live samples (from the ring buffer) and for captures
(`medseg-xdp classify --pcap`), which go through the reference model of the
XDP program first, so that offline the same packets are sampled, cut to the
same snaplen, as on a running bridge.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from medseg_xdp import abi
from medseg_xdp.capture import read_capture
from medseg_xdp.classify import Classifier, load_catalog
from medseg_xdp.config import Config
from medseg_xdp.fingerprint.frame import Frame
from medseg_xdp.fingerprint.registry import ParserRegistry, default_registry
from medseg_xdp.inventory import MAX_DEVICES, ClassChange, Inventory
from medseg_xdp.policy_image import compile_policy
from medseg_xdp.reference import ReferenceDataplane

FIRST_PACKETS = abi.SampleKind.first_packets


class FlowLearner(Protocol):
    """What the baseline offers the X-ray (baseline.Baseline)."""

    def observe(self, frame: Frame, inventory: Inventory, now: float, kind: int = FIRST_PACKETS) -> bool: ...


@dataclass
class Xray:
    registry: ParserRegistry
    inventory: Inventory
    learner: FlowLearner | None = None
    samples: int = 0
    changes: list[ClassChange] = field(default_factory=list)

    @classmethod
    def default(cls, learner: FlowLearner | None = None, on_discovered: Callable[[str], None] | None = None, max_devices: int = MAX_DEVICES) -> Xray:
        return cls(default_registry(), Inventory(Classifier(load_catalog()), on_discovered=on_discovered, max_devices=max_devices), learner)

    def ingest(self, sample: bytes, now: float, kind: int = FIRST_PACKETS) -> list[ClassChange]:
        """One sample (the first bytes of a frame) into the inventory and the baseline; kind: its SampleKind."""
        return self.observe(sample, now, kind)[1]

    def observe(self, sample: bytes, now: float, kind: int = FIRST_PACKETS) -> tuple[Frame, list[ClassChange]]:
        """ingest(), also giving back the decoded frame (for a caller that reports on it)."""
        self.samples += 1
        frame, observations = self.registry.observe(sample)
        changes = self.inventory.observe(frame, observations, now)
        if self.learner is not None:
            self.learner.observe(frame, self.inventory, now, kind)
        self.changes.extend(changes)
        return frame, changes


def sampling_model(config: Config) -> ReferenceDataplane:
    """The reference program with config's policy and sampling settings (no bridge ports offline)."""
    contents = compile_policy(config, 1, lambda port: 0).contents
    contents["active_gen"] = {bytes(ctypes.c_uint32(0)): bytes(ctypes.c_uint32(1))}
    return ReferenceDataplane(contents)


def xray_capture(path: Path, config: Config, xray: Xray) -> int:
    """Run a capture through the sampling rules and the X-ray; returns the packets read."""
    model = sampling_model(config)
    packets = read_capture(path)
    for timestamp, frame in packets:
        outcome = model.run(frame, 0, now_ns=int(timestamp * 1e9))
        if outcome.sample is not None:
            xray.ingest(outcome.sample, timestamp, outcome.decision.sample_kind)
    return len(packets)
