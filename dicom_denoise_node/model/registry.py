"""Model files: safetensors weights + JSON metadata, checked by sha256, loaded without pickle.

A model is two files side by side, ``NAME.safetensors`` and ``NAME.json``. A registry is a directory of such
pairs with an ``ACTIVE`` file naming the one the node serves. The metadata carries everything the node needs to
rebuild and use the network (architecture, HU normalisation) and what a physicist needs to trust it
(version, training provenance, evaluation figures).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dicom_denoise_node.model.generator import build_generator

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
ACTIVE_FILE = "ACTIVE"
FORMAT_VERSION = 1


class ModelError(RuntimeError):
    """The model cannot be used: missing, corrupt or incompatible. The message says what to do."""


def normalize_hu(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """HU → [-1, 1] through a window: the one normalisation shared by training and serving."""
    return (2.0 * (np.clip(hu, hu_min, hu_max) - hu_min) / (hu_max - hu_min) - 1.0).astype(np.float32)


# The model's kind as the derived series' DerivationDescription names it, by its training's pairing.
MODEL_KINDS = {"unpaired": "CycleGAN generator", "paired": "paired-trained generator"}
# Short, for SeriesDescription ({kind}).
SHORT_KINDS = {"unpaired": "CycleGAN", "paired": "paired"}
# What every derived image and report of a model trained only on simulated CT says unless the site decides
# otherwise ([derive] notice): such a model has never seen a real patient.
SIMULATED_NOTICE = "NOT FOR DIAGNOSIS: denoised by a model trained on simulated CT only"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    architecture: dict[str, Any]
    hu_min: float
    hu_max: float
    sha256: str
    weights_path: Path
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    inference: dict[str, Any] = field(default_factory=dict)

    @property
    def self_ensemble(self) -> int:
        """How many flips/turns of each tile the model is meant to be averaged over (its card's figures); 1 = none."""
        return int(self.inference.get("self_ensemble", 1))

    @property
    def target_noise_hu(self) -> float:
        """The noise level (HU) the model is meant to leave (denoise/noise_target.py); 0 = none (full strength)."""
        return float(self.inference.get("target_noise_hu", 0.0))

    @property
    def noise_conditioning(self) -> bool:
        """Whether the generator takes a second input channel, the input's noise-level map (model/generator.py)."""
        return bool(self.architecture.get("noise_conditioning", False))

    @property
    def pairing(self) -> str:
        """How it was trained, from its training configuration: "paired" (LD/HD pairs of one patient) or "unpaired"
        (CycleGAN); "unpaired" when the metadata does not say (models exported before the paired trainer)."""
        config = self.training.get("config")
        return "paired" if isinstance(config, dict) and config.get("pairing") == "paired" else "unpaired"

    @property
    def kind(self) -> str:
        """What the derived series names it: a reader must not take a paired model for a CycleGAN."""
        return MODEL_KINDS[self.pairing]

    @property
    def short_kind(self) -> str:
        return SHORT_KINDS[self.pairing]

    @property
    def simulated_only(self) -> bool:
        """Trained on simulated CT only: its metadata's ``training.data.simulated`` (the bundled models say so)."""
        data = self.training.get("data")
        return isinstance(data, dict) and data.get("simulated") is True

    @property
    def default_notice(self) -> str:
        """The notice its output carries unless ``[derive] notice`` is set: SIMULATED_NOTICE for a model trained on
        simulated CT only, else none."""
        return SIMULATED_NOTICE if self.simulated_only else ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """HU → [-1, 1] through the model's window (values outside the window clip)."""
        return normalize_hu(hu, self.hu_min, self.hu_max)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] → HU (float32)."""
        return ((x.astype(np.float32) + 1.0) * 0.5 * (self.hu_max - self.hu_min) + self.hu_min).astype(np.float32)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    generator: nn.Module,
    out_dir: Path,
    name: str,
    version: str,
    hu_window: tuple[float, float],
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    activate: bool = False,
    inference: dict[str, Any] | None = None,
    *,
    force: bool = False,
) -> ModelInfo:
    """Write NAME.safetensors + NAME.json (readable by the service user) and optionally mark it ACTIVE.

    A model of the same name and version with other weights is refused unless ``force``: the version is part of the
    derived series' UIDs, so two sets of weights under one version would give different images one identity. The
    same weights again (an export repeated to embed its evaluation) keep their file and checksum."""
    _make_directories(out_dir)
    weights, meta_path = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    if force or not _same_version_same_weights(meta_path, version, state):
        staged = out_dir / f".{name}.safetensors.tmp"
        save_file(state, str(staged), metadata={"name": name, "version": version})
        os.replace(staged, weights)
    arch = generator.config.to_dict()  # type: ignore[union-attr]
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "architecture": arch,
        "normalization": {"hu_min": hu_window[0], "hu_max": hu_window[1]},
        "sha256": sha256_file(weights),
        "training": training or {},
        "evaluation": evaluation or {},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if inference:
        meta["inference"] = inference
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    written = [weights, meta_path]
    if activate:
        (out_dir / ACTIVE_FILE).write_text(name + "\n", encoding="utf-8")
        written.append(out_dir / ACTIVE_FILE)
    for path in written:
        path.chmod(0o644)  # the service user reads them; a model holds no patient data
    return read_metadata(meta_path)


def _make_directories(directory: Path) -> None:
    """Create the registry directory; the ones created here are 0755 whatever the umask, for the service user."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for d in missing:
        d.chmod(0o755)


def _same_version_same_weights(meta_path: Path, version: str, state: dict[str, torch.Tensor]) -> bool:
    """True when the registry already holds exactly these weights under this version (nothing to rewrite); False
    when there is nothing there or another version; a ModelError when this version holds other weights."""
    if not meta_path.exists():
        return False
    try:
        old = read_metadata(meta_path)
    except ModelError as exc:
        raise ModelError(f"{meta_path} exists and cannot be read ({exc}); pass --force to replace it") from exc
    if old.version != version:
        return False
    try:
        held = load_file(str(old.weights_path), device="cpu")
    except (OSError, SafetensorError) as exc:
        held = {}
        log.warning("cannot read %s to compare: %s", old.weights_path, exc)
    same = held.keys() == state.keys() and all(
        held[k].dtype == v.dtype and torch.equal(held[k], v) for k, v in state.items()
    )
    if not same:
        raise ModelError(
            f"{meta_path} already holds {old.label} with other weights: a version names one set of weights (it is "
            "part of the derived series' UIDs); export under a new version, or pass --force to replace it"
        )
    return sha256_file(old.weights_path) == old.sha256


def _metadata_path(path: Path) -> Path:
    if path.is_dir():
        active = path / ACTIVE_FILE
        if active.exists():
            return path / f"{active.read_text(encoding='utf-8').strip()}.json"
        candidates = sorted(path.glob("*.json"))
        if len(candidates) == 1:
            return candidates[0]
        raise ModelError(f"model directory {path} has {len(candidates)} models and no {ACTIVE_FILE} file naming one")
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    return path


def read_metadata(path: Path) -> ModelInfo:
    """Read a model's metadata from its .json, its .safetensors, or a registry directory."""
    meta_path = _metadata_path(Path(path))
    if not meta_path.exists():
        raise ModelError(f"model metadata {meta_path} not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        norm = meta["normalization"]
        return ModelInfo(
            name=meta["name"],
            version=str(meta["version"]),
            architecture=meta["architecture"],
            hu_min=float(norm["hu_min"]),
            hu_max=float(norm["hu_max"]),
            sha256=meta["sha256"],
            weights_path=meta_path.with_suffix(".safetensors"),
            training=meta.get("training", {}),
            evaluation=meta.get("evaluation", {}),
            created_at=meta.get("created_at", ""),
            inference=meta.get("inference", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model metadata {meta_path} is incomplete or invalid: {exc}") from exc


def resolve_model_path(configured: str, name: str = "") -> Path:
    """The configured model path, or the bundled models when the setting is empty; ``name`` picks one model of a
    registry directory by name instead of its ACTIVE file (``[model] name``, `denoise-node model list`)."""
    if name:
        directory = Path(configured).expanduser() if configured else BUNDLED_DIR
        if not directory.is_dir():
            raise ModelError(f"[model] name {name!r} needs [model] path to be a registry directory, not {directory}")
        chosen = directory / f"{name}.json"
        if not chosen.exists():
            known = ", ".join(sorted(p.stem for p in directory.glob("*.json"))) or "none"
            raise ModelError(f"[model] name {name!r}: no such model in {directory} (models there: {known})")
        return chosen
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise ModelError(f"[model] path {path} does not exist")
        return path
    if (BUNDLED_DIR / ACTIVE_FILE).exists() or any(BUNDLED_DIR.glob("*.json")):
        return BUNDLED_DIR
    raise ModelError(
        "no model configured and no bundled model installed: set [model] path in the config to a model "
        "exported by `denoise-node model export` (the node never passes images through unprocessed)"
    )


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Verify the checksum, rebuild the generator from metadata, load the weights (no pickle), eval mode."""
    info = read_metadata(path)
    if not info.weights_path.exists():
        raise ModelError(f"model weights {info.weights_path} not found")
    actual = sha256_file(info.weights_path)
    if actual != info.sha256:
        raise ModelError(f"model weights {info.weights_path} fail their checksum ({actual} != {info.sha256})")
    try:
        generator = build_generator(info.architecture)
        generator.load_state_dict(load_file(str(info.weights_path), device="cpu"), strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"model {info.weights_path} does not match its architecture metadata: {exc}") from exc
    generator.to(device).eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    log.info("loaded model %s (sha256 %s…) on %s", info.label, info.sha256[:12], device)
    return generator, info


def list_models(directory: Path) -> list[ModelInfo]:
    """Every model in a registry directory (unreadable ones are logged and skipped)."""
    out = []
    for meta in sorted(Path(directory).glob("*.json")):
        try:
            out.append(read_metadata(meta))
        except ModelError as exc:
            log.warning("skipping %s: %s", meta, exc)
    return out
