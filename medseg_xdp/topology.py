"""Network-namespace topologies for tests, the demo and benchmarks.

Everything here is a context manager that removes what it created, also when
the body raises. Links are always created inside our own namespaces, so
removing the namespaces removes the links with them.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from ipaddress import ip_interface
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

PREFIX = "msx-"
BRIDGE = "br0"
HOST_IFNAME = "eth0"
BRIDGE_ROLE = "bridge"
IFNAMSIZ = 16
_VLAN_OFFLOADS = ("rxvlan", "txvlan", "rx-vlan-stag-hw-parse", "tx-vlan-stag-hw-insert")
_ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,19}$")
_counter = itertools.count()


class NamespaceCommandError(subprocess.CalledProcessError):
    """A command inside a namespace failed; the message carries its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def _remove_namespace(name: str) -> None:
    _kill_pids(netns.ns_pids().get(name, []))
    netns.remove(name)


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces left by crashed runs; returns the names removed.

    Only namespaces whose creating process is gone are touched, so concurrent
    runs on the same host keep theirs.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    removed = []
    for name in netns.listnetns():
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _remove_namespace(name)
            removed.append(name)
    return removed


class Scoped:
    """A context manager whose set-up registers its own undoing: _set_up(stack) puts a callback on the
    stack for each thing it makes, exit undoes them in reverse, and a set-up that fails halfway undoes
    what it did before raising."""

    _stack: ExitStack

    def _set_up(self, stack: ExitStack) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        with ExitStack() as stack:
            self._set_up(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.close()


class Namespace(Scoped):
    """A uniquely named network namespace with loopback up.

    Processes started with `popen` are stopped before the namespace goes, and
    anything else still inside (daemons that forked away) is killed.
    """

    def __init__(self, role: str, prefix: str = PREFIX) -> None:
        if not _ROLE_RE.match(role):
            raise ValueError(f"namespace role {role!r} must match {_ROLE_RE.pattern}")
        self.role = role
        self.name = f"{prefix}{os.getpid()}-{next(_counter)}-{role}"
        self._processes: list[subprocess.Popen[Any]] = []

    def _set_up(self, stack: ExitStack) -> None:
        netns.create(self.name)
        stack.callback(_remove_namespace, self.name)
        stack.callback(self._stop_processes)
        with self.iproute() as ipr:
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")

    def iproute(self) -> IPRoute:
        """A netlink handle bound to this namespace (use it as a context manager)."""
        # flags=0: never create the namespace implicitly behind our back.
        return IPRoute(netns=self.name, flags=0)

    def ifindex(self, ifname: str) -> int:
        with self.iproute() as ipr:
            (index,) = ipr.link_lookup(ifname=ifname)
            return int(index)

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a program inside the namespace and capture its text output."""
        result = subprocess.run(
            self._argv(argv), capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and result.returncode != 0:
            raise NamespaceCommandError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running program (a server) inside the namespace."""
        process = subprocess.Popen(self._argv(argv), **kwargs)
        self._processes.append(process)
        return process

    def _stop_processes(self, grace: float = 2.0) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class HostSpec:
    """A host namespace on the bridge: its eth0 MAC, addresses (CIDR) and bridge port name."""

    name: str
    mac: str
    ipv4: str | None = None
    ipv6: str | None = None
    port: str | None = None

    @property
    def port_name(self) -> str:
        return self.port or f"p-{self.name}"[: IFNAMSIZ - 1]


DEFAULT_CLIENT = HostSpec("client", "02:77:00:00:00:01", "10.77.0.1/24", "fd77::1/64", port="portA")
DEFAULT_SERVER = HostSpec("server", "02:77:00:00:00:02", "10.77.0.2/24", "fd77::2/64", port="portB")


@dataclass
class InlineBridge(Scoped):
    """client -- portA [br0 in the bridge namespace] portB -- server, plus optional devices.

    Every host gets its own namespace whose eth0 is a veth peered with a port
    of br0. XDP programs attach to the ports inside the bridge namespace.
    """

    client: HostSpec = DEFAULT_CLIENT
    server: HostSpec = DEFAULT_SERVER
    devices: Sequence[HostSpec] = ()
    mtu: int = 1500
    _namespaces: dict[str, Namespace] = field(default_factory=dict, init=False, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _stack: ExitStack = field(default_factory=ExitStack, init=False, repr=False)

    def __post_init__(self) -> None:
        names = [host.name for host in self.hosts]
        ports = [host.port_name for host in self.hosts]
        if len(set(names)) != len(names) or BRIDGE_ROLE in names:
            raise ValueError(f"host names must be unique and not {BRIDGE_ROLE!r}: {names}")
        if len(set(ports)) != len(ports) or BRIDGE in ports:
            raise ValueError(f"bridge port names must be unique and not {BRIDGE!r}: {ports}")

    @property
    def hosts(self) -> tuple[HostSpec, ...]:
        return (self.client, self.server, *self.devices)

    def _set_up(self, stack: ExitStack) -> None:
        # Registered first so that it runs last: no stale handles after teardown.
        stack.callback(self._namespaces.clear)
        stack.callback(self._ports.clear)
        bridge = stack.enter_context(Namespace(BRIDGE_ROLE))
        self._namespaces[BRIDGE_ROLE] = bridge
        with bridge.iproute() as ipr:
            ipr.link("add", ifname=BRIDGE, kind="bridge", mtu=self.mtu)
            (bridge_index,) = ipr.link_lookup(ifname=BRIDGE)
            for host in self.hosts:
                ns = stack.enter_context(Namespace(host.name))
                self._namespaces[host.name] = ns
                self._ports[host.name] = self._plug(ipr, bridge_index, bridge, host, ns)
            ipr.link("set", index=bridge_index, state="up")

    def _plug(
        self, ipr: IPRoute, bridge_index: int, bridge: Namespace, host: HostSpec, ns: Namespace
    ) -> int:
        """Wire `host` to a new bridge port; returns the port's ifindex in the bridge namespace."""
        peer = {"ifname": HOST_IFNAME, "net_ns_fd": ns.name, "address": host.mac, "mtu": self.mtu}
        ipr.link("add", ifname=host.port_name, kind="veth", mtu=self.mtu, peer=peer)
        (port_index,) = ipr.link_lookup(ifname=host.port_name)
        ipr.link("set", index=port_index, master=bridge_index, state="up")
        with ns.iproute() as host_ipr:
            (index,) = host_ipr.link_lookup(ifname=HOST_IFNAME)
            for cidr, flags in ((host.ipv4, 0), (host.ipv6, IFA_F_NODAD)):
                if cidr is not None:
                    iface = ip_interface(cidr)
                    host_ipr.addr(
                        "add",
                        index=index,
                        address=str(iface.ip),
                        prefixlen=iface.network.prefixlen,
                        flags=flags,
                    )
            host_ipr.link("set", index=index, state="up")
        _disable_vlan_offload(bridge, host.port_name)
        _disable_vlan_offload(ns, HOST_IFNAME)
        return int(port_index)

    def replug(self, host_name: str) -> int:
        """Unplug a host's cable and plug in a new one, as a re-plugged NIC: its port is deleted and
        made again (same name, new ifindex, no XDP program). Returns the new ifindex."""
        host = next(h for h in self.hosts if h.name == host_name)
        with self.bridge_ns.iproute() as ipr:
            ipr.link("del", index=self._ports[host_name])  # takes the host's eth0, its veth peer, along
            (bridge_index,) = ipr.link_lookup(ifname=BRIDGE)
            self._ports[host_name] = self._plug(ipr, bridge_index, self.bridge_ns, host, self.namespace(host_name))
        return self._ports[host_name]

    def namespace(self, role: str) -> Namespace:
        """The namespace of a host by its name, or of the bridge by "bridge"."""
        return self._namespaces[role]

    @property
    def bridge_ns(self) -> Namespace:
        return self.namespace(BRIDGE_ROLE)

    @property
    def client_ns(self) -> Namespace:
        return self.namespace(self.client.name)

    @property
    def server_ns(self) -> Namespace:
        return self.namespace(self.server.name)

    @property
    def namespace_names(self) -> dict[str, str]:
        return {role: ns.name for role, ns in self._namespaces.items()}

    def port_ifindex(self, host: str) -> int:
        """Ifindex, inside the bridge namespace, of the bridge port that `host` hangs off."""
        return self._ports[host]

    @property
    def port_a_ifindex(self) -> int:
        return self.port_ifindex(self.client.name)

    @property
    def port_b_ifindex(self) -> int:
        return self.port_ifindex(self.server.name)

    @property
    def ports(self) -> dict[str, int]:
        """Bridge port name -> ifindex in the bridge namespace, for every port."""
        return {host.port_name: self._ports[host.name] for host in self.hosts}


def _disable_vlan_offload(ns: Namespace, ifname: str) -> None:
    """Keep 802.1Q and 802.1ad tags inside the frame, where XDP parses them (best effort)."""
    if shutil.which("ethtool"):
        args = [arg for feature in _VLAN_OFFLOADS for arg in (feature, "off")]
        ns.run(["ethtool", "-K", ifname, *args], check=False)
