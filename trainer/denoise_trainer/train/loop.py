"""CycleGAN training loop, top to bottom: set-up, resume, then steps (G step, D step), logs, samples, checkpoints.

Runs on CPU or one GPU as a plain process, and on several GPUs or nodes under ``torchrun`` (DistributedDataParallel,
NCCL on CUDA, gloo on CPU). Resuming restores models, optimizers, schedulers, image pools and every RNG, so a resumed
run takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from denoise_trainer.data.patches import PatchSampler, paired_patches
from denoise_trainer.train.averaging import GeneratorAverage
from denoise_trainer.train.cyclegan import (
    CycleGenerators,
    Discriminators,
    ImagePool,
    WindowView,
    generator_losses,
    init_weights,
)
from denoise_trainer.train.lesion_term import with_lesion_term
from denoise_trainer.train.recipe import TrainConfig
from denoise_trainer.train.validation import ValidationSet, Validator
from dicom_denoise_node.config import redact_url

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
COLLAPSE_STD = 1e-3  # [-1, 1] units: ~2 HU over a whole batch of body patches
COLLAPSE_STEPS = 50


class TrainingCollapsed(RuntimeError):
    """The generator stopped producing images (GAN collapse); the run stops with the reason."""


@dataclass
class TrainingData:
    """Unpaired training slices (HU) per domain, and optional paired validation slices for sample montages."""

    ld: list[np.ndarray]
    hd: list[np.ndarray]
    val_ld: list[np.ndarray] = field(default_factory=list)
    val_hd: list[np.ndarray] = field(default_factory=list)
    val_ref: list[np.ndarray] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    checkpoint: Path | None
    history: list[dict[str, float]]
    validation: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    generator: dict[str, torch.Tensor] = field(default_factory=dict)  # final LD→HD weights of this rank


StepCallback = Callable[[int, int, dict[str, float]], None]


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def training_device(requested: str, local_rank: int) -> torch.device:
    """The device a training run asked for ("auto": CUDA when there is one); an error when CUDA is asked but absent."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    """Freeze or unfreeze a network (the discriminators judge the generator step without learning from it)."""
    for p in module.parameters():
        p.requires_grad_(flag)


def linear_decay(cfg: TrainConfig) -> Callable[[int], float]:
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
    scheduler.load_state_dict(sched_state)
    saved = list(scheduler.base_lrs)
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, lmbda in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * lmbda(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    if saved != scheduler.base_lrs:
        log.info("resume: base learning rate %g from the configuration (the checkpoint's run used %g)", lr, saved[0])


def configured_losses(
    cfg: TrainConfig, images: dict[str, torch.Tensor], ld: torch.Tensor, hd: torch.Tensor, discs: Discriminators
) -> dict[str, torch.Tensor]:
    """The generator objective with every weight taken from the training configuration."""
    return generator_losses(
        images,
        ld,
        hd,
        discs,
        cfg.lambda_cycle,
        cfg.lambda_fidelity,
        cfg.ssim_window,
        cfg.cycle_beta,
        cfg.lambda_identity_l1,
        cfg.lambda_lowpass,
        cfg.lowpass_sigma,
    )


def checkpoint_header(
    cfg: TrainConfig, arch: dict[str, Any], data: dict[str, Any], epoch: int, iteration: int, step: int, world: int
) -> dict[str, Any]:
    """What every checkpoint of every engine says about itself (format, versions, configuration, position)."""
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


def iterations_per_epoch(cfg: TrainConfig, n_ld_slices: int, world: int = 1) -> int:
    if cfg.iters_per_epoch:
        return cfg.iters_per_epoch
    return max(1, (n_ld_slices * cfg.patches_per_slice) // (cfg.batch_size * world))


def data_fingerprint(paths: list[Path]) -> str:
    return hashlib.sha256("\n".join(sorted(str(p) for p in paths)).encode()).hexdigest()


def train(
    cfg: TrainConfig,
    data: TrainingData,
    resume: Path | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train (or continue training) the CycleGAN; returns the last checkpoint and the loss history."""
    # ---- set-up ----------------------------------------------------------------------------------------------
    rank, local_rank, world = _distributed()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo")
    device = training_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main = rank == 0
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    gen_config = cfg.generator_config()
    gens = CycleGenerators(gen_config)
    disc_window = None if cfg.disc_hu_min is None else (cfg.disc_hu_min, cfg.disc_hu_max)
    view = WindowView((cfg.hu_min, cfg.hu_max), disc_window, cfg.disc_highpass_sigma)  # type: ignore[arg-type]
    discs = Discriminators(cfg.disc_filters, cfg.disc_layers, cfg.disc_norm, view)
    init_weights(gens)
    init_weights(discs)
    gens.to(device)
    discs.to(device)
    opt_g = torch.optim.Adam(gens.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discs.parameters(), lr=cfg.lr * cfg.lr_d_factor, betas=(cfg.beta1, cfg.beta2))
    sched_g = LambdaLR(opt_g, linear_decay(cfg))
    sched_d = LambdaLR(opt_d, linear_decay(cfg))
    rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    pool_ld = ImagePool(cfg.pool_size, torch.Generator().manual_seed(cfg.seed * 1000 + 500 + rank))
    pool_hd = ImagePool(cfg.pool_size, torch.Generator().manual_seed(cfg.seed * 1000 + 700 + rank))
    lesion_rng = torch.Generator().manual_seed(cfg.seed * 1000 + 900 + rank)
    if world > 1 and cfg.lambda_lesion > 0:
        raise ValueError("lambda_lesion runs the LD→HD generator outside DistributedDataParallel: train on one device")
    window = (cfg.hu_min, cfg.hu_max)
    ld_sampler = PatchSampler(data.ld, cfg.patch_size, window, cfg.body_hu, cfg.body_fraction)
    hd_sampler = PatchSampler(data.hd, cfg.patch_size, window, cfg.body_hu, cfg.body_fraction)
    per_epoch = iterations_per_epoch(cfg, len(data.ld), world)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # ---- resume ----------------------------------------------------------------------------------------------
    epoch, iteration, step = 0, 0, 0
    history: list[dict[str, float]] = []
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{resume} is not a checkpoint of this trainer (format {state.get('format')})")
        gens.load_state_dict(state["generators"])
        discs.load_state_dict(state["discriminators"])
        restore_schedule(opt_g, sched_g, state["opt_g"], state["sched_g"], cfg.lr)
        restore_schedule(opt_d, sched_d, state["opt_d"], state["sched_d"], cfg.lr * cfg.lr_d_factor)
        pool_ld.load_state_dict(state["pool_ld"], device)
        pool_hd.load_state_dict(state["pool_hd"], device)
        rng.set_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        torch.set_rng_state(state["torch_rng"])
        if "lesion_rng" in state:
            lesion_rng.set_state(state["lesion_rng"])
        scaler.load_state_dict(state["scaler"])
        epoch, iteration, step = state["epoch"], state["iteration"], state["step"]
        if main:
            log.info("resumed from %s at epoch %d, iteration %d, step %d", resume, epoch, iteration, step)
    average = GeneratorAverage(gens.ld2hd, cfg.ema_decay)
    if resume is not None:
        average.load_state_dict(state)
    g_model: torch.nn.Module = gens
    d_model: torch.nn.Module = discs
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_model = DistributedDataParallel(gens, device_ids=ids)
        d_model = DistributedDataParallel(discs, device_ids=ids)
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
    val_ld, val_hd = None, None
    if main and data.val_ld and data.val_hd:
        val_ld, val_hd = paired_patches(data.val_ld, data.val_hd, cfg.val_patches, cfg.patch_size, window, cfg.seed)
    val_set = None
    if main and data.val_ref:
        val_set = ValidationSet.build(data.val_ld, data.val_hd, data.val_ref, window, cfg.val_slices)
    validator = Validator(val_set, window, device, cfg.val_every, writer, cfg.val_min_lesion_kept)
    if resume is not None:
        validator.load_state_dict(state)
    best_path = run_dir / "checkpoints" / "best.pt"

    def save_checkpoint(name: str) -> Path:
        path = run_dir / "checkpoints" / name
        state = {
            **checkpoint_header(cfg, gen_config.to_dict(), data.description, epoch, iteration, step, world),
            "last_losses": history[-1] if history else {},
            **validator.state_dict(),
            "generators": gens.state_dict(),
            **average.state_dict(),
            "discriminators": discs.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "sched_g": sched_g.state_dict(),
            "sched_d": sched_d.state_dict(),
            "pool_ld": pool_ld.state_dict(),
            "pool_hd": pool_hd.state_dict(),
            "rng": gathered_rng(),
            "torch_rng": torch.get_rng_state(),
            "lesion_rng": lesion_rng.get_state(),
            "scaler": scaler.state_dict(),
        }
        if main:
            write_checkpoint(state, path, also_last=path != best_path)
        return path

    def gathered_rng() -> list[torch.Tensor]:
        if world == 1:
            return [rng.get_state()]
        states = [torch.empty_like(rng.get_state()) for _ in range(world)]
        dist.all_gather_object(states, rng.get_state())  # small; object gather works on gloo and NCCL
        return states

    # ---- steps -----------------------------------------------------------------------------------------------
    checkpoint: Path | None = None
    window_start, window_samples = time.perf_counter(), 0
    stop = False
    collapsed = 0
    while epoch < cfg.epochs and not stop:
        while iteration < per_epoch:
            ld = ld_sampler.sample(cfg.batch_size, rng).to(device, non_blocking=True)
            hd = hd_sampler.sample(cfg.batch_size, rng).to(device, non_blocking=True)

            # Generator step: the discriminators judge, they do not learn. During the discriminators' warm-up the
            # generators only produce the fakes (near the identity: LD itself), so the discriminators learn to tell
            # the doses apart before the generators are pulled to the identity by the L1 terms.
            set_requires_grad(discs, False)
            warm_up = step < cfg.d_warmup_steps
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp), torch.set_grad_enabled(not warm_up):
                images = g_model(ld, hd)
                g_losses = configured_losses(cfg, images, ld, hd, discs)
                if not warm_up:
                    g_losses = with_lesion_term(
                        g_losses, cfg.lambda_lesion, gens.ld2hd, ld, images["fake_hd"], window, lesion_rng
                    )
            if not warm_up:
                opt_g.zero_grad(set_to_none=True)
                scaler.scale(g_losses["g_total"]).backward()
                scaler.step(opt_g)
                average.update()

            # Discriminator step on real images and pooled past fakes.
            set_requires_grad(discs, True)
            fake_ld = pool_ld.query(images["fake_ld"].float())
            fake_hd = pool_hd.query(images["fake_hd"].float())
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                d_losses = d_model(ld, fake_ld, hd, fake_hd)
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(d_losses["d_ld"] + d_losses["d_hd"]).backward()
            scaler.step(opt_d)
            scaler.update()

            iteration += 1
            step += 1
            window_samples += cfg.batch_size * world
            losses = {k: float(v.detach()) for k, v in {**g_losses, **d_losses}.items()}
            losses["lr"] = opt_g.param_groups[0]["lr"]
            # A generator whose output no longer varies has collapsed (saturated tanh): say so instead of going on.
            losses["fake_hd_std"] = float(images["fake_hd"].detach().float().std())
            collapsed = collapsed + 1 if losses["fake_hd_std"] < COLLAPSE_STD else 0
            if collapsed >= COLLAPSE_STEPS:
                raise TrainingCollapsed(
                    f"generator output collapsed (std < {COLLAPSE_STD} for {COLLAPSE_STEPS} steps) at step {step}; "
                    f"last losses {losses}; checkpoints so far are in {run_dir / 'checkpoints'}"
                )
            history.append(losses)
            if main and (step % cfg.log_every == 0 or step == 1):
                elapsed = time.perf_counter() - window_start
                losses["samples_per_s"] = window_samples / elapsed if elapsed > 0 else 0.0
                window_start, window_samples = time.perf_counter(), 0
                if writer is not None:
                    for k, v in losses.items():
                        writer.add_scalar(f"train/{k}", v, step)
            if validator(step, average.model, losses):
                save_checkpoint(best_path.name)
            if main and val_ld is not None and step % cfg.sample_every == 0:
                _save_samples(run_dir, step, average.model, val_ld, val_hd, device)
            if on_step is not None and main:
                on_step(step, epoch, losses)
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        if iteration >= per_epoch:
            epoch += 1
            iteration = 0
            sched_g.step()
            sched_d.step()
            checkpoint = save_checkpoint(f"epoch-{epoch:03d}.pt")
        else:
            checkpoint = save_checkpoint(f"step-{step:07d}.pt")
    if writer is not None:
        writer.close()
    validator.write(run_dir / "validation.json")
    best = best_path if best_path.exists() else None
    return TrainResult(step, epoch, checkpoint, history, validator.curve, best, average.model.state_dict())


@torch.inference_mode()
def _save_samples(
    run_dir: Path, step: int, generator: torch.nn.Module, ld: torch.Tensor, hd: torch.Tensor, device: torch.device
) -> None:
    from denoise_trainer.evaluate.montage import patch_montage

    was_training = generator.training
    generator.eval()
    fake = generator(ld.to(device)).float().cpu()
    generator.train(was_training)
    rows = [[ld[i, 0].numpy(), fake[i, 0].numpy(), hd[i, 0].numpy()] for i in range(ld.shape[0])]
    out = run_dir / "samples" / f"step-{step:07d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    patch_montage(out, rows)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain types only: loaded with weights_only=True, no arbitrary pickle)."""
    return torch.load(path, map_location="cpu", weights_only=True)
