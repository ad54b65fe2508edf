"""Checkpoints that describe themselves: one format for every objective and feed, written atomically.

A checkpoint holds the run's header (format, versions, configuration, position), the objective's state (networks,
optimisers, schedules, pools: ``Step.state_dict``), the weight average, the validation state and every RNG, so a
resumed run takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from denoise_trainer.train.recipe import CannotTrain, TrainConfig
from dicom_denoise_node.config import redact_url

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def checkpoint_header(
    cfg: TrainConfig, arch: dict[str, Any], data: dict[str, Any], epoch: int, iteration: int, step: int, world: int
) -> dict[str, Any]:
    """What every checkpoint says about itself (format, versions, configuration, position)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
        "config": {**cfg.model_dump(mode="json"), "catalog_url": redact_url(cfg.catalog_url)},  # exported: no password
        "generator_config": arch,
        "data": data,
        "epoch": epoch,
        "iteration": iteration,
        "step": step,
        "world_size": world,
    }


def write_checkpoint(state: dict[str, Any], path: Path, also_last: bool = True) -> None:
    """Atomically (temporary file + rename) write a checkpoint, and the same as last.pt beside it."""
    targets = [path] + ([path.parent / "last.pt"] if also_last else [])
    for target in targets:
        tmp = target.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)
    log.info("checkpoint %s (epoch %d, step %d)", path, state["epoch"], state["step"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain types only: loaded with weights_only=True, no arbitrary pickle)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_for_resume(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """A checkpoint this run can continue: this trainer's format and the same objective, else a clear error."""
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CannotTrain(f"{path} is not a checkpoint of this trainer (format {state.get('format')})")
    pairing = state.get("config", {}).get("pairing", "unpaired")
    if pairing != cfg.pairing:
        raise CannotTrain(f"{path} is a checkpoint of the {pairing} trainer; this run is {cfg.pairing}")
    return state


def linear_decay(cfg: TrainConfig) -> Any:
    """Constant learning rate until decay_start, then linear to zero at the last epoch."""
    span = max(1, cfg.epochs - cfg.decay_start)

    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch - cfg.decay_start + 1) / (span + 1)

    return factor


def restore_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    opt_state: dict[str, Any],
    sched_state: dict[str, Any],
    lr: float,
) -> None:
    """Load an optimizer and its schedule from a checkpoint, then put the configuration's learning rate in force.

    Why: LambdaLR's saved state carries the base rate the run started with, so a run resumed with a new ``lr``
    silently kept the old one (paired 1.2.0's stage 2 asked for 2e-4 and ran at 5e-4 × ⅔). The configured base
    rate × the configured schedule at the checkpoint's epoch is what a resumed run uses; with an unchanged
    configuration that is exactly the rate the checkpoint was running at.
    """
    optimizer.load_state_dict(opt_state)
    saved = list(sched_state["base_lrs"])
    rates = [lr * lmbda(sched_state["last_epoch"]) for lmbda in scheduler.lr_lambdas]
    # "_last_lr" is what get_last_lr() reports: a key of the scheduler's own state, set through its public loader.
    scheduler.load_state_dict({**sched_state, "base_lrs": [lr] * len(rates), "_last_lr": rates})
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["initial_lr"] = lr
        group["lr"] = rate
    if saved != scheduler.base_lrs:
        log.info("resume: base learning rate %g from the configuration (the checkpoint's run used %g)", lr, saved[0])
