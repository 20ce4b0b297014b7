"""The virtual hospital ward: real software speaking real protocols across the namespace bridge.

`Ward` builds an `InlineBridge` with one namespace (and one bridge port) per host, starts
the servers, and drives the traffic a ward produces: DHCP (dnsmasq, busybox udhcpc),
DICOM (dcmtk), HL7 v2 over MLLP, TLS with SNI (openssl s_server, Python ssl), HTTP(S),
printing (PJL, IPP), mDNS and SSDP announcements, RTSP; and, for the attack phase, an
nmap scan plus direct DICOM and HL7 attempts from a compromised infusion pump.

All addresses lie in 10.70.0.0/24 and fd70::/64 inside our own namespaces, which have
no default route: nothing leaves them. Every wait is bounded. On exit the namespaces
go (with every process inside them) and so does the ward's temporary directory.

No XDP program is attached here: hand `ward.topology` to `session.ProgramOnBridge`.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import IO, Any

from medseg_xdp import ward_apps
from medseg_xdp.topology import BRIDGE, HostSpec, InlineBridge, Namespace, Scoped

SUBNET4 = "10.70.0.0/24"
SUBNET6 = "fd70::/64"
APPS = Path(ward_apps.__file__).resolve()
DHCP_POOL = ("10.70.0.100", "10.70.0.199")
PUMP_SNI = "pumpserver.hospital.example"
EHR_SNI = "ehr.hospital.example"
DICOM_PORT = 104
MLLP_PORT = 2575
PACS_AE = "PACS"


@dataclass(frozen=True)
class DhcpIdentity:
    """What a DHCP client says about itself: option 60 (vendor class) and option 12 (hostname)."""

    vendor_class: str
    hostname: str


@dataclass(frozen=True)
class WardHost:
    """One host of the ward. `vendor` is the IEEE registrant of the MAC's OUI (ieee-data's oui.csv)."""

    name: str
    role: str
    vendor: str
    mac: str
    host_id: int
    dhcp: DhcpIdentity | None = None

    @property
    def ipv4(self) -> str:
        return str(ip_network(SUBNET4)[self.host_id])

    @property
    def ipv6(self) -> str:
        return str(ip_network(SUBNET6)[self.host_id])

    @property
    def oui(self) -> str:
        return self.mac.upper().replace(":", "")[:6]

    @property
    def spec(self) -> HostSpec:
        return HostSpec(self.name, self.mac, f"{self.ipv4}/24", f"{self.ipv6}/64")


HOSTS: tuple[WardHost, ...] = (
    # servers
    WardHost("dhcp", "DHCP server (dnsmasq, no DNS)", "Hewlett Packard Enterprise", "94:18:82:70:00:01", 1),
    WardHost("pacs", "PACS archive (dcmtk dcmqrscp, AE PACS, tcp/104)", "Dell Inc.", "00:14:22:70:00:10", 10),
    WardHost("hl7-engine", "HL7 interface engine (MLLP, tcp/2575)", "Hewlett Packard Enterprise", "4c:ae:a3:70:00:11", 11),
    WardHost("ehr", "EHR web front end (HTTP tcp/80, HTTPS tcp/443)", "Dell Inc.", "18:03:73:70:00:12", 12),
    WardHost("pump-server", "infusion pump server (openssl s_server, tcp/443)", "Dell Inc.", "f8:db:88:70:00:13", 13),
    # devices
    WardHost(
        "ct", "CT scanner (DICOM SCU, AE CT01)", "GE Medical System(China) Co., Ltd.", "a0:f2:17:70:00:20", 20,
        DhcpIdentity("GEHC CT Revolution", "CT01"),
    ),
    WardHost(
        "monitor-gw", "patient monitor gateway (HL7 ORU^R01 sender)",
        "Philips Medical Systems - Cardiac and Monitoring Systems (CM", "00:09:5c:70:00:21", 21,
        DhcpIdentity("Philips IntelliVue", "ICU-IVGW01"),
    ),
    WardHost(
        "pump", "infusion pump (TLS client of the pump server)", "Carefusion", "f8:c6:78:70:00:22", 22,
        DhcpIdentity("BD Alaris PCU 8015", "ALARIS-8015-0042"),
    ),
    WardHost(
        "printer", "network printer (raw tcp/9100, IPP tcp/631, mDNS)", "HP Inc.", "04:0e:3c:70:00:23", 23,
        DhcpIdentity("Hewlett-Packard JetDirect", "NPI700023"),
    ),
    WardHost(
        "workstation", "clinical workstation (EHR over HTTP/S, DICOM query, printing, video)", "Dell Inc.",
        "98:e7:43:70:00:24", 24, DhcpIdentity("MSFT 5.0", "ICU-WS07"),
    ),
    WardHost(
        "camera", "IP camera (RTSP tcp/554, SSDP)", "AXIS COMMUNICATIONS AB", "00:40:8c:70:00:25", 25,
        DhcpIdentity("AXIS,Network Camera,P3245-V,10.12.0", "axis-00408c700025"),
    ),
)
HOSTS_BY_NAME: dict[str, WardHost] = {host.name: host for host in HOSTS}

# What the devices say about themselves beyond DHCP.
CT_AE = "CT01"
WORKSTATION_AE = "WS07"
WORKSTATION_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
PUMP_UA = "Alaris-PCU/12.1.2 (BD)"
EHR_SERVER = "Microsoft-IIS/10.0"
PRINTER_MODEL = "HP LaserJet Pro M404dn"
PRINTER_HTTP_SERVER = "HP HTTP Server; HP LaserJet Pro M404dn - W1A53A; Serial Number: PHBBB00023"
CAMERA_SERVER = "Linux/4.14 UPnP/1.0 AXIS P3245-V/10.12.0"
CAMERA_RTSP_SERVER = "GStreamer RTSP Server"
VMS_UA = "AXIS Camera Station/5.50"
VITALS = (
    ("150456^MDC_PULS_OXIM_SAT_O2^MDC", "97", "262688^MDC_DIM_PERCENT^MDC"),
    ("147842^MDC_ECG_HEART_RATE^MDC", "72", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    ("150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "118", "266016^MDC_DIM_MMHG^MDC"),
)


@dataclass(frozen=True)
class Exchange:
    """One protocol exchange of a round: who talked to whom, and whether it completed."""

    name: str
    source: str
    target: str
    ok: bool
    detail: str = ""
    round: int = 0

    @property
    def key(self) -> str:
        return f"{self.name} {self.source}->{self.target}"


@dataclass(frozen=True)
class TrafficReport:
    rounds: int
    exchanges: tuple[Exchange, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(exchange.ok for exchange in self.exchanges)

    @property
    def failures(self) -> tuple[Exchange, ...]:
        return tuple(exchange for exchange in self.exchanges if not exchange.ok)

    def by_key(self) -> dict[str, bool]:
        """"name source->target" -> True when it completed in every round."""
        result: dict[str, bool] = {}
        for exchange in self.exchanges:
            result[exchange.key] = result.get(exchange.key, True) and exchange.ok
        return result


@dataclass(frozen=True)
class AttackReport:
    attacker: str
    targets: tuple[str, ...]
    ports: str
    scan_completed: bool
    open_ports: dict[str, tuple[int, ...]]
    dicom_answered: bool
    hl7_answered: bool
    seconds: float
    detail: str = ""


@dataclass
class _Server:
    host: str
    process: subprocess.Popen[Any]
    log: Path
    listens: tuple[tuple[str, int], ...]


class WardError(RuntimeError):
    """A ward server failed to start."""


class Ward(Scoped):
    """The ward's hosts on one namespace bridge, servers running; see the module docstring."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.hosts = HOSTS_BY_NAME
        self.topology = InlineBridge(
            client=HOSTS_BY_NAME["ct"].spec,
            server=HOSTS_BY_NAME["pacs"].spec,
            devices=[host.spec for host in HOSTS if host.name not in ("ct", "pacs")],
        )
        self._workdir = Path()
        self._servers: dict[str, _Server] = {}
        self._round = 0

    # --- lifecycle ---

    def _set_up(self, stack: ExitStack) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="medseg-ward-"))
        # Registered first so that it runs last, after every process is gone.
        stack.callback(shutil.rmtree, self._workdir, ignore_errors=True)
        stack.callback(self._servers.clear)
        stack.enter_context(self.topology)
        self._start_servers()

    @property
    def workdir(self) -> Path:
        return self._workdir

    def namespace(self, host: str) -> Namespace:
        return self.topology.namespace(host)

    def ip(self, host: str) -> str:
        return self.hosts[host].ipv4

    # --- servers ---

    def _start_servers(self) -> None:
        (self._workdir / "logs").mkdir()
        self._start_dhcp()
        self._start_pacs()
        self._start_apps("hl7-engine", ["mllp-server", "--port", str(MLLP_PORT)], [("tcp", MLLP_PORT)])
        cert, key = self._certificate("ehr", EHR_SNI)
        self._start_apps(
            "ehr",
            ["web-server", "--cert", str(cert), "--key", str(key), "--server", EHR_SERVER, "--require-sni", EHR_SNI],
            [("tcp", 80), ("tcp", 443)],
        )
        self._start_pump_server()
        self._start_apps(
            "printer", ["printer-server", "--model", PRINTER_MODEL, "--server", PRINTER_HTTP_SERVER], [("tcp", 9100), ("tcp", 631)]
        )
        self._start_apps("camera", ["rtsp-server", "--server", CAMERA_RTSP_SERVER], [("tcp", 554)])
        deadline = time.monotonic() + max(self.timeout, 5.0)
        for server in self._servers.values():
            self._await_listening(server, deadline)

    def _popen(self, host: str, tag: str, argv: Sequence[str], listens: Sequence[tuple[str, int]]) -> None:
        log = self._workdir / "logs" / f"{host}-{tag}.log"
        with log.open("wb") as out:
            process = self.namespace(host).popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self._servers[f"{host}/{tag}"] = _Server(host, process, log, tuple(listens))

    def _start_apps(self, host: str, args: Sequence[str], listens: Sequence[tuple[str, int]]) -> None:
        self._popen(host, args[0], [sys.executable, str(APPS), *args], listens)

    def _start_dhcp(self) -> None:
        server = self.hosts["dhcp"]
        reservations = [f"--dhcp-host={h.mac},{h.ipv4}" for h in HOSTS if h.dhcp is not None]
        self._popen(
            "dhcp",
            "dnsmasq",
            [
                "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
                "--pid-file", "--interface=eth0", "--bind-interfaces", "--dhcp-authoritative", "--no-ping",
                "--log-dhcp", "--log-facility=-", f"--dhcp-leasefile={self._workdir / 'dnsmasq.leases'}",
                f"--dhcp-range={DHCP_POOL[0]},{DHCP_POOL[1]},255.255.255.0,10m", "--dhcp-option=option:router",
                f"--listen-address={server.ipv4}", *reservations,
            ],
            [("udp", 67)],
        )

    def _start_pacs(self) -> None:
        base = self._workdir / "pacs"
        (base / "db").mkdir(parents=True)
        config = base / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {DICOM_PORT}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{PACS_AE} {base / 'db'} RW (200, 64mb) ANY\nAETable END\n"
        )
        # Forks one child per association; the children die with the namespace.
        self._popen("pacs", "dcmqrscp", ["dcmqrscp", "-c", str(config), "--disable-host-lookup", "-v"], [("tcp", DICOM_PORT)])

    def _start_pump_server(self) -> None:
        # A default certificate for any other name: with -servername_fatal the handshake
        # fails unless the client sends the right SNI, and only then does it get a
        # certificate that verifies for PUMP_SNI.
        default_cert, default_key = self._certificate("pump-server-default", "default.invalid")
        cert, key = self._certificate("pump-server", PUMP_SNI)
        self._popen(
            "pump-server",
            "s_server",
            [
                "openssl", "s_server", "-4", "-accept", "443", "-cert", str(default_cert), "-key", str(default_key),
                "-servername", PUMP_SNI, "-servername_fatal", "-cert2", str(cert), "-key2", str(key), "-www",
            ],
            [("tcp", 443)],
        )

    def _certificate(self, stem: str, name: str) -> tuple[Path, Path]:
        """A fresh self-signed certificate (P-256) for DNS name `name`, generated locally."""
        cert, key = self._workdir / f"{stem}.crt", self._workdir / f"{stem}.key"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                "-addext", f"subjectAltName=DNS:{name}",
            ],
            check=True, capture_output=True, timeout=30,
        )
        return cert, key

    def _await_listening(self, server: _Server, deadline: float) -> None:
        wanted = set(server.listens)
        while True:
            if server.process.poll() is not None:
                raise WardError(f"{server.host}: {server.process.args!r} exited {server.process.returncode}:\n{_tail(server.log)}")
            wanted -= _listening(server.process.pid)
            if not wanted:
                return
            if time.monotonic() > deadline:
                raise WardError(f"{server.host}: not listening on {sorted(wanted)} in time:\n{_tail(server.log)}")
            time.sleep(0.02)

    def server_log(self, host: str) -> str:
        """The output so far of the servers on `host` (for diagnostics)."""
        return "".join(s.log.read_text(errors="replace") for s in self._servers.values() if s.host == host)

    # --- running things in hosts ---

    def _run(self, host: str, argv: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess[str] | None:
        """Run a client in `host`; None when it overran its time."""
        limit = timeout if timeout is not None else self.timeout
        try:
            return self.namespace(host).run(argv, check=False, timeout=limit + 5)
        except subprocess.TimeoutExpired:
            return None

    def _request(
        self, source: str, target: str, port: int, payload: bytes, *, until: bytes = b"", tls_sni: str | None = None, cafile: Path | None = None
    ) -> tuple[bytes | None, str]:
        """A TCP (or TLS) request from `source` to `target`; (reply or None, error text)."""
        argv = [sys.executable, str(APPS), "request", self.ip(target), str(port), payload.hex(), "--timeout", str(self.timeout)]
        if until:
            argv += ["--until-hex", until.hex()]
        if tls_sni is not None:
            argv += ["--tls-sni", tls_sni]
        if cafile is not None:
            argv += ["--cafile", str(cafile)]
        result = self._run(source, argv)
        if result is None:
            return None, "timed out"
        if result.returncode != 0:
            return None, result.stderr.strip()
        return bytes.fromhex(result.stdout.strip()), ""

    def _announce(self, source: str, group: str, port: int, payload: bytes, ttl: int) -> tuple[bool, str]:
        argv = [
            sys.executable, str(APPS), "send-udp", group, str(port), payload.hex(),
            "--source-ip", self.ip(source), "--source-port", str(port), "--ttl", str(ttl),
        ]
        result = self._run(source, argv)
        if result is None or result.returncode != 0:
            return False, "timed out" if result is None else result.stderr.strip()
        return result.stdout.strip() == str(len(payload)), f"{result.stdout.strip()} bytes to {group}:{port}"

    # --- clinical traffic ---

    def run_clinical_traffic(self, rounds: int = 1) -> TrafficReport:
        """`rounds` rounds of the ward's everyday traffic; every exchange reported, none raises."""
        start = time.monotonic()
        exchanges: list[Exchange] = []
        for _ in range(rounds):
            self._round += 1
            exchanges += self._clinical_round(self._round)
        return TrafficReport(rounds, tuple(exchanges), time.monotonic() - start)

    def _clinical_round(self, number: int) -> list[Exchange]:
        out: list[Exchange] = []

        def add(name: str, source: str, target: str, ok: bool, detail: str = "") -> None:
            out.append(Exchange(name, source, target, ok, detail, number))

        # Devices (re)join the network: DHCP, then announcements.
        for host in HOSTS:
            if host.dhcp is not None:
                add("dhcp", host.name, "dhcp", *self._dhcp(host))
        add("mdns", "printer", "224.0.0.251", *self._announce("printer", "224.0.0.251", 5353, self._printer_mdns(), ttl=255))
        add("ssdp", "camera", "239.255.255.250", *self._announce("camera", "239.255.255.250", 1900, self._camera_ssdp(), ttl=4))

        # Imaging: the CT verifies and stores a (synthetic) image; the workstation queries it.
        add("dicom-echo", "ct", "pacs", *self._echoscu("ct", CT_AE))
        add("dicom-store", "ct", "pacs", *self._storescu("ct", CT_AE, self._ct_image(number)))
        add("dicom-echo", "workstation", "pacs", *self._echoscu("workstation", WORKSTATION_AE))
        add("dicom-find", "workstation", "pacs", *self._findscu("workstation", WORKSTATION_AE))

        # Vitals to the interface engine.
        add("hl7-oru", "monitor-gw", "hl7-engine", *self._hl7("monitor-gw", "INTELLIVUE_GW", "ICU", f"IVGW{number:06d}"))

        # Pump to its server over TLS with SNI.
        reply, error = self._request(
            "pump", "pump-server", 443, ward_apps.http_request("GET", PUMP_SNI, "/", PUMP_UA),
            tls_sni=PUMP_SNI, cafile=self._workdir / "pump-server.crt",
        )
        add("tls", "pump", "pump-server", *_http_ok(reply, error))

        # Workstation: EHR over HTTP and HTTPS, printing, a look at the camera.
        reply, error = self._request("workstation", "ehr", 80, ward_apps.http_request("GET", EHR_SNI, "/", WORKSTATION_UA))
        add("http", "workstation", "ehr", *_http_ok(reply, error))
        reply, error = self._request(
            "workstation", "ehr", 443, ward_apps.http_request("GET", EHR_SNI, "/", WORKSTATION_UA),
            tls_sni=EHR_SNI, cafile=self._workdir / "ehr.crt",
        )
        add("https", "workstation", "ehr", *_http_ok(reply, error))
        reply, error = self._request("workstation", "printer", 9100, ward_apps.pjl_info_status(), until=b"\x0c")
        add("pjl", "workstation", "printer", reply is not None and b"CODE=10001" in reply, error or _first_line(reply))
        add("ipp", "workstation", "printer", *self._ipp())
        url = f"rtsp://{self.ip('camera')}:554/axis-media/media.amp"
        reply, error = self._request("workstation", "camera", 554, ward_apps.rtsp_options(url, VMS_UA), until=b"\r\n\r\n")
        add("rtsp", "workstation", "camera", reply is not None and reply.startswith(b"RTSP/1.0 200"), error or _first_line(reply))
        return out

    def _dhcp(self, host: WardHost) -> tuple[bool, str]:
        """busybox udhcpc: one DISCOVER/OFFER/REQUEST/ACK; the no-op script leaves eth0 as it is."""
        assert host.dhcp is not None
        argv = [
            "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-A", "1", "-s", "/bin/true",
            "-V", host.dhcp.vendor_class, "-x", f"hostname:{host.dhcp.hostname}",
        ]
        result = self._run(host.name, argv, timeout=5)
        if result is None:
            return False, "udhcpc timed out"
        obtained = re.search(r"lease of (\S+) obtained", result.stdout + result.stderr)
        leased = self.dhcp_leases().get(host.mac.lower())
        ok = result.returncode == 0 and obtained is not None and obtained.group(1) == host.ipv4 == leased
        return ok, f"udhcpc exit {result.returncode}, lease {obtained.group(1) if obtained else None}, lease file {leased}"

    def dhcp_leases(self) -> dict[str, str]:
        """MAC -> IPv4 from dnsmasq's lease file."""
        path = self._workdir / "dnsmasq.leases"
        leases = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            fields = line.split()
            if len(fields) >= 3:
                leases[fields[1].lower()] = fields[2]
        return leases

    def _dicom_tool(self, source: str, argv: Sequence[str], *success: str, files: Sequence[Path] = ()) -> tuple[bool, str]:
        """A dcmtk SCU from `source` to the PACS, judged by its exit code and its verbose log."""
        t = str(max(1, round(self.timeout)))
        result = self._run(
            source, [argv[0], "-v", "-to", t, "-ta", t, "-td", t, *argv[1:], self.ip("pacs"), str(DICOM_PORT), *map(str, files)]
        )
        if result is None:
            return False, f"{argv[0]} timed out"
        output = result.stdout + result.stderr
        ok = result.returncode == 0 and all(marker in output for marker in success)
        return ok, f"{argv[0]} exit {result.returncode}" + ("" if ok else f": {output.strip()[-400:]}")

    def _echoscu(self, source: str, ae: str) -> tuple[bool, str]:
        return self._dicom_tool(source, ["echoscu", "-aet", ae, "-aec", PACS_AE], "Received Echo Response (Success)")

    def _storescu(self, source: str, ae: str, image: Path) -> tuple[bool, str]:
        return self._dicom_tool(source, ["storescu", "-aet", ae, "-aec", PACS_AE], "Received Store Response (Success)", files=[image])

    def _findscu(self, source: str, ae: str) -> tuple[bool, str]:
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "StudyDate", "-k", "ModalitiesInStudy"]
        # At least one match (the CT's study), then the final success.
        return self._dicom_tool(
            source, ["findscu", "-S", "-aet", ae, "-aec", PACS_AE, *keys], "Find Response: 1 (Pending)", "Received Final Find Response (Success)"
        )

    def _ct_image(self, number: int) -> Path:
        """A tiny synthetic CT image (4x4 pixels, PatientName Test^Phantom), fresh UIDs per call."""
        dump = self._workdir / f"ct-{number}.dump"
        image = dump.with_suffix(".dcm")
        study, series, instance = (f"2.25.{uuid.uuid4().int}" for _ in range(3))
        pixels = "\\".join(f"{value:04x}" for value in range(0, 16 * 64, 64))
        dump.write_text(
            "\n".join(
                [
                    "(0008,0016) UI =CTImageStorage",
                    f"(0008,0018) UI [{instance}]",
                    "(0008,0020) DA [20240101]",
                    "(0008,0030) TM [120000]",
                    "(0008,0060) CS [CT]",
                    "(0008,0070) LO [GE MEDICAL SYSTEMS]",
                    "(0008,1090) LO [Revolution CT]",
                    "(0010,0010) PN [Test^Phantom]",
                    "(0010,0020) LO [PHANTOM01]",
                    f"(0020,000d) UI [{study}]",
                    f"(0020,000e) UI [{series}]",
                    f"(0020,0013) IS [{number}]",
                    "(0028,0002) US 1",
                    "(0028,0004) CS [MONOCHROME2]",
                    "(0028,0010) US 4",
                    "(0028,0011) US 4",
                    "(0028,0100) US 16",
                    "(0028,0101) US 12",
                    "(0028,0102) US 11",
                    "(0028,0103) US 0",
                    f"(7fe0,0010) OW {pixels}",
                ]
            )
            + "\n"
        )
        subprocess.run(["dump2dcm", "--write-xfer-little", str(dump), str(image)], check=True, capture_output=True, timeout=30)
        return image

    def _hl7(self, source: str, application: str, facility: str, control_id: str) -> tuple[bool, str]:
        message = ward_apps.hl7_oru_r01(
            sending_application=application,
            sending_facility=facility,
            receiving_application="HL7ENGINE",
            receiving_facility="HOSPITAL",
            control_id=control_id,
            observations=VITALS,
        )
        reply, error = self._request(source, "hl7-engine", MLLP_PORT, ward_apps.mllp_frame(message), until=ward_apps.MLLP_END)
        acks = ward_apps.mllp_unframe(reply or b"")
        ok = bool(acks) and f"\rMSA|AA|{control_id}" in acks[0]
        return ok, error or (acks[0].replace("\r", " | ") if acks else "no ACK")

    def _ipp(self) -> tuple[bool, str]:
        uri = f"ipp://{self.ip('printer')}:631/ipp/print"
        body = ward_apps.ipp_get_printer_attributes(uri)
        payload = ward_apps.http_request("POST", f"{self.ip('printer')}:631", "/ipp/print", "Microsoft IPP Class Driver", body, "application/ipp")
        reply, error = self._request("workstation", "printer", 631, payload)
        if reply is None:
            return False, error
        head, _, ipp_body = reply.partition(b"\r\n\r\n")
        status = ward_apps.ipp_status_code(ipp_body)
        return head.startswith(b"HTTP/1.1 200") and status == 0, f"{_first_line(head)}, IPP status {status}"

    def _printer_mdns(self) -> bytes:
        printer = self.hosts["printer"]
        assert printer.dhcp is not None
        return ward_apps.mdns_announcement(
            service="_ipp._tcp",
            instance=f"{PRINTER_MODEL} [700023]",
            hostname=printer.dhcp.hostname,
            ipv4=printer.ipv4,
            port=631,
            txt=["txtvers=1", "qtotal=1", "rp=ipp/print", f"ty={PRINTER_MODEL}", f"product=({PRINTER_MODEL})",
                 "usb_MFG=HP", "usb_MDL=LaserJet Pro M404dn", "pdl=application/pdf,image/urf", "note=ICU"],
        )

    def _camera_ssdp(self) -> bytes:
        camera = self.hosts["camera"]
        return ward_apps.ssdp_notify(
            location=f"http://{camera.ipv4}:80/rootdesc1.xml",
            server=CAMERA_SERVER,
            usn_uuid=f"Upnp-BasicDevice-1_0-{camera.mac.replace(':', '').upper()}",
        )

    # --- attack ---

    def run_attack(
        self,
        attacker: str = "pump",
        targets: Sequence[str] = ("pacs", "hl7-engine"),
        ports: str = "1-1024",
        host_timeout: float = 20.0,
    ) -> AttackReport:
        """The compromised `attacker` scans `targets` (nmap SYN scan), then tries DICOM and HL7 directly."""
        start = time.monotonic()
        argv = [
            "nmap", "-sS", "-Pn", "-n", "--max-retries", "0", "-p", ports,
            "--host-timeout", f"{int(host_timeout)}s", "-oG", "-", *(self.ip(t) for t in targets),
        ]
        result = self._run(attacker, argv, timeout=host_timeout * len(targets) + 10)
        output = result.stdout if result is not None else ""
        completed = result is not None and result.returncode == 0 and "# Nmap done" in output
        by_ip = {self.ip(t): t for t in targets}
        open_ports: dict[str, tuple[int, ...]] = {t: () for t in targets}
        for match in re.finditer(r"^Host: (\S+) .*?Ports: (.*)$", output, re.MULTILINE):
            found = tuple(int(p.split("/")[0]) for p in match.group(2).split(", ") if p.split("/")[1:2] == ["open"])
            open_ports[by_ip.get(match.group(1), match.group(1))] = found
        dicom, dicom_detail = self._echoscu(attacker, "ALARIS")
        hl7, hl7_detail = self._hl7(attacker, "PCU", "ICU", "PWN0001")
        detail = f"nmap exit {None if result is None else result.returncode}; dicom: {dicom_detail}; hl7: {hl7_detail}"
        return AttackReport(attacker, tuple(targets), ports, completed, open_ports, dicom, hl7, time.monotonic() - start, detail)

    # --- capture ---

    @contextmanager
    def capture(self, path: Path, snaplen: int = 600, bpf_filter: Sequence[str] = ()) -> Iterator[Path]:
        """tcpdump on br0 (in the bridge namespace, promiscuous: every frame the bridge forwards) into `path`.

        Immediate mode: without it, frames of the last ring-buffer block (up to a second)
        are lost when tcpdump is stopped.
        """
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        process = self.topology.bridge_ns.popen(
            ["tcpdump", "-i", BRIDGE, "-n", "-U", "--immediate-mode", "-Z", "root", "-s", str(snaplen), "-w", str(path), *bpf_filter],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            if not _await_line(process.stderr, b"listening on", time.monotonic() + 10):
                raise WardError(f"tcpdump on {BRIDGE} did not start (exit {process.poll()})")
            yield path
            time.sleep(0.3)  # let the last frames of the body reach the capture
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def _http_ok(reply: bytes | None, error: str) -> tuple[bool, str]:
    if reply is None:
        return False, error
    return bool(re.match(rb"HTTP/1\.[01] 200", reply)), _first_line(reply)


def _first_line(data: bytes | None) -> str:
    return "" if not data else data.split(b"\r\n", 1)[0].decode(errors="replace")


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _await_line(stream: IO[bytes], marker: bytes, deadline: float) -> bool:
    buffer = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        buffer += chunk
        if marker in buffer:
            return True
    return False


def _listening(pid: int) -> set[tuple[str, int]]:
    """(proto, port) of listening TCP and bound UDP sockets in the network namespace of `pid`."""
    found: set[tuple[str, int]] = set()
    for proto, files, state in (("tcp", ("tcp", "tcp6"), "0A"), ("udp", ("udp", "udp6"), "07")):
        for name in files:
            try:
                lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[3] == state:
                    found.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
    return found
