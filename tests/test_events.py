"""SIEM export: the RFC 5424 and JSON-lines formats, rate limits, queueing through outages,
and delivery to a real rsyslogd over UDP, TCP and a unix socket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from rsyslog import TCP_PORT, UDP_PORT, Rsyslog

from medseg_xdp.config import SYSLOG_FACILITIES, ConfigError, EventSettings, parse
from medseg_xdp.events import SD_ID, Event, EventExporter, JsonLinesDestination, Severity, json_line, rfc5424
from medseg_xdp.traffic import wait_until

# RFC 5424 section 6, the parts we produce
HEADER = re.compile(r"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32}) ")
SD_PARAM = re.compile(r'([^= \]"]{1,32})="((?:[^"\\\]]|\\["\\\]])*)"')


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A destination that fails its first `failures` attempts, and can be held shut."""

    def __init__(self, failures: int = 0) -> None:
        self.name = "recorder"
        self.failures = failures
        self.events: list[Event] = []
        self.gate = threading.Event()
        self.gate.set()
        self.sending = threading.Event()

    def send(self, event: Event) -> None:
        self.sending.set()
        self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("down")
        self.events.append(event)

    def close(self) -> None:
        pass


def test_rfc5424_message_has_the_grammar_a_siem_parses() -> None:
    event = Event(1_800_000_000.5, "drop", Severity.warning, "drop tcp 10.0.0.1:5 -> 10.0.0.2:22", {"src_ip": "10.0.0.1", "why": 'a "quoted" ] \\ value', "dport": 22})
    raw = rfc5424(event, SYSLOG_FACILITIES["local4"], "bridge 1", 77)
    text = raw.decode()
    header = HEADER.match(text)
    assert header is not None, text
    assert int(header.group(1)) == 20 * 8 + 4
    assert header.group(2) == "2027-01-15T08:00:00.500000Z"
    assert header.group(3) == "bridge1"  # no spaces in a header field
    assert header.group(4, 5, 6) == ("medseg-xdp", "77", "drop")
    rest = text[header.end() :]
    assert rest.startswith(f"[{SD_ID} ")
    params = dict(SD_PARAM.findall(rest[: rest.index("] \ufeff") + 1]))
    assert params == {"src_ip": "10.0.0.1", "why": 'a \\"quoted\\" \\] \\\\ value', "dport": "22"}
    assert raw.endswith(b"\xef\xbb\xbfdrop tcp 10.0.0.1:5 -> 10.0.0.2:22")


def test_json_line_is_one_object_per_line_and_values_are_clipped() -> None:
    line = json_line(Event(1_800_000_000.0, "device-new", Severity.notice, "new device", {"mac": "00:11:22:33:44:55", "vendor": "x" * 1000}), "bridge-1")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record["kind"] == "device-new" and record["severity"] == "notice" and record["host"] == "bridge-1"
    assert record["mac"] == "00:11:22:33:44:55" and len(record["vendor"]) == 256


def test_drop_events_are_rate_limited_and_the_next_one_says_how_many_were_suppressed() -> None:
    clock = FakeClock()
    recorder = Recorder()
    exporter = EventExporter([recorder], drop_events_per_minute=3, clock=clock)
    for _ in range(10):
        exporter.emit("drop", Severity.warning, "drop")
    exporter.emit("break-glass-on", Severity.critical, "never rate limited")
    clock.now += 20  # one token back
    exporter.emit("drop", Severity.warning, "drop")
    exporter.close()
    assert [e.kind for e in recorder.events] == ["drop"] * 3 + ["break-glass-on", "drop"]
    assert recorder.events[-1].fields == {"suppressed_before": 7}
    assert exporter.counters.suppressed["drop"] == 7 and exporter.counters.sent["recorder"] == 5


def test_a_destination_that_is_down_gets_every_event_in_order_once_it_is_back() -> None:
    recorder = Recorder(failures=3)
    exporter = EventExporter([recorder], drop_events_per_minute=0)
    for n in range(20):
        exporter.emit("pin", Severity.notice, f"event {n}")
    assert wait_until(lambda: len(recorder.events) == 20, timeout=10)
    exporter.close()
    assert [e.message for e in recorder.events] == [f"event {n}" for n in range(20)]
    assert exporter.counters.failures["recorder"] == 3 and not exporter.counters.dropped


def test_a_full_queue_counts_what_it_could_not_keep() -> None:
    recorder = Recorder()
    recorder.gate.clear()  # the SIEM hangs
    exporter = EventExporter([recorder], drop_events_per_minute=0, queue_capacity=5)
    exporter.emit("pin", Severity.notice, "event 0")
    assert recorder.sending.wait(5)
    for n in range(1, 12):
        exporter.emit("pin", Severity.notice, f"event {n}")
    # one event is in the sender's hands, five wait, six had no room
    assert wait_until(lambda: exporter.counters.dropped["recorder", "queue_full"] == 6, timeout=5)
    recorder.gate.set()
    exporter.close()
    assert len(recorder.events) == 6 and exporter.counters.sent["recorder"] == 6


def test_events_unsent_at_exit_are_counted() -> None:
    recorder = Recorder(failures=1_000_000)
    exporter = EventExporter([recorder], drop_events_per_minute=0)
    for n in range(4):
        exporter.emit("pin", Severity.notice, f"event {n}")
    exporter.close(timeout=0.3)
    assert exporter.counters.dropped["recorder", "unsent_at_exit"] == 4


def test_json_lines_follow_the_file_when_logrotate_moves_it(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    destination = JsonLinesDestination(path, "bridge-1")
    destination.send(Event(1.0, "pin", Severity.notice, "first"))
    path.rename(tmp_path / "events.jsonl.1")
    destination.send(Event(2.0, "pin", Severity.notice, "second"))
    destination.close()
    assert json.loads((tmp_path / "events.jsonl.1").read_text())["message"] == "first"
    assert json.loads(path.read_text())["message"] == "second"
    assert path.stat().st_mode & 0o777 == 0o640


def test_config_events_section() -> None:
    settings = parse('[events]\nsyslog = "tcp://[::1]:6514"\njson_lines = "/var/log/m.jsonl"\nfacility = "local7"\n').events
    assert settings == EventSettings(syslog="tcp://[::1]:6514", json_lines=Path("/var/log/m.jsonl"), facility=23)
    assert not parse("").events.enabled
    with pytest.raises(ConfigError, match=r"<config>:2: events.syslog: 'syslog.example.org' is not"):
        parse('[events]\nsyslog = "syslog.example.org"\n')
    with pytest.raises(ConfigError, match="events.facility: 'local9' is not one of"):
        parse('[events]\nfacility = "local9"\n')


# ---- against a real rsyslogd ----

SEND = textwrap.dedent(
    """
    import sys
    from medseg_xdp.config import EventSettings
    from medseg_xdp.events import EventExporter, Severity
    exporter = EventExporter.from_settings(EventSettings(syslog=sys.argv[1]), hostname="bridge-7")
    exporter.emit("break-glass-on", Severity.critical, "break-glass on: code blue in ICU", reason="code blue", uid=1000)
    exporter.emit("drop", Severity.warning, "drop tcp 10.1.0.5:40000 -> 10.2.0.9:22", src_ip="10.1.0.5", dport=22, rule='default:"pumps"')
    exporter.close()
    print(dict(exporter.counters.sent), dict(exporter.counters.dropped))
    """
)


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("url", [f"udp://127.0.0.1:{UDP_PORT}", f"tcp://127.0.0.1:{TCP_PORT}", "unix"])
def test_rsyslog_parses_our_events_as_rfc5424(tmp_path: Path, url: str) -> None:
    with Rsyslog(tmp_path / "rsyslog") as rsyslog:
        target = f"unix:{rsyslog.socket}" if url == "unix" else url
        sent = rsyslog.namespace.run([sys.executable, "-c", SEND, target], check=False)
        assert sent.returncode == 0 and "{'syslog': 2} {}" in sent.stdout, sent.stderr
        got = rsyslog.wait_for(2)
    assert len(got) == 2, got
    glass, drop = got
    assert glass.input == {"udp": "imudp", "tcp": "imtcp", "unix": "imuxsock"}[url.split(":")[0]]
    assert (glass.pri, glass.hostname, glass.app, glass.msgid) == (20 * 8 + 2, "bridge-7", "medseg-xdp", "break-glass-on")
    assert glass.structured_data == f'[{SD_ID} reason="code blue" uid="1000"]'
    assert glass.msg.lstrip("\ufeff") == "break-glass on: code blue in ICU"
    assert (drop.pri, drop.msgid) == (20 * 8 + 4, "drop")
    assert drop.structured_data == f'[{SD_ID} src_ip="10.1.0.5" dport="22" rule="default:\\"pumps\\""]'


@pytest.mark.root
@pytest.mark.netns
def test_events_wait_through_a_syslog_outage_and_none_is_lost(tmp_path: Path) -> None:
    rsyslog = Rsyslog(tmp_path / "rsyslog")
    with rsyslog.namespace:
        rsyslog.workdir.mkdir(parents=True)
        exporter = EventExporter.from_settings(EventSettings(syslog=f"unix:{rsyslog.socket}"), hostname="bridge-7")
        for n in range(50):
            exporter.emit("pin", Severity.notice, f"event {n}")  # nobody listens yet
        assert wait_until(lambda: exporter.counters.failures["syslog"] >= 2, timeout=5)
        try:
            rsyslog.start()
            got = rsyslog.wait_for(50, timeout=20)
        finally:
            exporter.close()
            rsyslog.stop()
    assert [r.msg.lstrip("\ufeff") for r in got] == [f"event {n}" for n in range(50)]
    assert exporter.counters.sent["syslog"] == 50 and not exporter.counters.dropped
    assert not os.path.exists(rsyslog.socket) or rsyslog.socket.is_socket()


@pytest.mark.root
@pytest.mark.netns
def test_events_test_command_says_what_arrived(tmp_path: Path) -> None:
    """Commissioning: `medseg-xdp events-test` reaches rsyslog and the file, and names a destination that is down."""
    with Rsyslog(tmp_path / "rsyslog") as rsyslog:
        config = tmp_path / "policy.toml"
        jsonl = tmp_path / "events.jsonl"
        config.write_text(f'[events]\nsyslog = "unix:{rsyslog.socket}"\njson_lines = "{jsonl}"\n')
        run = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "events-test", "-c", str(config), "--note", "CHG-77"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["syslog: delivered", "json_lines: delivered"]
        (received,) = rsyslog.wait_for(1)
        assert received.msgid == "test" and 'note="CHG-77"' in received.structured_data
        assert json.loads(jsonl.read_text())["note"] == "CHG-77"
    config.write_text(f'[events]\nsyslog = "unix:{tmp_path}/nobody.sock"\n')
    down = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "events-test", "-c", str(config), "--timeout", "1"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "syslog: NOT delivered within 1 s" in down.stdout
