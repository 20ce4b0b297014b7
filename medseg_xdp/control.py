"""The control socket between the CLI and the daemon: msgpack over a root-only unix socket.

Each message is a 4-byte big-endian length and a msgpack map. A request is
{"op": name, ...arguments}; a reply is {"ok": true, "result": ...} or
{"ok": false, "error": text}. The server checks the peer's credentials
(SO_PEERCRED): only root may talk to it, and the caller's uid is handed to
the handler (the audit trail records who did what).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024
_LENGTH = struct.Struct("!I")

Handler = Callable[[dict[str, Any], int], Any]  # (request, caller uid) -> result


class ControlError(RuntimeError):
    """The daemon could not be reached, or answered with an error."""


def _send(sock: socket.socket, message: Any) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _receive(sock: socket.socket) -> Any:
    header = _read_exactly(sock, _LENGTH.size)
    (length,) = _LENGTH.unpack(header)
    if length > MAX_MESSAGE:
        raise ControlError(f"message of {length} bytes is over the {MAX_MESSAGE}-byte limit")
    return msgpack.unpackb(_read_exactly(sock, length), raw=False, strict_map_key=False)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(count)
        if not chunk:
            raise ControlError("connection closed mid-message")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def peer_uid(sock: socket.socket) -> int:
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


class ControlServer:
    """Non-blocking: the daemon's loop calls serve(timeout) between sample polls."""

    def __init__(self, path: Path, handler: Handler, allowed_uids: frozenset[int] = frozenset({0})) -> None:
        self.path = path
        self.handler = handler
        self.allowed_uids = allowed_uids
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.unlink(missing_ok=True)  # a stale socket of a killed daemon
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)

    def serve(self, timeout: float) -> int:
        """Answer the requests waiting now (or within timeout); returns how many."""
        answered = 0
        for _ in self.selector.select(timeout):
            try:
                connection, _ = self.sock.accept()
            except BlockingIOError:
                continue
            with connection:
                connection.settimeout(5.0)
                self._answer(connection)
                answered += 1
        return answered

    def _answer(self, connection: socket.socket) -> None:
        uid = peer_uid(connection)
        try:
            if uid not in self.allowed_uids:  # before reading anything it sends
                _send(connection, {"ok": False, "error": f"uid {uid} may not control medseg-xdp (root only)"})
                return
            request = _receive(connection)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ControlError("a request is a map with an 'op'")
            _send(connection, {"ok": True, "result": self.handler(request, uid)})
        except Exception as exc:  # a bad request, or a bug in a handler, must not stop enforcement's manager
            if not isinstance(exc, (ControlError, OSError, ValueError, msgpack.UnpackException)):
                log.exception("control request failed")
            try:
                _send(connection, {"ok": False, "error": str(exc)})
            except OSError:
                pass  # the client went away

    def close(self) -> None:
        self.selector.close()
        self.sock.close()
        self.path.unlink(missing_ok=True)


def request(socket_path: Path, op: str, /, timeout: float = 60.0, **arguments: Any) -> Any:
    """One request to the daemon; ControlError when it is not there or says no."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise ControlError(f"no medseg-xdp daemon at {socket_path} ({exc.strerror})") from exc
    with sock:
        try:
            _send(sock, {"op": op, **arguments})
            reply = _receive(sock)
        except OSError as exc:
            raise ControlError(f"the daemon at {socket_path} hung up: {exc}") from exc
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply.get("result")
