"""The generator's inference-only fast paths compute the layers as written: sub-pixel resize-convolutions
(subpixel.py) and the depthwise head (HeadConv2d). The training-mode forward runs the layers as declared and is
the reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dicom_denoise_node.model import subpixel
from dicom_denoise_node.model.generator import GeneratorConfig, HeadConv2d, ResnetGenerator


@pytest.mark.parametrize(("height", "width", "bias"), [(5, 7, True), (1, 3, True), (16, 16, False)])
def test_upsample_conv_equals_upsample_reflect_pad_conv(height, width, bias):
    torch.manual_seed(0)
    x = torch.randn(2, 6, height, width)
    up, pad, conv = nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(6, 5, 3, bias=bias)
    assert subpixel.matches(up, pad, conv)
    with torch.no_grad():
        torch.testing.assert_close(subpixel.upsample_conv(x, conv), conv(pad(up(x))), atol=1e-5, rtol=1e-5)


def test_matches_only_the_resize_convolution():
    up, pad = nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1)
    assert not subpixel.matches(nn.Upsample(scale_factor=2, mode="bilinear"), pad, nn.Conv2d(4, 4, 3))
    assert not subpixel.matches(up, nn.ReflectionPad2d(2), nn.Conv2d(4, 4, 5))
    assert not subpixel.matches(up, pad, nn.Conv2d(4, 4, 3, stride=2))
    assert not subpixel.matches(up, nn.ZeroPad2d(1), nn.Conv2d(4, 4, 3))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("upsample", ["resize_conv", "transpose"])
def test_inference_forward_equals_the_layers_as_written(residual, upsample):
    torch.manual_seed(1)
    net = ResnetGenerator(GeneratorConfig(filters=8, blocks=2, residual=residual, upsample=upsample))
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    assert len(net._resize_convs) == (2 if upsample == "resize_conv" else 0)
    x = torch.rand(3, 1, 48, 64) * 2 - 1
    with torch.no_grad():
        reference = net.train()(x)
        fast = net.eval()(x)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    assert reference.abs().max() > 0.05  # not a trivially zero output


def test_head_conv_equals_dense_conv_and_keeps_its_state_dict_keys():
    torch.manual_seed(2)
    dense = nn.Conv2d(16, 1, 7)
    head = HeadConv2d(16, 1, 7)
    head.load_state_dict(dense.state_dict())
    x = torch.randn(2, 16, 30, 40)
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(x), dense(x), atol=1e-5, rtol=1e-5)
    assert head.state_dict().keys() == dense.state_dict().keys()
