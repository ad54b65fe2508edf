"""An exponential moving average of the LD→HD generator's weights, scored, kept and exported instead of the raw ones.

Why: an adversarial generator's weights oscillate around the objective from step to step (the validation error of
the 1.0.0 run moved between 12.4 and 15.9 HU from one hundred steps to the next). The average of recent weights sits
nearer the centre of that oscillation (Yazıcı et al., "The unusual effectiveness of averaging in GAN training",
ICLR 2019), and it costs one parameter-sized buffer and one fused update per step, with no host sync. The training
itself still follows the raw weights; only validation, ``best.pt`` and ``model export`` use the average.

Built on ``torch.optim.swa_utils.AveragedModel`` with its EMA update; ``decay`` 0 turns it off.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

log = logging.getLogger(__name__)

AVERAGE_KEY = "generator_average"  # checkpoint key: the averaged LD→HD weights, ``ld2hd.``-prefixed like "generators"
PREFIX = "ld2hd."


class GeneratorAverage:
    """The running average of one generator (or the generator itself when ``decay`` is 0)."""

    def __init__(self, generator: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the weight average's decay must be in [0, 1), got {decay}")
        self.generator, self.decay = generator, decay
        self.average: AveragedModel | None = None
        if decay > 0:
            self.average = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def model(self) -> nn.Module:
        """What validation scores and export writes: the average when on, the raw generator otherwise."""
        return self.average.module if self.average is not None else self.generator

    @torch.no_grad()
    def update(self) -> None:
        if self.average is not None:
            self.average.update_parameters(self.generator)

    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {}
        weights = {PREFIX + k: v for k, v in self.average.module.state_dict().items()}
        return {AVERAGE_KEY: weights, "average_decay": self.decay, "average_count": int(self.average.n_averaged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the average of a checkpoint; one without an average (or another decay) starts it afresh."""
        if self.average is None:
            return
        if AVERAGE_KEY not in state:
            log.info("the checkpoint has no weight average: starting one from its weights")
            return
        self.average.module.load_state_dict({k.removeprefix(PREFIX): v for k, v in state[AVERAGE_KEY].items()})
        self.average.n_averaged.fill_(int(state.get("average_count", 1)))


def exported_weights(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The LD→HD generator weights a checkpoint should ship, and which they are ("average" or "raw")."""
    if AVERAGE_KEY in state:
        return {k.removeprefix(PREFIX): v for k, v in state[AVERAGE_KEY].items()}, "average"
    weights = {k.removeprefix(PREFIX): v for k, v in state["generators"].items() if k.startswith(PREFIX)}
    return weights, "raw"
