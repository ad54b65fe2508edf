"""What the one training loop asks of an objective (a ``Step``): the CycleGAN of the method, or the paired model.

A Step owns its networks, optimisers, schedules and pools; the loop owns everything else (device, DDP, the feed, the
weight average, validation, warm-up, the collapse check, logging, checkpoints, resume), written once for both.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class StepTools:
    """What the loop lends each step: its mixed-precision context, the gradient scaler and the lesion term's RNG."""

    autocast: Callable[[], AbstractContextManager[Any]]
    scaler: torch.amp.GradScaler
    lesion_rng: torch.Generator


class Step(Protocol):
    pairing: str  # the recipe's `pairing` this objective trains ("unpaired" or "paired")
    warms_up: bool  # whether `d_warmup_steps` applies (discriminators first, the generator waits)
    generator: nn.Module  # the LD→HD generator: what the average follows, validation scores and export writes

    def distribute(self, device: torch.device) -> None:
        """Wrap the networks that learn for DistributedDataParallel (several processes)."""
        ...

    def compile(self) -> None:
        """torch.compile the networks' forward passes."""
        ...

    def __call__(self, ld: torch.Tensor, hd: torch.Tensor, train_generator: bool, tools: StepTools) -> Any:
        """One optimisation step on a batch: (losses as 0-d tensors, the generator's LD→HD output)."""
        ...

    def lr(self) -> float: ...

    def end_epoch(self) -> None:
        """Advance the learning-rate schedules."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None: ...


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze or unfreeze a network (the discriminators judge the generator step without learning from it)."""
    for p in module.parameters():
        p.requires_grad_(flag)


def adam(params: Any, lr: float, cfg: Any, device: torch.device) -> torch.optim.Adam:
    """The method's Adam (β from the recipe), fused on CUDA."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), **fused)
