"""Where a model's remaining error lives: by spatial frequency, and near edges against flat soft tissue.

A diagnosis for the model card, not a score (`denoise-node evaluate` scores). On validation (or test) slices with a
noise-free REF it prints, for LD, HD and the model:

* the power of (image − REF) in bands of spatial frequency, over non-overlapping 64² soft-tissue ROIs (mean
  removed; the scorecard's ``nps_blocks``), relative to HD's total: which bands a model leaves LD's noise in;
* the RMS error vs REF in the soft-tissue mask, split into pixels within 2 px of an edge of REF (Sobel gradient above
  5 HU/px) and the rest, at full resolution and after a σ 2 px Gaussian low-pass of image and REF (the low-frequency
  error alone).

    .venv/bin/python scripts/error_bands.py dicom_denoise_node/model/bundled/cyclegan-ld2hd-synthetic.json \
        --catalog sqlite:///work/model-1.0.0/train.sqlite --role val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from denoise_trainer.evaluate.scorecard import nps_blocks, radial_frequency
from denoise_trainer.evaluate.workflow import eval_slices, split_pairs
from denoise_trainer.train.validation import soft_tissue_mask
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.model.registry import load_model

BANDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75)  # cycles per pixel (radial)
ROI = 64


def band_power(residual: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Power per band over the ROIs that lie wholly in the mask (the scorecard's texture NPS, in bands)."""
    nps, radius = nps_blocks(residual, mask, ROI), radial_frequency(ROI)
    return np.array([nps[(radius >= lo) & (radius < hi)].sum() for lo, hi in zip(BANDS, BANDS[1:], strict=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model metadata JSON")
    parser.add_argument("--catalog", required=True, help="archive catalog URL with the split")
    parser.add_argument("--role", default="val", choices=("val", "test"))
    parser.add_argument("--every", type=int, default=3, help="use every n-th slice position")
    parser.add_argument("--slices", type=int, default=8)
    args = parser.parse_args()

    pairs = [p for p in split_pairs(args.catalog, args.role) if p.ref is not None]
    pairs = pairs[:: args.every][: args.slices]
    net, info = load_model(args.model)
    inferer = TiledInferer(net.eval(), tile_size=256, overlap=32, batch_size=4)
    names = ("LD", "HD", "model")
    bands = {n: np.zeros(len(BANDS) - 1) for n in names}
    sq: dict[tuple[str, str, str], list[float]] = {}
    for s in eval_slices(pairs):
        ld, hd, ref = s.ld, s.hd, s.ref
        assert ref is not None
        (y,) = inferer.run_all([info.normalize(ld)])
        out = info.denormalize(y)
        mask = soft_tissue_mask(ref)
        grad = np.hypot(ndimage.sobel(ref, 0), ndimage.sobel(ref, 1)) / 8
        edge = ndimage.binary_dilation(grad > 5, iterations=2)
        zones = {"all": mask, "near edges": mask & edge, "flat": mask & ~edge}
        for name, image in zip(names, (ld, hd, out), strict=True):
            bands[name] += band_power(image - ref, mask)
            for scale, residual in (
                ("full", image - ref),
                ("low-pass σ 2 px", ndimage.gaussian_filter(image, 2.0) - ndimage.gaussian_filter(ref, 2.0)),
            ):
                for zone, m in zones.items():
                    acc = sq.setdefault((name, scale, zone), [0.0, 0.0])
                    acc[0] += float((residual[m] ** 2).sum())
                    acc[1] += float(m.sum())
    print(f"{args.model.name} on {len(pairs)} {args.role} slices")
    print("band power of (image − REF) / HD's total, bands in cycles/px:")
    print("  " + " ".join(f"{lo:g}–{hi:g}" for lo, hi in zip(BANDS, BANDS[1:], strict=False)))
    total = bands["HD"].sum()
    for name in names:
        cells = " ".join(f"{v:.3f}" for v in bands[name] / total)
        print(f"  {name:6s} {cells} total {bands[name].sum() / total:.2f}")
    for scale in ("full", "low-pass σ 2 px"):
        print(f"RMS error vs REF in soft tissue ({scale}):")
        for zone in ("all", "near edges", "flat"):
            rms = {n: (sq[(n, scale, zone)][0] / sq[(n, scale, zone)][1]) ** 0.5 for n in names}
            share = sq[("HD", scale, zone)][1] / sq[("HD", scale, "all")][1]
            cells = " ".join(f"{n} {rms[n]:.2f} HU ({rms[n] / rms['HD']:.2f} × HD)" for n in names)
            print(f"  {zone:10s} ({share:.2f} of the mask): {cells}")


if __name__ == "__main__":
    main()
