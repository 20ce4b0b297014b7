#!/usr/bin/env bash
# The benchmark suite across the three VMs (run on the host, from anywhere):
#   vagrant/run_bench.sh [OUT_DIR]         default: vagrant/results/<date-time>/
# 1. brings the VMs up (provisioning them the first time) and syncs the repository into them;
# 2. on the bridge VM, the parts that need no second machine, with the same command as on any host:
#    bench/run_all.py --only prog_cost userspace apply_time;
# 3. packets per second with a real generator: pktgen on the gen VM sends drop traffic, then pass
#    traffic, without pause; meanwhile bench/pps_vm.py on the bridge VM puts each receiver case on
#    portA in turn and counts over WINDOW seconds;
# 4. copies every JSON and markdown file back into OUT_DIR, with summary.md and pps_vm.md.
# Environment: WINDOW (seconds per receiver case, default 5), SKIP_SINGLE_HOST=1 to skip step 2;
# REMOTE_SRC, REMOTE_PY, REMOTE_OUT: the repository, python and results directory on the VMs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$HERE"
WINDOW=${WINDOW:-5}
# On the VMs (as provisioning lays them out; tests/test_vagrant.py points them at namespaces here)
SRC=${REMOTE_SRC:-/opt/medseg-xdp/src}
PY=${REMOTE_PY:-/opt/medseg-xdp/venv/bin/python}
REMOTE_OUT=${REMOTE_OUT:-/var/tmp/medseg-bench}

say() { echo "run_bench: $*"; }

say "bringing the VMs up (the first time also provisions them: packages, scripts/setup.sh)"
vagrant up
vagrant rsync  # the repository as it is now

SSH_CONFIG=$(mktemp)
trap 'rm -f "$SSH_CONFIG"' EXIT
vagrant ssh-config gen bridge sink > "$SSH_CONFIG"
on() {  # VM COMMAND...
    local vm=$1
    shift
    ssh -F "$SSH_CONFIG" -o LogLevel=ERROR "$vm" "$@"
}

on bridge "sudo rm -rf $REMOTE_OUT && sudo mkdir -p $REMOTE_OUT"

if [[ ${SKIP_SINGLE_HOST:-0} != 1 ]]; then
    say "single-host parts on the bridge VM"
    on bridge "cd $SRC && sudo $PY bench/run_all.py --only prog_cost userspace apply_time --out $REMOTE_OUT" ||
        say "some single-host parts failed (see $OUT/summary.md)"
fi

stop_generator() { on gen "sudo bash $SRC/vagrant/pktgen.sh stop" || true; }
trap 'stop_generator >/dev/null 2>&1; rm -f "$SSH_CONFIG"' EXIT

for traffic in drop pass; do
    say "packets per second: $traffic traffic from pktgen"
    on gen "sudo bash $SRC/vagrant/pktgen.sh start $traffic"
    on bridge "cd $SRC && sudo $PY bench/pps_vm.py --traffic $traffic --window $WINDOW --out $REMOTE_OUT" ||
        say "the receiver side failed for $traffic traffic"
    stop_generator | tee "$OUT/pktgen-$traffic.txt"
    on bridge "sudo tee $REMOTE_OUT/pktgen-$traffic.txt >/dev/null" < "$OUT/pktgen-$traffic.txt"
done
on bridge "cd $SRC && sudo $PY bench/pps_vm.py --summarise --out $REMOTE_OUT"

say "collecting into $OUT"
on bridge "sudo tar -C $REMOTE_OUT -cf - ." | tar -C "$OUT" -xf -
for vm in gen bridge sink; do
    on "$vm" "uname -r; nproc; ethtool -l \$(ls /sys/class/net | grep -E '^(gen0|portA|sink0)$' | head -1) 2>/dev/null | tail -5" > "$OUT/vm-$vm.txt" 2>&1 || true
done
say "done: $OUT/pps_vm.md and, from the single-host parts, $OUT/summary.md"
