"""All parsers, run on one decoded frame; a parser that raises is counted, not fatal."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from medseg_xdp.fingerprint.frame import Frame, Observation, decode

log = logging.getLogger(__name__)

Parser = Callable[[Frame], list[Observation]]
# A kind of frame: ("ip", L4 protocol, whether it carries L4 payload) or ("eth", EtherType, False). A parser
# reads some kinds (a frozenset of them), or every frame (None).
FrameKind = tuple[str, int, bool]
Kinds = frozenset[FrameKind] | None


def frame_kind(frame: Frame) -> FrameKind:
    return ("ip", frame.proto, bool(frame.payload)) if frame.ip_version else ("eth", frame.ethertype, False)


class ParserRegistry:
    """Runs on each frame the parsers of its kind: a TCP frame never reaches the UDP parsers, nor a frame
    without payload the parsers of payloads."""

    def __init__(self, parsers: Sequence[tuple[str, Parser, Kinds]]) -> None:
        self.parsers = list(parsers)
        self.failures: Counter[str] = Counter()
        # Filled as kinds appear; bounded by the kinds there are (2 × 256 for IP, 65,536 EtherTypes).
        self._by_kind: dict[FrameKind, list[tuple[str, Parser]]] = {}

    def parsers_for(self, kind: FrameKind) -> list[tuple[str, Parser]]:
        chosen = self._by_kind.get(kind)
        if chosen is None:
            chosen = self._by_kind[kind] = [(name, parser) for name, parser, wants in self.parsers if wants is None or kind in wants]
        return chosen

    def observe(self, data: bytes) -> tuple[Frame, list[Observation]]:
        frame = decode(data)
        observations: list[Observation] = []
        for name, parser in self.parsers_for(frame_kind(frame)):
            try:
                observations.extend(parser(frame))
            except Exception:  # hostile bytes must never stop the manager
                self.failures[name] += 1
                log.debug("parser %s failed on a %d-byte frame", name, len(data), exc_info=True)
        return frame, observations


def default_registry() -> ParserRegistry:
    """Every parser the project ships, in a stable order."""
    from medseg_xdp.fingerprint import parsers

    return ParserRegistry(parsers.ALL)
