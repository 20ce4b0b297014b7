"""Shared helpers for parsers: turn untrusted bytes into short, printable observation values.

Every value a parser emits ends up in logs, the UI and the classifier's feature store, so it is
bounded (MAX_VALUE characters) and printable: a hostile device must not be able to inject
terminal escapes, newlines into log lines, or megabytes into the store.
"""

from __future__ import annotations

from medseg_xdp.fingerprint.frame import Observation, Side

MAX_VALUE = 200
REPLACEMENT = "?"


def clean(value: str | bytes | bytearray | memoryview, limit: int = MAX_VALUE) -> str:
    """A printable, stripped string of at most `limit` characters (bytes are decoded as UTF-8)."""
    if not isinstance(value, str):
        value = bytes(value).decode("utf-8", "replace")
    if len(value) > limit * 4:
        value = value[: limit * 4]  # bound the work on huge inputs before the per-character pass
    if not value.isprintable():
        # isprintable() is False for control, format and separator characters other than space
        value = "".join(ch if ch.isprintable() else REPLACEMENT for ch in value)
    return value.strip()[:limit].strip()


def emit(out: list[Observation], side: Side, signal: str, value: str | bytes | None) -> None:
    """Append an observation with a cleaned value; empty values carry no evidence and are dropped."""
    if value is None:
        return
    text = clean(value)
    if text:
        out.append(Observation(side, signal, text))
