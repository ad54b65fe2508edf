"""Training configuration: a preset (the method's settings, or a small CPU one) overridden by a TOML file and flags.

The method (shared/seed): ResNet-6 generators with 64 filters, 70×70 PatchGAN discriminators, LSGAN, cycle L1 × 10,
identity fidelity 1−SSIM, Adam 2e-4 (0.5, 0.999), 128×128 patches, batch 32, 3 epochs, HU window → [−1, 1].
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicom_denoise_node.config import ConfigError
from dicom_denoise_node.model.generator import ArchConfig, GeneratorConfig, ResidualCNNConfig, ResidualUNetConfig

PresetName = Literal["method", "cpu", "resnet-cpu", "tiny"]


class CannotTrain(ValueError):
    """A recipe, data or checkpoint this run cannot train with; the message says what to change."""


class TrainConfig(BaseModel):
    """Every knob of a training run; stored in each checkpoint so a run describes itself."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName = "cpu"
    catalog_url: str = ""
    run_dir: Path = Path("runs/cyclegan")
    # Network
    generator: Literal["resnet", "residual_cnn", "residual_unet"] = Field(
        "resnet", description="resnet = the method's generator"
    )
    layers: int = Field(8, ge=2, description="residual_cnn: 3×3 convolution layers")
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 3, 2, 1, 1])
    head_init_std: float = Field(1e-3, ge=0, description="residual_*: std of the last layer's initial weights")
    residual_norm: Literal["none", "instance"] = Field("none", description="residual_cnn: an ablation of cause 1")
    bottleneck_layers: int = Field(4, ge=0, description="residual_unet: dilated layers at ¼ resolution")
    filters: int = Field(64, ge=4)
    blocks: int = Field(6, ge=1)
    upsample: Literal["resize_conv", "transpose"] = "resize_conv"
    residual: bool = Field(False, description="global skip: generators predict a correction to their input")
    noise_conditioning: bool = Field(
        False, description="generators also get the input's measured noise level as a constant map (no preset)"
    )
    disc_filters: int = Field(64, ge=4)
    disc_layers: int = Field(3, ge=1, le=5, description="3 = the method's 70×70 PatchGAN; 2 = 34×34")
    disc_norm: Literal["instance", "none"] = "instance"
    disc_hu_min: float | None = Field(None, description="HU window the discriminators see; None = the model's")
    disc_hu_max: float | None = None
    disc_highpass_sigma: float = Field(0.0, ge=0, description="px; > 0: discriminators see only the fine detail")
    # Data
    hu_min: float = -1024.0
    hu_max: float = 3071.0
    patch_size: int = Field(128, ge=32)
    body_fraction: float = Field(0.5, ge=0, le=1)
    body_hu: float = -500.0
    # Optimisation
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(3, ge=1)
    iters_per_epoch: int = Field(0, ge=0, description="0 = patches_per_slice × LD training slices / batch")
    patches_per_slice: int = Field(128, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_d_factor: float = Field(1.0, gt=0, description="discriminator learning rate = lr × this (the method: 1)")
    d_warmup_steps: int = Field(0, ge=0, description="first steps train the discriminators only (the method: 0)")
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start_epoch: int = Field(-1, description="epoch where linear decay to 0 starts; -1 = half of epochs")
    lambda_cycle: float = 10.0
    cycle_beta: float = Field(0.0, ge=0, description="0 = the method's cycle L1; > 0 = smooth L1 of this width")
    lambda_fidelity: float = Field(1.0, description="identity term 1 − SSIM (the method's fidelity loss)")
    lambda_identity_l1: float = Field(0.0, ge=0, description="identity term L1 (G(hd) ≈ hd, F(ld) ≈ ld)")
    lambda_lowpass: float = Field(0.0, ge=0, description="squared error of low-passed output and input (holds HU)")
    lowpass_sigma: float = Field(3.0, gt=0, description="px; Gaussian of the low-pass term")
    lambda_lesion: float = Field(
        0.0, ge=0, description="inserted-lesion contrast term: G(x + disk) − G(x) ≈ disk (trainer/lesion_term.py)"
    )
    ssim_window: int = Field(7, ge=3)
    pool_size: int = Field(50, ge=0)
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="> 0: validate, keep and export an EMA of the generator's weights (the method: 0)"
    )
    # Paired mode (beyond the method: `train --pairing paired`, train/paired_step.py)
    pairing: Literal["unpaired", "paired"] = "unpaired"
    lambda_pair_l1: float = Field(1.0, ge=0, description="paired: L1 between G(LD) and HD")
    lambda_pair_msssim: float = Field(1.0, ge=0, description="paired: 1 − MS-SSIM(G(LD), HD), soft-tissue window")
    lambda_pair_l2: float = Field(
        0.0, ge=0, description="paired: squared error of G(LD) and HD, soft-tissue window (aims at the mean: PSNR)"
    )
    lambda_pair_adv: float = Field(0.0, ge=0, description="paired: LSGAN weight against HD (keeps HD's texture)")
    # Run
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    feed: Literal["host", "device"] = Field(
        "host", description="host = patches cut on the host; device = slices held and cut on the device (GPU recipe)"
    )
    compile: bool = Field(False, description="torch.compile the networks' forward passes (GPU recipe)")
    amp: bool = Field(
        False, description="mixed precision on CUDA; off: fp32/TF32 (bf16 saturated tanh and collapsed a GPU run)"
    )
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(200, ge=1)
    val_patches: int = Field(4, ge=1)
    val_every: int = Field(100, ge=1, description="steps between scores on the validation patients (vs REF)")
    val_slices: int = Field(8, ge=1, description="validation slices scored (evenly spread over the patients)")
    val_min_lesion_kept: float = Field(
        0.0, ge=0, le=1, description="best.pt only among steps whose inserted validation lesions keep this contrast"
    )
    max_steps: int = Field(0, ge=0, description="stop after this many steps in total (0 = no limit)")
    max_minutes: float = Field(
        0.0, ge=0, description="stop, with a checkpoint, this many minutes after this process's first step (0 = none)"
    )
    checkpoint_every: int = Field(
        200, ge=0, description="steps between refreshes of last.pt, besides each epoch's end and the stop (0 = none)"
    )
    init_from: Path | None = Field(
        None,
        description="warm start from an exported model: a .json, a bundled model's name, or 'bundled' (the pairing's "
        "bundled model); its architecture fills the keys the config leaves out (train/init_source.py, warm_start.py)",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.patch_size % 4:
            raise ValueError(f"patch_size={self.patch_size} must be a multiple of 4")
        if self.ssim_window % 2 == 0:
            raise ValueError("ssim_window must be odd")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be above hu_min")
        if (self.disc_hu_min is None) != (self.disc_hu_max is None):
            raise ValueError("give both disc_hu_min and disc_hu_max, or neither")
        if self.disc_hu_min is not None and self.disc_hu_max <= self.disc_hu_min:  # type: ignore[operator]
            raise ValueError("disc_hu_max must be above disc_hu_min")
        if self.generator == "residual_cnn" and len(self.dilations) != self.layers:
            raise ValueError(f"dilations has {len(self.dilations)} values for {self.layers} layers")
        return self

    def generator_config(self) -> ArchConfig:
        """The architecture of both generators, as stored in checkpoints and model metadata."""
        if self.generator == "residual_cnn":
            return ResidualCNNConfig(
                filters=self.filters,
                layers=self.layers,
                dilations=tuple(self.dilations),
                head_init_std=self.head_init_std,
                norm=self.residual_norm,
                noise_conditioning=self.noise_conditioning,
            )
        if self.generator == "residual_unet":
            return ResidualUNetConfig(
                filters=self.filters,
                bottleneck_layers=self.bottleneck_layers,
                head_init_std=self.head_init_std,
                noise_conditioning=self.noise_conditioning,
            )
        return GeneratorConfig(
            filters=self.filters,
            blocks=self.blocks,
            upsample=self.upsample,
            residual=self.residual,
            noise_conditioning=self.noise_conditioning,
        )

    @property
    def decay_start(self) -> int:
        return self.decay_start_epoch if self.decay_start_epoch >= 0 else self.epochs // 2


PRESETS: dict[str, dict[str, Any]] = {
    # The method's settings (about 30 h on one 24 GB GPU on the real archive).
    "method": dict(
        filters=64, blocks=6, disc_filters=64, patch_size=128, batch_size=32, epochs=3, patches_per_slice=128
    ),
    # The bundled model's recipe (since 1.0.0): what a 2-core CPU trains to regular-dose quality in about two
    # hours. Each deviation from the method and its reason is in docs/training.md ("The cpu preset"):
    # - a normalisation-free residual CNN generator (generator.ResidualCNN): 8 dilated 3×3 layers, 32 filters,
    #   receptive field 35 px, last layer N(0, 1e-3);
    # - model window −1024…1024 HU (x = HU/1024): losses are in units of ≈ 1000 HU, so λ_cycle 5 here is the
    #   2.5 of "HU/500 units"; HU outside the window (dense bone, metal) pass through the node unchanged;
    # - the discriminators see the soft-tissue window −160…240 HU, where noise texture is visible: the method's
    #   70×70 PatchGAN without normalisation (PyTorch's default initialisation) on the image minus its σ 2 px
    #   Gaussian low-pass (noise texture without the anatomy), learning 2× faster, and alone for the first 200 steps;
    # - identity L1 instead of 1 − SSIM, and a squared error between Gaussian low-passes (σ 3 px) of output and
    #   input, which holds mean HU (noise lives at high spatial frequencies, anatomy's HU at low ones);
    # - 64² body patches, batch 16, 3 000 steps (the last 1 000 at half the learning rate), the checkpoint chosen
    #   on the validation patients.
    "cpu": dict(
        generator="residual_cnn",
        filters=32,
        layers=8,
        dilations=[1, 2, 3, 4, 3, 2, 1, 1],
        head_init_std=1e-3,
        hu_min=-1024.0,
        hu_max=1024.0,
        disc_filters=32,
        disc_layers=3,
        disc_norm="none",
        disc_hu_min=-160.0,
        disc_hu_max=240.0,
        lr_d_factor=2.0,
        d_warmup_steps=200,
        disc_highpass_sigma=2.0,
        patch_size=64,
        batch_size=16,
        epochs=3,
        iters_per_epoch=1000,
        decay_start_epoch=2,
        lambda_cycle=5.0,
        lambda_fidelity=0.0,
        lambda_identity_l1=2.5,
        lambda_lowpass=500.0,
        lowpass_sigma=3.0,
        sample_every=250,
        val_every=100,
    ),
    # The recipe of the bundled models 0.1.0 and 0.2.0 (kept to reproduce them: scripts/train_model_0.*.sh):
    # a residual ResNet generator with instance norm that starts as the identity, window −400…400 HU, 34×34
    # discriminators without norm learning 4× faster, cycle L1 × 5. It removed about a fifth of the excess noise
    # (docs/model-card.md, "Earlier models").
    "resnet-cpu": dict(
        filters=32,
        blocks=6,
        disc_filters=32,
        patch_size=96,
        batch_size=8,
        epochs=10,
        patches_per_slice=16,
        lambda_cycle=5.0,
        sample_every=100,
        hu_min=-400.0,
        hu_max=400.0,
        residual=True,
        lr_d_factor=4.0,
        disc_layers=2,
        disc_norm="none",
    ),
    # Seconds, for tests and smoke runs.
    "tiny": dict(
        filters=8,
        blocks=1,
        disc_filters=8,
        patch_size=32,
        batch_size=2,
        epochs=2,
        iters_per_epoch=2,
        patches_per_slice=1,
        pool_size=4,
        log_every=1,
        sample_every=2,
        val_every=2,
        val_patches=2,
        ssim_window=3,
    ),
}


# Paired mode's defaults over any preset (issue 29): the inserted-lesion term belongs in every paired recipe. A
# paired run without it lost lesion contrast on validation (0.51 after 5 min on another simulator's archive) while
# its error looked fine; 0.1 is paired 1.2.0's weight (docs/model-card.md). A recipe that sets it, to 0 included, wins.
# Not under torchrun (WORLD_SIZE > 1): the term runs the generator outside DistributedDataParallel, which the loop
# refuses, so a multi-process paired run keeps today's recipe unless it asks for the term (and is told why not).
PAIRED_DEFAULTS: dict[str, Any] = {"lambda_lesion": 0.1}


def build_config(preset: str = "cpu", path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """preset < the warm start's model (its architecture) < TOML file ([train] table or top level) < explicit
    overrides; errors name the key and the file."""
    values: dict[str, Any] = dict(PRESETS.get(preset, {}))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values["preset"] = preset
    given: dict[str, Any] = {}  # what the user wrote: it wins over the preset and the model
    where = "command line"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        data = data.get("train", data)
        if "preset" in data and data["preset"] != preset:
            values.update(PRESETS.get(data["preset"], {}))
        given.update(data)
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if given.get("init_from") is not None:
        from denoise_trainer.train.init_source import recipe_from_model, resolve_init  # it raises CannotTrain

        given["init_from"] = resolve_init(given["init_from"], given.get("pairing", values.get("pairing")))
        values.update(recipe_from_model(given["init_from"]))
    values.update(given)
    if values.get("pairing") == "paired" and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        values.update({k: v for k, v in PAIRED_DEFAULTS.items() if k not in given})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "train"
            problems.append(
                f"{'unknown' if err['type'] == 'extra_forbidden' else 'invalid'} key '{key}' in {where}"
                + ("" if err["type"] == "extra_forbidden" else f": {err['msg']}")
            )
        raise ConfigError("; ".join(problems)) from exc
