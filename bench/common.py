"""Shared bits of the benchmarks: timing with device sync, MAC counting, and the machine's dense-conv peak."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeat` runs after `warmup` runs (seconds)."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def conv_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Nominal multiply-accumulates of every Conv2d/ConvTranspose2d for one input of `shape`: the architecture's
    arithmetic as written (counted with hooks on the training-mode forward, which runs every layer as declared;
    inference computes the resize-convolutions with 4/9 of it, see :func:`executed_macs`)."""
    total = 0
    was_training = model.training
    model.train()

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += inputs[0].numel() * module.out_channels * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    with torch.inference_mode():
        model(torch.zeros(shape, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    model.train(was_training)
    return total


def executed_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates the inference forward actually runs (torch's FLOP counter, every matmul/conv op)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() // 2


PEAK_SHAPES = {  # (channels, size, batch) of the 3×3 convolutions whose best rate is "the measured peak"
    "cpu": [(256, 64, 4), (128, 68, 4), (512, 32, 4)],  # 128 @ 68² is the generator's own residual conv on a tile
    "cuda": [(256, 128, 32), (512, 64, 32)],
}


def conv_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Best achieved GFLOP/s over a few large 3×3 convolutions: the machine's practical dense-conv ceiling in this
    run. One shape is not enough: on this CPU oneDNN runs the generator's own residual convolution faster than a
    256-channel one (2026-11-27: 209 vs 174 GFLOP/s), which made one-shape peaks an underestimate."""
    best = 0.0
    for channels, size, batch in PEAK_SHAPES["cuda" if device.type == "cuda" else "cpu"]:
        conv = nn.Conv2d(channels, channels, 3, padding=1).to(device)
        x = torch.randn(batch, channels, size, size, device=device)

        def run(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
            with (
                torch.inference_mode(),
                torch.autocast("cuda", dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32),
            ):
                conv(x)

        seconds = timed(run, device, repeat=10, warmup=2)  # best of 10: a shared CPU varies by ±20 % between calls
        best = max(best, 2 * batch * channels * channels * 9 * size * size / seconds / 1e9)
    return best


def machine() -> str:
    cpu = f"{platform.machine()} {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} / {cpu} / torch {torch.__version__}"
    return f"CPU {cpu} / torch {torch.__version__}"
