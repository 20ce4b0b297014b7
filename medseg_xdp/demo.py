"""`medseg-xdp demo`: until the virtual ward exists, a smoke run of the data path.

Builds client -- bridge -- server namespaces, attaches the real program to
both bridge ports with an enforcing policy, sends real traffic, and shows
what passed, what was dropped and which rule decided. Removes everything.
"""

from __future__ import annotations

import time

from medseg_xdp import config
from medseg_xdp.session import ProgramOnBridge
from medseg_xdp.topology import DEFAULT_CLIENT, DEFAULT_SERVER, InlineBridge
from medseg_xdp.traffic import exchange, ping, start_echo_server

SMOKE_POLICY = f"""
[bridge]
name = "demo"
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
id = "dicom-store"
from = "modality"
to = "pacs"
proto = "tcp"
ports = [104]
action = "allow"

[[rules]]
id = "echo"
from = "modality"
to = "pacs"
proto = "icmp"
ports = [8]
action = "allow"
"""


def run_smoke(keep_running: bool = False) -> int:
    cfg = config.parse(SMOKE_POLICY, "smoke policy")
    server_ip = DEFAULT_SERVER.ipv4.split("/")[0]
    print("building client -- [portA br0 portB] -- server in network namespaces ...")
    with InlineBridge() as ward, ProgramOnBridge(ward, cfg) as program:
        for a in program.attachments:
            print(f"  {a.ifname}: {a.mode} XDP, program id {a.prog_id}")
        start_echo_server(ward.server_ns, "tcp", "0.0.0.0", [104, 22])
        checks = {
            "ping modality -> pacs (allowed: rule echo)": ping(ward.client_ns, server_ip, count=3),
            "DICOM tcp/104 modality -> pacs (allowed: rule dicom-store)": exchange(ward.client_ns, "tcp", server_ip, 104),
            "ssh tcp/22 modality -> pacs (dropped: default:modality)": not exchange(ward.client_ns, "tcp", server_ip, 22, timeout=1.0),
        }
        for what, ok in checks.items():
            print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        assert program.dataplane is not None
        print("kernel counters (packets by verdict and reason):")
        for (verdict, reason), value in sorted(program.dataplane.stats().items()):
            print(f"  {verdict.name:<5} {reason.name:<18} {value.packets:>6} packets {value.bytes:>8} bytes")
        print("rule hits:")
        for rule_id, value in program.dataplane.rule_hits(list(program.rule_names)).items():
            print(f"  {program.rule_names[rule_id]:<20} {value.packets:>6} packets")
        if keep_running:
            print(f"left running; namespaces: {', '.join(ward.namespace_names.values())}. Ctrl-C to clean up.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    print("cleaned up: namespaces, XDP programs and pinned maps removed")
    return 0 if all(checks.values()) else 1
