"""A real rsyslogd for the tests: UDP and TCP on the loopback of a namespace of its own, and a unix socket.

It writes each message it receives as one line of the RFC 5424 properties it
parsed (input|pri|timestamp|hostname|app-name|procid|msgid|structured-data|msg),
so a test sees what a SIEM behind rsyslog would see, not what we sent.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg_xdp.topology import Namespace, Scoped

UDP_PORT = 5514
TCP_PORT = 5515
FIELDS = ("input", "pri", "timestamp", "hostname", "app", "procid", "msgid", "structured_data", "msg")

CONFIG = """
global(workDirectory="{workdir}")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imuxsock" Socket="{socket}" UseSpecialParser="off" ParseHostname="on")
template(name="fields" type="list") {{
  property(name="inputname") constant(value="|")
  property(name="pri") constant(value="|")
  property(name="timereported" dateFormat="rfc3339") constant(value="|")
  property(name="hostname") constant(value="|")
  property(name="app-name") constant(value="|")
  property(name="procid") constant(value="|")
  property(name="msgid") constant(value="|")
  property(name="structured-data") constant(value="|")
  property(name="msg") constant(value="\\n")
}}
action(type="omfile" file="{output}" template="fields")
"""


@dataclass
class Received:
    input: str
    pri: int
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    structured_data: str
    msg: str


class Rsyslog(Scoped):
    """rsyslogd in its own namespace; `socket` is reachable from any namespace (it is a file)."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("rsyslogd") is None:
            pytest.fail("rsyslogd is missing: scripts/setup.sh installs rsyslog")
        self.workdir = workdir
        self.socket = workdir / "log.sock"
        self.output = workdir / "received.log"
        self.namespace = Namespace("syslog")
        self._process: subprocess.Popen[bytes] | None = None

    def _set_up(self, stack: ExitStack) -> None:
        stack.enter_context(self.namespace)
        stack.callback(self.stop)
        self.start()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rsyslog.conf"
        config.write_text(CONFIG.format(workdir=self.workdir, udp=UDP_PORT, tcp=TCP_PORT, socket=self.socket, output=self.output))
        self._process = self.namespace.popen(["rsyslogd", "-n", "-f", str(config), "-i", str(self.workdir / "rsyslogd.pid")], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not (self.socket.exists() and self._listening()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd did not start: {self._process.stderr.read().decode() if self._process.stderr else ''}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        shown = self.namespace.run(["ss", "-Hlnt", f"sport = :{TCP_PORT}"], check=False).stdout
        return str(TCP_PORT) in shown

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def received(self) -> list[Received]:
        if not self.output.exists():
            return []
        lines = self.output.read_text(errors="replace").splitlines()
        return [Received(*(int(v) if name == "pri" else v for name, v in zip(FIELDS, line.split("|", len(FIELDS) - 1), strict=True))) for line in lines]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(got := self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return got
