"""The Vagrant topology (vagrant/) cannot run here (no VM host): its files must at least be valid."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[1] / "vagrant"


@pytest.mark.parametrize("script", sorted(p.name for p in VAGRANT_DIR.glob("*.sh")))
def test_vagrant_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(VAGRANT_DIR / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed (Debian 12 packages it; 13 does not)")
def test_vagrantfile_validates(tmp_path: Path) -> None:
    # vagrant's state (its home, the project's .vagrant) goes where pytest removes it
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile")}
    result = subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "validated successfully" in result.stdout, result.stdout + result.stderr
