"""How much a self-ensemble of N flips/turns takes off a model's error vs the noise-free REF (N = 1, 2, 4, 8).

A diagnosis for the model card's ablations, not a score (`denoise-node evaluate --self-ensemble N` scores). Each
validation slice (every third, at most 8) goes through the node's tiler once per transform of
``denoise/ensemble.py``'s DIHEDRAL list, in its order, so the mean of the first N outputs is what
``[model] self_ensemble = N`` serves (the node transforms each tile instead; on a 512² slice the tiles of 272 px lie
symmetrically, so the two agree up to rounding). Prints the RMS error vs REF in the soft-tissue mask (bias
included) per N and its change in dB against N = 1.

    .venv/bin/python scripts/self_ensemble_probe.py dicom_denoise_node/model/bundled/paired-ld2hd-synthetic.json \
        --catalog sqlite:///work/model-1.0.0/train.sqlite --role val
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from denoise_trainer.evaluate.workflow import eval_slices, split_pairs
from denoise_trainer.train.validation import soft_tissue_mask
from dicom_denoise_node.denoise.ensemble import ALLOWED, DIHEDRAL, transform, untransform
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.model.registry import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--role", default="val")
    ap.add_argument("--slices", type=int, default=8)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    pairs = [p for p in split_pairs(args.catalog, args.role) if p.ref is not None][::3][: args.slices]
    network, info = load_model(args.model)
    inferer = TiledInferer(network.eval(), tile_size=272, overlap=32, batch_size=4)
    squared = dict.fromkeys(ALLOWED, 0.0)
    pixels = 0
    for s in eval_slices(pairs):
        ld, ref = s.ld, s.ref
        assert ref is not None
        mask = soft_tissue_mask(ref)
        outputs = []
        x = torch.from_numpy(info.normalize(ld))
        for flip, turns in DIHEDRAL:
            (y,) = inferer.run_all([transform(x, flip, turns).contiguous().numpy()])
            outputs.append(untransform(torch.from_numpy(info.denormalize(y)), flip, turns).numpy())
        for n in ALLOWED:
            squared[n] += float(((np.mean(outputs[:n], axis=0) - ref)[mask] ** 2).sum())
        pixels += int(mask.sum())
    rms = {n: math.sqrt(s / pixels) for n, s in squared.items()}
    print(f"{len(pairs)} {args.role} slices, {info.label}: RMS error vs REF in soft tissue")
    for n, value in rms.items():
        print(f"  self-ensemble {n}: {value:.2f} HU ({20 * math.log10(rms[1] / value):+.2f} dB vs 1)")


if __name__ == "__main__":
    main()
