"""Shared bits of the benchmarks: timing with device sync, MAC counting, and the machine's dense-conv peak."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
from torch import nn


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
    """Multiply-accumulates of every Conv2d/ConvTranspose2d for one input of `shape` (counted with hooks)."""
    total = 0

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
    return total


def conv_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, channels: int = 256) -> float:
    """Achieved GFLOP/s of one large 3×3 convolution: the machine's practical dense-conv ceiling in this run."""
    size = 64 if device.type == "cpu" else 128
    batch = 4 if device.type == "cpu" else 32
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device)
    x = torch.randn(batch, channels, size, size, device=device)
    ctx = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" and dtype != torch.float32 else None

    def run() -> None:
        with torch.inference_mode():
            if ctx is None:
                conv(x)
            else:
                with torch.autocast("cuda", dtype=dtype):
                    conv(x)

    seconds = timed(run, device, repeat=10, warmup=2)  # best of 10: a shared CPU varies by ±20 % between calls
    flops = 2 * batch * channels * channels * 9 * size * size
    return flops / seconds / 1e9


def machine() -> str:
    cpu = f"{platform.machine()} {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} / {cpu} / torch {torch.__version__}"
    return f"CPU {cpu} / torch {torch.__version__}"
