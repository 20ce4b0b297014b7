"""Import known devices from a CMDB or biomedical asset inventory (CSV).

Columns (header row, names case-insensitive): mac (required), class
(required, a class of medseg_xdp/data/classes.toml), and optionally ip,
model, location, owner. Each device becomes pinned with its class: the
classifier never moves it. Where the classifier's own evidence points
elsewhere, that is reported, not applied: the import is the person's word.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from medseg_xdp.classify import UNKNOWN
from medseg_xdp.inventory import Inventory

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
COLUMNS = ("mac", "ip", "class", "model", "location", "owner")


class AssetError(ValueError):
    """A row that cannot be imported; nothing of the file was imported."""


@dataclass(frozen=True)
class Asset:
    mac: str
    device_class: str
    ip: str = ""
    model: str = ""
    location: str = ""
    owner: str = ""


@dataclass(frozen=True)
class Disagreement:
    mac: str
    imported: str
    classifier: str
    evidence: str

    def line(self) -> str:
        return f"{self.mac}: imported as {self.imported}, the classifier says {self.classifier} ({self.evidence})"


def parse_assets(text: str, known_classes: set[str], source: str = "<csv>") -> list[Asset]:
    """Every row, or AssetError naming the line of the first bad one."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise AssetError(f"{source}: empty file")
    fields = {name.strip().lower(): name for name in reader.fieldnames}
    for required in ("mac", "class"):
        if required not in fields:
            raise AssetError(f"{source}:1: no '{required}' column (columns: {', '.join(COLUMNS)})")
    assets = []
    seen: set[str] = set()
    for number, row in enumerate(reader, start=2):
        value = {column: (row.get(fields[column]) or "").strip() for column in COLUMNS if column in fields}
        mac = value["mac"].lower().replace("-", ":")
        if not _MAC.match(mac):
            raise AssetError(f"{source}:{number}: {value['mac']!r} is not a MAC address")
        if mac in seen:
            raise AssetError(f"{source}:{number}: {mac} is listed twice")
        seen.add(mac)
        if value["class"] not in known_classes:
            raise AssetError(f"{source}:{number}: unknown class {value['class']!r} (one of {', '.join(sorted(known_classes))})")
        assets.append(Asset(mac, value["class"], value.get("ip", ""), value.get("model", ""), value.get("location", ""), value.get("owner", "")))
    return assets


def import_assets(inventory: Inventory, assets: list[Asset]) -> list[Disagreement]:
    """Pin each asset's class; report where the classifier's evidence disagrees."""
    disagreements = []
    for asset in assets:
        device = inventory.pin(asset.mac, device_class=asset.device_class)
        device.asset = {k: v for k, v in (("model", asset.model), ("location", asset.location), ("owner", asset.owner), ("ip", asset.ip)) if v}
        assessment = inventory.classifier.assess(device.observations)
        leader = assessment.leader
        if leader not in (UNKNOWN, asset.device_class) and assessment.scores[leader] >= inventory.classifier.catalog.minimum_score:
            why = "; ".join(f"{e.signal}={e.value}" for e in assessment.evidence if e.device_class == leader)
            disagreements.append(Disagreement(asset.mac, asset.device_class, leader, why))
    return disagreements
