"""DHCPv4 and DHCPv6 client fingerprints.

DHCP is the richest passive signal for a device that just joined: the client's DHCP library picks
the options it sends and the order of the parameters it requests, and many embedded stacks put
their product in the vendor class or the host name.

DHCPv4 (RFC 2131/2132; UDP 67/68): the BOOTP fixed header is 236 bytes (op at 0, giaddr at 24,
chaddr at 28), then the magic cookie 63 82 53 63, then code/length/value options (0 pad, 255 end;
repeated codes are concatenated as RFC 3396 says; option overload, 52, is not followed).
Client-side signals go to the client:
  * a request (op=1) sent by the client itself: SRC. A request relayed by a relay agent (giaddr
    set and sent from port 67) comes from the relay, so only ("dhcp.role", "relay") is emitted.
  * a reply (op=2) only carries the names the server gives the client (options 12 and 81), emitted
    on DST when the reply is addressed to the chaddr; a broadcast reply names no client by its
    Ethernet address, and guessing would misattribute.
  dhcp.message_type   option 53 as a name ("DISCOVER"), or the number when unknown
  dhcp.param_list     option 55 in wire order ("1,3,6,15,31,33"): the order is the fingerprint
  dhcp.vendor_class   option 60
  dhcp.hostname       option 12
  dhcp.client_id      option 61, hex
  dhcp.max_msg_size   option 57
  dhcp.fqdn           option 81, the name (ASCII form, or decoded from DNS wire form)
  dhcp.ja4d           JA4D as the FoxIO JA4+ DHCP specification describes it (as read from the
                      independent ja4plus implementation): <type:5><maxsize:4><i|n><d|n>_<options in
                      order without 50,53,81>_<option 55 list>, "00" for an empty list
  dhcp.fingerprint    "<ja4d>_<vendor class or 00>": JA4D plus the vendor class, which JA4D omits
Server side (op=2), on SRC: ("dhcp.role", "server"), ("dhcp.server_id", <option 54>) and
("dhcp.server_ja4d", <JA4D of the reply>), which fingerprints the DHCP server software.

DHCPv6 (RFC 8415; UDP 546/547): msg-type (1 byte) + transaction id (3), then options of 2-byte
code and 2-byte length. A client message (sent to 547) describes SRC:
  dhcpv6.message_type   "SOLICIT", "REQUEST", ...
  dhcpv6.oro            option 6, the requested options in order
  dhcpv6.vendor_class   option 16: "<enterprise number>:<first class string>"
  dhcpv6.fqdn           option 39, the client FQDN
Relay messages (12/13) are not unwrapped. No patient data travels in DHCP.
"""

from __future__ import annotations

import ipaddress
import struct

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import clean, emit

BOOTP_FIXED = 236
MAGIC_COOKIE = b"\x63\x82\x53\x63"
OPTIONS_START = BOOTP_FIXED + len(MAGIC_COOKIE)
V4_PORTS = frozenset({67, 68})
V6_CLIENT_PORT, V6_SERVER_PORT = 546, 547

MESSAGE_TYPES = dict(
    enumerate(
        (
            "DISCOVER OFFER REQUEST DECLINE ACK NAK RELEASE INFORM FORCERENEW LEASEQUERY "
            "LEASEUNASSIGNED LEASEUNKNOWN LEASEACTIVE BULKLEASEQUERY LEASEQUERYDONE ACTIVELEASEQUERY "
            "LEASEQUERYSTATUS TLS"
        ).split(),
        start=1,
    )
)
# JA4D's 5-character message type names
JA4D_TYPES = dict(
    enumerate(
        (
            "disco offer reqst decln dpack dpnak relse infor frenw lqery lunas lunkn lactv blklq "
            "lqdon actlq lqsta dhtls"
        ).split(),
        start=1,
    )
)
JA4D_SKIPPED_OPTIONS = frozenset({50, 53, 81})  # already summarised in JA4D's first section

V6_MESSAGE_TYPES = dict(
    enumerate(
        (
            "SOLICIT ADVERTISE REQUEST CONFIRM RENEW REBIND REPLY RELEASE DECLINE RECONFIGURE "
            "INFORMATION-REQUEST RELAY-FORW RELAY-REPL"
        ).split(),
        start=1,
    )
)
MAX_LIST = 64  # longer option lists are hostile or broken; the prefix still fingerprints


def parse(frame: Frame) -> list[Observation]:
    if frame.proto != UDP:
        return []
    ports = (frame.sport, frame.dport)
    if frame.sport in V4_PORTS or frame.dport in V4_PORTS:
        return _dhcpv4(frame)
    if V6_SERVER_PORT in ports or V6_CLIENT_PORT in ports:
        return _dhcpv6(frame)
    return []


# ---- DHCPv4 ----


class _Options:
    """The complete options of one DHCPv4 message."""

    def __init__(self, data: bytes) -> None:
        self.sequence: list[int] = []  # every occurrence, as JA4D lists them
        self.values: dict[int, bytes] = {}
        pos = OPTIONS_START
        while pos < len(data) and len(self.sequence) < 255:
            code = data[pos]
            if code == 0:
                pos += 1
                continue
            if code == 255 or pos + 1 >= len(data):
                break
            end = pos + 2 + data[pos + 1]
            if end > len(data):
                break  # cut by the snaplen (or lying): an incomplete value is no evidence
            self.sequence.append(code)
            # RFC 3396: a repeated code continues the same (long) option
            self.values[code] = self.values.get(code, b"") + data[pos + 2 : end]
            pos = end

    def get(self, code: int) -> bytes | None:
        return self.values.get(code)


def _dhcpv4(frame: Frame) -> list[Observation]:
    data = frame.payload
    if len(data) < OPTIONS_START or data[BOOTP_FIXED:OPTIONS_START] != MAGIC_COOKIE or data[0] not in (1, 2):
        return []
    options = _Options(data)
    out: list[Observation] = []
    if data[0] == 2:
        out.append(Observation(Side.SRC, "dhcp.role", "server"))
        server_id = options.get(54)
        if server_id is not None and len(server_id) == 4:
            out.append(Observation(Side.SRC, "dhcp.server_id", str(ipaddress.IPv4Address(server_id))))
        message_type = options.get(53)
        if message_type:
            emit(out, Side.SRC, "dhcp.server_ja4d", _ja4d(message_type[0], options))
        if _chaddr(data) == frame.dst_mac:
            _names(out, Side.DST, options)  # the names the server gives the client
        return out
    giaddr = data[24:28]
    if frame.sport == 67 and giaddr != b"\x00\x00\x00\x00":
        return [Observation(Side.SRC, "dhcp.role", "relay")]
    _client(out, Side.SRC, options)
    return out


def _chaddr(data: bytes) -> str:
    if data[1] != 1 or data[2] != 6:
        return ""  # not Ethernet: chaddr is no MAC we can compare
    return ":".join(f"{b:02x}" for b in data[28:34])


def _client(out: list[Observation], side: Side, options: _Options) -> None:
    message_type = options.get(53)
    type_code = message_type[0] if message_type else None
    if type_code is not None:
        emit(out, side, "dhcp.message_type", MESSAGE_TYPES.get(type_code, str(type_code)))
    params = options.get(55)
    if params:
        emit(out, side, "dhcp.param_list", ",".join(str(code) for code in params[:MAX_LIST]))
    vendor = options.get(60)
    emit(out, side, "dhcp.vendor_class", vendor)
    _names(out, side, options)
    client_id = options.get(61)
    if client_id:
        emit(out, side, "dhcp.client_id", client_id[:64].hex())
    max_size = options.get(57)
    if max_size is not None and len(max_size) == 2:
        emit(out, side, "dhcp.max_msg_size", str(struct.unpack("!H", max_size)[0]))
    if type_code is not None:
        ja4d = _ja4d(type_code, options)
        emit(out, side, "dhcp.ja4d", ja4d)
        emit(out, side, "dhcp.fingerprint", f"{ja4d}_{clean(vendor) if vendor else '00'}")


def _names(out: list[Observation], side: Side, options: _Options) -> None:
    emit(out, side, "dhcp.hostname", options.get(12))
    fqdn = options.get(81)
    if fqdn is not None and len(fqdn) > 3:
        emit(out, side, "dhcp.fqdn", _fqdn_name(fqdn))


def _fqdn_name(value: bytes) -> str:
    """RFC 4702: flags, two obsolete rcodes, then the name; flag E (0x04) means DNS wire format."""
    return _dns_wire_name(value[3:]) if value[0] & 0x04 else clean(value[3:])


def _ja4d(type_code: int, options: _Options) -> str:
    max_size = options.get(57)
    size = min(struct.unpack("!H", max_size[:2])[0], 9999) if max_size and len(max_size) >= 2 else 0
    fqdn = options.get(81)
    section_a = (
        JA4D_TYPES.get(type_code, f"{type_code:05d}")
        + f"{size:04d}"
        + ("i" if 50 in options.values else "n")
        + ("d" if fqdn is not None and len(fqdn) > 3 else "n")
    )
    present = [str(code) for code in options.sequence if code not in JA4D_SKIPPED_OPTIONS][:MAX_LIST]
    params = [str(code) for code in (options.get(55) or b"")[:MAX_LIST]]
    return f"{section_a}_{'-'.join(present) or '00'}_{'-'.join(params) or '00'}"


# ---- DHCPv6 ----


def _dhcpv6(frame: Frame) -> list[Observation]:
    data = frame.payload
    if frame.dport != V6_SERVER_PORT or len(data) < 4 or data[0] in (12, 13):
        return []  # only client messages describe the sender; relays are not unwrapped
    out: list[Observation] = []
    emit(out, Side.SRC, "dhcpv6.message_type", V6_MESSAGE_TYPES.get(data[0], str(data[0])))
    for code, value in _v6_options(data, 4):
        if code == 6:
            requested = struct.unpack(f"!{len(value) // 2}H", value[: len(value) // 2 * 2])
            emit(out, Side.SRC, "dhcpv6.oro", ",".join(str(c) for c in requested[:MAX_LIST]))
        elif code == 16 and len(value) >= 4:
            emit(out, Side.SRC, "dhcpv6.vendor_class", _v6_vendor_class(value))
        elif code == 39 and len(value) >= 1:
            emit(out, Side.SRC, "dhcpv6.fqdn", _dns_wire_name(value[1:]))
    return out


def _v6_options(data: bytes, pos: int) -> list[tuple[int, bytes]]:
    found: list[tuple[int, bytes]] = []
    while pos + 4 <= len(data) and len(found) < 64:
        code, length = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + length
        if end > len(data):
            break
        found.append((code, data[pos + 4 : end]))
        pos = end
    return found


def _v6_vendor_class(value: bytes) -> str:
    """RFC 8415 21.16: enterprise number, then 2-byte-length-prefixed class strings; the first is kept."""
    enterprise = struct.unpack_from("!I", value, 0)[0]
    text = ""
    if len(value) >= 6:
        length = struct.unpack_from("!H", value, 4)[0]
        text = clean(value[6 : 6 + length])
    return f"{enterprise}:{text}" if text else str(enterprise)


def _dns_wire_name(name: bytes) -> str:
    labels: list[str] = []
    pos = 0
    while pos < len(name) and name[pos] != 0 and len(labels) < 64:
        end = pos + 1 + name[pos]
        labels.append(clean(name[pos + 1 : end]))
        pos = end
    return ".".join(labels)
