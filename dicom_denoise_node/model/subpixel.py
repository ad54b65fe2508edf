"""Nearest 2× upsampling, 1-px reflection padding and a 3×3 convolution, computed as one sub-pixel convolution.

The generator's resize-convolution (``Upsample`` → ``ReflectionPad2d(1)`` → ``Conv2d(3×3)``) spends most of its
arithmetic multiplying copies of the same input pixel. Each of the four output phases (even/odd row × column) of
that 3×3 convolution only ever sees a 2×2 neighbourhood of the *low-resolution* input, so the layer equals a 2×2
convolution on the input with four times the output channels, one phase per group, interleaved afterwards. The
reflection padding of the upsampled image is the replicate padding of the input (``up[-1] = up[1] = x[0]``). The
result: 4/9 of the multiply-adds, at the input's resolution where convolutions run closer to peak. It equals the
three layers up to float32 summation order (tests/model/test_generator_fast_paths.py). Used for inference only: training
keeps the layers as written, whose gradients are the reference.

Per dimension, with 3-tap weights (w0, w1, w2): the even phase takes (w0, w1 + w2) at input offsets (-1, 0), the
odd phase (w0 + w1, w2) at offsets (0, +1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# 2×3 matrices folding the 3 taps of one dimension into the 2 taps of its even (row 0) and odd (row 1) phase
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
_FOLD = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def matches(upsample: nn.Module, pad: nn.Module, conv: nn.Module) -> bool:
    """True when three consecutive layers are the resize-convolution this module computes."""
    return (
        isinstance(upsample, nn.Upsample)
        and upsample.mode == "nearest"
        and upsample.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))
        and isinstance(pad, nn.ReflectionPad2d)
        and tuple(pad.padding) == (1, 1, 1, 1)
        and type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, 3, 3) → (4·out, in, 2, 2): phase (py, px) at output channels [(2·py + px)·out, …)."""
    fold = _FOLD.to(weight)
    phases = [torch.einsum("ab,oibc,dc->oiad", fold[py], weight, fold[px]) for py in (0, 1) for px in (0, 1)]
    return torch.cat(phases, 0)


def _replicate_pad_1(x: torch.Tensor) -> torch.Tensor:
    """1-px replicate padding by concatenation: ``F.pad(mode="replicate")`` here fails inductor's lowering
    ("vr must not be None", torch 2.13) once the graph fuses it with the layers around it."""
    x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], 2)
    return torch.cat([x[:, :, :, :1], x, x[:, :, :, -1:]], 3)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(reflect_pad_1(upsample_nearest_2x(x)))`` from ``x`` directly."""
    b, _, h, w = x.shape
    out = conv.out_channels
    bias = None if conv.bias is None else conv.bias.repeat(4)
    y = F.conv2d(_replicate_pad_1(x), phase_weights(conv.weight), bias)  # (b, 4·out, h + 1, w + 1)
    # phase (py, px) of output pixel (2i + py, 2j + px) sits at y[..., i + py, j + px]
    phases = [y[:, k * out : (k + 1) * out, py : py + h, px : px + w] for k, (py, px) in enumerate(_PHASES)]
    return F.pixel_shuffle(torch.stack(phases, 2).reshape(b, 4 * out, h, w), 2)  # channels (out, py, px)
