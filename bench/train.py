"""Training benchmark: samples/s of the trainer's CycleGAN step at a preset, against a plain eager reference step
built from the same modules and losses (the preset's generator, discriminator and loss settings) on fresh random
tensors (no sampling, no pool, no logging), measured in the same run.

Both are timed over steady-state steps only: the first step of each (allocator and oneDNN warm-up) and the
trainer's set-up and checkpoint writes are outside the clock (the trainer's steps are timed through its
``on_step`` callback). Reference and trainer alternate ``--rounds`` times and the best round of each counts, so
a slow spell of a shared machine does not land on one side only.

    python -m bench.train --preset cpu --steps 5 --device cpu
    python -m bench.train --preset method --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.common import machine, sync
from denoise_trainer.data.slices import TrainingData
from denoise_trainer.train.cyclegan import CycleGenerators, Discriminators, WindowView
from denoise_trainer.train.cyclegan_step import configured_losses
from denoise_trainer.train.loop import train
from denoise_trainer.train.recipe import build_config


def reference_step_rate(cfg, device: torch.device, steps: int) -> float:  # noqa: ANN001
    """The textbook step: G forward/backward/step, D forward/backward/step; fresh tensors each step."""
    gens = CycleGenerators(cfg.generator_config()).to(device)
    disc_window = None if cfg.disc_hu_min is None else (cfg.disc_hu_min, cfg.disc_hu_max)
    view = WindowView((cfg.hu_min, cfg.hu_max), disc_window, cfg.disc_highpass_sigma)
    discs = Discriminators(cfg.disc_filters, cfg.disc_layers, cfg.disc_norm, view).to(device)
    opt_g = torch.optim.Adam(gens.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discs.parameters(), lr=cfg.lr * cfg.lr_d_factor, betas=(cfg.beta1, cfg.beta2))
    amp = device.type == "cuda" and cfg.amp
    shape = (cfg.batch_size, 1, cfg.patch_size, cfg.patch_size)

    def step() -> None:
        ld, hd = torch.rand(shape, device=device) * 2 - 1, torch.rand(shape, device=device) * 2 - 1
        for p in discs.parameters():
            p.requires_grad_(False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            images = gens(ld, hd)
            loss = configured_losses(cfg, images, ld, hd, discs)
        opt_g.zero_grad()
        loss["g_total"].backward()
        opt_g.step()
        for p in discs.parameters():
            p.requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            d = discs(ld, images["fake_ld"].detach(), hd, images["fake_hd"].detach())
        opt_d.zero_grad()
        (d["d_ld"] + d["d_hd"]).backward()
        opt_d.step()

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def trainer_rate(cfg, device: torch.device, steps: int, run_dir: Path) -> float:  # noqa: ANN001
    rng = np.random.default_rng(0)
    size = max(256, cfg.patch_size * 2)
    # Body-like slices (HU): a disc of soft tissue in air, so the body-containing patch sampler does its real work.
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2
    slices = [
        np.where(body, 40.0, -1000.0).astype(np.float32) + rng.uniform(-5, 5, (size, size)).astype(np.float32)
        for _ in range(8)
    ]
    data = TrainingData(ld=slices, hd=slices)
    timed_cfg = build_config(
        cfg.preset,
        overrides={
            **cfg.model_dump(),
            "run_dir": run_dir,
            "max_steps": steps + 1,
            "epochs": 1,
            "iters_per_epoch": steps + 1,
            "d_warmup_steps": 0,  # full steps only: the warm-up's discriminator-only steps are cheaper
        },
    )
    ends: list[float] = []

    def on_step(step: int, epoch: int, losses: dict[str, float]) -> None:
        sync(device)
        ends.append(time.perf_counter())

    train(timed_cfg, data, on_step=on_step)
    return steps * cfg.batch_size / (ends[-1] - ends[0])  # from the end of step 1 to the end of step steps + 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", nargs="+", default=["cpu"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/bench-train"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for preset in args.preset:
        cfg = build_config(preset, overrides={"device": args.device, "sample_every": 10**9, "log_every": 10**9})
        refs, ours_all = [], []
        for round_ in range(args.rounds):
            refs.append(reference_step_rate(cfg, device, args.steps))
            ours_all.append(trainer_rate(cfg, device, args.steps, args.run_dir / preset / f"round-{round_}"))
        ref, ours = max(refs), max(ours_all)
        rows.append(
            dict(
                preset=preset,
                batch=cfg.batch_size,
                patch=cfg.patch_size,
                filters=cfg.filters,
                trainer_samples_per_s=ours,
                reference_samples_per_s=ref,
                ratio=ours / ref,
                rounds_trainer=ours_all,
                rounds_reference=refs,
            )
        )
    table = Table(title=f"CycleGAN training step — {machine()}")
    for col in ("preset", "batch", "patch", "filters", "trainer samples/s", "reference samples/s", "trainer/ref"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["preset"],
            str(r["batch"]),
            str(r["patch"]),
            str(r["filters"]),
            f"{r['trainer_samples_per_s']:.1f}",
            f"{r['reference_samples_per_s']:.1f}",
            f"{r['ratio']:.2f}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
