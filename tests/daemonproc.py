"""Teardown of a medseg-xdp daemon that a test started as a process (test_daemon, test_metrics)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from medseg_xdp.topology import InlineBridge


def stop_and_unload(process: subprocess.Popen[bytes], config: Path, ward: InlineBridge) -> None:
    """Teardown, also after a failure: stop the daemon (SIGTERM, then kill), remove program and pinned maps."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "unload", "-c", str(config), "--netns", ward.bridge_ns.name, "--remove-state"], capture_output=True)
