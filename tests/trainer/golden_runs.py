"""Fixed-seed tiny training runs whose checkpoints must not change when the trainer's code is reorganised.

Run as a module (``python -m tests.trainer.golden_runs``) it prints one digest per run as JSON; the test runs it in a
child process pinned to one thread and to the AVX2 kernels (ATen and oneDNN), so that the digests do not depend on the
thread count or on which vector unit the machine has. The digest covers every tensor and number a checkpoint holds
(weights, EMA, optimisers, schedules, pools, RNG states, losses, validation state), not its header (date, torch version,
configuration) and its timings, so a new configuration key leaves it unchanged and a changed step does not.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# "selection" says how best.pt is chosen (train/selection.py): a description like the header, not a value of the run.
HEADER_KEYS = {"format", "created_at", "torch", "config", "generator_config", "data", "world_size", "selection"}
TIMINGS = {"samples_per_s"}  # measured, so never the same twice


def _feed(h: Any, key: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            if k in TIMINGS:
                continue
            _feed(h, f"{key}.{k}", value[k])
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _feed(h, f"{key}[{i}]", v)
    elif isinstance(value, float):
        h.update(f"{key}={value!r}".encode())
    else:
        h.update(f"{key}={value!r}".encode())


def checkpoint_digest(path: Path) -> str:
    """sha256 over a checkpoint's state (everything but its header), in a fixed key order."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for key in sorted(state):
        if key not in HEADER_KEYS:
            _feed(h, key, state[key])
    return h.hexdigest()


def tiny_data(n: int = 3, size: int = 64, seed: int = 0) -> Any:
    """LD/HD/REF slices from the project's own CT simulation (Poisson noise on projections, FBP)."""
    from denoise_trainer.archive.phantom import make_patient, render_slice
    from denoise_trainer.archive.physics import simulate_doses
    from denoise_trainer.data.slices import TrainingData

    rng = np.random.default_rng(seed)
    anatomy = make_patient(rng, "abdomen")
    ld, hd, ref = [], [], []
    for k in range(n):
        hu, _ = render_slice(anatomy, float(k * 5), size=size, pixel_spacing=360 / size)
        doses = simulate_doses(hu, {"HD": 8e5, "LD": 2e5}, rng, pixel_spacing=360 / size, views=64)
        ld.append(doses["LD"])
        hd.append(doses["HD"])
        ref.append(doses["REF"])
    return TrainingData(ld=ld, hd=hd, val_ld=ld[:2], val_hd=hd[:2], val_ref=ref[:2], description={"slices": n})


# Each run switches on what its objective can do, so that a change in any of it shows.
RUNS: dict[str, dict[str, Any]] = {
    "cyclegan": dict(
        epochs=2, d_warmup_steps=1, ema_decay=0.5, lambda_lesion=0.5, lambda_identity_l1=1.0, lambda_lowpass=5.0
    ),
    "paired": dict(
        pairing="paired", patch_size=48, ema_decay=0.5, lambda_lesion=0.5, lambda_pair_adv=0.1, lambda_pair_l2=1.0
    ),
    # The device-resident feed (once `--engine fast`), uncompiled so that it runs the same on any CPU.
    "cyclegan-device": dict(feed="device", ema_decay=0.5, lambda_identity_l1=1.0),
}


def run_all(workdir: Path) -> dict[str, dict[str, str]]:
    from denoise_trainer.train.loop import train
    from denoise_trainer.train.recipe import build_config

    data = tiny_data()
    digests: dict[str, dict[str, str]] = {}
    for name, overrides in RUNS.items():
        cfg = build_config("tiny", overrides={"run_dir": workdir / name, "device": "cpu", "seed": 7, **overrides})
        result = train(cfg, data)
        folder = workdir / name / "checkpoints"
        digests[name] = {p.name: checkpoint_digest(p) for p in sorted(folder.glob("*.pt"))}
        digests[name]["steps"] = str(result.steps)
    return digests


def bundled_digests(size: int = 160) -> dict[str, str]:
    """sha256 of each bundled model's output (float32 HU) on one fixed simulated LD slice, through the node's tiler
    with the model's own self-ensemble: the exported models and the node's inference path, unchanged."""
    from denoise_trainer.archive.phantom import make_patient, render_slice
    from denoise_trainer.archive.physics import simulate_doses
    from dicom_denoise_node.denoise.ensemble import with_self_ensemble
    from dicom_denoise_node.denoise.inference import TiledInferer
    from dicom_denoise_node.model.registry import BUNDLED_DIR, load_model

    rng = np.random.default_rng(11)
    hu, _ = render_slice(make_patient(rng, "chest"), 10.0, size=size, pixel_spacing=360 / size)
    ld = simulate_doses(hu, {"LD": 2e5}, rng, pixel_spacing=360 / size, views=96)["LD"].astype(np.float32)
    out = {}
    for meta in sorted(BUNDLED_DIR.glob("*.json")):
        network, info = load_model(meta)
        inferer = TiledInferer(with_self_ensemble(network, info.self_ensemble), tile_size=96, overlap=16)
        (result,) = inferer.run_all([info.normalize(ld)])
        pixels = np.ascontiguousarray(info.denormalize(result), np.float32)
        out[meta.stem] = hashlib.sha256(pixels.tobytes()).hexdigest()
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        json.dump({**run_all(Path(tmp)), "bundled": bundled_digests()}, sys.stdout, indent=1, sort_keys=True)
