"""A noise-conditioned generator's input in training: channel 0 the image, channel 1 its noise-level map.

With ``noise_conditioning`` every batch a feed gives carries each patch's map (its slice's level measured once by the
node's ``conditioning_noise_hu``, data/slices.py ``noise_maps``), and the objectives take the image apart from it
where a loss or a discriminator looks at pixels. Without it a batch is the image alone and every function here
returns its input itself, so that unconditioned runs compute exactly what they did before the option existed.
"""

from __future__ import annotations

import torch


def image_part(x: torch.Tensor) -> torch.Tensor:
    """The image channel of a generator input (``x`` itself when it has no map)."""
    return x[:, :1] if x.shape[1] > 1 else x


def as_input(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``image`` with the noise-level map of ``like`` (``image`` itself when ``like`` has none).

    Why the map of a real batch for a generated image: the level of a fake is not known, and the cycle asks F to
    take G's output for an HD image. So F(G(LD)) gets the levels of the real HD batch of the same step, sample by
    sample (the batches are unpaired, so each is a draw from the HD domain's levels), and G(F(HD)) those of the
    real LD batch. Measuring the fake itself with the flat-window estimator would follow what G did, but needs
    windows a 64-px patch rarely has, and would make the map depend on the generator being trained.
    """
    if like.shape[1] == 1:
        return image
    return torch.cat([image, like[:, 1:].to(image.dtype)], 1)


def add_to_image(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``x + d`` on the image channel only: an inserted lesion changes the image, not the measured noise level."""
    if x.shape[1] == 1:
        return x + d
    return torch.cat([x[:, :1] + d, x[:, 1:]], 1)
