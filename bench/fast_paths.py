"""The generator's inference fast paths against its layers as written, in one process, alternating rounds.

    python -m bench.fast_paths --filters 32 --tile 272 --batch 4 --rounds 5 [--compile]

"as written" runs every layer as declared (``nn.Sequential``, dense head convolution); "fast paths" is what the
node runs: resize-convolutions as sub-pixel convolutions (subpixel.py) and the depthwise head (HeadConv2d). Both
share weights; the output difference is printed. Seconds are per batch of tiles, median of the rounds, and the
ratio is measured within the run (this machine's speed drifts by ±20 % over minutes).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from bench.common import machine
from dicom_denoise_node.denoise.inference import compile_network
from dicom_denoise_node.model.generator import GeneratorConfig, HeadConv2d, ResnetGenerator


class AsWritten(ResnetGenerator):
    """The generator with every inference fast path off."""

    def _inference_body(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def as_written(net: ResnetGenerator) -> AsWritten:
    plain = AsWritten(net.config)
    plain.load_state_dict(net.state_dict())
    for module in plain.modules():
        if isinstance(module, HeadConv2d):
            module.__class__ = nn.Conv2d  # the dense convolution, same parameters
    return plain.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--tile", type=int, default=272)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time both under the node's torch.compile path")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    fast = ResnetGenerator(GeneratorConfig(filters=args.filters, blocks=6)).eval()
    plain = as_written(fast)
    x = torch.randn(args.batch, 1, args.tile, args.tile)
    with torch.inference_mode():
        difference = float((fast(x) - plain(x)).abs().max())
    variants: dict[str, nn.Module] = {"eager, as written": plain, "eager, fast paths": fast}
    if args.compile:
        variants["compiled, as written"] = compile_network(copy.deepcopy(plain), x)
        variants["compiled, fast paths"] = compile_network(copy.deepcopy(fast), x)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for net in variants.values():
            net(x)  # warm-up
        for _ in range(args.rounds):
            for name, net in variants.items():
                start = time.perf_counter()
                net(x)
                seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    title = f"generator fast paths, {args.batch} × {args.tile}² tiles, {args.filters} filters — {machine()}"
    table = Table(title=title)
    for col in ("variant", "median s/batch", "rounds", "÷ as written"):
        table.add_column(col, justify="right")
    for name, median in medians.items():
        base = medians[name.split(",")[0] + ", as written"]
        table.add_row(name, f"{median:.3f}", " ".join(f"{s:.3f}" for s in seconds[name]), f"{median / base:.2f}")
    Console(width=160).print(table)
    Console().print(f"largest output difference, fast paths vs as written: {difference:.2e}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "seconds": seconds, "median": medians, "max_difference": difference})
        )


if __name__ == "__main__":
    main()
