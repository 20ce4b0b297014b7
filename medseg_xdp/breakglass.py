"""Break-glass across reboots.

The flag lives in the pinned settings map, and bpffs lives in memory: a
reboot during an emergency would quietly end break-glass and put every
enforcing segment back in force. So `medseg-xdp break-glass` also records
the state in state_dir, and a daemon that starts on fresh maps turns
break-glass on again when the record says it was on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medseg_xdp.audit import AuditEntry, AuditLog
from medseg_xdp.statefile import StateFile

FILE_NAME = "break_glass.msgpack"
VERSION = 1


@dataclass(frozen=True)
class BreakGlassState:
    on: bool
    since: float
    uid: int
    reason: str


class BreakGlassRecord:
    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.file = StateFile(state_dir / FILE_NAME, VERSION)
        self.clock = clock

    def record(self, on: bool, uid: int, reason: str) -> None:
        self.file.write({"on": on, "since": self.clock(), "uid": uid, "reason": reason})

    def read(self) -> tuple[BreakGlassState | None, str | None]:
        """The recorded state (None: never recorded), and a problem reading it (the file is kept aside)."""
        body, problem = self.file.read()
        if not isinstance(body, dict):
            return None, problem
        try:
            return BreakGlassState(bool(body["on"]), float(body["since"]), int(body["uid"]), str(body["reason"])), problem
        except (KeyError, TypeError, ValueError):
            return None, self.file.keep_aside("not a break-glass record")


class BreakGlassFlag(Protocol):
    """The pinned flag (medseg_xdp.dataplane.Dataplane)."""

    def break_glass(self) -> bool: ...
    def set_break_glass(self, on: bool, grace_s: float = ...) -> None: ...


def switch(flag: BreakGlassFlag, on: bool, state_dir: Path, audit: AuditLog, bridge: str, uid: int, reason: str,
           clock: Callable[[], float] = time.time) -> AuditEntry:
    """Turn break-glass on or off: recorded in state_dir first (a reboot loses the maps, not the record), then
    the flag, then the audit entry."""
    was = flag.break_glass()
    BreakGlassRecord(state_dir, clock).record(on, uid, reason)
    flag.set_break_glass(on)
    return audit.append(f"break-glass {'on' if on else 'off'}", uid, reason, {"bridge": bridge, "was": "on" if was else "off"})


def restore(flag: BreakGlassFlag, state_dir: Path, audit: AuditLog, bridge: str, uid: int,
            clock: Callable[[], float] = time.time) -> BreakGlassState | None:
    """On fresh maps (a reboot): turn break-glass on again when state_dir's record says it was on, and audit it.

    Returns the record when it did, for the caller to say so loudly (describe())."""
    state, _problem = BreakGlassRecord(state_dir, clock).read()  # a problem is logged by the read
    if state is None or not state.on or flag.break_glass():
        return None
    flag.set_break_glass(True)
    audit.append("break-glass restored", uid, "on when the maps were lost (a reboot)",
                 {"bridge": bridge, "since": state.since, "by_uid": state.uid, "reason": state.reason})
    return state


def describe(state: BreakGlassState) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.since))
    return (f"break-glass was on when the maps were lost (since {since}, by uid {state.uid}: {state.reason}): "
            "it is on again; end it with `medseg-xdp break-glass off`")
