"""Where each step's patches come from: a Feed per data path, the same for every objective.

- ``HostFeed``: patches cut on the host by ``PatchSampler`` (any slice sizes), one torch.Generator per rank, then
  moved to the device; the pool of past fakes is a list on the host (``ImagePool``).
- ``DeviceFeed`` (once `--engine fast`): slices held on the device, random body-containing crops, 90° turns and flips
  as tensor ops from a device generator; the pool is one device tensor (``DevicePool``); the step's losses are read
  back every ``log_every`` steps instead of every step (no host synchronisation per step).

A feed gives a batch of LD and HD patches in [−1, 1]: unpaired (two samplers, one per domain) or paired (the same
location of one slice at both doses, 2-channel stacks split after the crop). With ``noise_conditioning`` each patch
carries a second channel, its slice's noise-level map (data/slices.py ``noise_maps``, measured once per slice at
construction: LD patches their LD slice's level, HD patches their HD slice's), the generator's second input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from denoise_trainer.data.patches import PatchSampler
from denoise_trainer.data.slices import noise_maps
from denoise_trainer.train.cyclegan import ImagePool
from denoise_trainer.train.recipe import CannotTrain, TrainConfig
from dicom_denoise_node.model.registry import normalize_hu

CANDIDATES = 4  # device feed: crops drawn per patch; the first with enough body wins (else the one with most)


class Pool(Protocol):
    def query(self, batch: torch.Tensor) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None: ...


class Feed(Protocol):
    """What the loop and the objectives need of a data path."""

    memory_format: torch.memory_format
    defer_sync: bool  # True: read losses back every log_every steps, not every step

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def make_pool(self, size: int, stream: int) -> Pool: ...
    def state_dict(self, world: int) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any], rank: int) -> None: ...


def _stacks(ld: Sequence[np.ndarray], hd: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(ld) != len(hd) or not ld:
        raise CannotTrain(f"paired training needs aligned pairs, got {len(ld)} LD and {len(hd)} HD slices")
    return [np.stack([a, b]) for a, b in zip(ld, hd, strict=True)]


def slice_maps(
    cfg: TrainConfig, ld: Sequence[np.ndarray], hd: Sequence[np.ndarray]
) -> tuple[list[tuple[float, ...]] | None, ...]:
    """Per-slice map values for the samplers: (paired stacks') or (LD's, HD's); Nones without conditioning."""
    paired = cfg.pairing == "paired"
    if not cfg.noise_conditioning:
        return (None,) if paired else (None, None)
    window = (cfg.hu_min, cfg.hu_max)
    ld_maps, hd_maps = noise_maps(ld, window), noise_maps(hd, window)
    if paired:  # channels [LD, HD, LD's map, HD's map]: split_pair takes [0::2] and [1::2]
        return (list(zip(ld_maps, hd_maps, strict=True)),)
    return [(m,) for m in ld_maps], [(m,) for m in hd_maps]


def split_pair(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A paired batch → (LD, HD): channels [LD, HD], or [LD, HD, LD's map, HD's map] when noise-conditioned."""
    if batch.shape[1] == 2:
        return batch[:, :1], batch[:, 1:]
    return batch[:, 0::2], batch[:, 1::2]


class HostFeed:
    """Patches cut on the host (the standard path; any slice sizes; DDP ranks draw their own patches)."""

    memory_format = torch.contiguous_format
    defer_sync = False

    def __init__(self, cfg: TrainConfig, ld: list[np.ndarray], hd: list[np.ndarray], device: torch.device, rank: int):
        window = (cfg.hu_min, cfg.hu_max)
        self.cfg, self.device, self.rank = cfg, device, rank
        self.paired = cfg.pairing == "paired"
        args = (cfg.patch_size, window, cfg.body_hu, cfg.body_fraction)
        maps = slice_maps(cfg, ld, hd)
        if self.paired:
            self.samplers = [PatchSampler(_stacks(ld, hd), *args, maps=maps[0])]
        else:
            self.samplers = [PatchSampler(ld, *args, maps=maps[0]), PatchSampler(hd, *args, maps=maps[1])]
        self.rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cfg.batch_size
        if self.paired:
            batch = self.samplers[0].sample(n, self.rng).to(self.device, non_blocking=True)
            return split_pair(batch)
        ld = self.samplers[0].sample(n, self.rng).to(self.device, non_blocking=True)
        hd = self.samplers[1].sample(n, self.rng).to(self.device, non_blocking=True)
        return ld, hd

    def make_pool(self, size: int, stream: int) -> Pool:
        """A pool of past fakes with its own generator (stream 500: LD's, 700: HD's)."""
        return ImagePool(size, torch.Generator().manual_seed(self.cfg.seed * 1000 + stream + self.rank))

    def state_dict(self, world: int) -> dict[str, Any]:
        """Every rank's sampling generator (gathered: small, object gather works on gloo and NCCL)."""
        if world == 1:
            return {"rng": [self.rng.get_state()]}
        states = [torch.empty_like(self.rng.get_state()) for _ in range(world)]
        dist.all_gather_object(states, self.rng.get_state())
        return {"rng": states}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        saved = state["rng"]
        self.rng.set_state(saved[rank] if rank < len(saved) else saved[0])


class DeviceSampler:
    """Random body-containing patches of (C-channel) slices, cut on the device without leaving it."""

    def __init__(
        self,
        slices_hu: list[np.ndarray],
        cfg: TrainConfig,
        device: torch.device,
        maps: list[tuple[float, ...]] | None = None,
    ) -> None:
        stacks = [s if s.ndim == 3 else s[None] for s in slices_hu]
        shapes = {s.shape for s in stacks}
        if len(shapes) != 1:
            raise CannotTrain(f"the device feed needs slices of one size, got {sorted(shapes)}")
        (_, h, w), patch = shapes.pop(), cfg.patch_size
        if min(h, w) < patch:
            raise CannotTrain(f"slices of {h}×{w} are smaller than the {patch}-px patch")
        self.patch, self.h, self.w, self.fraction = patch, h, w, cfg.body_fraction
        window = (cfg.hu_min, cfg.hu_max)
        self.images = torch.from_numpy(np.stack([normalize_hu(s, *window) for s in stacks])).to(device)
        body = torch.from_numpy(np.stack([s[0] > cfg.body_hu for s in stacks])).to(torch.float64)
        self.integral = F.pad(body.cumsum(1).cumsum(2), (1, 0, 1, 0)).to(torch.float32).to(device)
        self.offsets = torch.arange(patch, device=device)
        self.maps = None if maps is None else torch.tensor(maps, dtype=torch.float32, device=device)  # (slices, E)

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """(batch, C, p, p) float32 in [−1, 1], channels_last."""
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
        patches = self.images[k[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (batch, C, p, p)
        turns = torch.randint(0, 4, (batch,), device=dev, generator=gen)
        rotated = torch.stack([torch.rot90(patches, r, dims=(2, 3)) for r in range(4)])
        patches = rotated[turns, torch.arange(batch, device=dev)]
        flip = torch.randint(0, 2, (batch, 1, 1, 1), device=dev, generator=gen).bool()
        patches = torch.where(flip, patches.flip(-1), patches)
        if self.maps is not None:  # constant per slice: appended after the turns and flips, which leave it unchanged
            extra = self.maps[k].view(batch, -1, 1, 1).expand(-1, -1, p, p)
            patches = torch.cat([patches, extra], 1)
        return patches.contiguous(memory_format=torch.channels_last)


class DevicePool:
    """The pool of past fakes as one device tensor: half the time a fake is swapped for a stored one."""

    def __init__(self, size: int, shape: tuple[int, ...], device: torch.device, gen: torch.Generator) -> None:
        self.size, self.filled, self.gen = size, 0, gen
        self.images = torch.zeros((max(size, 1), *shape), device=device)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.detach()
        if self.size == 0:
            return batch
        if self.filled < self.size:  # the first fakes fill the pool and pass through (counted on the host)
            take = min(self.size - self.filled, batch.shape[0])
            self.images[self.filled : self.filled + take] = batch[:take]
            self.filled += take
            return batch
        n = batch.shape[0]
        swap = torch.rand(n, device=batch.device, generator=self.gen) < 0.5
        slot = torch.randint(0, self.size, (n,), device=batch.device, generator=self.gen)
        old = self.images[slot]
        self.images[slot] = torch.where(swap[:, None, None, None], batch, old)
        return torch.where(swap[:, None, None, None], old, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.cpu(), "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = state["images"].to(device)
        self.filled = int(state["filled"])


class DeviceFeed:
    """Patches cut on the device from slices held there (the GPU recipe; slices of one size; one device)."""

    memory_format = torch.channels_last
    defer_sync = True

    def __init__(self, cfg: TrainConfig, ld: list[np.ndarray], hd: list[np.ndarray], device: torch.device, rank: int):
        self.cfg, self.device = cfg, device
        self.paired = cfg.pairing == "paired"
        maps = slice_maps(cfg, ld, hd)
        if self.paired:
            self.samplers = [DeviceSampler(_stacks(ld, hd), cfg, device, maps[0])]
        else:
            self.samplers = [DeviceSampler(ld, cfg, device, maps[0]), DeviceSampler(hd, cfg, device, maps[1])]
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)  # one device: the GPU recipe's own seed

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cfg.batch_size
        if self.paired:
            return split_pair(self.samplers[0].sample(n, self.gen))
        return self.samplers[0].sample(n, self.gen), self.samplers[1].sample(n, self.gen)

    def make_pool(self, size: int, stream: int) -> Pool:
        """A device pool drawing from the feed's device generator (``stream`` is the host feed's seed offset)."""
        return DevicePool(size, (1, self.cfg.patch_size, self.cfg.patch_size), self.device, self.gen)

    def state_dict(self, world: int) -> dict[str, Any]:
        return {"rng": [self.gen.get_state()]}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        self.gen.set_state(state["rng"][0])


def make_feed(cfg: TrainConfig, ld: list[np.ndarray], hd: list[np.ndarray], device: torch.device, rank: int) -> Feed:
    """The configured data path (``feed``: host or device)."""
    kind = DeviceFeed if cfg.feed == "device" else HostFeed
    return kind(cfg, ld, hd, device, rank)
