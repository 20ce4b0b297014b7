"""scripts/setup.sh --production: a copy of the checkout in the venv that runs with the checkout gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_names_every_package_and_ships_the_program() -> None:
    """An installed copy has only what pyproject.toml lists: a package left out works in a checkout and fails in service."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "medseg_xdp").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"medseg_xdp.bpf"}
    assert setuptools["package-dir"] == {"medseg_xdp.bpf": "bpf"}
    assert setuptools["package-data"]["medseg_xdp.bpf"] == ["*.c", "*.h"]
    assert {path.suffix for path in (REPO / "bpf").iterdir()} == {".c", ".h"}


@pytest.mark.root
def test_production_install_runs_the_real_program_without_the_checkout(tmp_path: Path) -> None:
    """setup.sh --production into a fresh venv from a copy of the checkout; the copy is deleted, then `trace`
    compiles, loads and runs the real XDP program from what the venv holds."""
    checkout, venv = tmp_path / "checkout", tmp_path / "venv"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "pyproject.toml", "medseg_xdp", "bpf", "scripts"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, checkout / name)
    policy = tmp_path / "policy.toml"
    policy.write_text('[segments.lab]\nmacs = ["02:00:00:00:00:01"]\nmode = "enforce"\ndefault = "drop"\n')
    env = {**os.environ, "MEDSEG_VENV": str(venv), "MEDSEG_POLICY": str(policy)}
    setup = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh"), "--production"], env=env, capture_output=True, text=True, timeout=240)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "pip-installed a copy of" in setup.stdout
    assert sorted(path.name for path in checkout.iterdir()) == ["bpf", "medseg_xdp", "pyproject.toml", "scripts"]  # built elsewhere
    again = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh"), "--production"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr

    # an update whose version refuses the running policy installs nothing: the installed copy stays
    stamp = (venv / ".medseg-xdp-installed").read_text()
    (checkout / "medseg_xdp" / "config.py").write_text((checkout / "medseg_xdp" / "config.py").read_text().replace(
        '_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")', '_BRIDGE_NAME = re.compile(r"^never$")'))
    refused = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh"), "--production"], env=env, capture_output=True, text=True, timeout=240)
    assert refused.returncode != 0 and f"the new version refuses {policy}" in refused.stderr, refused.stdout + refused.stderr
    assert (venv / ".medseg-xdp-installed").read_text() == stamp
    shutil.rmtree(checkout)

    # 02:00:00:00:00:01 -> 02:00:00:00:00:02, 10.0.0.1 -> 10.0.0.2, TCP SYN to port 22
    ssh_syn = ("02000000000202000000000108004500002800010000400666cd0a0000010a000002"
               "001400160000000000000000500220007bb60000")
    trace = subprocess.run([str(venv / "bin" / "medseg-xdp"), "trace", "-c", str(policy), "--json", "--hex", ssh_syn],
                           cwd="/", capture_output=True, text=True, timeout=120)
    assert trace.returncode == 0, trace.stderr
    decision = json.loads(trace.stdout)
    assert (decision["verdict"], decision["rule"], decision["src_segment"]) == ("drop", "default:lab", "lab")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "from medseg_xdp import abi; print(abi.BPF_DIR)"],
                           cwd="/", capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where
