"""HTTP/1.x client and server software from clear-text headers.

Many medical devices and their gateways speak plain HTTP (device web UIs, IPP printers on 631,
Orthanc on 8042, vendor REST APIs), and their User-Agent or Server header often names the product
and firmware. Layout: RFC 9112 (request line or status line, then "Name: value" header lines ending
in CRLF, then an empty line). Any TCP port is accepted: the request line itself identifies HTTP.

Request (payload starts with "GET ", "POST ", "PUT ", "HEAD ", "OPTIONS ", "DELETE " or "PATCH "):
  ("http.role", "client") on SRC, ("http.role", "server") on DST
  ("http.user_agent", ...) on SRC
  ("http.host", ...) on SRC: the host the client asks for, a trait of the client software like the
  TLS SNI (the port is dropped)
Response (payload starts with "HTTP/1."): ("http.role", "server") and ("http.server", ...) on SRC.

Only header lines that end inside the sample are read: a line cut by the snaplen would give a
partial value that differs from the real one. Bodies are never looked at.
"""

from __future__ import annotations

from medseg_xdp.fingerprint.frame import TCP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ")
RESPONSE = b"HTTP/1."
MAX_HEADERS = 64


def headers(data: bytes) -> dict[bytes, bytes]:
    """Complete header lines after the first line, names lower-cased; the first occurrence of a name wins."""
    end = data.find(b"\r\n\r\n")
    block = data if end < 0 else data[: end + 2]
    lines = block.split(b"\n")
    if end < 0:
        lines = lines[:-1]  # the last piece has no line end: cut by the snaplen
    found: dict[bytes, bytes] = {}
    for line in lines[1 : MAX_HEADERS + 1]:
        name, colon, value = line.partition(b":")
        if colon and name and b" " not in name:
            found.setdefault(name.strip().lower(), value.strip())
    return found


def parse(frame: Frame) -> list[Observation]:
    data = frame.payload
    if frame.proto != TCP or len(data) < 8:
        return []
    if data.startswith(RESPONSE):
        out = [Observation(Side.SRC, "http.role", "server")]
        emit(out, Side.SRC, "http.server", headers(data).get(b"server"))
        return out
    if not data.startswith(METHODS):
        return []
    fields = headers(data)
    out = [Observation(Side.SRC, "http.role", "client"), Observation(Side.DST, "http.role", "server")]
    emit(out, Side.SRC, "http.user_agent", fields.get(b"user-agent"))
    emit(out, Side.SRC, "http.host", _host(fields.get(b"host")))
    return out


def _host(value: bytes | None) -> bytes | None:
    if not value:
        return value
    if value.startswith(b"["):
        return value.split(b"]", 1)[0] + b"]"  # IPv6 literal with a port after the bracket
    return value.rsplit(b":", 1)[0] if value.count(b":") == 1 else value
