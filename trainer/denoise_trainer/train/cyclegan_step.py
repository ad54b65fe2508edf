"""The method's objective: two generators and two discriminators, least-squares adversarial, cycle L1, fidelity.

Generator step: the discriminators judge, they do not learn. During the discriminators' warm-up the generators only
produce the fakes (near the identity: LD itself), so the discriminators learn to tell the doses apart before the
generators are pulled to the identity by the L1 terms. Discriminator step: real images and pooled past fakes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from denoise_trainer.train.checkpoint import linear_decay, restore_schedule
from denoise_trainer.train.conditioning import image_part
from denoise_trainer.train.cyclegan import CycleGenerators, Discriminators, WindowView, generator_losses, init_weights
from denoise_trainer.train.feeds import Feed
from denoise_trainer.train.lesion_term import with_lesion_term
from denoise_trainer.train.recipe import TrainConfig
from denoise_trainer.train.step import StepTools, adam, set_requires_grad


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


class CycleGANStep:
    """Unpaired LD↔HD: the generators, discriminators, their Adam optimisers, schedules and pools of past fakes."""

    pairing = "unpaired"
    warms_up = True

    def __init__(self, cfg: TrainConfig, device: torch.device, feed: Feed) -> None:
        self.cfg, self.window = cfg, (cfg.hu_min, cfg.hu_max)
        self.gens = CycleGenerators(cfg.generator_config())
        disc_window = None if cfg.disc_hu_min is None else (cfg.disc_hu_min, cfg.disc_hu_max)
        view = WindowView(self.window, disc_window, cfg.disc_highpass_sigma)  # type: ignore[arg-type]
        self.discs = Discriminators(cfg.disc_filters, cfg.disc_layers, cfg.disc_norm, view)
        init_weights(self.gens)
        init_weights(self.discs)
        self.gens.to(device, memory_format=feed.memory_format)
        self.discs.to(device, memory_format=feed.memory_format)
        self.generator = self.gens.ld2hd
        self.opt_g = adam(self.gens.parameters(), cfg.lr, cfg, device)
        self.opt_d = adam(self.discs.parameters(), cfg.lr * cfg.lr_d_factor, cfg, device)
        self.sched_g, self.sched_d = LambdaLR(self.opt_g, linear_decay(cfg)), LambdaLR(self.opt_d, linear_decay(cfg))
        self.pool_ld, self.pool_hd = feed.make_pool(cfg.pool_size, 500), feed.make_pool(cfg.pool_size, 700)
        self.g_model: torch.nn.Module = self.gens
        self.d_model: torch.nn.Module = self.discs

    def distribute(self, device: torch.device) -> None:
        ids = [device.index] if device.type == "cuda" else None
        self.g_model = DistributedDataParallel(self.gens, device_ids=ids)
        self.d_model = DistributedDataParallel(self.discs, device_ids=ids)

    def compile(self) -> None:
        self.g_model, self.d_model = torch.compile(self.g_model), torch.compile(self.d_model)  # type: ignore[assignment]

    def __call__(
        self, ld: torch.Tensor, hd: torch.Tensor, train_generator: bool, tools: StepTools
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cfg, scaler, lesion_rng = self.cfg, tools.scaler, tools.lesion_rng
        ld_image, hd_image = image_part(ld), image_part(hd)  # the batches themselves unless noise-conditioned
        set_requires_grad(self.discs, False)
        with tools.autocast(), torch.set_grad_enabled(train_generator):
            images = self.g_model(ld, hd)
            g_losses = configured_losses(cfg, images, ld_image, hd_image, self.discs)
            if train_generator:
                g_losses = with_lesion_term(
                    g_losses, cfg.lambda_lesion, self.generator, ld, images["fake_hd"], self.window, lesion_rng
                )
        if train_generator:
            self.opt_g.zero_grad(set_to_none=True)
            scaler.scale(g_losses["g_total"]).backward()
            scaler.step(self.opt_g)
        set_requires_grad(self.discs, True)
        fake_ld = self.pool_ld.query(images["fake_ld"].float())
        fake_hd = self.pool_hd.query(images["fake_hd"].float())
        with tools.autocast():
            d_losses = self.d_model(ld_image, fake_ld, hd_image, fake_hd)
        self.opt_d.zero_grad(set_to_none=True)
        scaler.scale(d_losses["d_ld"] + d_losses["d_hd"]).backward()
        scaler.step(self.opt_d)
        scaler.update()
        fake = images["fake_hd"].detach()
        return {**g_losses, **d_losses, "fake_hd_std": fake.float().std()}, fake

    def lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "generators": self.gens.state_dict(),
            "discriminators": self.discs.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "pool_ld": self.pool_ld.state_dict(),
            "pool_hd": self.pool_hd.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        cfg = self.cfg
        self.gens.load_state_dict(state["generators"])
        self.discs.load_state_dict(state["discriminators"])
        restore_schedule(self.opt_g, self.sched_g, state["opt_g"], state["sched_g"], cfg.lr)
        restore_schedule(self.opt_d, self.sched_d, state["opt_d"], state["sched_d"], cfg.lr * cfg.lr_d_factor)
        self.pool_ld.load_state_dict(state["pool_ld"], device)
        self.pool_hd.load_state_dict(state["pool_hd"], device)
