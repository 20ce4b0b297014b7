"""The change audit trail: who did what to the policy, when, and why.

Append-only JSON lines in the state directory (audit.log, mode 0600), one
fsync per entry: break-glass, policy applies, pins. The caller is the
effective uid, and the invoking user's uid when run through sudo. With an
event exporter, each entry also goes to the SIEM (medseg_xdp.events).
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg_xdp.events import EventExporter, Severity


@dataclass(frozen=True)
class AuditEntry:
    time: float
    uid: int
    user: str
    action: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))
        extra = f" {json.dumps(self.details, sort_keys=True)}" if self.details else ""
        return f"{stamp} uid={self.uid}({self.user}) {self.action}" + (f" reason={self.reason!r}" if self.reason else "") + extra


def caller_uid() -> int:
    """The human behind the command: sudo's SUDO_UID, else the real uid."""
    sudo = os.environ.get("SUDO_UID", "")
    return int(sudo) if sudo.isdigit() else os.getuid()


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class AuditLog:
    def __init__(self, state_dir: Path, events: EventExporter | None = None) -> None:
        self.path = state_dir / "audit.log"
        self.events = events

    def append(self, action: str, uid: int, reason: str = "", details: dict[str, Any] | None = None, now: float | None = None) -> AuditEntry:
        entry = AuditEntry(time.time() if now is None else now, uid, user_name(uid), action, reason, details or {})
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(asdict(entry), sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.events is not None:
            _export(self.events, entry)
        return entry

    def entries(self, since: float = 0.0) -> Iterator[AuditEntry]:
        """Every entry at or after since; a damaged line is reported as such, not skipped silently."""
        if not self.path.exists():
            return
        with self.path.open() as lines:
            for number, text in enumerate(lines, 1):
                try:
                    entry = AuditEntry(**json.loads(text))
                except (ValueError, TypeError) as exc:
                    yield AuditEntry(0.0, -1, "?", "unreadable-entry", details={"line": number, "error": str(exc)})
                    continue
                if entry.time >= since:
                    yield entry


def _export(events: EventExporter, entry: AuditEntry) -> None:
    """The entry as a SIEM event: scalars as fields, lists as their length, the whole line as message."""
    fields: dict[str, str | int | float] = {"uid": entry.uid, "user": entry.user}
    if entry.reason:
        fields["reason"] = entry.reason
    for key, value in entry.details.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float, list, tuple)):
            fields[key] = json.dumps(value, sort_keys=True)
        elif isinstance(value, (list, tuple)):
            fields[f"{key}_count"] = len(value)
        else:
            fields[key] = value
    if entry.action == "break-glass on":
        severity = Severity.critical
    elif entry.action == "policy revert" or (entry.action == "class change" and entry.details.get("old_class") != "unknown"):
        severity = Severity.warning  # a classified device turning into another class is worth a look
    else:
        severity = Severity.notice
    events.emit(entry.action.replace(" ", "-"), severity, entry.line(), **fields)
