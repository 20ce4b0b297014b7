"""DICOM upper layer association PDUs: AE titles, SOP classes, implementation of either end.

Layouts are DICOM PS3.8 (Network Communication Support for Message Exchange):
- 9.3.1 PDU header: PDU-type (1 byte), reserved (1), PDU-length (4, big endian, counts the bytes after it).
- 9.3.2 A-ASSOCIATE-RQ (Table 9-11): protocol-version (2 bytes, bit 0 set = version 1), reserved (2),
  called AE title (16, offset 10), calling AE title (16, offset 26), reserved (32), then the variable items
  from offset 74: one Application Context item (9.3.2.1, type 0x10), Presentation Context items
  (9.3.2.2, type 0x20: context ID, 3 reserved bytes, then sub-items 0x30 Abstract Syntax and 0x40
  Transfer Syntax), and one User Information item (9.3.2.3, type 0x50). Every item and sub-item is
  type (1), reserved (1), item-length (2, big endian), value.
- 9.3.3 A-ASSOCIATE-AC (Table 9-17): the same fixed part (the AE title fields are echoed, not tested),
  Presentation Context items 0x21 (no abstract syntax in them) and a User Information item.
- 9.3.4 A-ASSOCIATE-RJ (Table 9-21): PDU-length 4; reserved, result, source, reason/diag.
- User Information sub-items (PS3.8 Annex D.1 and PS3.7 Annex D.3.3.2): 0x51 maximum length,
  0x52 Implementation Class UID, 0x55 Implementation Version Name.

Detection is by content (the PDU header, a plausible length, protocol version 1, zero reserved fields,
printable AE titles, the application context item first), not by port: DICOM runs on 104, 11112, 4242
and whatever a site configured.

What is deliberately not read: P-DATA-TF PDUs (type 0x04, they carry the datasets, i.e. patient data)
and every User Information sub-item other than 0x52/0x55 (0x58 User Identity carries a user name and
possibly a password). AE titles and UIDs name applications, never patients.

A sample holds the first bytes of a frame only, so PDUs are routinely cut: every item that was captured
whole is used; an item cut short is skipped (a truncated UID would name a different SOP class).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from medseg_xdp.fingerprint.frame import TCP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
FIXED_FIELDS_LEN = 68  # PDU-length of an RQ/AC with no items: version .. reserved (PS3.8 Table 9-11)
MAX_ASSOCIATE_PDU_LEN = 1 << 20  # 128 presentation contexts with many transfer syntaxes stay far below
ITEMS_OFFSET = 74
CALLED_AE, CALLING_AE = slice(10, 26), slice(26, 42)

ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_USER_INFORMATION = 0x50
SUBITEM_IMPLEMENTATION_CLASS_UID = 0x52
SUBITEM_IMPLEMENTATION_VERSION = 0x55

UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1: digits and dots, at most 64 characters

# The common SOP classes (names as in PS3.6 Table A-1, less a trailing "SOP Class") and a coarse service.
SOP_CLASSES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.1": ("Verification", "verification"),
    "1.2.840.10008.5.1.4.1.1.1": ("Computed Radiography Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.1.1": ("Digital X-Ray Image Storage - For Presentation", "storage"),
    "1.2.840.10008.5.1.4.1.1.1.1.1": ("Digital X-Ray Image Storage - For Processing", "storage"),
    "1.2.840.10008.5.1.4.1.1.1.2": ("Digital Mammography X-Ray Image Storage - For Presentation", "storage"),
    "1.2.840.10008.5.1.4.1.1.1.2.1": ("Digital Mammography X-Ray Image Storage - For Processing", "storage"),
    "1.2.840.10008.5.1.4.1.1.1.3": ("Digital Intra-Oral X-Ray Image Storage - For Presentation", "storage"),
    "1.2.840.10008.5.1.4.1.1.2": ("CT Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.2.1": ("Enhanced CT Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.3.1": ("Ultrasound Multi-frame Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.4": ("MR Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.4.1": ("Enhanced MR Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.6.1": ("Ultrasound Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.6.2": ("Enhanced US Volume Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.7": ("Secondary Capture Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.9.1.1": ("12-lead ECG Waveform Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.9.1.3": ("Ambulatory ECG Waveform Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.11.1": ("Grayscale Softcopy Presentation State Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.12.1": ("X-Ray Angiographic Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.12.2": ("X-Ray Radiofluoroscopic Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.13.1.3": ("Breast Tomosynthesis Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.20": ("Nuclear Medicine Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.66": ("Raw Data Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.77.1.4": ("VL Photographic Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.88.11": ("Basic Text SR Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.88.22": ("Enhanced SR Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.88.33": ("Comprehensive SR Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.88.67": ("X-Ray Radiation Dose SR Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.104.1": ("Encapsulated PDF Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.128": ("Positron Emission Tomography Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.130": ("Enhanced PET Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.481.1": ("RT Image Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.481.2": ("RT Dose Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.481.3": ("RT Structure Set Storage", "storage"),
    "1.2.840.10008.5.1.4.1.1.481.5": ("RT Plan Storage", "storage"),
    "1.2.840.10008.5.1.4.31": ("Modality Worklist Information Model - FIND", "worklist"),
    "1.2.840.10008.5.1.4.32.1": ("General Purpose Worklist Information Model - FIND", "worklist"),
    "1.2.840.10008.5.1.4.1.2.1.1": ("Patient Root Query/Retrieve Information Model - FIND", "query"),
    "1.2.840.10008.5.1.4.1.2.1.2": ("Patient Root Query/Retrieve Information Model - MOVE", "query"),
    "1.2.840.10008.5.1.4.1.2.1.3": ("Patient Root Query/Retrieve Information Model - GET", "query"),
    "1.2.840.10008.5.1.4.1.2.2.1": ("Study Root Query/Retrieve Information Model - FIND", "query"),
    "1.2.840.10008.5.1.4.1.2.2.2": ("Study Root Query/Retrieve Information Model - MOVE", "query"),
    "1.2.840.10008.5.1.4.1.2.2.3": ("Study Root Query/Retrieve Information Model - GET", "query"),
    "1.2.840.10008.1.20.1": ("Storage Commitment Push Model", "commitment"),
    "1.2.840.10008.3.1.2.3.3": ("Modality Performed Procedure Step", "mpps"),
}

# UIDs not in the table still tell their service by where PS3.4 registered them.
SERVICE_BY_PREFIX = (
    ("1.2.840.10008.5.1.4.1.1.", "storage"),  # PS3.4 Annex B storage SOP classes
    ("1.2.840.10008.5.1.4.1.2.", "query"),  # PS3.4 Annex C query/retrieve information models
)


def parse(frame: Frame) -> list[Observation]:
    """Observations from an A-ASSOCIATE-RQ, -AC or -RJ at the start of a TCP payload; [] otherwise."""
    payload = frame.payload
    if frame.proto != TCP or not payload:
        return []
    pdu_type = payload[0]
    if pdu_type == A_ASSOCIATE_RJ:
        return _reject(payload)
    if pdu_type not in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC) or not _plausible_associate(payload):
        return []
    out: list[Observation] = []
    if pdu_type == A_ASSOCIATE_RQ:
        emit(out, Side.SRC, "dicom.role", "scu")
        emit(out, Side.DST, "dicom.role", "scp")
        emit(out, Side.SRC, "dicom.calling_ae", _ae_title(payload[CALLING_AE]))
        emit(out, Side.DST, "dicom.called_ae", _ae_title(payload[CALLED_AE]))
    else:
        emit(out, Side.SRC, "dicom.role", "scp")
        emit(out, Side.DST, "dicom.role", "scu")
    _variable_items(payload, pdu_type, out)
    return _unique(out)


def _plausible_associate(payload: bytes) -> bool:
    """The fixed part of an RQ/AC (PS3.8 9.3.2, 9.3.3) looks right, at least up to the AE titles.

    Fewer bytes than the AE titles would leave ten bytes of evidence: too little to claim a protocol
    (a 512-byte sample always holds them unless TCP cut the PDU's first segment that short).
    """
    if len(payload) < CALLING_AE.stop:
        return False
    pdu_length = struct.unpack_from("!I", payload, 2)[0]
    version = struct.unpack_from("!H", payload, 6)[0]
    if payload[1] != 0 or not FIXED_FIELDS_LEN <= pdu_length <= MAX_ASSOCIATE_PDU_LEN:
        return False
    if not version & 0x0001 or payload[8:10] != b"\0\0":
        return False
    # The AC echoes the RQ's AE titles (PS3.8 9.3.3), so both PDUs carry valid ones.
    if not _ae_title(payload[CALLED_AE]) or not _ae_title(payload[CALLING_AE]):
        return False
    if len(payload) > ITEMS_OFFSET and payload[ITEMS_OFFSET] != ITEM_APPLICATION_CONTEXT:
        return False  # PS3.8 Table 9-11/9-17: the application context item comes first
    return True


def _ae_title(raw: bytes) -> str:
    """The AE title, or "" when the field is not one (PS3.5 AE: 16 bytes, no control chars or backslash)."""
    text = raw.rstrip(b"\0 ").lstrip(b" ")  # spaces are padding; some stacks pad with NULs
    if not text or any(b < 0x20 or b > 0x7E or b == 0x5C for b in text):
        return ""
    return text.decode("ascii")


def _reject(payload: bytes) -> list[Observation]:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): sent by the acceptor, so the sender is the SCP.

    Ten bytes in a segment of their own (the acceptor closes the connection after it), with valid
    result (1, 2), source (1-3) and reason (at most 7, Table 9-21) values.
    """
    if len(payload) != 10 or payload[1] != 0 or struct.unpack_from("!I", payload, 2)[0] != 4:
        return []
    result, source, reason = payload[7], payload[8], payload[9]
    if payload[6] != 0 or result not in (1, 2) or source not in (1, 2, 3) or reason > 7:
        return []
    out: list[Observation] = []
    emit(out, Side.SRC, "dicom.role", "scp")
    emit(out, Side.DST, "dicom.role", "scu")
    return out


def _items(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, bool]]:
    """(type, value start, value end, complete) for each item header inside data[start:end]."""
    offset = start
    while offset + 4 <= end:
        item_type = data[offset]
        length = struct.unpack_from("!H", data, offset + 2)[0]
        value_end = offset + 4 + length
        yield item_type, offset + 4, min(value_end, end), value_end <= end
        offset = value_end


def _variable_items(payload: bytes, pdu_type: int, out: list[Observation]) -> None:
    pdu_end = min(len(payload), 6 + struct.unpack_from("!I", payload, 2)[0])
    for item_type, start, end, _complete in _items(payload, ITEMS_OFFSET, pdu_end):
        # Containers cut short are still walked: their sub-items that were captured whole count.
        if item_type == ITEM_PRESENTATION_CONTEXT_RQ and pdu_type == A_ASSOCIATE_RQ:
            _presentation_context(payload, start, end, out)
        elif item_type == ITEM_USER_INFORMATION:
            _user_information(payload, start, end, out)


def _presentation_context(payload: bytes, start: int, end: int, out: list[Observation]) -> None:
    """PS3.8 9.3.2.2: context ID, 3 reserved bytes, then one abstract syntax and transfer syntaxes."""
    for sub_type, value_start, value_end, complete in _items(payload, start + 4, end):
        if sub_type == ITEM_ABSTRACT_SYNTAX and complete:
            uid = _uid(payload[value_start:value_end])
            if uid:
                name, service = _sop_class(uid)
                emit(out, Side.SRC, "dicom.sop_class", name)
                emit(out, Side.SRC, "dicom.service", service)


def _user_information(payload: bytes, start: int, end: int, out: list[Observation]) -> None:
    """PS3.7 D.3.3.2: only the implementation's identity; never 0x58 (user identity: credentials)."""
    for sub_type, value_start, value_end, complete in _items(payload, start, end):
        if not complete:
            continue
        value = payload[value_start:value_end]
        if sub_type == SUBITEM_IMPLEMENTATION_CLASS_UID:
            emit(out, Side.SRC, "dicom.implementation_class_uid", _uid(value))
        elif sub_type == SUBITEM_IMPLEMENTATION_VERSION:
            emit(out, Side.SRC, "dicom.implementation_version", value.rstrip(b"\0 "))


def _uid(raw: bytes) -> str:
    """A UID, or "" for anything else. Some stacks pad UIDs with a NUL to an even length."""
    text = raw.rstrip(b"\0 ").decode("ascii", "replace")
    return text if len(text) <= 64 and UID_RE.fullmatch(text) else ""


def _sop_class(uid: str) -> tuple[str, str]:
    """(name, coarse service); an unknown UID is its own name and its service comes from its arc."""
    if uid in SOP_CLASSES:
        return SOP_CLASSES[uid]
    for prefix, service in SERVICE_BY_PREFIX:
        if uid.startswith(prefix):
            return uid, service
    return uid, ""


def _unique(observations: list[Observation]) -> list[Observation]:
    """One copy of each observation, first-seen order: storescu proposes each SOP class twice or more."""
    return list(dict.fromkeys(observations))
