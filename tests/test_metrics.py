"""Metrics, alerts, dashboard and unit: the daemon on a namespace bridge with real traffic,
scraped by a real Prometheus (Debian's binary, started here on loopback), queried through its
HTTP API; promtool on the exposition and the alert rules; the dashboard's queries run in that
Prometheus; metric names and labels pinned."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemonproc import stop_and_unload
from prometheus_client.parser import text_string_to_metric_families

from medseg_xdp import abi
from medseg_xdp import config as config_mod
from medseg_xdp.config import ConfigError
from medseg_xdp.control import ControlError, request
from medseg_xdp.daemon import control_socket, watchdog_interval
from medseg_xdp.dataplane import Dataplane
from medseg_xdp.loader import DEFAULT_PIN_ROOT
from medseg_xdp.metrics import SAMPLE_LOSSES
from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, HostSpec, InlineBridge, Namespace
from medseg_xdp.traffic import dicom_associate_request, send_payload, start_echo_server, wait_until

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "medseg-alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "medseg-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "medseg-dashboard.json"
UNIT = REPO / "deploy" / "systemd" / "medseg-xdp.service"

# Every metric family: name as PromQL sees it -> (type, label names). A rename must be deliberate.
PINNED: dict[str, tuple[str, frozenset[str]]] = {
    "medseg_packets_total": ("counter", frozenset({"verdict", "reason"})),
    "medseg_bytes_total": ("counter", frozenset({"verdict", "reason"})),
    "medseg_segment_pair_packets_total": ("counter", frozenset({"src_segment", "dst_segment", "verdict"})),
    "medseg_segment_pair_bytes_total": ("counter", frozenset({"src_segment", "dst_segment", "verdict"})),
    "medseg_rule_packets_total": ("counter", frozenset({"rule", "protocol", "ports", "action"})),
    "medseg_rule_bytes_total": ("counter", frozenset({"rule", "protocol", "ports", "action"})),
    "medseg_flow_table_entries": ("gauge", frozenset()),
    "medseg_flow_table_capacity": ("gauge", frozenset()),
    "medseg_flows_active": ("gauge", frozenset()),
    "medseg_map_pressure_total": ("counter", frozenset({"event"})),
    "medseg_samples_received_total": ("counter", frozenset()),
    "medseg_samples_lost_total": ("counter", frozenset({"reason"})),
    "medseg_devices": ("gauge", frozenset({"class", "segment", "criticality"})),
    "medseg_devices_discovered_total": ("counter", frozenset()),
    "medseg_devices_evicted_total": ("counter", frozenset()),
    "medseg_classification_changes_total": ("counter", frozenset({"from_class", "to_class"})),
    "medseg_policy_generation": ("gauge", frozenset()),
    "medseg_break_glass": ("gauge", frozenset()),
    "medseg_policy_last_apply_timestamp_seconds": ("gauge", frozenset()),
    "medseg_policy_apply_duration_seconds": ("histogram", frozenset()),
    "medseg_segment_info": ("gauge", frozenset({"segment", "life_critical", "mode"})),
    "medseg_attachment_info": ("gauge", frozenset({"interface", "mode"})),
    "medseg_port_enforcing": ("gauge", frozenset({"interface"})),
    "medseg_port_reattached_total": ("counter", frozenset()),
    "medseg_events_sent_total": ("counter", frozenset({"destination"})),
    "medseg_events_send_failures_total": ("counter", frozenset({"destination"})),
    "medseg_events_lost_total": ("counter", frozenset({"destination", "reason"})),
    "medseg_events_suppressed_total": ("counter", frozenset({"kind"})),
    "medseg_up": ("gauge", frozenset()),
    "medseg_main_loop_last_run_timestamp_seconds": ("gauge", frozenset()),
    "medseg_build_info": ("gauge", frozenset({"version", "abi"})),
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Labels that would carry addresses, MACs or names from the traffic: never.
FORBIDDEN_LABELS = {"ip", "mac", "address", "host", "hostname", "src_ip", "dst_ip", "client", "device"}

PUMP = HostSpec("pump", "02:77:00:00:00:03", "10.77.0.3/24", "fd77::3/64", port="portC")
SERVER = DEFAULT_SERVER.ipv4.split("/")[0]  # type: ignore[union-attr]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SINK_PORT = 5000
PAYLOAD = b"medseg-metrics!!"  # 16 bytes: frames of 14 + 20 + 8 + 16 = 58 bytes
FRAME_BYTES = 14 + 20 + 8 + len(PAYLOAD)
CLIENT_DROPS = 3
PUMP_AUDITS = 2
FLOW_TABLE = 4096

POLICY = """
[bridge]
name = "{bridge}"
ports = ["portA", "portB", "portC"]

[tables]
flows = {flows}

[daemon]
state_dir = "{state_dir}"
metrics = "127.0.0.1:{port}"

[events]
json_lines = "{state_dir}/events.jsonl"

[segments.clients]
macs = ["{client_mac}"]
mode = "enforce"
default = "drop"
life_critical = true
allow_enforce_life_critical = true

[segments.pumps]
macs = ["{pump_mac}"]
mode = "monitor"
default = "drop"
life_critical = true

[segments.pacs]
macs = ["{server_mac}"]
mode = "monitor"
default = "drop"

[[rules]]
id = "dicom-store"
from = "clients"
to = "pacs"
proto = "tcp"
ports = [104]
action = "allow"
"""

_SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    s.recv(65536)
"""

_SEND_UDP = r"""
import socket, sys
host, port, count, payload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(payload, (host, port))
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/setup.sh installs it (Debian package prometheus)")
    return path


def send_udp(ns: Namespace, count: int) -> None:
    ns.run([sys.executable, "-c", _SEND_UDP, SERVER, str(SINK_PORT), str(count), PAYLOAD.hex()])


class Prometheus:
    """Debian's prometheus binary on loopback, scraping one target every second; killed on exit."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {ALERTS}\n"
            f"scrape_configs:\n  - job_name: medseg-xdp\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self, timeout: float = 30) -> None:
        def answers() -> bool:
            try:
                return "Ready" in http_get(f"{self.url}/-/ready", timeout=1)
            except OSError:
                return self.process.poll() is not None

        assert wait_until(answers, timeout=timeout, interval=0.2) and self.process.poll() is None, self.log.read_text()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read().decode())
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: more than one series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, expected: float | Callable[[], float], timeout: float = 15) -> None:
        """Wait until the query gives expected (a callable: read again on every try)."""
        seen: list[tuple[float | None, float]] = []

        def matches() -> bool:
            seen.append((self.value(expr), expected() if callable(expected) else expected))
            return seen[-1][0] == seen[-1][1]

        assert wait_until(matches, timeout=timeout, interval=0.25), f"{expr}: (value, expected) of the last tries: {seen[-3:]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@dataclass
class Live:
    ward: InlineBridge
    config: Path
    state_dir: Path
    daemon: subprocess.Popen[bytes]
    log: Path
    prometheus: Prometheus
    metrics_url: str
    notified: list[str] = field(default_factory=list)

    def ask(self, op: str, **arguments: object) -> Any:
        return request(control_socket(self.state_dir), op, **arguments)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and BPF")
    tmp = tmp_path_factory.mktemp("metrics")
    state_dir = tmp / "state"
    config = tmp / "policy.toml"
    port = free_port()
    bridge = f"mtest{os.getpid()}"
    config.write_text(
        POLICY.format(
            bridge=bridge,
            flows=FLOW_TABLE,
            state_dir=state_dir,
            port=port,
            client_mac=DEFAULT_CLIENT.mac,
            pump_mac=PUMP.mac,
            server_mac=DEFAULT_SERVER.mac,
        )
    )
    log = tmp / "daemon.log"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    notify.settimeout(5)
    prometheus: Prometheus | None = None
    try:
        with InlineBridge(devices=[PUMP]) as ward:
            start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104])
            sink = ward.server_ns.popen([sys.executable, "-c", _SINK, str(SINK_PORT)], stdout=subprocess.PIPE, text=True)
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            with log.open("ab") as out:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "medseg_xdp.cli", "run", "-c", str(config), "--netns", ward.bridge_ns.name],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "WATCHDOG_USEC": "1000000"},
                )
            try:
                assert wait_until(lambda: answers(state_dir) or daemon.poll() is not None, timeout=60) and daemon.poll() is None, log.read_text()
                notified = [notify.recv(4096).decode(), notify.recv(4096).decode()]  # ready, then the loop's first ping
                prometheus = Prometheus(tmp / "prometheus", f"127.0.0.1:{port}")
                prometheus.ready()
                running = Live(ward, config, state_dir, daemon, log, prometheus, f"http://127.0.0.1:{port}/metrics", notified)
                prometheus.wait_value('up{job="medseg-xdp"}', 1)
                # the traffic: an allowed DICOM association (it also classifies the client),
                # datagrams the clients' enforce mode drops, datagrams the pumps' monitor mode audits
                assert send_payload(ward.client_ns, SERVER, 104, dicom_associate_request("CT01", "PACS", CT_IMAGE_STORAGE))
                send_udp(ward.client_ns, CLIENT_DROPS)
                send_udp(ward.namespace("pump"), PUMP_AUDITS)

                def classified() -> bool:
                    return any(d["mac"] == DEFAULT_CLIENT.mac and d["class"] == "imaging_modality" for d in running.ask("devices"))

                assert wait_until(classified, timeout=10), log.read_text()
                running.ask("policy_apply")  # a second apply, for the histogram
                yield running
            finally:
                if prometheus is not None:
                    prometheus.stop()
                stop_and_unload(daemon, config, ward, DEFAULT_PIN_ROOT / bridge)
    finally:
        notify.close()
    assert not (DEFAULT_PIN_ROOT / bridge).exists()


def answers(state_dir: Path) -> bool:
    try:
        request(control_socket(state_dir), "status", timeout=1)
        return True
    except ControlError:
        return False


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """The exposition's families, named as PromQL sees them, with the label names of their samples."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        found[name] = (family.type, labels)
    return found


def metric_names(expr: str) -> set[str]:
    """medseg_* metric names in a PromQL expression (histogram series under their family)."""
    names = set(re.findall(r"\bmedseg_[a-z0-9_]+", expr))
    return {next((n.removesuffix(s) for s in HISTOGRAM_SERIES if n.removesuffix(s) in PINNED), n) for n in names}


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in, as Grafana would send it."""
    for variable, value in (("$__rate_interval", "1m"), ("$__range", "5m"), ("$__interval", "15s"), ("$instance", ".*")):
        expr = expr.replace(variable, value)
    return expr


# ---- with the daemon and Prometheus ----


@pytest.mark.root
@pytest.mark.netns
def test_prometheus_sees_exactly_the_traffic_sent(live: Live) -> None:
    prom = live.prometheus
    cfg = config_mod.load(live.config)
    status = live.ask("status")
    with Dataplane(Path(status["pin_dir"])) as kernel:
        pairs = kernel.pair_stats()
    clients, pumps, pacs = (cfg.segment_id(name) for name in ("clients", "pumps", "pacs"))
    # the kernel's own counters: one per datagram, nothing else between these pairs with these verdicts
    assert pairs[clients, pacs, abi.Verdict.drop].packets == CLIENT_DROPS
    assert pairs[pumps, pacs, abi.Verdict.audit].packets == PUMP_AUDITS
    pair = 'medseg_segment_pair_{what}_total{{src_segment="{src}", dst_segment="pacs", verdict="{verdict}"}}'
    prom.wait_value(pair.format(what="packets", src="clients", verdict="drop"), CLIENT_DROPS)
    prom.wait_value(pair.format(what="bytes", src="clients", verdict="drop"), CLIENT_DROPS * FRAME_BYTES)
    prom.wait_value(pair.format(what="packets", src="pumps", verdict="audit"), PUMP_AUDITS)
    prom.wait_value(pair.format(what="bytes", src="pumps", verdict="audit"), PUMP_AUDITS * FRAME_BYTES)
    # the totals by verdict agree with the daemon's status (the control socket)
    prom.wait_value('sum(medseg_packets_total{verdict="drop"})', lambda: live.ask("status")["packets"]["drop"])
    prom.wait_value('sum(medseg_packets_total{verdict="audit"})', lambda: live.ask("status")["packets"]["audit"])
    # the DICOM flow: every packet of it, both directions, carries the rule
    def dicom() -> int:
        return sum(f["packets"] for f in live.ask("flows", top=100) if f["rule"] == "dicom-store")

    assert dicom() >= 4
    prom.wait_value('medseg_rule_packets_total{rule="dicom-store", protocol="tcp", ports="104", action="allow"}', dicom)
    prom.wait_value('medseg_rule_packets_total{rule="default:clients", protocol="any", ports="any", action="drop"}', lambda: live.ask("status")["packets"]["drop"])
    assert prom.value('medseg_rule_packets_total{rule="default:pumps", action="drop"}') == PUMP_AUDITS

    # devices, classes, samples
    prom.wait_value('medseg_devices{class="imaging_modality", segment="clients", criticality="high"}', 1)
    assert (prom.value('medseg_classification_changes_total{from_class="unknown", to_class="imaging_modality"}') or 0) >= 1
    assert (prom.value("medseg_devices_discovered_total") or 0) >= 3
    assert prom.value('sum(medseg_devices{segment="pumps"})') == 1
    assert (prom.value("medseg_samples_received_total") or 0) >= 1
    prom.wait_value('medseg_samples_lost_total{reason="ring_full"}', 0)
    assert len(prom.query("medseg_map_pressure_total")) == len(abi.Pressure) - len(SAMPLE_LOSSES)  # those are samples lost

    # policy state: two applies (start, policy_apply), each observed by the histogram
    status = live.ask("status")
    prom.wait_value("medseg_policy_generation", status["generation"])
    prom.wait_value("medseg_policy_apply_duration_seconds_count", 2)
    assert prom.value("medseg_policy_last_apply_timestamp_seconds") == pytest.approx(status["last_apply"]["at"], abs=0.01)
    assert 0 < (prom.value("medseg_policy_apply_duration_seconds_sum") or 0) < 30

    # configuration-bound series
    for port in cfg.ports:
        assert prom.value(f'medseg_attachment_info{{interface="{port}", mode="native"}}') == 1
    assert prom.value('medseg_segment_info{segment="clients", life_critical="true", mode="enforce"}') == 1
    assert prom.value('medseg_segment_info{segment="pumps", life_critical="true", mode="monitor"}') == 1
    assert prom.value('medseg_segment_info{segment="pacs", life_critical="false", mode="monitor"}') == 1
    assert prom.value("medseg_flow_table_capacity") == FLOW_TABLE
    assert (prom.value("medseg_flow_table_entries") or 0) >= 1
    assert (prom.value("medseg_flows_active") or 0) >= 1
    assert prom.value("medseg_break_glass") == 0
    assert prom.value("medseg_up") == 1
    assert (prom.value("time() - medseg_main_loop_last_run_timestamp_seconds") or 0) < 30  # the loop runs
    for port in cfg.ports:
        assert prom.value(f'medseg_port_enforcing{{interface="{port}"}}') == 1
    assert prom.value("medseg_port_reattached_total") == 0
    # SIEM events: every one the daemon sent is a line in the file
    events_file = live.state_dir / "events.jsonl"
    prom.wait_value('medseg_events_sent_total{destination="json_lines"}', lambda: len(events_file.read_text().splitlines()))
    assert prom.value('sum(medseg_events_lost_total{destination="json_lines"})') == 0
    assert prom.value('medseg_build_info{version="0.1.0"}') == 1


@pytest.mark.root
@pytest.mark.netns
def test_the_alert_rules_fire_on_the_live_traffic(live: Live) -> None:
    def alerts() -> dict[tuple[str, str], str]:
        found = live.prometheus.api("alerts")["data"]["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("src_segment", "")): a["state"] for a in found}

    wanted = {("MedsegLifeCriticalSegmentDrops", "clients"): "firing", ("MedsegLifeCriticalSegmentWouldDrop", "pumps"): "firing"}
    assert wait_until(lambda: wanted.items() <= alerts().items(), timeout=15, interval=0.5), alerts()
    rules = live.prometheus.api("rules")["data"]["groups"]
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"]), rules
    active = alerts()
    assert ("MedsegDaemonDown", "") not in active
    assert not any(name == "MedsegLifeCriticalSegmentDrops" and src != "clients" for name, src in active)


@pytest.mark.root
@pytest.mark.netns
def test_the_exposition_passes_promtool(live: Live) -> None:
    text = http_get(live.metrics_url)
    result = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


@pytest.mark.root
@pytest.mark.netns
def test_metric_names_and_labels_are_pinned(live: Live) -> None:
    found = families(http_get(live.metrics_url))
    assert {name: (kind, frozenset(labels)) for name, (kind, labels) in found.items()} == PINNED
    # nothing from the traffic in a label: no addresses, MACs or hostnames
    text = http_get(live.metrics_url)
    for host in (DEFAULT_CLIENT, DEFAULT_SERVER, PUMP):
        assert host.mac not in text and host.ipv4.split("/")[0] not in text  # type: ignore[union-attr]
    assert not FORBIDDEN_LABELS & {label for _, labels in found.values() for label in labels}


@pytest.mark.root
@pytest.mark.netns
def test_every_dashboard_query_runs_in_prometheus(live: Live) -> None:
    exposed = set(families(http_get(live.metrics_url)))
    for title, expr in dashboard_targets():
        body = live.prometheus.api("query", query=as_promql(expr))
        assert body["status"] == "success", f"{title}: {expr}: {body}"
        assert metric_names(expr) <= exposed, f"{title}: {metric_names(expr) - exposed} not exposed"
    # the matrix of drops counts a pair first seen in the range whole: exactly the datagrams sent
    dropped = as_promql(next(expr for title, expr in dashboard_targets() if title == "Dropped"))
    cells = {(r["metric"]["src_segment"], r["metric"]["dst_segment"]): float(r["value"][1]) for r in live.prometheus.query(dropped)}
    assert cells[("clients", "pacs")] == CLIENT_DROPS


@pytest.mark.root
@pytest.mark.netns
def test_the_daemon_tells_systemd_when_it_enforces(live: Live) -> None:
    assert live.notified == ["READY=1", "WATCHDOG=1"]


# ---- without root ----


def test_the_watchdog_pings_at_half_systemds_period_and_only_for_its_own_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    assert watchdog_interval({}) is None


def test_the_metrics_endpoint_is_loopback_unless_set() -> None:
    assert config_mod.parse("").daemon.metrics_listen() == ("127.0.0.1", 9479)
    assert config_mod.parse('[daemon]\nmetrics = ""\n').daemon.metrics_listen() is None
    assert config_mod.parse('[daemon]\nmetrics = "0.0.0.0:9100"\n').daemon.metrics_listen() == ("0.0.0.0", 9100)
    assert config_mod.parse('[daemon]\nmetrics = "[::1]:9479"\n').daemon.metrics_listen() == ("::1", 9479)
    for bad in ("localhost:9479", "127.0.0.1", "::1:9479", "127.0.0.1:0", "127.0.0.1:65536"):
        with pytest.raises(ConfigError, match=r"p\.toml:2: daemon\.metrics: .* is not address:port"):
            config_mod.parse(f'[daemon]\nmetrics = "{bad}"\n', "p.toml")


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool("promtool"), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alert_rules_use_only_pinned_metrics() -> None:
    names = metric_names(ALERTS.read_text())
    assert names and names <= set(PINNED), names - set(PINNED)


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"] and "id" not in dashboard  # an import gets a new id
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos"} <= panel.keys(), panel
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert metric_names(expr) and metric_names(expr) <= set(PINNED), f"{panel['title']}: {metric_names(expr) - set(PINNED)}"
    used = {name for _, expr in dashboard_targets() for name in metric_names(expr)}
    assert {"medseg_segment_pair_packets_total", "medseg_devices", "medseg_rule_packets_total"} <= used


def test_the_systemd_unit() -> None:
    unit: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            unit.setdefault(key.strip(), []).append(value.strip())
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_SYS_ADMIN CAP_BPF CAP_PERFMON"]
    assert unit["Restart"] == ["on-failure"] and unit["StateDirectory"] == ["medseg-xdp"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and unit["Type"] == ["notify"] and unit["WatchdogSec"] == ["60s"] and unit["WatchdogSignal"] == ["SIGKILL"]
    assert unit["Before"] == ["network-pre.target"] and unit["Wants"] == ["network-pre.target"]
    assert "ProtectKernelModules" not in unit  # it would hide /lib/modules from BCC
    if shutil.which("systemd-analyze") and Path(unit["ExecStart"][0].split()[0]).exists():
        verified = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
