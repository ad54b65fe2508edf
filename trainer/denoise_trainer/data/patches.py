"""Unpaired LD/HD patch sampling: 1-channel, 16-bit-safe, never through 8-bit images, never resized.

Slices, decoded once to HU (float32) by ``data/slices.py``, are kept in memory with a body mask; each sample is a random
patch_size² patch whose body fraction is at least ``body_fraction`` (patches of air teach nothing and let
instance norm blow up noise), with a random 90° rotation and a random horizontal flip. All randomness comes from one
torch.Generator so that a resumed run draws exactly the patches an uninterrupted run would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from dicom_denoise_node.model.registry import normalize_hu

log = logging.getLogger(__name__)


class PatchSampler:
    """Random body-containing patches from a set of slices of one domain.

    A slice may also be a (C, H, W) stack of aligned images (paired LD/HD): every channel is cut at the same place
    and augmented alike; the body is found in channel 0. ``maps`` (one tuple per slice, model units) appends that
    many constant channels to each of its patches: a noise-conditioned generator's noise-level maps, constant over
    the slice, so unchanged by the crop, the turns and the flips, and no extra draw from the generator.
    """

    def __init__(
        self,
        slices_hu: Sequence[np.ndarray],
        patch_size: int,
        hu_window: tuple[float, float],
        body_hu: float = -500.0,
        body_fraction: float = 0.5,
        augment: bool = True,
        maps: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if not slices_hu:
            raise ValueError("no slices to sample patches from")
        if maps is not None and len(maps) != len(slices_hu):
            raise ValueError(f"{len(maps)} noise maps for {len(slices_hu)} slices")
        self.maps = None if maps is None else torch.tensor(maps, dtype=torch.float32).reshape(len(maps), -1)
        self.patch = patch_size
        self.augment = augment
        self.body_fraction = body_fraction
        self.images: list[torch.Tensor] = []
        self.body_integral: list[torch.Tensor] = []
        for hu in slices_hu:
            hu = hu if hu.ndim == 3 else hu[None]
            if min(hu.shape[-2:]) < patch_size:
                raise ValueError(f"slice {hu.shape[-2:]} is smaller than the {patch_size}-px patch")
            self.images.append(torch.from_numpy(normalize_hu(hu, *hu_window)))
            body = torch.from_numpy((hu[0] > body_hu).astype(np.float64))
            # Summed-area table: the body fraction of any patch in O(1).
            self.body_integral.append(torch.nn.functional.pad(body.cumsum(0).cumsum(1), (1, 0, 1, 0)))

    def __len__(self) -> int:
        return len(self.images)

    def body_fraction_at(self, k: int, y: int, x: int) -> float:
        """Fraction of body pixels in the patch of slice k at (y, x) (integral image: O(1))."""
        s, p = self.body_integral[k], self.patch
        total = s[y + p, x + p] - s[y, x + p] - s[y + p, x] + s[y, x]
        return float(total) / (p * p)

    def sample(self, batch: int, rng: torch.Generator, tries: int = 20) -> torch.Tensor:
        """A (batch, C, p, p) float32 tensor in [−1, 1] (C = 1 for plain slices)."""
        channels = self.images[0].shape[0]
        extra = 0 if self.maps is None else self.maps.shape[1]
        out = torch.empty(batch, channels + extra, self.patch, self.patch)
        for b in range(batch):
            k = int(torch.randint(0, len(self.images), (), generator=rng))
            image = self.images[k]
            h, w = image.shape[-2:]
            best, best_frac = (0, 0), -1.0
            for _ in range(tries):
                y = int(torch.randint(0, h - self.patch + 1, (), generator=rng))
                x = int(torch.randint(0, w - self.patch + 1, (), generator=rng))
                frac = self.body_fraction_at(k, y, x)
                if frac > best_frac:
                    best, best_frac = (y, x), frac
                if frac >= self.body_fraction:
                    break
            y, x = best
            patch = image[:, y : y + self.patch, x : x + self.patch]
            if self.augment:
                patch = torch.rot90(patch, int(torch.randint(0, 4, (), generator=rng)), dims=(1, 2))
                if bool(torch.randint(0, 2, (), generator=rng)):
                    patch = torch.flip(patch, dims=(2,))
            if self.maps is None:
                out[b] = patch
            else:
                out[b, :channels] = patch
                out[b, channels:] = self.maps[k].view(extra, 1, 1)
        return out


def paired_patches(
    ld: Sequence[np.ndarray],
    hd: Sequence[np.ndarray],
    count: int,
    patch: int,
    hu_window: tuple[float, float],
    seed: int,
    ld_maps: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same body-containing locations in paired LD/HD slices (validation montages); deterministic by seed.
    ``ld_maps``: each LD slice's noise-level map value, appended to its patches (a noise-conditioned generator)."""
    sampler = PatchSampler(ld, patch, hu_window, augment=False)
    rng = torch.Generator().manual_seed(seed)
    ld_out, hd_out = [], []
    for i in range(count):
        k = i % len(ld)
        h, w = ld[k].shape
        best = (0, 0, -1.0)
        for _ in range(50):
            y = int(torch.randint(0, h - patch + 1, (), generator=rng))
            x = int(torch.randint(0, w - patch + 1, (), generator=rng))
            frac = sampler.body_fraction_at(k, y, x)
            if frac > best[2]:
                best = (y, x, frac)
        y, x, _ = best
        ld_out.append(normalize_hu(ld[k][y : y + patch, x : x + patch], *hu_window))
        hd_out.append(normalize_hu(hd[k][y : y + patch, x : x + patch], *hu_window))
    ld_batch = torch.from_numpy(np.stack(ld_out))[:, None]
    if ld_maps is not None:
        values = torch.tensor([ld_maps[i % len(ld)] for i in range(count)], dtype=torch.float32)
        ld_batch = torch.cat([ld_batch, values.view(-1, 1, 1, 1).expand_as(ld_batch)], 1)
    return ld_batch, torch.from_numpy(np.stack(hd_out))[:, None]
