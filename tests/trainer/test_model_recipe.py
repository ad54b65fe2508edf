"""The bundled model's recipe: the normalisation-free residual CNN, the discriminators' HU window, the low-pass term,
and validation against the noise-free REF that picks the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denoise_trainer.data.slices import TrainingData
from denoise_trainer.export import export_checkpoint
from denoise_trainer.train.checkpoint import load_checkpoint
from denoise_trainer.train.cyclegan import WindowView, gaussian_lowpass
from denoise_trainer.train.loop import train
from denoise_trainer.train.recipe import build_config
from denoise_trainer.train.validation import error_figures, soft_tissue_mask
from dicom_denoise_node.model.generator import (
    ResidualCNN,
    ResidualCNNConfig,
    ResidualUNet,
    ResidualUNetConfig,
    build_generator,
)
from dicom_denoise_node.model.registry import load_model
from tests.trainer.test_train import tiny_slices


def test_residual_cnn_starts_near_identity_and_round_trips_its_config():
    torch.manual_seed(0)
    config = ResidualCNNConfig(filters=8, layers=4, dilations=(1, 2, 2, 1))
    net = ResidualCNN(config)
    x = torch.rand(2, 1, 40, 36) * 1.6 - 0.8  # any size: no downsampling
    y = net(x)
    assert y.shape == x.shape
    change = (y - x).abs().max().item()
    assert 0 < change < 0.05  # a small random head: near the identity, not exactly at it
    rebuilt = build_generator(config.to_dict())
    assert isinstance(rebuilt, ResidualCNN) and rebuilt.config == config
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())
    with pytest.raises(ValueError, match="one value per layer"):
        ResidualCNNConfig(layers=3, dilations=(1, 2))
    # The ablation of the cause 1: instance norm after each hidden layer, from the training config's key.
    normed = build_generator(build_config("cpu", overrides={"residual_norm": "instance"}).generator_config().to_dict())
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in normed.modules()) == 7


def _receptive_field(net: torch.nn.Module, size: int = 192) -> int:
    """Rows of the input that reach the centre output pixel: positive weights of gain ≈ 1 per layer, so no ReLU is
    dead and no activation grows past the output clamp, which would cut the gradient."""
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.uniform_(m.weight, 0.5 / m.weight[0].numel(), 1.5 / m.weight[0].numel())
            torch.nn.init.constant_(m.bias, 0.01)
    x = (torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.1).requires_grad_()
    y = net(x)
    y[0, 0, size // 2, size // 2].backward()
    rows = (x.grad[0, 0].abs() > 0).any(1).nonzero()[:, 0]
    return int(rows.max() - rows.min() + 1)


def test_residual_unet_starts_near_identity_sees_99_px_and_round_trips_its_config():
    torch.manual_seed(0)
    config = ResidualUNetConfig(filters=8, bottleneck_layers=4)
    net = ResidualUNet(config)
    x = torch.rand(2, 1, 40, 36) * 1.6 - 0.8
    y = net(x)
    assert y.shape == x.shape
    assert 0 < (y - x).abs().max().item() < 0.05  # a small random head, as the residual CNN's
    rebuilt = build_generator(config.to_dict())
    assert isinstance(rebuilt, ResidualUNet) and rebuilt.config == config
    assert not any(isinstance(m, torch.nn.InstanceNorm2d | torch.nn.BatchNorm2d) for m in net.modules())
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 1, 30, 32))
    # The reach the model card and docs/training.md quote: 99 px with 4 bottleneck layers, 16 px more per layer.
    assert _receptive_field(ResidualUNet(config)) == 99
    assert _receptive_field(ResidualUNet(ResidualUNetConfig(filters=8, bottleneck_layers=2))) == 67


def test_residual_unet_trains_exports_and_runs_in_the_tiler(tmp_path, data_with_ref):
    """`generator = "residual_unet"` goes through paired training, export, the registry and the node's tiler."""
    from dicom_denoise_node.denoise.inference import TiledInferer

    overrides = {
        "run_dir": tmp_path / "unet",
        "device": "cpu",
        "pairing": "paired",
        "generator": "residual_unet",
        "filters": 4,
        "bottleneck_layers": 1,
        "batch_size": 2,
        "patch_size": 48,
        "iters_per_epoch": 2,
        "epochs": 1,
        "val_every": 2,
    }
    result = train(build_config("cpu", overrides=overrides), data_with_ref)
    assert result.steps == 2
    info = export_checkpoint(result.checkpoint, tmp_path / "models", "unet-test", "0.1")
    net, loaded = load_model(info.weights_path.with_suffix(".json"))
    assert isinstance(net, ResidualUNet) and loaded.architecture["type"] == "residual_unet"
    image = np.random.default_rng(1).uniform(-0.5, 0.5, (70, 90)).astype(np.float32)
    (out,) = TiledInferer(net.eval(), tile_size=48, overlap=8, batch_size=2).run_all([image])
    assert out.shape == image.shape and np.isfinite(out).all()


def test_window_view_maps_the_soft_tissue_window_to_plus_minus_one():
    view = WindowView((-1024.0, 1024.0), (-160.0, 240.0))
    hu = torch.tensor([-160.0, 40.0, 240.0, -1000.0, 1000.0])
    x = hu / 1024.0  # the model's [-1, 1] for the −1024…1024 window
    np.testing.assert_allclose(view(x).numpy(), [-1.0, 0.0, 1.0, -1.0, 1.0], atol=1e-6)
    assert torch.equal(WindowView((-1024.0, 1024.0))(x), x)  # no view window: the model's own


def test_lowpass_keeps_constants_and_removes_fine_noise():
    flat = torch.full((1, 1, 32, 32), 0.25)
    assert torch.allclose(gaussian_lowpass(flat, 3.0), flat, atol=1e-6)
    noise = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert gaussian_lowpass(noise, 3.0).std() < 0.15 * noise.std()


def test_error_figures_over_soft_tissue():
    ref = np.array([[-1000.0, 0.0], [100.0, 500.0]])
    mask = soft_tissue_mask(ref)
    assert mask.tolist() == [[False, True], [True, False]]
    std, mean = error_figures(ref + np.array([[50.0, 10.0], [-10.0, 50.0]]), ref, mask)
    assert std == pytest.approx(10.0) and mean == pytest.approx(0.0)


@pytest.fixture(scope="module")
def data_with_ref() -> TrainingData:
    data = tiny_slices(n=3, size=64)
    data.val_ref = [0.5 * (data.val_ld[0] + data.val_hd[0])]  # any image: the test checks the bookkeeping
    return data


SMALL = {"device": "cpu", "filters": 8, "layers": 3, "dilations": [1, 2, 1], "batch_size": 2}  # seconds per run


def test_cpu_recipe_validates_keeps_the_best_checkpoint_and_exports_it(tmp_path, data_with_ref):
    overrides = {
        "run_dir": tmp_path / "run",
        **SMALL,
        "patch_size": 32,
        "iters_per_epoch": 3,
        "epochs": 2,
        "val_every": 2,
        "sample_every": 1000,
        "pool_size": 2,
    }
    cfg = build_config("cpu", overrides=overrides)
    result = train(cfg, data_with_ref)
    assert [v["step"] for v in result.validation] == [1, 2, 4, 6]
    for row in result.history:
        assert {"g_adv", "g_cycle", "g_identity", "g_lowpass"} <= set(row) and "g_fidelity" not in row
    best = min(result.validation, key=lambda v: v["val_error_hu"])
    assert result.best_checkpoint is not None
    state = load_checkpoint(result.best_checkpoint)
    assert state["step"] == best["step"] and state["best_val_error"] == best["val_error_hu"]
    assert (tmp_path / "run" / "validation.json").exists()
    info = export_checkpoint(result.best_checkpoint, tmp_path / "model", "recipe-test", "0.0.1")
    net, loaded = load_model(info.weights_path.with_suffix(".json"))
    assert isinstance(net, ResidualCNN) and (loaded.hu_min, loaded.hu_max) == (-1024.0, 1024.0)
    # Resuming restores the validation history and the best score.
    more = train(build_config("cpu", overrides={**overrides, "epochs": 3}), data_with_ref, resume=result.checkpoint)
    # Step 8 falls due; 9, the run's last step, is validated too.
    assert [v["step"] for v in more.validation][:4] == [1, 2, 4, 6] and more.validation[-1]["step"] == 9


def test_paired_mode_trains_on_aligned_pairs_validates_and_exports(tmp_path, data_with_ref):
    from denoise_trainer.train.paired_step import ms_ssim_window

    overrides = {
        "run_dir": tmp_path / "paired",
        "device": "cpu",
        "pairing": "paired",
        "filters": 8,
        "layers": 3,
        "dilations": [1, 2, 1],
        "batch_size": 2,
        "patch_size": 48,
        "iters_per_epoch": 2,
        "epochs": 2,
        "val_every": 2,
        "lambda_pair_adv": 0.1,
    }
    cfg = build_config("cpu", overrides=overrides)
    result = train(cfg, data_with_ref)
    assert result.steps == 4 and [v["step"] for v in result.validation] == [1, 2, 4]
    assert all({"g_l1", "g_msssim", "g_adv", "d_hd"} <= set(h) for h in result.history)
    info = export_checkpoint(result.checkpoint, tmp_path / "model", "paired-test", "0.0.1")
    assert info.training["config"]["pairing"] == "paired"
    assert isinstance(load_model(info.weights_path.with_suffix(".json"))[0], ResidualCNN)
    more = train(
        build_config("cpu", overrides={**overrides, "epochs": 3, "lr": 1e-3}), data_with_ref, resume=result.checkpoint
    )
    assert more.steps == 6
    # The resumed run takes the configuration's rate (1e-3 × the schedule's ½ at epoch 2), not the checkpoint's.
    assert more.history[0]["lr"] == pytest.approx(5e-4)
    assert ms_ssim_window(64, 7) == 3 and ms_ssim_window(128, 7) == 7
    unaligned = TrainingData(ld=data_with_ref.ld, hd=data_with_ref.hd[:1])
    with pytest.raises(ValueError, match="aligned pairs"):
        train(cfg, unaligned)
    # A checkpoint of the other objective is refused, not half-loaded.
    with pytest.raises(ValueError, match="checkpoint of the paired trainer"):
        train(
            build_config("cpu", overrides={**overrides, "pairing": "unpaired"}), data_with_ref, resume=result.checkpoint
        )


def test_normalisation_free_discriminator_keeps_pytorchs_initialisation():
    """N(0, 0.02) starves a discriminator without instance norm of signal (it stays at chance); with norm it is
    the reference implementation's choice and stays."""
    from denoise_trainer.train.cyclegan import Discriminators, init_weights

    torch.manual_seed(0)
    plain, normed = Discriminators(16, 3, "none"), Discriminators(16, 3, "instance")
    init_weights(plain)
    init_weights(normed)
    first = [m for m in plain.hd.modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert first.weight.std().item() > 0.03  # default: U(±1/sqrt(fan_in)), fan_in 16·16 → std ≈ 0.036
    normed_first = [m for m in normed.hd.modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert normed_first.weight.std().item() == pytest.approx(0.02, rel=0.1)
    x = torch.randn(2, 1, 64, 64) * 0.3
    assert plain.hd(x).std() > 1e-3  # a score map that varies with the input


def test_device_feed_samples_on_the_device_and_trains_with_the_same_losses(tmp_path, data_with_ref):
    from denoise_trainer.train.feeds import DevicePool, DeviceSampler

    recipe = build_config("cpu", overrides={"patch_size": 32})
    sampler = DeviceSampler(data_with_ref.ld, recipe, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batch = sampler.sample(6, gen)
    assert batch.shape == (6, 1, 32, 32) and batch.is_contiguous(memory_format=torch.channels_last)
    assert (batch > -0.45).float().mean() > 0.5  # body (> −500 HU ≈ −0.49) in most of every patch
    again = sampler.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)  # one device generator: reproducible
    pool = DevicePool(4, (1, 32, 32), torch.device("cpu"), gen)
    first = pool.query(batch[:4])
    assert torch.equal(first, batch[:4]) and pool.filled == 4
    mixed = pool.query(batch[2:6] + 1.0)
    stored = list(batch[:4])
    for out, new in zip(mixed, batch[2:6] + 1.0, strict=True):  # each: the new fake, or one swapped out of the pool
        assert torch.equal(out, new) or any(torch.equal(out, old) for old in stored)

    overrides = {
        "run_dir": tmp_path / "fast",
        **SMALL,
        "feed": "device",
        "patch_size": 32,
        "iters_per_epoch": 3,
        "epochs": 2,
        "val_every": 3,
        "log_every": 3,
        "pool_size": 2,
    }
    result = train(build_config("cpu", overrides={**overrides, "max_steps": 4}), data_with_ref)
    # Validated at 1, 3 (val_every) and 4, the run's last step.
    assert result.steps == 4 and result.epochs_done == 1 and [v["step"] for v in result.validation] == [1, 3, 4]
    # Losses are read back every log_every steps, yet every step has its row.
    assert len(result.history) == 4 and all(np.isfinite(v) for h in result.history for v in h.values())
    # The device feed resumes exactly like the host feed: the rest of the run gives the uninterrupted run's weights.
    rest = train(build_config("cpu", overrides=overrides), data_with_ref, resume=result.checkpoint)
    whole = train(build_config("cpu", overrides={**overrides, "run_dir": tmp_path / "whole"}), data_with_ref)
    assert rest.steps == whole.steps == 6 and rest.epochs_done == 2
    assert all(torch.equal(rest.generator[k], whole.generator[k]) for k in whole.generator)
    info = export_checkpoint(rest.checkpoint, tmp_path / "model", "fast-test", "0.0.1")
    assert isinstance(load_model(info.weights_path.with_suffix(".json"))[0], ResidualCNN)


def test_window_view_high_pass_keeps_noise_and_drops_anatomy():
    view = WindowView((-1024.0, 1024.0), (-160.0, 240.0), highpass_sigma=2.0)
    flat = torch.full((1, 1, 48, 48), 40.0 / 1024)
    ramp = torch.linspace(-0.05, 0.1, 48).expand(1, 1, 48, 48)  # smooth anatomy: −50…100 HU
    noise = torch.randn(1, 1, 48, 48, generator=torch.Generator().manual_seed(0)) * 20 / 1024
    assert view(flat).abs().max() < 1e-5
    assert view(ramp)[..., 8:-8, 8:-8].abs().max() < 0.01
    assert view(flat + noise).std() > 0.8 * 4 * (20 / 200)  # 20 HU = 0.1 in the 400-HU view; ×4 gain; most survives


def test_weight_average_is_an_ema_of_the_generator_and_resumes():
    from denoise_trainer.train.averaging import GeneratorAverage

    net = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average = GeneratorAverage(net, 0.5)
    average.update()  # the first update copies
    for value in (3.0, 5.0):
        with torch.no_grad():
            net.weight.fill_(value)
        average.update()
    assert average.model.weight.item() == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 3.0) + 0.5 * 5.0)  # 3.5
    assert net.weight.item() == 5.0  # training follows the raw weights
    resumed = GeneratorAverage(net, 0.5)
    resumed.load_state_dict(average.state_dict())
    assert resumed.model.weight.item() == pytest.approx(3.5)
    with torch.no_grad():
        net.weight.fill_(7.5)
    resumed.update()  # continues the average rather than copying again
    assert resumed.model.weight.item() == pytest.approx(5.5)
    off = GeneratorAverage(net, 0.0)
    assert off.model is net and off.state_dict() == {}
    with pytest.raises(ValueError, match="decay"):
        GeneratorAverage(net, 1.0)


def test_training_validates_and_exports_the_weight_average(tmp_path, data_with_ref):
    from denoise_trainer.train.averaging import AVERAGE_KEY

    overrides = {
        "run_dir": tmp_path / "run",
        **SMALL,
        "patch_size": 32,
        "iters_per_epoch": 3,
        "epochs": 1,
        "d_warmup_steps": 0,
        "val_every": 3,
        "sample_every": 1000,
        "pool_size": 2,
        "ema_decay": 0.5,
    }
    result = train(build_config("cpu", overrides=overrides), data_with_ref)
    state = load_checkpoint(result.checkpoint)
    assert state["average_count"] == 3
    raw = {k.removeprefix("ld2hd."): v for k, v in state["generators"].items() if k.startswith("ld2hd.")}
    averaged = {k.removeprefix("ld2hd."): v for k, v in state[AVERAGE_KEY].items()}
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)
    assert all(torch.equal(result.generator[k], averaged[k]) for k in averaged)
    info = export_checkpoint(result.checkpoint, tmp_path / "model", "ema-test", "0.0.1")
    net, _ = load_model(info.weights_path.with_suffix(".json"))
    shipped = net.state_dict()
    assert all(torch.equal(shipped[k], averaged[k]) for k in averaged)
    assert info.training["weights"] == "EMA of the weights, decay 0.5"


def test_inserted_lesion_term_charges_the_contrast_a_denoiser_takes_from_a_lesion():
    from denoise_trainer.train.cyclegan import gaussian_lowpass
    from denoise_trainer.train.lesion_term import contrast_kept, inserted_lesions, lesion_transfer_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 48, 48, generator=torch.Generator().manual_seed(1)) * 0.02
    units = 2.0 / 2048.0
    d, core, ring, amplitude = inserted_lesions(x.shape, units, gen, x.device)
    peak = d.abs().amax(dim=(1, 2, 3)) / units
    assert bool(((peak >= 5.0 - 1e-3) & (peak <= 60.0 + 1e-3)).all())  # one disk of 5–60 HU per patch
    assert torch.allclose(amplitude.abs() / units, peak, rtol=1e-4)
    assert bool((core.sum(dim=(1, 2, 3)) >= 1).all()) and bool((ring.sum(dim=(1, 2, 3)) > 0).all())
    assert not bool(((ring > 0) & (d != 0)).any())  # the ring is background
    assert torch.allclose(contrast_kept(d, core, ring, amplitude), torch.ones(8))

    def loss(g):
        return float(lesion_transfer_loss(g, x, g(x), units, torch.Generator().manual_seed(2)))

    assert loss(lambda t: t) == pytest.approx(0.0, abs=1e-5)
    assert loss(lambda t: 0.5 * t) == pytest.approx(0.5, abs=1e-4)
    assert loss(lambda t: t + 0.3) == pytest.approx(0.0, abs=1e-4)  # a shift is not a contrast loss
    assert loss(lambda t: gaussian_lowpass(t, 2.0)) > 0.1  # smoothing flattens small lesions


def test_training_with_the_lesion_term_logs_it_and_resumes_exactly(tmp_path, data_with_ref):
    overrides = {
        "run_dir": tmp_path / "run",
        **SMALL,
        "patch_size": 32,
        "iters_per_epoch": 2,
        "epochs": 2,
        "d_warmup_steps": 1,
        "val_every": 100,
        "sample_every": 1000,
        "pool_size": 0,
        "lambda_lesion": 1.0,
    }
    straight = train(build_config("cpu", overrides=overrides), data_with_ref)
    assert "g_lesion" not in straight.history[0] and all("g_lesion" in h for h in straight.history[1:])
    first = train(build_config("cpu", overrides={**overrides, "run_dir": tmp_path / "r2", "epochs": 1}), data_with_ref)
    resumed = train(
        build_config("cpu", overrides={**overrides, "run_dir": tmp_path / "r2"}), data_with_ref, resume=first.checkpoint
    )
    assert resumed.history[-1]["g_lesion"] == pytest.approx(straight.history[-1]["g_lesion"], rel=1e-5)


def test_validation_scores_inserted_lesions_and_can_require_them_kept():
    from denoise_trainer.train.cyclegan import gaussian_lowpass
    from denoise_trainer.train.validation import ValidationSet, Validator

    rng = np.random.default_rng(0)
    ref = [np.full((128, 128), 40.0) for _ in range(2)]
    ld = [r + rng.normal(0, 30, r.shape) for r in ref]
    hd = [r + rng.normal(0, 15, r.shape) for r in ref]
    window = (-1024.0, 1024.0)
    val = ValidationSet.build(ld, hd, ref, window, 2)
    assert val.lesions is not None and val.lesions.x.shape == (16, 1, 64, 64)

    class Blur(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return gaussian_lowpass(t, 2.5)

    blur, identity = Blur(), torch.nn.Identity()

    device = torch.device("cpu")
    plain = Validator(val, window, device, 1)
    assert plain(1, identity, {})  # the first score is the best so far
    assert plain(2, blur, {})  # lower error: best when only the error counts
    kept = {c["step"]: c["val_lesion_kept"] for c in plain.curve}
    assert kept[1] == pytest.approx(1.0, abs=1e-3) and kept[2] < 0.8
    strict = Validator(val, window, device, 1, min_lesion_kept=0.9)
    assert strict(1, identity, {}) and not strict(2, blur, {})  # flattening lesions is never "best"


def test_every_recipe_config_under_scripts_loads():
    """The TOML files the model scripts pass to `train --config` name only keys the trainer knows (a misspelt key in
    a recipe would stop a reproduction an hour in, or never run it)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "scripts"
    configs = sorted(root.rglob("*.toml"))
    assert len(configs) >= 10
    for path in configs:
        build_config("cpu", path)


def test_error_bands_splits_a_residual_power_by_frequency():
    """scripts/error_bands.py (the model card's diagnosis): white noise spreads its power over the bands by their
    share of the spectrum; a smooth ramp of noise-free low frequencies lands in the lowest bands only."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "error_bands.py"
    spec = importlib.util.spec_from_file_location("error_bands", path)
    bands = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bands)
    rng = np.random.default_rng(0)
    mask = np.ones((128, 128), bool)
    white = bands.band_power(rng.standard_normal((128, 128)), mask)
    fy, fx = np.meshgrid(np.fft.fftfreq(bands.ROI), np.fft.fftfreq(bands.ROI), indexing="ij")
    radius = np.hypot(fy, fx).ravel()[1:]  # without the DC bin: each ROI's mean is removed
    counts = np.array(
        [((radius >= lo) & (radius < hi)).sum() for lo, hi in zip(bands.BANDS, bands.BANDS[1:], strict=False)]
    )
    np.testing.assert_allclose(white / white.sum(), counts / counts.sum(), rtol=0.2, atol=2e-3)
    y, x = np.mgrid[0:128, 0:128] / 128.0
    smooth = bands.band_power(np.sin(2 * np.pi * 2 * x) + np.cos(2 * np.pi * 4 * y), mask)
    # 1 and 2 cycles per 64-px ROI (0.016 and 0.031 cycles/px): the lowest two bands hold all of it.
    assert smooth[0] > 0 and smooth[1] > 0 and smooth[:2].sum() > 0.999 * smooth.sum()
    assert bands.band_power(rng.standard_normal((128, 128)), ~mask).sum() == 0  # no ROI wholly in the mask


def test_paired_squared_error_term_is_taken_in_the_soft_tissue_window():
    """λ_l2 adds the mean squared error of G(LD) and HD in the soft-tissue view ([−1, 1] over −160…240 HU): a
    20 HU offset is 0.1 view units, 0.01 squared; outside the window (lung) the clipped view adds nothing."""
    from denoise_trainer.train.paired_step import paired_losses

    cfg = build_config(
        "cpu", overrides={"pairing": "paired", "lambda_pair_l2": 2.0, "disc_hu_min": -160.0, "disc_hu_max": 240.0}
    )
    view = WindowView((cfg.hu_min, cfg.hu_max), (cfg.disc_hu_min, cfg.disc_hu_max))
    hd = torch.full((1, 1, 64, 64), 40.0 / 1024.0)  # 40 HU, soft tissue
    fake = hd + 20.0 / 1024.0
    losses = paired_losses(fake, hd, view, cfg, 3, None)
    assert losses["g_l2"].item() == pytest.approx(0.01, rel=1e-4)
    assert losses["g_total"].item() == pytest.approx(
        losses["g_l1"].item() * cfg.lambda_pair_l1 + losses["g_msssim"].item() * cfg.lambda_pair_msssim + 0.02,
        rel=1e-4,
    )
    lung = torch.full((1, 1, 64, 64), -800.0 / 1024.0)
    assert paired_losses(lung + 20.0 / 1024.0, lung, view, cfg, 3, None)["g_l2"].item() == 0.0
    off = build_config("cpu", overrides={"pairing": "paired"})
    assert "g_l2" not in paired_losses(fake, hd, view, off, 3, None)


def test_every_paired_recipe_gets_the_lesion_term_unless_it_says_otherwise(tmp_path, monkeypatch):
    """Issue 29: a paired run without the inserted-lesion term lost lesion contrast unnoticed; it is on by default."""
    from denoise_trainer.train.recipe import PAIRED_DEFAULTS, build_config

    for preset in ("cpu", "tiny", "method"):
        assert build_config(preset, overrides={"pairing": "paired"}).lambda_lesion == PAIRED_DEFAULTS["lambda_lesion"]
        assert build_config(preset).lambda_lesion == 0.0  # the unpaired method has no such term by default
    assert build_config("cpu", overrides={"pairing": "paired", "lambda_lesion": 0.0}).lambda_lesion == 0.0
    toml = tmp_path / "r.toml"
    toml.write_text('[train]\npairing = "paired"\nlambda_lesion = 0.0\n')
    assert build_config("cpu", toml).lambda_lesion == 0.0
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the term cannot run (outside DDP): no default there
    assert build_config("cpu", overrides={"pairing": "paired"}).lambda_lesion == 0.0
