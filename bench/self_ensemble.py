"""Self-ensemble benchmark: seconds per slice (512² by default) through the node's tiler at ``[model]
self_ensemble`` N = 1, 2, 4, 8, against its floor, N × the one-pass time measured in the same run (the transforms
themselves are copies).

    python -m bench.self_ensemble --slices 4
    python -m bench.self_ensemble --model path/to/model.json --device cuda

A ratio above 1 is what the flips, turns and the extra accumulation cost beyond the N passes; below 1 would mean
batching gains the single pass does not get.
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
from dicom_denoise_node.denoise.ensemble import ALLOWED, with_self_ensemble
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.model.registry import BUNDLED_DIR, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=BUNDLED_DIR / "paired-ld2hd-synthetic.json")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--tile", type=int, default=272)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    network, info = load_model(args.model, device)
    rng = np.random.default_rng(0)
    # LD-like input: soft tissue (40 HU) with 25 HU of noise, in the model's window.
    shape = (args.size, args.size)
    slices = [info.normalize(rng.normal(40.0, 25.0, shape).astype(np.float32)) for _ in range(args.slices)]
    rows = []
    single = 0.0
    for n in ALLOWED:
        inferer = TiledInferer(with_self_ensemble(network.eval(), n), args.tile, args.overlap, 4, device)
        seconds = timed(lambda inferer=inferer: inferer.run_all(slices), device, repeat=2, warmup=1) / len(slices)
        single = single or seconds
        rows.append({"self_ensemble": n, "seconds_per_slice": seconds, "vs_floor": seconds / (n * single)})
    where = f"{args.size}² slices, tile {args.tile}/{args.overlap}"
    table = Table(title=f"self-ensemble, {info.label}, {where} — {machine()}")
    for col in ("N", "s/slice", "floor N × one pass", "ratio to floor"):
        table.add_column(col, justify="right")
    for r in rows:
        n = r["self_ensemble"]
        table.add_row(str(n), f"{r['seconds_per_slice']:.2f}", f"{n * single:.2f}", f"{r['vs_floor']:.2f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "model": info.label, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
