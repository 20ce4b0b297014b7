"""LLDP: what a neighbour (switch, IP phone, access point, some medical devices) says it is.

Layout: IEEE 802.1AB: EtherType 0x88CC, then TLVs with a 16-bit header (7-bit type, 9-bit length):
1 Chassis ID (subtype byte; 4 = MAC address), 2 Port ID, 3 TTL, 4 Port Description, 5 System Name,
6 System Description, 7 System Capabilities (16-bit supported, 16-bit enabled), 0 End, 127
organisationally specific (OUI + subtype; LLDP-MED, ANSI/TIA-1057, is OUI 00-12-BB with inventory
subtypes 5..11).

Signals, all on SRC (the sender of the LLDPDU):
  lldp.chassis_id           the chassis ID when it is a MAC address (subtype 4), "aa:bb:..."
  lldp.port_description     TLV 4
  lldp.system_name          TLV 5
  lldp.system_description   TLV 6 (usually product and firmware)
  lldp.capabilities         the enabled capabilities, comma-separated ("bridge,router")
  lldp.med_<field>          LLDP-MED inventory: hardware_revision, firmware_revision,
                            software_revision, manufacturer, model (serial numbers and asset ids
                            are left out: they identify one unit, not a kind of device)
"""

from __future__ import annotations

from medseg_xdp.fingerprint.frame import ETH_P_LLDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

TLV_END, TLV_CHASSIS, TLV_PORT_DESC, TLV_SYS_NAME, TLV_SYS_DESC, TLV_CAPS, TLV_ORG = 0, 1, 4, 5, 6, 7, 127
CHASSIS_MAC = 4
TEXT_TLVS = {
    TLV_PORT_DESC: "lldp.port_description",
    TLV_SYS_NAME: "lldp.system_name",
    TLV_SYS_DESC: "lldp.system_description",
}
CAPABILITIES = (
    "other",
    "repeater",
    "bridge",
    "wlan_ap",
    "router",
    "telephone",
    "docsis",
    "station",
    "c_vlan",
    "s_vlan",
    "tpmr",
)
LLDP_MED_OUI = b"\x00\x12\xbb"
MED_INVENTORY = {5: "hardware_revision", 6: "firmware_revision", 7: "software_revision", 9: "manufacturer", 10: "model"}
MAX_TLVS = 64


def parse(frame: Frame) -> list[Observation]:
    if frame.ethertype != ETH_P_LLDP:
        return []
    out: list[Observation] = []
    for tlv_type, value in tlvs(frame.l3):
        if tlv_type == TLV_CHASSIS and len(value) == 7 and value[0] == CHASSIS_MAC:
            emit(out, Side.SRC, "lldp.chassis_id", ":".join(f"{b:02x}" for b in value[1:]))
        elif tlv_type in TEXT_TLVS:
            emit(out, Side.SRC, TEXT_TLVS[tlv_type], value)
        elif tlv_type == TLV_CAPS and len(value) >= 4:
            enabled = int.from_bytes(value[2:4], "big")
            names = [name for bit, name in enumerate(CAPABILITIES) if enabled >> bit & 1]
            emit(out, Side.SRC, "lldp.capabilities", ",".join(names))
        elif tlv_type == TLV_ORG and len(value) > 4 and value[:3] == LLDP_MED_OUI and value[3] in MED_INVENTORY:
            emit(out, Side.SRC, f"lldp.med_{MED_INVENTORY[value[3]]}", value[4:])
    return out


def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Complete TLVs up to End or the end of the sample."""
    found: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 2 <= len(data) and len(found) < MAX_TLVS:
        header = int.from_bytes(data[pos : pos + 2], "big")
        tlv_type, length = header >> 9, header & 0x01FF
        if tlv_type == TLV_END:
            break
        value = data[pos + 2 : pos + 2 + length]
        if len(value) < length:
            break  # cut by the snaplen
        found.append((tlv_type, value))
        pos += 2 + length
    return found
