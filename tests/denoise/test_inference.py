import numpy as np
import pytest
import torch

from dicom_denoise_node.denoise.inference import TiledInferer, blend_window, tile_starts
from dicom_denoise_node.model.generator import GeneratorConfig, ResnetGenerator


@pytest.mark.parametrize("shape", [(512, 512), (256, 256), (300, 170), (64, 64), (1024, 700), (1, 37)])
def test_identity_network_is_bit_exact(shape):
    rng = np.random.default_rng(1)
    image = (rng.standard_normal(shape) * 3).astype(np.float32)
    inferer = TiledInferer(torch.nn.Identity(), tile_size=128, overlap=24, batch_size=3)
    (out,) = inferer.run_all([image])
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert np.array_equal(out, image)


def test_tiles_batch_across_slices_and_keep_order():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x * 2

    rng = np.random.default_rng(2)
    slices = [rng.standard_normal((200, 200)).astype(np.float32) + i for i in range(5)]
    inferer = TiledInferer(Recorder(), tile_size=128, overlap=16, batch_size=7)
    outs = inferer.run_all(iter(slices))
    assert len(outs) == 5
    for s, o in zip(slices, outs, strict=True):
        np.testing.assert_allclose(o, 2 * s, rtol=1e-6)
    # 4 tiles per slice, 20 tiles, batches of 7 span slice boundaries.
    assert calls == [7, 7, 6]


def test_streaming_holds_only_slices_in_flight():
    held = []

    def source():
        for i in range(20):
            held.append(i)
            yield np.full((128, 128), float(i), dtype=np.float32)

    inferer = TiledInferer(torch.nn.Identity(), tile_size=128, overlap=0, batch_size=2)
    for k, out in enumerate(inferer.run(source())):
        assert out[0, 0] == k
        assert len(held) - k <= 3  # never reads far ahead of what it yields


def test_tile_starts_cover_everything_with_overlap():
    for length in (128, 129, 300, 512, 1000):
        starts = tile_starts(length, 128, 32)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + 128] = True
        assert covered.all()
        assert all(b - a <= 96 for a, b in zip(starts, starts[1:], strict=False))


def test_blend_window_is_positive_and_flat_in_the_centre():
    w = blend_window(64, 16)
    assert w.min() > 0
    assert w[32, 32] == 1.0
    assert w[0, 0] < w[8, 8] < w[20, 20]


def test_real_generator_runs_on_odd_sizes():
    torch.manual_seed(0)
    gen = ResnetGenerator(GeneratorConfig(filters=4, blocks=1)).eval()
    rng = np.random.default_rng(3)
    for shape in [(96, 160), (50, 70), (130, 130)]:
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        (out,) = TiledInferer(gen, tile_size=64, overlap=16, batch_size=4).run_all([image])
        assert out.shape == image.shape
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


def test_generator_rejects_unpadded_input():
    gen = ResnetGenerator(GeneratorConfig(filters=4, blocks=1))
    with pytest.raises(ValueError, match="multiple of 4"):
        gen(torch.zeros(1, 1, 30, 32))


def test_generator_default_is_the_method():
    gen = ResnetGenerator()
    blocks = [m for m in gen.modules() if m.__class__.__name__ == "ResidualBlock"]
    assert len(blocks) == 6
    first = next(m for m in gen.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.out_channels == 64 and first.in_channels == 1
    assert isinstance(gen.model[-1], torch.nn.Tanh)


def test_residual_generator_starts_as_identity_and_learns_a_correction():
    from denoise_trainer.train.cyclegan import init_weights

    gen = ResnetGenerator(GeneratorConfig(filters=4, blocks=1, residual=True))
    init_weights(gen)  # the trainer's N(0, 0.02) initialisation must not undo the zero head
    x = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    assert torch.equal(gen(x), x)
    assert not isinstance(gen.model[-1], torch.nn.Tanh)
    # One gradient step away from the identity changes the output, and it stays in [-1, 1].
    opt = torch.optim.SGD(gen.parameters(), lr=0.5)
    (gen(x) - 0.3).abs().mean().backward()
    opt.step()
    out = gen(x)
    assert not torch.equal(out, x)
    assert out.abs().max() <= 1.0
    # The state dict names each tensor once (safetensors refuses shared tensors).
    assert len(gen.state_dict()) == len(ResnetGenerator(GeneratorConfig(filters=4, blocks=1)).state_dict())
    assert GeneratorConfig.from_dict(gen.config.to_dict()) == gen.config


def test_fixed_batch_pads_the_last_batch_and_drops_the_padding(monkeypatch):
    """With compile on, every forward pass has the compiled shape; the blank tiles never reach an output."""
    from dicom_denoise_node.denoise import inference

    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x * 2

    monkeypatch.setattr(inference, "compile_network", lambda network, example: network)
    rng = np.random.default_rng(3)
    slices = [rng.standard_normal((200, 200)).astype(np.float32) + i for i in range(5)]
    inferer = TiledInferer(Recorder(), tile_size=128, overlap=16, batch_size=7, compile=True)
    calls.clear()  # the warm-up pass
    outs = inferer.run_all(iter(slices))
    assert calls == [7, 7, 7]
    for s, o in zip(slices, outs, strict=True):
        np.testing.assert_allclose(o, 2 * s, rtol=1e-6)


def test_compiled_generator_matches_eager():
    """torch.compile (inductor, frozen weights) gives the eager generator's output; the last batch is partial."""
    torch.manual_seed(4)
    net = ResnetGenerator(GeneratorConfig(filters=4, blocks=1, residual=True)).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    rng = np.random.default_rng(4)
    slices = [rng.uniform(-1, 1, (100, 90)).astype(np.float32) for _ in range(3)]
    eager = TiledInferer(net, tile_size=64, overlap=8, batch_size=4).run_all(slices)
    compiled = TiledInferer(net, tile_size=64, overlap=8, batch_size=4, compile=True)
    assert compiled.network is not net, "torch.compile fell back to eager (is a C++ compiler installed?)"
    # The warm-up compiled the graph the slices use: no recompilation (it cost the node's first series ≈ 20 s).
    with torch._dynamo.config.patch(error_on_recompile=True):
        outputs = compiled.run_all(slices)
    for a, b in zip(eager, outputs, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-4)
