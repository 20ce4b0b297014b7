"""Teardown of a medseg-xdp daemon that a test started as a process (test_daemon, test_metrics)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from medseg_xdp.topology import InlineBridge


def stop_and_unload(process: subprocess.Popen[bytes], config: Path, ward: InlineBridge, pins: Path) -> None:
    """Teardown, also after a failure: stop the daemon (SIGTERM, then kill), remove program and pinned maps.

    pins is the bridge's pin directory: removed here if unload left it, and then the teardown fails."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    unload = subprocess.run([sys.executable, "-m", "medseg_xdp.cli", "unload", "-c", str(config), "--netns", ward.bridge_ns.name, "--remove-state"],
                            capture_output=True, text=True)
    if pins.exists():  # a test that failed with a broken config on disk: unload could not read it
        shutil.rmtree(pins)
        with contextlib.suppress(OSError):
            pins.parent.rmdir()
        raise AssertionError(f"unload left {pins} (removed now): {unload.stderr.strip()}")
