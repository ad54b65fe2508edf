"""Training configuration: a preset (the method's settings, or a small CPU one) overridden by a TOML file and flags.

The method (shared/seed): ResNet-6 generators with 64 filters, 70×70 PatchGAN discriminators, LSGAN, cycle L1 × 10,
identity fidelity 1−SSIM, Adam 2e-4 (0.5, 0.999), 128×128 patches, batch 32, 3 epochs, HU window → [−1, 1].
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicom_denoise_node.config import ConfigError

PresetName = Literal["method", "cpu", "tiny"]


class TrainConfig(BaseModel):
    """Every knob of a training run; stored in each checkpoint so a run describes itself."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName = "cpu"
    catalog_url: str = ""
    run_dir: Path = Path("runs/cyclegan")
    # Network
    filters: int = Field(64, ge=4)
    blocks: int = Field(6, ge=1)
    upsample: Literal["resize_conv", "transpose"] = "resize_conv"
    residual: bool = Field(False, description="global skip: generators predict a correction to their input")
    disc_filters: int = Field(64, ge=4)
    disc_layers: int = Field(3, ge=1, le=5, description="3 = the method's 70×70 PatchGAN; 2 = 34×34")
    disc_norm: Literal["instance", "none"] = "instance"
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
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start_epoch: int = Field(-1, description="epoch where linear decay to 0 starts; -1 = half of epochs")
    lambda_cycle: float = 10.0
    cycle_beta: float = Field(0.0, ge=0, description="0 = the method's cycle L1; > 0 = smooth L1 of this width")
    lambda_fidelity: float = 1.0
    ssim_window: int = Field(7, ge=3)
    pool_size: int = Field(50, ge=0)
    # Run
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(200, ge=1)
    val_patches: int = Field(4, ge=1)
    max_steps: int = Field(0, ge=0, description="stop after this many steps in total (0 = no limit)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.patch_size % 4:
            raise ValueError(f"patch_size={self.patch_size} must be a multiple of 4")
        if self.ssim_window % 2 == 0:
            raise ValueError("ssim_window must be odd")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be above hu_min")
        return self

    @property
    def decay_start(self) -> int:
        return self.decay_start_epoch if self.decay_start_epoch >= 0 else self.epochs // 2


PRESETS: dict[str, dict[str, Any]] = {
    # The method's settings (about 30 h on one 24 GB GPU on the real archive).
    "method": dict(
        filters=64, blocks=6, disc_filters=64, patch_size=128, batch_size=32, epochs=3, patches_per_slice=128
    ),
    # What a 2-core CPU can train in about an hour (and the bundled model's architecture). Documented deviations
    # from the method, each there because a short CPU run did not learn to denoise without it (docs/training.md):
    # - a soft-tissue HU window (−400…400): noise is 2.6× larger in [−1, 1] units than in −1024…3071, so the
    #   discriminators can see it; HU outside the window (lung, bone, air) pass through the node unchanged;
    # - the discriminators learn 4× faster than the generators (two time-scale update rule);
    # - residual generators that start as the identity, so a short run refines the input instead of relearning
    #   every HU (generator.py);
    # - 34×34 discriminators without instance norm, which see noise texture at its true amplitude
    #   (cyclegan.PatchDiscriminator);
    # - cycle L1 × 5 instead of × 10: quantum noise cannot be restored by HD→LD, so every HU of noise that G removes
    #   costs cycle loss. Probed with a trained discriminator (docs/training.md), × 10 makes the identity map as
    #   good as a denoiser for G; × 5 leaves a clear minimum at mild smoothing. (`cycle_beta`, a smooth-L1 cycle
    #   term, is available but made no difference in run 7, so the preset keeps the method's L1.)
    "cpu": dict(
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
        val_patches=2,
        ssim_window=3,
    ),
}


def build_config(preset: str = "cpu", path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """preset < TOML file ([train] table or top level) < explicit overrides; errors name the key and the file."""
    values: dict[str, Any] = dict(PRESETS.get(preset, {}))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values["preset"] = preset
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
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
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
