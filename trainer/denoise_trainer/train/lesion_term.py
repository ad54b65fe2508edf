"""The inserted-lesion contrast term: a small disk added to the low-dose input must keep its contrast through the
generator.

Why: a denoiser's easiest gain is to flatten everything small and faint, and quantum noise and a 3 mm, 10 HU lesion
look alike to it. Neither the adversarial term (the discriminators see noise texture) nor the cycle term (the inverse
generator can put a faint lesion back) forbids that. This term measures what the scorecard scores, the lesion's
contrast kept, on lesions whose truth is known because they are inserted on the fly:

    d = soft-edged disk (contrast c, radius r) at a random place of an LD patch x;  Δ = G(x + d) − G(x)
    kept = (mean of Δ in the core − mean of Δ in the ring) / c      (core: 0.6 r; ring: r + 2 … r + 4 px)
    loss = mean over the batch of |1 − kept|

so a generator that keeps every inserted lesion's contrast pays nothing and one that halves them pays 0.5. It asks
for the contrast, not the pixels: a first version (Σ|Δ − d| / Σ|d|, every pixel) demanded that the generator be
linear around each lesion, which only the identity is, and pulled the generators back to it (the validation error
rose to LD's within a few hundred steps, docs/model-card.md). The noise under the disk is the patch's own, so the
generator cannot tell an inserted lesion from a real one by its texture.

Approximate, on purpose: the disk is added in the image domain after reconstruction, so it carries no noise of its own
(a real lesion of +20 HU changes the projections' photon counts by about 0.1 %, which is negligible) and it is not
blurred by the reconstruction kernel beyond its one-pixel soft edge.
"""

from __future__ import annotations

import torch

from denoise_trainer.train.conditioning import add_to_image

CONTRAST_HU = (5.0, 60.0)  # |contrast| drawn uniformly, sign ±: the low-contrast lesions that denoisers lose
RADIUS_PX = (1.5, 6.0)  # ≈ 1–4.5 mm at 0.75 mm pixels
MARGIN_PX = 2.0  # the ring starts this far outside the rim
RING_PX = 2.0  # and is this wide
CORE_FRACTION = 0.6  # the core: this fraction of the radius (at least 1 px), as the scorecard measures it


def inserted_lesions(
    shape: torch.Size | tuple[int, ...],
    units_per_hu: float,
    gen: torch.Generator,
    device: torch.device,
    contrast_hu: tuple[float, float] = CONTRAST_HU,
    radius_px: tuple[float, float] = RADIUS_PX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One disk per patch: (d, core mask, ring mask) of ``shape`` (B, 1, H, W) and the signed contrast (B,), in
    model units.

    ``gen`` lives on the CPU (the draws are a handful of numbers per batch); the maps are built on ``device``.
    """
    b, _, h, w = shape
    u = torch.rand(b, 4, generator=gen)
    radius = radius_px[0] + u[:, 0] * (radius_px[1] - radius_px[0])
    contrast = contrast_hu[0] + u[:, 1] * (contrast_hu[1] - contrast_hu[0])
    sign = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    edge = radius + MARGIN_PX + RING_PX + 1.0
    cy = edge + u[:, 2] * (h - 2 * edge)
    cx = edge + u[:, 3] * (w - 2 * edge)
    yy = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
    dist = torch.hypot(yy - cy.to(device).view(b, 1, 1), xx - cx.to(device).view(b, 1, 1))
    r = radius.to(device).view(b, 1, 1)
    inside = (r + 0.5 - dist).clamp(0.0, 1.0)  # partial volume over the rim pixel
    amplitude = (sign * contrast * units_per_hu).to(device)
    d = (inside * amplitude.view(b, 1, 1)).unsqueeze(1)
    core = (dist <= torch.clamp(CORE_FRACTION * r, min=1.0)).float().unsqueeze(1)
    ring = ((dist >= r + MARGIN_PX) & (dist < r + MARGIN_PX + RING_PX)).float().unsqueeze(1)
    return d, core, ring, amplitude


def contrast_kept(
    change: torch.Tensor, core: torch.Tensor, ring: torch.Tensor, amplitude: torch.Tensor
) -> torch.Tensor:
    """Per patch: (mean of ``change`` in the core − mean in the ring) / the inserted contrast."""
    dims = (1, 2, 3)
    inner = (change * core).sum(dims) / core.sum(dims)
    outer = (change * ring).sum(dims) / ring.sum(dims)
    return (inner - outer) / amplitude


def lesion_transfer_loss(
    generator: torch.nn.Module,
    x: torch.Tensor,
    g_x: torch.Tensor,
    units_per_hu: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """mean |1 − contrast kept| of lesions inserted into ``x``: 0 when each keeps its contrast, 0.5 when halved."""
    d, core, ring, amplitude = inserted_lesions(x.shape, units_per_hu, gen, x.device)
    change = generator(add_to_image(x, d)).float() - g_x.float()
    return (1.0 - contrast_kept(change, core, ring, amplitude)).abs().mean()


def with_lesion_term(
    losses: dict[str, torch.Tensor],
    weight: float,
    generator: torch.nn.Module,
    x: torch.Tensor,
    g_x: torch.Tensor,
    window: tuple[float, float],
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``losses`` with ``g_lesion`` added to it and, × ``weight``, to ``g_total`` (unchanged when ``weight`` is 0)."""
    if weight <= 0:
        return losses
    term = lesion_transfer_loss(generator, x, g_x, 2.0 / (window[1] - window[0]), gen)
    return {**losses, "g_total": losses["g_total"] + weight * term, "g_lesion": term}
