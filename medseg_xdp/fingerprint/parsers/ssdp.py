"""SSDP (UPnP discovery) headers.

Devices with a UPnP stack (printers, displays, media gateways, some imaging workstations) announce
themselves with NOTIFY and answer M-SEARCH; control points (PCs, phones, browsers) send M-SEARCH.
Layout: HTTP over UDP 1900 (UPnP Device Architecture 2.0, section 1): a request line
("NOTIFY * HTTP/1.1", "M-SEARCH * HTTP/1.1") or a status line for a search response, then
"NAME: value" header lines.

Signals, on SRC (the sender is the one described):
  ssdp.server       SERVER header ("OS/version UPnP/2.0 product/version"), in NOTIFY and responses
  ssdp.user_agent   USER-AGENT header, usually in M-SEARCH
  ssdp.st           ST (search target) of an M-SEARCH or its response
  ssdp.nt           NT (notification type) of a NOTIFY
  ssdp.location     the host of the LOCATION URL only: paths and queries can carry device-unique
                    tokens and are not needed to classify
"""

from __future__ import annotations

from urllib.parse import urlsplit

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import clean, emit
from medseg_xdp.fingerprint.parsers.http import headers

SSDP_PORT = 1900
START_LINES = (b"NOTIFY ", b"M-SEARCH ", b"HTTP/1.")
FIELDS = ((b"server", "ssdp.server"), (b"user-agent", "ssdp.user_agent"), (b"st", "ssdp.st"), (b"nt", "ssdp.nt"))


def parse(frame: Frame) -> list[Observation]:
    data = frame.payload
    if frame.proto != UDP or SSDP_PORT not in (frame.sport, frame.dport) or not data.startswith(START_LINES):
        return []
    fields = headers(data)
    out: list[Observation] = []
    for name, signal in FIELDS:
        emit(out, Side.SRC, signal, fields.get(name))
    location = fields.get(b"location")
    if location:
        emit(out, Side.SRC, "ssdp.location", _url_host(clean(location)))
    return out


def _url_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None  # a malformed URL (e.g. a bad IPv6 literal)
