"""Shared fixtures: root gating, stale-namespace cleanup, topologies."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from medseg_xdp.topology import InlineBridge, cleanup_stale


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    """Skip the calling test unless it runs as root."""
    if not is_root():
        pytest.skip("needs root: network namespaces and BPF")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        require_root()


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_namespaces() -> None:
    if is_root():
        cleanup_stale()


@pytest.fixture
def on_cpu0() -> Iterator[None]:
    """Test runs execute on the calling CPU: pin it, so that its per-CPU state (the decision record, the sample
    budgets) is the one the test reads and fills."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


@pytest.fixture
def inline_bridge() -> Iterator[InlineBridge]:
    require_root()
    with InlineBridge() as topology:
        yield topology
