"""Where and how a stage computes, as one object: the device, the speed plan (memory format,
autocast), fp16's gradient scaler and this process's place in a torchrun job. A stage builds
it once (:meth:`Runtime.for_stage`) and hands it to the architect, ``train_epoch`` and
``evaluate``; the default is one process on the CPU in float32."""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field

import torch

from utils.runtime import speed as speed_options
from utils.runtime.distributed import Dist
from utils.runtime.speed import SpeedPlan


@dataclass(frozen=True)
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    speed: SpeedPlan = field(default_factory=SpeedPlan)
    scaler: torch.amp.GradScaler | None = None  # fp16 only; saved with the checkpoint
    dist: Dist = field(default_factory=Dist)  # not enabled: one process

    @classmethod
    def for_stage(cls, args: argparse.Namespace, device: torch.device, network: str,
                  dist: Dist | None = None, log=print) -> Runtime:
        """The runtime of a stage from its flags (network: "search" or "final")."""
        plan = speed_options.plan(args, device, network, log)
        return cls(device, plan, speed_options.grad_scaler(plan, device), dist or Dist())

    @property
    def memory_format(self) -> torch.memory_format:
        return speed_options.memory_format(self.speed)

    @property
    def distributed(self) -> bool:
        """Whether collectives run: a process group was joined (torchrun)."""
        return self.dist.enabled

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the plan's --amp (a no-op without it)."""
        return speed_options.autocast(self.speed, self.device)()

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch moved to the device, the images in the plan's memory format."""
        return (x.to(self.device, non_blocking=True, memory_format=self.memory_format),
                y.to(self.device, non_blocking=True))
