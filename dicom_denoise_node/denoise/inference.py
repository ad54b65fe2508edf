"""③ Tile-by-tile inference over full slices: reflect padding, overlapping tiles, smooth blending, batching.

Generator-agnostic (MONAI's inferers are the model): any module mapping (B, C, t, t) → (B, 1, t, t) works, and an
identity module comes out of the tiler bit-exactly, because the blend is accumulated in float64 and every pixel's
weights are normalised. Tiles from consecutive slices share batches, and slices stream through with bounded
memory: only the slices whose tiles are in flight are held.

Images are never resized: a slice smaller than a tile is reflect-padded up to the tile and cropped back.

A slice is a 2-D image or a (C, H, W) stack whose channels are tiled alike (a noise-conditioned generator's image
and noise-level map, denoise/noise.py); only the network's 1-channel output is blended.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dicom_denoise_node.config import ConfigError

log = logging.getLogger(__name__)


def select_device(requested: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' or 'cuda:N' without that GPU is a configuration error.
    'cuda:N' lets one host run one worker per GPU (docs/install.md)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"[model] device = '{requested}' but no CUDA device is available")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"[model] device = '{requested}' but this host has {count} CUDA device(s): cuda:0…cuda:{count - 1}"
            )
        # fp32 with TF32 matrix units: the safe default on a GPU (half precision only where a GPU run showed it equal)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """The fewest tile origins covering [0, length) with neighbours sharing at least `overlap` pixels, evenly spread
    (so every seam gets the same blend, and no tile is spent on a sliver at the edge)."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))  # ceil
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """2-D weights: 1 in the tile centre, a raised-cosine ramp over the overlap, never zero."""
    ramp = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        i = np.arange(overlap, dtype=np.float64)
        edge = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / overlap)
        ramp[:overlap] = edge
        ramp[tile - overlap :] = edge[::-1]
    return np.outer(ramp, ramp)


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) padded on its last two axes."""
    pad_h, pad_w = height - image.shape[-2], width - image.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if min(image.shape[-2:]) > 1 else "edge"
    return np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


@dataclass
class _SliceJob:
    index: int
    height: int
    width: int
    padded: np.ndarray
    tiles: deque[tuple[int, int]]
    remaining: int
    numerator: np.ndarray = field(init=False)
    denominator: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.numerator = np.zeros(self.padded.shape[-2:], dtype=np.float64)
        self.denominator = np.zeros(self.padded.shape[-2:], dtype=np.float64)

    def result(self) -> np.ndarray:
        out = self.numerator / self.denominator
        return out[: self.height, : self.width].astype(np.float32)


def compile_network(network: nn.Module, batch: torch.Tensor) -> nn.Module:
    """``torch.compile`` (inductor, weights frozen as constants) for one fixed input shape, compiled now by one
    warm-up pass so that the cost (≈ 20–45 s on a 2-core CPU, seconds once inductor's on-disk cache is warm) is
    paid at start-up and not by the first series. Measured on CPU (docs/benchmarks.md): 1.3–1.6× faster than
    eager, because inductor fuses instance norm, ReLU and padding and pre-packs the oneDNN convolution weights.
    Any failure (no C++ compiler, an unsupported operator) returns the eager network with a warning."""
    try:
        # freezing: the weights never change in the node, so inductor folds them in (its option, scoped to this call)
        compiled = torch.compile(network, dynamic=False, options={"freezing": True})
        with torch.inference_mode():
            compiled(batch)
    except Exception as exc:
        log.warning("torch.compile failed (%s: %s); running the generator eagerly", type(exc).__name__, exc)
        return network
    return compiled


class TiledInferer:
    """Runs a network over full 2-D slices tile by tile, batching tiles across slices.

    With ``compile=True`` every batch has the same shape (the last one is padded with blank tiles), so the
    compiled graph is built once. ``channels``: the channels of each slice (2 for a noise-conditioned generator)."""

    def __init__(
        self,
        network: nn.Module,
        tile_size: int = 256,
        overlap: int = 32,
        batch_size: int = 4,
        device: torch.device | str = "cpu",
        half_precision: bool = False,
        compile: bool = False,
        channels: int = 1,
    ) -> None:
        if tile_size % 4:
            raise ValueError("tile_size must be a multiple of 4")
        if not 0 <= overlap < tile_size // 2:
            raise ValueError("overlap must be in [0, tile_size/2)")
        self.network = network
        self.tile = tile_size
        self.overlap = overlap
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.autocast = self.device.type == "cuda" and half_precision
        self.window = blend_window(tile_size, overlap)
        self.fixed_batch = compile
        self.channels = channels
        if compile:
            t0 = time.perf_counter()
            log.info("compiling the generator for batches of %d × %d² tiles", batch_size, tile_size)
            # An inference tensor, like every batch _forward makes: a plain tensor has one more dispatch key
            # (ADInplaceOrView), and that guard failure recompiled the graph on the first series (≈ 20 s).
            with torch.inference_mode():
                example = torch.zeros(batch_size, channels, tile_size, tile_size, device=self.device)
            self.network = compile_network(network, example)
            log.info("generator ready in %.1f s", time.perf_counter() - t0)

    def _job(self, index: int, image: np.ndarray) -> _SliceJob:
        stack = np.asarray(image, dtype=np.float32)
        stack = stack[None] if stack.ndim == 2 else stack
        if stack.ndim != 3 or stack.shape[0] != self.channels:
            raise ValueError(f"slice {index} has shape {image.shape}; expected {self.channels} channel(s) of 2-D image")
        h, w = stack.shape[-2:]
        padded = _pad_to(stack, max(h, self.tile), max(w, self.tile))
        tiles = deque(
            (y, x)
            for y in tile_starts(padded.shape[-2], self.tile, self.overlap)
            for x in tile_starts(padded.shape[-1], self.tile, self.overlap)
        )
        return _SliceJob(index, h, w, padded, tiles, len(tiles))

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if self.fixed_batch and count < self.batch_size:
            blank = np.zeros((self.batch_size - count, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, blank])
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.autocast else nullcontext()
        with ctx:
            y = self.network(x)
        return y[:count].float().cpu().numpy()

    def run(self, slices: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the network's output for each input slice, in order, each the size of its input."""
        source = iter(enumerate(slices))
        open_jobs: deque[_SliceJob] = deque()
        exhausted = False
        t = self.tile
        while True:
            batch_refs: list[tuple[_SliceJob, int, int]] = []
            while len(batch_refs) < self.batch_size:
                job = next((j for j in open_jobs if j.tiles), None)
                if job is None:
                    if exhausted:
                        break
                    try:
                        index, image = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    job = self._job(index, image)
                    open_jobs.append(job)
                y, x = job.tiles.popleft()
                batch_refs.append((job, y, x))
            if batch_refs:
                batch = np.stack([j.padded[:, y : y + t, x : x + t] for j, y, x in batch_refs])  # (n, C, t, t) with
                # real strides: a [:, None] view has the channel stride 0, which a compiled graph's guards count as
                # another input layout (a recompilation)
                outputs = self._forward(batch)
                for (job, y, x), out in zip(batch_refs, outputs, strict=True):
                    job.numerator[y : y + t, x : x + t] += self.window * out[0]
                    job.denominator[y : y + t, x : x + t] += self.window
                    job.remaining -= 1
            while open_jobs and open_jobs[0].remaining == 0:
                yield open_jobs.popleft().result()
            if not batch_refs and exhausted:
                return

    def run_all(self, slices: Iterable[np.ndarray]) -> list[np.ndarray]:
        return list(self.run(slices))
