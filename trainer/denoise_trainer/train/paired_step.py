"""Paired mode, beyond the method: the LD→HD generator learnt from LD/HD pairs of the training patients.

Why it works without a noise-free target: the HD image of a pair is the truth plus quantum noise independent of
LD's, so the generator that minimises the expected L1 to HD is (for L1, up to the noise's median) the one that
predicts the truth: Noise2Noise (Lehtinen et al. 2018). The loss is L1 + (1 − MS-SSIM) in the soft-tissue window,
where low-contrast lesions live; plain L1 alone over-smooths them (a probe kept 0.69 of lesion contrast, issue
15), so an optional least-squares adversarial term against HD patches (``lambda_pair_adv``) pulls the output back
towards HD's texture, and the node's ``strength`` lets a site keep more of the source.

Same checkpoint format as the unpaired objective (``generators`` under ``ld2hd.*`` keys), so `model export` and
`--resume` work alike; the one training loop (train/loop.py) runs it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from denoise_trainer.train.checkpoint import linear_decay, restore_schedule
from denoise_trainer.train.conditioning import image_part
from denoise_trainer.train.cyclegan import PatchDiscriminator, WindowView, init_weights, lsgan
from denoise_trainer.train.feeds import Feed
from denoise_trainer.train.lesion_term import with_lesion_term
from denoise_trainer.train.recipe import CannotTrain, TrainConfig
from denoise_trainer.train.step import StepTools, adam, set_requires_grad
from dicom_denoise_node.model.generator import make_generator

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)  # the first three of Wang et al.'s five scales (patches are small)


def ms_ssim_window(patch: int, wanted: int) -> int:
    """The largest odd SSIM window ≤ ``wanted`` that pytorch-msssim accepts for this patch (side > 16·(win − 1))."""
    win = wanted
    while win > 3 and patch <= 16 * (win - 1):
        win -= 2
    if patch <= 16 * (win - 1):
        raise CannotTrain(f"patches of {patch} px are too small for MS-SSIM (at least 33 px)")
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


class PairedStep:
    """LD→HD from aligned pairs: the generator, an optional discriminator against HD, their optimisers and schedules.

    ``warms_up`` is False: the paired objective has never held its generator back for ``d_warmup_steps`` (paired 1.0.0
    and 1.1.0 ran with the cpu preset's 200 and no warm-up), so their recipes reproduce.
    """

    pairing = "paired"
    warms_up = False

    def __init__(self, cfg: TrainConfig, device: torch.device, feed: Feed) -> None:
        self.cfg, self.window = cfg, (cfg.hu_min, cfg.hu_max)
        self.generator = make_generator(cfg.generator_config())
        init_weights(self.generator)
        disc_window = None if cfg.disc_hu_min is None else (cfg.disc_hu_min, cfg.disc_hu_max)
        self.view = WindowView(self.window, disc_window)  # type: ignore[arg-type]  # soft-tissue window, for MS-SSIM
        self.discriminator: nn.Module | None = None
        if cfg.lambda_pair_adv > 0:
            disc_view = WindowView(self.window, disc_window, cfg.disc_highpass_sigma)  # type: ignore[arg-type]
            self.discriminator = nn.Sequential(
                disc_view, PatchDiscriminator(1, cfg.disc_filters, cfg.disc_layers, cfg.disc_norm)
            )
            init_weights(self.discriminator)
            self.discriminator.to(device, memory_format=feed.memory_format)
        self.generator.to(device, memory_format=feed.memory_format)
        self.opt_g = adam(self.generator.parameters(), cfg.lr, cfg, device)
        self.sched_g = LambdaLR(self.opt_g, linear_decay(cfg))
        self.opt_d = self.sched_d = None
        if self.discriminator is not None:
            self.opt_d = adam(self.discriminator.parameters(), cfg.lr * cfg.lr_d_factor, cfg, device)
            self.sched_d = LambdaLR(self.opt_d, linear_decay(cfg))
        self.win = ms_ssim_window(cfg.patch_size, cfg.ssim_window)
        self.g_model: nn.Module = self.generator
        self.d_model: nn.Module | None = self.discriminator

    def distribute(self, device: torch.device) -> None:
        ids = [device.index] if device.type == "cuda" else None
        self.g_model = DistributedDataParallel(self.generator, device_ids=ids)
        if self.discriminator is not None:
            self.d_model = DistributedDataParallel(self.discriminator, device_ids=ids)

    def compile(self) -> None:
        self.g_model = torch.compile(self.g_model)  # type: ignore[assignment]
        if self.d_model is not None:
            self.d_model = torch.compile(self.d_model)  # type: ignore[assignment]

    def __call__(
        self, ld: torch.Tensor, hd: torch.Tensor, train_generator: bool, tools: StepTools
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cfg, scaler, lesion_rng = self.cfg, tools.scaler, tools.lesion_rng
        hd = image_part(hd)  # G(LD, σ_LD) against HD's image when noise-conditioned; else HD itself
        if self.discriminator is not None:
            set_requires_grad(self.discriminator, False)
        with tools.autocast():
            fake = self.g_model(ld)
            losses = paired_losses(fake, hd, self.view, cfg, self.win, self.d_model)
            losses = with_lesion_term(losses, cfg.lambda_lesion, self.generator, ld, fake, self.window, lesion_rng)
        self.opt_g.zero_grad(set_to_none=True)
        scaler.scale(losses["g_total"]).backward()
        scaler.step(self.opt_g)
        if self.discriminator is not None and self.d_model is not None and self.opt_d is not None:
            set_requires_grad(self.discriminator, True)
            with tools.autocast():
                d_loss = 0.5 * (lsgan(self.d_model(hd), True) + lsgan(self.d_model(fake.detach()), False))
            self.opt_d.zero_grad(set_to_none=True)
            scaler.scale(d_loss).backward()
            scaler.step(self.opt_d)
            losses["d_hd"] = d_loss
        scaler.update()
        return losses, fake.detach()

    def lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    def end_epoch(self) -> None:
        self.sched_g.step()
        if self.sched_d is not None:
            self.sched_d.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "generators": {f"ld2hd.{k}": v for k, v in self.generator.state_dict().items()},
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
        }
        if self.discriminator is not None and self.opt_d is not None and self.sched_d is not None:
            state.update(
                discriminators=self.discriminator.state_dict(),
                opt_d=self.opt_d.state_dict(),
                sched_d=self.sched_d.state_dict(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        cfg = self.cfg
        self.generator.load_state_dict({k.removeprefix("ld2hd."): v for k, v in state["generators"].items()})
        restore_schedule(self.opt_g, self.sched_g, state["opt_g"], state["sched_g"], cfg.lr)
        if self.discriminator is not None and self.opt_d is not None and self.sched_d is not None:
            self.discriminator.load_state_dict(state["discriminators"])
            restore_schedule(self.opt_d, self.sched_d, state["opt_d"], state["sched_d"], cfg.lr * cfg.lr_d_factor)
