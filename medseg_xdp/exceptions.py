"""Temporary exceptions to the policy, each with an expiry: they vanish by themselves.

Two kinds, both in the policy's own terms:
- a flow exception allows (from segment, to segment, protocol, ports) until it
  expires; it is compiled as one more rule, named "exception:<id>";
- a device exception moves one device (by MAC) into another segment until it
  expires, like a pin that undoes itself (a pump in for service joins the
  biomed segment for two hours).
The daemon keeps them in its state directory, applies them as a policy
generation, and retires expired ones on its own, counted and audited.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_xdp import abi
from medseg_xdp.config import PROTOCOLS, PSEUDO_SEGMENTS, Config, ConfigError, Rule
from medseg_xdp.statefile import StateFile

STATE_VERSION = 1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class PolicyException:
    id: str
    expires_at: float
    reason: str
    uid: int
    mac: str | None = None  # device exception: this MAC ...
    segment: str | None = None  # ... sits in this segment until expiry
    src: str | None = None  # flow exception: from this segment ...
    dst: str | None = None  # ... to this one
    proto: int | None = None
    ports: tuple[tuple[int, int], ...] = ()

    @property
    def is_device(self) -> bool:
        return self.mac is not None

    def describe(self) -> str:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
        if self.is_device:
            return f"{self.id}: device {self.mac} in segment {self.segment} until {until}"
        proto = next((n for n, v in PROTOCOLS.items() if v == self.proto), str(self.proto))
        ports = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports) or "any port"
        return f"{self.id}: allow {self.src} -> {self.dst} {proto} {ports} until {until}"


def validate(exception: PolicyException, config: Config) -> None:
    """ConfigError unless the exception names what the config has."""
    known = set(config.segments) | set(PSEUDO_SEGMENTS)
    if exception.is_device:
        if not exception.mac or not _MAC.match(exception.mac):
            raise ConfigError(f"exception {exception.id}: {exception.mac!r} is not a MAC address")
        if exception.segment not in known:
            raise ConfigError(f"exception {exception.id}: unknown segment {exception.segment!r}")
        return
    for name in (exception.src, exception.dst):
        if name not in known:
            raise ConfigError(f"exception {exception.id}: unknown segment {name!r}")
    if exception.proto is None:
        raise ConfigError(f"exception {exception.id}: a flow exception names a protocol")


def with_exceptions(config: Config, exceptions: list[PolicyException]) -> Config:
    """The config plus the flow exceptions as rules (first: an exception wins over equal rules that allow too)."""
    rules = tuple(
        Rule(f"exception:{e.id}", e.src, e.dst, abi.Action.allow, e.proto, e.ports)  # type: ignore[arg-type]
        for e in exceptions
        if not e.is_device
    )
    return dataclasses.replace(config, rules=rules + config.rules)


def device_moves(exceptions: list[PolicyException]) -> dict[str, str]:
    return {e.mac: e.segment for e in exceptions if e.is_device and e.mac and e.segment}


class ExceptionStore:
    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.file = StateFile(state_dir / "exceptions.msgpack", STATE_VERSION)
        self.clock = clock
        self.items: list[PolicyException] = []
        self.expired_total = 0

    def load(self) -> str | None:
        body, problem = self.file.read()
        if body is not None:
            self.items = [_from_record(record) for record in body]
        return problem

    def save(self) -> None:
        self.file.write([dataclasses.asdict(e) for e in self.items])

    def add(self, exception: PolicyException) -> None:
        if any(e.id == exception.id for e in self.items):
            raise ConfigError(f"an exception {exception.id!r} exists already")
        self.items.append(exception)

    def remove(self, exception_id: str) -> PolicyException:
        for index, exception in enumerate(self.items):
            if exception.id == exception_id:
                return self.items.pop(index)
        raise ConfigError(f"no exception {exception_id!r}")

    def expire(self) -> list[PolicyException]:
        """Take out the exceptions whose time is up."""
        now = self.clock()
        gone = [e for e in self.items if e.expires_at <= now]
        self.items = [e for e in self.items if e.expires_at > now]
        self.expired_total += len(gone)
        return gone


def _from_record(record: Mapping[str, Any]) -> PolicyException:
    fields = dict(record)
    fields["ports"] = tuple(tuple(pair) for pair in fields.get("ports", ()))
    return PolicyException(**fields)
