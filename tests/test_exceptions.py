"""Exceptions without root: validation, compiling, expiry, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_xdp import config
from medseg_xdp.config import ConfigError
from medseg_xdp.exceptions import ExceptionStore, PolicyException, device_moves, validate, with_exceptions
from medseg_xdp.policy_image import compile_policy

POLICY = """
[segments.pumps]
[segments.biomed]
[[rules]]
id = "no-telnet"
from = "pumps"
to = "biomed"
proto = "tcp"
ports = [23]
action = "drop"
"""


def flow(exception_id: str, port: int, expires_at: float = 100.0) -> PolicyException:
    return PolicyException(exception_id, expires_at, "test", 0, src="pumps", dst="biomed", proto=6, ports=((port, port),))


def test_a_flow_exception_compiles_as_a_rule_and_cannot_override_an_equal_drop() -> None:
    cfg = config.parse(POLICY)
    compiled = compile_policy(with_exceptions(cfg, [flow("ssh", 22)]), 1, lambda port: 0)
    assert "exception:ssh" in compiled.rule_names.values()
    with pytest.raises(ConfigError, match="exception:telnet"):
        compile_policy(with_exceptions(cfg, [flow("telnet", 23)]), 1, lambda port: 0)


def test_validation_and_device_moves() -> None:
    cfg = config.parse(POLICY)
    with pytest.raises(ConfigError, match="unknown segment 'lab'"):
        validate(PolicyException("x", 1.0, "", 0, mac="02:00:00:00:00:01", segment="lab"), cfg)
    with pytest.raises(ConfigError, match="is not a MAC"):
        validate(PolicyException("x", 1.0, "", 0, mac="nope", segment="biomed"), cfg)
    moved = PolicyException("svc", 1.0, "", 0, mac="02:00:00:00:00:01", segment="biomed")
    validate(moved, cfg)
    assert device_moves([moved, flow("ssh", 22)]) == {"02:00:00:00:00:01": "biomed"}


def test_expiry_and_persistence(tmp_path: Path) -> None:
    now = [50.0]
    store = ExceptionStore(tmp_path, clock=lambda: now[0])
    store.add(flow("a", 22, expires_at=60.0))
    store.add(flow("b", 443, expires_at=120.0))
    with pytest.raises(ConfigError, match="exists already"):
        store.add(flow("a", 80))
    store.save()
    again = ExceptionStore(tmp_path, clock=lambda: now[0])
    assert again.load() is None and again.items == store.items
    now[0] = 61.0
    assert [e.id for e in again.expire()] == ["a"] and [e.id for e in again.items] == ["b"] and again.expired_total == 1
