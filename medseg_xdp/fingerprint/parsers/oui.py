"""MAC address vendor from the IEEE registries.

Signals, for both the sender (SRC) and the receiver (DST) of every frame:
  ("oui.vendor", "<Organization Name>")      the organisation the IEEE assigned the address block to
  ("mac.locally_administered", "true")       bit 0x02 of the first octet is set: a randomised or
                                             software-chosen MAC, which has no vendor
Group (multicast and broadcast) addresses name no device and yield nothing.

The vendor names the maker of the network interface, which for medical devices is often a
third-party Wi-Fi or Ethernet module rather than the device maker: it is evidence, not an answer.

Data: Debian's ieee-data package, CSV files with the columns Registry, Assignment, Organization
Name, Organization Address: oui.csv (MA-L, 24-bit prefixes), mam.csv (MA-M, 28-bit), oui36.csv
(MA-S, 36-bit) and iab.csv (IAB, also 36-bit). The longest matching assignment wins, because an
MA-L block registered to "IEEE Registration Authority" is subdivided into MA-M/MA-S blocks of other
organisations. Names the IEEE uses for "no public owner" are dropped rather than reported.
"""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Iterable
from pathlib import Path

from medseg_xdp.fingerprint.frame import Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import clean

log = logging.getLogger(__name__)

IEEE_DATA_DIR = Path("/usr/share/ieee-data")

# (file, prefix length in bits); every prefix is stored right-aligned as an int in the dict for its length
REGISTRIES: tuple[tuple[str, int], ...] = (
    ("oui.csv", 24),
    ("mam.csv", 28),
    ("oui36.csv", 36),
    ("iab.csv", 36),
)

# Registry placeholders: reporting them as a vendor would make unrelated devices look alike.
NOT_A_VENDOR = frozenset({"private", "ieee registration authority"})


@functools.cache
def tables() -> dict[int, dict[int, str]] | None:
    """Prefix length -> {prefix: organisation}; None (logged once) when ieee-data is not installed."""
    result: dict[int, dict[int, str]] = {24: {}, 28: {}, 36: {}}
    found = False
    for name, bits in REGISTRIES:
        path = IEEE_DATA_DIR / name
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                _load(csv.reader(handle), bits, result[bits])
            found = True
        except OSError:
            continue  # older ieee-data releases lack some files; the others still work
    if not found:
        log.warning("ieee-data not found in %s: no MAC vendor lookup (install the ieee-data package)", IEEE_DATA_DIR)
        return None
    return result


def _load(rows: Iterable[list[str]], bits: int, into: dict[int, str]) -> None:
    hex_digits = bits // 4
    for row in rows:
        if len(row) < 3 or len(row[1]) != hex_digits:
            continue  # header line, or a malformed row
        try:
            prefix = int(row[1], 16)
        except ValueError:
            continue
        organisation = clean(row[2])
        if organisation and organisation.lower() not in NOT_A_VENDOR:
            into[prefix] = organisation


@functools.lru_cache(maxsize=65536)
def lookup(mac: str) -> tuple[str | None, bool]:
    """(vendor or None, locally administered) for a unicast MAC "aa:bb:cc:dd:ee:ff"; cached per MAC."""
    if len(mac) != 17:
        return None, False
    try:
        value = int(mac.replace(":", ""), 16)
    except ValueError:
        return None, False
    first_octet = value >> 40
    if first_octet & 0x02:
        return None, True
    registries = tables()
    if registries is None:
        return None, False
    vendor = registries[36].get(value >> 12) or registries[28].get(value >> 20) or registries[24].get(value >> 24)
    return vendor, False


@functools.lru_cache(maxsize=65536)
def _side(mac: str, side: Side) -> tuple[Observation, ...]:
    """Observations for one address; cached because the same few MACs fill most samples."""
    if len(mac) != 17 or int(mac[0:2], 16) & 0x01:
        return ()  # absent, or a group address: multicast and broadcast belong to no device
    vendor, local = lookup(mac)
    if local:
        return (Observation(side, "mac.locally_administered", "true"),)
    if vendor:
        return (Observation(side, "oui.vendor", vendor),)
    return ()


def clear_caches() -> None:
    """Forget the registries and every cached lookup: after ieee-data is upgraded, and in tests."""
    tables.cache_clear()
    lookup.cache_clear()
    _side.cache_clear()


def parse(frame: Frame) -> list[Observation]:
    try:
        return [*_side(frame.src_mac, Side.SRC), *_side(frame.dst_mac, Side.DST)]
    except ValueError:
        return []  # a Frame built by hand with a malformed MAC string
