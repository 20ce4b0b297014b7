"""GE CARESCAPE / Unity network: time-sync broadcasts (with the master's location) and discovery heartbeats.

Source: Vocera's "Understanding GE Carescape Networks" (CARESCAPE adapter reference, v1.3.0), a
third-party integration guide; GE's own protocol description was not available. All of it is
UNVERIFIED against GE documents or a capture, so both messages are recognised conservatively.

- Time synchronisation, UDP port 2000: the master node (the central station) broadcasts it at least
  daily and whenever the time changes; a slave where the time was changed sends a private (unicast)
  message to the master first. "106 byte packet / 64 bytes data": 106 is the whole frame
  (14 Ethernet + 20 IPv4 + 8 UDP + 64), so the UDP payload is 64 bytes. (The project notes say
  "payload 106 bytes"; that reading leaves 42 bytes unexplained, the one above adds up.)
  Byte numbers in the guide are 1-based, since bytes 61-64 (the time, seconds since 1900) are then
  the last four of 64:
    7-10   the sender's IPv4 address (payload[6:10])
    25-37  location "<unit>|<room>", unit at most 7 and room at most 6 characters, NUL padded
           (payload[24:38] is read: 7 + 1 + 6 = 14 characters do not fit in 25-37, so the guide's
           range is short by one or the fields are shorter; NUL ends the text either way)
    61-64  time, seconds since 1900-01-01
  Required: destination port 2000, a 64-byte payload, and either the sender's address at 6-10 or a
  well-formed location. The location is emitted only from a broadcast, where it is the sender's
  (the master's); from a unicast message it would be the receiver's, which is not checked.
- Discovery, UDP port 7000: a heartbeat "every node of the Carescape network" sends on a regular
  basis. Its layout is unknown. Required: destination port 7000, a broadcast or multicast
  destination (UDP 7000 unicast is also AFS's fileserver port) and a non-trivial payload size.
"""

from __future__ import annotations

import ipaddress
import re

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit
from medseg_xdp.fingerprint.parsers.services import is_group_destination

TIME_SYNC_PORT = 2000
DISCOVERY_PORT = 7000
TIME_SYNC_PAYLOAD_LEN = 64
SENDER_ADDRESS = slice(6, 10)
LOCATION = slice(24, 38)
LOCATION_RE = re.compile(r"[\x21-\x7b\x7d\x7e][\x20-\x7b\x7d\x7e]{0,6}\|[\x20-\x7b\x7d\x7e]{0,6}")
HEARTBEAT_MIN_LEN, HEARTBEAT_MAX_LEN = 16, 1472  # guesses: a heartbeat says something, in one datagram


def parse(frame: Frame) -> list[Observation]:
    """ge_unity.message (and location, role) from a time-sync or discovery datagram; [] otherwise."""
    if frame.proto != UDP:
        return []
    if frame.dport == TIME_SYNC_PORT:
        return _time_sync(frame)
    if frame.dport == DISCOVERY_PORT:
        return _heartbeat(frame)
    return []


def _time_sync(frame: Frame) -> list[Observation]:
    payload = frame.payload
    if len(payload) != TIME_SYNC_PAYLOAD_LEN:
        return []
    location = _location(payload[LOCATION])
    if not _carries_sender_address(frame) and not location:
        return []
    out: list[Observation] = []
    emit(out, Side.SRC, "ge_unity.message", "time_sync")
    if is_group_destination(frame):
        emit(out, Side.SRC, "ge_unity.role", "master")
        emit(out, Side.SRC, "ge_unity.location", location)
    return out


def _carries_sender_address(frame: Frame) -> bool:
    """Bytes 7-10 hold the sending device's IPv4 address (Vocera's guide: "hex representation")."""
    try:
        sender = ipaddress.IPv4Address(frame.src_ip or "")
    except ValueError:
        return False
    return frame.payload[SENDER_ADDRESS] == sender.packed


def _location(raw: bytes) -> str:
    """ "<unit>|<room>" up to the first NUL, or "" when the bytes are not one."""
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return text if LOCATION_RE.fullmatch(text) else ""


def _heartbeat(frame: Frame) -> list[Observation]:
    if not is_group_destination(frame) or not HEARTBEAT_MIN_LEN <= len(frame.payload) <= HEARTBEAT_MAX_LEN:
        return []
    out: list[Observation] = []
    emit(out, Side.SRC, "ge_unity.message", "heartbeat")
    return out
