"""Real traffic between namespaces: TCP/UDP servers and clients, ping.

Small Python programs run inside the namespaces with the same interpreter,
so tests, demo and benchmarks need no extra tools.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time

from medseg_xdp.topology import Namespace

_SERVER = r"""
import socket, sys, threading
proto, host, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
def tcp(port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(64)
    while True:
        c, _ = s.accept()
        data = c.recv(4096)
        c.sendall(data); c.close()
def udp(port):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((host, port))
    while True:
        data, peer = s.recvfrom(4096); s.sendto(data, peer)
for port in ports:
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

_CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    if proto == "tcp":
        s.connect((host, port)); s.sendall(b"medseg"); ok = s.recv(64) == b"medseg"
    else:
        s.sendto(b"medseg", (host, port)); ok = s.recvfrom(64)[0] == b"medseg"
except OSError:
    ok = False
print("ok" if ok else "fail")
"""


def start_echo_server(ns: Namespace, proto: str, host: str, ports: list[int]) -> subprocess.Popen[str]:
    """An echo server on each port; returns once it listens."""
    process = ns.popen([sys.executable, "-c", _SERVER, proto, host, *map(str, ports)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"echo server in {ns.name} did not start")
    return process


def exchange(ns: Namespace, proto: str, host: str, port: int, timeout: float = 2.0) -> bool:
    """True when one request/echo round trip completes."""
    result = ns.run([sys.executable, "-c", _CLIENT, proto, host, str(port), str(timeout)], check=False, timeout=timeout + 10)
    return result.stdout.strip() == "ok"


def ping(ns: Namespace, host: str, count: int = 1, timeout: float = 2.0) -> bool:
    result = ns.run(["ping", "-n", "-c", str(count), "-W", str(timeout), "-i", "0.2", host], check=False, timeout=count * timeout + 10)
    return result.returncode == 0


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def dicom_associate_request(calling: str, called: str, sop_class_uid: str) -> bytes:
    """The A-ASSOCIATE-RQ PDU a DICOM SCU opens with (PS3.8 9.3.2), one presentation context."""

    def item(item_type: int, data: bytes) -> bytes:
        return struct.pack("!BBH", item_type, 0, len(data)) + data

    context = bytes([1, 0, 0, 0]) + item(0x30, sop_class_uid.encode()) + item(0x40, b"1.2.840.10008.1.2")
    user = item(0x51, struct.pack("!I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7433") + item(0x55, b"MEDSEG_TEST")
    body = (
        struct.pack("!HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + item(0x20, context)
        + item(0x50, user)
    )
    return struct.pack("!BBI", 1, 0, len(body)) + body


_SEND = r"""
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.create_connection((host, port), timeout=float(sys.argv[4]))
s.sendall(payload)
s.recv(65536)
"""


def send_payload(ns: Namespace, host: str, port: int, payload: bytes, timeout: float = 2.0) -> bool:
    """Connect, send payload, read the answer: True when the server answered."""
    result = ns.run([sys.executable, "-c", _SEND, host, str(port), payload.hex(), str(timeout)], check=False, timeout=timeout + 10)
    return result.returncode == 0
