"""Stand-in for vagrant/pktgen.sh on the generator (tests/test_vagrant.py): this kernel has no pktgen.

  pktgen.py start drop|pass   start sending pktgen.sh's frames without end, in the background
  pktgen.py stop              stop, and print the result in pktgen's words ("...NNNpps...")

The frames are pktgen.sh's (60-byte UDP 10.77.0.1:40000 -> 10.77.0.99, to port 22 or 104, to DST_MAC from
DEV's MAC), sent by BPF_PROG_TEST_RUN's live frames (bench/benchlib.py's generator and frame) out of DEV. STANDIN_STATE
is the directory for the sender's pid and result.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import benchlib as B  # bench/ is no package: found by the path above

DEV = os.environ.get("DEV", "eth0")
DST_MAC = os.environ.get("DST_MAC", "52:54:00:77:00:02")
PORTS = {"drop": 22, "pass": 104}
STATE = Path(os.environ["STANDIN_STATE"])


def send(traffic: str) -> None:
    from medseg_xdp import bpfsys

    link = json.loads(subprocess.run(["ip", "-j", "link", "show", DEV], capture_output=True, text=True, check=True).stdout)[0]
    frame = B.udp_frame(link["address"], DST_MAC, 40000, PORTS[traffic], src_ip="10.77.0.1", dst_ip="10.77.0.99", size=60)
    with B.xdp_program(B.generator_source(link["ifindex"]), "xdp_gen") as prog_fd:
        (STATE / "sending").touch()
        sent, started = 0, time.perf_counter()
        while not (STATE / "stop").exists():  # a file, not a signal: a signal interrupts the run (EINTR)
            bpfsys.prog_test_run(prog_fd, frame, link["ifindex"], repeat=50_000, flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)
            sent += 50_000
        elapsed = time.perf_counter() - started
    partial = STATE / "result.partial"  # renamed when whole: stop() reads it as soon as it appears
    partial.write_text(f"Result: OK: {int(elapsed * 1e6)}(c0+d0) usec, {sent} (60byte,0frags)\n  {int(sent / elapsed)}pps\n")
    partial.rename(STATE / "result")


STATE_FILES = ("pid", "sending", "stop", "result", "result.partial")


def start(traffic: str) -> None:
    stop()
    for leftover in STATE_FILES:
        (STATE / leftover).unlink(missing_ok=True)
    with open(STATE / "sender.log", "a") as log:  # not the caller's stderr: ssh would wait for the sender's end
        sender = subprocess.Popen([sys.executable, __file__, "send", traffic], start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    (STATE / "pid").write_text(str(sender.pid))
    while not (STATE / "sending").exists():
        if sender.poll() is not None:
            sys.exit(f"pktgen stand-in: the sender exited with {sender.returncode} (see {STATE / 'sender.log'})")
        time.sleep(0.05)
    print(f"pktgen stand-in: sending {traffic} traffic (UDP to {PORTS[traffic]}) on {DEV}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop() -> None:
    """Like pktgen.sh stop: the sender's result, or nothing when no sender runs (a dead one is cleared)."""
    pid_file = STATE / "pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    (STATE / "stop").touch()
    for _ in range(200):
        if (STATE / "result").exists():
            print(f"== {DEV}@0")
            print((STATE / "result").read_text(), end="")
            break
        if not alive(pid):
            print(f"pktgen stand-in: the sender had died (see {STATE / 'sender.log'})", file=sys.stderr)
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        print("pktgen stand-in: the sender did not stop; killed", file=sys.stderr)
    for done in STATE_FILES:
        (STATE / done).unlink(missing_ok=True)


if __name__ == "__main__":
    command = sys.argv[1:2]
    if command == ["send"]:
        send(sys.argv[2])
    elif command == ["start"]:
        start(sys.argv[2])
    elif command == ["stop"]:
        stop()
    else:
        sys.exit(__doc__)
