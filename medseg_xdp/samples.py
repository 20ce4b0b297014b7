"""Samples from the XDP program's ring buffer: a header and the first bytes of a frame.

The program writes a struct sample_header followed by captured_len bytes of
the frame (see bpf/medseg_abi.h). Samples are parsed in memory by the
fingerprinting code and never stored raw: they can carry patient data.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

from medseg_xdp import abi

HEADER_SIZE = ctypes.sizeof(abi.SampleHeader)


# IntEnum(value) is slow (microseconds); the daemon decodes every sample.
_KINDS = {int(k): k for k in abi.SampleKind}
_VERDICTS = {int(v): v for v in abi.Verdict}
_REASONS = {int(r): r for r in abi.Reason}


@dataclass(frozen=True, slots=True)
class Sample:
    kind: abi.SampleKind
    verdict: abi.Verdict
    reason: abi.Reason
    rule_id: int
    src_segment: int
    dst_segment: int
    ifindex: int
    packet_len: int
    timestamp_ns: int
    generation: int
    data: bytes  # the first captured_len bytes of the frame

    @classmethod
    def decode(cls, record: bytes) -> Sample:
        if len(record) < HEADER_SIZE:
            raise ValueError(f"sample of {len(record)} bytes is shorter than its {HEADER_SIZE}-byte header")
        header = abi.SampleHeader.from_buffer_copy(record)
        captured = min(header.captured_len, len(record) - HEADER_SIZE)
        try:
            kind, verdict, reason = _KINDS[header.kind], _VERDICTS[header.verdict], _REASONS[header.reason]
        except KeyError as exc:
            raise ValueError(f"sample header with an unknown kind, verdict or reason: {exc}") from None
        return cls(
            kind=kind,
            verdict=verdict,
            reason=reason,
            rule_id=header.rule_id,
            src_segment=header.src_segment,
            dst_segment=header.dst_segment,
            ifindex=header.ifindex,
            packet_len=header.packet_len,
            timestamp_ns=header.timestamp_ns,
            generation=header.gen,
            data=record[HEADER_SIZE : HEADER_SIZE + captured],
        )


class SampleReader:
    """Consumes the ring buffer of a compiled program (Loader.bpf) through BCC."""

    def __init__(self, bpf: object, on_sample: Callable[[Sample], None]) -> None:
        self._bpf = bpf
        self._on_sample = on_sample
        self.malformed = 0

        def callback(_ctx: object, data: int, size: int) -> int:
            try:
                self._on_sample(Sample.decode(ctypes.string_at(data, size)))
            except ValueError:
                self.malformed += 1  # counted, never raised into BCC's C callback
            return 0

        self._callback = callback  # BCC keeps only a weak reference
        bpf[b"samples"].open_ring_buffer(callback)  # type: ignore[index]

    def poll(self, timeout_ms: int = 0) -> None:
        """Deliver every sample waiting now (or within timeout_ms) to on_sample."""
        self._bpf.ring_buffer_poll(timeout_ms)  # type: ignore[attr-defined]
