"""Philips IntelliVue Data Export: which host is a monitor and which a data export client.

Source: Philips "Data Export Interface Programming Guide" (PIPG, 4535 642 59271), as quoted by open
third-party implementations (VSCaptureMP, the MD PnP/DICES IntelliVue drivers and others that cite
its page numbers). The guide itself was not available here: every layout below is UNVERIFIED against
the primary source, and only the shapes those implementations agree on are required.

- UDP 24105 (PIPG p. 29, unverified): the association and data protocol, client <-> monitor.
  An association-control message starts with a session header (PIPG p. 67, unverified): one type
  byte (0x0D CN_SPDU_SI association request, 0x0E AC_SPDU_SI accept, 0x0C RF_SPDU_SI refuse,
  0x09 FN_SPDU_SI release request, 0x0A DN_SPDU_SI release response, 0x19 AB_SPDU_SI abort), then a
  length indicator LI: one byte, or 0xFF and two bytes big endian, counting the rest of the message.
  Required here: the LI equals the bytes that follow exactly (a datagram is whole; these messages are
  far below a 512-byte sample), and the first byte after the header is 0x05 (session data) for
  request/accept or 0xC1 (presentation header) for release request/response, as in the example
  messages reproduced from PIPG pp. 298-299 (unverified). Refuse and abort: type and LI only.
- UDP 24005 (PIPG p. 279, unverified): the monitor broadcasts a Connect Indication event report:
  Nomenclature (4 bytes), ROapdus {ro_type = 1 ROIV, length}, ROIVapdu {invoke_id, command_type
  0/1 event report, length}, EventReportArgument {managed object (6 bytes), event_time (4),
  event_type NOM_NOTI_MDS_CONNECT_INDIC 0x0D17, length}, then an attribute list {count, length,
  AVA{id, length, value}...}. Required: those values and lengths that agree with each other. From
  the attribute NOM_ATTR_ID_MODEL (0x0928, SystemModel: two VariableLabels {length, bytes padded
  to even}: manufacturer, model number) come intellivue.manufacturer and intellivue.model.
  The layout and constants match a real connect indication dump published with one of those
  implementations (all lengths consistent), not a capture of ours.

Roles: the side on port 24105 of an association message is the monitor, its peer the client; the
sender of a connect indication is a monitor (its destination is a broadcast: no DST observation).
Data export messages (first byte 0xE1) carry patient data and are never parsed.
"""

from __future__ import annotations

import struct

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit
from medseg_xdp.fingerprint.parsers.services import is_group_destination

PROTOCOL_PORT = 24105
CONNECT_INDICATION_PORT = 24005

CN_SPDU_SI, AC_SPDU_SI, RF_SPDU_SI = 0x0D, 0x0E, 0x0C
FN_SPDU_SI, DN_SPDU_SI, AB_SPDU_SI = 0x09, 0x0A, 0x19
# type -> (message name, who sends it: "client", "monitor" or None for either, first byte of the body)
SESSION_MESSAGES: dict[int, tuple[str, str | None, int | None]] = {
    CN_SPDU_SI: ("association_request", "client", 0x05),
    AC_SPDU_SI: ("association_accept", "monitor", 0x05),
    RF_SPDU_SI: ("association_refuse", "monitor", None),
    FN_SPDU_SI: ("release_request", None, 0xC1),
    DN_SPDU_SI: ("release_response", None, 0xC1),
    AB_SPDU_SI: ("abort", None, None),
}

ROIV_APDU = 1
EVENT_REPORT_COMMANDS = (0, 1)  # CMD_EVENT_REPORT, CMD_CONFIRMED_EVENT_REPORT
NOM_NOTI_MDS_CONNECT_INDIC = 0x0D17
NOM_ATTR_ID_MODEL = 0x0928


def parse(frame: Frame) -> list[Observation]:
    """Observations from an association-control message or a connect indication; [] otherwise."""
    if frame.proto != UDP or not frame.payload:
        return []
    if PROTOCOL_PORT in (frame.sport, frame.dport):
        return _association(frame)
    if frame.dport == CONNECT_INDICATION_PORT:
        return _connect_indication(frame)
    return []


def _association(frame: Frame) -> list[Observation]:
    payload = frame.payload
    message = SESSION_MESSAGES.get(payload[0])
    body_start = _session_body_start(payload)
    if message is None or body_start is None:
        return []
    name, sent_by, first_body_byte = message
    if first_body_byte is not None and (body_start >= len(payload) or payload[body_start] != first_body_byte):
        return []
    if frame.sport == PROTOCOL_PORT and frame.dport != PROTOCOL_PORT:
        src_role = "monitor"
    elif frame.dport == PROTOCOL_PORT and frame.sport != PROTOCOL_PORT:
        src_role = "client"
    else:
        return []  # both ends on 24105: who is the monitor cannot be told from the ports
    if sent_by is not None and sent_by != src_role:
        return []  # a request coming from the monitor's port, or an accept going to it: not this protocol
    dst_role = "client" if src_role == "monitor" else "monitor"
    out: list[Observation] = []
    emit(out, Side.SRC, "intellivue.role", src_role)
    emit(out, Side.DST, "intellivue.role", dst_role)
    emit(out, Side.SRC, "intellivue.message", name)
    return out


def _session_body_start(payload: bytes) -> int | None:
    """Offset after the session header when its LI counts exactly the rest of the datagram."""
    if len(payload) < 2:
        return None
    if payload[1] != 0xFF:
        start, length = 2, payload[1]
    elif len(payload) >= 4:
        start, length = 4, struct.unpack_from("!H", payload, 2)[0]
    else:
        return None
    return start if length > 0 and start + length == len(payload) else None


def _connect_indication(frame: Frame) -> list[Observation]:
    """Connect Indication event report (see the module docstring for the layout and its sources)."""
    payload = frame.payload
    if len(payload) < 32:
        return []
    ro_type, ro_length = struct.unpack_from("!HH", payload, 4)
    _invoke_id, command, roiv_length = struct.unpack_from("!HHH", payload, 8)
    event_type, event_length = struct.unpack_from("!HH", payload, 24)
    attr_count, attr_length = struct.unpack_from("!HH", payload, 28)
    if ro_type != ROIV_APDU or command not in EVENT_REPORT_COMMANDS or event_type != NOM_NOTI_MDS_CONNECT_INDIC:
        return []
    # Each length counts what follows it; a sample may cut the datagram, so captured <= declared.
    if not (roiv_length + 6 == ro_length and event_length + 14 == roiv_length and attr_length + 4 == event_length):
        return []
    if ro_length < len(payload) - 8:
        return []
    out: list[Observation] = []
    emit(out, Side.SRC, "intellivue.role", "monitor")
    emit(out, Side.SRC, "intellivue.message", "connect_indication")
    if not is_group_destination(frame):
        emit(out, Side.DST, "intellivue.role", "client")
    _system_model(payload, 32, min(len(payload), 32 + attr_length), attr_count, out)
    return out


def _system_model(payload: bytes, offset: int, end: int, count: int, out: list[Observation]) -> None:
    """NOM_ATTR_ID_MODEL from the attribute list: manufacturer and model number of the monitor."""
    for _ in range(count):
        if offset + 4 > end:
            return
        attribute_id, length = struct.unpack_from("!HH", payload, offset)
        value = payload[offset + 4 : offset + 4 + length]
        if attribute_id == NOM_ATTR_ID_MODEL and offset + 4 + length <= end:
            manufacturer, rest = _variable_label(value)
            model, _ = _variable_label(rest)
            emit(out, Side.SRC, "intellivue.manufacturer", manufacturer)
            emit(out, Side.SRC, "intellivue.model", model)
            return
        offset += 4 + length


def _variable_label(data: bytes) -> tuple[bytes | None, bytes]:
    """VariableLabel {length, value padded to an even length}: (value without NULs, the bytes after)."""
    if len(data) < 2:
        return None, b""
    length = struct.unpack_from("!H", data, 0)[0]
    if 2 + length > len(data):
        return None, b""
    return data[2 : 2 + length].rstrip(b"\0"), data[2 + length + (length & 1) :]
