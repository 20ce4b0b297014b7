"""Samples reach userspace as configured; overload is counted, never fatal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from medseg_xdp import abi, config
from medseg_xdp.config import TableSizes
from medseg_xdp.samples import Sample, SampleReader
from medseg_xdp.session import ProgramOnBridge
from medseg_xdp.topology import InlineBridge
from medseg_xdp.trace import Tracer

pytestmark = pytest.mark.root

POLICY = """
[bridge]
ports = ["portA", "portB"]
[settings]
sample_first_packets = {k}
sample_one_in_n = {n}
events_per_sec = {rate}
events_burst = {burst}
dhcp_samples_per_sec = 1
dhcp_samples_burst = 12
snaplen = 96
[segments.modalities]
macs = ["02:00:00:00:00:01"]
mode = "enforce"
default = "drop"
[[rules]]
id = "dicom"
from = "modalities"
to = "unassigned"
proto = "tcp"
ports = [104]
action = "allow"
"""


def policy(k: int = 2, n: int = 5, rate: int = 1, burst: int = 3) -> config.Config:
    return config.parse(POLICY.format(k=k, n=n, rate=rate, burst=burst), "sampling policy")


def dicom(sport: int, payload: bytes = b"") -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=sport, dport=104, flags="A") / Raw(payload))


@pytest.fixture
def traced(on_cpu0: None) -> Iterator[tuple[Tracer, list[Sample], SampleReader]]:
    """The sample budgets are per CPU: every packet of a test on one CPU, one bucket."""
    with Tracer(policy()) as tracer:
        received: list[Sample] = []
        reader = SampleReader(tracer.loader.bpf, received.append)
        yield tracer, received, reader


def test_first_k_then_one_in_n(traced: tuple[Tracer, list[Sample], SampleReader]) -> None:
    tracer, received, reader = traced
    frames = [dicom(5000, bytes([i]) * 200) for i in range(12)]
    for frame in frames:
        tracer.trace(frame, "portA")
    reader.poll()
    assert [s.kind for s in received] == [abi.SampleKind.first_packets] * 2 + [abi.SampleKind.one_in_n] * 2  # packets 1, 2, 5, 10
    assert [s.data for s in received] == [frames[i][:96] for i in (0, 1, 4, 9)]  # snaplen 96
    assert all(s.packet_len == len(frames[0]) and s.ifindex == tracer.ifindex["portA"] for s in received)
    rule = next(r for r, name in tracer.rule_names.items() if name == "dicom")
    assert {(s.verdict, s.reason, s.rule_id) for s in received[:1]} == {(abi.Verdict["pass"], abi.Reason.rule, rule)}


def test_dhcp_is_sampled_up_to_its_own_budget(traced: tuple[Tracer, list[Sample], SampleReader]) -> None:
    """A DHCP flood passes (a rail), its samples stop at their burst (counted), and other samples still come."""
    tracer, received, reader = traced
    for index in range(20):  # a starvation attack: every DISCOVER from another MAC
        discover = bytes(Ether(src=f"02:00:00:00:10:{index:02x}", dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                         / UDP(sport=68, dport=67) / Raw(bytes(240)))
        result = tracer.trace(discover, "portA")
        assert (result.verdict, result.reason) == ("pass", "rail_dhcp")
    telnet = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=1, dport=23, flags="S"))
    assert tracer.trace(telnet, "portA").verdict == "drop"
    tracer.trace(dicom(5000), "portA")
    reader.poll()
    assert [s.kind for s in received] == [abi.SampleKind.dhcp] * 12 + [abi.SampleKind.drop_event, abi.SampleKind.first_packets]
    assert tracer.dataplane is not None
    pressure = tracer.dataplane.pressure()
    assert (pressure[abi.Pressure.dhcp_rate_limited], pressure[abi.Pressure.event_rate_limited]) == (20 - 12, 0)


def test_drop_events_are_rate_limited_and_counted(traced: tuple[Tracer, list[Sample], SampleReader]) -> None:
    tracer, received, reader = traced
    for port in range(10):
        assert tracer.trace(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP(src="10.0.1.5", dst="10.0.2.5") / TCP(sport=port, dport=23, flags="S")), "portA").verdict == "drop"
    reader.poll()
    assert [s.kind for s in received] == [abi.SampleKind.drop_event] * 3  # the burst
    assert tracer.dataplane is not None
    assert tracer.dataplane.pressure()[abi.Pressure.event_rate_limited] == 7


def test_settings_change_at_run_time(traced: tuple[Tracer, list[Sample], SampleReader]) -> None:
    tracer, received, reader = traced
    tracer.load_config(policy(k=0, n=0))
    for _ in range(5):
        tracer.trace(dicom(6000), "portA")
    reader.poll()
    assert received == []


def test_a_full_ring_buffer_is_counted_not_fatal() -> None:
    """Nobody reads: the smallest ring (one page) fills; every further sample is counted."""
    with Tracer(policy(k=1000, n=0), sizes=TableSizes(ring_pages=1)) as tracer:
        for _ in range(50):
            assert tracer.trace(dicom(7000), "portA").verdict == "pass"
        assert tracer.dataplane is not None
        lost = tracer.dataplane.pressure()[abi.Pressure.ring_full]
        received: list[Sample] = []
        SampleReader(tracer.loader.bpf, received.append).poll()
    assert lost > 0
    assert len(received) + lost == 50


def test_a_full_flow_table_evicts_least_recent_flows_and_keeps_judging() -> None:
    """LRU: more allowed flows than entries never fails a packet; old flows are evicted."""
    with Tracer(policy(k=0, n=0), sizes=TableSizes(flows=1024)) as tracer:
        for port in range(5000):
            assert tracer.trace(dicom(10000 + port), "portA").verdict == "pass"
        assert tracer.dataplane is not None
        entries = sum(1 for _ in tracer.dataplane.flows())
        assert 0 < entries <= 1024 + 64  # LRU capacity (plus per-CPU free-list slack)
        assert tracer.dataplane.pressure()[abi.Pressure.flow_insert_failed] == 0


@pytest.mark.netns
def test_jumbo_mtu_port_falls_back_to_generic_xdp(caplog: pytest.LogCaptureFixture) -> None:
    """Native XDP without frags cannot take a 9000-byte MTU: generic mode, said in a warning."""
    cfg = config.parse('[bridge]\nports = ["portA", "portB"]\n', "jumbo")
    with InlineBridge(mtu=9000) as ward, ProgramOnBridge(ward, cfg) as program:
        assert {a.mode for a in program.attachments} == {"generic"}
    assert "MTU 9000 is above 3498" in caplog.text
