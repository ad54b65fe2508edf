"""Time per slice of each bundled model as the node runs it by default (issue 28: docs/benchmarks.md).

Each model in the bundled registry (or ``--models DIR``) goes through the node's own path, ``SeriesDenoiser.
denoise_hu`` with default settings: its own self-ensemble, its noise target (the level measured on each slice, the
blend), HU conversions and the tiler. The baseline, measured in the same run, is the floor: self-ensemble N × one
pass of the bare network through the same tiler; the ratio says what the node's path adds to the network's own
arithmetic (noise measurement, blending, HU handling).

    python -m bench.bundled --slices 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.common import machine, timed
from dicom_denoise_node.config import DeriveSettings, ModelSettings
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.denoise.noise import with_noise_map
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import BUNDLED_DIR, list_models, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=BUNDLED_DIR, help="registry directory (default: the bundled)")
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    # Timing input only (not a quality figure): soft tissue at 40 HU with 30 HU of noise, as an LD slice reads.
    hus = [rng.normal(40.0, 30.0, (args.size, args.size)).astype(np.float32) for _ in range(args.slices)]
    settings = ModelSettings()  # the node's defaults: each model's own self-ensemble and noise target
    rows = []
    for info in list_models(args.models):
        network, info = load_model(info.weights_path.with_suffix(".json"), device)
        node = SeriesDenoiser(network, info, settings, DeriveSettings(), device=str(device))
        seconds = timed(lambda node=node: list(node.denoise_hu(iter(hus))), device, repeat=2) / len(hus)
        tiler = TiledInferer(
            network, settings.tile_size, settings.tile_overlap, settings.batch_size, device,
            channels=2 if info.noise_conditioning else 1,
        )  # fmt: skip
        inputs = [info.normalize(h) if not info.noise_conditioning else with_noise_map(info.normalize(h), 0.03)
                  for h in hus]  # fmt: skip
        one_pass = timed(lambda tiler=tiler, inputs=inputs: tiler.run_all(inputs), device, repeat=2) / len(hus)
        floor = node.self_ensemble * one_pass
        rows.append(
            {
                "model": info.label,
                "self_ensemble": node.self_ensemble,
                "target_noise_hu": node.target_noise_hu,
                "seconds_per_slice": seconds,
                "floor_seconds": floor,
                "vs_floor": seconds / floor,
            }
        )
    table = Table(title=f"bundled models as the node runs them, {args.size}² slices — {machine()}")
    for col in ("model", "self-ensemble", "noise target", "s/slice", "floor N × one pass", "ratio to floor"):
        table.add_column(col, justify="right")
    for r in rows:
        target = f"{r['target_noise_hu']:g} HU" if r["target_noise_hu"] else "none"
        table.add_row(r["model"], str(r["self_ensemble"]), target, f"{r['seconds_per_slice']:.2f}",
                      f"{r['floor_seconds']:.2f}", f"{r['vs_floor']:.2f}")  # fmt: skip
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
