"""SNMP roles and system identity (sysDescr, sysObjectID, sysName).

Printers, UPS units, switches and many clinical devices (ventilators, monitors' gateways) run an
SNMP agent; a management station polling the system group gets the agent's own product string.

Layout: BER-encoded messages (RFC 3416 PDUs, RFC 1157 v1, RFC 1901 v2c, RFC 3412 v3) on UDP 161
(agent) and 162 (notification receiver):
  v1/v2c  SEQUENCE { INTEGER version (0, 1), OCTET STRING community, PDU }
  v3      SEQUENCE { INTEGER 3, SEQUENCE msgGlobalData, OCTET STRING msgSecurityParameters
                     (USM: SEQUENCE { engineID, boots, time, user, auth, priv }),
                     ScopedPDU SEQUENCE { contextEngineID, contextName, PDU } or encrypted OCTET STRING }
  PDU     [context tag 0..8] { request-id, error-status, error-index, SEQUENCE OF { OID, value } }

Signals:
  snmp.version        "1", "2c" or "3", on SRC
  snmp.role           "manager" / "agent": a message to 161 comes from a manager to an agent, a
                      message from 161 the reverse, a notification to 162 from an agent to a manager
  snmp.sys_descr      a Response's sysDescr.0 (1.3.6.1.2.1.1.1.0), on SRC (the agent)
  snmp.sys_object_id  a Response's sysObjectID.0 (1.3.6.1.2.1.1.2.0), dotted, on SRC
  snmp.sys_name       a Response's sysName.0 (1.3.6.1.2.1.1.5.0), on SRC
  snmp.engine_id      v3 authoritative engine ID (hex) of the agent, from traffic to or from 161;
                      its first four bytes usually carry the IANA enterprise number of the vendor
The community string is a password and is never emitted; neither are USM user names or sysContact
(a person). Only the minimal BER the messages need is decoded: definite lengths up to 4 bytes.
"""

from __future__ import annotations

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

AGENT_PORT, TRAP_PORT = 161, 162
SEQUENCE, INTEGER, OCTET_STRING, OID = 0x30, 0x02, 0x04, 0x06
RESPONSE_PDU = 0xA2
PDU_TAGS = range(0xA0, 0xA9)
VERSIONS = {0: "1", 1: "2c", 3: "3"}
SYSTEM_OIDS = {
    "1.3.6.1.2.1.1.1.0": "snmp.sys_descr",
    "1.3.6.1.2.1.1.2.0": "snmp.sys_object_id",
    "1.3.6.1.2.1.1.5.0": "snmp.sys_name",
}
MAX_VARBINDS = 32

Tlv = tuple[int, int, int]  # tag, value start, value end


def read_tlv(data: bytes, pos: int, end: int) -> Tlv | None:
    """One BER element inside data[pos:end]; None when it is malformed or runs past `end`."""
    if pos + 2 > end:
        return None
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            return None  # indefinite (0x80) or absurd lengths are not SNMP
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > end:
        return None
    return tag, pos, pos + length


def children(data: bytes, tlv: Tlv, limit: int = 8) -> list[Tlv]:
    """The elements inside a constructed element, stopping at the first malformed one."""
    found: list[Tlv] = []
    pos, end = tlv[1], tlv[2]
    while pos < end and len(found) < limit:
        child = read_tlv(data, pos, end)
        if child is None:
            break
        found.append(child)
        pos = child[2]
    return found


def decode_oid(raw: bytes) -> str:
    if not raw:
        return ""
    parts: list[int] = []
    value = 0
    for byte in raw[:128]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if not parts:
        return ""
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(p) for p in head + parts[1:])


def _integer(data: bytes, tlv: Tlv) -> int | None:
    if tlv[0] != INTEGER or not 0 < tlv[2] - tlv[1] <= 8:
        return None
    return int.from_bytes(data[tlv[1] : tlv[2]], "big", signed=True)


def parse(frame: Frame) -> list[Observation]:
    if frame.proto != UDP or not {frame.sport, frame.dport} & {AGENT_PORT, TRAP_PORT}:
        return []
    data = frame.payload
    message = read_tlv(data, 0, len(data))
    if message is None or message[0] != SEQUENCE:
        return []
    parts = children(data, message, 4)
    version = _integer(data, parts[0]) if parts else None
    if version not in VERSIONS:
        return []
    out = [Observation(Side.SRC, "snmp.version", VERSIONS[version])]
    out += _roles(frame)
    pdu = _pdu_v3(data, parts, frame, out) if version == 3 else _pdu_v1(parts)
    if pdu is not None and pdu[0] == RESPONSE_PDU:
        _system_group(data, pdu, out)
    return out


def _roles(frame: Frame) -> list[Observation]:
    if frame.dport == AGENT_PORT:
        manager, agent = Side.SRC, Side.DST
    elif frame.sport == AGENT_PORT or frame.dport == TRAP_PORT:
        manager, agent = Side.DST, Side.SRC
    elif frame.sport == TRAP_PORT:
        manager, agent = Side.SRC, Side.DST  # the receiver acknowledging an Inform
    else:
        return []
    return [Observation(manager, "snmp.role", "manager"), Observation(agent, "snmp.role", "agent")]


def _pdu_v1(parts: list[Tlv]) -> Tlv | None:
    # parts[1] is the community: deliberately never read
    if len(parts) >= 3 and parts[2][0] in PDU_TAGS:
        return parts[2]
    return None


def _pdu_v3(data: bytes, parts: list[Tlv], frame: Frame, out: list[Observation]) -> Tlv | None:
    if len(parts) < 4:
        return None
    security = parts[2]
    if security[0] == OCTET_STRING:
        usm = read_tlv(data, security[1], security[2])
        fields = children(data, usm, 6) if usm is not None and usm[0] == SEQUENCE else []
        if fields and fields[0][0] == OCTET_STRING and AGENT_PORT in (frame.sport, frame.dport):
            # In get/set traffic the agent is the authoritative engine; for notifications it
            # depends on trap versus inform, so those are left alone
            agent = Side.DST if frame.dport == AGENT_PORT else Side.SRC
            emit(out, agent, "snmp.engine_id", data[fields[0][1] : fields[0][2]][:32].hex())
    scoped = parts[3]
    if scoped[0] != SEQUENCE:
        return None  # encrypted (authPriv): nothing more to read
    inner = children(data, scoped, 3)
    if len(inner) == 3 and inner[2][0] in PDU_TAGS:
        return inner[2]
    return None


def _system_group(data: bytes, pdu: Tlv, out: list[Observation]) -> None:
    fields = children(data, pdu, 4)
    if len(fields) < 4 or fields[3][0] != SEQUENCE:
        return
    for varbind in children(data, fields[3], MAX_VARBINDS):
        if varbind[0] != SEQUENCE:
            continue
        pair = children(data, varbind, 2)
        if len(pair) != 2 or pair[0][0] != OID:
            continue
        signal = SYSTEM_OIDS.get(decode_oid(data[pair[0][1] : pair[0][2]]))
        tag, start, end = pair[1]
        if signal is None:
            continue
        if tag == OCTET_STRING and signal != "snmp.sys_object_id":
            emit(out, Side.SRC, signal, data[start:end])
        elif tag == OID and signal == "snmp.sys_object_id":
            emit(out, Side.SRC, signal, decode_oid(data[start:end]))
