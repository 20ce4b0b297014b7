"""Random and adversarial Ethernet frames for the differential test, fast (struct, no scapy).

Frames come from small pools of MACs, addresses and ports (so flows repeat
and every table path is taken: new, established, reply, stale) and are then
sometimes damaged: truncated, lengths lied about, header fields flipped.
Checksums are left zero: the program never reads them.
"""

from __future__ import annotations

import random
import struct

# the fixture's MACs, a gateway pair (fe, fd), a MAC no segment lists (0a), and group MACs
MACS = [bytes.fromhex(m) for m in ("020000000001", "020000000003", "020000000009", "0200000000fe", "0200000000fd", "02000000000a", "ffffffffffff",
                                    "01005e000001", "333300000001")]
IPV4 = [bytes([10, 0, 1, 5]), bytes([10, 0, 2, 5]), bytes([10, 0, 2, 7]), bytes([10, 0, 3, 5]), bytes([10, 9, 1, 1]), bytes([10, 0, 99, 5]), bytes([10, 0, 98, 5]), bytes([10, 0, 0, 1]), bytes([10, 5, 5, 5]), bytes([224, 0, 0, 251])]
IPV6 = [bytes.fromhex(a) for a in ("fd000001000000000000000000000005", "fd000002000000000000000000000005", "fe800000000000000000000000000001", "fe800000000000000000000000000002", "ff020000000000000000000000000001", "fd000009000000000000000000000001")]
PORTS = [104, 11112, 11500, 5000, 22, 67, 68, 69, 546, 547, 443, 40000, 40001, 40002]
TCP_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x00, 0x3F]
VLANS = [0, 0, 0, 30, 31]
EXT_HEADERS = [0, 43, 60, 51, 44]  # hop-by-hop, routing, dest opts, AH, fragment


class FrameGenerator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def frame(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.04:
            body = self._arp()
            ethertype = 0x0806
        elif kind < 0.06:
            body, ethertype = r.randbytes(r.randint(0, 60)), r.choice([0x88CC, 0x8809, 0x888E, 0x88B5, 0x9000, 0x0100])
        elif kind < 0.60:
            body, ethertype = self._ipv4(), 0x0800
        else:
            body, ethertype = self._ipv6(), 0x86DD
        frame = self._ethernet(ethertype) + body
        frame = self._damage(frame)
        return frame.ljust(14, b"\0")  # a test run needs at least an Ethernet header

    def _ethernet(self, ethertype: int) -> bytes:
        r = self.rng
        header = r.choice(MACS) + r.choice(MACS)
        tags = r.choices([0, 1, 2], weights=[6, 3, 1])[0]
        for _ in range(tags):
            tpid = r.choice([0x8100, 0x88A8])
            header += struct.pack("!HH", tpid, (r.randint(0, 7) << 13) | r.choice(VLANS + [r.randint(0, 4095)]))
        return header + struct.pack("!H", ethertype)

    def _arp(self) -> bytes:
        r = self.rng
        return struct.pack("!HHBBH", 1, 0x0800, 6, 4, r.choice([1, 2])) + r.choice(MACS) + r.choice(IPV4) + r.choice(MACS) + r.choice(IPV4)

    def _l4(self, proto: int, icmp_error_quote: bytes | None = None) -> bytes:
        r = self.rng
        sport, dport = r.choice(PORTS), r.choice(PORTS)
        if r.random() < 0.3:
            sport = r.randint(0, 65535)
        if proto == 6:
            doff = r.choice([5, 5, 5, 6, 4, 15])
            return struct.pack("!HHIIBBHHH", sport, dport, r.getrandbits(32), 0, doff << 4, r.choice(TCP_FLAGS), 8192, 0, 0) + r.randbytes(r.choice([0, 4, 40]))
        if proto == 17:
            payload = r.randbytes(r.choice([0, 8, 240, 300]))
            return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        if proto in (1, 58):
            if proto == 1:
                icmp_type = r.choice([8, 0, 3, 11, 12, 5, 13])
            else:
                icmp_type = r.choice([128, 129, 1, 2, 3, 4, 133, 134, 135, 136, 130, 143, 137])
            ident = r.choice([1, 2, 0x1234])
            header = struct.pack("!BBHHH", icmp_type, r.randint(0, 4), 0, ident, r.randint(0, 9))
            if icmp_error_quote is not None and icmp_type in (3, 11, 12, 1, 2, 3, 4):
                return header + icmp_error_quote
            return header + r.randbytes(r.choice([0, 16, 56]))
        return r.randbytes(r.choice([0, 8, 20]))

    def _ipv4(self, allow_quote: bool = True) -> bytes:
        r = self.rng
        proto = r.choices([6, 17, 1, 47, 50], weights=[10, 8, 4, 1, 1])[0]
        quote = self._ipv4(allow_quote=False)[:28 + r.choice([0, 8])] if proto == 1 and allow_quote and r.random() < 0.5 else None
        payload = self._l4(proto, quote)
        ihl = r.choices([5, 6, 15, 4], weights=[20, 3, 1, 1])[0]
        options = bytes(max(0, ihl - 5) * 4)
        flags_frag = 0
        if r.random() < 0.08:
            flags_frag = r.choice([0x2000, 0x2000 | r.randint(1, 100), r.randint(1, 100), 0x4000])
        total = 20 + len(options) + len(payload)
        if r.random() < 0.03:
            total = r.choice([total + 40, total - 30, 0, 19, 65535]) & 0xFFFF
        src, dst = r.choice(IPV4), r.choice(IPV4)
        version_ihl = (r.choice([4, 4, 4, 4, 6]) << 4) | (ihl & 0xF)
        header = struct.pack("!BBHHHBBH4s4s", version_ihl, 0, total, r.choice([77, 78, 79]), flags_frag, r.choice([64, 1, 255]), proto, 0, src, dst)
        return header + options + payload

    def _ipv6(self) -> bytes:
        r = self.rng
        proto = r.choices([6, 17, 58, 59, 50], weights=[10, 8, 8, 1, 1])[0]
        quote = None
        if proto == 58 and r.random() < 0.4:
            inner_proto = r.choice([6, 17, 58])
            quote = struct.pack("!IHBB16s16s", 6 << 28, 20, inner_proto, 64, r.choice(IPV6), r.choice(IPV6)) + self._l4(inner_proto)[:8]
        payload = self._l4(proto, quote)
        chain = [r.choice(EXT_HEADERS) for _ in range(r.choices([0, 1, 2, 6, 7], weights=[12, 4, 2, 1, 1])[0])]
        next_header = proto
        for ext in reversed(chain):
            payload = self._ext_header(ext, next_header) + payload
            next_header = ext
        length = len(payload)
        if r.random() < 0.03:
            length = r.choice([length + 40, max(0, length - 10), 0])
        hop_limit = r.choice([255, 64, 1])
        header = struct.pack("!IHBB16s16s", 6 << 28 if r.random() > 0.02 else 4 << 28, length, next_header, hop_limit, r.choice(IPV6), r.choice(IPV6))
        return header + payload

    def _ext_header(self, ext: int, next_header: int) -> bytes:
        r = self.rng
        if ext == 44:
            offset_flags = r.choice([0, 1, (r.randint(1, 50) << 3), (r.randint(1, 50) << 3) | 1])
            return struct.pack("!BBHI", next_header, 0, offset_flags, r.choice([77, 78]))
        if ext == 51:
            length = r.choice([1, 2, 4])  # AH: (len + 2) * 4 bytes
            return struct.pack("!BB", next_header, length) + bytes((length + 2) * 4 - 2)
        length = r.choice([0, 0, 1])
        return struct.pack("!BB", next_header, length) + bytes((length + 1) * 8 - 2)

    def _damage(self, frame: bytes) -> bytes:
        r = self.rng
        roll = r.random()
        if roll < 0.05:
            return frame[: r.randint(14, max(14, len(frame)))]
        if roll < 0.08:
            data = bytearray(frame)
            for _ in range(r.randint(1, 4)):
                position = r.randint(12, len(data) - 1) if len(data) > 12 else 0
                data[position] = r.getrandbits(8)
            return bytes(data)
        if roll < 0.10:
            return frame + bytes(r.randint(1, 40))  # Ethernet padding beyond the IP length
        return frame
