"""TLS ClientHello fingerprints (and a minimal ServerHello role marker).

The ClientHello is sent in clear text and is chosen by the client's TLS library and its settings,
so it identifies the software (an EHR client, a monitor's gateway agent, a browser) and weakly the
device class; the SNI names the service it talks to.

Layout (RFC 8446 4.1.2, RFC 5246 7.4.1.2): a TLS record (type 0x16, version 0x03xx, 2-byte length)
holding a handshake message (type 1, 3-byte length): legacy version, 32 random bytes, session id,
cipher suites, compression methods, extensions (2-byte type, 2-byte length). Extensions read:
server_name (0, RFC 6066), ALPN (16, RFC 7301), signature_algorithms (13), supported_versions (43).

Signals on SRC for a ClientHello:
  tls.role      "client"
  tls.sni       the host name asked for
  tls.alpn      the offered protocols, comma-separated in order ("h2,http/1.1")
  tls.version   the highest version offered ("TLS 1.3"): supported_versions if present, else the
                legacy version field
  tls.ja4       JA4 per FoxIO's public definition (technical_details/JA4.md in FoxIO-LLC/ja4):
                t<version><d|i><ciphers:2><extensions:2><alpn first+last char>_<sha256[:12] of the
                sorted cipher list>_<sha256[:12] of the sorted extension list without SNI and ALPN,
                "_", the signature algorithms in wire order>, GREASE ignored everywhere.
How close to real JA4: identical for a ClientHello carried whole in the first TCP segment's first
record (checked against the ja4plus implementation on the ndpi 443-curl capture). It differs in that
(1) QUIC ("q") and DTLS ("d") hellos are not parsed, (2) a ClientHello cut short by the snaplen or
split over records/segments yields no tls.ja4 at all (a hash over a partial list would be a
different, misleading fingerprint), while the complete extensions before the cut still give SNI and
ALPN.
For a ServerHello (handshake type 2): ("tls.role", "server") on SRC.
"""

from __future__ import annotations

import hashlib
import struct

from medseg_xdp.fingerprint.frame import TCP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

HANDSHAKE = 0x16
CLIENT_HELLO, SERVER_HELLO = 1, 2
EXT_SNI, EXT_ALPN, EXT_SIG_ALGS, EXT_SUPPORTED_VERSIONS = 0x0000, 0x0010, 0x000D, 0x002B
VERSION_NAMES = {0x0304: "TLS 1.3", 0x0303: "TLS 1.2", 0x0302: "TLS 1.1", 0x0301: "TLS 1.0", 0x0300: "SSL 3.0"}
JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
MAX_ALPN = 8


def is_grease(value: int) -> bool:
    """RFC 8701: 0x0a0a, 0x1a1a, ..., 0xfafa are reserved to keep servers tolerant; they vary per connection."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


class ClientHello:
    """The parts of a (possibly truncated) ClientHello that were fully captured."""

    def __init__(self) -> None:
        self.legacy_version = 0
        self.ciphers: list[int] = []
        self.extensions: list[int] = []
        self.sni: str | None = None
        self.alpn: list[bytes] = []
        self.sig_algs: list[int] = []
        self.supported_versions: list[int] = []
        self.complete = False  # every extension was read: only then is a JA4 meaningful


def parse(frame: Frame) -> list[Observation]:
    data = frame.payload
    if frame.proto != TCP or len(data) < 6 or data[0] != HANDSHAKE or data[1] != 0x03:
        return []
    if data[5] == SERVER_HELLO:
        return [Observation(Side.SRC, "tls.role", "server")]
    if data[5] != CLIENT_HELLO:
        return []
    hello = read_client_hello(data)
    if hello is None:
        return []
    out = [Observation(Side.SRC, "tls.role", "client")]
    emit(out, Side.SRC, "tls.sni", hello.sni)
    if hello.alpn:
        emit(out, Side.SRC, "tls.alpn", b",".join(hello.alpn[:MAX_ALPN]))
    version = _max_version(hello)
    if version is not None:
        emit(out, Side.SRC, "tls.version", VERSION_NAMES.get(version, f"0x{version:04x}"))
    if hello.complete:
        out.append(Observation(Side.SRC, "tls.ja4", ja4(hello)))
    return out


def read_client_hello(data: bytes) -> ClientHello | None:
    """Parse from the record header on; None when even the fixed part is missing."""
    record_end = min(len(data), 5 + struct.unpack_from("!H", data, 3)[0])
    if record_end < 9:
        return None
    body_end = min(record_end, 9 + int.from_bytes(data[6:9], "big"))
    hello = ClientHello()
    pos = 9
    if pos + 34 > body_end:
        return None
    hello.legacy_version = struct.unpack_from("!H", data, pos)[0]
    pos += 34  # version and random
    pos = _skip_vector(data, pos, 1, body_end)  # session id
    ciphers = _vector(data, pos, 2, body_end)
    if ciphers is None:
        return hello
    hello.ciphers = [c for c in _u16s(ciphers) if not is_grease(c)]
    pos += 2 + len(ciphers)
    pos = _skip_vector(data, pos, 1, body_end)  # compression methods
    if pos == body_end:
        hello.complete = True  # a hello without extensions (SSL 3.0 style) is complete
        return hello
    extensions = _vector(data, pos, 2, body_end)
    # When the extension block was cut, read what is there and leave `complete` False
    block = extensions if extensions is not None else data[pos + 2 : body_end]
    hello.complete = extensions is not None
    _read_extensions(hello, block)
    return hello


def _read_extensions(hello: ClientHello, block: bytes) -> None:
    pos = 0
    while pos + 4 <= len(block):
        ext_type, length = struct.unpack_from("!HH", block, pos)
        value = block[pos + 4 : pos + 4 + length]
        if len(value) < length:
            hello.complete = False
            return
        pos += 4 + length
        if is_grease(ext_type):
            continue
        hello.extensions.append(ext_type)
        if ext_type == EXT_SNI:
            hello.sni = _server_name(value)
        elif ext_type == EXT_ALPN:
            hello.alpn = _alpn(value)
        elif ext_type == EXT_SIG_ALGS:
            inner = _vector(value, 0, 2, len(value))
            hello.sig_algs = [s for s in _u16s(inner or b"") if not is_grease(s)]
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            inner = _vector(value, 0, 1, len(value))
            hello.supported_versions = [v for v in _u16s(inner or b"") if not is_grease(v)]
    if pos != len(block):
        hello.complete = False  # trailing bytes too short for an extension header


def _server_name(value: bytes) -> str | None:
    names = _vector(value, 0, 2, len(value)) or b""
    pos = 0
    while pos + 3 <= len(names):
        name_type, length = names[pos], struct.unpack_from("!H", names, pos + 1)[0]
        name = names[pos + 3 : pos + 3 + length]
        if name_type == 0 and len(name) == length:
            return name.decode("ascii", "replace")
        pos += 3 + length
    return None


def _alpn(value: bytes) -> list[bytes]:
    protocols = _vector(value, 0, 2, len(value)) or b""
    found: list[bytes] = []
    pos = 0
    while pos < len(protocols):
        length = protocols[pos]
        name = protocols[pos + 1 : pos + 1 + length]
        if len(name) < length:
            break
        found.append(name)
        pos += 1 + length
    return found


def _vector(data: bytes, pos: int, length_size: int, end: int) -> bytes | None:
    """A length-prefixed vector at pos that ends at or before `end`, else None."""
    if pos + length_size > end:
        return None
    length = int.from_bytes(data[pos : pos + length_size], "big")
    if pos + length_size + length > end:
        return None
    return data[pos + length_size : pos + length_size + length]


def _skip_vector(data: bytes, pos: int, length_size: int, end: int) -> int:
    if pos + length_size > end:
        return end
    return min(end, pos + length_size + int.from_bytes(data[pos : pos + length_size], "big"))


def _u16s(data: bytes) -> list[int]:
    return list(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))


def _max_version(hello: ClientHello) -> int | None:
    if hello.supported_versions:
        return max(hello.supported_versions)
    if EXT_SUPPORTED_VERSIONS in hello.extensions or not hello.complete:
        return None  # the extension may sit past the cut: the legacy field would understate
    return hello.legacy_version


def ja4(hello: ClientHello) -> str:
    version = JA4_VERSIONS.get(_max_version(hello) or 0, "00")
    sni = "d" if EXT_SNI in hello.extensions else "i"
    section_a = (
        f"t{version}{sni}{min(len(hello.ciphers), 99):02d}{min(len(hello.extensions), 99):02d}{_ja4_alpn(hello)}"
    )
    ciphers = ",".join(f"{c:04x}" for c in sorted(hello.ciphers))
    extensions = ",".join(f"{e:04x}" for e in sorted(hello.extensions) if e not in (EXT_SNI, EXT_ALPN))
    if extensions and hello.sig_algs:
        extensions += "_" + ",".join(f"{s:04x}" for s in hello.sig_algs)
    return f"{section_a}_{_hash12(ciphers)}_{_hash12(extensions)}"


def _ja4_alpn(hello: ClientHello) -> str:
    if not hello.alpn or not hello.alpn[0]:
        return "00"
    first = hello.alpn[0]
    if _is_ascii_alnum(first[0]) and _is_ascii_alnum(first[-1]):
        return chr(first[0]) + chr(first[-1])
    text = first.hex()
    return text[0] + text[-1]


def _is_ascii_alnum(byte: int) -> bool:
    return byte < 0x80 and chr(byte).isalnum()


def _hash12(text: str) -> str:
    """JA4 writes twelve zeros for an empty list rather than the hash of nothing."""
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"
