"""Security events for a SIEM: RFC 5424 syslog and JSON lines.

What a security operations centre wants from a segmentation gateway: drops
(and audits: packets passed but recorded, would-drops in monitor mode or
audit rules), devices seen for the first time, devices
that change class, break-glass, and every audited change (policy applies,
reverts, pins, exceptions, asset imports). `[events]` in the config turns on
either destination or both.

Nothing here carries patient data: an event holds addresses, ports, segment
and rule names, device classes and vendors, never a payload, and no
hostname (hostnames can carry patient or staff names).

Each destination has a bounded queue and a thread of its own, so a slow or
unreachable SIEM never stalls the daemon's sample loop. A failed send is
retried, in order, until it goes through; while the destination is down the
queue fills, and events beyond it are counted (`dropped["queue_full"]`), not
silently lost. Drop events are rate limited per minute on top of the kernel's
own limit; the suppressed ones are counted and the next event that passes
says how many it stands for.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from medseg_xdp.config import EventSettings

log = logging.getLogger(__name__)

APP_NAME = "medseg-xdp"
# RFC 5424 SD-IDs of our own need an IANA enterprise number; 32473 is the one
# RFC 5612 reserves for documentation and examples, which is what we are until registered.
SD_ID = "medseg@32473"
MAX_VALUE = 256  # characters per field: one event stays well inside a 2048-byte UDP datagram
MAX_MESSAGE = 1024
RETRY_S = (0.1, 0.5, 2.0, 5.0)  # backoff between attempts at one event; the last repeats


class Severity(IntEnum):
    """RFC 5424 section 6.2.1."""

    emergency = 0
    alert = 1
    critical = 2
    error = 3
    warning = 4
    notice = 5
    informational = 6
    debug = 7


@dataclass(frozen=True)
class Event:
    time: float
    kind: str  # the MSGID: drop, audit, device-new, class-change, break-glass, policy-apply, ...
    severity: Severity
    message: str
    fields: dict[str, str | int | float] = field(default_factory=dict)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(text: str, limit: int) -> str:
    """PRINTUSASCII without spaces, or the NILVALUE."""
    token = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


def _timestamp(when: float) -> str:
    """RFC 3339 in UTC with microseconds, as RFC 5424 section 6.2.3 allows."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1e6):06d}Z"


def _sd_name(key: str) -> str:
    """An SD-NAME: up to 32 PRINTUSASCII characters except '=', ']', '"' and space."""
    return "".join(c for c in key if 33 <= ord(c) <= 126 and c not in '=]"')[:32] or "_"


def rfc5424(event: Event, facility: int, hostname: str, procid: int) -> bytes:
    """One syslog message (RFC 5424): the fields as structured data, the message after a BOM."""
    stamp = _timestamp(event.time)
    params = " ".join(f'{_sd_name(key)}="{_sd_escape(_clip(str(value), MAX_VALUE))}"' for key, value in event.fields.items())
    structured = f"[{SD_ID}{' ' + params if params else ''}]"
    header = f"<{facility * 8 + event.severity}>1 {stamp} {_header_token(hostname, 255)} {APP_NAME} {procid} {_header_token(event.kind, 32)}"
    return f"{header} {structured} ".encode() + b"\xef\xbb\xbf" + _clip(event.message, MAX_MESSAGE).encode()


def json_line(event: Event, hostname: str) -> bytes:
    stamp = _timestamp(event.time)
    record: dict[str, str | int | float] = {"time": stamp, "host": hostname, "app": APP_NAME, "kind": event.kind, "severity": event.severity.name, "message": _clip(event.message, MAX_MESSAGE)}
    record.update({key: _clip(value, MAX_VALUE) if isinstance(value, str) else value for key, value in event.fields.items()})
    return (json.dumps(record, sort_keys=False) + "\n").encode()


class Destination(Protocol):
    name: str

    def send(self, event: Event) -> None:
        """Deliver one event or raise OSError; called from the destination's own thread."""

    def close(self) -> None: ...


class SyslogDestination:
    """RFC 5424 over UDP (RFC 5426), TCP with octet counting (RFC 6587), or a local datagram socket.

    For TLS (RFC 5425) and a disk-backed queue, send to the host's own rsyslog
    (unix:/dev/log or udp to loopback) and let it forward: that is what it is good at.
    """

    def __init__(self, url: str, facility: int, hostname: str) -> None:
        self.name = "syslog"
        self.url = url
        self.facility = facility
        self.hostname = hostname
        self._sock: socket.socket | None = None
        scheme, _, rest = url.partition(":")
        self.scheme = scheme
        if scheme == "unix":
            self.address: str | tuple[str, int] = rest
        else:
            host, _, port = rest.removeprefix("//").rpartition(":")
            self.address = (host.strip("[]"), int(port))

    def _connect(self) -> socket.socket:
        if self.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.connect(self.address)
            return sock
        assert isinstance(self.address, tuple)
        kind = socket.SOCK_STREAM if self.scheme == "tcp" else socket.SOCK_DGRAM
        family, _, _, _, resolved = socket.getaddrinfo(*self.address, type=kind)[0]
        sock = socket.socket(family, kind)
        sock.settimeout(5.0)
        try:
            sock.connect(resolved)
        except OSError:
            sock.close()
            raise
        return sock

    def send(self, event: Event) -> None:
        message = rfc5424(event, self.facility, self.hostname, os.getpid())
        if self.scheme == "tcp":
            message = f"{len(message)} ".encode() + message
        try:
            if self._sock is None:
                self._sock = self._connect()
            if self.scheme == "tcp":
                self._sock.sendall(message)
            else:
                self._sock.send(message)
        except OSError:
            self.close()  # reconnect on the next attempt
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class JsonLinesDestination:
    """One JSON object per line, appended; follows the file when logrotate moves it away."""

    def __init__(self, path: Path, hostname: str) -> None:
        self.name = "json_lines"
        self.path = path
        self.hostname = hostname
        self._fd: int | None = None

    def send(self, event: Event) -> None:
        if self._fd is not None:
            try:
                moved = os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
            except FileNotFoundError:
                moved = True
            if moved:
                self.close()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.write(self._fd, json_line(event, self.hostname))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Outbox:
    """A destination's queue and the thread that empties it, in order, retrying failures."""

    def __init__(self, destination: Destination, capacity: int, counters: EventCounters) -> None:
        self.destination = destination
        self.counters = counters
        self.queue: queue.Queue[Event | None] = queue.Queue(capacity)
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"events-{destination.name}", daemon=True)
        self.thread.start()

    def put(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.counters.dropped[self.destination.name, "queue_full"] += 1

    def _run(self) -> None:
        while (event := self.queue.get()) is not None:
            attempt = 0
            while True:
                try:
                    self.destination.send(event)
                    self.counters.sent[self.destination.name] += 1
                    break
                except Exception as exc:  # OSError mostly; anything else must not end the thread unseen
                    self.counters.failures[self.destination.name] += 1
                    if attempt == 0:
                        log.warning("events: %s cannot take events (%s); retrying, queued events wait", self.destination.name, exc)
                    if self._closing.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)]):
                        self._count_unsent(1)
                        return
                    attempt += 1
        self.destination.close()

    def _count_unsent(self, in_hand: int) -> None:
        unsent = in_hand
        while True:
            try:
                unsent += self.queue.get_nowait() is not None
            except queue.Empty:
                break
        self.counters.dropped[self.destination.name, "unsent_at_exit"] += unsent

    def close(self, timeout: float) -> None:
        """Send what is queued for up to timeout seconds; what is left is counted as unsent."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self.thread.join(timeout)
        if self.thread.is_alive():
            self._closing.set()
            self.thread.join(1.0)
        if self.thread.is_alive():  # stuck in a send: what it holds and what waits were not delivered
            self._count_unsent(1)
        self.destination.close()


@dataclass
class EventCounters:
    sent: Counter[str] = field(default_factory=Counter)  # by destination
    failures: Counter[str] = field(default_factory=Counter)  # failed attempts (each is retried)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (destination, reason)
    suppressed: Counter[str] = field(default_factory=Counter)  # by kind, over the rate limit


class RateLimit:
    """A token bucket: rate events per minute, bursts of up to rate."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.tokens = float(per_minute)
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.per_minute), self.tokens + (now - self.last) * self.per_minute / 60.0)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


RATE_LIMITED_KINDS = ("drop", "audit")


class EventExporter:
    """Fans events out to the configured destinations without ever blocking the caller."""

    def __init__(self, destinations: Iterable[Destination], drop_events_per_minute: int, queue_capacity: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.counters = EventCounters()
        self.clock = clock
        self._outboxes = [_Outbox(d, queue_capacity, self.counters) for d in destinations]
        self.destinations = [outbox.destination.name for outbox in self._outboxes]  # also after close()
        self._limits = {kind: RateLimit(drop_events_per_minute, clock) for kind in RATE_LIMITED_KINDS}
        self._pending_suppressed: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: EventSettings, clock: Callable[[], float] = time.time, hostname: str | None = None) -> EventExporter:
        name = hostname or socket.gethostname()
        destinations: list[Destination] = []
        if settings.syslog:
            destinations.append(SyslogDestination(settings.syslog, settings.facility, name))
        if settings.json_lines is not None:
            destinations.append(JsonLinesDestination(settings.json_lines, name))
        return cls(destinations, settings.drop_events_per_minute, settings.queue, clock)

    def emit(self, kind: str, severity: Severity, message: str, **fields: str | int | float) -> None:
        if not self._outboxes:
            return
        limit = self._limits.get(kind)
        if limit is not None:
            if not limit.take():
                self.counters.suppressed[kind] += 1
                self._pending_suppressed[kind] += 1
                return
            if self._pending_suppressed[kind]:
                fields["suppressed_before"] = self._pending_suppressed.pop(kind)
        event = Event(self.clock(), kind, severity, message, fields)
        for outbox in self._outboxes:
            outbox.put(event)

    def close(self, timeout: float = 5.0) -> None:
        for outbox in self._outboxes:
            outbox.close(timeout)
        self._outboxes = []
