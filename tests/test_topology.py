"""The namespace topologies build, carry traffic, and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from pyroute2 import netns

from medseg_xdp.topology import PREFIX, HostSpec, InlineBridge, Namespace, cleanup_stale

pytestmark = [pytest.mark.root, pytest.mark.netns]


def ping(ns: Namespace, address: str) -> subprocess.CompletedProcess[str]:
    return ns.run(["ping", "-c", "1", "-W", "2", address], check=False)


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_client_reaches_server_over_v4_and_v6(inline_bridge: InlineBridge) -> None:
    for address in ("10.77.0.2", "fd77::2"):
        result = ping(inline_bridge.client_ns, address)
        assert result.returncode == 0, result.stdout + result.stderr
    result = ping(inline_bridge.server_ns, "fd77::1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ports_macs_and_mtu_follow_the_spec() -> None:
    client = HostSpec("ward", "02:77:aa:00:00:01", "10.78.0.1/24", "fd78::1/64", port="portA")
    server = HostSpec("core", "02:77:bb:00:00:02", "10.78.0.2/24", "fd78::2/64", port="portB")
    pump = HostSpec("pump", "02:77:cc:00:00:03", "10.78.0.3/24")
    with InlineBridge(client=client, server=server, devices=[pump], mtu=1400) as topology:
        assert set(topology.namespace_names) == {"bridge", "ward", "core", "pump"}
        assert topology.port_a_ifindex == topology.bridge_ns.ifindex("portA")
        assert topology.port_b_ifindex == topology.bridge_ns.ifindex("portB")
        assert topology.ports == {
            "portA": topology.port_a_ifindex,
            "portB": topology.port_b_ifindex,
            "p-pump": topology.bridge_ns.ifindex("p-pump"),
        }
        with topology.namespace("pump").iproute() as ipr:
            (link,) = ipr.link("get", ifname="eth0")
        assert link.get("address") == pump.mac
        assert link.get("mtu") == 1400
        result = ping(topology.namespace("pump"), "10.78.0.2")
        assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_left_after_exit_even_when_the_body_raises() -> None:
    before = set(netns.listnetns())
    with pytest.raises(RuntimeError, match="boom"):
        with InlineBridge() as topology:
            created = set(topology.namespace_names.values())
            assert created <= set(netns.listnetns())
            raise RuntimeError("boom")
    assert set(netns.listnetns()) == before
    assert not created & set(netns.listnetns())


def test_failed_build_removes_what_it_had_created() -> None:
    before = set(netns.listnetns())
    broken = HostSpec("broken", "not-a-mac", "10.77.0.9/24")
    with pytest.raises(ValueError):
        with InlineBridge(devices=[broken]):
            pytest.fail("a host with an invalid MAC must not build")
    assert set(netns.listnetns()) == before


def test_processes_inside_are_stopped_with_the_namespace() -> None:
    with Namespace("srv") as ns:
        server = ns.popen(["sleep", "300"])
        forked = int(ns.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout)
    assert server.poll() is not None
    assert wait_dead(forked)
    assert ns.name not in netns.listnetns()


def test_cleanup_stale_removes_only_namespaces_of_dead_runs() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"{PREFIX}{gone.pid}-0-stale"
    netns.create(stale)
    try:
        with Namespace("live") as live:
            assert stale in cleanup_stale()
            assert stale not in netns.listnetns()
            assert live.name in netns.listnetns()
    finally:
        if stale in netns.listnetns():
            netns.remove(stale)
