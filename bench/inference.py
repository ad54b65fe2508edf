"""Inference benchmark: slices/s of 512×512 slices through the node's tiler, against the FLOP floor and one
whole-slice pass, measured in the same run. Prints a table and writes JSON.

    python -m bench.inference --slices 4 --device cpu
    python -m bench.inference --slices 64 --device cuda --filters 32 64
    python -m bench.inference --slices 8 --filters 32 --compile both   # eager and torch.compile ([model] compile)

"compiled" rows use the node's ``[model] compile`` path (inductor, frozen weights, fixed batch shape); the
compilation itself is paid once at start-up and is not timed here (the JSON has its seconds).

"of peak" divides the FLOPs the inference forward executes by the measured peak (hardware utilisation);
"MONAI sw/s" is MONAI's ``sliding_window_inference`` with the same network, tiles, overlap and batch (when MONAI is
installed: the ``bench`` extra). "nominal of peak" divides the architecture's FLOPs as written, which inference
computes with fewer for the resize-convolutions (dicom_denoise_node/model/subpixel.py). The peak is measured again
before every timed round and the round with the median ratio is reported: this shared machine's slow and fast
spells move both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.common import conv_macs, conv_peak_gflops, executed_macs, machine, timed
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.model.generator import GeneratorConfig, ResnetGenerator


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--filters", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--tile", type=int, default=272)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--compile", choices=["off", "on", "both"], default="off")
    ap.add_argument("--rounds", type=int, default=3, help="peak/tiler rounds; the median round's ratio is reported")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args()


def main() -> None:
    args = _arguments()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    slices = [rng.uniform(-1, 1, (args.size, args.size)).astype(np.float32) for _ in range(args.slices)]
    precisions = ["fp32"] + (["fp16"] if device.type == "cuda" else [])
    rows: list[dict] = []
    for filters in args.filters:
        torch.manual_seed(0)
        net = ResnetGenerator(GeneratorConfig(filters=filters, blocks=6)).to(device).eval()
        macs = conv_macs(net, (1, 1, args.size, args.size))
        run_macs = executed_macs(net, (1, 1, args.size, args.size))
        paths = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        for precision, batch, compiled in itertools.product(precisions, args.batch, paths):
            rows.append(_measure(args, net, slices, device, (precision, batch, compiled), macs, run_macs))
    Console(width=200).print(_table(args, rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


def _measure(
    args: argparse.Namespace,
    net: ResnetGenerator,
    slices: list[np.ndarray],
    device: torch.device,
    setting: tuple[str, int, bool],
    macs: float,
    run_macs: float,
) -> dict:
    """One row: the tiler's slices/s against the measured peak, one whole-slice pass and MONAI's sliding window."""
    precision, batch, compiled = setting
    filters = net.config.filters
    dtype = torch.float32 if precision == "fp32" else torch.float16
    started = time.perf_counter()
    inferer = TiledInferer(
        net, args.tile, args.overlap, batch, device, half_precision=precision == "fp16", compile=compiled
    )
    compile_s = time.perf_counter() - started
    inferer.run_all(slices)  # warm-up
    # Peak and tiler alternate, one ratio per round: a shared machine's slow and fast spells move both.
    rounds = []
    for _ in range(args.rounds):
        peak = conv_peak_gflops(device, dtype)
        seconds = timed(lambda inferer=inferer: inferer.run_all(slices), device, repeat=1, warmup=0)
        rounds.append((peak, seconds / len(slices)))
    peak, per_slice = _median_round(rounds, macs)
    x = torch.from_numpy(np.stack(slices[: min(4, len(slices))]))[:, None].to(device)

    def whole(x: torch.Tensor = x, precision: str = precision, net: torch.nn.Module = net) -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.float16, enabled=precision == "fp16"),
        ):
            net(x)

    whole_s = timed(whole, device, repeat=3, warmup=1) / x.shape[0]
    monai_s = _monai_seconds_per_slice(inferer, slices, args, device, precision)
    return dict(
        filters=filters,
        path="compiled" if compiled else "eager",
        compile_seconds=compile_s if compiled else 0.0,
        precision=precision,
        batch=batch,
        gmac_per_slice=macs / 1e9,
        executed_gmac_per_slice=run_macs / 1e9,
        slices_per_s=1 / per_slice,
        whole_slice_per_s=1 / whole_s,
        # useful FLOPs of one slice (tile overlap is overhead): nominal = the architecture as written
        nominal_gflops=2 * macs / per_slice / 1e9,
        achieved_gflops=2 * run_macs / per_slice / 1e9,
        peak_gflops=peak,
        fraction_of_peak=2 * run_macs / per_slice / 1e9 / peak,
        nominal_fraction_of_peak=2 * macs / per_slice / 1e9 / peak,
        tiled_vs_whole=whole_s / per_slice,
        monai_slices_per_s=None if monai_s is None else 1 / monai_s,
        floor_slices_per_s=peak * 1e9 / (2 * macs),
        rounds=[dict(peak_gflops=p, seconds_per_slice=t) for p, t in rounds],
    )


def _table(args: argparse.Namespace, rows: list[dict]) -> Table:
    table = Table(title=f"inference, {args.size}² slices, tile {args.tile}/{args.overlap} — {machine()}")
    for col in (
        "filters",
        "path",
        "prec",
        "batch",
        "GMAC/slice",
        "run GMAC",
        "slices/s",
        "whole-slice/s",
        "MONAI sw/s",
        "GFLOP/s",
        "peak GFLOP/s",
        "of peak",
        "nominal of peak",
        "floor slices/s",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["filters"]),
            r["path"],
            r["precision"],
            str(r["batch"]),
            f"{r['gmac_per_slice']:.1f}",
            f"{r['executed_gmac_per_slice']:.1f}",
            f"{r['slices_per_s']:.2f}",
            f"{r['whole_slice_per_s']:.2f}",
            "—" if r["monai_slices_per_s"] is None else f"{r['monai_slices_per_s']:.2f}",
            f"{r['achieved_gflops']:.0f}",
            f"{r['peak_gflops']:.0f}",
            f"{r['fraction_of_peak']:.0%}",
            f"{r['nominal_fraction_of_peak']:.0%}",
            f"{r['floor_slices_per_s']:.2f}",
        )
    return table


def _monai_seconds_per_slice(
    inferer: TiledInferer, slices: list[np.ndarray], args: argparse.Namespace, device: torch.device, precision: str
) -> float | None:
    """MONAI's ``sliding_window_inference`` over the same slices with the same network (compiled or not), tile,
    overlap and batch (Gaussian blending, reflect padding); None when MONAI is not installed."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    x = torch.from_numpy(np.stack(slices))[:, None].to(device)

    def run() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.float16, enabled=precision == "fp16"),
        ):
            sliding_window_inference(
                x,
                (args.tile, args.tile),
                inferer.batch_size,
                inferer.network,
                overlap=args.overlap / args.tile,
                mode="gaussian",
                padding_mode="reflect",
            )

    return timed(run, device, repeat=3, warmup=1) / len(slices)


def _median_round(rounds: list[tuple[float, float]], macs: int) -> tuple[float, float]:
    """The round (peak GFLOP/s, seconds per slice) whose fraction of its own peak is the median."""
    ranked = sorted(rounds, key=lambda r: 2 * macs / r[1] / r[0])
    return ranked[len(ranked) // 2]


if __name__ == "__main__":
    main()
