"""p0f-style TCP stack signatures of SYN and SYN-ACK packets.

Signals, on SRC (the host whose stack built the packet):
  ("tcp.syn_signature", sig)      for a SYN (a client opening a connection)
  ("tcp.synack_signature", sig)   for a SYN-ACK (a server accepting one)
  ("tcp.initial_ttl", "64")       the initial TTL / hop limit guessed from the observed one

The signature follows p0f v3's `ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass` layout
(p0f's fp_tcp.c dump_sig() and the format notes in p0f.fp), so it can be compared with the
`sig =` lines of Debian's /etc/p0f/p0f.fp. Deliberate differences from p0f's `raw_sig`:
  * ittl is the guessed initial TTL alone (p0f prints "observed+distance"): the initial value is a
    property of the stack, the distance one of where the sensor sits, and signatures must not change
    when a device moves.
  * wsize uses p0f's "mss*N"/"mtu*N" rewriting, except the SYN-ACK case that divides by the peer's
    MSS, which needs the SYN of the same flow (parsers see one frame at a time).
Field by field: ver 4 or 6; olen IPv4 options length; mss the MSS option or 0; scale the
window-scale option or 0; olayout the TCP options in order (eol+N with N bytes of padding after it,
nop, mss, ws, sok, sack, ts, ?N for others); quirks, comma-separated in p0f's order: df, id+, id-,
ecn, 0+, flow, seq-, ack+, ack-, uptr+, urgf+, pushf+, ts1-, ts2+, opt+, exws, bad; pclass "0" or
"+" when the packet carries payload. Quirks that need a header this parser cannot reach (an IPv6
extension header before TCP) are left out, which keeps the output deterministic.
"""

from __future__ import annotations

import struct

from medseg_xdp.fingerprint.frame import Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

MIN_TCP4 = 40  # IPv4 + TCP headers without options, as p0f's detect_win_multi() uses
MIN_TCP6 = 60
MAX_WSCALE = 14  # RFC 7323: larger shifts are invalid ("exws")
OPTION_NAMES = {1: "nop", 2: "mss", 3: "ws", 4: "sok", 5: "sack", 8: "ts"}
FIXED_SIZES = {2: 4, 3: 3, 4: 2, 8: 10}  # MSS, window scale, SACK permitted, timestamps
MAX_OPTIONS = 24  # p0f's MAX_TCP_OPT
TCP_URG, TCP_ACK, TCP_PSH = 0x20, 0x10, 0x08
TCP_ECN_BITS = 0x40 | 0x80  # ECE, CWR; the NS bit lives in the data-offset byte


def initial_ttl(ttl: int) -> int:
    """The usual initial TTLs are 32, 64, 128 and 255: the next at or above the observed one."""
    for guess in (32, 64, 128):
        if ttl <= guess:
            return guess
    return 255


def parse(frame: Frame) -> list[Observation]:
    if not (frame.is_syn or frame.is_syn_ack) or frame.ip_version not in (4, 6):
        return []
    signal = "tcp.syn_signature" if frame.is_syn else "tcp.synack_signature"
    out: list[Observation] = []
    emit(out, Side.SRC, signal, signature(frame))  # bounded: hostile option lists can be long
    out.append(Observation(Side.SRC, "tcp.initial_ttl", str(initial_ttl(frame.ttl))))
    return out


class _Options:
    """What the TCP options say, read as p0f reads them."""

    def __init__(self, raw: bytes, is_syn: bool) -> None:
        self.layout: list[str] = []
        self.mss = 0
        self.wscale = 0
        self.ts1: int | None = None
        self.quirks: set[str] = set()
        self._read(raw, is_syn)

    def _read(self, raw: bytes, is_syn: bool) -> None:
        # Mirrors p0f's process.c: known options are read at their fixed size whatever their
        # length byte says ("bad" if it disagrees); SACK and unknown options trust a sane length;
        # anything that runs past the header aborts the walk with "bad".
        pos, end = 0, len(raw)
        while pos < end and len(self.layout) < MAX_OPTIONS:
            kind = raw[pos]
            pos += 1
            if kind == 0:
                self.layout.append(f"eol+{end - pos}")
                if any(raw[pos:]):
                    self.quirks.add("opt+")
                return
            self.layout.append(OPTION_NAMES.get(kind, f"?{kind}"))
            if kind == 1:
                continue
            size = FIXED_SIZES.get(kind)
            if size is not None:
                if pos + size - 1 > end:
                    break
                if raw[pos] != size:
                    self.quirks.add("bad")
                self._option(kind, raw[pos + 1 : pos + size - 1], is_syn)
                pos += size - 1
                continue
            low, high = (10, 34) if kind == 5 else (2, 40)
            if pos == end or not low <= raw[pos] <= high or pos - 1 + raw[pos] > end:
                break
            pos += raw[pos] - 1
        if pos != end:
            self.quirks.add("bad")

    def _option(self, kind: int, value: bytes, is_syn: bool) -> None:
        if kind == 2:
            self.mss = struct.unpack("!H", value)[0]
        elif kind == 3:
            self.wscale = value[0]
            if self.wscale > MAX_WSCALE:
                self.quirks.add("exws")
        elif kind == 8:
            self.ts1, ts2 = struct.unpack("!II", value)
            if self.ts1 == 0:
                self.quirks.add("ts1-")
            if ts2 and is_syn:
                self.quirks.add("ts2+")  # a fresh SYN has nothing to echo yet


QUIRK_ORDER = (
    "df",
    "id+",
    "id-",
    "ecn",
    "0+",
    "flow",
    "seq-",
    "ack+",
    "ack-",
    "uptr+",
    "urgf+",
    "pushf+",
    "ts1-",
    "ts2+",
    "opt+",
    "exws",
    "bad",
)


def signature(frame: Frame) -> str:
    options = _Options(frame.tcp_options, frame.is_syn)
    ip_header, tcp_header = _headers(frame)
    quirks = options.quirks | _ip_quirks(frame, ip_header) | _tcp_quirks(tcp_header)
    olen = max(0, len(ip_header) - 20) if frame.ip_version == 4 else 0
    total_header = len(ip_header) + 20 + len(frame.tcp_options)
    window = _window(frame, options, total_header)
    return ":".join(
        (
            str(frame.ip_version),
            str(initial_ttl(frame.ttl)),
            str(olen),
            str(options.mss),
            f"{window},{options.wscale}",
            ",".join(options.layout),
            ",".join(q for q in QUIRK_ORDER if q in quirks),
            "+" if frame.payload else "0",
        )
    )


def _headers(frame: Frame) -> tuple[bytes, bytes]:
    """(IP header, fixed 20-byte TCP header or b"") located in frame.l3; decode() already checked them."""
    l3 = frame.l3
    if frame.ip_version == 4 and len(l3) >= 20:
        header_len = (l3[0] & 0x0F) * 4
        return l3[:header_len], l3[header_len : header_len + 20]
    if frame.ip_version == 6 and len(l3) >= 40:
        # Only the plain case: an extension header before TCP in a SYN is rare and not worth a walk here
        return l3[:40], l3[40:60] if l3[6] == 6 else b""
    return b"", b""


def _ip_quirks(frame: Frame, ip_header: bytes) -> set[str]:
    quirks: set[str] = set()
    if frame.ip_version == 4 and len(ip_header) >= 20:
        ip_id = struct.unpack_from("!H", ip_header, 4)[0]
        if frame.dont_fragment:
            quirks.add("df")
            if ip_id:
                quirks.add("id+")
        elif ip_id == 0:
            quirks.add("id-")
        if ip_header[1] & 0x03:
            quirks.add("ecn")
        if ip_header[6] & 0x80:
            quirks.add("0+")  # the reserved "evil" bit
    elif frame.ip_version == 6 and len(ip_header) >= 40:
        if (ip_header[1] >> 4) & 0x03:
            quirks.add("ecn")
        if struct.unpack_from("!I", ip_header, 0)[0] & 0xFFFFF:
            quirks.add("flow")
    return quirks


def _tcp_quirks(tcp: bytes) -> set[str]:
    if len(tcp) < 20:
        return set()
    seq, ack = struct.unpack_from("!II", tcp, 4)
    flags, urgent = tcp[13], struct.unpack_from("!H", tcp, 18)[0]
    quirks: set[str] = set()
    if flags & TCP_ECN_BITS or tcp[12] & 0x01:
        quirks.add("ecn")
    if seq == 0:
        quirks.add("seq-")
    if flags & TCP_ACK:
        if ack == 0:
            quirks.add("ack-")
    elif ack:
        quirks.add("ack+")
    if flags & TCP_URG:
        quirks.add("urgf+")
    elif urgent:
        quirks.add("uptr+")
    if flags & TCP_PSH:
        quirks.add("pushf+")
    return quirks


def _window(frame: Frame, options: _Options, total_header: int) -> str:
    """The window as p0f writes it: a multiple of the MSS or MTU when it is one, else the number."""
    win, mss = frame.tcp_window, options.mss
    if not win or mss < 100:
        return str(win)
    candidates: list[tuple[int, str]] = [(mss, "mss")]
    if options.ts1:
        candidates.append((mss - 12, "mss"))  # some stacks subtract the timestamp option's size
    candidates += [(1500 - MIN_TCP4, "mss"), (1500 - MIN_TCP4 - 12, "mss")]
    if frame.ip_version == 6:
        candidates += [(1500 - MIN_TCP6, "mss"), (1500 - MIN_TCP6 - 12, "mss")]
    candidates += [(mss + MIN_TCP4, "mtu"), (mss + total_header, "mtu")]
    if frame.ip_version == 6:
        candidates.append((mss + MIN_TCP6, "mtu"))
    candidates.append((1500, "mtu"))
    for divisor, unit in candidates:
        if divisor > 0 and win % divisor == 0:
            return f"{unit}*{win // divisor}"
    return str(win)
