"""`train`: build the training recipe, assemble the catalog's training data, run the loop with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from denoise_trainer.cli.terminal import console, out, progress_bar
from dicom_denoise_node.config import ConfigError

if TYPE_CHECKING:
    from denoise_trainer.data.slices import TrainingData
    from denoise_trainer.train.loop import StepCallback, TrainResult
    from denoise_trainer.train.recipe import TrainConfig


# `--engine fast` is the GPU recipe's set of options on the one loop: slices held and cut on the device, compiled
# networks, fp32 with TF32 (bf16 autocast saturates tanh: the collapse of run 1 in docs/model-card.md).
ENGINES: dict[str, dict[str, object]] = {"standard": {}, "fast": {"feed": "device", "compile": True, "amp": False}}


def run_training(cfg: TrainConfig, data: TrainingData, resume: Path | None, on_step: StepCallback) -> TrainResult:
    """The one training loop: the recipe's pairing picks the objective, its feed the data path."""
    from denoise_trainer.train.loop import train

    return train(cfg, data, resume=resume, on_step=on_step)


def _load(preset: str, config: Path | None, overrides: dict[str, object]) -> tuple[TrainConfig, TrainingData]:
    """The recipe and its data, the data read with a progress bar; a ConfigError for what a user must fix."""
    from denoise_trainer.data.assembly import load_training_data, training_selection
    from denoise_trainer.train.recipe import build_config

    cfg = build_config(preset, config, overrides)
    if not cfg.catalog_url:
        raise ConfigError("no catalog: give --catalog URL or catalog_url in the training config")
    files = training_selection(cfg.catalog_url, cfg.pairing)
    if files.pairs is not None:
        patients = len({p.patient_id for p in files.pairs})
        out.print(f"paired training: {len(files.pairs)} LD/HD pairs of {patients} patients")
    with progress_bar() as bar:
        task = bar.add_task("loading slices", total=files.slices, info="")
        data = load_training_data(files, cfg.catalog_url, cfg.pairing, progress=lambda: bar.advance(task))
    return cfg, data


def _step_info(cfg: TrainConfig, epoch: int, losses: dict[str, float]) -> str:
    info = f"epoch {epoch + 1}/{cfg.epochs} G {losses['g_total']:.3f}"
    if "g_cycle" in losses:
        info += f" cyc {losses['g_cycle']:.3f} D {losses['d_ld'] + losses['d_hd']:.3f}"
    if "val_error_hu" in losses:
        info += f" val {losses['val_error_hu']:.2f} HU"
    if "samples_per_s" in losses:
        info += f" {losses['samples_per_s']:.1f} samples/s"
    return info


def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training TOML ([train] table).")] = None,
    preset: Annotated[str, typer.Option(help="method (the paper's settings), cpu, or tiny.")] = "cpu",
    catalog: Annotated[str | None, typer.Option(help="Archive catalog URL (overrides the config).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Checkpoints, TensorBoard logs and samples go here.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option(help="Override iterations per epoch.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop (with a checkpoint) after this many steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Checkpoint to continue from, exactly.")] = None,
    pairing: Annotated[
        str | None, typer.Option(help="unpaired (the method's CycleGAN) or paired (LD/HD pairs, Noise2Noise).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="standard, or fast: feed = device, compile, no autocast (the GPU recipe; one device).")
    ] = "standard",
    init_from: Annotated[
        Path | None,
        typer.Option(help="Warm start: the generator begins from this exported model (.json), e.g. a bundled one."),
    ] = None,
) -> None:
    """Train the CycleGAN of the method on the catalog's training split (torchrun for several GPUs or nodes).

    Example: `denoise-node train --preset cpu --catalog sqlite:///data/archive.sqlite --run-dir runs/cpu`
    """
    from denoise_trainer.train.loop import TrainingCollapsed, iterations_per_epoch
    from denoise_trainer.train.recipe import CannotTrain

    overrides: dict[str, object] = dict(
        catalog_url=catalog,
        run_dir=run_dir,
        device=device,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        max_steps=max_steps,
        seed=seed,
        pairing=pairing,
        init_from=init_from,
    )
    if engine not in ENGINES:
        console.print(f"[bold red]error:[/] --engine {escape(engine)}: choose one of {', '.join(ENGINES)}")
        raise typer.Exit(2)
    overrides.update(ENGINES[engine])
    try:
        cfg, data = _load(preset, config, overrides)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    total = cfg.max_steps or cfg.epochs * iterations_per_epoch(cfg, len(data.ld))
    with progress_bar() as bar:
        task = bar.add_task("training", total=total, info="")

        def on_step(step: int, epoch: int, losses: dict[str, float]) -> None:
            bar.update(task, completed=step, info=_step_info(cfg, epoch, losses))

        try:
            result = run_training(cfg, data, resume, on_step)
        except TrainingCollapsed as exc:
            console.print(f"[bold red]training stopped:[/] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        except (ConfigError, CannotTrain) as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    _report(result)


def _report(result: TrainResult) -> None:
    out.print(f"trained {result.steps} steps ({result.epochs_done} epochs); last checkpoint: {result.checkpoint}")
    if result.best_checkpoint is not None:
        best = min(result.validation, key=lambda r: r["val_error_hu"])
        out.print(
            f"best on the validation patients: step {best['step']}, error vs REF {best['val_error_hu']:.2f} HU "
            f"({best['val_error_vs_hd']:.3f} × HD's): {result.best_checkpoint}"
        )
    out.print(f"export it with: denoise-node model export {result.checkpoint} --name NAME --version VERSION")
