#!/usr/bin/env bash
# The kernel's packet generator on the gen VM (root):
#   pktgen.sh start drop|pass   start sending 60-byte UDP frames to the sink's MAC, without end
#   pktgen.sh stop              stop, and print each thread's result (pps as pktgen saw it)
# drop traffic = UDP to port 22 (every receiver case drops it), pass traffic = UDP to port 104.
# One pktgen thread per CPU, each on its own TX queue of gen0.
set -euo pipefail

DEV=${DEV:-gen0}
DST_MAC=${DST_MAC:-52:54:00:77:00:02}  # the sink, behind the bridge
SRC_IP=10.77.0.1
DST_IP=10.77.0.99                      # on the sink's link, not its address: no replies
PG=/proc/net/pktgen

pgset() {  # FILE COMMAND
    echo "$2" > "$1"
    if [[ $1 != "$PG/pgctrl" ]] && ! grep -q "Result: OK" "$1"; then
        grep "Result:" "$1" >&2 || true
        echo "pktgen: '$2' refused by $1" >&2
        exit 1
    fi
}

start() {
    local port
    case ${1:-} in
    drop) port=22 ;;
    pass) port=104 ;;
    *) echo "usage: $0 start drop|pass" >&2; exit 2 ;;
    esac
    modprobe pktgen
    stop_quietly
    local cpus queue
    cpus=$(nproc)
    for ((queue = 0; queue < cpus; queue++)); do
        pgset "$PG/kpktgend_$queue" "rem_device_all"
        pgset "$PG/kpktgend_$queue" "add_device $DEV@$queue"
        local dev="$PG/$DEV@$queue"
        pgset "$dev" "count 0"  # until stopped
        pgset "$dev" "clone_skb 1000"
        pgset "$dev" "burst 32"
        pgset "$dev" "delay 0"
        pgset "$dev" "pkt_size 60"
        pgset "$dev" "queue_map_min $queue"
        pgset "$dev" "queue_map_max $queue"
        pgset "$dev" "dst_mac $DST_MAC"
        pgset "$dev" "src_min $SRC_IP"
        pgset "$dev" "src_max $SRC_IP"
        pgset "$dev" "dst $DST_IP"
        pgset "$dev" "udp_src_min 40000"
        pgset "$dev" "udp_src_max 40000"
        pgset "$dev" "udp_dst_min $port"
        pgset "$dev" "udp_dst_max $port"
    done
    # `start` blocks until the threads stop: detach it
    setsid sh -c "echo start > $PG/pgctrl" </dev/null >/dev/null 2>&1 &
    sleep 1
    echo "pktgen: sending $1 traffic (UDP to $port) on $DEV with $cpus threads"
}

stop_quietly() {
    [[ -w $PG/pgctrl ]] && echo stop > "$PG/pgctrl" 2>/dev/null || true
}

stop() {
    stop_quietly
    sleep 1
    local f
    for f in "$PG/$DEV"@*; do
        [[ -e $f ]] || continue
        echo "== $(basename "$f")"
        sed -n '/^Result:/,$p' "$f"
    done
}

case ${1:-} in
start) start "${2:-}" ;;
stop) stop ;;
*) echo "usage: $0 start drop|pass | stop" >&2; exit 2 ;;
esac
