"""The GPU recipe: the method's CycleGAN at its own scale on one GPU in minutes (`train --engine fast`).

Same networks, losses and checkpoint format as trainer/train.py; what differs is only how the step is fed and run:

- patches are cut on the device from slices held there (``DeviceSampler``): random body-containing crops, random
  90° rotations and flips, all as tensor ops from a device generator;
- the pool of past fakes is a device tensor (``DevicePool``), updated by indexed writes;
- no host synchronisation per step: losses accumulate on the device and are read every ``log_every`` steps;
- fp32 with TF32 matrix units (no bf16 autocast: tanh in bf16 rounds to exactly ±1 beyond |x| > 3.47 and its
  gradient vanishes, the collapse of run 1 in docs/model-card.md), channels_last, ``torch.compile``d modules,
  fused Adam on CUDA.

Left to the main trainer: exact resume (a fast run is minutes long; it checkpoints every epoch and at the end),
DistributedDataParallel, TensorBoard images. Runs on CPU too (tests, and `PRESET=tiny` smoke runs).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from denoise_trainer.train.averaging import GeneratorAverage
from denoise_trainer.train.cyclegan import CycleGenerators, Discriminators, WindowView, init_weights
from denoise_trainer.train.lesion_term import with_lesion_term
from denoise_trainer.train.loop import (
    StepCallback,
    TrainingData,
    TrainResult,
    checkpoint_header,
    configured_losses,
    iterations_per_epoch,
    linear_decay,
    set_requires_grad,
    training_device,
    write_checkpoint,
)
from denoise_trainer.train.recipe import TrainConfig
from denoise_trainer.train.validation import ValidationSet, Validator
from dicom_denoise_node.model.registry import normalize_hu

log = logging.getLogger(__name__)

CANDIDATES = 4  # crops drawn per patch; the first with enough body wins (else the one with most)


class DeviceSampler:
    """Random body-containing patches of one domain, cut on the device without leaving it."""

    def __init__(
        self,
        slices_hu: list[np.ndarray],
        patch: int,
        window: tuple[float, float],
        body_hu: float,
        body_fraction: float,
        device: torch.device,
    ) -> None:
        shapes = {s.shape for s in slices_hu}
        if len(shapes) != 1:
            raise ValueError(f"the fast engine needs slices of one size, got {sorted(shapes)}")
        (h, w) = shapes.pop()
        if min(h, w) < patch:
            raise ValueError(f"slices of {h}×{w} are smaller than the {patch}-px patch")
        self.patch, self.h, self.w, self.fraction = patch, h, w, body_fraction
        self.images = torch.from_numpy(np.stack([normalize_hu(s, *window) for s in slices_hu])).to(device)
        body = torch.from_numpy(np.stack([s > body_hu for s in slices_hu])).to(torch.float64)
        self.integral = F.pad(body.cumsum(1).cumsum(2), (1, 0, 1, 0)).to(torch.float32).to(device)
        self.offsets = torch.arange(patch, device=device)

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """(batch, 1, p, p) float32 in [−1, 1], channels_last."""
        dev, p, n = self.images.device, self.patch, batch * CANDIDATES
        k = torch.randint(0, self.images.shape[0], (n,), device=dev, generator=gen)
        y = torch.randint(0, self.h - p + 1, (n,), device=dev, generator=gen)
        x = torch.randint(0, self.w - p + 1, (n,), device=dev, generator=gen)
        s = self.integral
        frac = (s[k, y + p, x + p] - s[k, y, x + p] - s[k, y + p, x] + s[k, y, x]) / (p * p)
        score = (frac >= self.fraction).float() * 2.0 + frac
        pick = score.view(batch, CANDIDATES).argmax(1) + torch.arange(batch, device=dev) * CANDIDATES
        k, y, x = k[pick], y[pick], x[pick]
        rows = (y[:, None] + self.offsets)[:, :, None]
        cols = (x[:, None] + self.offsets)[:, None, :]
        patches = self.images[k[:, None, None], rows, cols]  # (batch, p, p)
        turns = torch.randint(0, 4, (batch,), device=dev, generator=gen)
        rotated = torch.stack([torch.rot90(patches, r, dims=(1, 2)) for r in range(4)])
        patches = rotated[turns, torch.arange(batch, device=dev)]
        flip = torch.randint(0, 2, (batch, 1, 1), device=dev, generator=gen).bool()
        patches = torch.where(flip, patches.flip(-1), patches)
        return patches[:, None].contiguous(memory_format=torch.channels_last)


class DevicePool:
    """The pool of past fakes as one device tensor: half the time a fake is swapped for a stored one."""

    def __init__(self, size: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.size, self.filled = size, 0
        self.images = torch.zeros((max(size, 1), *shape), device=device)

    def query(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = batch.detach()
        if self.size == 0:
            return batch
        if self.filled < self.size:  # the first fakes fill the pool and pass through (counted on the host)
            take = min(self.size - self.filled, batch.shape[0])
            self.images[self.filled : self.filled + take] = batch[:take]
            self.filled += take
            return batch
        n = batch.shape[0]
        swap = torch.rand(n, device=batch.device, generator=gen) < 0.5
        slot = torch.randint(0, self.size, (n,), device=batch.device, generator=gen)
        old = self.images[slot]
        self.images[slot] = torch.where(swap[:, None, None, None], batch, old)
        return torch.where(swap[:, None, None, None], old, batch)


def train_fast(
    cfg: TrainConfig, data: TrainingData, on_step: StepCallback | None = None, compile: bool = True
) -> TrainResult:
    """Unpaired CycleGAN training with the step kept on the device; see the module docstring."""
    device = training_device(cfg.device, 0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen_config = cfg.generator_config()
    gens = CycleGenerators(gen_config)
    window = (cfg.hu_min, cfg.hu_max)
    disc_window = None if cfg.disc_hu_min is None else (cfg.disc_hu_min, cfg.disc_hu_max)
    discs = Discriminators(
        cfg.disc_filters, cfg.disc_layers, cfg.disc_norm, WindowView(window, disc_window, cfg.disc_highpass_sigma)
    )  # type: ignore[arg-type]
    init_weights(gens)
    init_weights(discs)
    gens.to(device, memory_format=torch.channels_last)
    discs.to(device, memory_format=torch.channels_last)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt_g = torch.optim.Adam(gens.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
    opt_d = torch.optim.Adam(discs.parameters(), lr=cfg.lr * cfg.lr_d_factor, betas=(cfg.beta1, cfg.beta2), **fused)
    sched_g, sched_d = LambdaLR(opt_g, linear_decay(cfg)), LambdaLR(opt_d, linear_decay(cfg))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    lesion_rng = torch.Generator().manual_seed(cfg.seed * 1000 + 900)  # a few numbers per step, drawn on the host
    ld_sampler = DeviceSampler(data.ld, cfg.patch_size, window, cfg.body_hu, cfg.body_fraction, device)
    hd_sampler = DeviceSampler(data.hd, cfg.patch_size, window, cfg.body_hu, cfg.body_fraction, device)
    shape = (1, cfg.patch_size, cfg.patch_size)
    pool_ld, pool_hd = DevicePool(cfg.pool_size, shape, device), DevicePool(cfg.pool_size, shape, device)
    g_step, d_step = (torch.compile(gens), torch.compile(discs)) if compile else (gens, discs)
    val_set = (
        ValidationSet.build(data.val_ld, data.val_hd, data.val_ref, window, cfg.val_slices) if data.val_ref else None
    )
    validator = Validator(val_set, window, device, cfg.val_every, None, cfg.val_min_lesion_kept)
    per_epoch = iterations_per_epoch(cfg, len(data.ld))
    average = GeneratorAverage(gens.ld2hd, cfg.ema_decay)
    best_path = run_dir / "checkpoints" / "best.pt"
    epoch, step = 0, 0
    history: list[dict[str, float]] = []

    def save(name: str) -> Path:
        path = run_dir / "checkpoints" / name
        state: dict[str, Any] = {
            **checkpoint_header(cfg, gen_config.to_dict(), {**data.description, "engine": "fast"}, epoch, 0, step, 1),
            "last_losses": history[-1] if history else {},
            **validator.state_dict(),
            "generators": gens.state_dict(),
            **average.state_dict(),
            "discriminators": discs.state_dict(),
        }
        write_checkpoint(state, path, also_last=path != best_path)
        return path

    sums: dict[str, torch.Tensor] = {}
    started, checkpoint = time.perf_counter(), None
    while epoch < cfg.epochs:
        for _ in range(per_epoch):
            ld, hd = ld_sampler.sample(cfg.batch_size, gen), hd_sampler.sample(cfg.batch_size, gen)
            set_requires_grad(discs, False)
            images = g_step(ld, hd)
            g_losses = configured_losses(cfg, images, ld, hd, discs)
            g_losses = with_lesion_term(
                g_losses, cfg.lambda_lesion, gens.ld2hd, ld, images["fake_hd"], window, lesion_rng
            )
            opt_g.zero_grad(set_to_none=True)
            g_losses["g_total"].backward()
            opt_g.step()
            average.update()
            set_requires_grad(discs, True)
            fake_ld = pool_ld.query(images["fake_ld"], gen)
            fake_hd = pool_hd.query(images["fake_hd"], gen)
            d_losses = d_step(ld, fake_ld, hd, fake_hd)
            opt_d.zero_grad(set_to_none=True)
            (d_losses["d_ld"] + d_losses["d_hd"]).backward()
            opt_d.step()
            step += 1
            for key, value in {**g_losses, **d_losses}.items():
                sums[key] = sums.get(key, 0) + value.detach()
            if step % cfg.log_every == 0 or step == per_epoch * cfg.epochs or (cfg.max_steps and step >= cfg.max_steps):
                losses = {k: float(v) / cfg.log_every for k, v in sums.items()}  # one host sync per log_every steps
                losses["samples_per_s"] = step * cfg.batch_size / (time.perf_counter() - started)
                sums = {}
                history.append(losses)
                if on_step is not None:
                    on_step(step, epoch, losses)
            if validator(step, average.model, {}):
                save(best_path.name)
            if cfg.max_steps and step >= cfg.max_steps:
                break
        epoch += 1
        sched_g.step()
        sched_d.step()
        checkpoint = save(f"epoch-{epoch:03d}.pt")
        if cfg.max_steps and step >= cfg.max_steps:
            break
    validator.write(run_dir / "validation.json")
    best = best_path if best_path.exists() else None
    return TrainResult(step, epoch, checkpoint, history, validator.curve, best, average.model.state_dict())
