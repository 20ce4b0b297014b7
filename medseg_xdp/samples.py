"""Samples from the XDP program's ring buffer: a header and the first bytes of a frame.

The program writes a struct sample_header followed by captured_len bytes of
the frame (see bpf/medseg_abi.h). Samples are parsed in memory by the
fingerprinting code and never stored raw: they can carry patient data.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import NamedTuple

from medseg_xdp import abi

HEADER_SIZE = ctypes.sizeof(abi.SampleHeader)
# The header as one struct.unpack_from, built from the ctypes layout (abi.py, itself from the C header):
# a ctypes copy and attribute reads cost microseconds per sample, and the daemon decodes every one.
_CODES = {ctypes.c_uint8: "B", ctypes.c_uint16: "H", ctypes.c_uint32: "I", ctypes.c_uint64: "Q"}
_AT = {name: index for index, (name, _) in enumerate(abi.SampleHeader._fields_)}
_HEADER = struct.Struct("<" + "".join(_CODES[ctype] for _, ctype in abi.SampleHeader._fields_))
assert _HEADER.size == HEADER_SIZE, "sample_header has padding the format does not model"


# IntEnum(value) is slow (microseconds); the daemon decodes every sample.
_KINDS = {int(k): k for k in abi.SampleKind}
_VERDICTS = {int(v): v for v in abi.Verdict}
_REASONS = {int(r): r for r in abi.Reason}


class Sample(NamedTuple):
    """A decoded ring record (a NamedTuple: immutable, and built in a fraction of a frozen dataclass's time)."""

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
        h = _HEADER.unpack_from(record)
        try:
            kind, verdict, reason = _KINDS[h[_AT["kind"]]], _VERDICTS[h[_AT["verdict"]]], _REASONS[h[_AT["reason"]]]
        except KeyError as exc:
            raise ValueError(f"sample header with an unknown kind, verdict or reason: {exc}") from None
        captured = min(h[_AT["captured_len"]], len(record) - HEADER_SIZE)
        return cls(
            kind,
            verdict,
            reason,
            h[_AT["rule_id"]],
            h[_AT["src_segment"]],
            h[_AT["dst_segment"]],
            h[_AT["ifindex"]],
            h[_AT["packet_len"]],
            h[_AT["timestamp_ns"]],
            h[_AT["gen"]],
            record[HEADER_SIZE : HEADER_SIZE + captured],
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
