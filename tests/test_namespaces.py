"""Real traffic through a real bridge with the program on both ports.

client -- portA [br0] portB -- server, each in its own namespace; real
sockets, real ping; assertions on what got through and on the kernel's
counters.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from medseg_xdp import abi, config
from medseg_xdp.session import ProgramOnBridge
from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, InlineBridge
from medseg_xdp.traffic import exchange, ping, start_echo_server

pytestmark = [pytest.mark.root, pytest.mark.netns]

PASS = abi.Verdict["pass"]
SERVER_V4 = DEFAULT_SERVER.ipv4.split("/")[0]  # type: ignore[union-attr]
SERVER_V6 = DEFAULT_SERVER.ipv6.split("/")[0]  # type: ignore[union-attr]

POLICY = f"""
[bridge]
name = "nstest"
ports = ["{DEFAULT_CLIENT.port_name}", "{DEFAULT_SERVER.port_name}"]

[segments.modality]
macs = ["{DEFAULT_CLIENT.mac}"]
mode = "enforce"
default = "drop"

[segments.pacs]
macs = ["{DEFAULT_SERVER.mac}"]
mode = "enforce"
default = "drop"

[[rules]]
id = "dicom"
from = "modality"
to = "pacs"
proto = "tcp"
ports = [104]
action = "allow"

[[rules]]
id = "staged"
from = "modality"
to = "pacs"
proto = "tcp"
ports = [8443]
action = "audit"

[[rules]]
id = "syslog"
from = "modality"
to = "pacs"
proto = "udp"
ports = [514]
action = "allow"
"""


@pytest.fixture(scope="module")
def program() -> Iterator[ProgramOnBridge]:
    with InlineBridge() as ward, ProgramOnBridge(ward, config.parse(POLICY, "namespace policy")) as attached:
        start_echo_server(ward.server_ns, "tcp", "::", [104, 22, 8443])
        start_echo_server(ward.server_ns, "udp", "::", [514, 515])
        yield attached


def _count(program: ProgramOnBridge, verdict: abi.Verdict, reason: abi.Reason) -> int:
    assert program.dataplane is not None
    value = program.dataplane.stats().get((verdict, reason))
    return value.packets if value else 0


def test_attached_natively_to_both_ports(program: ProgramOnBridge) -> None:
    assert sorted(a.ifname for a in program.attachments) == ["portA", "portB"]
    assert {a.mode for a in program.attachments} == {"native"}


@pytest.mark.parametrize("server", [SERVER_V4, SERVER_V6])
def test_allowed_tcp_completes_both_ways(program: ProgramOnBridge, server: str) -> None:
    replies = _count(program, PASS, abi.Reason.reply)
    assert exchange(program.topology.client_ns, "tcp", server, 104)
    assert _count(program, PASS, abi.Reason.reply) > replies


@pytest.mark.parametrize("server", [SERVER_V4, SERVER_V6])
def test_denied_tcp_never_completes(program: ProgramOnBridge, server: str) -> None:
    drops = _count(program, abi.Verdict.drop, abi.Reason.segment_default)
    assert not exchange(program.topology.client_ns, "tcp", server, 22, timeout=1.0)
    assert _count(program, abi.Verdict.drop, abi.Reason.segment_default) > drops


def test_server_cannot_open_connections_back(program: ProgramOnBridge) -> None:
    """Stateful: replies pass, but the pacs may not initiate towards the modality."""
    client_v4 = DEFAULT_CLIENT.ipv4.split("/")[0]  # type: ignore[union-attr]
    start_echo_server(program.topology.client_ns, "tcp", "0.0.0.0", [104])
    assert not exchange(program.topology.server_ns, "tcp", client_v4, 104, timeout=1.0)


def test_audit_passes_and_counts(program: ProgramOnBridge) -> None:
    audited = _count(program, abi.Verdict.audit, abi.Reason.rule)
    assert exchange(program.topology.client_ns, "tcp", SERVER_V4, 8443)
    assert _count(program, abi.Verdict.audit, abi.Reason.rule) > audited
    assert program.dataplane is not None
    staged = next(rid for rid, name in program.rule_names.items() if name == "staged")
    assert program.dataplane.rule_hits([staged])[staged].packets >= 4  # SYN, SYN-ACK, data, echo


def test_udp_allowed_and_denied(program: ProgramOnBridge) -> None:
    assert exchange(program.topology.client_ns, "udp", SERVER_V4, 514)
    assert not exchange(program.topology.client_ns, "udp", SERVER_V4, 515, timeout=1.0)


def test_icmp_follows_policy_and_plumbing_survives(program: ProgramOnBridge) -> None:
    """No rule allows ICMP echo, so ping fails; ARP and ND still work under deny-default."""
    assert not ping(program.topology.client_ns, SERVER_V4, timeout=1)
    assert _count(program, PASS, abi.Reason.rail_arp) > 0
    assert _count(program, PASS, abi.Reason.rail_nd) > 0  # IPv6 exchanges above needed ND


def test_policy_flips_under_traffic_never_mix(program: ProgramOnBridge) -> None:
    """Flip between two equivalent policies while connections run: none fails, nothing drops.

    Policy B names the segments differently (other ids), so a packet judged by
    identity from one generation and rules from the other would find no rule
    and be dropped by the segment default.
    """
    renamed = (
        POLICY.replace("[segments.modality]", "[segments.modality]\nid = 11")
        .replace("[segments.pacs]", "[segments.pacs]\nid = 12")
    )
    policies = [config.parse(POLICY, "a"), config.parse(renamed, "b")]
    drops_before = sum(
        v.packets for (verdict, reason), v in program.dataplane.stats().items()  # type: ignore[union-attr]
        if verdict == abi.Verdict.drop
    )
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            program.apply(policies[flips % 2])
            flips += 1

    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        results = []
        while flips < 20 and len(results) < 200:
            results.append(exchange(program.topology.client_ns, "tcp", SERVER_V4, 104))
    finally:
        stop.set()
        thread.join()
    program.apply(policies[0])
    drops_after = sum(
        v.packets for (verdict, reason), v in program.dataplane.stats().items()  # type: ignore[union-attr]
        if verdict == abi.Verdict.drop
    )
    assert flips >= 20
    assert all(results)
    assert drops_after == drops_before
