"""Versioned msgpack state files, written atomically and read without losing anything.

Write: temp file in the same directory, fsync, rename, fsync the directory,
mode 0600 (state can name devices and hosts). Read: a file that cannot be
decoded, or that another version wrote, is moved aside (name.unreadable-TIME)
and reported; the caller starts empty, and nothing is silently discarded.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)


class StateFile:
    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    def write(self, body: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(msgpack.packb({"version": self.version, "body": body}, use_bin_type=True))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def read(self) -> tuple[Any, str | None]:
        """(body or None, problem report or None)."""
        if not self.path.exists():
            return None, None
        try:
            document = msgpack.unpackb(self.path.read_bytes(), raw=False, strict_map_key=False)
            version = document.get("version") if isinstance(document, dict) else None
            if version != self.version:
                raise ValueError(f"state version {version!r}, this medseg-xdp reads version {self.version}")
            return document["body"], None
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            return None, self.keep_aside(str(exc))

    def keep_aside(self, reason: str) -> str:
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        self.path.rename(aside)
        problem = f"{self.path}: cannot read ({reason}); kept aside as {aside.name}, starting empty"
        log.error("%s", problem)
        return problem
