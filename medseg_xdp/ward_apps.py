"""Small protocol speakers that the virtual ward runs inside its namespaces.

Two halves, both standard library only:

- message builders (HL7 v2 over MLLP, mDNS, SSDP, IPP, PJL, RTSP), pure functions
  that `ward` calls in-process to compose what each device says;
- a command line, run as `python ward_apps.py COMMAND ...` inside a namespace: the
  servers that have no packaged counterpart here (MLLP receiver, EHR web server,
  printer, camera) and two generic clients (`request` for TCP/TLS, `send-udp` for
  multicast announcements). Payloads and replies cross the command line as hex, so
  binary protocols survive text pipes.

The script is run by path, not as a module, so it must not import the package.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"
PJL_UEL = b"\x1b%-12345X"

# --- message builders ---------------------------------------------------------


def mllp_frame(message: str) -> bytes:
    """Wrap an HL7 v2 message (segments separated by CR) in MLLP framing."""
    return MLLP_START + message.encode() + MLLP_END


def mllp_unframe(data: bytes) -> list[str]:
    """All complete MLLP-framed messages in `data`."""
    messages = []
    for chunk in data.split(MLLP_START)[1:]:
        end = chunk.find(MLLP_END)
        if end >= 0:
            messages.append(chunk[:end].decode(errors="replace"))
    return messages


def hl7_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")


def hl7_oru_r01(
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    control_id: str,
    observations: Sequence[tuple[str, str, str]],
    patient: tuple[str, str] = ("PHANTOM01", "Test^Phantom"),
) -> str:
    """An ORU^R01 (v2.5) with numeric OBX rows (code^text^MDC, value, unit^text^MDC); synthetic data only."""
    patient_id, patient_name = patient
    segments = [
        (
            f"MSH|^~\\&|{sending_application}|{sending_facility}|{receiving_application}|{receiving_facility}|"
            f"{hl7_timestamp()}||ORU^R01^ORU_R01|{control_id}|P|2.5|||NE|AL"
        ),
        f"PID|1||{patient_id}^^^HOSP^MR||{patient_name}",
        "OBR|1|||69837^MDC_DEV_METER_PHYSIO_MULTI_PARAM_MDS^MDC",
    ]
    for index, (code, value, unit) in enumerate(observations, start=1):
        segments.append(f"OBX|{index}|NM|{code}||{value}|{unit}|||||F")
    return "\r".join(segments) + "\r"


def hl7_ack(message: str, code: str = "AA") -> str:
    """The ACK a receiver returns for `message`: MSH with sender and receiver swapped, MSA with its control id."""
    msh = message.split("\r", 1)[0].split("|")

    def field(index: int) -> str:  # MSH-n is msh[n - 1]: msh[1] holds the encoding characters (MSH-2)
        return msh[index] if len(msh) > index else ""

    trigger = field(8).split("^")[1] if "^" in field(8) else ""
    return "\r".join(
        [
            (
                f"MSH|^~\\&|{field(4)}|{field(5)}|{field(2)}|{field(3)}|{hl7_timestamp()}||ACK^{trigger}^ACK|"
                f"ACK{field(9)}|P|{field(11) or '2.5'}"
            ),
            f"MSA|{code}|{field(9)}",
        ]
    ) + "\r"


def _dns_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _dns_rr(name: str, rtype: int, rdata: bytes, ttl: int, cache_flush: bool) -> bytes:
    rclass = 0x0001 | (0x8000 if cache_flush else 0)
    return _dns_name(name) + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def mdns_announcement(*, service: str, instance: str, hostname: str, ipv4: str, port: int, txt: Sequence[str]) -> bytes:
    """An unsolicited mDNS response (RFC 6762 s8.3) announcing `instance` of `service` (e.g. _ipp._tcp)."""
    full = f"{instance}.{service}.local"
    host = f"{hostname}.local"
    txt_data = b"".join(bytes([len(item.encode())]) + item.encode() for item in txt) or b"\x00"
    records = [
        _dns_rr(f"{service}.local", 12, _dns_name(full), 4500, cache_flush=False),  # PTR
        _dns_rr(full, 33, struct.pack("!HHH", 0, 0, port) + _dns_name(host), 120, cache_flush=True),  # SRV
        _dns_rr(full, 16, txt_data, 4500, cache_flush=True),  # TXT
        _dns_rr(host, 1, socket.inet_aton(ipv4), 120, cache_flush=True),  # A
    ]
    header = struct.pack("!HHHHHH", 0, 0x8400, 0, len(records), 0, 0)
    return header + b"".join(records)


def ssdp_notify(*, location: str, server: str, usn_uuid: str, nt: str = "upnp:rootdevice") -> bytes:
    """An SSDP ssdp:alive NOTIFY (UPnP Device Architecture 1.0 s1.1.2)."""
    lines = [
        "NOTIFY * HTTP/1.1",
        "HOST: 239.255.255.250:1900",
        "CACHE-CONTROL: max-age=1800",
        f"LOCATION: {location}",
        f"NT: {nt}",
        "NTS: ssdp:alive",
        f"SERVER: {server}",
        f"USN: uuid:{usn_uuid}::{nt}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_request(method: str, host: str, path: str, user_agent: str, body: bytes = b"", content_type: str = "") -> bytes:
    headers = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}", "Accept: */*", "Connection: close"]
    if body or method == "POST":
        headers += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def rtsp_options(url: str, user_agent: str, cseq: int = 1) -> bytes:
    return f"OPTIONS {url} RTSP/1.0\r\nCSeq: {cseq}\r\nUser-Agent: {user_agent}\r\n\r\n".encode()


def pjl_info_status() -> bytes:
    return PJL_UEL + b"@PJL\r\n@PJL INFO STATUS\r\n" + PJL_UEL


def _ipp_attr(tag: int, name: str, value: bytes) -> bytes:
    return struct.pack("!BH", tag, len(name)) + name.encode() + struct.pack("!H", len(value)) + value


def ipp_get_printer_attributes(printer_uri: str, request_id: int = 1) -> bytes:
    """An IPP/2.0 Get-Printer-Attributes request (RFC 8011 s4.2.5)."""
    return (
        struct.pack("!BBHI", 2, 0, 0x000B, request_id)
        + b"\x01"
        + _ipp_attr(0x47, "attributes-charset", b"utf-8")
        + _ipp_attr(0x48, "attributes-natural-language", b"en")
        + _ipp_attr(0x45, "printer-uri", printer_uri.encode())
        + b"\x03"
    )


def ipp_printer_attributes_response(request: bytes, make_and_model: str) -> bytes:
    """successful-ok with a few printer attributes, echoing the request id."""
    request_id = struct.unpack("!I", request[4:8])[0] if len(request) >= 8 else 1
    return (
        struct.pack("!BBHI", 2, 0, 0x0000, request_id)
        + b"\x01"
        + _ipp_attr(0x47, "attributes-charset", b"utf-8")
        + _ipp_attr(0x48, "attributes-natural-language", b"en")
        + b"\x04"
        + _ipp_attr(0x41, "printer-make-and-model", make_and_model.encode())
        + _ipp_attr(0x23, "printer-state", struct.pack("!I", 3))  # idle
        + b"\x03"
    )


def ipp_status_code(response_body: bytes) -> int | None:
    return struct.unpack("!H", response_body[2:4])[0] if len(response_body) >= 8 else None


# --- servers ------------------------------------------------------------------


def _serve_tcp(host: str, port: int, handle: Callable[[socket.socket], None], timeout: float = 10.0) -> None:
    """Accept forever on (host, port) in a daemon thread; one thread per connection."""
    listener = socket.create_server((host, port), reuse_port=False, backlog=64)

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            conn.settimeout(timeout)
            threading.Thread(target=_guarded, args=(handle, conn), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _guarded(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn:
        try:
            handle(conn)
        except OSError:
            pass


def _read_until(conn: socket.socket, terminators: Sequence[bytes], limit: int = 1 << 20) -> bytes:
    data = b""
    while len(data) < limit and not any(t in data for t in terminators):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def mllp_server(host: str, port: int) -> None:
    """An interface engine's inbound MLLP listener: ACK (AA) every message, keep the connection."""

    def handle(conn: socket.socket) -> None:
        buffer = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while MLLP_END in buffer:
                frame, buffer = buffer.split(MLLP_END, 1)
                for message in mllp_unframe(frame + MLLP_END):
                    conn.sendall(mllp_frame(hl7_ack(message)))

    _serve_tcp(host, port, handle)


def web_server(host: str, http_port: int, https_port: int, certfile: str, keyfile: str, server: str, require_sni: str) -> None:
    """An EHR front end: the same small page over HTTP and over HTTPS (which insists on SNI `require_sni`)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = server
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"<html><body>EHR: ward ICU, synthetic data</body></html>\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"{self.client_address[0]} {format % args}\n")

    def sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> int | None:
        return None if name == require_sni else ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    context.sni_callback = sni  # type: ignore[assignment]
    plain = ThreadingHTTPServer((host, http_port), Handler)
    secure = ThreadingHTTPServer((host, https_port), Handler, bind_and_activate=False)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    secure.server_bind()
    secure.server_activate()
    for httpd in (plain, secure):
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()


def printer_server(host: str, make_and_model: str, http_server: str) -> None:
    """A network printer: raw/PJL on 9100 (answers INFO STATUS) and IPP over HTTP on 631."""

    def raw(conn: socket.socket) -> None:
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
            if b"@PJL INFO STATUS" in data and data.rstrip().endswith(PJL_UEL):
                conn.sendall(b'@PJL INFO STATUS\r\nCODE=10001\r\nDISPLAY="Ready"\r\nONLINE=TRUE\r\n\x0c')
                data = b""

    def ipp(conn: socket.socket) -> None:
        request = _read_until(conn, [b"\r\n\r\n"])
        head, _, body = request.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk
        payload = ipp_printer_attributes_response(body, make_and_model)
        conn.sendall(
            f"HTTP/1.1 200 OK\r\nServer: {http_server}\r\nContent-Type: application/ipp\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )

    _serve_tcp(host, 9100, raw)
    _serve_tcp(host, 631, ipp)


def rtsp_server(host: str, port: int, server: str) -> None:
    """An IP camera's RTSP listener: answers OPTIONS; anything else needs credentials (401)."""

    def handle(conn: socket.socket) -> None:
        while True:
            request = _read_until(conn, [b"\r\n\r\n"])
            if b"\r\n\r\n" not in request:
                return
            lines = request.decode(errors="replace").split("\r\n")
            cseq = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("cseq:")), "0")
            if lines[0].startswith("OPTIONS "):
                status, extra = "200 OK", "Public: OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER\r\n"
            else:
                status, extra = "401 Unauthorized", 'WWW-Authenticate: Digest realm="AXIS_ACCC8E000000", nonce="0"\r\n'
            date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
            conn.sendall(f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{extra}Server: {server}\r\nDate: {date}\r\n\r\n".encode())

    _serve_tcp(host, port, handle)


# --- clients ------------------------------------------------------------------


def request(
    host: str,
    port: int,
    payload: bytes,
    timeout: float,
    *,
    until: bytes = b"",
    tls_sni: str | None = None,
    cafile: str | None = None,
) -> bytes:
    """Connect (optionally TLS with SNI, verifying the peer against `cafile`), send, read the reply.

    Reads until `until` appears, the peer closes, or `timeout` passes since the start.
    """
    deadline = time.monotonic() + timeout
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    with sock:
        if tls_sni is not None:
            context = ssl.create_default_context(cafile=cafile)
            sock = context.wrap_socket(sock, server_hostname=tls_sni)
        sock.sendall(payload)
        reply = b""
        while not (until and until in reply):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
        return reply


def send_udp(group: str, port: int, payload: bytes, *, source_ip: str, source_port: int, ttl: int) -> int:
    """Send one datagram to a multicast group out of the interface holding `source_ip`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((source_ip, source_port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source_ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        return sock.sendto(payload, (group, port))


# --- command line ------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ward_apps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mllp-server")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=2575)
    p = sub.add_parser("web-server")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--https-port", type=int, default=443)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--require-sni", required=True)
    p = sub.add_parser("printer-server")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--model", required=True)
    p.add_argument("--server", required=True)
    p = sub.add_parser("rtsp-server")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=554)
    p.add_argument("--server", required=True)
    p = sub.add_parser("request", help="send hex payload over TCP/TLS, print the reply as hex")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("payload_hex")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--until-hex", default="")
    p.add_argument("--tls-sni")
    p.add_argument("--cafile")
    p = sub.add_parser("send-udp", help="send hex payload to a multicast group, print bytes sent")
    p.add_argument("group")
    p.add_argument("port", type=int)
    p.add_argument("payload_hex")
    p.add_argument("--source-ip", required=True)
    p.add_argument("--source-port", type=int, default=0)
    p.add_argument("--ttl", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "request":
        try:
            reply = request(
                args.host,
                args.port,
                bytes.fromhex(args.payload_hex),
                args.timeout,
                until=bytes.fromhex(args.until_hex),
                tls_sni=args.tls_sni,
                cafile=args.cafile,
            )
        except (OSError, ssl.SSLError) as error:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            return 1
        print(reply.hex())
        return 0
    if args.command == "send-udp":
        sent = send_udp(
            args.group, args.port, bytes.fromhex(args.payload_hex), source_ip=args.source_ip, source_port=args.source_port, ttl=args.ttl
        )
        print(sent)
        return 0

    if args.command == "mllp-server":
        mllp_server(args.host, args.port)
    elif args.command == "web-server":
        web_server(args.host, args.http_port, args.https_port, args.cert, args.key, args.server, args.require_sni)
    elif args.command == "printer-server":
        printer_server(args.host, args.model, args.server)
    elif args.command == "rtsp-server":
        rtsp_server(args.host, args.port, args.server)
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
