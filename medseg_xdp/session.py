"""The real program attached to the ports of a namespace bridge, with its own pins.

Shared by the demo, the namespace tests and the benchmarks: compile against
a private pin root, apply a config, attach to every bridge port, and on exit
detach, close and remove the pins, also when the body raised.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from medseg_xdp.config import Config, TableSizes
from medseg_xdp.dataplane import Dataplane
from medseg_xdp.loader import BPFFS, Attachment, Loader, detach
from medseg_xdp.policy_image import compile_policy
from medseg_xdp.topology import InlineBridge


class ProgramOnBridge:
    def __init__(self, topology: InlineBridge, config: Config, sizes: TableSizes = TableSizes(), generic: bool = False) -> None:
        self.topology = topology
        self.config = config
        self.generic = generic
        self.pin_root = BPFFS / f"medseg-session-{os.getpid()}-{id(self):x}"
        self.loader = Loader(config.bridge, pin_root=self.pin_root, sizes=sizes)
        self.dataplane: Dataplane | None = None
        self.attachments: list[Attachment] = []
        self.rule_names: dict[int, str] = {}

    @property
    def ports(self) -> dict[str, int]:
        """Bridge port name -> ifindex in the bridge namespace."""
        return self.topology.ports

    def __enter__(self) -> Self:
        try:
            self.loader.compile()
            self.dataplane = Dataplane(self.loader.pin_dir)
            self.apply(self.config)
            self.attachments = self.loader.attach(list(self.ports), netns_name=self.topology.bridge_ns.name, force_generic=self.generic)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def apply(self, config: Config, class_of: Mapping[str, str] | None = None) -> int:
        """Apply config as the next generation; class_of places devices in class-defined segments."""
        assert self.dataplane is not None
        self.config = config
        ports = self.ports
        names: dict[int, str] = {}

        def compile_for(gen: int) -> dict[str, dict[bytes, bytes]]:
            compiled = compile_policy(config, gen, ports.__getitem__, class_of)
            names.update(compiled.rule_names)
            return compiled.contents

        gen = self.dataplane.apply(compile_for)
        self.rule_names = names
        return gen

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.attachments:
            detach([a.ifname for a in self.attachments], netns_name=self.topology.bridge_ns.name)
            self.attachments = []
        if self.dataplane is not None:
            self.dataplane.close()
            self.dataplane = None
        self.loader.close()
        shutil.rmtree(self.pin_root, ignore_errors=True)
