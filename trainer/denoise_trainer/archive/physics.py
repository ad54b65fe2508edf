"""Dose simulation: HU slice → line integrals → Poisson + electronic noise on counts → FBP → HU.

Why in the projection domain: CT noise is not white image noise. It is photon noise on the detector counts,
shaped by the log and the ramp filter into the correlated, streaky, anisotropic texture a denoiser must learn,
and it scales as 1/sqrt(dose). Image-domain Gaussian noise would teach the wrong thing.

Geometry: parallel beam over 180° (an approximation of a clinical fan beam after rebinning), square pixels,
detector bin width = pixel width, ceil(N·√2) bins so the whole square image is covered, ceil(π/2·N) views
by default. Projection and back-projection are vectorised in torch (grid_sample), chunked over angles to bound
memory. Monochromatic (~70 keV), no beam hardening, scatter or bowtie; a small aperture blur of the signal.
The REF image is the FBP of the noiseless sinogram, so REF, HD and LD share exactly the same resolution.

Speed (REF+HD+LD, default views, CPU torch 2.13, 2-core development VM, otherwise idle): ~2 s per 512² slice
(806 views), ~0.3 s per 256² slice. A second busy process on those cores makes it several times slower.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from denoise_trainer.archive import kernels

log = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at an effective ~70 keV
DEFAULT_I0_HD = 8.0e5  # photons per ray, unattenuated: ~20 HU (abdomen, liver) / ~10 HU (chest, heart) at 512², 0.7 mm
DEFAULT_I0_LD = DEFAULT_I0_HD / 4.0  # quarter dose
DEFAULT_APERTURE = (0.25, 0.5, 0.25)  # signal blur across bins: focal spot and detector aperture
DEFAULT_ELECTRONIC_NOISE = 8.0  # std of additive detector noise, in counts
COUNT_FLOOR = 0.5  # counts are clipped here before the log (photon starvation guard)
_CHUNK_ELEMENTS = 1 << 22  # grid points per chunk: cache-friendly, yet few parallel regions (busy cores)

Device = torch.device | str


def default_views(size: int) -> int:
    """Views over 180° for an N×N image: ~π/2·N (the usual angular sampling criterion), rounded up to even."""
    views = int(math.ceil(math.pi / 2.0 * size))
    return views + views % 2


def detector_bins(size: int) -> int:
    """Bins so the detector covers the image diagonal (ceil(N·√2), made odd to keep a central bin)."""
    bins = int(math.ceil(size * math.sqrt(2.0)))
    return bins + 1 - bins % 2


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """HU → linear attenuation in 1/mm (clipped at 0: air cannot attenuate negatively)."""
    return np.maximum(MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0)


def mu_to_hu(mu: np.ndarray) -> np.ndarray:
    """Linear attenuation in 1/mm → HU."""
    return (np.asarray(mu) / MU_WATER_PER_MM - 1.0) * 1000.0


def _check_views(views: int) -> int:
    if views < 2 or views % 2:
        raise ValueError(f"views must be even and ≥ 2 (θ and θ+90° share sampling grids), got {views}")
    return views


def _trig(views: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(views, dtype=torch.float64, device=device) * (math.pi / views)
    return torch.cos(angles).float(), torch.sin(angles).float()


def _chunk(points_per_view: int) -> int:
    return max(1, _CHUNK_ELEMENTS // points_per_view)


def forward_project(image: np.ndarray, views: int | None = None, *, device: Device = "cpu") -> np.ndarray:
    """Parallel-beam line integrals (views × bins, views over [0, π)) of an N×N image, in image units ×
    pixels.

    Ray-driven: the image is resampled (bilinear) on a rotated grid with a one-pixel step and summed along
    each ray. View θ+90° reuses the grid of θ on the image turned by 90° (exact), halving grid construction.
    """
    dev = torch.device(device)
    n = image.shape[-1]
    if image.shape != (n, n):
        raise ValueError(f"need a square 2D image, got shape {image.shape}")
    views = _check_views(views or default_views(n))
    m = detector_bins(n)
    half_views = views // 2
    with torch.inference_mode():
        img = torch.as_tensor(np.asarray(image, dtype=np.float32), device=dev)
        turned = torch.rot90(img, 1, dims=(0, 1)).contiguous()
        inputs = (img[None, None], turned[None, None])
        axis = (torch.arange(m, dtype=torch.float32, device=dev) - (m - 1) / 2.0) / ((n - 1) / 2.0)
        t, s = axis[None, :], axis[:, None]  # detector position (columns), position along the ray (rows)
        sino = torch.empty((views, m), dtype=torch.float32, device=dev)
        chunk = _chunk(m * m)
        grid = torch.empty((chunk, m, m, 2), dtype=torch.float32, device=dev)
        cos, sin = _trig(views, dev)
        for a0 in range(0, half_views, chunk):
            k = min(chunk, half_views - a0)
            c, sn = cos[a0 : a0 + k, None, None], sin[a0 : a0 + k, None, None]
            torch.sub(t * c, s * sn, out=grid[:k, :, :, 0])  # few large ops: robust to busy cores
            torch.add(t * sn, s * c, out=grid[:k, :, :, 1])
            for offset, source in zip((0, half_views), inputs, strict=True):
                samples = F.grid_sample(
                    source.expand(k, -1, -1, -1),
                    grid[:k],
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=True,
                )
                sino[offset + a0 : offset + a0 + k] = samples[:, 0].sum(dim=1)
        return sino.cpu().numpy()


def simulate_counts(sino: np.ndarray, i0: float, electronic_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Detected counts: Poisson(I0·exp(−p)) plus Gaussian electronic noise, clipped at COUNT_FLOOR."""
    expected = i0 * np.exp(-np.asarray(sino, dtype=np.float64))
    counts = rng.poisson(expected).astype(np.float64)
    if electronic_noise > 0:
        counts += rng.normal(0.0, electronic_noise, counts.shape)
    return np.maximum(counts, COUNT_FLOOR)


def counts_to_line_integrals(counts: np.ndarray, i0: float) -> np.ndarray:
    """Log-normalise counts back to line integrals p̂ = −ln(counts / I0)."""
    return (-np.log(np.asarray(counts, dtype=np.float64) / i0)).astype(np.float32)


def ramp_filter(bins: int, window: str = "shepp-logan", device: Device = "cpu") -> torch.Tensor:
    """rfft response of the band-limited ramp (Ram-Lak from its spatial kernel, avoiding the DC error),
    optionally apodised by a Shepp-Logan (sinc) or Hann window or a named kernel (archive/kernels.py);
    zero-padded to a power of two ≥ 2·bins."""
    pad = 1 << int(math.ceil(math.log2(2 * bins)))
    n = np.concatenate([np.arange(0, pad // 2 + 1), np.arange(-pad // 2 + 1, 0)])
    h = np.zeros(pad)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (math.pi * n[odd]) ** 2
    response = np.real(np.fft.rfft(h))
    freq = np.fft.rfftfreq(pad)  # cycles per bin, 0 … 0.5
    if window == "shepp-logan":
        response *= np.sinc(freq)
    elif window == "hann":
        response *= 0.5 * (1.0 + np.cos(2.0 * math.pi * freq))
    elif window in kernels.KERNELS:  # the named kernels of the training span and the OOD archive
        response *= kernels.KERNELS[window].response(freq)
    elif window != "ram-lak":
        raise ValueError(f"unknown FBP window {window!r} (ram-lak, shepp-logan, hann, {', '.join(kernels.KERNELS)})")
    return torch.as_tensor(response, dtype=torch.float32, device=torch.device(device))


def fbp(
    sino: np.ndarray, size: int | None = None, *, window: str = "shepp-logan", device: Device = "cpu"
) -> np.ndarray:
    """Filtered back-projection of (views × bins) or (batch × views × bins) sinograms → size × size images.

    Units: a sinogram in image units × pixel length (as from forward_project) comes back in image units.
    Back-projection interpolates linearly between bins; views θ+90° reuse the grid of θ (image turned back).
    """
    dev = torch.device(device)
    batched = np.ndim(sino) == 3
    with torch.inference_mode():
        p = torch.as_tensor(np.asarray(sino, dtype=np.float32), device=dev)
        if not batched:
            p = p[None]
        b, views, m = p.shape
        _check_views(views)
        n = size or int(math.floor(m / math.sqrt(2.0)))
        resp = ramp_filter(m, window, dev)
        pad = 2 * (resp.numel() - 1)
        q = torch.fft.irfft(torch.fft.rfft(p, n=pad, dim=-1) * resp, n=pad, dim=-1)[..., :m]
        q = (q * (math.pi / views)).reshape(b, views, 1, 1, m).contiguous()
        xs = (torch.arange(n, dtype=torch.float32, device=dev) - (n - 1) / 2.0) * (2.0 / (m - 1))
        x, y = xs.repeat(n), xs.repeat_interleave(n)  # normalised pixel centres, row-major
        half_views = views // 2
        acc = torch.zeros((2, b, n * n), dtype=torch.float32, device=dev)
        chunk = _chunk(n * n)
        grid = torch.zeros((chunk, 1, n * n, 2), dtype=torch.float32, device=dev)
        cos, sin = _trig(views, dev)
        for a0 in range(0, half_views, chunk):
            k = min(chunk, half_views - a0)
            torch.add(x * cos[a0 : a0 + k, None], y * sin[a0 : a0 + k, None], out=grid[:k, 0, :, 0])
            for j, offset in enumerate((0, half_views)):
                for bi in range(b):
                    vals = F.grid_sample(
                        q[bi, offset + a0 : offset + a0 + k],
                        grid[:k],
                        mode="bilinear",
                        padding_mode="zeros",
                        align_corners=True,
                    )  # k, 1, 1, N²
                    acc[j, bi] += vals.sum(dim=0).view(-1)
        image = acc[0].view(b, n, n) + torch.rot90(acc[1].view(b, n, n), -1, dims=(1, 2))
        out = image.cpu().numpy()
        return out if batched else out[0]


def simulate_doses(
    hu_slice: np.ndarray,
    doses: Mapping[str, float] | None = None,
    rng: np.random.Generator | None = None,
    *,
    pixel_spacing: float = 0.7,
    views: int | None = None,
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE,
    window: str = "shepp-logan",
    aperture: tuple[float, ...] = DEFAULT_APERTURE,
    device: Device = "cpu",
) -> dict[str, np.ndarray]:
    """Scan one HU slice at each dose (name → I0 photons per ray) and reconstruct; also returns "REF", the FBP
    of the noiseless sinogram, so every output has the same blur. Pass a seeded rng for reproducible noise.

    aperture: kernel across detector bins applied to the expected signal before the noise (finite focal spot
    and detector width); it tames Gibbs ringing at lung and bone edges while noise stays independent per bin.
    """
    doses = dict(doses) if doses is not None else {"HD": DEFAULT_I0_HD, "LD": DEFAULT_I0_LD}
    if "REF" in doses:
        raise ValueError('"REF" is reserved for the noise-free reconstruction')
    rng = rng if rng is not None else np.random.default_rng()
    n = hu_slice.shape[-1]
    sino = blur_aperture(forward_project(hu_to_mu(hu_slice) * pixel_spacing, views, device=device), aperture)
    stack = [sino]
    for i0 in doses.values():
        stack.append(counts_to_line_integrals(simulate_counts(sino, i0, electronic_noise, rng), i0))
    return reconstruct_hu(np.stack(stack), ["REF", *doses], n, pixel_spacing, window, device)


def blur_aperture(sino: np.ndarray, aperture: tuple[float, ...]) -> np.ndarray:
    """The expected signal blurred across detector bins (focal spot and detector width), before any noise."""
    if len(aperture) <= 1:
        return sino
    kernel = np.asarray(aperture, dtype=np.float64)
    return ndimage.convolve1d(sino, kernel / kernel.sum(), axis=1, mode="constant").astype(np.float32)


def reconstruct_hu(
    stack: np.ndarray, names: list[str], size: int, pixel_spacing: float, window: str, device: Device
) -> dict[str, np.ndarray]:
    """FBP of a batch of parallel sinograms (line integrals, dimensionless) → name → HU image."""
    recon = fbp(stack, size, window=window, device=device) / pixel_spacing
    return {name: mu_to_hu(img).astype(np.float32) for name, img in zip(names, recon, strict=True)}
