#!/bin/bash
# Records tests/data/dicom-{cstore,cecho,reject}.pcap from DCMTK talking to itself
# on the loopback interface. Needs root (tcpdump), Debian's
# dcmtk and pydicom in the venv. The image is synthetic (see make_phantom_ct.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/opt/medseg-xdp/venv/bin/python}
work=$(mktemp -d)
trap 'kill $scp_pid $dump_pid 2>/dev/null || true; rm -rf "$work"' EXIT

"$py" "$here/make_phantom_ct.py" "$work/phantom-ct.dcm"
mkdir "$work/in"

record() {  # record NAME PORT SCP_OPTION COMMAND...: one association captured to NAME
    local name=$1 port=$2 scp_option=$3
    shift 3
    # shellcheck disable=SC2086  # an empty option must vanish, not become an empty argument
    storescp --output-directory "$work/in" $scp_option "$port" &
    scp_pid=$!
    tcpdump -i lo -U -w "$here/$name" "tcp port $port" 2>/dev/null &
    dump_pid=$!
    sleep 1
    "$@" || true  # echoscu fails on a rejected association: that is the point
    sleep 1
    kill "$dump_pid" "$scp_pid"
    wait "$dump_pid" "$scp_pid" 2>/dev/null || true
}

# C-STORE on the registered port 11112 (DICOM PS3.8), DCMTK's default AE titles.
record dicom-cstore.pcap 11112 "" storescu 127.0.0.1 11112 "$work/phantom-ct.dcm"
# C-ECHO on a port no DICOM table knows, so the parser must find it by content.
record dicom-cecho.pcap 40104 "" echoscu 127.0.0.1 40104
# An A-ASSOCIATE-RJ: storescp --refuse rejects every association (rejected-permanent, service user).
record dicom-reject.pcap 40105 --refuse echoscu 127.0.0.1 40105
chown "$(id -u):$(id -g)" "$here"/dicom-*.pcap  # tcpdump drops privileges to its own user
ls -l "$here"/dicom-*.pcap
