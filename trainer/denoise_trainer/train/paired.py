"""Paired mode, beyond the method: the LD→HD generator learnt from LD/HD pairs of the training patients.

Why it works without a noise-free target: the HD image of a pair is the truth plus quantum noise independent of
LD's, so the generator that minimises the expected L1 to HD is (for L1, up to the noise's median) the one that
predicts the truth: Noise2Noise (Lehtinen et al. 2018). The loss is L1 + (1 − MS-SSIM) in the soft-tissue window,
where low-contrast lesions live; plain L1 alone over-smooths them (a probe kept 0.69 of lesion contrast, issue
15), so an optional least-squares adversarial term against HD patches (``lambda_pair_adv``) pulls the output back
towards HD's texture, and the node's ``strength`` lets a site keep more of the source.

Same checkpoint format as the unpaired trainer (``ld2hd.*`` keys), so `model export` and `--resume` work alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from denoise_trainer.data.patches import PatchSampler
from denoise_trainer.train.averaging import GeneratorAverage
from denoise_trainer.train.cyclegan import PatchDiscriminator, WindowView, init_weights, lsgan
from denoise_trainer.train.lesion_term import with_lesion_term
from denoise_trainer.train.loop import (
    CHECKPOINT_FORMAT,
    StepCallback,
    TrainingData,
    TrainResult,
    checkpoint_header,
    iterations_per_epoch,
    linear_decay,
    restore_schedule,
    training_device,
    write_checkpoint,
)
from denoise_trainer.train.recipe import TrainConfig
from denoise_trainer.train.validation import ValidationSet, Validator
from dicom_denoise_node.model.generator import make_generator

log = logging.getLogger(__name__)

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)  # the first three of Wang et al.'s five scales (patches are small)


def ms_ssim_window(patch: int, wanted: int) -> int:
    """The largest odd SSIM window ≤ ``wanted`` that pytorch-msssim accepts for this patch (side > 16·(win − 1))."""
    win = wanted
    while win > 3 and patch <= 16 * (win - 1):
        win -= 2
    if patch <= 16 * (win - 1):
        raise ValueError(f"patches of {patch} px are too small for MS-SSIM (at least 33 px)")
    return win


def paired_losses(
    fake: torch.Tensor,
    hd: torch.Tensor,
    view: WindowView,
    cfg: TrainConfig,
    win: int,
    discriminator: nn.Module | None,
) -> dict[str, torch.Tensor]:
    """λ_l1·L1(G(LD), HD) + λ_msssim·(1 − MS-SSIM) [+ λ_l2·squared error] in the soft-tissue view (+ λ_adv·LSGAN).

    Why the squared term: L1 to a noisy target aims at the median of what the input allows, squared error at its
    mean, which is what PSNR against the noise-free image rewards. It is taken in the soft-tissue view (1 unit =
    200 HU) where PSNR is scored: there its gradient at HD's typical residual (≈ 16 HU) is about L1's.
    """
    l1 = F.l1_loss(fake.float(), hd.float())
    a, b = ((view(t.float()) + 1.0) * 0.5 for t in (fake, hd))  # [0, 1] for MS-SSIM's constants
    structure = 1.0 - ms_ssim(a, b, data_range=1.0, win_size=win, weights=list(MS_SSIM_WEIGHTS))
    total = cfg.lambda_pair_l1 * l1 + cfg.lambda_pair_msssim * structure
    out = {"g_l1": l1, "g_msssim": structure}
    if cfg.lambda_pair_l2 > 0:
        squared = F.mse_loss(2.0 * a, 2.0 * b)  # back to the view's [−1, 1] units
        total = total + cfg.lambda_pair_l2 * squared
        out["g_l2"] = squared
    if discriminator is not None and cfg.lambda_pair_adv > 0:
        adv = lsgan(discriminator(fake), True)
        total = total + cfg.lambda_pair_adv * adv
        out["g_adv"] = adv
    return {"g_total": total, **out}


def train_paired(
    cfg: TrainConfig, data: TrainingData, resume: Path | None = None, on_step: StepCallback | None = None
) -> TrainResult:
    """Train the generator on aligned pairs (``data.ld[i]`` and ``data.hd[i]`` are one slice at both doses)."""
    if len(data.ld) != len(data.hd) or not data.ld:
        raise ValueError(f"paired training needs aligned pairs, got {len(data.ld)} LD and {len(data.hd)} HD slices")
    device = training_device(cfg.device, 0)
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen_config = cfg.generator_config()
    generator = make_generator(gen_config)
    init_weights(generator)
    window = (cfg.hu_min, cfg.hu_max)
    disc_window = None if cfg.disc_hu_min is None else (cfg.disc_hu_min, cfg.disc_hu_max)
    view = WindowView(window, disc_window)  # type: ignore[arg-type]  # the soft-tissue window, for MS-SSIM
    disc_view = WindowView(window, disc_window, cfg.disc_highpass_sigma)  # type: ignore[arg-type]
    discriminator: nn.Module | None = None
    if cfg.lambda_pair_adv > 0:
        discriminator = nn.Sequential(
            disc_view, PatchDiscriminator(1, cfg.disc_filters, cfg.disc_layers, cfg.disc_norm)
        )
        init_weights(discriminator)
        discriminator.to(device)
    generator.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sched_g = LambdaLR(opt_g, linear_decay(cfg))
    opt_d = sched_d = None
    if discriminator is not None:
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr * cfg.lr_d_factor, betas=(cfg.beta1, cfg.beta2))
        sched_d = LambdaLR(opt_d, linear_decay(cfg))
    rng = torch.Generator().manual_seed(cfg.seed * 1000)
    lesion_rng = torch.Generator().manual_seed(cfg.seed * 1000 + 900)
    stacks = [np.stack([a, b]) for a, b in zip(data.ld, data.hd, strict=True)]
    sampler = PatchSampler(stacks, cfg.patch_size, window, cfg.body_hu, cfg.body_fraction)
    win = ms_ssim_window(cfg.patch_size, cfg.ssim_window)
    per_epoch = iterations_per_epoch(cfg, len(data.ld))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    val_set = (
        ValidationSet.build(data.val_ld, data.val_hd, data.val_ref, window, cfg.val_slices) if data.val_ref else None
    )
    validator = Validator(val_set, window, device, cfg.val_every, writer, cfg.val_min_lesion_kept)
    epoch, iteration, step = 0, 0, 0
    history: list[dict[str, float]] = []
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or state["config"].get("pairing") != "paired":
            raise ValueError(f"{resume} is not a checkpoint of the paired trainer")
        generator.load_state_dict({k.removeprefix("ld2hd."): v for k, v in state["generators"].items()})
        restore_schedule(opt_g, sched_g, state["opt_g"], state["sched_g"], cfg.lr)
        if discriminator is not None and opt_d is not None and sched_d is not None:
            discriminator.load_state_dict(state["discriminators"])
            restore_schedule(opt_d, sched_d, state["opt_d"], state["sched_d"], cfg.lr * cfg.lr_d_factor)
        rng.set_state(state["rng"][0])
        torch.set_rng_state(state["torch_rng"])
        if "lesion_rng" in state:
            lesion_rng.set_state(state["lesion_rng"])
        validator.load_state_dict(state)
        epoch, iteration, step = state["epoch"], state["iteration"], state["step"]
    average = GeneratorAverage(generator, cfg.ema_decay)
    if resume is not None:
        average.load_state_dict(state)
    best_path = run_dir / "checkpoints" / "best.pt"

    def save(name: str) -> Path:
        path = run_dir / "checkpoints" / name
        state: dict[str, Any] = {
            **checkpoint_header(cfg, gen_config.to_dict(), data.description, epoch, iteration, step, 1),
            "last_losses": history[-1] if history else {},
            **validator.state_dict(),
            "generators": {f"ld2hd.{k}": v for k, v in generator.state_dict().items()},
            **average.state_dict(),
            "opt_g": opt_g.state_dict(),
            "sched_g": sched_g.state_dict(),
            "rng": [rng.get_state()],
            "torch_rng": torch.get_rng_state(),
            "lesion_rng": lesion_rng.get_state(),
        }
        if discriminator is not None and opt_d is not None and sched_d is not None:
            state.update(
                discriminators=discriminator.state_dict(), opt_d=opt_d.state_dict(), sched_d=sched_d.state_dict()
            )
        write_checkpoint(state, path, also_last=path != best_path)
        return path

    checkpoint: Path | None = None
    stop = False
    while epoch < cfg.epochs and not stop:
        while iteration < per_epoch:
            batch = sampler.sample(cfg.batch_size, rng).to(device)
            ld, hd = batch[:, :1], batch[:, 1:]
            fake = generator(ld)
            if discriminator is not None:
                for p in discriminator.parameters():
                    p.requires_grad_(False)
            g_losses = paired_losses(fake, hd, view, cfg, win, discriminator)
            g_losses = with_lesion_term(g_losses, cfg.lambda_lesion, generator, ld, fake, window, lesion_rng)
            opt_g.zero_grad(set_to_none=True)
            g_losses["g_total"].backward()
            opt_g.step()
            average.update()
            losses = {k: float(v.detach()) for k, v in g_losses.items()}
            if discriminator is not None and opt_d is not None:
                for p in discriminator.parameters():
                    p.requires_grad_(True)
                d_loss = 0.5 * (lsgan(discriminator(hd), True) + lsgan(discriminator(fake.detach()), False))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                losses["d_hd"] = float(d_loss.detach())
            iteration += 1
            step += 1
            losses["lr"] = opt_g.param_groups[0]["lr"]
            if validator(step, average.model, losses):
                save(best_path.name)
            history.append(losses)
            if step % cfg.log_every == 0 or step == 1:
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v, step)
            if on_step is not None:
                on_step(step, epoch, losses)
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        if iteration >= per_epoch:
            epoch, iteration = epoch + 1, 0
            sched_g.step()
            if sched_d is not None:
                sched_d.step()
            checkpoint = save(f"epoch-{epoch:03d}.pt")
        else:
            checkpoint = save(f"step-{step:07d}.pt")
    writer.close()
    validator.write(run_dir / "validation.json")
    best = best_path if best_path.exists() else None
    return TrainResult(step, epoch, checkpoint, history, validator.curve, best, average.model.state_dict())
