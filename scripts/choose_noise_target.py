"""Choose a model's noise target on the validation patients (issue 28; docs/model-card.md).

The network runs once per validation slice through the node's path at full strength (``target_noise_hu = 0``,
the given self-ensemble); each candidate target is then the node's own blend of that output with the input
(``denoise/noise_target.py``: strength ``1 − target / level``, the level measured on the input slice as the node
measures it). Every candidate is scored with the model card's scorecard against the noise-free REF, beside LD, HD
and non-local means at h = 5 σ (the factor tuned on validation patients since issue 15). The rule, fixed before any
test archive is scored: the smallest target whose mean texture reaches ``--min-texture`` × HD's (0.9 for the
default, whose bar is 0.8–1.2; 0.75 for the paired model, whose bar is ≥ 0.7). Test archives are never read.

    .venv/bin/python scripts/choose_noise_target.py work/m28/models/net.json \\
        --catalog sqlite:///work/m28/train.sqlite --self-ensemble 1 --out work/m28/targets-x1.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from denoise_trainer.evaluate.baselines import nlm_denoiser
from denoise_trainer.evaluate.scorecard import Scorecard
from denoise_trainer.evaluate.workflow import eval_slices, node_denoiser, split_pairs
from dicom_denoise_node.denoise.noise_target import target_strength

CANDIDATES_HU = (0.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0)
FIGURES = ("error_ref_hu", "error_vs_hd", "texture_vs_hd", "psnr_ref_soft", "bias_soft_hu", "bias_fat_hu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="exported model (.json)")
    parser.add_argument("--catalog", required=True, help="training catalog whose val patients choose")
    parser.add_argument("--self-ensemble", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON of every candidate's figures")
    args = parser.parse_args()

    slices = eval_slices(split_pairs(args.catalog, "val"))
    run, info, denoiser = node_denoiser(args.model, "cpu", self_ensemble=args.self_ensemble, target_noise_hu=0.0)
    outputs = run([s.ld for s in slices])
    levels = list(denoiser.noise_levels)
    assert len(levels) == len(slices), "a conditioned model measures every slice"
    card = Scorecard(slices)
    nlm = nlm_denoiser(5.0)
    for i, s in enumerate(slices):
        card.add("LD", i, s.ld)
        card.add("HD", i, s.hd)
        card.add("nlm", i, nlm([s.ld])[0])
        for target in CANDIDATES_HU:
            strength = target_strength(levels[i], target) if target else 1.0
            card.add(f"T={target:g}", i, s.ld + np.float32(strength) * (outputs[i] - s.ld))
    summary = card.summary()
    rows = {m: {k: summary[m][k][0] for k in FIGURES} for m in card.methods()}
    nlm_psnr = rows["nlm"]["psnr_ref_soft"]
    print(
        f"{info.label} x{denoiser.self_ensemble} on {len(slices)} validation slices; levels {min(levels):.1f}-"
        f"{max(levels):.1f} HU"
    )
    print("method  " + "  ".join(FIGURES) + "  psnr-nlm")
    for m, r in rows.items():
        print(f"{m:8s} " + "  ".join(f"{r[k]:7.3f}" for k in FIGURES) + f"  {r['psnr_ref_soft'] - nlm_psnr:+.2f}")
    chosen = {}
    for name, minimum in (("default", 0.9), ("paired", 0.75)):
        fit = [
            t
            for t in CANDIDATES_HU
            if math.isfinite(rows[f"T={t:g}"]["texture_vs_hd"]) and rows[f"T={t:g}"]["texture_vs_hd"] >= minimum
        ]
        chosen[name] = fit[0] if fit else None
        print(f"{name}: smallest target with texture >= {minimum} x HD's: {chosen[name]}")
    args.out.write_text(
        json.dumps(
            {
                "model": info.label,
                "self_ensemble": denoiser.self_ensemble,
                "levels_hu": levels,
                "figures": rows,
                "chosen": chosen,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
