#!/usr/bin/env bash
# Provisioning of one benchmark VM (run by Vagrant as root; idempotent, `vagrant provision` re-runs it):
#   provision.sh ROLE IFNAME MAC [IFNAME MAC ...]
# names the data NICs by their MAC, sets them up for native XDP on virtio-net,
# and prepares the role: bridge = medseg-xdp via the README's set-up command
# (scripts/setup.sh) plus br0 over portA/portB; gen = pktgen; sink = an address.
set -euo pipefail

ROLE=$1
shift
# Where the Vagrantfile syncs the repository, and where NIC names are kept for boot;
# tests/test_vagrant.py provisions network namespaces and points both elsewhere.
SRC=${MEDSEG_SRC:-/opt/medseg-xdp/src}
SYSTEMD_NETWORK_DIR=${SYSTEMD_NETWORK_DIR:-/etc/systemd/network}
QUEUES=${QUEUES:-4}
SINK_MAC=52:54:00:77:00:02

say() { echo "provision ($ROLE): $*"; }

name_nic() {  # IFNAME MAC: give the NIC with that MAC this name, now and at every boot
    local want=$1 mac=$2 current
    mkdir -p "$SYSTEMD_NETWORK_DIR"
    printf '[Match]\nMACAddress=%s\n\n[Link]\nName=%s\n' "$mac" "$want" > "$SYSTEMD_NETWORK_DIR/10-medseg-$want.link"
    current=$(ip -o link | awk -v mac="$mac" 'tolower($0) ~ mac { sub(/:$/, "", $2); sub(/@.*/, "", $2); print $2; exit }')
    [[ -n $current ]] || { echo "provision: no NIC with MAC $mac" >&2; exit 1; }
    if [[ $current != "$want" ]]; then
        ip link set dev "$current" down
        ip link set dev "$current" name "$want"
    fi
    ip link set dev "$want" up
}

tune_nic() {  # native XDP on virtio-net: queue pairs for XDP TX, guest LRO (host TSO into the guest) off
    local dev=$1
    ethtool -L "$dev" combined "$QUEUES" 2>/dev/null || say "note: $dev keeps $(ethtool -l "$dev" 2>/dev/null | awk '/Combined/ {n=$2} END {print n}') queue pairs (asked for $QUEUES)"
    for feature in lro rx-gro-hw rxvlan; do
        ethtool -K "$dev" "$feature" off 2>/dev/null || true
    done
    # stays on where the device cannot change it; native XDP then falls back to generic, which the loader announces
    ethtool -k "$dev" | awk -v dev="$dev" '/^(large-receive-offload|rx-gro-hw): on/ {print "provision: " dev ": " $0 " (cannot turn off)"}'
}

export DEBIAN_FRONTEND=noninteractive
if ! command -v ethtool >/dev/null || ! command -v rsync >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends ethtool iproute2 rsync python3 >/dev/null
fi

while (($#)); do
    name_nic "$1" "$2"
    tune_nic "$1"
    shift 2
done

case $ROLE in
bridge)
    bash "$SRC/scripts/setup.sh"  # the README's set-up: packages, headers for BCC, bpffs, the venv
    ip link show br0 >/dev/null 2>&1 || ip link add br0 type bridge
    for port in portA portB; do
        ip link set dev "$port" master br0
        ip link set dev "$port" up
    done
    ip link set dev br0 up
    # the sink lives behind portB: forward to it from the first frame, never flood
    bridge fdb replace "$SINK_MAC" dev portB master static
    ;;
gen)
    modprobe pktgen
    echo pktgen > /etc/modules-load.d/medseg-pktgen.conf
    ;;
sink)
    ip addr replace 10.77.0.2/24 dev sink0
    sysctl -qw net.ipv4.ip_forward=0  # frames to other addresses end in its IP layer, unanswered
    ;;
*)
    echo "provision: unknown role $ROLE" >&2
    exit 1
    ;;
esac
say "done"
