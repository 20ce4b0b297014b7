"""Clinical parsers (DICOM, HL7, IntelliVue, GE Unity) and service ports, on real and hostile bytes.

Real bytes: tests/data/dicom-*.pcap (DCMTK talking to itself, see tests/data/README.md) and nDPI's
hl7.pcap from shared/captures. Pure Python, no root.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg_xdp.fingerprint.frame import Observation, Side, decode
from medseg_xdp.fingerprint.parsers import dicom, ge_unity, hl7, intellivue, services

DATA = Path(__file__).resolve().parent / "data"
NDPI = Path(__file__).resolve().parents[2] / "shared" / "captures" / "ndpi"
PARSERS: dict[str, Callable] = {
    "dicom": dicom.parse,
    "hl7": hl7.parse,
    "intellivue": intellivue.parse,
    "ge_unity": ge_unity.parse,
    "services": services.parse,
}
TCP, UDP = 6, 17
SAMPLE = 512  # the XDP program's snaplen
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers


def frame(
    proto: int,
    payload: bytes,
    sport: int,
    dport: int,
    *,
    flags: int = 0x18,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    dst_mac: str = "02:00:00:00:00:02",
) -> bytes:
    """An Ethernet/IPv4/TCP-or-UDP frame around payload (checksums zero: nothing reads them)."""
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000001") + b"\x08\x00"
    return eth + ip + l4


def observe(parser: Callable, data: bytes) -> list[Observation]:
    observations = parser(decode(data))
    assert isinstance(observations, list)
    for o in observations:
        assert isinstance(o, Observation) and isinstance(o.side, Side)
        assert isinstance(o.value, str) and 0 < len(o.value) <= 200 and o.value.isprintable(), o
    return observations


def triples(observations: list[Observation]) -> list[tuple[Side, str, str]]:
    return [(o.side, o.signal, o.value) for o in observations]


def values(observations: list[Observation], side: Side, signal: str) -> list[str]:
    return [o.value for o in observations if o.side == side and o.signal == signal]


def pcap_frames(path: Path) -> list[bytes]:
    if not path.exists():
        pytest.skip(f"{path} is absent")
    from scapy.all import raw, rdpcap

    return [raw(packet) for packet in rdpcap(str(path))]


def payload_of(data: bytes) -> bytes:
    return decode(data).payload


def first_frame_with(path: Path, prefix: bytes) -> bytes:
    return next(f for f in pcap_frames(path) if payload_of(f).startswith(prefix))


@pytest.fixture(scope="module")
def cstore_rq() -> bytes:
    return first_frame_with(DATA / "dicom-cstore.pcap", b"\x01\x00")


@pytest.fixture(scope="module")
def cstore_ac() -> bytes:
    return first_frame_with(DATA / "dicom-cstore.pcap", b"\x02\x00")


@pytest.fixture(scope="module")
def cecho_rq() -> bytes:
    return first_frame_with(DATA / "dicom-cecho.pcap", b"\x01\x00")


@pytest.fixture(scope="module")
def hl7_frames() -> list[bytes]:
    return [f for f in pcap_frames(NDPI / "hl7.pcap") if payload_of(f)[:4] == b"\x0bMSH"]


@functools.cache
def real_frames() -> list[bytes]:
    """Every frame of the recorded captures, for the mutation tests."""
    frames = [f for name in ("cstore", "cecho", "reject") for f in pcap_frames(DATA / f"dicom-{name}.pcap")]
    if (NDPI / "hl7.pcap").exists():
        frames += pcap_frames(NDPI / "hl7.pcap")
    return frames


def cut_pdu(data: bytes, pdu_bytes: int) -> bytes:
    """The frame with its TCP payload cut to pdu_bytes, as a short sample would hold it."""
    return data[: len(data) - len(payload_of(data)) + pdu_bytes]


# ---------------------------------------------------------------- DICOM (PS3.8)


def associate_rq(called: bytes, calling: bytes, abstract_syntaxes: list[str], user_items: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ PDU built from PS3.8 9.3.2 (for cases DCMTK does not produce)."""

    def item(item_type: int, value: bytes) -> bytes:
        return struct.pack("!BBH", item_type, 0, len(value)) + value

    body = item(0x10, b"1.2.840.10008.3.1.1.1")
    for number, uid in enumerate(abstract_syntaxes):
        sub = item(0x30, uid.encode()) + item(0x40, b"1.2.840.10008.1.2")
        body += item(0x20, bytes([2 * number + 1, 0, 0, 0]) + sub)
    body += item(0x50, item(0x51, struct.pack("!I", 16384)) + user_items)
    fixed = struct.pack("!HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    return struct.pack("!BBI", 1, 0, len(fixed) + len(body)) + fixed + body


def test_dicom_cstore_request_names_both_ends(cstore_rq: bytes) -> None:
    obs = observe(dicom.parse, cstore_rq)
    assert values(obs, Side.SRC, "dicom.role") == ["scu"]
    assert values(obs, Side.DST, "dicom.role") == ["scp"]
    assert values(obs, Side.SRC, "dicom.calling_ae") == ["STORESCU"]
    assert values(obs, Side.DST, "dicom.called_ae") == ["ANY-SCP"]
    sop_classes = values(obs, Side.SRC, "dicom.sop_class")
    assert "CT Image Storage" in sop_classes and "MR Image Storage" in sop_classes
    assert "storage" in values(obs, Side.SRC, "dicom.service")
    assert values(obs, Side.SRC, "dicom.implementation_class_uid") == ["1.2.276.0.7230010.3.0.3.6.7"]
    assert values(obs, Side.SRC, "dicom.implementation_version") == ["OFFIS_DCMTK_367"]
    assert len(obs) == len(set(obs)), "storescu proposes each SOP class twice: emitted once"


def test_dicom_accept_identifies_the_scp(cstore_ac: bytes) -> None:
    obs = observe(dicom.parse, cstore_ac)
    assert values(obs, Side.SRC, "dicom.role") == ["scp"]
    assert values(obs, Side.DST, "dicom.role") == ["scu"]
    assert values(obs, Side.SRC, "dicom.implementation_version")[0].startswith("OFFIS_DCMTK_")
    assert not values(obs, Side.SRC, "dicom.sop_class"), "an AC names no abstract syntax"


def test_dicom_found_by_content_on_an_unknown_port(cecho_rq: bytes) -> None:
    assert decode(cecho_rq).dport == 40104
    obs = observe(dicom.parse, cecho_rq)
    assert values(obs, Side.SRC, "dicom.calling_ae") == ["ECHOSCU"]
    assert values(obs, Side.DST, "dicom.called_ae") == ["ANY-SCP"]
    assert values(obs, Side.SRC, "dicom.sop_class") == ["Verification"]
    assert values(obs, Side.SRC, "dicom.service") == ["verification"]
    assert values(obs, Side.SRC, "dicom.implementation_version") == ["OFFIS_DCMTK_367"]


def test_dicom_request_cut_at_200_bytes_keeps_the_ae_titles(cstore_rq: bytes) -> None:
    obs = observe(dicom.parse, cut_pdu(cstore_rq, 200))
    assert values(obs, Side.SRC, "dicom.calling_ae") == ["STORESCU"]
    assert values(obs, Side.DST, "dicom.called_ae") == ["ANY-SCP"]
    assert not values(obs, Side.SRC, "dicom.implementation_version")


def test_dicom_request_in_a_512_byte_sample(cstore_rq: bytes) -> None:
    obs = observe(dicom.parse, cstore_rq[:SAMPLE])
    assert values(obs, Side.SRC, "dicom.calling_ae") == ["STORESCU"]
    # storescu's first contexts: the whole items that fit, nothing from the one that was cut
    assert values(obs, Side.SRC, "dicom.sop_class")[:2] == ["Ambulatory ECG Waveform Storage", "Basic Text SR Storage"]
    full = set(observe(dicom.parse, cstore_rq))
    assert set(obs) <= full


@pytest.mark.parametrize("name", ["cstore_rq", "cstore_ac", "cecho_rq"])
def test_dicom_every_truncation_is_a_subset_of_the_whole(name: str, request: pytest.FixtureRequest) -> None:
    """A cut PDU never invents a value: a truncated UID or AE title is dropped, not emitted."""
    data: bytes = request.getfixturevalue(name)
    whole = set(observe(dicom.parse, data))
    step = 1 if len(data) < 2000 else 7
    for end in range(0, len(data), step):
        assert set(observe(dicom.parse, data[:end])) <= whole, end


def test_dicom_ignores_data_and_release_pdus() -> None:
    for data in pcap_frames(DATA / "dicom-cstore.pcap"):
        if payload_of(data)[:1] not in (b"\x01", b"\x02"):
            assert observe(dicom.parse, data) == []


def test_dicom_table_services_and_unknown_uids() -> None:
    pdu = associate_rq(
        b"WORKLIST", b"US_CART_3",
        ["1.2.840.10008.5.1.4.31", "1.2.840.10008.3.1.2.3.3", "1.2.840.10008.1.20.1",
         "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.1.999.1", "1.2.3.4"],
    )
    obs = observe(dicom.parse, frame(TCP, pdu, 50000, 104))
    assert values(obs, Side.SRC, "dicom.sop_class") == [
        "Modality Worklist Information Model - FIND", "Modality Performed Procedure Step",
        "Storage Commitment Push Model", "Study Root Query/Retrieve Information Model - FIND",
        "1.2.840.10008.5.1.4.1.1.999.1", "1.2.3.4",
    ]
    assert values(obs, Side.SRC, "dicom.service") == ["worklist", "mpps", "commitment", "query", "storage"]
    assert all(uid in dicom.SOP_CLASSES for uid in ("1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"))


def test_dicom_never_reads_user_identity() -> None:
    """Sub-item 0x58 (PS3.7 D.3.3.7) carries a user name and password: nothing of it is emitted."""
    identity = struct.pack("!BBHBBH", 0x58, 0, 2 + 2 + 5 + 2 + 6, 2, 0, 5) + b"alice" + struct.pack("!H", 6) + b"secret"
    obs = observe(dicom.parse, frame(TCP, associate_rq(b"PACS", b"CT01", ["1.2.840.10008.1.1"], identity), 50000, 104))
    assert values(obs, Side.SRC, "dicom.calling_ae") == ["CT01"]
    assert not any("alice" in o.value or "secret" in o.value for o in obs)


def test_dicom_pynetdicom_request() -> None:
    """An independent encoder (pynetdicom) agrees with the parser."""
    pytest.importorskip("pynetdicom")
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
        UserIdentityNegotiation,
    )
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "CT_SCANNER_01"
    primitive.called_ae_title = "PACS_ARCHIVE"
    contexts = [build_context("1.2.840.10008.5.1.4.1.1.2"), build_context("1.2.840.10008.5.1.4.31")]
    for number, context in enumerate(contexts):
        context.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = contexts
    max_length, class_uid = MaximumLengthNotification(), ImplementationClassUIDNotification()
    version, identity = ImplementationVersionNameNotification(), UserIdentityNegotiation()
    max_length.maximum_length_received = 16382
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    version.implementation_version_name = "PYNETDICOM_304"
    identity.user_identity_type, identity.primary_field, identity.secondary_field = 2, b"alice", b"secret"
    primitive.user_information = [max_length, class_uid, version, identity]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    obs = observe(dicom.parse, frame(TCP, pdu.encode(), 50000, 4242))
    assert values(obs, Side.SRC, "dicom.calling_ae") == ["CT_SCANNER_01"]
    assert values(obs, Side.DST, "dicom.called_ae") == ["PACS_ARCHIVE"]
    assert values(obs, Side.SRC, "dicom.sop_class") == [
        "CT Image Storage",
        "Modality Worklist Information Model - FIND",
    ]
    assert values(obs, Side.SRC, "dicom.implementation_version") == ["PYNETDICOM_304"]
    assert not any("alice" in o.value or "secret" in o.value for o in obs)


def test_dicom_reject_recorded_from_storescp() -> None:
    rj = first_frame_with(DATA / "dicom-reject.pcap", b"\x03\x00")
    obs = observe(dicom.parse, rj)
    assert triples(obs) == [(Side.SRC, "dicom.role", "scp"), (Side.DST, "dicom.role", "scu")]


def test_dicom_reject() -> None:
    # rejected-permanent (1), by the service user (1): calling AE title not recognized (3)
    rj = struct.pack("!BBIBBBB", 3, 0, 4, 0, 1, 1, 3)
    obs = observe(dicom.parse, frame(TCP, rj, 104, 50000))
    assert values(obs, Side.SRC, "dicom.role") == ["scp"] and values(obs, Side.DST, "dicom.role") == ["scu"]
    assert observe(dicom.parse, frame(TCP, rj[:6] + b"\x00\x09\x01\x07", 104, 50000)) == []  # result 9
    assert observe(dicom.parse, frame(TCP, rj + b"\x04", 104, 50000)) == []
    assert observe(dicom.parse, frame(TCP, rj[:9], 104, 50000)) == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p[:1] + b"\x01" + p[2:],  # reserved byte set
        lambda p: p[:2] + struct.pack("!I", 10) + p[6:],  # PDU length below the fixed part
        lambda p: p[:2] + struct.pack("!I", 1 << 30) + p[6:],  # PDU length of a gigabyte
        lambda p: p[:6] + b"\x00\x02" + p[8:],  # protocol version without bit 0
        lambda p: p[:12] + b"\x1b[31m" + p[17:],  # a terminal escape in the called AE title
        lambda p: p[:26] + b" " * 16 + p[42:],  # an all-space calling AE title
        lambda p: p[:74] + b"\x20" + p[75:],  # first item is not the application context
    ],
)
def test_dicom_rejects_implausible_headers(cecho_rq: bytes, mangle: Callable[[bytes], bytes]) -> None:
    pdu = payload_of(cecho_rq)
    assert observe(dicom.parse, frame(TCP, mangle(pdu), 50000, 104)) == []


def test_dicom_only_on_tcp(cecho_rq: bytes) -> None:
    assert observe(dicom.parse, frame(UDP, payload_of(cecho_rq), 50000, 104)) == []


def test_dicom_needs_the_ae_titles(cecho_rq: bytes) -> None:
    """Ten header bytes alone are too little evidence to call a stream DICOM."""
    assert observe(dicom.parse, cut_pdu(cecho_rq, 41)) == []
    assert observe(dicom.parse, cut_pdu(cecho_rq, 42)) != []


# ---------------------------------------------------------------- HL7 v2 (chapter 2) over MLLP

FAKE_ORU = (
    b"\x0bMSH|^~\\&|MONITOR_GW^1.2.840.114350^ISO|ICU_EAST|EPIC|CITY_HOSP|20240101120000||ORU^R01^ORU_R01|"
    b"MSG00001|P|2.5.1\r"
    b"PID|1||PAT-12345^^^CITY_HOSP^MR||ZZFAKENAME^QQTESTPATIENT||19700101|F\r"
    b"OBX|1|NM|8867-4^Heart rate^LN||72|/min|||||F\r\x1c\r"
)


def test_hl7_adt_from_the_ndpi_capture(hl7_frames: list[bytes]) -> None:
    adt = hl7_frames[0]
    obs = observe(hl7.parse, adt)
    assert values(obs, Side.SRC, "hl7.role") == ["sender"] and values(obs, Side.DST, "hl7.role") == ["receiver"]
    assert values(obs, Side.SRC, "hl7.sending_application") == ["SENDING_APPLICATION"]
    assert values(obs, Side.SRC, "hl7.sending_facility") == ["SENDING_FACILITY"]
    assert values(obs, Side.DST, "hl7.receiving_application") == ["RECEIVING_APPLICATION"]
    assert values(obs, Side.DST, "hl7.receiving_facility") == ["RECEIVING_FACILITY"]
    assert values(obs, Side.SRC, "hl7.message_type") == ["ADT^A01"]
    assert values(obs, Side.SRC, "hl7.version") == ["2.3"]
    # the capture's PID holds a (cartoon) name and address: none of it may come out
    assert not any(word in o.value for o in obs for word in ("MOUSE", "MICKEY", "Main St", "Penicillin"))


def test_hl7_ack_flips_the_roles(hl7_frames: list[bytes]) -> None:
    adt, ack = hl7_frames[0], hl7_frames[1]
    obs = observe(hl7.parse, ack)
    assert values(obs, Side.SRC, "hl7.role") == ["receiver"] and values(obs, Side.DST, "hl7.role") == ["sender"]
    assert values(obs, Side.SRC, "hl7.message_type") == ["ACK"]
    assert values(obs, Side.SRC, "hl7.receiving_application") == ["RECEIVING_APPLICATION"]
    assert values(obs, Side.DST, "hl7.sending_application") == ["SENDING_APPLICATION"]
    # both directions attach the same names to the same host
    by_host: dict[str, set[tuple[str, str]]] = {}
    for data in (adt, ack):
        decoded = decode(data)
        for o in hl7.parse(decoded):
            host = decoded.src_ip if o.side == Side.SRC else decoded.dst_ip
            by_host.setdefault(host, set()).add((o.signal, o.value))
    assert ("hl7.receiving_application", "RECEIVING_APPLICATION") in by_host["10.0.0.126"]
    assert not any(signal.startswith("hl7.sending") for signal, _ in by_host["10.0.0.126"])
    assert not any(signal.startswith("hl7.receiving") for signal, _ in by_host["10.0.0.155"])


def test_hl7_oru_from_a_monitor_gateway() -> None:
    obs = observe(hl7.parse, frame(TCP, FAKE_ORU, 50123, 2575))
    assert values(obs, Side.SRC, "hl7.sending_application") == ["MONITOR_GW"]
    assert values(obs, Side.SRC, "hl7.sending_facility") == ["ICU_EAST"]
    assert values(obs, Side.DST, "hl7.receiving_application") == ["EPIC"]
    assert values(obs, Side.SRC, "hl7.message_type") == ["ORU^R01"]
    assert values(obs, Side.SRC, "hl7.version") == ["2.5.1"]


PID_AND_OBX = FAKE_ORU[FAKE_ORU.index(b"PID|") :]


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n", b"\x1c\r"])
@pytest.mark.parametrize(
    "msh",
    [
        FAKE_ORU[: FAKE_ORU.index(b"\rPID")],  # a full MSH
        b"\x0bMSH|^~\\&|APP|FAC|RAPP|RFAC|20240101||ORU^R01",  # MSH-10..12 absent: PID fields would land there
        b"\x0bMSH|^~\\&|APP|FAC",  # MSH-5..12 absent
    ],
)
def test_hl7_never_reads_beyond_msh(msh: bytes, terminator: bytes) -> None:
    message = msh + terminator + PID_AND_OBX
    secrets = ("ZZFAKENAME", "QQTESTPATIENT", "PAT-12345", "19700101", "Heart rate", "8867", "PID", "OBX")
    for end in range(len(message) + 1):
        obs = observe(hl7.parse, frame(TCP, message[:end], 50123, 2575))
        assert not any(secret in o.value for o in obs for secret in secrets), (end, obs)


def test_hl7_truncated_msh_emits_only_complete_fields() -> None:
    cut = FAKE_ORU[: FAKE_ORU.index(b"|P|2.5.1") + 3]  # MSH-12 (and the segment end) not captured
    obs = observe(hl7.parse, frame(TCP, cut, 50123, 2575))
    assert values(obs, Side.SRC, "hl7.message_type") == ["ORU^R01"]
    assert values(obs, Side.SRC, "hl7.version") == []
    cut = FAKE_ORU[: FAKE_ORU.index(b"MONITOR_GW") + 7]  # MSH-3 cut: "MONITOR" would be wrong
    assert observe(hl7.parse, frame(TCP, cut, 50123, 2575)) == []


def test_hl7_escapes_and_other_delimiters() -> None:
    message = b"\x0bMSH#$~\\&#LAB\\T\\SYS#MAIN$X#LIS#MAIN#20240101##ORM$O01#1#P#2.4\r\x1c\r"
    obs = observe(hl7.parse, frame(TCP, message, 40000, 6661))
    assert values(obs, Side.SRC, "hl7.sending_application") == ["LAB&SYS"]
    assert values(obs, Side.SRC, "hl7.sending_facility") == ["MAIN"]
    assert values(obs, Side.SRC, "hl7.message_type") == ["ORM^O01"]


@pytest.mark.parametrize(
    "payload",
    [
        FAKE_ORU[1:],  # no MLLP start block
        b"\x0bMSHA^~\\&|APP|FAC\r",  # alphanumeric "field separator"
        b"\x0bMSH|^|APP|FAC|R|F|T||ADT^A01|1|P|2.3\r",  # one encoding character
        b"\x0bMSH|^~\\&|APP|FAC|R|F|T||",  # MSH-9 not captured: the roles are unknown
        b"\x0bMSH\r",
    ],
)
def test_hl7_not_hl7(payload: bytes) -> None:
    assert observe(hl7.parse, frame(TCP, payload, 40000, 6661)) == []


def test_hl7_only_on_tcp() -> None:
    assert observe(hl7.parse, frame(UDP, FAKE_ORU, 40000, 2575)) == []


def test_hl7_every_truncation_is_a_subset_of_the_whole(hl7_frames: list[bytes]) -> None:
    for data in hl7_frames + [frame(TCP, FAKE_ORU, 50123, 2575)]:
        whole = set(observe(hl7.parse, data))
        for end in range(len(data)):
            assert set(observe(hl7.parse, data[:end])) <= whole, end


# ---------------------------------------------------------------- Philips IntelliVue Data Export

SESSION_DATA = bytes.fromhex("0508130100160102800014020002")  # PIPG pp. 298-299 (unverified)


def session_message(spdu_type: int, body: bytes) -> bytes:
    if len(body) < 255:
        return bytes([spdu_type, len(body)]) + body
    return bytes([spdu_type, 0xFF]) + struct.pack("!H", len(body)) + body


def association(spdu_type: int, filler: int = 200) -> bytes:
    """Session header, session data, presentation header (0xC1 and its LI) and a zero body."""
    presentation = session_message(0xC1, bytes(filler))
    return session_message(spdu_type, SESSION_DATA + presentation)


def connect_indication(model: bytes = b"M8007A", manufacturer: bytes = b"Philips") -> bytes:
    def label(text: bytes) -> bytes:
        value = text + b"\0"
        return struct.pack("!H", len(value)) + value + b"\0" * (len(value) & 1)

    attributes = [(0x0986, b"\x00\x01\x11\x4d"), (0x0928, label(manufacturer) + label(model))]
    body = b"".join(struct.pack("!HH", a, len(v)) + v for a, v in attributes)
    attr_list = struct.pack("!HH", len(attributes), len(body)) + body
    event = struct.pack("!HHHIHH", 0x23, 0, 0, 0x00D6D400, 0x0D17, len(attr_list)) + attr_list
    roiv = struct.pack("!HHH", 0, 0, len(event)) + event
    return b"\x00\x00\x01\x00" + struct.pack("!HH", 1, len(roiv)) + roiv


def test_intellivue_association_request_and_accept() -> None:
    obs = observe(intellivue.parse, frame(UDP, association(0x0D), 51000, 24105))
    assert values(obs, Side.SRC, "intellivue.role") == ["client"]
    assert values(obs, Side.DST, "intellivue.role") == ["monitor"]
    assert values(obs, Side.SRC, "intellivue.message") == ["association_request"]
    obs = observe(intellivue.parse, frame(UDP, association(0x0E, 300), 24105, 51000))  # 3-byte LI
    assert values(obs, Side.SRC, "intellivue.role") == ["monitor"]
    assert values(obs, Side.SRC, "intellivue.message") == ["association_accept"]


def test_intellivue_release_refuse_abort() -> None:
    release = session_message(0x09, bytes.fromhex("c116") + bytes(22))
    obs = observe(intellivue.parse, frame(UDP, release, 51000, 24105))
    assert values(obs, Side.SRC, "intellivue.message") == ["release_request"]
    assert values(obs, Side.DST, "intellivue.role") == ["monitor"]
    obs = observe(intellivue.parse, frame(UDP, session_message(0x0C, bytes(8)), 24105, 51000))
    assert values(obs, Side.SRC, "intellivue.message") == ["association_refuse"]
    obs = observe(intellivue.parse, frame(UDP, session_message(0x19, bytes(8)), 24105, 51000))
    assert values(obs, Side.SRC, "intellivue.role") == ["monitor"]


@pytest.mark.parametrize(
    ("payload", "sport", "dport"),
    [
        (association(0x0D), 24105, 51000),  # a request from the monitor's port
        (association(0x0E), 51000, 24105),  # an accept sent to the monitor's port
        (association(0x0D)[:-1], 51000, 24105),  # LI does not match the datagram
        (association(0x0D), 24105, 24105),  # both ends on 24105
        (session_message(0x09, bytes(24)), 51000, 24105),  # release without a presentation header
        (b"\xe1\x00\x00\x02" + bytes(40), 24105, 51000),  # data export (patient data): never parsed
        (association(0x0D), 51000, 24106),  # another port
    ],
)
def test_intellivue_rejects(payload: bytes, sport: int, dport: int) -> None:
    assert observe(intellivue.parse, frame(UDP, payload, sport, dport)) == []


def test_intellivue_connect_indication() -> None:
    data = frame(UDP, connect_indication(), 24005, 24005, dst="255.255.255.255", dst_mac=BROADCAST_MAC)
    obs = observe(intellivue.parse, data)
    assert values(obs, Side.SRC, "intellivue.role") == ["monitor"]
    assert values(obs, Side.SRC, "intellivue.message") == ["connect_indication"]
    assert values(obs, Side.SRC, "intellivue.model") == ["M8007A"]
    assert values(obs, Side.SRC, "intellivue.manufacturer") == ["Philips"]
    assert not [o for o in obs if o.side == Side.DST], "a broadcast has no receiving device"
    broken = bytearray(connect_indication())
    broken[25] ^= 0x01  # event type
    assert observe(intellivue.parse, frame(UDP, bytes(broken), 24005, 24005)) == []


# ---------------------------------------------------------------- GE CARESCAPE / Unity


def time_sync(sender: str = "10.20.0.5", location: bytes = b"ICU3|12") -> bytes:
    payload = bytearray(64)
    payload[6:10] = ipaddress.IPv4Address(sender).packed
    payload[24 : 24 + len(location)] = location
    payload[60:64] = struct.pack("!I", 3_913_056_000)  # 2024, seconds since 1900
    return bytes(payload)


def test_ge_time_sync_broadcast_from_the_master() -> None:
    data = frame(UDP, time_sync(), 2000, 2000, src="10.20.0.5", dst="255.255.255.255", dst_mac=BROADCAST_MAC)
    obs = observe(ge_unity.parse, data)
    assert values(obs, Side.SRC, "ge_unity.message") == ["time_sync"]
    assert values(obs, Side.SRC, "ge_unity.role") == ["master"]
    assert values(obs, Side.SRC, "ge_unity.location") == ["ICU3|12"]
    full = frame(UDP, time_sync(location=b"CARDIO7|ROOM12"), 2000, 2000, src="10.20.0.5", dst_mac=BROADCAST_MAC)
    assert values(observe(ge_unity.parse, full), Side.SRC, "ge_unity.location") == ["CARDIO7|ROOM12"]


def test_ge_time_sync_unicast_has_no_location() -> None:
    obs = observe(ge_unity.parse, frame(UDP, time_sync(), 2000, 2000, src="10.20.0.5"))
    assert values(obs, Side.SRC, "ge_unity.message") == ["time_sync"]
    assert not values(obs, Side.SRC, "ge_unity.location")


@pytest.mark.parametrize(
    "payload",
    [
        time_sync() + bytes(42),  # 106 bytes: the frame size, not the payload size
        time_sync()[:63],
        bytes(random.Random(7).randbytes(64)),  # neither the sender's address nor a location
        time_sync(sender="10.99.0.1", location=b"\x1b[2J|x"),
    ],
)
def test_ge_time_sync_rejects(payload: bytes) -> None:
    data = frame(UDP, payload, 2000, 2000, src="10.20.0.5", dst_mac=BROADCAST_MAC)
    assert observe(ge_unity.parse, data) == []


def test_ge_heartbeat_only_to_a_group() -> None:
    beat = bytes(range(48))
    obs = observe(ge_unity.parse, frame(UDP, beat, 7000, 7000, dst="10.20.255.255", dst_mac=BROADCAST_MAC))
    assert values(obs, Side.SRC, "ge_unity.message") == ["heartbeat"]
    assert observe(ge_unity.parse, frame(UDP, beat, 7001, 7000)) == [], "unicast 7000 is also AFS"
    assert observe(ge_unity.parse, frame(UDP, b"x", 7000, 7000, dst_mac=BROADCAST_MAC)) == []
    assert observe(ge_unity.parse, frame(TCP, beat, 7000, 7000, dst_mac=BROADCAST_MAC)) == []


# ---------------------------------------------------------------- service ports


def test_services_tcp_handshake() -> None:
    frames = pcap_frames(DATA / "dicom-cstore.pcap")
    syn, syn_ack = frames[:2]
    assert triples(observe(services.parse, syn)) == [(Side.SRC, "service.uses", "tcp/11112")]
    assert triples(observe(services.parse, syn_ack)) == [
        (Side.SRC, "service.serves", "tcp/11112"),
        (Side.DST, "service.uses", "tcp/11112"),
    ]
    for data in frames[2:]:
        assert observe(services.parse, data) == [], "no SYN, no service claim"


def test_services_skip_ephemeral_ports() -> None:
    echo_syn_ack = pcap_frames(DATA / "dicom-cecho.pcap")[1]
    assert decode(echo_syn_ack).sport == 40104
    assert observe(services.parse, echo_syn_ack) == []
    assert observe(services.parse, frame(TCP, b"", 32767, 51000, flags=0x12)) != []
    assert observe(services.parse, frame(TCP, b"", 32768, 51000, flags=0x12)) == []
    assert observe(services.parse, frame(UDP, b"x", 53, 51000)) == [], "a DNS answer names no service of the client"
    assert observe(services.parse, frame(UDP, b"x", 51000, 40000)) == []


def test_services_udp() -> None:
    obs = observe(services.parse, frame(UDP, b"x", 51000, 53))
    assert triples(obs) == [(Side.SRC, "service.uses", "udp/53"), (Side.DST, "service.serves", "udp/53")]
    mdns = frame(UDP, b"x", 5353, 5353, dst="224.0.0.251", dst_mac="01:00:5e:00:00:fb")
    assert [(o.side, o.value) for o in observe(services.parse, mdns)] == [(Side.SRC, "udp/5353")]
    assert values(observe(services.parse, frame(UDP, b"x", 51000, 24105)), Side.DST, "service.serves") == ["udp/24105"]


# ---------------------------------------------------------------- hostile bytes


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_frames(data: bytes) -> None:
    for parser in PARSERS.values():
        observe(parser, data)


PROTOCOL_STARTS = [b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x0bMSH|", b"\x0d", b"\x0e", b"\x09", b"\x00\x00\x01\x00"]


@FUZZ
@given(
    st.sampled_from([TCP, UDP]),
    st.sampled_from([0x02, 0x12, 0x18]),
    st.sampled_from([104, 11112, 2575, 6661, 24105, 24005, 2000, 7000, 40104, 53]),
    st.booleans(),
    st.one_of(
        st.binary(max_size=470),
        st.builds(operator.add, st.sampled_from(PROTOCOL_STARTS), st.binary(max_size=470)),
    ),
)
def test_fuzz_payloads_on_clinical_ports(proto: int, flags: int, port: int, to_server: bool, payload: bytes) -> None:
    sport, dport = (51000, port) if to_server else (port, 51000)
    dst_mac = BROADCAST_MAC if to_server else "02:00:00:00:00:02"
    data = frame(proto, payload, sport, dport, flags=flags, dst_mac=dst_mac)
    for parser in PARSERS.values():
        observe(parser, data)


@FUZZ
@given(st.data())
def test_fuzz_mutated_real_frames(data: st.DataObject) -> None:
    frames = real_frames()
    original = bytearray(data.draw(st.sampled_from(frames)))
    for _ in range(data.draw(st.integers(0, 8))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    for parser in PARSERS.values():
        observe(parser, bytes(original[:cut]))
        observe(parser, bytes(original))


@FUZZ
@given(st.data())
def test_fuzz_length_fields_of_an_association_request(data: st.DataObject) -> None:
    """Every item length of a hand-built RQ replaced by hostile values (0, short, huge)."""
    version_name = b"\x55\x00\x00\x04ABCD"
    pdu = bytearray(associate_rq(b"PACS", b"CT01", ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.1"], version_name))
    item_types = (0x10, 0x20, 0x30, 0x40, 0x50, 0x51, 0x55)
    offsets = [i for i in range(74, len(pdu) - 3) if pdu[i] in item_types and pdu[i + 1] == 0]
    for offset in data.draw(st.lists(st.sampled_from(offsets), max_size=4)):
        pdu[offset + 2 : offset + 4] = struct.pack("!H", data.draw(st.sampled_from([0, 1, 3, 4, 0x7FFF, 0xFFFF])))
    observe(dicom.parse, frame(TCP, bytes(pdu), 50000, 104))
