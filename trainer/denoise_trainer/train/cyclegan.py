"""The CycleGAN of the method: two ResNet generators (the node's generator.py), two 70×70 PatchGAN discriminators,
least-squares adversarial loss, cycle L1 × λ, identity "fidelity" 1−SSIM, and a pool of past fakes.

Both generators live in one module whose forward computes every image the generator loss needs, and both
discriminators in another: one forward per module per step is what DistributedDataParallel expects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

from denoise_trainer.train.conditioning import as_input
from dicom_denoise_node.model.generator import ArchConfig, ResidualCNN, ResidualUNet, ResnetGenerator, make_generator


class PatchDiscriminator(nn.Module):
    """PatchGAN: C64-C128-C256-C512 (4×4 convs), LeakyReLU 0.2, instance norm, a 1-channel score map.

    ``layers=3`` is the method's 70×70 receptive field. ``layers=2`` (34×34) and ``norm="none"`` are the cpu
    preset's documented deviation: a discriminator that sees local texture at its true amplitude. Instance norm
    rescales each patch's features, which hides the very difference between the domains here (noise amplitude),
    and a 70 px field on four unpaired patients per domain lets the discriminator use anatomy instead; a short CPU
    run then teaches the generator to reshape organs rather than to remove noise.
    """

    def __init__(self, in_channels: int = 1, filters: int = 64, layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "none"):
            raise ValueError(f"unknown discriminator norm {norm!r}")
        f = filters
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, f, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = f
        for i in range(1, layers + 1):
            out = f * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks.append(nn.Conv2d(channels, out, 4, stride=stride, padding=1))
            if norm == "instance":
                blocks.append(nn.InstanceNorm2d(out))
            blocks.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*blocks)
        self.norm = norm

    def reset_parameters(self) -> None:
        """PyTorch's default convolution initialisation, used when there is no normalisation layer.

        Why: the reference N(0, 0.02) initialisation relies on instance norm to rescale every layer. Without it the
        signal shrinks several-fold per layer, the score map starts flat whatever the input, and the discriminator
        sits at chance (LSGAN loss 0.25) while the generators, given no signal, settle on the identity: what the
        first run of the normalisation-free recipe did for 200 steps. A discriminator alone telling quarter-dose
        from regular-dose 64² patches, 100 steps (docs/model-card.md): N(0, 0.02) stays at chance, He-normal is
        unstable (loss 0.30–0.37), PyTorch's default separates the domains.
        """
        for m in self.model:
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, 0.02) initialisation of the reference CycleGAN implementation (residual CNN/U-Net: their own)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ResnetGenerator):
            m.start_as_identity()
        elif isinstance(m, ResidualCNN | ResidualUNet) or (isinstance(m, PatchDiscriminator) and m.norm == "none"):
            m.reset_parameters()


class CycleGenerators(nn.Module):
    """G: LD→HD (the one the node ships) and F: HD→LD.

    Noise-conditioned (``ld`` and ``hd`` then carry their noise-level maps, train/conditioning.py): G(LD, σ_LD) and
    F(HD, σ_HD), the identities G(HD, σ_HD) and F(LD, σ_LD), and for the cycle each fake takes the map of the real
    batch of the domain it imitates (``as_input``)."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.ld2hd = make_generator(config)
        self.hd2ld = make_generator(config)

    def forward(self, ld: torch.Tensor, hd: torch.Tensor) -> dict[str, torch.Tensor]:
        n = ld.shape[0]
        # Translation and identity in one pass per generator (instance norm is per sample).
        out_g = self.ld2hd(torch.cat([ld, hd]))
        out_f = self.hd2ld(torch.cat([hd, ld]))
        fake_hd, idt_hd = out_g[:n], out_g[n:]
        fake_ld, idt_ld = out_f[:n], out_f[n:]
        return {
            "fake_hd": fake_hd,
            "fake_ld": fake_ld,
            "rec_ld": self.hd2ld(as_input(fake_hd, hd)),
            "rec_hd": self.ld2hd(as_input(fake_ld, ld)),
            "idt_hd": idt_hd,
            "idt_ld": idt_ld,
        }


class WindowView(nn.Module):
    """What a discriminator sees: the model's [−1, 1] image re-windowed to another HU window and clipped.

    Why: in a wide model window (−1024…1024 HU) the quantum noise that tells LD from HD is a few thousandths of
    the range; in the soft-tissue window (−160…240 HU) it is five times larger, and lung or bone, which tell
    nothing about dose, saturate. An affine map and a clamp, so gradients flow wherever the window is not clipped.
    ``highpass_sigma`` > 0 then subtracts a Gaussian low-pass of that width (and multiplies by ``highpass_gain``).
    """

    def __init__(
        self,
        model_window: tuple[float, float],
        view_window: tuple[float, float] | None = None,
        highpass_sigma: float = 0.0,
        highpass_gain: float = 4.0,
    ) -> None:
        super().__init__()
        self.highpass_sigma, self.highpass_gain = highpass_sigma, highpass_gain
        lo, hi = model_window
        vlo, vhi = view_window or model_window
        # hu = (x + 1) / 2 · (hi − lo) + lo;  v = 2 (hu − vlo) / (vhi − vlo) − 1  =  scale · x + shift
        self.scale = (hi - lo) / (vhi - vlo)
        self.shift = (hi + lo - vhi - vlo) / (vhi - vlo)
        self.active = view_window is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active:
            x = (x * self.scale + self.shift).clamp(-1.0, 1.0)
        if self.highpass_sigma > 0:
            # Only the fine detail: quantum noise, and edges. Why: what tells the doses apart is noise texture;
            # without the anatomy a discriminator learns it several times faster (docs/model-card.md, D probes).
            x = (x - gaussian_lowpass(x, self.highpass_sigma)) * self.highpass_gain
        return x


class Discriminators(nn.Module):
    def __init__(
        self, filters: int = 64, layers: int = 3, norm: str = "instance", view: WindowView | None = None
    ) -> None:
        super().__init__()
        view = view or WindowView((-1.0, 1.0))
        self.ld = nn.Sequential(view, PatchDiscriminator(filters=filters, layers=layers, norm=norm))
        self.hd = nn.Sequential(view, PatchDiscriminator(filters=filters, layers=layers, norm=norm))

    def forward(
        self, real_ld: torch.Tensor, fake_ld: torch.Tensor, real_hd: torch.Tensor, fake_hd: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Least-squares discriminator losses: 0.5·(‖D(real)−1‖² + ‖D(fake)‖²) per domain."""
        return {
            "d_ld": 0.5 * (lsgan(self.ld(real_ld), True) + lsgan(self.ld(fake_ld), False)),
            "d_hd": 0.5 * (lsgan(self.hd(real_hd), True) + lsgan(self.hd(fake_hd), False)),
        }


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target.float())


def fidelity(x: torch.Tensor, y: torch.Tensor, window: int) -> torch.Tensor:
    """1 − SSIM on [−1, 1] images (data range 2), computed in float32 through pytorch-msssim."""
    return 1.0 - ssim(x.float(), y.float(), data_range=2.0, win_size=window, size_average=True)


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (±3σ, reflect padding) in float32."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(torch.float32)
    y = F.pad(x.float(), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))


def generator_losses(
    images: dict[str, torch.Tensor],
    ld: torch.Tensor,
    hd: torch.Tensor,
    discriminators: Discriminators,
    lambda_cycle: float,
    lambda_fidelity: float,
    ssim_window: int,
    cycle_beta: float = 0.0,
    lambda_identity_l1: float = 0.0,
    lambda_lowpass: float = 0.0,
    lowpass_sigma: float = 3.0,
) -> dict[str, torch.Tensor]:
    """The generator objective of the method: adversarial + λ·cycle + fidelity, for both directions.

    Beyond the method (all off by default): ``lambda_identity_l1`` adds an L1 identity term; ``lambda_lowpass``
    a squared error between the Gaussian low-passes of each translation and its input, which holds mean HU in
    place while leaving the high frequencies, where quantum noise lives, free to change.

    ``cycle_beta`` > 0 makes the cycle term smooth L1 (Huber) with that width instead of the method's L1: L1 has a
    kink at zero error, so a residual generator that starts as the identity is held there by a full-size cycle
    gradient against the small adversarial one; below ``cycle_beta`` (about the quantum noise amplitude) the
    penalty is quadratic and lets noise go, above it it is L1 and still forbids changing anatomy.
    """
    adv = lsgan(discriminators.hd(images["fake_hd"]), True) + lsgan(discriminators.ld(images["fake_ld"]), True)
    if cycle_beta > 0:
        cycle = F.smooth_l1_loss(images["rec_ld"].float(), ld.float(), beta=cycle_beta) + F.smooth_l1_loss(
            images["rec_hd"].float(), hd.float(), beta=cycle_beta
        )
    else:
        cycle = F.l1_loss(images["rec_ld"].float(), ld.float()) + F.l1_loss(images["rec_hd"].float(), hd.float())
    total = adv + lambda_cycle * cycle
    out = {"g_adv": adv, "g_cycle": cycle}
    if lambda_fidelity > 0:
        fid = fidelity(images["idt_hd"], hd, ssim_window) + fidelity(images["idt_ld"], ld, ssim_window)
        total = total + lambda_fidelity * fid
        out["g_fidelity"] = fid
    if lambda_identity_l1 > 0:
        idt = F.l1_loss(images["idt_hd"].float(), hd.float()) + F.l1_loss(images["idt_ld"].float(), ld.float())
        total = total + lambda_identity_l1 * idt
        out["g_identity"] = idt
    if lambda_lowpass > 0:
        # Squared, not L1: an L1 term is zero with a kink at the identity, and with the cycle and identity L1 it
        # held the generators there for good (run 2, docs/model-card.md); squared, it lets small changes go and
        # grows with a HU shift.
        low = F.mse_loss(
            gaussian_lowpass(images["fake_hd"], lowpass_sigma), gaussian_lowpass(ld, lowpass_sigma)
        ) + F.mse_loss(gaussian_lowpass(images["fake_ld"], lowpass_sigma), gaussian_lowpass(hd, lowpass_sigma))
        total = total + lambda_lowpass * low
        out["g_lowpass"] = low
    return {"g_total": total, **out}


class ImagePool:
    """A buffer of past fakes: half the time the discriminator sees an older fake (steadies training)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = generator

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch.detach()
        out = []
        for image in batch.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.rng).item() < 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self.rng).item())
                old = self.images[idx].clone()
                self.images[idx] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict[str, object]:
        return {"images": [t.cpu() for t in self.images], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, object], device: torch.device) -> None:
        self.images = [t.to(device) for t in state["images"]]  # type: ignore[union-attr]
        self.rng.set_state(state["rng"])  # type: ignore[arg-type]
