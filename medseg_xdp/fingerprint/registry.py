"""All parsers, run on one decoded frame; a parser that raises is counted, not fatal."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from medseg_xdp.fingerprint.frame import Frame, Observation, decode

log = logging.getLogger(__name__)

Parser = Callable[[Frame], list[Observation]]


class ParserRegistry:
    """Runs every parser on each frame. Parsers decide for themselves whether a frame is theirs."""

    def __init__(self, parsers: Sequence[tuple[str, Parser]]) -> None:
        self.parsers = list(parsers)
        self.failures: Counter[str] = Counter()

    def observe(self, data: bytes) -> tuple[Frame, list[Observation]]:
        frame = decode(data)
        observations: list[Observation] = []
        for name, parser in self.parsers:
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
