"""Read Ethernet frames, with their timestamps, from pcap and pcapng files."""

from __future__ import annotations

from pathlib import Path

LINKTYPE_ETHERNET = 1
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class CaptureError(ValueError):
    """A capture this tool cannot read; the message says why."""


def read_capture(path: Path) -> list[tuple[float, bytes]]:
    """(timestamp in seconds, frame bytes) for each packet, in file order."""
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapNgReader, PcapReader

    try:
        magic = path.read_bytes()[:4]
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror}") from exc
    reader_type = PcapNgReader if magic == PCAPNG_MAGIC else PcapReader
    frames = []
    try:
        with reader_type(str(path)) as reader:  # type: ignore[operator]
            linktype = getattr(reader, "linktype", LINKTYPE_ETHERNET)
            if linktype != LINKTYPE_ETHERNET:
                raise CaptureError(f"{path}: link type {linktype} is not Ethernet (capture on a bridge port or SPAN port, not 'any')")
            for packet in reader:
                frames.append((float(packet.time), bytes(packet)))
    except Scapy_Exception as exc:
        raise CaptureError(f"{path}: not a pcap or pcapng file ({exc})") from exc
    return frames
