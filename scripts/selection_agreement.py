"""Does the checkpoint chosen without a noise-free image agree with the one REF would choose? (issue 29, item 3)

Every checkpoint of a run is scored on the validation patients of a catalog that has the noise-free REF, three
ways, each as the trainer would score it (train/selection.py):

- ref: the error against REF, the truth (what chooses best.pt on the project's synthetic archives);
- hd: the error against HD less HD's noise, REF hidden (a site whose validation patients have LD/HD pairs);
- no-reference: the LD slices alone, REF and their HD hidden, the site's HD level from the training HD patients (a
  site whose validation patients have one dose each).

It prints each checkpoint's figures, which checkpoint each criterion picks (among those keeping the inserted lesions
when the run's ``val_min_lesion_kept`` asks for it), the REF error of each pick and how far it is from REF's best.
The issue's bar: within 3 %.

    .venv/bin/python scripts/selection_agreement.py --run-dir RUN --catalog sqlite:///archive.sqlite [--slices 8]

The checkpoints are RUN/checkpoints/*.pt (best.pt and last.pt repeat others). For many of them, train with a small
``--iters-per-epoch`` (a checkpoint at every epoch's end), e.g. ``denoise-node train --preset cpu --catalog URL
--run-dir RUN --iters-per-epoch 50 --epochs 12``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoise_trainer.archive.split import paired_slices, training_files
from denoise_trainer.data.slices import load_slices
from denoise_trainer.train.averaging import exported_weights
from denoise_trainer.train.checkpoint import load_checkpoint
from denoise_trainer.train.hd_validation import PairedHDSet
from denoise_trainer.train.no_reference import NoReferenceSet
from denoise_trainer.train.validation import ValidationCriterion, ValidationSet, evenly
from dicom_denoise_node.model.generator import build_generator
from dicom_denoise_node.store.catalog import Catalog

BAR = 0.03  # the issue's: a pick within 3 % of REF's best error


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints in step order, one per step (best.pt and last.pt are copies of others)."""
    by_step: dict[int, Path] = {}
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        if path.name not in ("best.pt", "last.pt"):
            by_step.setdefault(int(load_checkpoint(path)["step"]), path)
    return [by_step[s] for s in sorted(by_step)]


def criteria(catalog_url: str, config: dict[str, Any], slices: int) -> dict[str, ValidationCriterion]:
    """The three validation sets on ``slices`` validation pairs (evenly spread), in the checkpoints' window."""
    cat = Catalog(catalog_url)
    try:
        pairs = [p for p in paired_slices(cat, "val") if p.ref is not None]
        hd_files = training_files(cat, "HD")
    finally:
        cat.close()
    if not pairs:
        raise SystemExit("the catalog's validation patients have no LD/HD/REF slices: this needs a synthetic archive")
    pairs = [pairs[i] for i in evenly(len(pairs), slices)]
    ld, hd, ref = (load_slices([getattr(p, k) for p in pairs]) for k in ("ld", "hd", "ref"))
    site_hd = load_slices([hd_files[i] for i in evenly(len(hd_files), slices)])
    window, cond, n = (config["hu_min"], config["hu_max"]), bool(config.get("noise_conditioning", False)), len(pairs)
    patients = len({p.patient_id for p in pairs})
    print(f"{n} validation slices of {patients} patients; the site's HD level from {len(site_hd)} training HD slices")
    return {
        "ref": ValidationSet.build(ld, hd, ref, window, n, cond),
        "hd": PairedHDSet.build(ld, hd, window, n, cond),
        "no-reference": NoReferenceSet.build(ld, site_hd, window, n, cond),
    }


def score_all(paths: list[Path], sets: dict[str, ValidationCriterion], device: torch.device) -> list[dict[str, Any]]:
    """Per checkpoint: its step and, per criterion, the figures (ValidationCriterion.score)."""
    rows = []
    for path in paths:
        state = load_checkpoint(path)
        generator = build_generator(state["generator_config"])
        generator.load_state_dict(exported_weights(state)[0], strict=True)
        generator.to(device)
        window = (state["config"]["hu_min"], state["config"]["hu_max"])
        row: dict[str, Any] = {"step": int(state["step"]), "checkpoint": str(path)}
        for name, val in sets.items():
            row[name] = val.score(generator, window, device)
        rows.append(row)
        print(
            f"step {row['step']:>7}: REF error {row['ref']['val_error_hu']:6.2f} HU | HD less its noise "
            f"{row['hd']['val_error_est_hu']:6.2f} HU | no-reference score {row['no-reference']['val_score_hu']:6.2f}"
            f" HU (estimate {row['no-reference']['val_error_est_hu']:6.2f} × (1 + "
            f"{row['no-reference']['val_penalty']:.2f}))",
            flush=True,
        )
    return rows


def picks(rows: list[dict[str, Any]], sets: dict[str, ValidationCriterion], min_lesion_kept: float) -> dict[str, Any]:
    """Per criterion: the checkpoint it picks, the REF error of that pick and its distance from REF's best."""
    best_ref = min(r["ref"]["val_error_hu"] for r in rows)
    out = {}
    for name, val in sets.items():
        eligible = [r for r in rows if r[name].get("val_lesion_kept", 1.0) >= min_lesion_kept] or rows
        pick = min(eligible, key=lambda r, name=name, key=val.key: r[name][key])
        error = pick["ref"]["val_error_hu"]
        out[name] = {"step": pick["step"], "ref_error_hu": error, "vs_ref_best": error / best_ref - 1.0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a training run (its checkpoints/)")
    parser.add_argument("--catalog", required=True, help="catalog URL of an archive with REF (its val patients)")
    parser.add_argument("--slices", type=int, default=8, help="validation slices scored (evenly spread)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, help="also write every figure and the picks as JSON here")
    args = parser.parse_args(argv)
    paths = checkpoints(args.run_dir)
    if not paths:
        print(f"no checkpoints in {args.run_dir / 'checkpoints'}", file=sys.stderr)
        return 2
    config = load_checkpoint(paths[0])["config"]
    sets = criteria(args.catalog, config, args.slices)
    print(f"{len(paths)} checkpoints of {args.run_dir}")
    rows = score_all(paths, sets, torch.device(args.device))
    chosen = picks(rows, sets, float(config.get("val_min_lesion_kept", 0.0)))
    for name, pick in chosen.items():
        verdict = "within" if pick["vs_ref_best"] <= BAR else "NOT within"
        print(
            f"{name:>12} picks step {pick['step']}: REF error {pick['ref_error_hu']:.2f} HU, "
            f"{pick['vs_ref_best']:+.1%} vs REF's best ({verdict} {BAR:.0%})"
        )
    if args.out is not None:
        doc = {"checkpoints": rows, "picks": chosen, "bar": BAR}
        args.out.write_text(json.dumps(doc, indent=1, default=lambda v: float(np.asarray(v))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
