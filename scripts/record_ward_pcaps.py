#!/usr/bin/env python3
"""Records tests/data/ward-clinical.pcap and tests/data/ward-attack.pcap from the virtual ward.

Needs root and the packages scripts/setup.sh installs. Builds the ward (no XDP program),
captures one clinical round and then the attack with tcpdump on br0 in the bridge
namespace, and removes everything afterwards. All traffic is synthetic and stays in the
ward's own namespaces. Run: sudo /opt/medseg-xdp/venv/bin/python scripts/record_ward_pcaps.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg_xdp.ward import Ward

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MAX_BYTES = 200_000
# A narrower scan than run_attack's default keeps the attack capture small: every probed
# port costs two frames (SYN, RST) per target. Still unmistakably a scan.
ATTACK_PORTS = "1-512"


def record(directory: Path, attack_ports: str = ATTACK_PORTS) -> dict[str, Path]:
    clinical, attack = directory / "ward-clinical.pcap", directory / "ward-attack.pcap"
    with Ward() as ward:
        with ward.capture(clinical):
            traffic = ward.run_clinical_traffic(1)
        if not traffic.ok:
            raise SystemExit(f"clinical round failed: {[f'{e.key}: {e.detail}' for e in traffic.failures]}")
        with ward.capture(attack):
            report = ward.run_attack(ports=attack_ports)
        if not report.scan_completed:
            raise SystemExit(f"attack scan did not complete: {report.detail}")
    for path in (clinical, attack):
        if path.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{path} is {path.stat().st_size} bytes, over {MAX_BYTES}")
    return {"clinical": clinical, "attack": attack}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA, help=f"directory (default {DATA})")
    parser.add_argument("--attack-ports", default=ATTACK_PORTS, help=f"nmap -p for the attack (default {ATTACK_PORTS})")
    args = parser.parse_args()
    for name, path in record(args.out, args.attack_ports).items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
