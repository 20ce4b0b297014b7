"""Multicast DNS / DNS-SD announcements and queries.

Printers, label printers, Apple and Android devices, some imaging workstations and newer medical
devices announce their services with mDNS; the TXT records of printers name the exact model.

Layout: DNS messages (RFC 1035 4.1) on UDP 5353 (RFC 6762): 12-byte header (id, flags, four
counts), questions (name, type, class), then answer, authority and additional records (name, type,
class, TTL, rdata). Names may use compression pointers (0b11 + 14-bit offset); the decoder follows at
most MAX_JUMPS of them, only backwards, so a pointer loop cannot hang it. DNS-SD conventions are
RFC 6763 (PTR "_service._proto.local" -> instance, SRV -> host, TXT key=value pairs).

Signals, all on SRC:
  mdns.service    a service type the sender announces ("_ipp._tcp.local"), from PTR records in
                  responses
  mdns.query      a service type the sender asks for, from PTR questions; kept apart from
                  mdns.service because asking for "_ipp._tcp" means being a client of printers
  mdns.instance   the instance label of an announced service ("HP LaserJet 400 M401dne (12AB34)"),
                  which often names the product
  mdns.hostname   host names from A/AAAA records and SRV targets of responses ("NPI12AB34.local")
  mdns.model      TXT "ty", "product" (parentheses stripped) or "md" of an announced service
"""

from __future__ import annotations

import struct

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import clean, emit

MDNS_PORT = 5353
TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_AAAA, TYPE_SRV = 1, 12, 16, 28, 33
SERVICES_META = "_services._dns-sd._udp.local"
MODEL_KEYS = (b"ty", b"product", b"md")
MAX_JUMPS = 16
MAX_LABELS = 64
MAX_RECORDS = 64
MAX_OBSERVATIONS = 32


def read_name(data: bytes, pos: int) -> tuple[str, int] | None:
    """(dotted name, offset after the name in the record) or None if malformed."""
    labels: list[str] = []
    after = -1
    jumps = 0
    while len(labels) < MAX_LABELS:
        if pos >= len(data):
            return None
        length = data[pos]
        if length == 0:
            return ".".join(labels), (after if after >= 0 else pos + 1)
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or jumps >= MAX_JUMPS:
                return None
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= pos:
                return None  # a pointer must point backwards: forwards or to itself is a loop
            if after < 0:
                after = pos + 2
            pos, jumps = target, jumps + 1
            continue
        if length & 0xC0:
            return None  # 0x40/0x80: extended label types, unused
        label = data[pos + 1 : pos + 1 + length]
        if len(label) < length:
            return None
        labels.append(label.decode("utf-8", "replace"))
        pos += 1 + length
    return None


def parse(frame: Frame) -> list[Observation]:
    if frame.proto != UDP or MDNS_PORT not in (frame.sport, frame.dport) or len(frame.payload) < 12:
        return []
    data = frame.payload
    flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHH", data, 2)
    is_response = bool(flags & 0x8000)
    values: dict[tuple[str, str], None] = {}  # ordered set of (signal, value)
    pos = _questions(data, 12, qdcount, values)
    if is_response and pos is not None:
        _records(data, pos, ancount + nscount + arcount, values)
    out: list[Observation] = []
    for signal, value in list(values)[:MAX_OBSERVATIONS]:
        emit(out, Side.SRC, signal, value)
    return out


def _questions(data: bytes, pos: int, count: int, values: dict[tuple[str, str], None]) -> int | None:
    for _ in range(min(count, MAX_RECORDS)):
        name = read_name(data, pos)
        if name is None or name[1] + 4 > len(data):
            return None
        qtype = struct.unpack_from("!H", data, name[1])[0]
        if qtype in (TYPE_PTR, 255) and _is_service_type(name[0]) and name[0] != SERVICES_META:
            values[("mdns.query", name[0])] = None
        pos = name[1] + 4
    return pos


def _records(data: bytes, pos: int, count: int, values: dict[tuple[str, str], None]) -> None:
    for _ in range(min(count, MAX_RECORDS)):
        name = read_name(data, pos)
        if name is None or name[1] + 10 > len(data):
            return
        owner, pos = name
        rtype, _rclass, _ttl, rdlength = struct.unpack_from("!HHIH", data, pos)
        start, end = pos + 10, pos + 10 + rdlength
        if end > len(data):
            return  # cut by the snaplen
        _record(data, owner, rtype, start, end, values)
        pos = end


def _record(data: bytes, owner: str, rtype: int, start: int, end: int, values: dict[tuple[str, str], None]) -> None:
    if rtype == TYPE_PTR:
        target = read_name(data, start)
        if target is None:
            return
        if owner == SERVICES_META:
            values[("mdns.service", target[0])] = None
        elif _is_service_type(owner):
            values[("mdns.service", owner)] = None
            instance = target[0][: -len(owner) - 1] if target[0].endswith("." + owner) else ""
            if instance:
                values[("mdns.instance", instance)] = None
    elif rtype in (TYPE_A, TYPE_AAAA):
        values[("mdns.hostname", owner)] = None
    elif rtype == TYPE_SRV and end - start > 6:
        target = read_name(data, start + 6)
        if target is not None and target[0]:
            values[("mdns.hostname", target[0])] = None
    elif rtype == TYPE_TXT:
        for key, value in _txt(data[start:end]):
            if key in MODEL_KEYS and value:
                values[("mdns.model", clean(value).strip("()"))] = None


def _is_service_type(name: str) -> bool:
    """ "_ipp._tcp.local" or a subtype "_printer._sub._http._tcp.local"."""
    labels = name.split(".")
    return len(labels) >= 3 and labels[-2] in ("_tcp", "_udp") and labels[-3].startswith("_")


def _txt(rdata: bytes) -> list[tuple[bytes, bytes]]:
    pairs: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(rdata) and len(pairs) < 64:
        length = rdata[pos]
        entry = rdata[pos + 1 : pos + 1 + length]
        key, _, value = entry.partition(b"=")
        pairs.append((key.lower(), value))
        pos += 1 + length
    return pairs
